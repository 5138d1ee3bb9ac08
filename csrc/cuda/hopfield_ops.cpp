// CUDA binding of asynchronous Hopfield recall: tensors -> the plain launcher of
// csrc/cuda/hopfield.cu. Built only where torch has CUDA (setup.py); the schema lives in
// csrc/genkernels.cpp and the CPU kernel in csrc/cpu/hopfield.cpp.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/hopfield.cuh"
#include "aten/hopfield_checks.h"

namespace genkernels::hopfield {
namespace {

// weights (N, N) fp32/fp64 symmetric; states (B, N) +-1 in weights' dtype, CUDA tensors.
// Returns the final states (B, N) in that dtype and converged (B,) bool.
std::tuple<at::Tensor, at::Tensor> hopfield_recall_async_cuda(const at::Tensor& weights,
                                                              const at::Tensor& states,
                                                              int64_t max_sweeps, bool random_order,
                                                              int64_t seed, int64_t offset) {
  check_recall_args(weights, states, max_sweeps);
  TORCH_CHECK(weights.is_cuda() && states.device() == weights.device(),
              "hopfield_recall_async (cuda): weights and states must be on one CUDA device; got ",
              weights.device(), " and ", states.device());
  const c10::cuda::CUDAGuard device_guard(weights.device());
  RecallInputs in = prepare_recall(weights, states, max_sweeps);
  if (in.finished) return in.early;
  const int64_t b_count = states.size(0), n = weights.size(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "hopfield_recall_async_cuda", [&] {
    int64_t bytes = 0;
    cudaError_t err = cuda::hopfield_scratch_bytes<scalar_t>(b_count, n, &bytes);
    TORCH_CHECK(err == cudaSuccess, "hopfield_recall_async (cuda): ", cudaGetErrorString(err));
    at::Tensor scratch;
    if (bytes > 0) scratch = at::empty({bytes}, states.options().dtype(at::kByte));
    err = cuda::hopfield_recall_async_launch<scalar_t>(
        in.weights.const_data_ptr<scalar_t>(), in.fields.mutable_data_ptr<scalar_t>(),
        in.states8.mutable_data_ptr<int8_t>(), in.converged.mutable_data_ptr<bool>(),
        bytes > 0 ? scratch.mutable_data_ptr() : nullptr, b_count, n, max_sweeps, random_order,
        static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), stream);
    TORCH_CHECK(err == cudaSuccess, "hopfield_recall_async (cuda): launch failed: ",
                cudaGetErrorString(err));
  });
  return {in.states8.to(states.scalar_type()), in.converged};
}

}  // namespace
}  // namespace genkernels::hopfield

TORCH_LIBRARY_IMPL(genkernels, CUDA, m) {
  m.impl("hopfield_recall_async", &genkernels::hopfield::hopfield_recall_async_cuda);
}
