"""Glow's activation normalisation as a map, in PyTorch: the spec of ``actnorm``.

ActNorm scales and shifts every channel with its own learned pair (bias b, log-scale s);
Glow and RealNVP put one before every coupling. Its data-dependent initialisation is the
layer's business (``flows.ActNorm``); this is the map after it, which eager PyTorch runs as
an add, an exp, a multiply and the log-determinant's sum, each a kernel and an autograd node.

Shapes: x (B, C, P) -- a batch of vectors (B, C) is (B, C, 1), images (B, C, H, W) are
(B, C, H W) -- and bias, log_scale (C,). With e = exp(s) per channel:

    forward:  y = (x + b) e,       logdet = P sum_c s_c        (the same for every row)
    inverse:  y = x / e - b,       logdet = -P sum_c s_c

so inverse(forward(x)) = x and the log-determinants cancel. The VJP, with gy and gl the
incoming gradients, S_g = sum over rows and positions of gy and S_gx = sum of gy x per
channel, G = sum_b gl:

    forward:  gx = gy e,   gb = e S_g,   gs = e (S_gx + b S_g) + P G
    inverse:  gx = gy / e, gb = -S_g,    gs = -S_gx / e - P G
"""

from __future__ import annotations

import torch


def actnorm(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor,
            inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, P) input, (C,) bias and log-scale -> output (B, C, P) in x's dtype and the
    log-determinant (B,) in the accumulation dtype (fp32 for half and bfloat16 inputs)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa, b, s = x.to(acc), bias.to(acc)[:, None], log_scale.to(acc)[:, None]
    y = xa * torch.exp(-s) - b if inverse else (xa + b) * torch.exp(s)
    total = log_scale.to(acc).sum() * x.shape[2]
    logdet = (-total if inverse else total).expand(x.shape[0]).clone()
    return y.to(x.dtype), logdet


def vjp(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, bias: torch.Tensor,
        log_scale: torch.Tensor, inverse: bool) -> tuple[torch.Tensor | None, ...]:
    """(grad_x, grad_bias, grad_log_scale) of actnorm through this reference by autograd, with
    create_graph (the fused ops' backward under a double backward; None for an input that
    does not require grad)."""
    with torch.enable_grad():
        inputs = [v for v in (x, bias, log_scale) if v.requires_grad]
        y, logdet = actnorm(x, bias, log_scale, inverse)
        grads = iter(torch.autograd.grad((y, logdet), inputs, (grad_y.to(y.dtype), grad_logdet.to(logdet.dtype)),
                                         create_graph=True, allow_unused=True)) if inputs else iter(())
    return tuple(next(grads) if v.requires_grad else None for v in (x, bias, log_scale))


def autograd_for(backward_op):
    """(backward, setup_context) of a fused actnorm op whose VJP is ``backward_op`` (grad_y,
    grad_logdet, x, bias, log_scale, inverse) -> (grad_x, grad_bias, grad_log_scale): an
    unused output's gradient is never formed; with create_graph the VJP runs through this
    reference (``vjp``), so second derivatives are exact."""

    def setup_context(ctx, inputs, output):
        x, bias, log_scale, inverse = inputs
        ctx.save_for_backward(x, bias, log_scale)
        ctx.inverse = inverse
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_logdet):
        x, bias, log_scale = ctx.saved_tensors
        if grad_y is None and grad_logdet is None:
            return None, None, None, None
        grad_y = torch.zeros_like(x) if grad_y is None else grad_y
        grad_logdet = x.new_zeros(x.shape[0]) if grad_logdet is None else grad_logdet
        if torch.is_grad_enabled():
            return (*vjp(grad_y, grad_logdet, x, bias, log_scale, ctx.inverse), None)
        return (*backward_op(grad_y, grad_logdet, x, bias, log_scale, ctx.inverse), None)

    return backward, setup_context
