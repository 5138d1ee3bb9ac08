"""Public op of the gated masked convolution (a Gated PixelCNN layer's convolution and gated
activation in one op): validation, declaration, dispatch, autograd.

Re-exported flat in ``genkernels.ops`` (through ``autoregressive/ops.py``).
``masked_conv2d_gated`` runs on ``reference`` (gate_reference.py: the convolution, then
tanh(a) * sigmoid(b), differentiated by autograd), ``cpu`` (csrc/cpu/masked_conv.cpp: the
convolution's products, then the gate in its epilogue image by image; the gate's backward
op ``gate_backward``) and ``triton`` (gate_triton.py: conv_triton's convolution kernel, then
one fused gate pass, forward and backward).
"""

from __future__ import annotations

import torch

from .. import registry
from .._checks import check_float_tensor, check_same_device
from . import conv_reference, gate_reference
from .conv_ops import _as_kernel_dtype, _check_conv_args


def _gated_reference(x, weight, bias, addend, rules, channel_groups, dilation):
    pre = conv_reference.masked_conv2d(x, weight, bias, rules, channel_groups, dilation)
    if addend is not None:
        pre = pre + addend
    return gate_reference.gate(pre, channel_groups), pre


def _gated_cpu(x, weight, bias, addend, rules, channel_groups, dilation):
    x, weight, bias = _as_kernel_dtype(x, weight, bias)
    if addend is not None and addend.dtype != x.dtype:
        addend = addend.to(x.dtype)
    return torch.ops.genkernels.masked_conv2d_gated(x, weight, bias, addend, rules, channel_groups, dilation)


def _gated_fake(x, weight, bias, addend, rules, channel_groups, dilation):
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return x.new_empty((shape[0], shape[1] // 2, *shape[2:])), x.new_empty(shape)


def _gate_backward_fake(grad, pre, groups):
    return torch.empty_like(pre, memory_format=torch.contiguous_format)


def _gated_setup_context(ctx, inputs, output):
    x, weight, bias, addend, rules, channel_groups, dilation = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.args = (list(rules), channel_groups, dilation)
    ctx.has_bias = bias is not None


def _gated_backward(ctx, grad_out, grad_pre_out):
    x, weight, pre = ctx.saved_tensors
    groups = ctx.args[1]
    grad_pre = torch.ops.genkernels.gate_backward(grad_out.contiguous(), pre, groups) if grad_out is not None \
        else torch.zeros_like(pre)
    if grad_pre_out is not None:
        grad_pre = grad_pre + grad_pre_out
    wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = torch.ops.genkernels.masked_conv2d_backward(grad_pre, x, weight, *ctx.args, wanted)
    return (gx if wanted[0] else None, gw if wanted[1] else None, gb if wanted[2] else None,
            grad_pre if ctx.needs_input_grad[3] else None, None, None, None)


# masked_conv2d_gated(x, weight, bias | None, addend (B, Cout, H, W) | None, rules,
# channel_groups, dilation) -> (out (B, Cout / 2, H, W), pre (B, Cout, H, W)): the gate of the
# convolution plus addend, and the pre-activation the backward reads.
GATED = registry.declare(
    "masked_conv2d_gated",
    reference=_gated_reference,
    cpu=_gated_cpu,
    triton=registry.lazy(__package__ + ".gate_triton", "masked_conv2d_gated_triton"),
    fake=_gated_fake,
    autograd=(_gated_backward, _gated_setup_context))
registry.register_schema_kernels("gate_backward", fake=_gate_backward_fake)
registry.static_kernels("autoregressive.gate", registry.lazy(__package__ + ".gate_triton", "static_kernels"))


def masked_conv2d_gated(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        addend: torch.Tensor | None = None, mask_type: str = "B", channel_groups: int = 1,
                        dilation: int = 1, *, rules=None, backend: str | None = None, return_pre: bool = False):
    """A Gated PixelCNN layer's convolution and gate in one op: tanh(a) * sigmoid(b) of
    pre = masked_conv2d(x, weight, bias, ...) + addend.

    Args:
        x, weight, bias, mask_type, channel_groups, dilation, rules, backend: as
            :func:`masked_conv2d`; Cout must split into channel_groups blocks of [a | b]
            (a multiple of 2 channel_groups): block g's first half is a, its second half b.
        addend: None or a tensor broadcastable to (B, Cout, H, W) added before the gate
            (the vertical stack's link and a condition's term; a (B, Cout, 1, 1) condition
            is read in place, not expanded).
        return_pre: also return pre (B, Cout, H, W), the gate's input (e.g. for the link
            from the vertical to the horizontal stack).
    Returns:
        (B, Cout / 2, H, W) in x's dtype (with return_pre: (out, pre)), differentiable in x,
        weight, bias and addend. The
        cpu kernel applies the gate in the convolution's epilogue, image by image while its
        products are in cache; the triton backend runs one fused gate pass after the
        convolution kernel; neither materialises tanh(a) or sigmoid(b) for the backward,
        which recomputes them from pre.
    """
    groups, dilation, rules = _check_conv_args(x, weight, bias, mask_type, channel_groups, dilation, rules)
    c_out = weight.shape[0]
    if c_out % (2 * groups):
        raise ValueError(f"the gate needs the {c_out} output channels in channel_groups={groups} blocks of "
                         f"[a | b]: a multiple of {2 * groups}; got {c_out}")
    shape = (x.shape[0], c_out, x.shape[2], x.shape[3])
    if addend is not None:
        check_float_tensor("addend", addend)
        check_same_device(x=x, addend=addend)
        try:
            addend = torch.broadcast_to(addend, shape)
        except RuntimeError:
            raise ValueError(f"addend must broadcast to {shape}; got shape {tuple(addend.shape)}") from None
        if addend.dtype != x.dtype:
            addend = addend.to(x.dtype)
    name = GATED.resolve(x.device, backend)
    out, pre = GATED.kernels[name](x, weight, bias, addend, rules, groups, dilation)
    out, pre = (t if t.dtype == x.dtype else t.to(x.dtype) for t in (out, pre))
    return (out, pre) if return_pre else out


__all__ = ["masked_conv2d_gated"]
