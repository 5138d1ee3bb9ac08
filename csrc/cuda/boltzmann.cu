// Persistent sequential-Gibbs kernel of general Boltzmann machines: one thread block per
// chain walks all of that chain's sweeps in one launch (spec: genkernels/boltzmann/
// bm_reference.py gibbs, followed draw for draw from the same starting fields).
//
// A chain's working set -- fields h (N x Scalar), the sweep's order keys (N x uint32),
// uniforms (N x float), visiting order (N x int32) and the state (N x int8, bit 1 set on
// clamped units) -- lives in dynamic shared memory when it fits the opt-in limit (fp32:
// N <= ~13,600 on sm_90, fp64: ~11,000), else in a global scratch slice of its own. The
// block has min(256, N rounded up to a warp) threads; thread `tid` owns units tid,
// tid + blockDim, ... Per sweep t:
//
//   1. every thread draws the Philox words of its units j, counters offset + (c * S + t)
//      * N + j (csrc/common/philox.h): word 1 -> uniform[j] (tl.rand's conversion), word 0
//      -> keys[j] (random order only).                                  __syncthreads
//      Random order: the rank of unit j -- the number of units whose key is smaller, or
//      equal with a smaller index -- is its position, order[rank] = j: the stable argsort
//      the reference takes, in O(N^2 / threads) compares.               __syncthreads
//   2. the units in that order (csrc/cuda/single_site.cuh, the sweep the Hopfield recall
//      kernel runs too): every thread reads s[i], h[i] and uniform[i] (broadcast
//      from shared memory) and takes the same decision, u < 1 / (1 + exp(-(h / T)))
//      (csrc/common/boltzmann.h, the cpu kernel's arithmetic); clamped units are skipped.
//      No change: nothing is written, the next unit follows at once. A change by
//      delta = +-1:
//        __syncthreads  (all reads of h[i], s[i] are done before any write)
//        h[j] += delta * W[i, j] for the thread's units j (row i of W = column i),
//        thread 0 writes s[i];
//        __syncthreads  (the next unit reads the updated fields).
//      The product by +-1 is exact, so whether nvcc contracts it into an FMA or not the
//      one rounding is the addition's, as in the reference's h.add_(W[i], alpha=delta).
//   3. __syncthreads: every thread has left the unit loop before the next sweep
//      overwrites the uniforms and the order it reads.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/boltzmann.h"
#include "common/philox.h"
#include "cuda/single_site.cuh"
#include "cuda/visiting_order.cuh"
#include "cuda/shared_limit.cuh"
#include "cuda/boltzmann.cuh"

namespace genkernels::boltzmann::cuda {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kWarp = 32;
constexpr int8_t kClamped = 2;  // state bit 1: the unit never changes

// Bytes of one chain's working set, rounded up to 16 so that every chain's slice of the
// global scratch starts aligned for its Scalar fields.
template <typename Scalar>
__host__ __device__ int64_t chain_bytes(int64_t n) {
  const int64_t raw = n * static_cast<int64_t>(sizeof(Scalar) + sizeof(uint32_t) + sizeof(float) +
                                               sizeof(int32_t) + 1);
  return (raw + 15) / 16 * 16;
}

int block_threads(int64_t n) {
  const int64_t warps = (n + kWarp - 1) / kWarp;
  return static_cast<int>(warps * kWarp < kMaxThreads ? warps * kWarp : kMaxThreads);
}

template <typename Scalar>
__global__ void __launch_bounds__(kMaxThreads)
bm_gibbs_kernel(const Scalar* __restrict__ w,            // (N, N) symmetric, zero diagonal
                const Scalar* __restrict__ fields_in,    // (C, N) states @ W + b
                const Scalar* __restrict__ temperatures, // (S,)
                const bool* __restrict__ clamp,          // (N,)
                int8_t* __restrict__ states,             // (C, N) in/out, {0, 1}
                unsigned char* __restrict__ scratch,     // nullptr: shared memory
                int64_t n, int64_t n_sweeps, bool random_order, uint64_t seed, uint64_t offset) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t c = blockIdx.x;
  const int64_t threads = blockDim.x;
  const int64_t tid = threadIdx.x;
  unsigned char* base = scratch != nullptr ? scratch + c * chain_bytes<Scalar>(n) : smem_raw;
  Scalar* h = reinterpret_cast<Scalar*>(base);
  uint32_t* keys = reinterpret_cast<uint32_t*>(h + n);
  float* uniform = reinterpret_cast<float*>(keys + n);
  int32_t* order = reinterpret_cast<int32_t*>(uniform + n);
  int8_t* s = reinterpret_cast<int8_t*>(order + n);

