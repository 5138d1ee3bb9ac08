"""Triton kernels of the SOM-masked layers and their ops ``genkernels::som_mask_linear_triton``,
``genkernels::som_mask_conv2d_triton`` and their backward ops (``..._backward_triton``).

Both layers run as one problem over *rows*: a row is an input of the linear layer, or one
output position (b, p) of the convolution, whose features are the patch under it -- the
columns of ``F.unfold(x)`` (B, Dp, L) read through strides, never copied into rows. Row
n = b L + p; its winner is winners[b, p] (winner per position) or winners[b, 0] (per
image); its outputs go to out[b, c, p] (the linear layer: L = 1). Three kernels, each
program owning what it writes (no atomics: every run gives the same bits):

* ``_mask_fwd_kernel``: a program per (row, block of BLOCK_S kept slots) gathers the kept
  channels' weight rows, (BLOCK_S, BLOCK_D) tile by tile over the features, and writes
  act(m (x . W_c + b_c)) to those channels only; the output was zero-filled.
* ``_mask_bwd_rows_kernel``: a program per (row, block of features) sums g_s W[c_s] over the
  row's kept slots, g = grad m [out > 0] (grad_x; for the convolution the patches'
  gradients, folded back by ``F.fold``).
* ``_mask_bwd_channels_kernel``: a program per (channel, block of features) sums g x over
  the (row, slot) pairs that keep the channel -- grouped by channel in the launcher (a
  stable sort of the pairs, in row order), read BLOCK_P pairs at a time (grad_W; the first
  feature block also sums g for grad_bias).

Memory: the output (zero-filled), for the convolution the unfolded input (B, Dp, L) and in
the backward the pairs (N x S int64) and the patches' gradients. Oracle: mask_reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of

# elements of a (BLOCK_S, BLOCK_D) gathered weight tile / (BLOCK_P, BLOCK_D) pair tile
TILE_ELEMENTS = 2048


@triton.jit
def _mask_fwd_kernel(
    OUT,          # *out, ACC, zero-filled: out[b, c, p] at b*stride_ob + c*stride_oc + p*stride_op
    X,            # *rows' features: x[n = b L + p, d] at b*stride_xb + d*stride_xd + p*stride_xp
    W,            # *weight (C, D), x's dtype, any strides
    BIAS,         # *bias (C,) (read when HAS_BIAS)
    WINNERS,      # *winners (B, P) int64 contiguous, P = 1 or L
    KEPT,         # *kept (K, S) int64 contiguous, -1 padding
    VALUES,       # *values (K, S) contiguous, mask values
    L, D, S, P,
    stride_xb, stride_xd, stride_xp, stride_wc, stride_wd, stride_ob, stride_oc, stride_op,
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK_S: tl.constexpr,   # kept slots per program
    BLOCK_D: tl.constexpr,   # features per tile
    ACC: tl.constexpr,       # accumulation dtype
):
    n = tl.program_id(0).to(tl.int64)
    b = n // L
    p = n % L
    w = tl.load(WINNERS + b * P + tl.where(P > 1, p, 0))
    slots = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    slot_mask = slots < S
    ch = tl.load(KEPT + w * S + slots, mask=slot_mask, other=-1)
    valid = ch >= 0
    ch = tl.where(valid, ch, 0)
    m = tl.load(VALUES + w * S + slots, mask=valid, other=0.0).to(ACC)
    feats = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_S], ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + feats
        d_mask = d < D
        xv = tl.load(X + b * stride_xb + d * stride_xd + p * stride_xp, mask=d_mask, other=0.0).to(ACC)
        wv = tl.load(W + ch[:, None] * stride_wc + d[None, :] * stride_wd, mask=valid[:, None] & d_mask[None, :],
                     other=0.0).to(ACC)
        acc += tl.sum(wv * xv[None, :], 1)
    if HAS_BIAS:
        acc += tl.load(BIAS + ch, mask=valid, other=0.0).to(ACC)
    y = m * acc
    if RELU:
        y = tl.maximum(y, 0.0)
    tl.store(OUT + b * stride_ob + ch * stride_oc + p * stride_op, y, mask=valid)


@triton.jit
def _masked_grads(GRAD, OUT, VALUES, ch, valid, w, slots, b, p, S,
                  stride_gb, stride_gc, stride_gp, stride_ob, stride_oc, stride_op, RELU: tl.constexpr,
                  ACC: tl.constexpr):
    """g = grad m [out > 0] of the kept slots (0 elsewhere)."""
    m = tl.load(VALUES + w * S + slots, mask=valid, other=0.0).to(ACC)
    g = tl.load(GRAD + b * stride_gb + ch * stride_gc + p * stride_gp, mask=valid, other=0.0).to(ACC) * m
    if RELU:
        o = tl.load(OUT + b * stride_ob + ch * stride_oc + p * stride_op, mask=valid, other=0.0)
        g = tl.where(o > 0, g, 0.0)
    return tl.where(valid, g, 0.0)


@triton.jit
def _mask_bwd_rows_kernel(
    GRAD_X,       # *grad of the rows' features, ACC: at b*stride_xb + d*stride_xd + p*stride_xp
    GRAD,         # *grad of the output, ACC, any strides (as out)
    OUT,          # *out, ACC (the forward's)
    W, WINNERS, KEPT, VALUES,
    L, D, S, P,
    stride_xb, stride_xd, stride_xp, stride_wc, stride_wd,
    stride_gb, stride_gc, stride_gp, stride_ob, stride_oc, stride_op,
    RELU: tl.constexpr,
    BLOCK_S: tl.constexpr,   # kept slots per step
    BLOCK_D: tl.constexpr,   # features per program
    ACC: tl.constexpr,
):
    """grad_x of one row's block of features: sum over the kept slots of g_s W[c_s, d]."""
    n = tl.program_id(0).to(tl.int64)
    b = n // L
    p = n % L
    w = tl.load(WINNERS + b * P + tl.where(P > 1, p, 0))
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    acc = tl.zeros([BLOCK_D], ACC)
    for s0 in range(0, S, BLOCK_S):
        slots = s0 + tl.arange(0, BLOCK_S)
        ch = tl.load(KEPT + w * S + slots, mask=slots < S, other=-1)
        valid = ch >= 0
        ch = tl.where(valid, ch, 0)
        g = _masked_grads(GRAD, OUT, VALUES, ch, valid, w, slots, b, p, S, stride_gb, stride_gc, stride_gp,
                          stride_ob, stride_oc, stride_op, RELU, ACC)
        wv = tl.load(W + ch[:, None] * stride_wc + d[None, :] * stride_wd, mask=valid[:, None] & d_mask[None, :],
                     other=0.0).to(ACC)
        acc += tl.sum(g[:, None] * wv, 0)
    tl.store(GRAD_X + b * stride_xb + d * stride_xd + p * stride_xp, acc, mask=d_mask)


