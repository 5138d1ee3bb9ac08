"""Triton kernels of the masked linear layer and their ops ``genkernels::masked_linear_triton``
and ``genkernels::masked_linear_backward_triton``.

Three layers (STYLE.md): ``_masked_linear_fwd_kernel`` -> ``masked_linear_fwd()`` (output
allocation, grid, fixed meta-parameters) -> ``torch.ops.genkernels.masked_linear_triton``, and
``_masked_linear_bwd_input_kernel`` + ``_masked_linear_bwd_weight_kernel`` ->
``masked_linear_bwd()`` -> ``torch.ops.genkernels.masked_linear_backward_triton``
(``torch.library.custom_op``s with fake kernels; the forward op's autograd calls the backward
op). The oracle is linear_reference.masked_linear: x @ (weight * M)^T + bias, M[j, i] = 1 iff
i < prefix[j].

All three kernels are tiled GEMMs whose products go through ``tl.dot``; the mask is never
multiplied and never loaded: output feature j's weight row is read on its first prefix[j]
columns only (masked loads), so the weights the mask removes are never read.

* ``_masked_linear_fwd_kernel``: a program owns BLOCK_M rows of x x BLOCK_N output features
  j0..j1. It loads its features' prefixes and adds x[rows, i] @ w[j, i]^T over the input
  columns [0, max(prefix[j0:j1])), BLOCK_K at a time: the column blocks no feature of the
  block sees are neither loaded nor multiplied, and inside the last partial block the
  weight tile is masked per (j, i). Then the bias.
* ``_masked_linear_bwd_input_kernel`` (grad_x = grad @ (W * M)): a program owns BLOCK_M rows
  x BLOCK_N input columns i0..i1. Only the output features with prefix > i0 reach the block;
  the program first scans the prefixes (SCAN a step: Dout loads, small beside the product's
  BLOCK_M Dout + Dout BLOCK_N) for the first and the last such feature and then sums
  grad[rows, j] @ w[j, i] over the output blocks from the first's (rounded down to a block
  boundary) to the last's, the weight tile masked per (j, i). With the outputs sorted by
  prefix (MADE's layers) the features with prefix > i0 are a suffix (ascending) or a prefix
  (descending) and no block that lies wholly before i0 is visited; unsorted prefixes are
  exact too, visiting every block between the first and the last feature that reaches i0.
* ``_masked_linear_bwd_weight_kernel`` (grad_weight): a program owns a (BLOCK_N output,
  BLOCK_K input) tile of grad_weight and sums grad[b, j]^T @ x[b, i] over one split of the
  batch (BLOCK_M rows a step), writing its partial sums, exact zeros where i >= prefix[j]; a
  tile whose columns all lie at or past its block's largest prefix runs no step. With few
  tiles the batch is split (about WEIGHT_PROGRAMS programs, at least MIN_SPLIT_ROWS rows a
  split: fixed numbers, so the same shapes sum in the same order on every device); the
  launcher adds the splits in split order. No atomics: every run gives the same bits.
* grad_bias is grad summed over the batch by torch, in the accumulation dtype.

Prefixes are clamped to [0, Din] in the kernels (a prefix past Din reads no column beyond
the row: the ops' range check is skipped under torch.compile) and held as int32.

Numerics (as conv_triton's): fp32 accumulation (fp64 for fp64 inputs). fp32 and fp64 tiles go
through ``tl.dot(input_precision="ieee")`` (exact fp32 / fp64 products, no tf32 rounding);
fp16 and bf16 tiles are loaded as they are and multiplied on the tensor cores into fp32.
Under ``TRITON_INTERPRET=1`` (CPU tensors), whose ``tl.dot`` mis-computes bf16, fp16 and bf16
tiles are upcast to fp32 first (conv_triton._mma). Outputs are stored in the inputs' dtypes:
out and grad_x in x's, grad_weight and grad_bias in weight's (both summed in the
accumulation dtype first). The meta-parameters are fixed per dtype (conv_triton._products,
``_gemm_config``, ``_weight_config``; the interpreter cannot autotune), checked in the static
report: no spills on sm_80 / sm_90.

Indexing: row offsets (b stride_b, j stride_o) are int64, so x, grad, out and weight may pass
2^31 elements; column offsets (i stride_i) are int32.

Memory: the output (forward); grad_x, the gradients, and splits x Dout x Din partial sums of
grad_weight in the accumulation dtype (backward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of, next_pow2
from .conv_triton import WEIGHT_PROGRAMS, _mma, _products, _upcast

# grad_weight's batch splits: at least this many rows a split, so that the partial sums
# (Dout x Din each) stay small beside the work. Fixed: the same shapes sum in the same order
# on every device.
MIN_SPLIT_ROWS = 2048
# prefixes the grad_x kernel reads a step while it looks for the output features that reach
# its input columns
SCAN = 256


@triton.jit
def _prefix(PREFIX, j, DOUT, DIN):
    """prefix[j] clamped to [0, Din], int32; 0 past Dout."""
    p = tl.load(PREFIX + j, mask=j < DOUT, other=0)
    return tl.minimum(tl.maximum(p, 0), DIN).to(tl.int32)


# --------------------------------------------------------------------------- forward
@triton.jit
def _masked_linear_fwd_kernel(
    OUT,          # *out (B, Dout), x's dtype, any strides
    X,            # *x (B, Din), fp16/bf16/fp32/fp64, any strides
    WEIGHT,       # *weight (Dout, Din), x's dtype, any strides
    BIAS,         # *bias (Dout,) contiguous (read when HAS_BIAS)
    PREFIX,       # *prefix (Dout,) int64 contiguous
    B, DIN, DOUT,
    stride_xb, stride_xi,
    stride_wo, stride_wi,
    stride_ob, stride_oo,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,    # multiply in ACC (fp32/fp64 inputs, or the interpreter)
    BLOCK_M: tl.constexpr,   # rows of x per program
    BLOCK_N: tl.constexpr,   # output features per program
    BLOCK_K: tl.constexpr,   # input columns per step
    ACC: tl.constexpr,       # accumulation dtype
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < B
    j = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    j_mask = j < DOUT
    hi = _prefix(PREFIX, j, DOUT, DIN)
    x_rows = X + rows.to(tl.int64) * stride_xb
    w_rows = WEIGHT + j.to(tl.int64) * stride_wo
    lanes_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    # the columns some feature of the block sees: [0, max prefix)
    for k0 in range(0, tl.max(hi, 0), BLOCK_K):
        i = k0 + lanes_k
        xv = tl.load(x_rows[:, None] + i[None, :] * stride_xi, mask=row_mask[:, None] & (i < DIN)[None, :],
                     other=0.0)
        wv = tl.load(w_rows[None, :] + i[:, None] * stride_wi, mask=i[:, None] < hi[None, :], other=0.0)
        acc = _mma(xv, wv, acc, UPCAST)
    if HAS_BIAS:
        acc += tl.load(BIAS + j, mask=j_mask, other=0.0).to(ACC)[None, :]
    out = OUT + rows.to(tl.int64)[:, None] * stride_ob + j[None, :] * stride_oo
    tl.store(out, acc, mask=row_mask[:, None] & j_mask[None, :])


# -------------------------------------------------------------------------- backward
@triton.jit
def _masked_linear_bwd_input_kernel(
    GRAD_X,       # *grad_x (B, Din), x's dtype, any strides
    GRAD,         # *grad (B, Dout), x's dtype, any strides (0 for an expanded gradient)
    WEIGHT,       # *weight (Dout, Din), any strides
    PREFIX,       # *prefix (Dout,) int64 contiguous
    B, DIN, DOUT,
    stride_gb, stride_go,
    stride_wo, stride_wi,
    stride_xb, stride_xi,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,   # rows per program
    BLOCK_N: tl.constexpr,   # input columns per program
    BLOCK_K: tl.constexpr,   # output features per step
    SCAN: tl.constexpr,      # prefixes scanned per step for the features that reach the block
    ACC: tl.constexpr,
):
    """grad_x of BLOCK_M rows x BLOCK_N input columns i0..i1: grad[rows, j] @ w[j, i] over the
    output features whose prefix exceeds i0."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < B
    i_first = tl.program_id(1) * BLOCK_N
    i = i_first + tl.arange(0, BLOCK_N)
    # [first, end): from the first to the last output feature that sees column i_first
    first = tl.full([], 0, tl.int32) + DOUT
    end = tl.full([], 0, tl.int32)
    for s0 in range(0, DOUT, SCAN):
        js = s0 + tl.arange(0, SCAN)
        reach = _prefix(PREFIX, js, DOUT, DIN) > i_first
        first = tl.minimum(first, tl.min(tl.where(reach, js, DOUT), 0))
        end = tl.maximum(end, tl.max(tl.where(reach, js + 1, 0), 0))
    g_rows = GRAD + rows.to(tl.int64) * stride_gb
    lanes_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    for k0 in range((first // BLOCK_K) * BLOCK_K, end, BLOCK_K):
        j = k0 + lanes_k
        p = _prefix(PREFIX, j, DOUT, DIN)
        gv = tl.load(g_rows[:, None] + j[None, :] * stride_go, mask=row_mask[:, None] & (j < DOUT)[None, :],
                     other=0.0)
        wv = tl.load(WEIGHT + j.to(tl.int64)[:, None] * stride_wo + i[None, :] * stride_wi,
                     mask=i[None, :] < p[:, None], other=0.0)
        acc = _mma(gv, wv, acc, UPCAST)
    out = GRAD_X + rows.to(tl.int64)[:, None] * stride_xb + i[None, :] * stride_xi
    tl.store(out, acc, mask=row_mask[:, None] & (i < DIN)[None, :])


@triton.jit
def _masked_linear_bwd_weight_kernel(
    PARTIAL,      # *(S, Dout, Din) ACC contiguous: split s's sums
    GRAD,         # *grad (B, Dout), any strides
    X,            # *x (B, Din), any strides
    PREFIX,       # *prefix (Dout,) int64 contiguous
    B, DIN, DOUT,
    SPLIT_STEPS,  # batch steps (BLOCK_M rows each) per split; program_id(1) is the split
    stride_gb, stride_go,
    stride_xb, stride_xi,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,   # batch rows a step
    BLOCK_N: tl.constexpr,   # output features per program
    BLOCK_K: tl.constexpr,   # input columns per program
    ACC: tl.constexpr,
):
    """Tile program_id(0)'s (BLOCK_N, BLOCK_K) block of grad_weight over the batch rows of
    split program_id(1): sum_b grad[b, j] x[b, i]; 0 where i >= prefix[j]."""
    j_blocks = tl.cdiv(DOUT, BLOCK_N)
    j = (tl.program_id(0) % j_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    i_first = (tl.program_id(0) // j_blocks) * BLOCK_K
    i = i_first + tl.arange(0, BLOCK_K)
    j_mask = j < DOUT
    i_mask = i < DIN
    p = _prefix(PREFIX, j, DOUT, DIN)
    split = tl.program_id(1)
    first = split * SPLIT_STEPS
    # a tile no feature of the block sees runs no step
    last = tl.where(i_first < tl.max(p, 0), tl.minimum(first + SPLIT_STEPS, tl.cdiv(B, BLOCK_M)), first)
    lanes_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_N, BLOCK_K], ACC)
    for step in range(first, last):
        rows = step * BLOCK_M + lanes_m
        row_mask = rows < B
        rows = rows.to(tl.int64)
        gv = tl.load(GRAD + rows[None, :] * stride_gb + j[:, None] * stride_go,
                     mask=j_mask[:, None] & row_mask[None, :], other=0.0)
        xv = tl.load(X + rows[:, None] * stride_xb + i[None, :] * stride_xi,
                     mask=row_mask[:, None] & i_mask[None, :], other=0.0)
        acc = _mma(gv, xv, acc, UPCAST)
    out = PARTIAL + (split.to(tl.int64) * DOUT + j[:, None]) * DIN + i[None, :]
    tl.store(out, tl.where(i[None, :] < p[:, None], acc, 0.0), mask=j_mask[:, None] & i_mask[None, :])


# ------------------------------------------------------------------------- launchers
def _gemm_config(rows: int, write: int, reduce_over: int, dtype: torch.dtype) -> dict:
    """Fixed meta-parameters of the forward and grad_x kernels (also compiled by
    genkernels/_static.py): BLOCK_M of the ``rows`` batch rows (64, fp64 32; fewer for a
    small batch, 16 at least) x BLOCK_N of the ``write`` features the program writes,
    BLOCK_K of the ``reduce_over`` features a step; every dimension >= 16 (tl.dot). The
    step and pipelining are conv_triton's (``_products``); the static report has the 64 x 64
    fp32 tile at 168 registers (forward) and 124-128 (grad_x) on sm_80 / sm_90, no spills
    (128 for the forward with the 16-byte divisibility a launch on aligned tensors adds)."""
    products = _products(dtype)
    return {"BLOCK_M": min(32 if dtype == torch.float64 else 64, max(16, next_pow2(rows))),
            "BLOCK_N": min(64, max(16, next_pow2(write))),
            "BLOCK_K": min(products["step"], max(16, next_pow2(reduce_over))), "num_warps": 4,
            "num_stages": products["num_stages"]}


def _weight_config(d_out: int, d_in: int, dtype: torch.dtype) -> dict:
    """Fixed meta-parameters of the grad_weight kernel (also compiled by genkernels/_static.py):
    a (BLOCK_N, BLOCK_K) tile of grad_weight, one reduction step of batch rows a step (fp32:
    115 / 166 registers on sm_80 / sm_90, no spills)."""
    products = _products(dtype)
    return {"BLOCK_M": products["step"], "BLOCK_N": min(64, max(16, next_pow2(d_out))),
            "BLOCK_K": min(32 if dtype == torch.float64 else 64, max(16, next_pow2(d_in))), "num_warps": 4,
            "num_stages": products["num_stages"]}


def _batch_splits(steps: int, programs: int, block_rows: int, min_split_rows: int) -> tuple[int, int]:
    """(splits, batch steps per split) of the grad_weight kernel: about WEIGHT_PROGRAMS
    programs (``programs`` per split), at least min_split_rows rows a split."""
    min_steps = triton.cdiv(min_split_rows, block_rows)
    splits = max(1, min(triton.cdiv(steps, min_steps), triton.cdiv(WEIGHT_PROGRAMS, programs)))
    split_steps = triton.cdiv(steps, splits)
    return triton.cdiv(steps, split_steps), split_steps


def masked_linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      prefix: torch.Tensor) -> torch.Tensor:
    """x (B, Din), weight (Dout, Din), bias (Dout,) or None, prefix (Dout,) int64 -> out
    (B, Dout) in x's dtype; see linear_reference.masked_linear."""
    batch, d_in = x.shape
    d_out = weight.shape[0]
    out = torch.empty((batch, d_out), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    cfg = _gemm_config(batch, d_out, d_in, x.dtype)
    grid = (triton.cdiv(batch, cfg["BLOCK_M"]), triton.cdiv(d_out, cfg["BLOCK_N"]))
    with device_of(x):
        _masked_linear_fwd_kernel[grid](
            out, x, weight, bias.contiguous() if bias is not None else out, prefix.contiguous(), batch, d_in, d_out,
            *x.stride(), *weight.stride(), *out.stride(),
            HAS_BIAS=bias is not None, UPCAST=_upcast(x), ACC=TL_ACC[acc_dtype(x.dtype)], **cfg)
    return out


def masked_linear_bwd(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, prefix: torch.Tensor, output_mask,
                      min_split_rows: int = MIN_SPLIT_ROWS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VJP of masked_linear_fwd: grad (B, Dout) -> (grad_x (B, Din) in x's dtype,
    grad_weight (Dout, Din) and grad_bias (Dout,) in weight's dtype); a gradient output_mask
    does not ask for is an empty (0,) tensor. ``min_split_rows``: the fewest batch rows a
    split of the grad_weight kernel holds (tests lower it to split tiny batches)."""
    batch, d_in = x.shape
    d_out = weight.shape[0]
    acc = acc_dtype(x.dtype)
    prefix = prefix.contiguous()
    upcast = _upcast(x)
    # gradients not asked for: distinct empty tensors (a custom op's outputs may not alias)
    grad_x, grad_weight, grad_bias = x.new_empty((0,)), weight.new_empty((0,)), weight.new_empty((0,))
    if output_mask[0]:
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if grad_x.numel():
            cfg = _gemm_config(batch, d_in, d_out, x.dtype)
            grid = (triton.cdiv(batch, cfg["BLOCK_M"]), triton.cdiv(d_in, cfg["BLOCK_N"]))
            with device_of(x):
                _masked_linear_bwd_input_kernel[grid](
                    grad_x, grad, weight, prefix, batch, d_in, d_out, *grad.stride(), *weight.stride(),
                    *grad_x.stride(), UPCAST=upcast, SCAN=SCAN, ACC=TL_ACC[acc], **cfg)
    if output_mask[1]:
        if batch == 0 or weight.numel() == 0:
            grad_weight = torch.zeros(weight.shape, dtype=weight.dtype, device=x.device)
        else:
            cfg = _weight_config(d_out, d_in, x.dtype)
            tiles = triton.cdiv(d_out, cfg["BLOCK_N"]) * triton.cdiv(d_in, cfg["BLOCK_K"])
            splits, split_steps = _batch_splits(triton.cdiv(batch, cfg["BLOCK_M"]), tiles, cfg["BLOCK_M"],
                                                min_split_rows)
            partial = torch.empty((splits, d_out, d_in), dtype=acc, device=x.device)
            with device_of(x):
                _masked_linear_bwd_weight_kernel[(tiles, splits)](
                    partial, grad, x, prefix, batch, d_in, d_out, split_steps, *grad.stride(), *x.stride(),
                    UPCAST=upcast, ACC=TL_ACC[acc], **cfg)
            # the splits' partial sums in split order: a fixed order, no atomics
            grad_weight = (partial.sum(0) if splits > 1 else partial[0]).to(weight.dtype)
    if output_mask[2]:
        grad_bias = grad.sum(0, dtype=acc).to(weight.dtype)
    return grad_x, grad_weight, grad_bias


# ------------------------------------------------------------------------------- ops
@torch.library.custom_op("genkernels::masked_linear_triton", mutates_args=())
def masked_linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         prefix: torch.Tensor) -> torch.Tensor:
    return masked_linear_fwd(x, weight, bias, prefix)


@masked_linear_triton.register_fake
def _masked_linear_triton_fake(x, weight, bias, prefix):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("genkernels::masked_linear_backward_triton", mutates_args=())
def masked_linear_backward_triton(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, prefix: torch.Tensor,
                                  output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return masked_linear_bwd(grad, x, weight, prefix, output_mask)


@masked_linear_backward_triton.register_fake
def _masked_linear_backward_triton_fake(grad, x, weight, prefix, output_mask):
    shapes = (x.shape, weight.shape, (weight.shape[0],))
    dtypes = (x.dtype, weight.dtype, weight.dtype)
    return tuple(x.new_empty(shape if want else (0,), dtype=dtype)
                 for shape, dtype, want in zip(shapes, dtypes, output_mask))


def _setup_context(ctx, inputs, output):
    x, weight, bias, prefix = inputs
    ctx.save_for_backward(x, weight, prefix)
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _masked_linear_triton_backward(ctx, grad):
    """Autograd of masked_linear_triton: the backward op for the gradients asked for (bias
    only when there is one); prefix gets none."""
    x, weight, prefix = ctx.saved_tensors
    want = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]),
            ctx.bias_dtype is not None and bool(ctx.needs_input_grad[2])]
    grad_x, grad_weight, grad_bias = torch.ops.genkernels.masked_linear_backward_triton(grad, x, weight, prefix, want)
    return (grad_x if want[0] else None, grad_weight if want[1] else None,
            grad_bias.to(ctx.bias_dtype) if want[2] else None, None)


masked_linear_triton.register_autograd(_masked_linear_triton_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def ints(*names):
        return {name: "i32" for name in names}

    def entry(kernel, dtype: str, batch: int, d_in: int, d_out: int, label: str) -> TritonKernel:
        torch_dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}[dtype]
        acc = acc_dtype(torch_dtype)
        # contiguous tensors: the GPU launch specialises the unit column strides (an int
        # argument equal to 1 is a constant to Triton's JIT), so the report does too
        meta = {"UPCAST": dtype in ("fp32", "fp64"), "ACC": TL_ACC[acc]}
        if kernel is _masked_linear_fwd_kernel:
            cfg = _gemm_config(batch, d_out, d_in, torch_dtype)
            sig = {"OUT": ptr(dtype), "X": ptr(dtype), "WEIGHT": ptr(dtype), "BIAS": ptr(dtype), "PREFIX": ptr("i64")}
            sig |= ints("B", "DIN", "DOUT", "stride_xb", "stride_wo", "stride_ob")
            meta |= {"stride_xi": 1, "stride_wi": 1, "stride_oo": 1, "HAS_BIAS": True}
        elif kernel is _masked_linear_bwd_input_kernel:
            cfg = _gemm_config(batch, d_in, d_out, torch_dtype)
            sig = {"GRAD_X": ptr(dtype), "GRAD": ptr(dtype), "WEIGHT": ptr(dtype), "PREFIX": ptr("i64")}
            sig |= ints("B", "DIN", "DOUT", "stride_gb", "stride_wo", "stride_xb")
            meta |= {"stride_go": 1, "stride_wi": 1, "stride_xi": 1, "SCAN": SCAN}
        else:
            cfg = _weight_config(d_out, d_in, torch_dtype)
            sig = {"PARTIAL": ptr("fp64" if dtype == "fp64" else "fp32"), "GRAD": ptr(dtype), "X": ptr(dtype),
                   "PREFIX": ptr("i64")}
            sig |= ints("B", "DIN", "DOUT", "SPLIT_STEPS", "stride_gb", "stride_xb")
            meta |= {"stride_go": 1, "stride_xi": 1}
        meta |= {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
        name = f"{kernel.__name__}[{dtype},B={batch},Din={d_in},Dout={d_out},{label}]"
        return TritonKernel("autoregressive", name, lambda: kernel, sig, meta, cfg["num_warps"], cfg["num_stages"])

    # MADE's layers: 1024 and 4096 units trained in batches of 256 and 4096 (the blocks are
    # capped at 64, so both compile to the same binaries: listed to show it), fp64
    # (gradcheck) and bf16 inputs; the forward also sampling one row at a time (BLOCK_M 16)
    shapes = [("fp32", 256, 1024, 1024, "train"), ("fp32", 4096, 4096, 4096, "train"),
              ("fp64", 32, 64, 64, "gradcheck"), ("bf16", 256, 1024, 1024, "train")]
    kernels = (_masked_linear_fwd_kernel, _masked_linear_bwd_input_kernel, _masked_linear_bwd_weight_kernel)
    return [entry(_masked_linear_fwd_kernel, "fp32", 1, 1024, 1024, "sample")] + [
        entry(kernel, *shape) for kernel in kernels for shape in shapes]