  const Scalar* h_in = fields_in + c * n;
  int8_t* s_io = states + c * n;
  for (int64_t j = tid; j < n; j += threads) {
    h[j] = h_in[j];
    s[j] = static_cast<int8_t>(s_io[j] | (clamp[j] ? kClamped : 0));
  }

  for (int64_t t = 0; t < n_sweeps; ++t) {
    const uint64_t first = offset + (static_cast<uint64_t>(c) * static_cast<uint64_t>(n_sweeps) +
                                     static_cast<uint64_t>(t)) * static_cast<uint64_t>(n);
    for (int64_t j = tid; j < n; j += threads) {
      const random::Uint4 r = random::randint4x(seed, first + static_cast<uint64_t>(j));
      uniform[j] = random::uint_to_uniform_float(r.y);
      if (random_order) keys[j] = r.x;
    }
    __syncthreads();
    if (random_order) cuda_common::visiting_order(keys, order, n, tid, threads);
    const Scalar temp = temperatures[t];
    // a clamped unit keeps its state; any other turns on iff u < p (csrc/common/boltzmann.h)
    cuda_common::single_site_sweep(w, n, h, s, random_order, order, tid, threads,
                                   [&](int64_t i) {
                                     const int8_t si = s[i];
                                     if (si & kClamped) return si;
                                     return unit_turns_on(h[i], temp, uniform[i]) ? int8_t{1} : int8_t{0};
                                   });
    __syncthreads();
  }
  for (int64_t j = tid; j < n; j += threads) s_io[j] = static_cast<int8_t>(s[j] & 1);
}

// GENKERNELS_BM_GLOBAL=1 keeps every working set in the global scratch (tests cover that path)
constexpr const char* kForceGlobalEnv = "GENKERNELS_BM_GLOBAL";

}  // namespace

template <typename Scalar>
cudaError_t bm_gibbs_scratch_bytes(int64_t C, int64_t N, int64_t* bytes) {
  return cuda_common::scratch_bytes(kForceGlobalEnv, chain_bytes<Scalar>(N), C, bytes);
}

template <typename Scalar>
cudaError_t bm_gibbs_launch(const Scalar* weights, const Scalar* fields, const Scalar* temperatures,
                            const bool* clamp, int8_t* states, void* scratch, int64_t C, int64_t N,
                            int64_t S, bool random_order, uint64_t seed, uint64_t offset,
                            cudaStream_t stream) {
  if (C == 0 || N == 0 || S == 0) return cudaSuccess;
  auto kernel = bm_gibbs_kernel<Scalar>;
  bool in_shared = false;
  size_t dynamic = 0;
  const cudaError_t err = cuda_common::place_working_set(
      kForceGlobalEnv, kernel, chain_bytes<Scalar>(N), scratch != nullptr, &in_shared, &dynamic);
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(C), block_threads(N), dynamic, stream>>>(
      weights, fields, temperatures, clamp, states,
      in_shared ? nullptr : static_cast<unsigned char*>(scratch), N, S, random_order, seed, offset);
  return cudaGetLastError();
}

template cudaError_t bm_gibbs_launch<float>(const float*, const float*, const float*, const bool*,
                                            int8_t*, void*, int64_t, int64_t, int64_t, bool,
                                            uint64_t, uint64_t, cudaStream_t);
template cudaError_t bm_gibbs_launch<double>(const double*, const double*, const double*, const bool*,
                                             int8_t*, void*, int64_t, int64_t, int64_t, bool,
                                             uint64_t, uint64_t, cudaStream_t);
template cudaError_t bm_gibbs_scratch_bytes<float>(int64_t, int64_t, int64_t*);
template cudaError_t bm_gibbs_scratch_bytes<double>(int64_t, int64_t, int64_t*);

}  // namespace genkernels::boltzmann::cuda
