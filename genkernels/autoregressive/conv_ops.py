"""Public op of the masked convolution: validation, declaration, dispatch, autograd.

Re-exported flat in ``genkernels.ops`` (through ``autoregressive/ops.py``). ``masked_conv2d``
runs on ``reference`` (genkernels/autoregressive/conv_reference.py: conv2d of the masked
weight, differentiated by autograd), ``cpu`` (csrc/cpu/masked_conv.cpp: an implicit GEMM over
the kept taps, forward and backward, autograd below) and ``triton``
(genkernels/autoregressive/conv_triton.py: implicit-GEMM kernels over the kept taps, forward
and both gradients; the op registers its own backward op and autograd). Spec: conv_reference's
docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import registry
from .._checks import acc_dtype, check_choice, check_float_tensor, check_int, check_same_device, check_same_dtype
from . import conv_reference
from .conv_reference import MASK_TYPES, RULES, tap_rules


def _conv_reference(x, weight, bias, rules, channel_groups, dilation):
    return conv_reference.masked_conv2d(x, weight, bias, rules, channel_groups, dilation)


def _as_kernel_dtype(x, weight, bias):
    dt = acc_dtype(x.dtype)
    if x.dtype == dt:
        return x, weight, bias
    return x.to(dt), weight.to(dt), None if bias is None else bias.to(dt)


def _conv_cpu(x, weight, bias, rules, channel_groups, dilation):
    x, weight, bias = _as_kernel_dtype(x, weight, bias)
    return torch.ops.genkernels.masked_conv2d(x, weight, bias, rules, channel_groups, dilation)


def _conv_fake(x, weight, bias, rules, channel_groups, dilation):
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


def _conv_backward_fake(grad, x, weight, rules, channel_groups, dilation, output_mask):
    def shaped(t, wanted):
        return torch.empty_like(t) if wanted else t.new_empty((0,))
    return shaped(x, output_mask[0]), shaped(weight, output_mask[1]), \
        x.new_empty((weight.shape[0],) if output_mask[2] else (0,))


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, rules, channel_groups, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (list(rules), channel_groups, dilation)
    ctx.has_bias = bias is not None


def _conv_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = torch.ops.genkernels.masked_conv2d_backward(grad.contiguous(), x, weight, *ctx.args, wanted)
    return (gx if wanted[0] else None, gw if wanted[1] else None, gb if wanted[2] else None, None, None, None)


# masked_conv2d(x (B, Cin, H, W), weight (Cout, Cin, kh, kw), bias (Cout,) | None, rules
# (kh kw ints), channel_groups, dilation) -> (B, Cout, H, W); the cpu kernel takes float32 /
# float64 (the Python side converts half and bfloat16).
CONV = registry.declare(
    "masked_conv2d",
    reference=_conv_reference,
    cpu=_conv_cpu,
    triton=registry.lazy(__package__ + ".conv_triton", "masked_conv2d_triton"),
    fake=_conv_fake,
    autograd=(_conv_backward, _conv_setup_context))
registry.register_schema_kernels("masked_conv2d_backward", fake=_conv_backward_fake)
registry.static_kernels("autoregressive.conv", registry.lazy(__package__ + ".conv_triton", "static_kernels"))


def check_rules(rules, kernel_size: tuple[int, int]) -> list[int]:
    """A user's tap rules: kh * kw ints in RULES (row-major), as a list."""
    if isinstance(rules, torch.Tensor):
        rules = rules.flatten().tolist()
    if not isinstance(rules, Sequence) or isinstance(rules, str):
        raise TypeError(f"rules must be a sequence of {kernel_size[0] * kernel_size[1]} ints; got "
                        f"{type(rules).__name__}")
    rules = [check_int(f"rules[{i}]", r, 0, 3) for i, r in enumerate(rules)]
    if len(rules) != kernel_size[0] * kernel_size[1]:
        raise ValueError(f"rules must hold one rule per tap of the {kernel_size[0]} x {kernel_size[1]} kernel "
                         f"({kernel_size[0] * kernel_size[1]}); got {len(rules)}")
    return rules


