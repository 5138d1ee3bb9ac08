"""Public op of the rational-quadratic spline transform: validation, declaration, dispatch,
autograd.

Re-exported flat in ``genkernels.ops`` (through ``flows/ops.py``). ``rq_spline`` runs on
``reference`` (spline_reference.rq_spline, differentiated by autograd), ``cpu``
(csrc/cpu/spline.cpp: bin search, spline or its inverse and log-determinant in one pass per
element, one pass for the backward) and ``triton`` (spline_triton.py). Spec:
spline_reference's docstring.
"""

from __future__ import annotations

import math

import torch

from .. import registry
from .._checks import acc_dtype, check_float_tensor, check_same_device
from . import spline_reference
from .coupling_ops import flat_mask


def _reference(x, params, mask, bound, inverse):
    return spline_reference.rq_spline(x, params, mask, bound, inverse)


def _cpu(x, params, mask, bound, inverse):
    dt = acc_dtype(x.dtype)
    y, logdet = torch.ops.genkernels.rq_spline(x.to(dt), params.to(dt), mask.to(dt), bound, inverse)
    return y.to(x.dtype), logdet


def _fake(x, params, mask, bound, inverse):
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


def _backward_fake(grad_y, grad_logdet, x, params, mask, bound, inverse):
    return x.new_empty(x.shape), x.new_empty(params.shape)


# rq_spline(x (B, N), params (B, N, 3K - 1), mask (N,), bound, inverse) -> (y (B, N), logdet (B,))
SPLINE = registry.declare(
    "rq_spline",
    reference=_reference,
    cpu=_cpu,
    triton=registry.lazy(__package__ + ".spline_triton", "rq_spline_triton"),
    fake=_fake)   # the cpu op's autograd is C++ (csrc/cpu/spline.cpp: SplineFunction)
registry.register_schema_kernels("rq_spline_backward", fake=_backward_fake)


def _spec_vjp(grad_y, grad_logdet, x, params, mask, bound, inverse):
    """rq_spline_vjp: the VJP through the spec, differentiable -- the C++ autograd's backward
    under a double backward (zeros for an input that does not require grad: not asked for)."""
    gx, gp = spline_reference.vjp(grad_y, grad_logdet, x, params, mask, bound, inverse)
    return (torch.zeros_like(x) if gx is None else gx), (torch.zeros_like(params) if gp is None else gp)


if registry.register_schema_kernels("rq_spline_vjp"):
    torch.library.impl("genkernels::rq_spline_vjp", "CompositeImplicitAutograd")(_spec_vjp)
registry.static_kernels("flows.spline", registry.lazy(__package__ + ".spline_triton", "static_kernels"))


def check_tail_bound(bound) -> float:
    """The spline's interval half-width: a finite float > 0."""
    if isinstance(bound, bool) or not isinstance(bound, (int, float)):
        raise TypeError(f"bound must be a positive number; got {type(bound).__name__}")
    bound = float(bound)
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a finite number > 0 (the spline lives on [-bound, bound]); got {bound}")
    return bound


def rq_spline(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor | None = None, *, bound: float = 3.0,
              inverse: bool = False, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rational-quadratic spline transform (neural spline flows), fused: bin search, the
    monotone spline (or its inverse) and the per-sample log-determinant in one pass.

    Args:
        x: (B, *F) float input.
        params: (B, *F, 3K - 1) raw parameters per feature: K bin widths, K bin heights,
            K - 1 interior knot derivatives (unconstrained; softmax and softplus inside).
        mask: (*F) (or broadcastable to it) zeros and ones, 1 = kept (identity, its
            parameters unread); None transforms every feature.
        bound: the spline lives on [-bound, bound]; outside, the identity (log-determinant 0).
        inverse: apply the inverse map (x from y, with the same params).
        backend: None (auto), "reference", "cpu" or "triton".
    Returns:
        (y, logdet): y (B, *F) in x's dtype; logdet (B,) the log |det| of the map's Jacobian,
        fp32 for half and bfloat16 inputs. Differentiable in x and params.
    """
    check_float_tensor("x", x)
    check_float_tensor("params", params)
    if x.dim() < 2:
        raise ValueError(f"x must be (B, *features) with at least one feature dimension; got shape {tuple(x.shape)}")
    if params.dim() != x.dim() + 1 or tuple(params.shape[:-1]) != tuple(x.shape):
        raise ValueError(f"params must be {tuple(x.shape)} + (3K - 1,) for x of shape {tuple(x.shape)}; got "
                         f"{tuple(params.shape)}")
    spline_reference.bins(params)
    bound = check_tail_bound(bound)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be None or a torch.Tensor of zeros and ones; got {type(mask).__name__}")
        check_same_device(x=x, params=params, mask=mask)
    else:
        check_same_device(x=x, params=params)
    return apply(x, params, mask, bound, bool(inverse), backend, checked=False)


def apply(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor | None, bound: float, inverse: bool,
          backend: str | None, checked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """rq_spline after its argument checks (a mask of None: every feature transformed; a
    mask's values are checked on the CPU unless ``checked``)."""
    features = tuple(x.shape[1:])
    batch, n = x.shape[0], math.prod(features)
    acc = acc_dtype(x.dtype)
    flat = torch.zeros(n, dtype=acc, device=x.device) if mask is None else flat_mask(mask, features, acc, checked)
    name = SPLINE.resolve(x.device, backend)
    y, logdet = SPLINE.kernels[name](x.reshape(batch, n), params.reshape(batch, n, params.shape[-1]), flat, bound,
                                     inverse)
    return y.reshape(x.shape).to(x.dtype), logdet.to(acc)


__all__ = ["check_tail_bound", "rq_spline"]
