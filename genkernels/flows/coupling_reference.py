"""The affine coupling's elementwise part, in PyTorch: the spec of ``affine_coupling``.

A coupling layer (NICE, RealNVP, Glow) splits the features with a binary mask m: the kept
features (m = 1) pass through and condition a network that returns, for every feature, a raw
log-scale s and a shift t; the others (m = 0) are scaled and shifted. This module is the part
after that network -- the mask, the bounded scale, the scale-and-shift and the per-sample
log-determinant -- which eager PyTorch runs as a chain of memory-bound kernels.

Shapes: x (B, N) (features flattened); params (B, 2N): each row's raw log-scales s, then its
shifts t (a conditioner's (B, 2C, H, W) or (B, 2D) output flattened); mask (N,), 1 = kept,
0 = transformed.
Bounded scale: sigma = bound tanh(s / bound) for a finite bound > 0 (|sigma| < bound: the
scale e^sigma stays in (e^-bound, e^bound), RealNVP's tanh scale), sigma = s for bound = inf.

    forward:  y = x                 where m = 1,   x e^sigma + t      where m = 0;
              logdet = sum over m = 0 of sigma
    inverse:  x = y                 where m = 1,   (y - t) e^-sigma  where m = 0;
              logdet = -sum over m = 0 of sigma

so inverse(forward(x)) = x and the two log-determinants cancel. The kept features' s and t
are ignored (never read into the result, zero gradient), whatever they hold.
"""

from __future__ import annotations

import math

import torch


def bounded_scale(s: torch.Tensor, bound: float) -> torch.Tensor:
    """sigma = bound tanh(s / bound) (finite bound > 0), or s itself (bound = inf)."""
    return s if math.isinf(bound) else bound * torch.tanh(s / bound)


def affine_coupling(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor, bound: float,
                    inverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N) input, (B, 2N) raw log-scales and shifts, (N,) binary mask -> output (B, N) in
    x's dtype, the per-sample log-determinant (B,) and the bounded log-scales sigma (B, N),
    zero on the kept features ((0,) when unbounded; the fused kernels' backward reads it),
    both in the accumulation dtype (fp32 for half and bfloat16 inputs)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n = x.shape[1]
    xa, pa = x.to(acc), params.to(acc)
    s, t = pa[:, :n], pa[:, n:]
    kept = mask.to(torch.bool)
    zero = torch.zeros((), dtype=acc, device=x.device)
    # the kept features' s never enters tanh: whatever it holds, its gradient is 0
    sigma = torch.where(kept, zero, bounded_scale(torch.where(kept, zero, s), bound))
    if inverse:
        moved = (xa - t) * torch.exp(-sigma)
    else:
        moved = xa * torch.exp(sigma) + t
    out = torch.where(kept, xa, moved).to(x.dtype)
    logdet = sigma.sum(1)
    saved = sigma if not math.isinf(bound) else sigma.new_empty((0,))
    return out, -logdet if inverse else logdet, saved


def reference_vjp(fn, grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, params: torch.Tensor,
                  *args) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_x, grad_params) of a flow op's reference ``fn(x, params, *args) -> (y, logdet,
    ...)`` by autograd, with create_graph: the fused ops' backward when a double backward is
    asked for (None for an input that does not require grad)."""
    with torch.enable_grad():
        inputs = [v for v in (x, params) if v.requires_grad]
        y, logdet = fn(x, params, *args)[:2]
        grads = iter(torch.autograd.grad((y, logdet), inputs, (grad_y.to(y.dtype), grad_logdet.to(logdet.dtype)),
                                         create_graph=True, allow_unused=True)) if inputs else iter(())
    return tuple(next(grads) if v.requires_grad else None for v in (x, params))


def vjp(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor,
        bound: float, inverse: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_x, grad_params) of affine_coupling through this reference (``reference_vjp``)."""
    return reference_vjp(affine_coupling, grad_y, grad_logdet, x, params, mask, bound, inverse)


def autograd_for(backward_op):
    """(backward, setup_context) of a fused affine_coupling op whose VJP is ``backward_op``
    (grad_y, grad_logdet, x, params, sigma, mask, bound, inverse) -> (grad_x, grad_params):
    sigma (the third output) is not differentiable; an unused output's gradient is never
    formed; with create_graph the VJP runs through this reference (``vjp``), so second
    derivatives are exact."""

    def setup_context(ctx, inputs, output):
        x, params, mask, bound, inverse = inputs
        ctx.save_for_backward(x, params, output[2], mask)
        ctx.args = (bound, inverse)
        ctx.mark_non_differentiable(output[2])
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_logdet, grad_sigma):
        x, params, sigma, mask = ctx.saved_tensors
        if grad_y is None and grad_logdet is None:
            return None, None, None, None, None
        grad_y = torch.zeros_like(x) if grad_y is None else grad_y
        grad_logdet = x.new_zeros(x.shape[0]) if grad_logdet is None else grad_logdet
        if torch.is_grad_enabled():
            return (*vjp(grad_y, grad_logdet, x, params, mask, *ctx.args), None, None, None)
        gx, gp = backward_op(grad_y, grad_logdet, x, params, sigma, mask, *ctx.args)
        return gx, gp, None, None, None

    return backward, setup_context
