// The visiting order of a random single-site sweep, shared by the Hopfield recall and
// Boltzmann Gibbs kernels (csrc/cuda/hopfield.cu, boltzmann.cu): the stable argsort of the
// units' 32-bit Philox keys -- a unit's rank is the number of keys below its own, ties
// broken by the smaller index -- as the references take it (torch.argsort(stable=True)).
#pragma once
#include <cstdint>

namespace genkernels::cuda_common {

// order[rank(j)] = j for j in [0, n), computed by the block's threads (tid, stride
// threads), keys and order in shared or global memory; ends with __syncthreads().
__device__ inline void visiting_order(const uint32_t* __restrict__ keys, int32_t* __restrict__ order, int64_t n,
                                      int64_t tid, int64_t threads) {
  for (int64_t j = tid; j < n; j += threads) {
    const uint32_t kj = keys[j];
    int32_t rank = 0;
    for (int64_t q = 0; q < n; ++q) {
      const uint32_t kq = keys[q];
      rank += (kq < kj) | ((kq == kj) & (q < j));
    }
    order[rank] = static_cast<int32_t>(j);
  }
  __syncthreads();
}

}  // namespace genkernels::cuda_common
