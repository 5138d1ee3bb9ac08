"""Triton kernels of the masked convolution and their ops ``genkernels::masked_conv2d_triton``
and ``genkernels::masked_conv2d_backward_triton``.

Three layers (STYLE.md): ``_masked_conv_fwd_kernel`` -> ``masked_conv2d_fwd()`` (output
allocation, grid, fixed meta-parameters) -> ``torch.ops.genkernels.masked_conv2d_triton``, and
``_masked_conv_bwd_input_kernel`` + ``_masked_conv_bwd_weight_kernel`` ->
``masked_conv2d_bwd()`` -> ``torch.ops.genkernels.masked_conv2d_backward_triton``
(``torch.library.custom_op``s with fake kernels; the forward op's autograd calls the backward
op). The oracle is conv_reference.masked_conv2d: conv2d of weight * dense_mask, "same"
padding d (kh // 2, d (kw // 2)), stride 1, dilation d.

All three kernels are implicit GEMMs: tiles are read straight from the NCHW tensors through
each tap's pixel shift (no im2col tensor), border pixels read 0 (masked loads), and every
product goes through ``tl.dot``. Pixels come in image tiles of BY rows x BX columns of one
image (BX: the image width's power of two, up to the tile), flattened row-major into the
tile's BLOCK_M = BY BX lanes: a lane's (y, x) is a shift and a mask of a constexpr away, the
image b is one scalar per tile, and neighbouring lanes are neighbouring columns, so with unit
column strides (Triton specialises an int argument equal to 1) the compiler lays the threads
along the pixels and the loads coalesce.

* ``_masked_conv_fwd_kernel``: a program owns an image tile of output pixels x BLOCK_N output
  channels and, for every kept tap, adds x[shifted pixels, ci] @ w[co, ci, tap]^T over the
  input channels the tap's rule lets the block see, BLOCK_K at a time; then the bias.
* ``_masked_conv_bwd_input_kernel`` (grad_x): the transposed problem, a program owning an
  image tile of input pixels x BLOCK_N input channels: for every kept tap it gathers
  grad[pixels - shift, co] @ w[co, ci, tap] over the output channels that see the block.
* ``_masked_conv_bwd_weight_kernel`` (grad_weight): a program owns one kept tap x a
  (BLOCK_N output, BLOCK_K input) channel tile and sums grad[p, co]^T @ x[p + shift, ci] over
  one split of the image tiles (a tile a step), writing its partial sums. With few programs
  the tiles are split (about WEIGHT_PROGRAMS programs, at least MIN_SPLIT_PIXELS pixels a
  split: fixed numbers, so the same shapes sum in the same order on every device); the
  launcher adds the splits in split order and places the kept taps in a zero
  (Cout, Cin, kh, kw) gradient. No atomics: every run gives the same bits.
* grad_bias is grad summed over (B, H, W) by torch, in the accumulation dtype.

The mask is never multiplied. The kept taps (rule not OFF) go to the kernels as a small int32
table of (ky, kx, rule) rows (``_tap_table``), built from the rules alone, in row-major tap
order, and cached per device: one compiled kernel serves every mask grid (PixelCNN's 7x7 A,
3x3 B, the Gated PixelCNN's vertical and horizontal stacks), its code and compile time do not
grow with the kernel size, and the cost is three scalar loads per tap and program. Constexpr
taps would unroll the tap loop and compile one binary per grid. The channel groups are
handled per row of a block (a block may straddle groups, so small groups do not leave tiles
mostly empty): output channel co of group g = co // (Cout / G) sees the input channels
[0, hi), hi = Cin (FULL), g Cin / G (STRICT) or (g + 1) Cin / G (INCLUSIVE). A program's
channel loop stops at the largest hi of its block (that of its last channel), so channel
blocks the rule removes for the whole block are neither loaded nor multiplied, and the weight
tile's loads are masked per (co, ci) inside a block that is partly allowed. grad_x reads the
rule the other way: input channel ci of group h = ci // (Cin / G) reaches the output channels
[lo, Cout), lo = 0 (FULL), (h + 1) Cout / G (STRICT) or h Cout / G (INCLUSIVE), and its loop
starts at its block's smallest lo. grad_weight skips the pixel loop of a tile its tap's rule
removes entirely and writes exact zeros wherever the rule removes an entry.

Numerics: fp32 accumulation (fp64 for fp64 inputs). fp32 and fp64 tiles go through
``tl.dot(input_precision="ieee")`` (exact fp32 / fp64 products, no tf32 rounding); fp16 and
bf16 tiles are loaded as they are and multiplied on the tensor cores into fp32 (their
products are exact in fp32). Under ``TRITON_INTERPRET=1`` (CPU tensors), whose ``tl.dot``
mis-computes bf16, fp16 and bf16 tiles are upcast to fp32 first: the same exact products,
accumulated in fp32. Outputs are stored in the inputs' dtypes: out and grad_x in x's,
grad_weight and grad_bias in weight's (both summed in the accumulation dtype first). The
meta-parameters are fixed per dtype (``_products``, ``_gemm_config``, ``_weight_config``; the
interpreter cannot autotune), chosen from the static report: no spills on sm_80 / sm_90.

Indexing: an image's offset b stride_b is int64 (a batch may pass 2^31 elements); offsets
inside one image (c stride_c + y stride_h + x stride_w) are int32, so one image of x, grad or
out holds fewer than 2^31 elements (a caller with larger images splits them itself).

Memory: the output (forward); grad_x, the gradients, and splits x kept taps x Cout x Cin
partial sums of grad_weight (backward).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of, next_pow2
from . import conv_reference as R

_FULL = tl.constexpr(R.FULL)
_STRICT = tl.constexpr(R.STRICT)
_INCLUSIVE = tl.constexpr(R.INCLUSIVE)

# grad_weight's pixel splits: about this many programs (a few waves on the 108-132 SMs of an
# A100 / H100) ...
WEIGHT_PROGRAMS = 512
# ... but at least this many pixels a split, so that the partial sums stay small beside the
# work. Neither depends on the device: the same shapes sum in the same order everywhere.
MIN_SPLIT_PIXELS = 2048


# --------------------------------------------------------------------------- helpers
@triton.jit
def _tile(tile, TILES_Y, TILES_X, BY: tl.constexpr, BX: tl.constexpr):
    """Image tile ``tile`` (flat over (b, ty, tx)): its image b and the (y, x) of its BY x BX
    pixels, row-major (x fastest)."""
    tx = tile % TILES_X
    rest = tile // TILES_X
    lanes = tl.arange(0, BY * BX)
    return rest // TILES_Y, (rest % TILES_Y) * BY + lanes // BX, tx * BX + lanes % BX


@triton.jit
def _shifted(y, x, live, dy, dx, H, W, stride_h, stride_w):
    """Offsets inside the image of the pixels (y + dy, x + dx), and which to read: those of
    live lanes that lie inside the image (a border pixel reads 0)."""
    ys = y + dy
    xs = x + dx
    return ys * stride_h + xs * stride_w, live & (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)


@triton.jit
def _tap(TAPS, t):
    """Kept tap t's (ky, kx, rule)."""
    return tl.load(TAPS + 3 * t), tl.load(TAPS + 3 * t + 1), tl.load(TAPS + 3 * t + 2)


