// CUDA bindings of genkernels::ising_sweep: tensors -> the plain launchers of
// csrc/cuda/ising.cu. Built only where torch has CUDA (setup.py); the schema lives in
// csrc/genkernels.cpp. The int8 lattices are packed once per call, swept (two launches
// per sweep), counted after every measure_every sweeps and unpacked.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/ising.h"
#include "aten/ising_table.h"
#include "cuda/ising.cuh"

namespace genkernels::ising {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "ising_sweep (cuda): ", what, " launch failed: ",
              cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ising_sweep_cuda(
    const at::Tensor& spins, const at::Tensor& thresholds, int64_t n_sweeps, int64_t seed,
    int64_t offset, int64_t measure_every) {
  TORCH_CHECK(spins.is_cuda(), "ising_sweep (cuda): spins must be a CUDA tensor");
  TORCH_CHECK(spins.scalar_type() == at::kChar, "ising_sweep (cuda): spins must be int8; got ",
              spins.scalar_type());
  TORCH_CHECK(spins.dim() == 3 && spins.size(1) == spins.size(2),
              "ising_sweep (cuda): spins must be (B, L, L); got ", spins.sizes());
  const int64_t L64 = spins.size(1);
  TORCH_CHECK(L64 >= 4 && L64 % 2 == 0 && L64 <= (int64_t{1} << 24),
              "ising_sweep (cuda): L must be even, >= 4 and <= 2^24; got ", L64);
  TORCH_CHECK(thresholds.scalar_type() == at::kLong && thresholds.dim() == 2 &&
                  thresholds.size(0) == 2 && thresholds.size(1) == 5,
              "ising_sweep (cuda): thresholds must be a (2, 5) int64 tensor; got ",
              thresholds.scalar_type(), " ", thresholds.sizes());
  TORCH_CHECK(n_sweeps >= 0 && measure_every >= 0,
              "ising_sweep (cuda): n_sweeps and measure_every must be >= 0; got ", n_sweeps, ", ",
              measure_every);
  const c10::cuda::CUDAGuard device_guard(spins.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = spins.size(0);
  const int L = static_cast<int>(L64), W = (L / 2 + 63) / 64;
  const int64_t n_samples = measure_every > 0 ? n_sweeps / measure_every : 0;
  at::Tensor mismatched = at::zeros({B, n_samples}, spins.options().dtype(at::kLong));
  at::Tensor up = at::zeros({B, n_samples}, spins.options().dtype(at::kLong));
  const at::Tensor spins_c = spins.contiguous();
  if (B == 0 || n_sweeps == 0) return {spins_c.clone(), mismatched, up};

  const FlipTable table = make_table(thresholds);
  at::Tensor packed = at::empty({B, 2, L64, W}, spins.options().dtype(at::kLong));
  auto* words = reinterpret_cast<uint64_t*>(packed.mutable_data_ptr<int64_t>());
  check_launch(cuda::ising_pack_launch(spins_c.const_data_ptr<int8_t>(), B, L, words, stream), "pack");
  for (int64_t t = 0; t < n_sweeps; ++t) {
    for (int c = 0; c < 2; ++c) {
      check_launch(cuda::ising_half_sweep_launch(words, B, L, static_cast<uint64_t>(seed),
                                                 static_cast<uint64_t>(offset), t, c, table, stream),
                   "half-sweep");
    }
    if (measure_every > 0 && (t + 1) % measure_every == 0) {
      const int64_t sample = (t + 1) / measure_every - 1;
      check_launch(cuda::ising_count_launch(words, B, L,
                                            mismatched.mutable_data_ptr<int64_t>() + sample,
                                            up.mutable_data_ptr<int64_t>() + sample, n_samples, stream),
                   "count");
    }
  }
  at::Tensor out = at::empty({B, L64, L64}, spins_c.options());
  check_launch(cuda::ising_unpack_launch(words, B, L, out.mutable_data_ptr<int8_t>(), stream), "unpack");
  const int64_t n_spins = L64 * L64;
  return {out, 2 * n_spins - 2 * mismatched, 2 * up - n_spins};
}

}  // namespace

TORCH_LIBRARY_IMPL(genkernels, CUDA, m) {
  m.impl("ising_sweep", &ising_sweep_cuda);
}

}  // namespace genkernels::ising
