// Plain C++ launchers of the Philox CUDA kernels (csrc/cuda/random.cu). CUDA headers only:
// the torch bindings in random_ops.cpp include this; the kernels never see torch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace genkernels::random::cuda {

// out (n, 4) contiguous uint32: the four words of tl.randint4x(seed, offsets[i]) for the n
// contiguous int64 offsets; seed is the 64-bit pattern of a seed in [0, 2^64).
// Returns the launch status.
cudaError_t philox_randint4x_launch(uint64_t seed, const int64_t* offsets, int64_t n,
                                    uint32_t* out, cudaStream_t stream);

// out (n,) contiguous float32 in [0, 1): tl.rand(seed, offsets[i]).
cudaError_t philox_rand_launch(uint64_t seed, const int64_t* offsets, int64_t n, float* out,
                               cudaStream_t stream);

}  // namespace genkernels::random::cuda
