"""Triton kernels of the rational-quadratic spline transform: ``genkernels::rq_spline_triton``
and ``genkernels::rq_spline_backward_triton``.

Three layers (STYLE.md): ``_spline_fwd_kernel`` -> ``spline_fwd()`` -> the forward op, and
``_spline_bwd_kernel`` -> ``spline_bwd()`` -> the backward op (``torch.library.custom_op``s
with fake kernels; the forward op's autograd calls the backward op). The oracle is
spline_reference.rq_spline differentiated by autograd; its docstring is the spec.

The grid is (rows, feature blocks) (rows on the axis without CUDA's 65,535 limit): a program
owns BLOCK features of one row (4 warps) and reads each feature's widths and heights as
(BLOCK, KP) tiles (KP: K rounded up to a power of two; a feature's parameters are contiguous,
rows and features may have strides of their own), only for the features it transforms inside
[-bound, bound] -- a kept feature's parameters are never read, whatever they hold. Per tile:
the softmax along the bins (max-subtracted), the bin fractions MIN_BIN + (1 - K MIN_BIN)
softmax and their running sum (tl.cumsum, in fp64 for fp32 fractions: exact, then rounded
once, as torch's CPU cumsum) give the K - 1 interior knots as the reference forms them; the
bin is the count of interior knots <= the value (x, or y for the inverse), and a bin's edges
are gathered from the tiles by a masked sum. Only the two knot derivatives of the bin are
loaded (indexed loads). The forward program's log-determinant part
(its block's sum of log dy/dx) goes to a (B, blocks) buffer that torch sums per row: no
atomics, the same result on every run. BLOCK * KP <= 512 (4 tile elements a thread): the
kernels hold about a dozen tile-shaped values, and at K = 8 (BLOCK 64) take 56-64 (forward)
and 104-122 (backward) registers on sm_80/sm_90 without spills (bench/results/static/flows.md);
twice the tile spilled in the backward on sm_80.

The backward recomputes the forward per element (nothing but the inputs is saved) and
backpropagates by hand: to the bin's edges, widths, heights and derivatives (for the inverse
by implicit differentiation of y(theta) = y: d theta = (dy - y_q dq) / y_theta, exact at the
root), through the running sums (the edge at knot j depends on the fractions before j: a
mask comparing the column with the bin), through the softmax's Jacobian and through softplus
(sigmoid), and writes the gradient of params as one (B, N, 3K - 1) tensor.

softplus follows torch's F.softplus, the reference's: u past 20 as itself (gradient 1), below
log1p(exp(u)), written without libdevice (the interpreter has none) as max(u, 0) +
log1p(exp(-|u|)) with log1p(t) = log(1 + t) t / ((1 + t) - 1), accurate where 1 + t rounds.
The bound travels as three fp32 scalars (hi + mid + lo: Triton passes Python floats as
fp32), exact for fp64 inputs. Arithmetic in fp32 (fp64 for fp64 inputs), loads and stores in
the tensors' dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of, next_pow2
from . import spline_reference

MIN_BIN: tl.constexpr = tl.constexpr(spline_reference.MIN_BIN)
MIN_DERIVATIVE: tl.constexpr = tl.constexpr(spline_reference.MIN_DERIVATIVE)
TILE = 512           # BLOCK * KP (the module's docstring says why)
MAX_BLOCK = 512
NUM_WARPS = 4


def block_for(kp: int, n: int | None = None) -> int:
    """Features per program for K rounded up to kp: BLOCK * kp <= TILE, and no wider than
    the row's n features need (at least 16): short rows (a 2-D flow's) run no masked-off
    lanes."""
    block = max(1, min(MAX_BLOCK, TILE // kp))
    return block if n is None else min(block, max(16, next_pow2(n)))


@triton.jit
def _softplus(u):
    """torch's F.softplus (threshold 20): u past 20, else max(u, 0) + log1p(exp(-|u|))."""
    t = tl.exp(-tl.abs(u))
    w = 1.0 + t
    rounded = tl.where(w == 1.0, 1.0, w - 1.0)                      # t as 1 + t holds it, never 0
    log1p = tl.where(w == 1.0, t, tl.log(w) * (t / rounded))
    return tl.where(u > 20.0, u, tl.maximum(u, 0.0) + log1p)


