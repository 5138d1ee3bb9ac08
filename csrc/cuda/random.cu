// Philox CUDA kernels (arithmetic in csrc/common/philox.h, shared with csrc/cpu/random.cpp;
// reference genkernels/random.py; ground truth Triton's tl.randint4x / tl.rand).
// One thread per offset, grid-stride so any n fits a bounded grid; 64-bit indices.
// randint4x writes its four words as one 16-byte store (the output is a fresh contiguous
// (n, 4) uint32 tensor, so every row is 16-byte aligned).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/philox.h"
#include "cuda/random.cuh"

namespace genkernels::random::cuda {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU several times over; the grid-stride loop covers
// the rest.
constexpr int64_t kMaxBlocks = 65536;

__global__ void __launch_bounds__(kThreads)
philox_randint4x_kernel(uint64_t seed, const int64_t* __restrict__ offsets, int64_t n,
                        uint4* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const Uint4 r = randint4x(seed, static_cast<uint64_t>(offsets[i]));
    out[i] = make_uint4(r.x, r.y, r.z, r.w);
  }
}

__global__ void __launch_bounds__(kThreads)
philox_rand_kernel(uint64_t seed, const int64_t* __restrict__ offsets, int64_t n,
                   float* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = rand(seed, static_cast<uint64_t>(offsets[i]));
  }
}

unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

}  // namespace

cudaError_t philox_randint4x_launch(uint64_t seed, const int64_t* offsets, int64_t n,
                                    uint32_t* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  philox_randint4x_kernel<<<grid_for(n), kThreads, 0, stream>>>(seed, offsets, n,
                                                                reinterpret_cast<uint4*>(out));
  return cudaGetLastError();
}

cudaError_t philox_rand_launch(uint64_t seed, const int64_t* offsets, int64_t n, float* out,
                               cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  philox_rand_kernel<<<grid_for(n), kThreads, 0, stream>>>(seed, offsets, n, out);
  return cudaGetLastError();
}

}  // namespace genkernels::random::cuda