@triton.jit
def _input_bound(rule, co, CI_GROUP, CO_GROUP, CIN):
    """The input channels [0, hi) output channel(s) co see under a kept tap's rule."""
    return tl.where(rule == _FULL, CIN, (co // CO_GROUP + (rule == _INCLUSIVE).to(tl.int32)) * CI_GROUP)


@triton.jit
def _output_bound(rule, ci, CI_GROUP, CO_GROUP):
    """The output channels [lo, Cout) input channel(s) ci reach under a kept tap's rule."""
    return tl.where(rule == _FULL, 0, (ci // CI_GROUP + (rule == _STRICT).to(tl.int32)) * CO_GROUP)


@triton.jit
def _mma(a, b, acc, UPCAST: tl.constexpr):
    """acc + a @ b: fp32/fp64 operands (and, UPCAST, fp16/bf16 ones under the interpreter)
    as exact products in acc's dtype; fp16/bf16 operands on the tensor cores."""
    if UPCAST:
        return tl.dot(a.to(acc.dtype), b.to(acc.dtype), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


# --------------------------------------------------------------------------- forward
@triton.jit
def _masked_conv_fwd_kernel(
    OUT,          # *out (B, Cout, H, W), x's dtype, any strides
    X,            # *x (B, Cin, H, W), fp16/bf16/fp32/fp64, any strides
    WEIGHT,       # *weight (Cout, Cin, kh, kw), x's dtype, any strides
    BIAS,         # *bias (Cout,) (read when HAS_BIAS)
    TAPS,         # *(T, 3) int32 contiguous: the kept taps' (ky, kx, rule)
    T,            # kept taps
    H, W, TILES_Y, TILES_X,          # image size, tiles per image column and row
    CIN, COUT, CI_GROUP, CO_GROUP,   # channels, channels per group (Cin / G, Cout / G)
    DIL, PAD_H, PAD_W,               # dilation, d (kh // 2), d (kw // 2)
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_ob, stride_oc, stride_oh, stride_ow,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,    # multiply in ACC (fp32/fp64 inputs, or the interpreter)
    BY: tl.constexpr,        # image rows of a program's tile
    BX: tl.constexpr,        # image columns of a program's tile: BLOCK_M = BY BX output pixels
    BLOCK_N: tl.constexpr,   # output channels per program
    BLOCK_K: tl.constexpr,   # input channels per step
    ACC: tl.constexpr,       # accumulation dtype
):
    b, y, x = _tile(tl.program_id(0), TILES_Y, TILES_X, BY, BX)
    live = (y < H) & (x < W)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_mask = co < COUT
    co_last = tl.minimum(tl.program_id(1) * BLOCK_N + BLOCK_N, COUT) - 1
    image = X + b.to(tl.int64) * stride_xb
    lanes_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BY * BX, BLOCK_N], ACC)
    for t in range(T):
        ky, kx, rule = _tap(TAPS, t)
        offs, inside = _shifted(y, x, live, ky * DIL - PAD_H, kx * DIL - PAD_W, H, W, stride_xh, stride_xw)
        hi = _input_bound(rule, co, CI_GROUP, CO_GROUP, CIN)
        w_tap = WEIGHT + co * stride_wo + ky * stride_wh + kx * stride_ww
        for k0 in range(0, _input_bound(rule, co_last, CI_GROUP, CO_GROUP, CIN), BLOCK_K):
            ci = k0 + lanes_k
            xv = tl.load(image + offs[:, None] + ci[None, :] * stride_xc,
                         mask=inside[:, None] & (ci < CIN)[None, :], other=0.0)
            wv = tl.load(w_tap[None, :] + ci[:, None] * stride_wi,
                         mask=(ci[:, None] < hi[None, :]) & co_mask[None, :], other=0.0)
            acc = _mma(xv, wv, acc, UPCAST)
    if HAS_BIAS:
        acc += tl.load(BIAS + co, mask=co_mask, other=0.0).to(ACC)[None, :]
    out = OUT + b.to(tl.int64) * stride_ob + y * stride_oh + x * stride_ow
    tl.store(out[:, None] + co[None, :] * stride_oc, acc, mask=live[:, None] & co_mask[None, :])


# -------------------------------------------------------------------------- backward
@triton.jit
def _masked_conv_bwd_input_kernel(
    GRAD_X,       # *grad_x (B, Cin, H, W), x's dtype, any strides
    GRAD,         # *grad (B, Cout, H, W), x's dtype, any strides (0 for an expanded gradient)
    WEIGHT,       # *weight (Cout, Cin, kh, kw), any strides
    TAPS,         # *(T, 3) int32: the kept taps' (ky, kx, rule)
    T, H, W, TILES_Y, TILES_X, CIN, COUT, CI_GROUP, CO_GROUP, DIL, PAD_H, PAD_W,
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_wo, stride_wi, stride_wh, stride_ww,
    stride_xb, stride_xc, stride_xh, stride_xw,
    UPCAST: tl.constexpr,
    BY: tl.constexpr,        # image rows of a program's tile
    BX: tl.constexpr,        # image columns: BLOCK_M = BY BX input pixels
    BLOCK_N: tl.constexpr,   # input channels per program
    BLOCK_K: tl.constexpr,   # output channels per step
    ACC: tl.constexpr,
):
    """grad_x of BY x BX pixels x BLOCK_N input channels: for every kept tap, the output
    pixels that read them (the shift negated) times w[co, ci, tap], over the output channels
    the rule lets them reach."""
    b, y, x = _tile(tl.program_id(0), TILES_Y, TILES_X, BY, BX)
    live = (y < H) & (x < W)
    ci = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_mask = ci < CIN
    ci_first = tl.program_id(1) * BLOCK_N
    image = GRAD + b.to(tl.int64) * stride_gb
    lanes_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BY * BX, BLOCK_N], ACC)
    for t in range(T):
        ky, kx, rule = _tap(TAPS, t)
        offs, inside = _shifted(y, x, live, PAD_H - ky * DIL, PAD_W - kx * DIL, H, W, stride_gh, stride_gw)
        lo = _output_bound(rule, ci, CI_GROUP, CO_GROUP)
        w_tap = WEIGHT + ci * stride_wi + ky * stride_wh + kx * stride_ww
        for k0 in range(_output_bound(rule, ci_first, CI_GROUP, CO_GROUP), COUT, BLOCK_K):
            co = k0 + lanes_k
            gv = tl.load(image + offs[:, None] + co[None, :] * stride_gc,
                         mask=inside[:, None] & (co < COUT)[None, :], other=0.0)
            wv = tl.load(w_tap[None, :] + co[:, None] * stride_wo,
                         mask=(co[:, None] >= lo[None, :]) & (co < COUT)[:, None] & ci_mask[None, :], other=0.0)
            acc = _mma(gv, wv, acc, UPCAST)
    out = GRAD_X + b.to(tl.int64) * stride_xb + y * stride_xh + x * stride_xw
    tl.store(out[:, None] + ci[None, :] * stride_xc, acc, mask=live[:, None] & ci_mask[None, :])


@triton.jit
def _masked_conv_bwd_weight_kernel(
    PARTIAL,      # *(S, T, Cout, Cin) ACC contiguous: split s's sums for kept tap t
    GRAD,         # *grad (B, Cout, H, W), any strides
    X,            # *x (B, Cin, H, W), any strides
    TAPS,         # *(T, 3) int32: the kept taps' (ky, kx, rule)
    T, H, W, TILES_Y, TILES_X, CIN, COUT, CI_GROUP, CO_GROUP, DIL, PAD_H, PAD_W,
    TILES,        # image tiles B TILES_Y TILES_X
    SPLIT_TILES,  # image tiles per split; program_id(2) is the split
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_xb, stride_xc, stride_xh, stride_xw,
    UPCAST: tl.constexpr,
    BY: tl.constexpr,        # image rows of a step's tile
    BX: tl.constexpr,        # image columns: BY BX pixels a step
    BLOCK_N: tl.constexpr,   # output channels per program
    BLOCK_K: tl.constexpr,   # input channels per program
    ACC: tl.constexpr,
):
    """Kept tap program_id(0)'s (BLOCK_N, BLOCK_K) tile of grad_weight over the image tiles
    of split program_id(2): sum_p grad[p, co] x[p + shift, ci]; 0 where the rule removes
    (co, ci)."""
    t = tl.program_id(0)
    co_blocks = tl.cdiv(COUT, BLOCK_N)
    co_first = (tl.program_id(1) % co_blocks) * BLOCK_N
    ci_first = (tl.program_id(1) // co_blocks) * BLOCK_K
    co = co_first + tl.arange(0, BLOCK_N)
    ci = ci_first + tl.arange(0, BLOCK_K)
    co_mask = co < COUT
    ci_mask = ci < CIN
    split = tl.program_id(2)
    ky, kx, rule = _tap(TAPS, t)
    allowed = ci[None, :] < _input_bound(rule, co, CI_GROUP, CO_GROUP, CIN)[:, None]
    first = split * SPLIT_TILES
    # a channel tile the rule removes entirely runs no step
    co_last = tl.minimum(co_first + BLOCK_N, COUT) - 1
    last = tl.where(ci_first < _input_bound(rule, co_last, CI_GROUP, CO_GROUP, CIN),
                    tl.minimum(first + SPLIT_TILES, TILES), first)
    acc = tl.zeros([BLOCK_N, BLOCK_K], ACC)
    for tile in range(first, last):
        b, y, x = _tile(tile, TILES_Y, TILES_X, BY, BX)
        b = b.to(tl.int64)
        live = (y < H) & (x < W)
        gv = tl.load(GRAD + b * stride_gb + co[:, None] * stride_gc + (y * stride_gh + x * stride_gw)[None, :],
                     mask=co_mask[:, None] & live[None, :], other=0.0)
        offs, inside = _shifted(y, x, live, ky * DIL - PAD_H, kx * DIL - PAD_W, H, W, stride_xh, stride_xw)
        xv = tl.load(X + b * stride_xb + offs[:, None] + ci[None, :] * stride_xc,
                     mask=inside[:, None] & ci_mask[None, :], other=0.0)
        acc = _mma(gv, xv, acc, UPCAST)
    base = (split.to(tl.int64) * T + t) * COUT
    tl.store(PARTIAL + (base + co[:, None]) * CIN + ci[None, :], tl.where(allowed, acc, 0.0),
             mask=co_mask[:, None] & ci_mask[None, :])


# ------------------------------------------------------------------------- launchers
@functools.lru_cache(maxsize=64)
def _tap_table(rules: tuple[int, ...], kw: int, device: torch.device) -> torch.Tensor:
    """(T, 3) int32 on ``device``: (ky, kx, rule) of the kept taps in row-major order."""
    rows = [(t // kw, t % kw, rule) for t, rule in enumerate(rules) if rule != R.OFF]
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, 3).to(device)


def _image_tile(pixels: int, w: int) -> dict:
    """BY x BX = ``pixels`` (a power of two): as many columns as the image has (a power of
    two up to ``pixels``), the rest rows."""
    bx = min(pixels, next_pow2(w))
    return {"BY": pixels // bx, "BX": bx}


def _products(dtype: torch.dtype) -> dict:
    """The reduction step and pipelining of a dtype's tl.dot. fp32 and fp64 multiply on the
    FMA units, which hold a thread's share of both operands over the whole step in registers:
    16 channels a step and no software pipelining keep the forward's 64 x 64 fp32 tile at
    91-95 registers (sm_80 / sm_90); 16 with two stages took 159-204, and 32 a step spilled on
    sm_80 with or without pipelining (255 registers). fp16 and bf16 take the tensor cores: 32
    a step, two stages, 128 registers (static report, bench/results/static/autoregressive.md)."""
    if dtype in (torch.float16, torch.bfloat16):
        return {"step": 32, "num_stages": 2}
    return {"step": 16, "num_stages": 1}


def _gemm_config(w: int, pixels_by: int, reduce_over: int, dtype: torch.dtype) -> dict:
    """Fixed meta-parameters of the forward and grad_x kernels (also compiled by
    genkernels/_static.py): a BY x BX image tile of BLOCK_M = 64 pixels (fp64: 32) x BLOCK_N
    of the ``pixels_by`` channels the program writes, BLOCK_K of the ``reduce_over``
    channels a step; every dimension >= 16 (tl.dot)."""
    products = _products(dtype)
    return {**_image_tile(32 if dtype == torch.float64 else 64, w), "BLOCK_N": min(64, max(16, next_pow2(pixels_by))),
            "BLOCK_K": min(products["step"], max(16, next_pow2(reduce_over))), "num_warps": 4,
            "num_stages": products["num_stages"]}


def _weight_config(w: int, c_out: int, c_in: int, dtype: torch.dtype) -> dict:
    """Fixed meta-parameters of the grad_weight kernel (also compiled by genkernels/_static.py):
    a (BLOCK_N, BLOCK_K) channel tile, an image tile of one reduction step of pixels a step."""
    products = _products(dtype)
    return {**_image_tile(products["step"], w), "BLOCK_N": min(64, max(16, next_pow2(c_out))),
            "BLOCK_K": min(32 if dtype == torch.float64 else 64, max(16, next_pow2(c_in))), "num_warps": 4,
            "num_stages": products["num_stages"]}


def _tiling(x: torch.Tensor, cfg: dict) -> tuple[int, int]:
    """(TILES_Y, TILES_X): the BY x BX tiles covering one image."""
    return triton.cdiv(x.shape[2], cfg["BY"]), triton.cdiv(x.shape[3], cfg["BX"])


def _tile_splits(tiles: int, programs: int, tile_pixels: int, min_split_pixels: int) -> tuple[int, int]:
    """(splits, image tiles per split) of the grad_weight kernel: about WEIGHT_PROGRAMS
    programs (``programs`` per split), at least min_split_pixels pixels a split."""
    min_tiles = triton.cdiv(min_split_pixels, tile_pixels)
    splits = max(1, min(triton.cdiv(tiles, min_tiles), triton.cdiv(WEIGHT_PROGRAMS, programs)))
    split_tiles = triton.cdiv(tiles, splits)
    return triton.cdiv(tiles, split_tiles), split_tiles


def _geometry(weight: torch.Tensor, channel_groups: int, dilation: int) -> tuple:
    """(Cin, Cout, Cin / G, Cout / G, d, d (kh // 2), d (kw // 2)): the kernels' channel and
    tap arguments."""
    c_out, c_in, kh, kw = weight.shape
    return (c_in, c_out, c_in // channel_groups, c_out // channel_groups, dilation, dilation * (kh // 2),
            dilation * (kw // 2))


def _upcast(t: torch.Tensor) -> bool:
    """Multiply in the accumulation dtype: fp32/fp64 tiles, or any under the interpreter."""
    return not t.is_cuda or t.dtype in (torch.float32, torch.float64)


def masked_conv2d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rules,
                      channel_groups: int, dilation: int) -> torch.Tensor:
    """x (B, Cin, H, W), weight (Cout, Cin, kh, kw), bias (Cout,) or None -> out (B, Cout, H, W)
    in x's dtype; see conv_reference.masked_conv2d."""
    batch, c_in, h, w = x.shape
    c_out, _, _, kw = weight.shape
    out = torch.empty((batch, c_out, h, w), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    acc = acc_dtype(x.dtype)
    taps = _tap_table(tuple(rules), kw, x.device)
    cfg = _gemm_config(w, c_out, c_in, x.dtype)
    tiles_y, tiles_x = _tiling(x, cfg)
    grid = (batch * tiles_y * tiles_x, triton.cdiv(c_out, cfg["BLOCK_N"]))
    with device_of(x):
        _masked_conv_fwd_kernel[grid](
            out, x, weight, bias if bias is not None else out, taps, taps.shape[0], h, w, tiles_y, tiles_x,
            *_geometry(weight, channel_groups, dilation), *x.stride(), *weight.stride(), *out.stride(),
            HAS_BIAS=bias is not None, UPCAST=_upcast(x), ACC=TL_ACC[acc], **cfg)
    return out


def masked_conv2d_bwd(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rules, channel_groups: int,
                      dilation: int, output_mask, min_split_pixels: int = MIN_SPLIT_PIXELS
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VJP of masked_conv2d_fwd: grad (B, Cout, H, W) -> (grad_x (B, Cin, H, W) in x's dtype,
    grad_weight (Cout, Cin, kh, kw) and grad_bias (Cout,) in weight's dtype); a gradient
    output_mask does not ask for is an empty (0,) tensor. ``min_split_pixels``: the fewest
    pixels a split of the grad_weight kernel holds (tests lower it to split tiny inputs)."""
    batch, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    acc = acc_dtype(x.dtype)
    taps = _tap_table(tuple(rules), kw, x.device)
    kept = taps.shape[0]
    geometry = _geometry(weight, channel_groups, dilation)
    upcast = _upcast(x)
    # gradients not asked for: distinct empty tensors (a custom op's outputs may not alias)
    grad_x, grad_weight, grad_bias = x.new_empty((0,)), weight.new_empty((0,)), weight.new_empty((0,))
    if output_mask[0]:
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if kept == 0 or c_out == 0:
            grad_x.zero_()
        elif grad_x.numel():
            cfg = _gemm_config(w, c_in, c_out, x.dtype)
            tiles_y, tiles_x = _tiling(x, cfg)
            grid = (batch * tiles_y * tiles_x, triton.cdiv(c_in, cfg["BLOCK_N"]))
            with device_of(x):
                _masked_conv_bwd_input_kernel[grid](
                    grad_x, grad, weight, taps, kept, h, w, tiles_y, tiles_x, *geometry, *grad.stride(),
                    *weight.stride(), *grad_x.stride(), UPCAST=upcast, ACC=TL_ACC[acc], **cfg)
    if output_mask[1]:
        grad_weight = torch.zeros((c_out, c_in, kh * kw), dtype=acc, device=x.device)
        if kept and grad_weight.numel() and x.numel():
            cfg = _weight_config(w, c_out, c_in, x.dtype)
            tiles_y, tiles_x = _tiling(x, cfg)
            tiles = batch * tiles_y * tiles_x
            channel_tiles = triton.cdiv(c_out, cfg["BLOCK_N"]) * triton.cdiv(c_in, cfg["BLOCK_K"])
            splits, split_tiles = _tile_splits(tiles, kept * channel_tiles, cfg["BY"] * cfg["BX"], min_split_pixels)
            partial = torch.empty((splits, kept, c_out, c_in), dtype=acc, device=x.device)
            with device_of(x):
                _masked_conv_bwd_weight_kernel[(kept, channel_tiles, splits)](
                    partial, grad, x, taps, kept, h, w, tiles_y, tiles_x, *geometry, tiles, split_tiles,
                    *grad.stride(), *x.stride(), UPCAST=upcast, ACC=TL_ACC[acc], **cfg)
            # the splits' partial sums in split order: a fixed order, no atomics
            sums = partial.sum(0) if splits > 1 else partial[0]
            index = (taps[:, 0] * kw + taps[:, 1]).long()
            grad_weight[:, :, index] = sums.permute(1, 2, 0)
        grad_weight = grad_weight.reshape(weight.shape).to(weight.dtype)
    if output_mask[2]:
        grad_bias = grad.sum((0, 2, 3), dtype=acc).to(weight.dtype)
    return grad_x, grad_weight, grad_bias


# ------------------------------------------------------------------------------- ops
@torch.library.custom_op("genkernels::masked_conv2d_triton", mutates_args=())
def masked_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rules: list[int],
                         channel_groups: int, dilation: int) -> torch.Tensor:
    return masked_conv2d_fwd(x, weight, bias, rules, channel_groups, dilation)


@masked_conv2d_triton.register_fake
def _masked_conv2d_triton_fake(x, weight, bias, rules, channel_groups, dilation):
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


@torch.library.custom_op("genkernels::masked_conv2d_backward_triton", mutates_args=())
def masked_conv2d_backward_triton(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rules: list[int],
                                  channel_groups: int, dilation: int, output_mask: list[bool]
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return masked_conv2d_bwd(grad, x, weight, rules, channel_groups, dilation, output_mask)


@masked_conv2d_backward_triton.register_fake
def _masked_conv2d_backward_triton_fake(grad, x, weight, rules, channel_groups, dilation, output_mask):
    shapes = (x.shape, weight.shape, (weight.shape[0],))
    dtypes = (x.dtype, weight.dtype, weight.dtype)
    return tuple(x.new_empty(shape if want else (0,), dtype=dtype)
                 for shape, dtype, want in zip(shapes, dtypes, output_mask))


def _setup_context(ctx, inputs, output):
    x, weight, bias, rules, channel_groups, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.args = (rules, channel_groups, dilation)


def _masked_conv2d_triton_backward(ctx, grad):
    """Autograd of masked_conv2d_triton: the backward op for the gradients asked for (bias
    only when there is one); the ints get none."""
    x, weight = ctx.saved_tensors
    want = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]),
            ctx.bias_dtype is not None and bool(ctx.needs_input_grad[2])]
    grad_x, grad_weight, grad_bias = torch.ops.genkernels.masked_conv2d_backward_triton(
        grad, x, weight, *ctx.args, want)
    return (grad_x if want[0] else None, grad_weight if want[1] else None,
            grad_bias.to(ctx.bias_dtype) if want[2] else None, None, None, None)


masked_conv2d_triton.register_autograd(_masked_conv2d_triton_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    shape_args = ("T", "H", "W", "TILES_Y", "TILES_X", "CIN", "COUT", "CI_GROUP", "CO_GROUP", "DIL", "PAD_H", "PAD_W")

    def ints(*names):
        return {name: "i32" for name in names}

    def strides(*tensors):
        # contiguous tensors: the GPU launch specialises the unit column stride (an int
        # argument equal to 1 is a constant to Triton's JIT), so the report does too
        return ints(*(f"stride_{t}{d}" for t in tensors for d in "bch")), {f"stride_{t}w": 1 for t in tensors}

    def entry(kernel, dtype: str, c_in: int, c_out: int, width: int, label: str) -> TritonKernel:
        torch_dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}[dtype]
        acc = acc_dtype(torch_dtype)
        meta = {"UPCAST": dtype in ("fp32", "fp64"), "ACC": TL_ACC[acc]}
        sig = {}
        if kernel is _masked_conv_fwd_kernel:
            cfg = _gemm_config(width, c_out, c_in, torch_dtype)
            sig = {"OUT": ptr(dtype), "X": ptr(dtype), "WEIGHT": ptr(dtype), "BIAS": ptr(dtype), "TAPS": ptr("i32")}
            sig |= ints(*shape_args)
            layout = ("x", "w", "o")
            meta["HAS_BIAS"] = True
        elif kernel is _masked_conv_bwd_input_kernel:
            cfg = _gemm_config(width, c_in, c_out, torch_dtype)
            sig = {"GRAD_X": ptr(dtype), "GRAD": ptr(dtype), "WEIGHT": ptr(dtype), "TAPS": ptr("i32")}
            sig |= ints(*shape_args)
            layout = ("g", "w", "x")
        else:
            cfg = _weight_config(width, c_out, c_in, torch_dtype)
            sig = {"PARTIAL": ptr("fp64" if dtype == "fp64" else "fp32"), "GRAD": ptr(dtype), "X": ptr(dtype),
                   "TAPS": ptr("i32")}
            sig |= ints(*shape_args, "TILES", "SPLIT_TILES")
            layout = ("g", "x")
        for t in layout:
            if t == "w":
                sig |= ints("stride_wo", "stride_wi", "stride_wh")
                meta["stride_ww"] = 1
            else:
                names, units = strides(t)
                sig |= names
                meta |= units
        meta |= {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
        name = f"{kernel.__name__}[{dtype},Cin={c_in},Cout={c_out},W={width},{label}]"
        return TritonKernel("autoregressive", name, lambda: kernel, sig, meta, cfg["num_warps"], cfg["num_stages"])

    # PixelCNN on 28 x 28 images: the 7x7 type-A first layer (1 or 3 colour channels in), the
    # 3x3 type-B hidden layers (one and three channel groups), fp64 (gradcheck) and bf16
    # inputs; the rules are a runtime table, so the mask grid does not change the binary
    shapes = [("fp32", 1, 64, 28, "7x7 A"), ("fp32", 3, 96, 28, "7x7 A, 3 groups"),
              ("fp32", 128, 128, 28, "3x3 B"), ("fp32", 96, 96, 28, "3x3 B, 3 groups"),
              ("fp64", 16, 16, 8, "3x3 B"), ("bf16", 128, 128, 28, "3x3 B")]
    kernels = (_masked_conv_fwd_kernel, _masked_conv_bwd_input_kernel, _masked_conv_bwd_weight_kernel)
    return [entry(kernel, *shape) for kernel in kernels for shape in shapes]
