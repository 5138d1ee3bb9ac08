"""Triton kernels of the gated masked convolution: ``genkernels::masked_conv2d_gated_triton``
and ``genkernels::gate_backward_triton``.

Three layers (STYLE.md): ``_gate_fwd_kernel`` -> ``gate_fwd()`` -> the gated op (after
conv_triton's ``masked_conv2d_fwd``), and ``_gate_bwd_kernel`` -> ``gate_bwd()`` ->
``torch.ops.genkernels.gate_backward_triton`` (``torch.library.custom_op``s with fake
kernels; the gated op's autograd calls the gate's backward, then conv_triton's backward op).
The oracle is gate_reference.masked_conv2d_gated: gate(masked_conv2d(x) + addend).

* ``_gate_fwd_kernel``: one pass over the convolution's output: a lane owns one output value
  (image b, channel group g, channel j of the group's half, pixel), loads a and b of
  the pre-activation (channels 2 g q + j and 2 g q + q + j of the NCHW tensor, q the group's
  half), adds the addend's (any strides: a broadcast condition (B, C, 1, 1) expanded is read
  in place), writes the sums back into the pre-activation (what the backward reads) and
  tanh(a) sigmoid(b) to out.
* ``_gate_bwd_kernel``: one pass: grad sigmoid(b) (1 - tanh(a)^2) into grad_pre's a channel,
  grad tanh(a) sigmoid(b) (1 - sigmoid(b)) into its b channel, tanh and sigmoid recomputed.

On the GPU the gate is a separate pass after the convolution kernel, not yet inside its
epilogue (a tile would need both halves of its channel block). Arithmetic in fp32 (fp64 for
fp64); stores in the tensors' dtypes. tanh(a) = 2 sigmoid(2 a) - 1. A program owns BLOCK values of one (image, group)
block (grid: B G x blocks of q H W): its base offset is int64, offsets inside it int32
(one image's channels hold fewer than 2^31 values).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of
from . import conv_triton

BLOCK = 1024


@triton.jit
def _gate_fwd_kernel(PRE, ADDEND, OUT, QHW, HW, W, Q, GROUPS, stride_ab, stride_ac, stride_ay, stride_ax,
                     HAS_ADDEND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)                               # image b * GROUPS + group g
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)     # channel of the group's half, pixel
    live = j < QHW
    base = block.to(tl.int64) * 2 * QHW
    a = tl.load(PRE + base + j, mask=live, other=0.0).to(ACC)
    b = tl.load(PRE + base + QHW + j, mask=live, other=0.0).to(ACC)
    if HAS_ADDEND:
        c = (block % GROUPS) * 2 * Q + j // HW
        pix = j % HW
        at = (block // GROUPS).to(tl.int64) * stride_ab + c * stride_ac + (pix // W) * stride_ay + \
            (pix % W) * stride_ax
        a += tl.load(ADDEND + at, mask=live, other=0.0).to(ACC)
        b += tl.load(ADDEND + at + Q * stride_ac, mask=live, other=0.0).to(ACC)
        tl.store(PRE + base + j, a.to(PRE.dtype.element_ty), mask=live)
        tl.store(PRE + base + QHW + j, b.to(PRE.dtype.element_ty), mask=live)
    gate = (2.0 * tl.sigmoid(2.0 * a) - 1.0) * tl.sigmoid(b)
    tl.store(OUT + block.to(tl.int64) * QHW + j, gate.to(OUT.dtype.element_ty), mask=live)


@triton.jit
def _gate_bwd_kernel(GRAD, PRE, GRAD_PRE, QHW, ACC: tl.constexpr, BLOCK: tl.constexpr):
    block = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = j < QHW
    base = block.to(tl.int64) * 2 * QHW
    g = tl.load(GRAD + block.to(tl.int64) * QHW + j, mask=live, other=0.0).to(ACC)
    t = 2.0 * tl.sigmoid(2.0 * tl.load(PRE + base + j, mask=live, other=0.0).to(ACC)) - 1.0
    s = tl.sigmoid(tl.load(PRE + base + QHW + j, mask=live, other=0.0).to(ACC))
    tl.store(GRAD_PRE + base + j, (g * s * (1.0 - t * t)).to(GRAD_PRE.dtype.element_ty), mask=live)
    tl.store(GRAD_PRE + base + QHW + j, (g * t * s * (1.0 - s)).to(GRAD_PRE.dtype.element_ty), mask=live)


def gate_fwd(pre: torch.Tensor, addend: torch.Tensor | None, channel_groups: int) -> torch.Tensor:
    """pre (B, C, H, W) contiguous, updated in place to pre + addend; returns the gate (B, C /
    2, H, W) in pre's dtype."""
    batch, c, h, w = pre.shape
    out = torch.empty((batch, c // 2, h, w), dtype=pre.dtype, device=pre.device)
    if out.numel() == 0:
        return out
    strides = addend.stride() if addend is not None else (0, 0, 0, 0)
    q = c // (2 * channel_groups)
    with device_of(pre):
        _gate_fwd_kernel[(batch * channel_groups, triton.cdiv(q * h * w, BLOCK))](
            pre, addend if addend is not None else pre, out, q * h * w, h * w, w, q, channel_groups, *strides,
            HAS_ADDEND=addend is not None, ACC=TL_ACC[acc_dtype(pre.dtype)], BLOCK=BLOCK)
    return out


def gate_bwd(grad: torch.Tensor, pre: torch.Tensor, channel_groups: int) -> torch.Tensor:
    """grad (B, C / 2, H, W), pre (B, C, H, W) -> grad of pre, in pre's dtype."""
    grad = grad.contiguous()
    grad_pre = torch.empty_like(pre, memory_format=torch.contiguous_format)
    if grad.numel() == 0:
        return grad_pre
    batch, c, h, w = pre.shape
    q = c // (2 * channel_groups)
    with device_of(pre):
        _gate_bwd_kernel[(batch * channel_groups, triton.cdiv(q * h * w, BLOCK))](
            grad, pre, grad_pre, q * h * w, ACC=TL_ACC[acc_dtype(pre.dtype)], BLOCK=BLOCK)
    return grad_pre


# ------------------------------------------------------------------------------- ops
@torch.library.custom_op("genkernels::masked_conv2d_gated_triton", mutates_args=())
def masked_conv2d_gated_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               addend: torch.Tensor | None, rules: list[int], channel_groups: int,
                               dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    pre = conv_triton.masked_conv2d_fwd(x, weight, bias, rules, channel_groups, dilation)
    return gate_fwd(pre, addend, channel_groups), pre


@masked_conv2d_gated_triton.register_fake
def _masked_conv2d_gated_triton_fake(x, weight, bias, addend, rules, channel_groups, dilation):
    shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
    return x.new_empty((shape[0], shape[1] // 2, *shape[2:])), x.new_empty(shape)


@torch.library.custom_op("genkernels::gate_backward_triton", mutates_args=())
def gate_backward_triton(grad: torch.Tensor, pre: torch.Tensor, groups: int) -> torch.Tensor:
    return gate_bwd(grad, pre, groups)


@gate_backward_triton.register_fake
def _gate_backward_triton_fake(grad, pre, groups):
    return torch.empty_like(pre, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, weight, bias, addend, rules, channel_groups, dilation = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.args = (rules, channel_groups, dilation)


def _backward(ctx, grad_out, grad_pre_out):
    """Autograd of the gated op: the gate's VJP (plus any gradient of the pre-activation
    output), then the convolution's backward op; the addend's gradient is grad_pre."""
    x, weight, pre = ctx.saved_tensors
    rules, groups, dilation = ctx.args
    grad_pre = torch.ops.genkernels.gate_backward_triton(grad_out, pre, groups) if grad_out is not None \
        else torch.zeros_like(pre)
    if grad_pre_out is not None:
        grad_pre = grad_pre + grad_pre_out
    want = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]),
            ctx.bias_dtype is not None and bool(ctx.needs_input_grad[2])]
    grad_x, grad_weight, grad_bias = torch.ops.genkernels.masked_conv2d_backward_triton(
        grad_pre, x, weight, rules, groups, dilation, want)
    return (grad_x if want[0] else None, grad_weight if want[1] else None,
            grad_bias.to(ctx.bias_dtype) if want[2] else None,
            grad_pre if ctx.needs_input_grad[3] else None, None, None, None)


masked_conv2d_gated_triton.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The gate kernels' specialisations for the static GPU report (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def entry(kernel, dtype: str, addend: bool) -> TritonKernel:
        torch_dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}[dtype]
        meta = {"ACC": TL_ACC[acc_dtype(torch_dtype)], "BLOCK": BLOCK}
        if kernel is _gate_fwd_kernel:
            sig = {"PRE": ptr(dtype), "ADDEND": ptr(dtype), "OUT": ptr(dtype)}
            sig |= {n: "i32" for n in ("QHW", "HW", "W", "Q", "GROUPS", "stride_ab", "stride_ac", "stride_ay")}
            meta |= {"stride_ax": 1, "HAS_ADDEND": addend}
            label = f"{dtype},addend={addend}"
        else:
            sig = {"GRAD": ptr(dtype), "PRE": ptr(dtype), "GRAD_PRE": ptr(dtype), "QHW": "i32"}
            label = dtype
        return TritonKernel("autoregressive", f"{kernel.__name__}[{label}]", lambda: kernel, sig, meta, 4, 1)

    return [entry(_gate_fwd_kernel, d, a) for d in ("fp32", "bf16") for a in (False, True)] + \
        [entry(_gate_bwd_kernel, d, False) for d in ("fp32", "bf16")]
