"""Public op of the discretised logistic mixture (PixelCNN++'s output distribution):
validation, declaration, dispatch, autograd.

Re-exported flat in ``genkernels.ops`` (through ``autoregressive/ops.py``).
``logistic_mixture_log_prob`` runs on ``reference`` (mixture_reference.log_prob, differentiated
by autograd), ``cpu`` (csrc/cpu/logistic_mixture.cpp: one fused pass over the pixels,
forward and backward) and ``triton`` (mixture_triton.py: a program per block of pixels, the
components in a loop, forward and backward). Spec: mixture_reference's docstring.
"""

from __future__ import annotations

import torch

from .. import registry
from .._checks import acc_dtype, check_float_tensor, check_int, check_same_device
from . import mixture_reference


def _reference(params, v, mixtures, levels):
    return mixture_reference.log_prob(params, v, mixtures, levels)


def _cpu(params, v, mixtures, levels):
    dt = acc_dtype(params.dtype)
    return torch.ops.genkernels.logistic_mixture_log_prob(params.to(dt), v.to(dt), mixtures, levels)


def _fake(params, v, mixtures, levels):
    return params.new_empty((params.shape[0], params.shape[2], params.shape[3]))


def _backward_fake(grad, params, v, mixtures, levels):
    return torch.empty_like(params, memory_format=torch.contiguous_format)


# logistic_mixture_log_prob(params (B, P, H, W), v (B, C, H, W) levels, mixtures, levels) -> (B, H, W)
MIXTURE = registry.declare(
    "logistic_mixture_log_prob",
    reference=_reference,
    cpu=_cpu,
    triton=registry.lazy(__package__ + ".mixture_triton", "logistic_mixture_log_prob_triton"),
    fake=_fake,
    autograd=mixture_reference.autograd_for(
        lambda *args: torch.ops.genkernels.logistic_mixture_log_prob_backward(*args)))
registry.register_schema_kernels("logistic_mixture_log_prob_backward", fake=_backward_fake)
registry.static_kernels("autoregressive.mixture", registry.lazy(__package__ + ".mixture_triton", "static_kernels"))


def logistic_mixture_log_prob(params: torch.Tensor, v: torch.Tensor, mixtures: int, levels: int = 256, *,
                              backend: str | None = None) -> torch.Tensor:
    """Per-pixel log-likelihood (nats) of images under a discretised logistic mixture.

    Args:
        params: (B, P, H, W) float, P = K (1 + 2C + C (C - 1) / 2): each pixel's component
            logits, means, log-scales and channel coefficients (mixture_reference's layout).
        v: (B, C, H, W) integer levels in [0, levels) (any float or integer dtype).
        mixtures: K >= 1. levels: L >= 2 values per channel.
        backend: None (auto), "reference", "cpu" or "triton".
    Returns:
        (B, H, W) in params' dtype, differentiable in params (fp32 arithmetic for half and
        bfloat16); the cpu kernel computes it and its gradient in one pass over the pixels.
    """
    check_float_tensor("params", params, 4)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be a torch.Tensor; got {type(v).__name__}")
    if v.dim() != 4:
        raise ValueError(f"v must be (B, C, H, W); got shape {tuple(v.shape)}")
    check_same_device(params=params, v=v)
    mixtures = check_int("mixtures", mixtures, 1)
    levels = check_int("levels", levels, 2)
    b, c, h, w = v.shape
    want = mixture_reference.param_count(c, mixtures)
    if params.shape != (b, want, h, w):
        raise ValueError(f"params must be ({b}, {want}, {h}, {w}) for {c} channels and {mixtures} mixtures; got "
                         f"shape {tuple(params.shape)}")
    if v.numel() and not torch.compiler.is_compiling():
        lo, hi = float(v.min()), float(v.max())
        if lo < 0 or hi > levels - 1 or not bool((v == torch.round(v)).all()):
            raise ValueError(f"v must hold integer levels in [0, {levels - 1}]; got values in [{lo}, {hi}]")
    v = v.to(params.dtype)
    name = MIXTURE.resolve(params.device, backend)
    out = MIXTURE.kernels[name](params, v, mixtures, levels)
    return out if out.dtype == params.dtype else out.to(params.dtype)


__all__ = ["logistic_mixture_log_prob"]