@triton.jit
def _sigmoid(u):
    """softplus' = sigmoid, from exp(-|u|) (no overflow; tiny values kept for u << 0)."""
    t = tl.exp(-tl.abs(u))
    return tl.where(u >= 0.0, 1.0, t) / (1.0 + t)


@triton.jit
def _fractions(ptrs, load, K: tl.constexpr, KP: tl.constexpr, ACC: tl.constexpr):
    """(BLOCK, KP) raw bin sizes at ptrs (rows where load) -> (softmax, the running sums of
    the fractions MIN_BIN + (1 - K MIN_BIN) softmax); columns past K hold 0."""
    cols = tl.arange(0, KP)[None, :]
    raw = tl.load(ptrs + cols, mask=load[:, None] & (cols < K), other=0.0).to(ACC)
    raw = tl.where(cols < K, raw, float("-inf"))
    ex = tl.exp(raw - tl.max(raw, 1)[:, None])
    soft = ex / tl.sum(ex, 1)[:, None]
    frac = tl.where(cols < K, MIN_BIN + (1.0 - K * MIN_BIN) * soft, 0.0)
    # summed in fp64, where a sum of fp32 fractions is exact in any order: the fp32 running
    # sums are then the fractions' exact sums rounded once, as torch's CPU cumsum (which
    # accumulates fp32 in double) makes them
    return soft, tl.cumsum(frac.to(tl.float64), 1).to(ACC)


@triton.jit
def _bin_of(inner, v, K: tl.constexpr, KP: tl.constexpr):
    """The bin of each v: the number of interior knots (columns 0..K-2 of inner) <= v."""
    cols = tl.arange(0, KP)[None, :]
    return tl.sum(tl.where((cols < K - 1) & (inner <= v[:, None]), 1, 0), 1)


@triton.jit
def _edges(inner, idx, bound, K: tl.constexpr, KP: tl.constexpr):
    """The knots at each bin's ends: -bound, the interior knots (inner), bound."""
    cols = tl.arange(0, KP)[None, :]
    lower = tl.sum(tl.where(cols == idx[:, None] - 1, inner, 0.0), 1)
    upper = tl.sum(tl.where(cols == idx[:, None], inner, 0.0), 1)
    return tl.where(idx == 0, -bound, lower), tl.where(idx == K - 1, bound, upper)


