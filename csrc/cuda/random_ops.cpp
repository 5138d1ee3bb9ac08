// CUDA bindings of the Philox ops: tensors -> the plain launchers of csrc/cuda/random.cu.
// Built only where torch has CUDA (setup.py); the schemas live in csrc/genkernels.cpp.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/random.cuh"

namespace genkernels::random {
namespace {

void check_offsets(const char* op, const at::Tensor& offsets) {
  TORCH_CHECK(offsets.scalar_type() == at::kLong, op, " (cuda): offsets must be an int64 tensor; got ",
              offsets.scalar_type());
  TORCH_CHECK(offsets.is_cuda(), op, " (cuda): offsets must be a CUDA tensor; got ",
              offsets.device());
}

// offsets (...) int64 -> (..., 4) uint32: tl.randint4x(seed, offsets).
at::Tensor philox_randint4x_cuda(int64_t seed, const at::Tensor& offsets) {
  check_offsets("philox_randint4x", offsets);
  const c10::cuda::CUDAGuard device_guard(offsets.device());
  auto sizes = offsets.sizes().vec();
  sizes.push_back(4);
  at::Tensor out = at::empty(sizes, offsets.options().dtype(at::kUInt32));
  const at::Tensor offsets_c = offsets.contiguous();
  const cudaError_t err = cuda::philox_randint4x_launch(
      static_cast<uint64_t>(seed), offsets_c.const_data_ptr<int64_t>(), offsets_c.numel(),
      out.mutable_data_ptr<uint32_t>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "philox_randint4x (cuda): launch failed: ", cudaGetErrorString(err));
  return out;
}

// offsets (...) int64 -> (...) float32 in [0, 1): tl.rand(seed, offsets).
at::Tensor philox_rand_cuda(int64_t seed, const at::Tensor& offsets) {
  check_offsets("philox_rand", offsets);
  const c10::cuda::CUDAGuard device_guard(offsets.device());
  at::Tensor out = at::empty(offsets.sizes(), offsets.options().dtype(at::kFloat));
  const at::Tensor offsets_c = offsets.contiguous();
  const cudaError_t err = cuda::philox_rand_launch(
      static_cast<uint64_t>(seed), offsets_c.const_data_ptr<int64_t>(), offsets_c.numel(),
      out.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "philox_rand (cuda): launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(genkernels, CUDA, m) {
  m.impl("philox_randint4x", &philox_randint4x_cuda);
  m.impl("philox_rand", &philox_rand_cuda);
}

}  // namespace genkernels::random
