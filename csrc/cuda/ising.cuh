// Plain C++ launchers of the checkerboard Ising CUDA kernels (csrc/cuda/ising.cu). CUDA
// headers only: the torch bindings in ising_ops.cpp include this; the kernels never see
// torch. Packed layout, counters and thresholds: csrc/common/ising.h.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/ising.h"

namespace genkernels::ising::cuda {

// spins (B, L, L) int8 ±1 contiguous -> packed (B, 2, L, W) words, W = ceil(L / 128).
cudaError_t ising_pack_launch(const int8_t* spins, int64_t B, int L, uint64_t* packed,
                              cudaStream_t stream);

// packed (B, 2, L, W) -> spins (B, L, L) int8 ±1.
cudaError_t ising_unpack_launch(const uint64_t* packed, int64_t B, int L, int8_t* spins,
                                cudaStream_t stream);

// Update colour c of every lattice in sweep t (counters from seed / offset as the cpu
// kernel), in place.
cudaError_t ising_half_sweep_launch(uint64_t* packed, int64_t B, int L, uint64_t seed,
                                    uint64_t offset, int64_t t, int c, const FlipTable& table,
                                    cudaStream_t stream);

// Adds every lattice's mismatched-bond count and +1-spin count (count_rows) to
// mismatched[b * stride] and up[b * stride] (integer atomics: the sums are exact).
cudaError_t ising_count_launch(const uint64_t* packed, int64_t B, int L, int64_t* mismatched,
                               int64_t* up, int64_t stride, cudaStream_t stream);

}  // namespace genkernels::ising::cuda