@triton.jit
def _bin_state(X, P, MASK, row, feats, valid, stride_x, stride_pb, stride_pn, bound_hi, bound_mid, bound_lo,
               INVERSE: tl.constexpr, ACC: tl.constexpr, K: tl.constexpr, KP: tl.constexpr):
    """What both kernels compute first, per feature of the block: whether it is transformed
    (inside), its bin and the bin's knots, derivatives and raw derivative parameters, and
    theta (the position inside the bin; for the inverse the root of the bin's quadratic).
    Returns (bound, x, inside, wsoft, hsoft, idx, x0, y0, width, height, slope, d0, d1, r0, r1,
    e, theta)."""
    bound = (tl.cast(bound_hi, ACC) + tl.cast(bound_mid, ACC)) + tl.cast(bound_lo, ACC)   # exact in fp64
    kept = tl.load(MASK + feats, mask=valid, other=1.0) != 0
    x = tl.load(X + row * stride_x + feats, mask=valid, other=0.0).to(ACC)
    inside = valid & ~kept & (x >= -bound) & (x <= bound)
    v = tl.where(inside, x, 0.0)
    base = P + row * stride_pb + feats.to(tl.int64) * stride_pn
    wsoft, wsum = _fractions(base[:, None], inside, K, KP, ACC)
    xin = wsum * (2.0 * bound) - bound
    hsoft, hsum = _fractions(base[:, None] + K, inside, K, KP, ACC)
    yin = hsum * (2.0 * bound) - bound
    if INVERSE:
        idx = _bin_of(yin, v, K, KP)
    else:
        idx = _bin_of(xin, v, K, KP)
    x0, x1 = _edges(xin, idx, bound, K, KP)
    y0, y1 = _edges(yin, idx, bound, K, KP)
    r0 = tl.load(base + 2 * K + idx - 1, mask=inside & (idx > 0), other=0.0).to(ACC)
    r1 = tl.load(base + 2 * K + idx, mask=inside & (idx < K - 1), other=0.0).to(ACC)
    d0 = tl.where(idx == 0, 1.0, MIN_DERIVATIVE + _softplus(r0))
    d1 = tl.where(idx == K - 1, 1.0, MIN_DERIVATIVE + _softplus(r1))
    width = x1 - x0
    height = y1 - y0
    slope = height / width
    e = d0 + d1 - 2.0 * slope
    if INVERSE:
        dy = v - y0
        a = height * (slope - d0) + dy * e
        b = height * d0 - dy * e
        c = -slope * dy
        theta = (2.0 * c) / (-b - tl.sqrt(tl.maximum(b * b - 4.0 * a * c, 0.0)))
    else:
        theta = (v - x0) / width
    return bound, x, inside, wsoft, hsoft, idx, x0, y0, width, height, slope, d0, d1, r0, r1, e, theta


@triton.jit
def _spline_fwd_kernel(X, P, MASK, Y, PART, N, stride_x, stride_pb, stride_pn, n_blocks, bound_hi, bound_mid,
                       bound_lo, INVERSE: tl.constexpr, ACC: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
                       BLOCK: tl.constexpr):
    # X (B, N) input (features contiguous, row stride stride_x); P (B, N, 3K - 1) raw
    # parameters (row stride stride_pb, feature stride stride_pn, each feature's 3K - 1
    # contiguous); MASK (N,) 1 = kept; Y (B, N) output, contiguous; PART (B, n_blocks) the
    # blocks' log-determinant parts; the program owns features [blk BLOCK, (blk + 1) BLOCK) of
    # row `row`.
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    feats = blk * BLOCK + tl.arange(0, BLOCK)
    valid = feats < N
    _, x, inside, _, _, _, x0, y0, width, height, slope, d0, d1, _, _, e, theta = _bin_state(
        X, P, MASK, row, feats, valid, stride_x, stride_pb, stride_pn, bound_hi, bound_mid, bound_lo, INVERSE, ACC, K,
        KP)
    t1 = theta * (1.0 - theta)
    denom = slope + e * t1
    if INVERSE:
        out = x0 + theta * width
    else:
        out = y0 + height * (slope * theta * theta + d0 * t1) / denom
    dnum = slope * slope * (d1 * theta * theta + 2.0 * slope * t1 + d0 * (1.0 - theta) * (1.0 - theta))
    log_deriv = tl.log(dnum) - 2.0 * tl.log(denom)
    tl.store(Y + row * N + feats, tl.where(inside, out, x).to(Y.dtype.element_ty), mask=valid)
    part = tl.sum(tl.where(inside, log_deriv, 0.0), axis=0)
    tl.store(PART + row * n_blocks + blk, -part if INVERSE else part)