@triton.jit
def _mask_bwd_channels_kernel(
    GRAD_W,       # *grad_weight (C, D) ACC contiguous
    GRAD_B,       # *grad_bias (C,) ACC
    GRAD, OUT,    # as in _mask_bwd_rows_kernel
    X,            # *rows' features (strides as in the forward)
    VALUES,       # *values (K, S)
    PAIR_ROW,     # *(N S,) int64: the rows of the (row, slot) pairs, grouped by channel
    PAIR_SLOT,    # *(N S,) int64: their slots
    PAIR_WINNER,  # *(N S,) int64: the rows' winners
    START,        # *(C + 1,) int64: channel c's pairs are [START[c], START[c + 1])
    L, D, S,
    stride_xb, stride_xd, stride_xp, stride_gb, stride_gc, stride_gp, stride_ob, stride_oc, stride_op,
    RELU: tl.constexpr,
    BLOCK_P: tl.constexpr,   # pairs per step
    BLOCK_D: tl.constexpr,   # features per program
    ACC: tl.constexpr,
):
    """grad_W[c, d-block] = sum of g x[row, d] over channel c's pairs; grad_b[c] = sum of g."""
    c = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    first = tl.load(START + c)
    last = tl.load(START + c + 1)
    acc = tl.zeros([BLOCK_D], ACC)
    acc_b = tl.zeros([BLOCK_P], ACC)
    lanes = tl.arange(0, BLOCK_P)
    for i0 in range(first, last, BLOCK_P):
        i = i0 + lanes
        valid = i < last
        n = tl.load(PAIR_ROW + i, mask=valid, other=0)
        slots = tl.load(PAIR_SLOT + i, mask=valid, other=0)
        w = tl.load(PAIR_WINNER + i, mask=valid, other=0)
        b = n // L
        p = n % L
        ch = tl.zeros([BLOCK_P], tl.int64) + c
        g = _masked_grads(GRAD, OUT, VALUES, ch, valid, w, slots, b, p, S, stride_gb, stride_gc, stride_gp,
                          stride_ob, stride_oc, stride_op, RELU, ACC)
        xv = tl.load(X + b[:, None] * stride_xb + d[None, :] * stride_xd + p[:, None] * stride_xp,
                     mask=valid[:, None] & d_mask[None, :], other=0.0).to(ACC)
        acc += tl.sum(g[:, None] * xv, 0)
        acc_b += g
    tl.store(GRAD_W + c * D + d, acc, mask=d_mask)
    if tl.program_id(1) == 0:
        tl.store(GRAD_B + c, tl.sum(acc_b, 0))


