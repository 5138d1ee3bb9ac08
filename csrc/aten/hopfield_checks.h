// Argument checks of the hopfield_recall_async op, shared by the cpu and cuda bindings
// (host code with torch headers; the kernels assume validated input).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

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

// What both bindings hand their kernels: contiguous weights, the starting fields (one
// at::mm, the reference's `probes @ weights`), the +-1 states as int8 and the converged
// flags. `finished` is set (with its result in `early`) when no sweep needs to run.
struct RecallInputs {
  at::Tensor weights, fields, states8, converged;
  bool finished = false;
  std::tuple<at::Tensor, at::Tensor> early;
};

inline RecallInputs prepare_recall(const at::Tensor& weights, const at::Tensor& states,
                                   int64_t max_sweeps) {
  RecallInputs in;
  const int64_t b_count = states.size(0), n = weights.size(0);
  in.converged = at::zeros({b_count}, states.options().dtype(at::kBool));
  if (b_count == 0 || max_sweeps == 0 || n == 0) {
    if (n == 0 && b_count > 0 && max_sweeps > 0) in.converged.fill_(true);  // an empty sweep flips nothing
    in.finished = true;
    in.early = {states.clone(), in.converged};
    return in;
  }
  in.weights = weights.contiguous();
  const at::Tensor s_in = states.contiguous();
  in.fields = at::mm(s_in, in.weights).contiguous();
  in.states8 = s_in.gt(0).to(at::kChar).mul_(2).sub_(1).contiguous();
  return in;
}

}  // namespace genkernels::hopfield
