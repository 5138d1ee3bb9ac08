// CUDA binding of sequential Gibbs sweeps in general Boltzmann machines: tensors -> the
// plain launcher of csrc/cuda/boltzmann.cu. Built only where torch has CUDA (setup.py);
// the schema lives in csrc/genkernels.cpp and the CPU kernel in csrc/cpu/boltzmann.cpp.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "aten/boltzmann_checks.h"
#include "cuda/boltzmann.cuh"

namespace genkernels::boltzmann {
namespace {

// weights (N, N) symmetric zero diagonal, bias (N,), states (C, N) in {0, 1}, clamp (N,)
// bool, temperatures (S,) > 0; floats in one dtype (fp32/fp64), all on one CUDA device.
// Returns (C, N).
at::Tensor bm_gibbs_cuda(const at::Tensor& weights, const at::Tensor& bias, const at::Tensor& states,
                         const at::Tensor& clamp, const at::Tensor& temperatures, bool random_order,
                         int64_t seed, int64_t offset) {
  check_gibbs_args(weights, bias, states, clamp, temperatures);
  TORCH_CHECK(weights.is_cuda(), "bm_gibbs (cuda): weights must be a CUDA tensor; got ", weights.device());
  for (const at::Tensor* t : {&bias, &states, &clamp, &temperatures}) {
    TORCH_CHECK(t->device() == weights.device(), "bm_gibbs (cuda): every tensor must be on weights' device ",
                weights.device(), "; got ", t->device());
  }
  const c10::cuda::CUDAGuard device_guard(weights.device());
  const int64_t c_count = states.size(0), n = weights.size(0), n_sweeps = temperatures.size(0);
  if (c_count == 0 || n == 0 || n_sweeps == 0) return states.clone();

  const at::Tensor w = weights.contiguous();
  const at::Tensor s_in = states.contiguous();
  const at::Tensor fields = at::addmm(bias, s_in, w).contiguous();  // the reference's torch.addmm(bias, states, W)
  at::Tensor s8 = s_in.gt(0.5).to(at::kChar).contiguous();
  const at::Tensor clamp_c = clamp.contiguous();
  const at::Tensor temps = temperatures.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "bm_gibbs_cuda", [&] {
    int64_t bytes = 0;
    cudaError_t err = cuda::bm_gibbs_scratch_bytes<scalar_t>(c_count, n, &bytes);
    TORCH_CHECK(err == cudaSuccess, "bm_gibbs (cuda): ", cudaGetErrorString(err));
    at::Tensor scratch;
    if (bytes > 0) scratch = at::empty({bytes}, states.options().dtype(at::kByte));
    err = cuda::bm_gibbs_launch<scalar_t>(
        w.const_data_ptr<scalar_t>(), fields.const_data_ptr<scalar_t>(), temps.const_data_ptr<scalar_t>(),
        clamp_c.const_data_ptr<bool>(), s8.mutable_data_ptr<int8_t>(),
        bytes > 0 ? scratch.mutable_data_ptr() : nullptr, c_count, n, n_sweeps, random_order,
        static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), stream);
    TORCH_CHECK(err == cudaSuccess, "bm_gibbs (cuda): launch failed: ", cudaGetErrorString(err));
  });
  return s8.to(states.scalar_type());
}

}  // namespace
}  // namespace genkernels::boltzmann

TORCH_LIBRARY_IMPL(genkernels, CUDA, m) {
  m.impl("bm_gibbs", &genkernels::boltzmann::bm_gibbs_cuda);
}
