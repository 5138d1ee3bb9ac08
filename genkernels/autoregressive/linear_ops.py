"""Public op of the masked linear layer: validation, declaration, dispatch, autograd.

Re-exported flat in ``genkernels.ops`` (through ``autoregressive/ops.py``). ``masked_linear``
runs on ``reference`` (genkernels/autoregressive/linear_reference.py: linear of the masked
weight, differentiated by autograd), ``cpu`` (csrc/cpu/masked_linear.cpp: products over
the kept blocks only, forward and backward, autograd below) and ``triton``
(genkernels/autoregressive/linear_triton.py: kernels that loop only over the kept blocks;
the op registers its own backward op and autograd). Spec: linear_reference's docstring.
"""

from __future__ import annotations

import torch

from .. import registry
from .._checks import acc_dtype, check_float_tensor, check_same_device, check_same_dtype
from . import linear_reference


def _linear_reference(x, weight, bias, prefix):
    return linear_reference.masked_linear(x, weight, bias, prefix)


def _linear_cpu(x, weight, bias, prefix):
    dt = acc_dtype(x.dtype)
    if x.dtype != dt:
        x, weight, bias = x.to(dt), weight.to(dt), None if bias is None else bias.to(dt)
    return torch.ops.genkernels.masked_linear(x, weight, bias, prefix)


def _linear_fake(x, weight, bias, prefix):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _linear_backward_fake(grad, x, weight, prefix, output_mask):
    return (torch.empty_like(x) if output_mask[0] else x.new_empty((0,)),
            torch.empty_like(weight) if output_mask[1] else x.new_empty((0,)),
            x.new_empty((weight.shape[0],) if output_mask[2] else (0,)))


def _linear_setup_context(ctx, inputs, output):
    x, weight, bias, prefix = inputs
    ctx.save_for_backward(x, weight, prefix)
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad):
    x, weight, prefix = ctx.saved_tensors
    wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = torch.ops.genkernels.masked_linear_backward(grad.contiguous(), x, weight, prefix, wanted)
    return gx if wanted[0] else None, gw if wanted[1] else None, gb if wanted[2] else None, None


# masked_linear(x (B, Din), weight (Dout, Din), bias (Dout,) | None, prefix (Dout,) int64)
# -> (B, Dout); the cpu kernel takes float32 / float64 (the Python side converts the others).
LINEAR = registry.declare(
    "masked_linear",
    reference=_linear_reference,
    cpu=_linear_cpu,
    triton=registry.lazy(__package__ + ".linear_triton", "masked_linear_triton"),
    fake=_linear_fake,
    autograd=(_linear_backward, _linear_setup_context))
registry.register_schema_kernels("masked_linear_backward", fake=_linear_backward_fake)
registry.static_kernels("autoregressive.linear", registry.lazy(__package__ + ".linear_triton", "static_kernels"))


def check_prefix(prefix, out_features: int, in_features: int, device) -> torch.Tensor:
    """prefix as an int64 tensor of shape (out_features,) with values in [0, in_features]."""
    if not isinstance(prefix, torch.Tensor):
        raise TypeError(f"prefix must be a torch.Tensor of ints; got {type(prefix).__name__}")
    if prefix.dtype.is_floating_point or prefix.dtype == torch.bool or prefix.is_complex():
        raise TypeError(f"prefix must hold integers; got dtype {prefix.dtype}")
    if prefix.shape != (out_features,):
        raise ValueError(f"prefix must be ({out_features},) (one per output feature); got shape "
                         f"{tuple(prefix.shape)}")
    if prefix.numel() and not torch.compiler.is_compiling():
        lo, hi = int(prefix.min()), int(prefix.max())
        if lo < 0 or hi > in_features:
            raise ValueError(f"prefix must lie in [0, {in_features}] (the inputs each output sees); got "
                             f"[{lo}, {hi}]")
    return prefix.to(device=device, dtype=torch.int64)


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, prefix: torch.Tensor, *,
                  backend: str | None = None) -> torch.Tensor:
    """The masked linear layer: x @ (weight * M)^T + bias, M[j, i] = 1 for i < prefix[j].

    Args:
        x: (B, Din) float. weight: (Dout, Din). bias: (Dout,) or None. Same dtype and device.
        prefix: (Dout,) ints in [0, Din]: output j sees the first prefix[j] inputs (MADE's
            mask with the units sorted by degree; linear_reference.degrees_to_prefix).
        backend: None (auto), "reference", "cpu" or "triton".
    Returns:
        (B, Dout) in x's dtype, differentiable in x, weight and bias; the kernels skip the
        blocks the mask zeroes (fp32 arithmetic for half and bfloat16 inputs).
    """
    check_float_tensor("x", x, 2)
    check_float_tensor("weight", weight, 2)
    check_same_device(x=x, weight=weight, **({} if bias is None else {"bias": bias}))
    check_same_dtype(x=x, weight=weight, **({} if bias is None else {"bias": bias}))
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input features but x has {x.shape[1]}; they must match")
    if bias is not None:
        check_float_tensor("bias", bias, 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must be ({weight.shape[0]},); got shape {tuple(bias.shape)}")
    prefix = check_prefix(prefix, weight.shape[0], weight.shape[1], x.device)
    name = LINEAR.resolve(x.device, backend)
    out = LINEAR.kernels[name](x, weight, bias, prefix)
    return out if out.dtype == x.dtype else out.to(x.dtype)


__all__ = ["masked_linear"]
