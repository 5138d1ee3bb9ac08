// Plain C++ launcher of the asynchronous Hopfield recall kernel (csrc/cuda/hopfield.cu).
// CUDA headers only: the torch binding in hopfield_ops.cpp includes this.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace genkernels::hopfield::cuda {

// Asynchronous recall of B probes, one persistent thread block per probe walking all of
// its sweeps (reference: genkernels/hopfield/recall_reference.py recall_async, reproduced bit
// for bit given the same starting fields).
//
//   weights   (N, N) contiguous, symmetric
//   fields    (B, N) contiguous: probes @ weights on entry (scratch afterwards)
//   states    (B, N) int8 +-1: the probes on entry, the recalled states on exit
//   converged (B,) bool out
//   scratch   B * N * (sizeof(Scalar) + 9) bytes of device memory, used only when one
//             probe's fields, states, keys and order do not fit a block's shared memory
//             (hopfield_scratch_bytes says how much; nullptr when it returns 0)
//   seed, offset: the random order's Philox key and int64 counter base (as uint64)
//
// Scalar is float or double. Returns the first CUDA error (attribute query or launch).
template <typename Scalar>
cudaError_t hopfield_recall_async_launch(const Scalar* weights, Scalar* fields, int8_t* states,
                                         bool* converged, void* scratch, int64_t B, int64_t N,
                                         int64_t max_sweeps, bool random_order, uint64_t seed,
                                         uint64_t offset, cudaStream_t stream);

// Bytes of global scratch the launcher needs for (B, N) probes on the current device: 0
// when a probe's working set fits one block's shared memory.
template <typename Scalar>
cudaError_t hopfield_scratch_bytes(int64_t B, int64_t N, int64_t* bytes);

extern template cudaError_t hopfield_recall_async_launch<float>(
    const float*, float*, int8_t*, bool*, void*, int64_t, int64_t, int64_t, bool, uint64_t, uint64_t,
    cudaStream_t);
extern template cudaError_t hopfield_recall_async_launch<double>(
    const double*, double*, int8_t*, bool*, void*, int64_t, int64_t, int64_t, bool, uint64_t,
    uint64_t, cudaStream_t);
extern template cudaError_t hopfield_scratch_bytes<float>(int64_t, int64_t, int64_t*);
extern template cudaError_t hopfield_scratch_bytes<double>(int64_t, int64_t, int64_t*);

}  // namespace genkernels::hopfield::cuda
