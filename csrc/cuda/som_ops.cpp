// CUDA bindings of the SOM ops: tensors -> the plain launchers of csrc/cuda/som.cu.
// Built only where torch has CUDA (setup.py); the schemas live in csrc/genkernels.cpp.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cerrno>
#include <cstdlib>
#include <string_view>

#include "common/som.h"
#include "cuda/som.cuh"
#include "aten/som_names.h"

namespace genkernels::som {
namespace {

// GENKERNELS_SOM_ONLINE_BLOCKS: blocks per map of som_online -- unset, empty or "auto"
// (0): chosen per launch (csrc/cuda/som.cu, plan_metric); "1": one block per map; N > 1:
// the cooperative kernel with up to N blocks per map (fewer when M * N blocks cannot be
// co-resident). Lets the tests run both kernels on any shape.
int requested_online_blocks() {
  const char* env = std::getenv("GENKERNELS_SOM_ONLINE_BLOCKS");
  if (env == nullptr || *env == '\0' || std::string_view(env) == "auto") return 0;
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(env, &end, 10);
  TORCH_CHECK(*end == '\0' && errno == 0 && value >= 1 && value <= (1 << 20),
              "GENKERNELS_SOM_ONLINE_BLOCKS must be 'auto' or a block count in [1, 1048576]; "
              "got '", env, "'");
  return static_cast<int>(value);
}

// weights (M, K, D), x (N, D), order (M, T) int64, lr/sigma (M, T), coords (K, 2) ->
// trained weights (M, K, D) in weights' dtype. fp16/bf16 run on fp32 working copies,
// fp64 on fp64; the input tensors are never written.
at::Tensor som_online_cuda(const at::Tensor& weights, const at::Tensor& x, const at::Tensor& order,
                           const at::Tensor& lr, const at::Tensor& sigma, const at::Tensor& coords,
                           double period_0, double period_1, c10::string_view neighborhood_name,
                           c10::string_view rule_name, c10::string_view metric_name) {
  TORCH_CHECK(weights.is_cuda(), "som_online (cuda): weights must be a CUDA tensor");
  TORCH_CHECK(weights.dim() == 3, "som_online (cuda): weights must be (M, K, D); got ",
              weights.sizes());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == weights.size(2),
              "som_online (cuda): x must be (N, D) with D = ", weights.size(2), "; got ", x.sizes());
  TORCH_CHECK(order.scalar_type() == at::kLong && order.dim() == 2 &&
                  order.size(0) == weights.size(0),
              "som_online (cuda): order must be int64 (M, T); got ", order.scalar_type(), " ",
              order.sizes());
  TORCH_CHECK(lr.sizes() == order.sizes() && sigma.sizes() == order.sizes(),
              "som_online (cuda): lr and sigma must have order's shape ", order.sizes());
  TORCH_CHECK(coords.dim() == 2 && coords.size(0) == weights.size(1) && coords.size(1) == 2,
              "som_online (cuda): coords must be (K, 2); got ", coords.sizes());
  for (const at::Tensor* t : {&x, &order, &lr, &sigma, &coords}) {
    TORCH_CHECK(t->device() == weights.device(),
                "som_online (cuda): every tensor must be on ", weights.device());
  }
  const auto metric = parse_metric(metric_name);
  const auto kind = parse_neighborhood(neighborhood_name);
  const auto rule = parse_rule(rule_name);

  const c10::cuda::CUDAGuard device_guard(weights.device());
  const auto acc = weights.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = weights.to(acc, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  const int64_t M = weights.size(0), K = weights.size(1), D = weights.size(2), T = order.size(1);
  TORCH_CHECK(K < (int64_t{1} << 31), "som_online (cuda): node indices are 32-bit; got K = ", K,
              " nodes");
  if (M == 0 || K == 0 || T == 0) {
    return out.scalar_type() == weights.scalar_type() ? out : out.to(weights.scalar_type());
  }
  const at::Tensor xs = x.to(acc).contiguous();
  const at::Tensor order_c = order.contiguous();
  const at::Tensor lr_c = lr.to(acc).contiguous();
  const at::Tensor sigma_c = sigma.to(acc).contiguous();
  const at::Tensor coords_c = coords.to(acc).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const int requested = requested_online_blocks();
  cuda::OnlinePlan plan;
  cudaError_t err = acc == at::kDouble
      ? cuda::som_online_plan<double>(M, K, D, static_cast<int>(metric), requested, &plan)
      : cuda::som_online_plan<float>(M, K, D, static_cast<int>(metric), requested, &plan);
  TORCH_CHECK(err == cudaSuccess, "som_online (cuda): device query failed: ",
              cudaGetErrorString(err));
  // scratch of the cooperative kernel (per-block partial winners), from the caching
  // allocator on the current stream
  at::Tensor workspace;
  if (plan.workspace_bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(plan.workspace_bytes)},
                          weights.options().dtype(at::kByte));
  }
  void* workspace_ptr = workspace.defined() ? workspace.data_ptr() : nullptr;
  if (acc == at::kDouble) {
    err = cuda::som_online_launch<double>(
        xs.data_ptr<double>(), out.data_ptr<double>(), order_c.data_ptr<int64_t>(),
        lr_c.data_ptr<double>(), sigma_c.data_ptr<double>(), coords_c.data_ptr<double>(), M, K, D,
        T, period_0, period_1, static_cast<int>(kind), static_cast<int>(rule),
        static_cast<int>(metric), plan, workspace_ptr, stream);
  } else {
    err = cuda::som_online_launch<float>(
        xs.data_ptr<float>(), out.data_ptr<float>(), order_c.data_ptr<int64_t>(),
        lr_c.data_ptr<float>(), sigma_c.data_ptr<float>(), coords_c.data_ptr<float>(), M, K, D, T,
        static_cast<float>(period_0), static_cast<float>(period_1), static_cast<int>(kind),
        static_cast<int>(rule), static_cast<int>(metric), plan, workspace_ptr, stream);
  }
  TORCH_CHECK(err == cudaSuccess, "som_online (cuda): launch failed: ", cudaGetErrorString(err));
  return out.scalar_type() == weights.scalar_type() ? out : out.to(weights.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(genkernels, CUDA, m) {
  m.impl("som_online", &som_online_cuda);
}

}  // namespace genkernels::som
