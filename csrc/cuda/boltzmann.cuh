// Plain C++ launcher of the sequential Gibbs kernel of general Boltzmann machines
// (csrc/cuda/boltzmann.cu). CUDA headers only: the torch binding in boltzmann_ops.cpp
// includes this.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace genkernels::boltzmann::cuda {

// S sequential Gibbs sweeps of C chains, one persistent thread block per chain walking
// all of its sweeps (reference: genkernels/boltzmann/bm_reference.py gibbs, followed draw
// for draw given the same starting fields).
//
//   weights      (N, N) contiguous, symmetric, zero diagonal
//   fields       (C, N) contiguous: states @ weights + bias on entry (read only)
//   temperatures (S,) > 0: sweep t runs at temperatures[t]
//   clamp        (N,) bool: units that never change
//   states       (C, N) int8 in {0, 1}: the starting states on entry, the final ones on exit
//   scratch      C * N * (sizeof(Scalar) + 13) bytes (rounded up to 16 per chain) of device
//                memory, used only when one chain's working set does not fit a block's
//                shared memory (bm_gibbs_scratch_bytes says how much; nullptr when it
//                returns 0)
//   seed, offset: Philox key and int64 counter base (as uint64); sweep t of chain c uses
//                counters offset + (c * S + t) * N + i
//
// Scalar is float or double. Returns the first CUDA error (attribute query or launch).
template <typename Scalar>
cudaError_t bm_gibbs_launch(const Scalar* weights, const Scalar* fields, const Scalar* temperatures,
                            const bool* clamp, int8_t* states, void* scratch, int64_t C, int64_t N,
                            int64_t S, bool random_order, uint64_t seed, uint64_t offset,
                            cudaStream_t stream);

// Bytes of global scratch the launcher needs for (C, N) chains on the current device: 0
// when a chain's working set fits one block's shared memory.
template <typename Scalar>
cudaError_t bm_gibbs_scratch_bytes(int64_t C, int64_t N, int64_t* bytes);

extern template cudaError_t bm_gibbs_launch<float>(const float*, const float*, const float*,
                                                   const bool*, int8_t*, void*, int64_t, int64_t,
                                                   int64_t, bool, uint64_t, uint64_t, cudaStream_t);
extern template cudaError_t bm_gibbs_launch<double>(const double*, const double*, const double*,
                                                    const bool*, int8_t*, void*, int64_t, int64_t,
                                                    int64_t, bool, uint64_t, uint64_t, cudaStream_t);
extern template cudaError_t bm_gibbs_scratch_bytes<float>(int64_t, int64_t, int64_t*);
extern template cudaError_t bm_gibbs_scratch_bytes<double>(int64_t, int64_t, int64_t*);

}  // namespace genkernels::boltzmann::cuda
