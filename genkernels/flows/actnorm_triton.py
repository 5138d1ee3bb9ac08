"""Triton kernels of ActNorm's map: ``genkernels::actnorm_triton`` and
``genkernels::actnorm_backward_triton``.

Three layers (STYLE.md): ``_actnorm_fwd_kernel`` -> ``actnorm_fwd()`` -> the forward op, and
``_actnorm_bwd_kernel`` -> ``actnorm_bwd()`` -> the backward op (``torch.library.custom_op``s
with fake kernels; the forward op's autograd calls the backward op). The oracle is
actnorm_reference.actnorm differentiated by autograd; its docstring is the spec.

x is (B, C, P) with each row's (C, P) block contiguous (rows any stride: a view of every
other row is read in place). The forward is elementwise over the (B, N = C P) rows: the grid
is (row blocks, column blocks) (rows on the axis without CUDA's 65,535 limit), a program owns
a BLOCK_R x BLOCK_N tile of BLOCK elements (4 warps) -- one row's BLOCK columns for images,
BLOCK / next_pow2(N) rows of a short vector row, so a (B, 3) batch does not leave 1,021 of
every 1,024 lanes idle -- and reads the bias and log-scale of its columns once for its rows.
The log-determinant is P sum(log_scale) for every row: torch computes it on the host, as the
reference does.

The backward writes grad_x = grad_y m (m = exp(s) forward, exp(-s) inverse) and the two
per-channel sums the parameters' gradients need, S_g = sum grad_y and S_gx = sum grad_y x over
rows and positions. The grid is (channel blocks, row groups) (at most ROW_PROGRAMS row groups,
on the limited axis): a program owns BLOCK_C channels of a group of rows, walks it in tiles of
BLOCK_R rows x BLOCK_C channels x BLOCK_P positions (BLOCK elements: one channel's positions
for images, a block of rows x at most BLOCK_C_MAX channels for vectors), accumulates
elementwise in registers and reduces once at the end. Its two sums go to a (row groups, 2, C) buffer that
torch sums over the groups: no atomics, the split fixed by the shape alone, the same result
on every run. torch then forms grad_bias and grad_log_scale per the spec's VJP.

Arithmetic in fp32 (fp64 for fp64 inputs), loads and stores in the tensors' dtypes (bias and
log_scale in x's dtype or fp32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of, next_pow2
from . import actnorm_reference

BLOCK = 1024          # elements per program tile
NUM_WARPS = 4
ROW_PROGRAMS = 1024   # most row groups of the backward (rows of its partial-sum buffer)
# Most channels of a backward tile: a wider one reduces over fewer rows but takes more
# registers (sm_90 fp32: 1 x 1024 x 1 needs 131, 8 x 128 x 1 needs 78, fp64 166 and 128).
BLOCK_C_MAX = 128


@triton.jit
def _actnorm_fwd_kernel(X, BIAS, LOG_SCALE, Y, batch, N, P, stride_x, INVERSE: tl.constexpr, ACC: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    # X: (B, N) rows of x (row stride stride_x, columns contiguous); BIAS, LOG_SCALE: (C,);
    # Y: (B, N) contiguous; column j belongs to channel j // P.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_valid = cols < N
    chans = cols // P
    b = tl.load(BIAS + chans, mask=col_valid, other=0.0).to(ACC)
    s = tl.load(LOG_SCALE + chans, mask=col_valid, other=0.0).to(ACC)
    valid = (rows < batch)[:, None] & col_valid[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=valid, other=0.0).to(ACC)
    if INVERSE:
        y = x * tl.exp(-s)[None, :] - b[None, :]
    else:
        y = (x + b[None, :]) * tl.exp(s)[None, :]
    tl.store(Y + rows[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=valid)


@triton.jit
def _actnorm_bwd_kernel(GY, X, LOG_SCALE, GX, PART, batch, C, P, stride_gy, stride_x, rows_per_program,
                        INVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_P: tl.constexpr):
    # GY, X: (B, C, P) (row strides stride_gy, stride_x; each row's (C, P) block contiguous);
    # LOG_SCALE: (C,); GX: (B, C, P) contiguous; PART: (row groups, 2, C) -- this program's
    # sums of gy and gy x over its rows and every position, for its BLOCK_C channels.
    group = tl.program_id(1)
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_valid = chans < C
    s = tl.load(LOG_SCALE + chans, mask=chan_valid, other=0.0).to(ACC)
    m = (tl.exp(-s) if INVERSE else tl.exp(s))[None, :, None]
    chan_offsets = (chans.to(tl.int64) * P)[None, :, None]
    row_lanes = tl.arange(0, BLOCK_R)
    pos_lanes = tl.arange(0, BLOCK_P)
    sum_g = tl.zeros((BLOCK_R, BLOCK_C, BLOCK_P), dtype=ACC)
    sum_gx = tl.zeros((BLOCK_R, BLOCK_C, BLOCK_P), dtype=ACC)
    row_start = group.to(tl.int64) * rows_per_program
    row_stop = tl.minimum(row_start + rows_per_program, batch)
    for r0 in range(row_start, row_stop, BLOCK_R):
        rows = (r0 + row_lanes)[:, None, None]
        row_valid = (rows < row_stop) & chan_valid[None, :, None]
        for p0 in range(0, P, BLOCK_P):
            pos = (p0 + pos_lanes)[None, None, :]
            inner = chan_offsets + pos
            valid = row_valid & (pos < P)
            g = tl.load(GY + rows * stride_gy + inner, mask=valid, other=0.0).to(ACC)
            x = tl.load(X + rows * stride_x + inner, mask=valid, other=0.0).to(ACC)
            tl.store(GX + rows * C * P + inner, (g * m).to(GX.dtype.element_ty), mask=valid)
            sum_g += g
            sum_gx += g * x
    out = PART + group * 2 * C + chans
    tl.store(out, tl.sum(tl.sum(sum_g, axis=2), axis=0), mask=chan_valid)
    tl.store(out + C, tl.sum(tl.sum(sum_gx, axis=2), axis=0), mask=chan_valid)


def _rows_contiguous(v: torch.Tensor) -> torch.Tensor:
    """v (B, C, P) with each row's (C, P) block contiguous (rows any stride): v itself when it is."""
    ok = (v.shape[2] <= 1 or v.stride(2) == 1) and (v.shape[1] <= 1 or v.stride(1) == v.shape[2])
    return v if ok else v.contiguous()


