"""Public op of ActNorm's map: validation, declaration, dispatch, autograd.

Re-exported flat in ``genkernels.ops`` (through ``flows/ops.py``). ``actnorm`` runs on
``reference`` (actnorm_reference.actnorm, differentiated by autograd), ``cpu``
(csrc/cpu/actnorm.cpp: one pass forward; one backward pass writing grad_x and summing the
two per-channel sums the parameters' gradients need; its autograd registered in C++, a
double backward through the spec's ATen ops) and ``triton`` (actnorm_triton.py). Spec:
actnorm_reference's docstring.
"""

from __future__ import annotations

import math

import torch

from .. import registry
from .._checks import acc_dtype, check_float_tensor, check_same_device
from . import actnorm_reference


def _reference(x, bias, log_scale, inverse):
    return actnorm_reference.actnorm(x, bias, log_scale, inverse)


def _cpu(x, bias, log_scale, inverse):
    dt = acc_dtype(x.dtype)
    y, logdet = torch.ops.genkernels.actnorm(x.to(dt), bias.to(dt), log_scale.to(dt), inverse)
    return y.to(x.dtype), logdet


def _fake(x, bias, log_scale, inverse):
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


def _backward_fake(grad_y, grad_logdet, x, bias, log_scale, inverse):
    return x.new_empty(x.shape), bias.new_empty(bias.shape), log_scale.new_empty(log_scale.shape)


# actnorm(x (B, C, P), bias (C,), log_scale (C,), inverse) -> (y (B, C, P), logdet (B,))
ACTNORM = registry.declare(
    "actnorm",
    reference=_reference,
    cpu=_cpu,
    triton=registry.lazy(__package__ + ".actnorm_triton", "actnorm_triton"),
    fake=_fake)   # the cpu op's autograd is C++ (csrc/cpu/actnorm.cpp: ActNormFunction, double backward too)
registry.register_schema_kernels("actnorm_backward", fake=_backward_fake)
registry.static_kernels("flows.actnorm", registry.lazy(__package__ + ".actnorm_triton", "static_kernels"))


def actnorm(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor, *, inverse: bool = False,
            backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Glow's activation normalisation, fused: y = (x + bias) exp(log_scale) per channel.

    Args:
        x: (B, C) vectors or (B, C, *spatial) images (channels on dimension 1), float.
        bias, log_scale: (C,) float, on x's device.
        inverse: apply the inverse map, x / exp(log_scale) - bias.
        backend: None (auto), "reference", "cpu" or "triton".
    Returns:
        (y, logdet): y in x's shape and dtype; logdet (B,) = (number of positions per channel)
        * sum(log_scale) (minus that for the inverse), fp32 for half and bfloat16 inputs.
        Differentiable in x, bias and log_scale (the parameters' gradients are per-channel
        sums in double on the CPU, in a fixed order).
    """
    check_float_tensor("x", x)
    if not isinstance(inverse, bool):
        raise TypeError(f"inverse must be a bool; got {type(inverse).__name__}")
    check_float_tensor("bias", bias, 1)
    check_float_tensor("log_scale", log_scale, 1)
    if x.dim() < 2:
        raise ValueError(f"x must be (B, C) or (B, C, *spatial); got shape {tuple(x.shape)}")
    c = x.shape[1]
    for name, v in (("bias", bias), ("log_scale", log_scale)):
        if v.shape != (c,):
            raise ValueError(f"{name} must be ({c},) (one per channel of x); got shape {tuple(v.shape)}")
    check_same_device(x=x, bias=bias, log_scale=log_scale)
    return apply(x, bias, log_scale, inverse, backend)


def apply(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor, inverse: bool,
          backend: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """actnorm after its argument checks (ActNorm's forward and inverse)."""
    batch, c = x.shape[0], x.shape[1]
    positions = math.prod(x.shape[2:])
    # under a torch.func transform (jacrev, vmap, ...) the automatic choice is the reference:
    # the cpu op's autograd is a C++ function, which functorch refuses
    functorch = backend is None and torch._C._functorch.peek_interpreter_stack() is not None
    name = "reference" if functorch else ACTNORM.resolve(x.device, backend)
    y, logdet = ACTNORM.kernels[name](x.reshape(batch, c, positions), bias, log_scale, inverse)
    return y.reshape(x.shape), logdet.to(acc_dtype(x.dtype))


__all__ = ["actnorm"]