@triton.jit
def _spline_bwd_kernel(GY, GL, X, P, MASK, GX, GP, N, stride_gy, stride_x, stride_pb, stride_pn, bound_hi,
                       bound_mid, bound_lo, INVERSE: tl.constexpr, ACC: tl.constexpr, K: tl.constexpr,
                       KP: tl.constexpr, BLOCK: tl.constexpr):
    # GY (B, N) and GL (B,) the output gradients; X, P, MASK as the forward's; GX (B, N) and
    # GP (B, N, 3K - 1) the input gradients, contiguous; the program owns the forward's block.
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    feats = blk * BLOCK + tl.arange(0, BLOCK)
    valid = feats < N
    gy = tl.load(GY + row * stride_gy + feats, mask=valid, other=0.0).to(ACC)
    g_logdet = tl.load(GL + row).to(ACC)
    # the forward, recomputed
    bound, _, inside, wsoft, hsoft, idx, x0, y0, width, height, slope, d0, d1, r0, r1, e, theta = _bin_state(
        X, P, MASK, row, feats, valid, stride_x, stride_pb, stride_pn, bound_hi, bound_mid, bound_lo, INVERSE, ACC, K,
        KP)
    t1 = theta * (1.0 - theta)
    inv_denom = 1.0 / (slope + e * t1)
    ratio = (slope * theta * theta + d0 * t1) * inv_denom          # y = y0 + height ratio
    poly = d1 * theta * theta + 2.0 * slope * t1 + d0 * (1.0 - theta) * (1.0 - theta)
    inv_poly = 1.0 / poly                                         # log dy/dx = 2 log slope + log poly - 2 log denom
    # partial derivatives of y (at fixed y0) and of log dy/dx in theta, slope, d0, d1 (with e
    # = d0 + d1 - 2 slope), in forms without the cancellations of the plain chain rule: where
    # theta = 0 the slope's and d0's partials vanish exactly
    common = height * t1 * inv_denom * inv_denom
    y_theta = height * slope * poly * inv_denom * inv_denom
    y_slope = common * (d1 * theta * theta - d0 * (1.0 - theta) * (1.0 - theta))
    y_d0 = common * (slope * (1.0 - theta) * (1.0 - theta) + d1 * t1)
    y_d1 = -common * (slope * theta * theta + d0 * t1)
    l_theta = 2.0 * (d1 * theta + slope * (1.0 - 2.0 * theta) - d0 * (1.0 - theta)) * inv_poly \
        - 2.0 * e * (1.0 - 2.0 * theta) * inv_denom
    l_slope = 2.0 * t1 * ((d0 + d1) * inv_denom / slope + inv_poly)
    l_d0 = (1.0 - theta) * (1.0 - theta) * inv_poly - 2.0 * t1 * inv_denom
    l_d1 = theta * theta * inv_poly - 2.0 * t1 * inv_denom
    if INVERSE:
        # x = x0 + theta width, logdet -= log dy/dx; theta solves y0 + height ratio(theta) = v
        gl = -g_logdet
        lam = (gy * width + gl * l_theta) / y_theta
        c_y = -lam                        # the implicit theta's weight on y's partials
        gx = lam
        g_y0 = -lam
        g_x0 = gy
        g_width = gy * theta
    else:
        gl = g_logdet
        c_y = gy
        gx = (gy * y_theta + gl * l_theta) / width
        g_y0 = gy
        g_x0 = -gx
        g_width = -gx * theta
    g_slope = c_y * y_slope + gl * l_slope
    g_height = c_y * ratio + g_slope / width
    g_d0 = c_y * y_d0 + gl * l_d0
    g_d1 = c_y * y_d1 + gl * l_d1
    g_width -= g_slope * slope / width
    g_x0 -= g_width                       # x1 = x0 + width, y1 = y0 + height
    g_y0 -= g_height
    out = row * N + feats
    tl.store(GX + out, tl.where(inside, gx, gy).to(GX.dtype.element_ty), mask=valid)
    # through the running sums (the knot at the bin's lower end sums the fractions before the
    # bin, the upper one those up to the bin, unless it is an end) and the softmax
    cols = tl.arange(0, KP)[None, :]
    below = cols < idx[:, None]
    upto = (cols <= idx[:, None]) & (idx[:, None] < K - 1)
    scale = 2.0 * bound * (1.0 - K * MIN_BIN)
    zero = tl.zeros_like(wsoft)
    gp = GP + out.to(tl.int64)[:, None] * (3 * K - 1) + cols
    store = valid[:, None] & (cols < K)
    g_frac = tl.where(below, g_x0[:, None], zero) + tl.where(upto, g_width[:, None], zero)
    g_raw = scale * wsoft * (g_frac - tl.sum(wsoft * g_frac, 1)[:, None])
    tl.store(gp, tl.where(inside[:, None], g_raw, zero).to(GP.dtype.element_ty), mask=store)
    g_frac = tl.where(below, g_y0[:, None], zero) + tl.where(upto, g_height[:, None], zero)
    g_raw = scale * hsoft * (g_frac - tl.sum(hsoft * g_frac, 1)[:, None])
    tl.store(gp + K, tl.where(inside[:, None], g_raw, zero).to(GP.dtype.element_ty), mask=store)
    # the derivatives: d_j = MIN_DERIVATIVE + softplus(raw_(j-1)), softplus' = sigmoid (1 past 20)
    g_r0 = g_d0 * tl.where(r0 > 20.0, 1.0, _sigmoid(r0))
    g_r1 = g_d1 * tl.where(r1 > 20.0, 1.0, _sigmoid(r1))
    g_raw = tl.where(cols == idx[:, None] - 1, g_r0[:, None], tl.where(cols == idx[:, None], g_r1[:, None], zero))
    tl.store(gp + 2 * K, tl.where(inside[:, None], g_raw, zero).to(GP.dtype.element_ty),
             mask=valid[:, None] & (cols < K - 1))


