"""Public op of the affine coupling's elementwise part: validation, declaration, dispatch,
autograd.

Re-exported flat in ``genkernels.ops`` (through ``flows/ops.py``). ``affine_coupling`` runs on
``reference`` (coupling_reference.affine_coupling, differentiated by autograd), ``cpu``
(csrc/cpu/coupling.cpp: one pass forward, one backward, vectorised for float; its autograd
registered in C++, a double backward through the spec's ATen ops) and ``triton``
(coupling_triton.py: a program per row block, forward and backward). Spec:
coupling_reference's docstring.
"""

from __future__ import annotations

import math
import weakref

import torch

from .. import registry
from .._checks import acc_dtype, check_float_tensor, check_same_device
from . import coupling_reference


def _reference(x, params, mask, bound, inverse):
    return coupling_reference.affine_coupling(x, params, mask, bound, inverse)


def _cpu(x, params, mask, bound, inverse):
    dt = acc_dtype(x.dtype)
    return torch.ops.genkernels.affine_coupling(x.to(dt), params.to(dt), mask.to(dt), bound, inverse)


def _fake(x, params, mask, bound, inverse):
    dt = acc_dtype(x.dtype)
    sigma = x.new_empty(x.shape, dtype=dt) if not math.isinf(bound) else x.new_empty((0,), dtype=dt)
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=dt), sigma


def _backward_fake(grad_y, grad_logdet, x, params, sigma, mask, bound, inverse):
    return x.new_empty(x.shape), x.new_empty(params.shape)


# affine_coupling(x (B, N), params (B, 2N), mask (N,), bound, inverse) -> (y (B, N), logdet (B,), sigma)
COUPLING = registry.declare(
    "affine_coupling",
    reference=_reference,
    cpu=_cpu,
    triton=registry.lazy(__package__ + ".coupling_triton", "affine_coupling_triton"),
    fake=_fake)   # the cpu op's autograd is C++ (csrc/cpu/coupling.cpp: CouplingFunction, double backward too)
registry.register_schema_kernels("affine_coupling_backward", fake=_backward_fake)
registry.static_kernels("flows.coupling", registry.lazy(__package__ + ".coupling_triton", "static_kernels"))


def check_bound(bound) -> float:
    """bound as a float >= 1e-6 (math.inf, or anything past 1e30, for no bound)."""
    if isinstance(bound, bool) or not isinstance(bound, (int, float)):
        raise TypeError(f"bound must be a positive number or math.inf; got {type(bound).__name__}")
    bound = float(bound)
    if not bound >= 1e-6:
        raise ValueError(f"bound must be >= 1e-6 (math.inf: no bound); got {bound}")
    return math.inf if bound > 1e30 else bound


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


