// Autograd of genkernels::rbm_half_step and rbm_half_step_binary, in C++ so that calls
// without gradients (the RBM's training loop) pay no Python autograd layer: a Python
// register_autograd kernel added about 20 us to every call of a 10-row half-step.
//
// P = sigmoid(z), z = s @ W + bias (transpose: s @ W^T + bias). The uint8 samples are not
// differentiable, and without return_probs (P empty) nothing is. Gradients:
//   dz = dP * P * (1 - P);  d bias = sum over rows of dz;
//   d s = dz @ W^T (transpose: dz @ W)      -- float states of the dense op only; the
//                                               binary op's 0/1 states are discrete;
//   d W = s^T @ dz (transpose: dz^T @ s).
// genkernels/boltzmann/rbm_triton.py registers the same backward for the Triton twins.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace genkernels::boltzmann::cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using HalfStepSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                             const at::Tensor&, int64_t, int64_t, bool, bool);

template <bool kBinary>
c10::TypedOperatorHandle<HalfStepSignature> half_step_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow(kBinary ? "genkernels::rbm_half_step_binary"
                                                        : "genkernels::rbm_half_step", "")
                             .typed<HalfStepSignature>();
  return op;
}

template <bool kBinary>
class HalfStep : public torch::autograd::Function<HalfStep<kBinary>> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& s, const at::Tensor& w,
                               const at::Tensor& bias, int64_t seed, int64_t offset, bool transpose,
                               bool return_probs) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [samples, probs] = half_step_op<kBinary>().call(s, w, bias, seed, offset, transpose, return_probs);
    ctx->save_for_backward({s, w, probs});
    ctx->saved_data["transpose"] = transpose;
    ctx->mark_non_differentiable({samples});
    return {samples, probs};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &s = saved[0], &w = saved[1], &probs = saved[2];
    const bool transpose = ctx->saved_data["transpose"].toBool();
    variable_list out(7);
    const at::Tensor& grad_probs = grads[1];
    if (!grad_probs.defined() || probs.size(0) != s.size(0)) return out;
    const at::Tensor dz = grad_probs * probs * (1 - probs);
    if (!kBinary && ctx->needs_input_grad(0)) out[0] = transpose ? dz.mm(w) : dz.mm(w.t());
    if (ctx->needs_input_grad(1)) {
      const at::Tensor sf = s.to(dz.scalar_type());
      out[1] = transpose ? dz.t().mm(sf) : sf.t().mm(dz);
    }
    if (ctx->needs_input_grad(2)) out[2] = dz.sum(0);
    return out;
  }
};

template <bool kBinary>
std::tuple<at::Tensor, at::Tensor> half_step_autograd(const at::Tensor& s, const at::Tensor& w,
                                                      const at::Tensor& bias, int64_t seed, int64_t offset,
                                                      bool transpose, bool return_probs) {
  auto outputs = HalfStep<kBinary>::apply(s, w, bias, seed, offset, transpose, return_probs);
  return {outputs[0], outputs[1]};
}

}  // namespace
}  // namespace genkernels::boltzmann::cpu

TORCH_LIBRARY_IMPL(genkernels, Autograd, m) {
  m.impl("rbm_half_step", &genkernels::boltzmann::cpu::half_step_autograd<false>);
  m.impl("rbm_half_step_binary", &genkernels::boltzmann::cpu::half_step_autograd<true>);
}