def _split(bound: float) -> tuple[float, float, float]:
    """bound as three fp32 parts hi + mid + lo (Triton passes floats as fp32): hi is bound
    rounded to fp32, and the sum is the bound exactly (24 + 24 + 5 bits), so an fp64 input at
    exactly +-bound is inside, as in the reference."""
    hi = float(torch.tensor(bound, dtype=torch.float32))
    mid = float(torch.tensor(bound - hi, dtype=torch.float32))
    return hi, mid, bound - hi - mid


def _features_contiguous(v: torch.Tensor) -> torch.Tensor:
    """v with stride 1 along its last dimension (a copy only where it has another)."""
    return v if v.shape[-1] <= 1 or v.stride(-1) == 1 else v.contiguous()


def spline_fwd(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor, bound: float,
               inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, N), params (B, N, 3K - 1), mask (N,) -> y (B, N) contiguous in x's dtype and
    logdet (B,) in the accumulation dtype."""
    x, params = _features_contiguous(x), _features_contiguous(params)
    batch, n = x.shape
    k = spline_reference.bins(params)
    kp = next_pow2(k)
    block = block_for(kp, x.shape[1])
    acc = acc_dtype(x.dtype)
    y = torch.empty((batch, n), dtype=x.dtype, device=x.device)
    blocks = triton.cdiv(n, block)
    part = torch.zeros((batch, max(blocks, 1)), dtype=acc, device=x.device)
    if batch and n:
        with device_of(x):
            _spline_fwd_kernel[(batch, blocks)](
                x, params, mask, y, part, n, x.stride(0), params.stride(0), params.stride(1), blocks, *_split(bound),
                INVERSE=inverse, ACC=TL_ACC[acc], K=k, KP=kp, BLOCK=block, num_warps=NUM_WARPS)
    return y, part.sum(1)


def spline_bwd(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, params: torch.Tensor,
               mask: torch.Tensor, bound: float, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The VJP: grad_y (B, N), grad_logdet (B,) -> (grad_x (B, N) in x's dtype, grad_params
    (B, N, 3K - 1) in params' dtype), contiguous."""
    grad_y, x, params = _features_contiguous(grad_y), _features_contiguous(x), _features_contiguous(params)
    batch, n = x.shape
    k = spline_reference.bins(params)
    kp = next_pow2(k)
    block = block_for(kp, x.shape[1])
    acc = acc_dtype(x.dtype)
    gx = torch.empty((batch, n), dtype=x.dtype, device=x.device)
    gp = torch.empty(params.shape, dtype=params.dtype, device=x.device)
    if batch and n:
        gl = grad_logdet.to(acc).contiguous()
        with device_of(x):
            _spline_bwd_kernel[(batch, triton.cdiv(n, block))](
                grad_y, gl, x, params, mask, gx, gp, n, grad_y.stride(0), x.stride(0), params.stride(0),
                params.stride(1), *_split(bound), INVERSE=inverse, ACC=TL_ACC[acc], K=k, KP=kp, BLOCK=block,
                num_warps=NUM_WARPS)
    return gx, gp