# ------------------------------------------------------------------------- launchers
def _fwd_config(s: int, d: int) -> dict:
    block_s = max(2, min(16, triton.next_power_of_2(max(s, 1))))
    block_d = max(16, min(triton.next_power_of_2(max(d, 1)), TILE_ELEMENTS // block_s))
    return {"BLOCK_S": block_s, "BLOCK_D": block_d, "num_warps": 4}


def _pairs_config(d: int) -> dict:
    """(BLOCK_P pairs, BLOCK_D features) of the channel kernel. Wide rows get half the
    forward's tile, 64 features: with 128 features x 16 pairs the kernel took 208-254
    registers on sm_80 / sm_90, with 64 x 16 it takes 126 (static report); narrow rows (16
    features) keep the whole tile, 128 pairs: 72-96 registers, where 64 pairs took 128 and
    spilled 8 bytes on sm_90."""
    block_d = max(16, min(64, triton.next_power_of_2(max(d, 1))))
    tile = TILE_ELEMENTS if block_d == 16 else TILE_ELEMENTS // 2
    return {"BLOCK_P": max(16, tile // block_d), "BLOCK_D": block_d, "num_warps": 4}


class _Rows:
    """The rows view of a problem: L positions per batch row, the features' strides."""

    def __init__(self, feats: torch.Tensor, l_count: int, d: int, strides: tuple[int, int, int]):
        self.feats, self.l_count, self.d, self.strides = feats, l_count, d, strides
        self.n = feats.shape[0] * l_count


def _linear_rows(x: torch.Tensor) -> _Rows:
    return _Rows(x, 1, x.shape[1], (x.stride(0), x.stride(1), 0))


def _conv_rows(x, weight, stride, padding, dilation) -> tuple[_Rows, tuple[int, int]]:
    cols = F.unfold(x, tuple(weight.shape[2:]), tuple(dilation), tuple(padding), tuple(stride))  # (B, Dp, L)
    ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
    return _Rows(cols, cols.shape[2], cols.shape[1], (cols.stride(0), cols.stride(1), cols.stride(2))), (ho, wo)


def _out_strides(out: torch.Tensor) -> tuple[int, int, int]:
    """(b, c, p) strides of an output (B, C) or (B, C, Ho, Wo) (positions row-major)."""
    if out.dim() == 2:
        return out.stride(0), out.stride(1), 0
    return out.stride(0), out.stride(1), out.stride(3)


def _forward(rows: _Rows, weight2d, bias, winners, kept, values, relu: bool, out: torch.Tensor) -> torch.Tensor:
    """Fills the kept outputs of a zero-filled ``out`` (ACC)."""
    s = kept.shape[1]
    if rows.n == 0 or s == 0:
        return out
    cfg = _fwd_config(s, rows.d)
    with device_of(out):
        _mask_fwd_kernel[(rows.n, triton.cdiv(s, cfg["BLOCK_S"]))](
            out, rows.feats, weight2d, bias if bias is not None else out, winners, kept, values,
            rows.l_count, rows.d, s, winners.shape[1], *rows.strides, weight2d.stride(0), weight2d.stride(1),
            *_out_strides(out), HAS_BIAS=bias is not None, RELU=bool(relu), ACC=TL_ACC[out.dtype], **cfg)
    return out


def _backward(grad, out, rows: _Rows, weight2d, winners, kept, values, relu: bool, output_mask, grad_rows):
    """grad_x into ``grad_rows`` (a rows view's storage, when wanted), and (grad_W, grad_b)."""
    acc = out.dtype
    c_count, d = weight2d.shape
    s = kept.shape[1]
    grad = grad.to(acc)
    g_strides, o_strides = _out_strides(grad), _out_strides(out)
    meta = dict(RELU=bool(relu), ACC=TL_ACC[acc])
    grad_w = torch.zeros((c_count, d), dtype=acc, device=out.device)
    grad_b = torch.zeros((c_count,), dtype=acc, device=out.device)
    if rows.n == 0 or s == 0:
        if grad_rows is not None:
            grad_rows.feats.zero_()
        return grad_w, grad_b
    with device_of(out):
        if grad_rows is not None:
            cfg = _fwd_config(s, d)
            _mask_bwd_rows_kernel[(rows.n, triton.cdiv(d, cfg["BLOCK_D"]))](
                grad_rows.feats, grad, out, weight2d, winners, kept, values, rows.l_count, d, s, winners.shape[1],
                *grad_rows.strides, weight2d.stride(0), weight2d.stride(1), *g_strides, *o_strides, **meta, **cfg)
        if output_mask[1] or output_mask[2]:
            # the (row, slot) pairs grouped by channel, in row order within a channel
            row_winner = winners.expand(-1, rows.l_count) if winners.shape[1] == 1 else winners
            row_winner = row_winner.reshape(-1)
            channels = kept[row_winner]                                             # (N, S)
            valid = channels >= 0
            pair_row = torch.arange(rows.n, device=out.device)[:, None].expand(-1, s)[valid]
            pair_slot = torch.arange(s, device=out.device)[None, :].expand(rows.n, -1)[valid]
            pair_channel = channels[valid]
            order = torch.sort(pair_channel, stable=True).indices
            pair_row, pair_slot = pair_row[order].contiguous(), pair_slot[order].contiguous()
            pair_winner = row_winner[pair_row].contiguous()
            start = torch.zeros(c_count + 1, dtype=torch.int64, device=out.device)
            start[1:] = torch.cumsum(torch.bincount(pair_channel, minlength=c_count), 0)
            cfg = _pairs_config(d)
            _mask_bwd_channels_kernel[(c_count, triton.cdiv(d, cfg["BLOCK_D"]))](
                grad_w, grad_b, grad, out, rows.feats, values, pair_row, pair_slot, pair_winner, start,
                rows.l_count, d, s, *rows.strides, *g_strides, *o_strides, **meta, **cfg)
    return grad_w, grad_b


def _empty_unless(want: bool, t: torch.Tensor) -> torch.Tensor:
    return t if want else t.new_empty((0,))


# -------------------------------------------------------------------------- linear ops
@torch.library.custom_op("genkernels::som_mask_linear_triton", mutates_args=())
def som_mask_linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, winners: torch.Tensor,
                           kept: torch.Tensor, values: torch.Tensor, relu: bool) -> torch.Tensor:
    out = torch.zeros((x.shape[0], weight.shape[0]), dtype=acc_dtype(x.dtype), device=x.device)
    return _forward(_linear_rows(x), weight, bias, winners.reshape(-1, 1).contiguous(), kept.contiguous(),
                    values.contiguous(), relu, out)


@som_mask_linear_triton.register_fake
def _som_mask_linear_triton_fake(x, weight, bias, winners, kept, values, relu):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=acc_dtype(x.dtype))


@torch.library.custom_op("genkernels::som_mask_linear_backward_triton", mutates_args=())
def som_mask_linear_backward_triton(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                    winners: torch.Tensor, kept: torch.Tensor, values: torch.Tensor,
                                    out: torch.Tensor, relu: bool, output_mask: list[bool]
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = out.dtype
    rows = _linear_rows(x)
    grad_x = torch.empty((x.shape[0], x.shape[1]), dtype=acc, device=x.device) if output_mask[0] else None
    grad_rows = _linear_rows(grad_x) if grad_x is not None else None
    grad_w, grad_b = _backward(grad, out, rows, weight, winners.reshape(-1, 1).contiguous(), kept.contiguous(),
                               values.contiguous(), relu, output_mask, grad_rows)
    return (grad_x if grad_x is not None else x.new_empty((0,), dtype=acc), _empty_unless(output_mask[1], grad_w),
            _empty_unless(output_mask[2], grad_b))


@som_mask_linear_backward_triton.register_fake
def _som_mask_linear_backward_triton_fake(grad, x, weight, winners, kept, values, out, relu, output_mask):
    return _grads_fake(x, weight, out.dtype, output_mask)


def _grads_fake(x, weight, acc, output_mask):
    shapes = (x.shape, weight.shape, (weight.shape[0],))
    return tuple(x.new_empty(shape if want else (0,), dtype=acc) for shape, want in zip(shapes, output_mask))


def _setup_context(ctx, inputs, output):
    x, weight, bias, winners, kept, values = inputs[:6]
    ctx.save_for_backward(x, weight, winners, kept, values, output)
    ctx.has_bias = bias is not None
    ctx.args = inputs[6:]


def _input_grads(ctx, grads):
    x, weight = ctx.saved_tensors[:2]
    gx, gw, gb = grads
    return (gx.to(x.dtype) if ctx.needs_input_grad[0] else None,
            gw.to(weight.dtype) if ctx.needs_input_grad[1] else None,
            gb.to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None)


def _linear_backward(ctx, grad):
    x, weight, winners, kept, values, out = ctx.saved_tensors
    mask = [bool(ctx.needs_input_grad[i]) for i in range(3)]
    grads = torch.ops.genkernels.som_mask_linear_backward_triton(grad, x, weight, winners, kept, values, out,
                                                                 *ctx.args, mask)
    return (*_input_grads(ctx, grads), None, None, None, None)


som_mask_linear_triton.register_autograd(_linear_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------- conv ops
@torch.library.custom_op("genkernels::som_mask_conv2d_triton", mutates_args=())
def som_mask_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, winners: torch.Tensor,
                           kept: torch.Tensor, values: torch.Tensor, stride: list[int], padding: list[int],
                           dilation: list[int], relu: bool) -> torch.Tensor:
    rows, (ho, wo) = _conv_rows(x, weight, stride, padding, dilation)
    out = torch.zeros((x.shape[0], weight.shape[0], ho, wo), dtype=acc_dtype(x.dtype), device=x.device)
    return _forward(rows, weight.reshape(weight.shape[0], -1), bias, winners.contiguous(), kept.contiguous(),
                    values.contiguous(), relu, out)


@som_mask_conv2d_triton.register_fake
def _som_mask_conv2d_triton_fake(x, weight, bias, winners, kept, values, stride, padding, dilation, relu):
    ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
    return x.new_empty((x.shape[0], weight.shape[0], ho, wo), dtype=acc_dtype(x.dtype))


@torch.library.custom_op("genkernels::som_mask_conv2d_backward_triton", mutates_args=())
def som_mask_conv2d_backward_triton(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                    winners: torch.Tensor, kept: torch.Tensor, values: torch.Tensor,
                                    out: torch.Tensor, stride: list[int], padding: list[int], dilation: list[int],
                                    relu: bool, output_mask: list[bool]
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = out.dtype
    rows, _ = _conv_rows(x, weight, stride, padding, dilation)
    grad_rows = None
    if output_mask[0]:
        grad_cols = torch.empty(rows.feats.shape, dtype=acc, device=x.device)
        grad_rows = _Rows(grad_cols, rows.l_count, rows.d, (grad_cols.stride(0), grad_cols.stride(1),
                                                             grad_cols.stride(2)))
    grad_w, grad_b = _backward(grad, out, rows, weight.reshape(weight.shape[0], -1), winners.contiguous(),
                               kept.contiguous(), values.contiguous(), relu, output_mask, grad_rows)
    grad_x = F.fold(grad_rows.feats, tuple(x.shape[2:]), tuple(weight.shape[2:]), tuple(dilation), tuple(padding),
                    tuple(stride)) if grad_rows is not None else x.new_empty((0,), dtype=acc)
    return grad_x, _empty_unless(output_mask[1], grad_w.reshape(weight.shape)), _empty_unless(output_mask[2], grad_b)


@som_mask_conv2d_backward_triton.register_fake
def _som_mask_conv2d_backward_triton_fake(grad, x, weight, winners, kept, values, out, stride, padding, dilation,
                                          relu, output_mask):
    return _grads_fake(x, weight, out.dtype, output_mask)


def _conv_backward(ctx, grad):
    x, weight, winners, kept, values, out = ctx.saved_tensors
    mask = [bool(ctx.needs_input_grad[i]) for i in range(3)]
    grads = torch.ops.genkernels.som_mask_conv2d_backward_triton(grad, x, weight, winners, kept, values, out,
                                                                 *ctx.args, mask)
    return (*_input_grads(ctx, grads), None, None, None, None, None, None, None)


som_mask_conv2d_triton.register_autograd(_conv_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def ints(*names):
        return {name: "i32" for name in names}

    def fwd(dtype: str, s: int, d: int, label: str) -> TritonKernel:
        acc = "fp64" if dtype == "fp64" else "fp32"
        cfg = _fwd_config(s, d)
        sig = {"OUT": ptr(acc), "X": ptr(dtype), "W": ptr(dtype), "BIAS": ptr(dtype), "WINNERS": ptr("i64"),
               "KEPT": ptr("i64"), "VALUES": ptr(dtype)}
        sig |= ints("L", "D", "S", "P", "stride_xb", "stride_xd", "stride_xp", "stride_wc", "stride_wd", "stride_ob",
                    "stride_oc", "stride_op")
        meta = {"HAS_BIAS": True, "RELU": True, "BLOCK_S": cfg["BLOCK_S"], "BLOCK_D": cfg["BLOCK_D"],
                "ACC": {"fp32": tl.float32, "fp64": tl.float64}[acc]}
        return TritonKernel("som", f"_mask_fwd_kernel[{dtype},S={s},D={d},{label}]", lambda: _mask_fwd_kernel, sig,
                            meta, cfg["num_warps"], 2)

    def bwd_rows(dtype: str, s: int, d: int, label: str) -> TritonKernel:
        acc = "fp64" if dtype == "fp64" else "fp32"
        cfg = _fwd_config(s, d)
        sig = {"GRAD_X": ptr(acc), "GRAD": ptr(acc), "OUT": ptr(acc), "W": ptr(dtype), "WINNERS": ptr("i64"),
               "KEPT": ptr("i64"), "VALUES": ptr(dtype)}
        sig |= ints("L", "D", "S", "P", "stride_xb", "stride_xd", "stride_xp", "stride_wc", "stride_wd", "stride_gb",
                    "stride_gc", "stride_gp", "stride_ob", "stride_oc", "stride_op")
        meta = {"RELU": True, "BLOCK_S": cfg["BLOCK_S"], "BLOCK_D": cfg["BLOCK_D"],
                "ACC": {"fp32": tl.float32, "fp64": tl.float64}[acc]}
        return TritonKernel("som", f"_mask_bwd_rows_kernel[{dtype},S={s},D={d},{label}]",
                            lambda: _mask_bwd_rows_kernel, sig, meta, cfg["num_warps"], 2)

    def bwd_channels(dtype: str, d: int, label: str) -> TritonKernel:
        acc = "fp64" if dtype == "fp64" else "fp32"
        cfg = _pairs_config(d)
        sig = {"GRAD_W": ptr(acc), "GRAD_B": ptr(acc), "GRAD": ptr(acc), "OUT": ptr(acc), "X": ptr(dtype),
               "VALUES": ptr(dtype), "PAIR_ROW": ptr("i64"), "PAIR_SLOT": ptr("i64"), "PAIR_WINNER": ptr("i64"),
               "START": ptr("i64")}
        sig |= ints("L", "D", "S", "stride_xb", "stride_xd", "stride_xp", "stride_gb", "stride_gc", "stride_gp",
                    "stride_ob", "stride_oc", "stride_op")
        meta = {"RELU": True, "BLOCK_P": cfg["BLOCK_P"], "BLOCK_D": cfg["BLOCK_D"],
                "ACC": {"fp32": tl.float32, "fp64": tl.float64}[acc]}
        return TritonKernel("som", f"_mask_bwd_channels_kernel[{dtype},D={d},{label}]",
                            lambda: _mask_bwd_channels_kernel, sig, meta, cfg["num_warps"], 2)

    # the MNIST layers: linear 784 -> 100 keeping 5; conv 3x3 over 1 and 16 channels
    # (Dp = 9, 144) keeping 5; fp64 (gradcheck) and bf16 inputs
    shapes = [("fp32", 5, 784, "linear"), ("fp32", 5, 9, "conv 1x3x3"), ("fp32", 5, 144, "conv 16x3x3"),
              ("fp64", 5, 144, "conv 16x3x3"), ("bf16", 5, 784, "linear")]
    return ([fwd(*shape) for shape in shapes] + [bwd_rows(*shape) for shape in shapes]
            + [bwd_channels(dtype, d, label) for dtype, _, d, label in shapes])