def check_channel_groups(channel_groups, in_channels: int, out_channels: int) -> int:
    """channel_groups >= 1, dividing both channel counts."""
    groups = check_int("channel_groups", channel_groups, 1)
    for name, count in (("in_channels", in_channels), ("out_channels", out_channels)):
        if count % groups:
            raise ValueError(f"{name} ({count}) must split into channel_groups={groups} equal groups (the "
                             f"channels of a pixel, ordered group by group); {count} is not divisible by {groups}")
    return groups


def check_kernel_size(kernel_size) -> tuple[int, int]:
    """An odd int or an (odd, odd) pair: the masks need a centre tap."""
    if isinstance(kernel_size, int) and not isinstance(kernel_size, bool):
        kernel_size = (kernel_size, kernel_size)
    if not (isinstance(kernel_size, (tuple, list)) and len(kernel_size) == 2):
        raise TypeError(f"kernel_size must be an odd int or a pair of odd ints; got {kernel_size!r}")
    kh, kw = (check_int("kernel_size", k, 1) for k in kernel_size)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel_size must be odd (the mask is centred on the predicted pixel); got {kh} x {kw}")
    return kh, kw


def _check_conv_args(x, weight, bias, mask_type, channel_groups, dilation, rules) -> tuple[int, int, list[int]]:
    """The masked convolution's arguments checked: (groups, dilation, rules)."""
    check_float_tensor("x", x, 4)
    check_float_tensor("weight", weight, 4)
    check_same_device(x=x, weight=weight, **({} if bias is None else {"bias": bias}))
    check_same_dtype(x=x, weight=weight, **({} if bias is None else {"bias": bias}))
    kh, kw = check_kernel_size(tuple(weight.shape[2:]))
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input channels but x has {x.shape[1]}; they must match")
    if bias is not None:
        check_float_tensor("bias", bias, 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must be ({weight.shape[0]},) (one per output channel); got shape "
                             f"{tuple(bias.shape)}")
    groups = check_channel_groups(channel_groups, x.shape[1], weight.shape[0])
    dilation = check_int("dilation", dilation, 1)
    if rules is None:
        check_choice("mask_type", mask_type, MASK_TYPES)
        rules = list(tap_rules((kh, kw), mask_type, groups))
    else:
        rules = check_rules(rules, (kh, kw))
    return groups, dilation, rules


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, mask_type: str = "B",
                  channel_groups: int = 1, dilation: int = 1, *, rules=None,
                  backend: str | None = None) -> torch.Tensor:
    """The masked ("same"-padded, stride-1) convolution of an autoregressive image model.

    Args:
        x: (B, Cin, H, W) float. weight: (Cout, Cin, kh, kw), kh and kw odd; bias: (Cout,)
            or None. Same dtype and device.
        mask_type: "A" (the pixel itself is not seen: first layers) or "B" (it is, through
            the channel groups before and including the output's own).
        channel_groups: G >= 1 groups of input and output channels in pixel order (3 for
            RGB: R before G before B); G divides Cin and Cout.
        dilation: >= 1, the taps' spacing.
        rules: instead of mask_type, a rule per tap (kh * kw ints, row-major; see
            genkernels.autoregressive.conv_reference): 0 off, 1 full, 2 strict, 3 inclusive.
        backend: None (auto), "reference", "cpu" or "triton".
    Returns:
        (B, Cout, H, W) in x's dtype: conv2d(x, weight * mask, bias, padding=d (k // 2),
        dilation=d), differentiable in x, weight and bias, without multiplying what the mask
        removes (fp32 arithmetic for half and bfloat16 inputs).
    """
    groups, dilation, rules = _check_conv_args(x, weight, bias, mask_type, channel_groups, dilation, rules)
    name = CONV.resolve(x.device, backend)
    out = CONV.kernels[name](x, weight, bias, rules, groups, dilation)
    return out if out.dtype == x.dtype else out.to(x.dtype)


__all__ = ["RULES", "masked_conv2d"]
