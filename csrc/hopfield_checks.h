// Argument checks of the hopfield_recall_async op, shared by the cpu and cuda bindings
// (host code with torch headers; the kernels assume validated input).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace genkernels::hopfield {

// weights (N, N) float32|float64; states (B, N) in weights' dtype; max_sweeps >= 0.
inline void check_recall_args(const at::Tensor& weights, const at::Tensor& states, int64_t max_sweeps) {
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == weights.size(1),
              "hopfield_recall_async: weights must be (N, N); got ", weights.sizes());
  TORCH_CHECK(states.dim() == 2 && states.size(1) == weights.size(0),
              "hopfield_recall_async: states must be (B, ", weights.size(0), "); got ", states.sizes());
  TORCH_CHECK(weights.scalar_type() == at::kFloat || weights.scalar_type() == at::kDouble,
              "hopfield_recall_async: weights must be float32 or float64; got ", weights.scalar_type());
  TORCH_CHECK(states.scalar_type() == weights.scalar_type(),
              "hopfield_recall_async: states must have weights' dtype ", weights.scalar_type(), "; got ",
              states.scalar_type());
  TORCH_CHECK(max_sweeps >= 0, "hopfield_recall_async: max_sweeps must be >= 0; got ", max_sweeps);
}

// The +-1 states as int8 (B, N), contiguous.
inline at::Tensor states_as_int8(const at::Tensor& states) {
  return states.gt(0).to(at::kChar).mul_(2).sub_(1).contiguous();
}

}  // namespace genkernels::hopfield
