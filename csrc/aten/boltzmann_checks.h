// Argument checks of the bm_gibbs op, shared by the cpu and cuda bindings (host code with
// torch headers; the kernels assume validated input).
#pragma once
#include <ATen/ATen.h>

namespace genkernels::boltzmann {

// weights (N, N) float32|float64; bias (N,), states (C, N) and temperatures (S,) in
// weights' dtype; clamp (N,) bool.
inline void check_gibbs_args(const at::Tensor& weights, const at::Tensor& bias, const at::Tensor& states,
                             const at::Tensor& clamp, const at::Tensor& temperatures) {
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == weights.size(1),
              "bm_gibbs: weights must be (N, N); got ", weights.sizes());
  const int64_t n = weights.size(0);
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == n, "bm_gibbs: bias must be (", n, "); got ", bias.sizes());
  TORCH_CHECK(states.dim() == 2 && states.size(1) == n, "bm_gibbs: states must be (C, ", n, "); got ",
              states.sizes());
  TORCH_CHECK(clamp.dim() == 1 && clamp.size(0) == n && clamp.scalar_type() == at::kBool,
              "bm_gibbs: clamp must be a (", n, ") bool tensor; got ", clamp.sizes(), " ", clamp.scalar_type());
  TORCH_CHECK(temperatures.dim() == 1, "bm_gibbs: temperatures must be (S,); got ", temperatures.sizes());
  TORCH_CHECK(weights.scalar_type() == at::kFloat || weights.scalar_type() == at::kDouble,
              "bm_gibbs: weights must be float32 or float64; got ", weights.scalar_type());
  for (const at::Tensor* t : {&bias, &states, &temperatures}) {
    TORCH_CHECK(t->scalar_type() == weights.scalar_type(), "bm_gibbs: bias, states and temperatures must have "
                "weights' dtype ", weights.scalar_type(), "; got ", t->scalar_type());
  }
}

}  // namespace genkernels::boltzmann