def affine_coupling(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor, *, bound: float = math.inf,
                    inverse: bool = False, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine coupling's mask, bounded scale, scale-and-shift and log-determinant, fused.

    Args:
        x: (B, F0, *F) float input.
        params: (B, 2 F0, *F): a conditioner's output, the raw log-scales s (the first F0
            along dimension 1), then the shifts t -- as ``params.chunk(2, dim=1)`` splits it;
            read in place (any batch stride), its gradient written as one tensor. Only the
            transformed features' s and t are used.
        mask: (F0, *F) (or broadcastable to it) zeros and ones, 1 = kept; bool or float. Its
            values are checked on the CPU; on a GPU check it once where it is made
            (``check_mask``; AffineCoupling does).
        bound: log-scales are bounded as sigma = bound tanh(s / bound) (> 0; math.inf: not
            bounded, sigma = s).
        inverse: apply the inverse map (x from y, with the same params).
        backend: None (auto), "reference", "cpu" or "triton".
    Returns:
        (y, logdet): y (B, F0, *F) in x's dtype; logdet (B,) the log |det| of the map's
        Jacobian (sum of sigma over the transformed features; minus that for the inverse),
        fp32 for half and bfloat16 inputs. Differentiable in x and params.
    """
    check_float_tensor("x", x)
    check_float_tensor("params", params)
    if x.dim() < 2:
        raise ValueError(f"x must be (B, *features) with at least one feature dimension; got shape {tuple(x.shape)}")
    want = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
    if tuple(params.shape) != want:
        raise ValueError(f"params must be {want} (log-scales, then shifts, along dimension 1) for x of shape "
                         f"{tuple(x.shape)}; got {tuple(params.shape)}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of zeros and ones; got {type(mask).__name__}")
    check_same_device(x=x, params=params, mask=mask)
    bound = check_bound(bound)
    return apply(x, params, mask, bound, bool(inverse), backend, checked=False)


# id(mask) -> (a weak reference to it, its state -- version, storage, layout -- with the
# features and dtype, the flat (N,) mask in that dtype): a mask used again unchanged (a
# layer's, every step) is checked and flattened once. Keyed by id (a tensor's == is
# elementwise); an entry leaves when its mask is collected. Writes that bypass the version
# counter (through .data or a numpy view) are not seen: change a mask by assigning a new one.
_FLAT_MASKS: dict[int, tuple] = {}


def flat_mask(mask: torch.Tensor, features: tuple, dtype: torch.dtype, checked: bool) -> torch.Tensor:
    """The (N,) mask in ``dtype`` of features ``features``, checked (on the CPU, unless
    ``checked``) and cached while the mask is unchanged: the affine and spline ops' mask."""
    if torch.compiler.is_compiling():
        try:
            return mask.expand(features).reshape(-1).to(dtype).contiguous()
        except RuntimeError:
            raise ValueError(f"mask must have the features' shape {features} (or broadcast to it); got "
                             f"shape {tuple(mask.shape)}") from None
    # inference tensors have no version counter, and one cached from inference mode could
    # not be saved for a later backward: neither is cached
    cache = not (mask.is_inference() or torch.is_inference_mode_enabled())
    if cache:
        # the version catches in-place edits, the storage and layout a swapped .data
        state = (mask._version, mask.data_ptr(), mask.storage_offset(), mask.stride(), features, dtype)
        hit = _FLAT_MASKS.get(id(mask))
        if hit is not None and hit[0]() is mask and hit[1] == state:
            return hit[2]
    if checked or mask.device.type != "cpu":   # a GPU mask's values are not read here (no sync)
        try:
            full = mask.expand(features)
        except RuntimeError:
            raise ValueError(f"mask must have the features' shape {features} (or broadcast to it); got "
                             f"shape {tuple(mask.shape)}") from None
    else:
        full = check_mask(mask, features)
    # a copy, detached: never a view or a graph node that would keep the mask alive
    flat = full.detach().reshape(-1).to(dtype, copy=True)
    if cache:
        key = id(mask)
        _FLAT_MASKS[key] = (weakref.ref(mask, lambda _: _FLAT_MASKS.pop(key, None)), state, flat)
    return flat


def apply(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor, bound: float, inverse: bool,
          backend: str | None, checked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """affine_coupling after its argument checks: mask broadcasts to x's features, and its
    values are checked (on the CPU, the first time this mask is seen unchanged) unless
    ``checked`` (the coupling layers check theirs once, when made)."""
    features = tuple(x.shape[1:])
    batch, n = x.shape[0], math.prod(features)
    acc = acc_dtype(x.dtype)
    name = COUPLING.resolve(x.device, backend)
    y, logdet, _ = COUPLING.kernels[name](_rows(x, batch, n), _rows(params, batch, 2 * n),
                                          flat_mask(mask, features, acc, checked), bound, inverse)
    return y.reshape(x.shape).to(x.dtype), logdet.to(acc)


def _rows(v: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """(B, *F) -> (B, N), a view where the features are contiguous (rows any stride)."""
    flat = v.reshape(batch, n)
    return flat if flat.shape[1] <= 1 or flat.stride(1) == 1 else flat.contiguous()


__all__ = ["affine_coupling", "check_bound", "check_mask"]
