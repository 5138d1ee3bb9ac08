"""Public op of the affine coupling's elementwise part: validation, declaration, dispatch,
autograd.

Re-exported flat in ``genkernels.ops`` (through ``flows/ops.py``). ``affine_coupling`` runs on
``reference`` (coupling_reference.affine_coupling, differentiated by autograd), ``cpu``
(csrc/cpu/coupling.cpp: one pass forward, one backward, vectorised for float) and
``triton`` (coupling_triton.py: a program per row block, forward and backward). Spec:
coupling_reference's docstring.
"""

from __future__ import annotations

import math

import torch

from .. import registry
from .._checks import acc_dtype, check_float_tensor, check_same_device
from . import coupling_reference


def _reference(x, s, t, mask, bound, inverse):
    return coupling_reference.affine_coupling(x, s, t, mask, bound, inverse)


def _cpu(x, s, t, mask, bound, inverse):
    dt = acc_dtype(x.dtype)
    return torch.ops.genkernels.affine_coupling(x.to(dt), s.to(dt), t.to(dt), mask.to(dt), bound, inverse)


def _fake(x, s, t, mask, bound, inverse):
    return x.new_empty(x.shape), x.new_empty((x.shape[0],))


def _backward_fake(grad_y, grad_logdet, x, s, t, mask, bound, inverse):
    return x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, s, t, mask, bound, inverse = inputs
    ctx.save_for_backward(x, s, t, mask)
    ctx.args = (bound, inverse)


def _backward(ctx, grad_y, grad_logdet):
    x, s, t, mask = ctx.saved_tensors
    gx, gs, gt = torch.ops.genkernels.affine_coupling_backward(grad_y, grad_logdet, x, s, t, mask, *ctx.args)
    return gx, gs, gt, None, None, None


# affine_coupling(x (B, N), s (B, N), t (B, N), mask (N,), bound, inverse) -> (y (B, N), logdet (B,))
COUPLING = registry.declare(
    "affine_coupling",
    reference=_reference,
    cpu=_cpu,
    triton=registry.lazy(__package__ + ".coupling_triton", "affine_coupling_triton"),
    fake=_fake,
    autograd=(_backward, _setup_context))
registry.register_schema_kernels("affine_coupling_backward", fake=_backward_fake)
registry.static_kernels("flows.coupling", registry.lazy(__package__ + ".coupling_triton", "static_kernels"))


def check_bound(bound) -> float:
    """bound as a float > 0 (inf allowed: no bound)."""
    if isinstance(bound, bool) or not isinstance(bound, (int, float)):
        raise TypeError(f"bound must be a positive number or math.inf; got {type(bound).__name__}")
    bound = float(bound)
    if not bound > 0:
        raise ValueError(f"bound must be > 0 (math.inf: no bound); got {bound}")
    return bound


def check_mask(mask, features: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
    """mask (broadcastable to ``features``) of zeros and ones, with at least one zero (a
    feature to transform) -> the mask as a bool tensor of shape ``features``. The values are
    read (a device sync on a GPU): call it once, where the mask is made."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of zeros and ones; got {type(mask).__name__}")
    try:
        full = mask.expand(features)
    except RuntimeError:
        raise ValueError(f"mask must have the features' shape {tuple(features)} (or broadcast to it); got "
                         f"shape {tuple(mask.shape)}") from None
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be binary: 1 where a feature is kept (conditions the others), 0 where "
                             "it is transformed; it holds other values")
    full = full.to(torch.bool)
    if bool(full.all()):
        raise ValueError("mask keeps every feature (all ones): there is nothing to transform")
    return full if device is None else full.to(device)


def affine_coupling(x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, *,
                    bound: float = math.inf, inverse: bool = False,
                    backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine coupling's mask, bounded scale, scale-and-shift and log-determinant, fused.

    Args:
        x: (B, *F) float input. s, t: (B, *F) raw log-scales and shifts (a conditioner's
            output for every feature; only the transformed features' values are used), any
            strides. mask: (*F) (or broadcastable to it) zeros and ones, 1 = kept; bool or
            float. Its values are checked on the CPU; on a GPU check it once where it is made
            (``check_mask``; AffineCoupling does).
        bound: log-scales are bounded as bound tanh(s / bound) (> 0; math.inf: not bounded).
        inverse: apply the inverse map (x from y, with the same s and t).
        backend: None (auto), "reference", "cpu" or "triton".
    Returns:
        (y, logdet): y (B, *F) in x's dtype, logdet (B,) the log |det| of the map's Jacobian
        (fp32 for half and bfloat16 inputs); differentiable in x, s and t.
    """
    check_float_tensor("x", x)
    check_float_tensor("s", s)
    check_float_tensor("t", t)
    if x.dim() < 2:
        raise ValueError(f"x must be (B, *features) with at least one feature dimension; got shape {tuple(x.shape)}")
    for name, other in (("s", s), ("t", t)):
        if other.shape != x.shape:
            raise ValueError(f"{name} must have x's shape {tuple(x.shape)}; got {tuple(other.shape)}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of zeros and ones; got {type(mask).__name__}")
    check_same_device(x=x, s=s, t=t, mask=mask)
    bound = check_bound(bound)
    features = tuple(x.shape[1:])
    if mask.device.type == "cpu" and not torch.compiler.is_compiling():
        flat = check_mask(mask, features)
    else:
        try:
            flat = mask.expand(features)
        except RuntimeError:
            raise ValueError(f"mask must have the features' shape {features} (or broadcast to it); got "
                             f"shape {tuple(mask.shape)}") from None
    batch, n = x.shape[0], math.prod(features)
    acc = acc_dtype(x.dtype)
    name = COUPLING.resolve(x.device, backend)
    y, logdet = COUPLING.kernels[name](_rows(x, batch, n), _rows(s, batch, n), _rows(t, batch, n),
                                       flat.reshape(-1).to(acc), bound, bool(inverse))
    return y.reshape(x.shape).to(x.dtype), logdet.to(acc)


def _rows(v: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """(B, *F) -> (B, N), a view where the features are contiguous (rows any stride)."""
    flat = v.reshape(batch, n)
    return flat if flat.shape[1] <= 1 or flat.stride(1) == 1 else flat.contiguous()


__all__ = ["affine_coupling", "check_bound", "check_mask"]
