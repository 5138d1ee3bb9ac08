// Plain C++ launchers of the SOM CUDA kernels (csrc/cuda/som.cu). CUDA headers only:
// the torch bindings in som_ops.cpp include this; the kernels never see torch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace genkernels::som::cuda {

// Kohonen's sequential rule for M independent maps, one persistent thread block per
// map walking all T steps (reference: genkernels/som/reference.py som_online).
//
//   x        (N, D) contiguous samples
//   weights  (M, K, D) contiguous: the initial maps on entry, the trained maps on exit
//   order    (M, T) contiguous int64: sample index of each step, in [0, N)
//   lr, sigma (M, T) contiguous: learning rate and radius of each step
//   coords   (K, 2) contiguous: lattice position of each node
//   period_0/1: torus period of each lattice axis (0 = flat)
//   neighborhood, rule, metric: the enums of csrc/common/som.h as ints
//
// Scalar is float (fp32/fp16/bf16 data, converted by the caller) or double. Returns the
// launch status (cudaSuccess, or the error of the attribute query / launch).
template <typename Scalar>
cudaError_t som_online_launch(const Scalar* x, Scalar* weights, const int64_t* order,
                              const Scalar* lr, const Scalar* sigma, const Scalar* coords,
                              int64_t M, int64_t K, int64_t D, int64_t T, Scalar period_0,
                              Scalar period_1, int neighborhood, int rule, int metric,
                              cudaStream_t stream);

extern template cudaError_t som_online_launch<float>(
    const float*, float*, const int64_t*, const float*, const float*, const float*, int64_t,
    int64_t, int64_t, int64_t, float, float, int, int, int, cudaStream_t);
extern template cudaError_t som_online_launch<double>(
    const double*, double*, const int64_t*, const double*, const double*, const double*,
    int64_t, int64_t, int64_t, int64_t, double, double, int, int, int, cudaStream_t);

}  // namespace genkernels::som::cuda