def actnorm_fwd(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor,
                inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, P), bias and log_scale (C,) -> y (B, C, P) contiguous in x's dtype and logdet
    (B,) in the accumulation dtype."""
    x = _rows_contiguous(x)
    batch, c, p = x.shape
    n = c * p
    acc = acc_dtype(x.dtype)
    y = torch.empty((batch, c, p), dtype=x.dtype, device=x.device)
    if batch and n:
        block_n = min(next_pow2(n), BLOCK)
        block_r = BLOCK // block_n
        with device_of(x):
            _actnorm_fwd_kernel[(triton.cdiv(batch, block_r), triton.cdiv(n, block_n))](
                x, bias, log_scale, y, batch, n, p, x.stride(0), INVERSE=inverse, ACC=TL_ACC[acc], BLOCK_R=block_r,
                BLOCK_N=block_n, num_warps=NUM_WARPS)
    total = log_scale.to(acc).sum() * p
    return y, (-total if inverse else total).expand(batch).clone()


def actnorm_bwd(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, bias: torch.Tensor,
                log_scale: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VJP: grad_y (B, C, P), grad_logdet (B,) -> (grad_x (B, C, P) contiguous in x's dtype,
    grad_bias (C,) in bias' dtype, grad_log_scale (C,) in log_scale's dtype)."""
    grad_y, x = _rows_contiguous(grad_y), _rows_contiguous(x)
    batch, c, p = x.shape
    acc = acc_dtype(x.dtype)
    gx = torch.empty((batch, c, p), dtype=x.dtype, device=x.device)
    block_p = min(next_pow2(p), BLOCK)
    block_c = min(next_pow2(c), BLOCK // block_p, BLOCK_C_MAX)
    block_r = BLOCK // (block_p * block_c)
    rows_per_program = block_r * max(1, triton.cdiv(triton.cdiv(batch, block_r), ROW_PROGRAMS))
    groups = triton.cdiv(batch, rows_per_program)
    part = torch.zeros((groups, 2, c), dtype=acc, device=x.device)
    if batch and c and p:
        with device_of(x):
            _actnorm_bwd_kernel[(triton.cdiv(c, block_c), groups)](
                grad_y, x, log_scale, gx, part, batch, c, p, grad_y.stride(0), x.stride(0), rows_per_program,
                INVERSE=inverse, ACC=TL_ACC[acc], BLOCK_R=block_r, BLOCK_C=block_c, BLOCK_P=block_p,
                num_warps=NUM_WARPS)
    sum_g, sum_gx = part.sum(0)
    s = log_scale.to(acc)
    logdet_term = grad_logdet.to(acc).sum() * p
    if inverse:
        gb = -sum_g
        gs = -sum_gx * torch.exp(-s) - logdet_term
    else:
        e = torch.exp(s)
        gb = e * sum_g
        gs = e * (sum_gx + bias.to(acc) * sum_g) + logdet_term
    return gx, gb.to(bias.dtype), gs.to(log_scale.dtype)


# ------------------------------------------------------------------------------- ops
@torch.library.custom_op("genkernels::actnorm_triton", mutates_args=())
def actnorm_triton(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor,
                   inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return actnorm_fwd(x, bias, log_scale, inverse)


@actnorm_triton.register_fake
def _actnorm_triton_fake(x, bias, log_scale, inverse):
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


@torch.library.custom_op("genkernels::actnorm_backward_triton", mutates_args=())
def actnorm_backward_triton(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, bias: torch.Tensor,
                            log_scale: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return actnorm_bwd(grad_y, grad_logdet, x, bias, log_scale, inverse)


@actnorm_backward_triton.register_fake
def _actnorm_backward_triton_fake(grad_y, grad_logdet, x, bias, log_scale, inverse):
    return x.new_empty(x.shape), bias.new_empty(bias.shape), log_scale.new_empty(log_scale.shape)


_backward, _setup_context = actnorm_reference.autograd_for(
    lambda *args: torch.ops.genkernels.actnorm_backward_triton(*args))
actnorm_triton.register_autograd(_backward, setup_context=_setup_context)


def static_kernels() -> list:
    """The actnorm kernels' specialisations for the static GPU report (python -m
    genkernels._static): each kernel in fp32 forward and inverse on an image tile (one row's
    or one channel's 1,024 positions) and in bf16 on a vector tile (8 rows x 128 channels)."""
    from .._static import TritonKernel, ptr

    def entry(kernel, dtype: str, inverse: bool) -> TritonKernel:
        image = dtype == "fp32"
        meta = {"INVERSE": inverse, "ACC": TL_ACC[torch.float32]}
        if kernel is _actnorm_fwd_kernel:
            tile = {"BLOCK_R": 1, "BLOCK_N": BLOCK} if image else {"BLOCK_R": 8, "BLOCK_N": 128}
            sig = {"X": ptr(dtype), "BIAS": ptr(dtype), "LOG_SCALE": ptr(dtype), "Y": ptr(dtype), "batch": "i32",
                   "N": "i32", "P": "i32", "stride_x": "i32"}
        else:
            tile = ({"BLOCK_R": 1, "BLOCK_C": 1, "BLOCK_P": BLOCK} if image
                    else {"BLOCK_R": 8, "BLOCK_C": 128, "BLOCK_P": 1})
            sig = {"GY": ptr(dtype), "X": ptr(dtype), "LOG_SCALE": ptr(dtype), "GX": ptr(dtype), "PART": ptr("fp32"),
                   "batch": "i32", "C": "i32", "P": "i32", "stride_gy": "i32", "stride_x": "i32",
                   "rows_per_program": "i32"}
        shape = "x".join(str(v) for v in tile.values())
        name = f"{kernel.__name__}[{dtype},{'inverse' if inverse else 'forward'},{shape}]"
        return TritonKernel("flows", name, lambda: kernel, sig, {**meta, **tile}, NUM_WARPS, 3)

    variants = [("fp32", False), ("fp32", True), ("bf16", False)]
    return [entry(kernel, *variant) for kernel in (_actnorm_fwd_kernel, _actnorm_bwd_kernel) for variant in variants]
