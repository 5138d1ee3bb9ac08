// The double-backward path shared by the flows' fused ops' C++ autograd (coupling.cpp,
// actnorm.cpp): under create_graph the backward runs the op's spec -- its definition in
// differentiable ATen ops -- and autograd differentiates that, so second derivatives are exact.
#pragma once

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cstddef>
#include <tuple>
#include <vector>

namespace genkernels::cpu {

// The VJP (gy, gl) of spec() -> (y, logdet) with respect to the first `inputs` saved tensors
// that need a gradient, with create_graph; result[i] holds input i's (undefined for the
// others), `outputs` slots in all (the op's every argument).
template <typename Spec>
torch::autograd::variable_list spec_vjp(torch::autograd::AutogradContext* ctx,
                                        const torch::autograd::variable_list& saved, size_t inputs, size_t outputs,
                                        const at::Tensor& gy, const at::Tensor& gl, const Spec& spec) {
  torch::autograd::variable_list result(outputs), want;
  std::vector<size_t> slot;
  for (size_t i = 0; i < inputs; ++i)
    if (ctx->needs_input_grad(i)) {
      want.push_back(saved[i]);
      slot.push_back(i);
    }
  if (want.empty()) return result;
  auto [y, logdet] = spec();
  const torch::autograd::variable_list g = torch::autograd::grad(
      {y, logdet}, want, {gy.to(y.scalar_type()), gl.to(logdet.scalar_type())}, true, true, true);
  for (size_t i = 0; i < want.size(); ++i) result[slot[i]] = g[i];
  return result;
}

}  // namespace genkernels::cpu