# ------------------------------------------------------------------------------- ops
@torch.library.custom_op("genkernels::rq_spline_triton", mutates_args=())
def rq_spline_triton(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor, bound: float,
                     inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return spline_fwd(x, params, mask, bound, inverse)


@rq_spline_triton.register_fake
def _rq_spline_triton_fake(x, params, mask, bound, inverse):
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


@torch.library.custom_op("genkernels::rq_spline_backward_triton", mutates_args=())
def rq_spline_backward_triton(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor,
                              params: torch.Tensor, mask: torch.Tensor, bound: float,
                              inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return spline_bwd(grad_y, grad_logdet, x, params, mask, bound, inverse)


@rq_spline_backward_triton.register_fake
def _rq_spline_backward_triton_fake(grad_y, grad_logdet, x, params, mask, bound, inverse):
    return x.new_empty(x.shape), params.new_empty(params.shape)


_backward, _setup_context = spline_reference.autograd_for(
    lambda *args: torch.ops.genkernels.rq_spline_backward_triton(*args))
rq_spline_triton.register_autograd(_backward, setup_context=_setup_context)


def static_kernels() -> list:
    """The spline kernels' specialisations for the static GPU report (python -m
    genkernels._static): each kernel at K = 8 bins in fp32 forward and inverse and in bf16."""
    from .._static import TritonKernel, ptr

    k = 8
    kp = next_pow2(k)

    def entry(kernel, dtype: str, inverse: bool) -> TritonKernel:
        meta = {"INVERSE": inverse, "ACC": TL_ACC[torch.float32], "K": k, "KP": kp, "BLOCK": block_for(kp)}
        if kernel is _spline_fwd_kernel:
            sig = {"X": ptr(dtype), "P": ptr(dtype), "MASK": ptr("fp32"), "Y": ptr(dtype), "PART": ptr("fp32"),
                   "N": "i32", "stride_x": "i32", "stride_pb": "i32", "stride_pn": "i32", "n_blocks": "i32",
                   "bound_hi": "fp32", "bound_mid": "fp32", "bound_lo": "fp32"}
        else:
            sig = {"GY": ptr(dtype), "GL": ptr("fp32"), "X": ptr(dtype), "P": ptr(dtype), "MASK": ptr("fp32"),
                   "GX": ptr(dtype), "GP": ptr(dtype), "N": "i32", "stride_gy": "i32", "stride_x": "i32",
                   "stride_pb": "i32", "stride_pn": "i32", "bound_hi": "fp32", "bound_mid": "fp32", "bound_lo": "fp32"}
        name = f"{kernel.__name__}[{dtype},K={k},{'inverse' if inverse else 'forward'}]"
        return TritonKernel("flows", name, lambda: kernel, sig, meta, NUM_WARPS, 3)

    variants = [("fp32", False), ("fp32", True), ("bf16", False)]
    return [entry(kernel, *variant) for kernel in (_spline_fwd_kernel, _spline_bwd_kernel) for variant in variants]
