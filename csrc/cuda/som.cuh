// Plain C++ launchers of the SOM CUDA kernels (csrc/cuda/som.cu). CUDA headers only:
// the torch bindings in som_ops.cpp include this; the kernels never see torch.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace genkernels::som::cuda {

// How som_online_launch runs an epoch: which kernel, and the global scratch it needs.
struct OnlinePlan {
  // 1: one persistent block per map (som_online_kernel); B > 1: the cooperative kernel,
  // B blocks per map each owning a slice of the map's nodes (som_online_coop_kernel).
  int blocks_per_map = 1;
  bool in_shared = false;        // the map (B = 1) or each slice (B > 1) in shared memory
  int64_t shared_bytes = 0;      // dynamic shared memory per block
  size_t workspace_bytes = 0;    // device scratch som_online_launch needs (0 when B = 1)
};

// Chooses the kernel for M maps of K nodes x D features on the current device (see
// plan_metric in som.cu for the reasoning). requested_blocks: 0 = automatic; 1 = one
// block per map; N > 1 = the cooperative kernel with B <= N blocks per map, B = N unless
// M * N blocks cannot be co-resident (one block per map when no B >= 2 is, or when the
// device has no cooperative launch). Returns the status of the device queries.
template <typename Scalar>
cudaError_t som_online_plan(int64_t M, int64_t K, int64_t D, int metric, int requested_blocks,
                            OnlinePlan* plan);

// Kohonen's sequential rule for M independent maps, walking all T steps in one launch
// (reference: genkernels/som/reference.py som_online).
//
//   x        (N, D) contiguous samples
//   weights  (M, K, D) contiguous: the initial maps on entry, the trained maps on exit
//   order    (M, T) contiguous int64: sample index of each step, in [0, N)
//   lr, sigma (M, T) contiguous: learning rate and radius of each step
//   coords   (K, 2) contiguous: lattice position of each node
//   period_0/1: torus period of each lattice axis (0 = flat)
//   neighborhood, rule, metric: the enums of csrc/common/som.h as ints
//   plan     from som_online_plan with the same M, K, D, metric on the same device
//   workspace device memory of at least plan.workspace_bytes (may be null when 0), not
//            used by anything else until the launch has finished on `stream`
//
// Scalar is float (fp32/fp16/bf16 data, converted by the caller) or double. Returns the
// launch status (cudaSuccess, or the error of the attribute query / launch).
template <typename Scalar>
cudaError_t som_online_launch(const Scalar* x, Scalar* weights, const int64_t* order,
                              const Scalar* lr, const Scalar* sigma, const Scalar* coords,
                              int64_t M, int64_t K, int64_t D, int64_t T, Scalar period_0,
                              Scalar period_1, int neighborhood, int rule, int metric,
                              const OnlinePlan& plan, void* workspace, cudaStream_t stream);

extern template cudaError_t som_online_plan<float>(int64_t, int64_t, int64_t, int, int,
                                                   OnlinePlan*);
extern template cudaError_t som_online_plan<double>(int64_t, int64_t, int64_t, int, int,
                                                    OnlinePlan*);
extern template cudaError_t som_online_launch<float>(
    const float*, float*, const int64_t*, const float*, const float*, const float*, int64_t,
    int64_t, int64_t, int64_t, float, float, int, int, int, const OnlinePlan&, void*,
    cudaStream_t);
extern template cudaError_t som_online_launch<double>(
    const double*, double*, const int64_t*, const double*, const double*, const double*,
    int64_t, int64_t, int64_t, int64_t, double, double, int, int, int, const OnlinePlan&, void*,
    cudaStream_t);

}  // namespace genkernels::som::cuda
