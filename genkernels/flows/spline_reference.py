"""The rational-quadratic spline transform (Durkan et al., 2019, "Neural Spline Flows"), in
PyTorch: the spec of ``rq_spline``.

Each transformed feature x has its own monotone spline on [-bound, bound] with K bins, made
from raw parameters a conditioner returns: K unnormalised bin widths, K unnormalised bin
heights and K - 1 unconstrained interior knot derivatives. Outside [-bound, bound] the map is
the identity (log-determinant 0); at the two ends the knot derivatives are 1, so the spline
meets the identity tails with a continuous derivative.

Shapes: x (B, N) (features flattened); params (B, N, 3K - 1): per feature, the widths, then
the heights, then the interior derivatives (a conditioner's output reshaped); mask (N,),
1 = kept (the identity, its parameters unread), 0 = transformed.

Per transformed feature, with MIN_BIN = MIN_DERIVATIVE = 1e-3:

    w = MIN_BIN + (1 - K MIN_BIN) softmax(widths)      (bin widths as fractions, each >= MIN_BIN)
    knots xk_0..xk_K: xk_0 = -bound, xk_j = -bound + 2 bound (w_0 + ... + w_(j-1)), xk_K = bound
    the same from the heights for yk_0..yk_K
    d_0 = d_K = 1, d_j = MIN_DERIVATIVE + softplus(derivatives_(j-1)) for j = 1..K-1

In bin k (xk_k <= x < xk_(k+1); the last bin includes bound), with width W = xk_(k+1) - xk_k,
height H = yk_(k+1) - yk_k, slope s = H / W and theta = (x - xk_k) / W:

    y = yk_k + H (s theta^2 + d_k theta (1 - theta)) / (s + (d_k + d_(k+1) - 2 s) theta (1 - theta))
    dy/dx = s^2 (d_(k+1) theta^2 + 2 s theta (1 - theta) + d_k (1 - theta)^2)
            / (s + (d_k + d_(k+1) - 2 s) theta (1 - theta))^2

logdet = sum over the transformed features inside [-bound, bound] of log dy/dx. The inverse
finds the bin of y among the yk and solves the quadratic a theta^2 + b theta + c = 0 with
a = H (s - d_k) + (y - yk_k) e, b = H d_k - (y - yk_k) e, c = -s (y - yk_k), e = d_k + d_(k+1)
- 2 s, by theta = 2c / (-b - sqrt(b^2 - 4ac)) (the root in [0, 1], without cancellation);
x = xk_k + W theta, logdet = minus the forward's at x.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .coupling_reference import reference_vjp

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
# the raw derivative that gives a knot derivative of 1: zero widths and heights (equal bins)
# with every raw derivative at this value is the identity -- where a layer's conditioner
# starts its derivative outputs
IDENTITY_DERIVATIVE = math.log(math.expm1(1 - MIN_DERIVATIVE))


def knots(raw: torch.Tensor, bound: float) -> torch.Tensor:
    """(..., K) unnormalised bin sizes -> (..., K + 1) knots from -bound to bound (the ends
    exactly), each bin at least 2 bound MIN_BIN wide."""
    k = raw.shape[-1]
    frac = MIN_BIN + (1 - MIN_BIN * k) * torch.softmax(raw, -1)
    inner = torch.cumsum(frac[..., :-1], -1) * (2 * bound) - bound
    end = torch.full_like(inner[..., :1] if k > 1 else frac, bound)
    return torch.cat([-end, inner, end], -1)


def knot_derivatives(raw: torch.Tensor) -> torch.Tensor:
    """(..., K - 1) unconstrained interior derivatives -> (..., K + 1), the ends 1."""
    one = raw.new_ones((*raw.shape[:-1], 1))  # (not ones_like(raw[..., :1]): empty for K = 1)
    return torch.cat([one, MIN_DERIVATIVE + F.softplus(raw), one], -1)


def identity_bias(bias: torch.Tensor, features: int, bins: int) -> None:
    """Set a conditioner's output bias (features * (3 bins - 1),), laid out feature by feature,
    to the identity spline's raw parameters (0 for the widths and heights,
    IDENTITY_DERIVATIVE for the derivatives), in place."""
    with torch.no_grad():
        per = bias.view(features, 3 * bins - 1)
        per.zero_()
        per[:, 2 * bins:] = IDENTITY_DERIVATIVE


def bins(params: torch.Tensor) -> int:
    """K from the last dimension 3K - 1 (K >= 1)."""
    last = params.shape[-1]
    if last < 2 or (last + 1) % 3:
        raise ValueError(f"params' last dimension must be 3K - 1 (K bin widths, K heights, K - 1 derivatives) "
                         f"with K >= 1; got {last}")
    return (last + 1) // 3


def _bin_of(v: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Index k of the bin of v among (..., K + 1) edges: the number of interior edges <= v."""
    k = edges.shape[-1] - 1
    return (edges[..., 1:k] <= v[..., None]).sum(-1, keepdim=True)


def rq_spline(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor, bound: float,
              inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) input, (B, N, 3K - 1) raw spline parameters, (N,) binary mask, bound > 0 ->
    output (B, N) in x's dtype and the per-sample log-determinant (B,) in the accumulation
    dtype (fp32 for half and bfloat16 inputs, else x's)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    k = bins(params)
    xa = x.to(acc)
    kept = mask.to(torch.bool)
    # a kept feature's parameters never enter the spline: whatever they hold, their gradient is 0
    pa = torch.where(kept[:, None], torch.zeros((), dtype=acc, device=x.device), params.to(acc))
    inside = (xa >= -bound) & (xa <= bound) & ~kept
    # outside the interval (and on kept features) the spline is evaluated at 0 -- a finite
    # point whose result is discarded -- so nothing there reaches the output or a gradient
    v = torch.where(inside, xa, torch.zeros_like(xa))
    xk = knots(pa[..., :k], bound)
    yk = knots(pa[..., k:2 * k], bound)
    d = knot_derivatives(pa[..., 2 * k:])
    idx = _bin_of(v, yk if inverse else xk)
    x0, x1 = xk.gather(-1, idx)[..., 0], xk.gather(-1, idx + 1)[..., 0]
    y0, y1 = yk.gather(-1, idx)[..., 0], yk.gather(-1, idx + 1)[..., 0]
    d0, d1 = d.gather(-1, idx)[..., 0], d.gather(-1, idx + 1)[..., 0]
    width, height = x1 - x0, y1 - y0
    slope = height / width
    e = d0 + d1 - 2 * slope
    if inverse:
        dy = v - y0
        a = height * (slope - d0) + dy * e
        b = height * d0 - dy * e
        c = -slope * dy
        disc = (b * b - 4 * a * c).clamp_min(0)
        theta = (2 * c) / (-b - torch.sqrt(disc))
        out = x0 + theta * width
    else:
        theta = (v - x0) / width
    t1 = theta * (1 - theta)
    denom = slope + e * t1
    if not inverse:
        out = y0 + height * (slope * theta * theta + d0 * t1) / denom
    dnum = slope * slope * (d1 * theta * theta + 2 * slope * t1 + d0 * (1 - theta) * (1 - theta))
    log_deriv = torch.log(dnum) - 2 * torch.log(denom)
    zero = torch.zeros((), dtype=acc, device=x.device)
    y = torch.where(inside, out, xa).to(x.dtype)
    logdet = torch.where(inside, log_deriv, zero).sum(1)
    return y, -logdet if inverse else logdet


def vjp(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor,
        bound: float, inverse: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_x, grad_params) of rq_spline through this reference, with create_graph
    (coupling_reference.reference_vjp): the fused ops' backward under a double backward."""
    return reference_vjp(rq_spline, grad_y, grad_logdet, x, params, mask, bound, inverse)


def autograd_for(backward_op):
    """(backward, setup_context) of a fused rq_spline op whose VJP is ``backward_op``
    (grad_y, grad_logdet, x, params, mask, bound, inverse) -> (grad_x, grad_params) (it
    recomputes the bins from the inputs: nothing but the inputs is saved); an unused
    output's gradient is never formed; with create_graph the VJP runs through this reference
    (``vjp``), so second derivatives are exact."""

    def setup_context(ctx, inputs, output):
        x, params, mask, bound, inverse = inputs
        ctx.save_for_backward(x, params, mask)
        ctx.args = (bound, inverse)
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_logdet):
        x, params, mask = ctx.saved_tensors
        if grad_y is None and grad_logdet is None:
            return None, None, None, None, None
        grad_y = torch.zeros_like(x) if grad_y is None else grad_y
        grad_logdet = x.new_zeros(x.shape[0]) if grad_logdet is None else grad_logdet
        if torch.is_grad_enabled():
            return (*vjp(grad_y, grad_logdet, x, params, mask, *ctx.args), None, None, None)
        gx, gp = backward_op(grad_y, grad_logdet, x, params, mask, *ctx.args)
        return gx, gp, None, None, None

    return backward, setup_context
