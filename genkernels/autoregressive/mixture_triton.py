"""Triton kernels of the discretised logistic mixture log-likelihood (PixelCNN++):
``genkernels::logistic_mixture_log_prob_triton`` and
``genkernels::logistic_mixture_log_prob_backward_triton``.

Three layers (STYLE.md): ``_mixture_fwd_kernel`` -> ``mixture_fwd()`` -> the forward op, and
``_mixture_bwd_kernel`` -> ``mixture_bwd()`` -> the backward op (``torch.library.custom_op``s
with fake kernels; the forward op's autograd calls the backward op, v gets no gradient). The
oracle is mixture_reference.log_prob differentiated by autograd; its docstring defines the
parameters' layout [pi (K) | m (K x C) | l (K x C) | a (K x C (C - 1) / 2)] per pixel.

A program owns BLOCK pixels of the flattened B H W, one per lane (4 warps), and reads each
pixel's P parameters and C levels through the tensors' strides (a channels-last or sliced
view is read in place): the flat pixel index is int32 (fewer than 2^31 pixels), the offsets
int64; grad_params is written contiguous. C and K are compile-time constants: the channels
and their coefficient pairs unroll, the components are a loop (unrolled too, C = 3, K = 10
spilled on sm_90: 255 registers and 0.9 / 1.7 KB of stack forward / backward, and the
backward took 6 minutes to compile; as a loop 56 / 96 registers, no spills), and the
logsumexp over components is an online one (running maximum and rescaled sum), so a
pixel's values stay in registers.

* ``_mixture_fwd_kernel``: per component k, z_k = log_softmax(pi)_k + sum_c lp_kc with
  x_c = 2 v_c / (L - 1) - 1, mu_kc = m_kc + sum_{c' < c} tanh(a_k,cc') x_c', s = exp(-max(l, -7)),
  u, d = (x_c - mu_kc +- 1 / (L - 1)) / s and lp_kc = log sigma(u) = -softplus(-u) at v = 0,
  -softplus(d) at v = L - 1, else d + log expm1(u - d) - softplus(u) - softplus(d); the pixel's
  log-likelihood is logsumexp_k z_k.
* ``_mixture_bwd_kernel``: the same pass gives the log-likelihood; a second pass over the
  components recomputes z_k, r_k = exp(z_k - out) and writes, with g the incoming gradient:
  dpi_k = g (r_k - softmax(pi)_k); per channel dlp/du, dlp/dd (sigma(-u), 0 at v = 0;
  0, -sigma(d) at v = L - 1; sigma(-u) + p, -sigma(d) - p inside, p = 1 / expm1(u - d)),
  dm_kc = -g r_k (dlp/du + dlp/dd) / s, dl_kc = -g r_k (u dlp/du + d dlp/dd) where l >= -7
  (the clamp passes the gradient at its bound, as torch.clamp does) else 0, and
  da_k,cc' = dm_kc x_c' (1 - tanh(a)^2). p is large for wide components (1 / (u - d)), so it
  is never formed: dlp/du + dlp/dd = sigma(-u) - sigma(d) and u dlp/du + d dlp/dd =
  u sigma(-u) - d sigma(d) + (u - d) / expm1(u - d), without cancellation.

Numerics: log1p, expm1 and tanh are written with exp, log and sigmoid alone (the interpreter
has no libdevice; exp(e) - 1 would lose all precision for the narrow bins of wide
components): log expm1(e) = log(e) + log(expm1(e) / e) by its series (Bernoulli numbers,
through e^12: under 6e-17 off for e <= 0.5), e + log(1 - exp(-e)) above; e / expm1(e) =
exp(-series) below 0.5, e exp(-e) / (1 - exp(-e)) above; log1p(y) = log(w) y / (w - 1),
w = 1 + y rounded (Goldberg); sigmoid from exp(-|t|); tanh(a) = 2 sigmoid(2 a) - 1 and
1 - tanh(a)^2 = 4 sigmoid(2 a) sigmoid(-2 a). Arithmetic in fp32 (fp64 for fp64
params), loads and stores in the tensors' dtypes; the log-likelihood and grad_params come
back in params' dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of
from . import mixture_reference
from .mixture_reference import LOG_SCALE_MIN

BLOCK = 128
NUM_WARPS = 4
SERIES_MAX = tl.constexpr(0.5)        # log expm1 by its series below, by e + log(1 - exp(-e)) above
LOG_SCALE_FLOOR = tl.constexpr(LOG_SCALE_MIN)


# ------------------------------------------------------------------ scalar functions
@triton.jit
def _log1p(y):
    """log(1 + y) for y in [0, 1], accurate to a few ulps (Goldberg: the rounding of 1 + y
    cancels in log(w) / (w - 1))."""
    w = 1.0 + y
    unit = w == 1.0
    return tl.where(unit, y, tl.log(w) * (y / tl.where(unit, 1.0, w - 1.0)))


@triton.jit
def _softplus(t):
    """log(1 + exp(t)), never overflowing."""
    return tl.maximum(t, 0.0) + _log1p(tl.exp(-tl.abs(t)))


@triton.jit
def _log_expm1_series(e):
    """log(expm1(e) / e) = e / 2 + sum_n B_2n e^2n / (2n (2n)!) for 0 < e <= SERIES_MAX,
    through e^12 (the first term left out is under 6e-17 there)."""
    w = e * e
    acc = 1.0 / 479001600.0 - w * (691.0 / 15692092416000.0)
    acc = -1.0 / 9676800.0 + w * acc
    acc = 1.0 / 181440.0 + w * acc
    acc = -1.0 / 2880.0 + w * acc
    acc = 1.0 / 24.0 + w * acc
    return 0.5 * e + w * acc


@triton.jit
def _log_expm1(e):
    """log(exp(e) - 1) for e > 0, to a few ulps at any e (no overflow)."""
    small = tl.minimum(e, SERIES_MAX)
    large = tl.maximum(e, SERIES_MAX)
    return tl.where(e < SERIES_MAX, tl.log(small) + _log_expm1_series(small), large + tl.log(1.0 - tl.exp(-large)))


@triton.jit
def _e_over_expm1(e):
    """e / (exp(e) - 1) for e > 0."""
    small = tl.minimum(e, SERIES_MAX)
    large = tl.maximum(e, SERIES_MAX)
    tail = tl.exp(-large)
    return tl.where(e < SERIES_MAX, tl.exp(-_log_expm1_series(small)), large * tail / (1.0 - tail))


@triton.jit
def _sigmoid(t):
    """1 / (1 + exp(-t)) from exp(-|t|): no overflow, relative accuracy in both tails."""
    tail = tl.exp(-tl.abs(t))
    inv = 1.0 / (1.0 + tail)
    return tl.where(t >= 0.0, inv, tail * inv)


@triton.jit
def _tanh(a):
    return 2.0 * _sigmoid(2.0 * a) - 1.0


@triton.jit
def _lse_step(run_max, run_sum, z):
    """One term of an online logsumexp: the running maximum and the sum of exp(. - maximum)."""
    new_max = tl.maximum(run_max, z)
    return new_max, run_sum * tl.exp(run_max - new_max) + tl.exp(z - new_max)


# ------------------------------------------------------------- per-pixel quantities
@triton.jit
def _level(V, v_at, stride_vc, c: tl.constexpr, live, ACC: tl.constexpr):
    """Channel c's level v (as ACC) of the block's pixels."""
    return tl.load(V + v_at + c * stride_vc, mask=live, other=0.0).to(ACC)


@triton.jit
def _bin_bounds(PARAMS, p_at, stride_p, V, v_at, stride_vc, scale, half, live, k,
                c: tl.constexpr, K: tl.constexpr, C: tl.constexpr, ACC: tl.constexpr):
    """Component k, channel c: (v, u, d, 1 / s, raw log-scale l) of the block's pixels, u and d
    the bin's bounds (x - mu +- 1 / (L - 1)) / s in units of the scale s = exp(max(l, -7))."""
    v = _level(V, v_at, stride_vc, c, live, ACC)
    mean = tl.load(PARAMS + p_at + (K + k * C + c) * stride_p, mask=live, other=0.0).to(ACC)
    log_scale = tl.load(PARAMS + p_at + (K + K * C + k * C + c) * stride_p, mask=live, other=0.0).to(ACC)
    for earlier in tl.static_range(c):
        coeff = tl.load(PARAMS + p_at + (K + 2 * K * C + k * (C * (C - 1) // 2) + c * (c - 1) // 2 + earlier)
                        * stride_p, mask=live, other=0.0).to(ACC)
        mean += _tanh(coeff) * (_level(V, v_at, stride_vc, earlier, live, ACC) * scale - 1.0)
    inv_scale = tl.exp(-tl.maximum(log_scale, LOG_SCALE_FLOOR))
    centred = v * scale - 1.0 - mean
    return v, (centred + half) * inv_scale, (centred - half) * inv_scale, inv_scale, log_scale


@triton.jit
def _log_bin(v, u, d, top):
    """log P(v): log sigma(u) at v = 0, log(1 - sigma(d)) at v = L - 1 = top, else
    log(sigma(u) - sigma(d))."""
    inner = d + _log_expm1(u - d) - _softplus(u) - _softplus(d)
    return tl.where(v <= 0.0, -_softplus(-u), tl.where(v >= top, -_softplus(d), inner))


@triton.jit
def _component(PARAMS, p_at, stride_p, V, v_at, stride_vc, scale, half, top, pi_lse, live, k,
               K: tl.constexpr, C: tl.constexpr, ACC: tl.constexpr):
    """z_k = log_softmax(pi)_k + sum_c log P_kc(v_c) of the block's pixels."""
    z = tl.load(PARAMS + p_at + k * stride_p, mask=live, other=0.0).to(ACC) - pi_lse
    for c in tl.static_range(C):
        v, u, d, inv_scale, log_scale = _bin_bounds(PARAMS, p_at, stride_p, V, v_at, stride_vc, scale, half, live,
                                                    k, c, K, C, ACC)
        z += _log_bin(v, u, d, top)
    return z


@triton.jit
def _log_likelihood(PARAMS, p_at, stride_p, V, v_at, stride_vc, scale, half, top, live, K: tl.constexpr,
                    C: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """(logsumexp_k z_k, logsumexp_k pi_k) of the block's pixels."""
    run_max = tl.full([BLOCK], float("-inf"), ACC)
    run_sum = tl.zeros([BLOCK], ACC)
    for k in range(K):
        run_max, run_sum = _lse_step(run_max, run_sum,
                                     tl.load(PARAMS + p_at + k * stride_p, mask=live, other=0.0).to(ACC))
    pi_lse = run_max + tl.log(run_sum)
    run_max = tl.full([BLOCK], float("-inf"), ACC)
    run_sum = tl.zeros([BLOCK], ACC)
    for k in range(K):
        z = _component(PARAMS, p_at, stride_p, V, v_at, stride_vc, scale, half, top, pi_lse, live, k, K, C, ACC)
        run_max, run_sum = _lse_step(run_max, run_sum, z)
    return run_max + tl.log(run_sum), pi_lse


@triton.jit
def _pixels(N, HW, W, BLOCK: tl.constexpr):
    """The block's pixels: flat index n into B H W, live mask, image, row and column (int64)."""
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pix = n % HW
    return n, n < N, (n // HW).to(tl.int64), (pix // W).to(tl.int64), (pix % W).to(tl.int64)


# ------------------------------------------------------------------------- kernels
@triton.jit
def _mixture_fwd_kernel(
    PARAMS,                     # (B, P, H, W) any strides
    V,                          # (B, C, H, W) levels (integers as floats), any strides
    OUT,                        # (B, H, W) contiguous, params' dtype
    N, HW, W,                   # B H W, H W, W
    LEVELS,                     # L
    stride_pb, stride_pp, stride_ph, stride_pw,
    stride_vb, stride_vc, stride_vh, stride_vw,
    K: tl.constexpr,            # mixture components
    C: tl.constexpr,            # channels
    ACC: tl.constexpr,          # arithmetic dtype
    BLOCK: tl.constexpr,        # pixels per program
):
    n, live, image, row, col = _pixels(N, HW, W, BLOCK)
    p_at = image * stride_pb + row * stride_ph + col * stride_pw
    v_at = image * stride_vb + row * stride_vh + col * stride_vw
    stride_p = tl.cast(stride_pp, tl.int64)
    top = tl.cast(LEVELS - 1, ACC)                          # L - 1
    scale = 2.0 / top                                       # x = v scale - 1
    half = 1.0 / top                                        # the bin's half-width
    out, pi_lse = _log_likelihood(PARAMS, p_at, stride_p, V, v_at, stride_vc, scale, half, top, live, K, C, ACC,
                                  BLOCK)
    tl.store(OUT + n, out.to(OUT.dtype.element_ty), mask=live)


@triton.jit
def _mixture_bwd_kernel(
    GRAD,                       # (B, H, W) any strides
    PARAMS,                     # (B, P, H, W) any strides
    V,                          # (B, C, H, W) any strides
    GRAD_PARAMS,                # (B, P, H, W) contiguous, params' dtype
    N, HW, W, LEVELS,
    stride_gb, stride_gh, stride_gw,
    stride_pb, stride_pp, stride_ph, stride_pw,
    stride_vb, stride_vc, stride_vh, stride_vw,
    K: tl.constexpr, C: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    n, live, image, row, col = _pixels(N, HW, W, BLOCK)
    p_at = image * stride_pb + row * stride_ph + col * stride_pw
    v_at = image * stride_vb + row * stride_vh + col * stride_vw
    stride_p = tl.cast(stride_pp, tl.int64)
    top = tl.cast(LEVELS - 1, ACC)                          # L - 1
    scale = 2.0 / top                                       # x = v scale - 1
    half = 1.0 / top                                        # the bin's half-width
    out, pi_lse = _log_likelihood(PARAMS, p_at, stride_p, V, v_at, stride_vc, scale, half, top, live, K, C, ACC,
                                  BLOCK)
    g = tl.load(GRAD + image * stride_gb + row * stride_gh + col * stride_gw, mask=live, other=0.0).to(ACC)
    P: tl.constexpr = K * (1 + 2 * C + C * (C - 1) // 2)
    HW64 = tl.cast(HW, tl.int64)
    g_at = image * P * HW64 + row * W + col                 # grad_params[b, 0, y, x]
    for k in range(K):
        z = _component(PARAMS, p_at, stride_p, V, v_at, stride_vc, scale, half, top, pi_lse, live, k, K, C, ACC)
        weight = g * tl.exp(z - out)                        # g r_k
        pi = tl.load(PARAMS + p_at + k * stride_p, mask=live, other=0.0).to(ACC)
        tl.store(GRAD_PARAMS + g_at + k * HW64, (weight - g * tl.exp(pi - pi_lse)).to(GRAD_PARAMS.dtype.element_ty),
                 mask=live)
        for c in tl.static_range(C):
            v, u, d, inv_scale, log_scale = _bin_bounds(PARAMS, p_at, stride_p, V, v_at, stride_vc, scale, half,
                                                        live, k, c, K, C, ACC)
            s_u = _sigmoid(-u)                              # dlp/du at v = 0
            s_d = _sigmoid(d)                               # -dlp/dd at v = L - 1
            first = v <= 0.0
            last = v >= top
            # dlp/du + dlp/dd and u dlp/du + d dlp/dd (module docstring)
            d_sum = tl.where(first, s_u, tl.where(last, -s_d, s_u - s_d))
            d_moment = tl.where(first, u * s_u, tl.where(last, -d * s_d, u * s_u - d * s_d + _e_over_expm1(u - d)))
            g_mean = -weight * d_sum * inv_scale
            g_log_scale = tl.where(log_scale >= LOG_SCALE_FLOOR, -weight * d_moment, 0.0)
            tl.store(GRAD_PARAMS + g_at + (K + k * C + c) * HW64, g_mean.to(GRAD_PARAMS.dtype.element_ty), mask=live)
            tl.store(GRAD_PARAMS + g_at + (K + K * C + k * C + c) * HW64, g_log_scale.to(GRAD_PARAMS.dtype.element_ty),
                     mask=live)
            for earlier in tl.static_range(c):
                pair = K + 2 * K * C + k * (C * (C - 1) // 2) + c * (c - 1) // 2 + earlier
                coeff = 2.0 * tl.load(PARAMS + p_at + pair * stride_p, mask=live, other=0.0).to(ACC)
                x = _level(V, v_at, stride_vc, earlier, live, ACC) * scale - 1.0
                g_coeff = g_mean * x * (4.0 * _sigmoid(coeff) * _sigmoid(-coeff))
                tl.store(GRAD_PARAMS + g_at + pair * HW64, g_coeff.to(GRAD_PARAMS.dtype.element_ty), mask=live)


# ----------------------------------------------------------------------- launchers
def _check_pixel_count(n: int) -> None:
    # the flat pixel index is int32 (its divisions are cheap); the offsets are int64
    if n >= 2 ** 31:
        raise ValueError(f"the Triton mixture kernels take fewer than 2^31 pixels (B H W); got {n}")


def mixture_fwd(params: torch.Tensor, v: torch.Tensor, mixtures: int, levels: int) -> torch.Tensor:
    """params (B, P, H, W) float, v (B, C, H, W) levels, any strides -> (B, H, W) per-pixel
    log-likelihood in params' dtype."""
    batch, _, h, w = params.shape
    out = torch.empty((batch, h, w), dtype=params.dtype, device=params.device)
    n = out.numel()
    if n == 0:
        return out
    _check_pixel_count(n)
    with device_of(params):
        _mixture_fwd_kernel[(triton.cdiv(n, BLOCK),)](
            params, v, out, n, h * w, w, levels, *params.stride(), *v.stride(),
            K=mixtures, C=v.shape[1], ACC=TL_ACC[acc_dtype(params.dtype)], BLOCK=BLOCK, num_warps=NUM_WARPS,
            num_stages=1)
    return out


def mixture_bwd(grad: torch.Tensor, params: torch.Tensor, v: torch.Tensor, mixtures: int,
                levels: int) -> torch.Tensor:
    """grad (B, H, W), params (B, P, H, W), v (B, C, H, W), any strides -> grad_params (B, P, H,
    W) contiguous, in params' dtype."""
    grad_params = torch.empty(params.shape, dtype=params.dtype, device=params.device)
    batch, _, h, w = params.shape
    n = batch * h * w
    if n == 0:
        return grad_params
    _check_pixel_count(n)
    with device_of(params):
        _mixture_bwd_kernel[(triton.cdiv(n, BLOCK),)](
            grad, params, v, grad_params, n, h * w, w, levels, *grad.stride(), *params.stride(), *v.stride(),
            K=mixtures, C=v.shape[1], ACC=TL_ACC[acc_dtype(params.dtype)], BLOCK=BLOCK, num_warps=NUM_WARPS,
            num_stages=1)
    return grad_params


# ------------------------------------------------------------------------------- ops
@torch.library.custom_op("genkernels::logistic_mixture_log_prob_triton", mutates_args=())
def logistic_mixture_log_prob_triton(params: torch.Tensor, v: torch.Tensor, mixtures: int,
                                     levels: int) -> torch.Tensor:
    return mixture_fwd(params, v, mixtures, levels)


@logistic_mixture_log_prob_triton.register_fake
def _logistic_mixture_log_prob_triton_fake(params, v, mixtures, levels):
    return params.new_empty((params.shape[0], params.shape[2], params.shape[3]))


@torch.library.custom_op("genkernels::logistic_mixture_log_prob_backward_triton", mutates_args=())
def logistic_mixture_log_prob_backward_triton(grad: torch.Tensor, params: torch.Tensor, v: torch.Tensor,
                                              mixtures: int, levels: int) -> torch.Tensor:
    return mixture_bwd(grad, params, v, mixtures, levels)


@logistic_mixture_log_prob_backward_triton.register_fake
def _logistic_mixture_log_prob_backward_triton_fake(grad, params, v, mixtures, levels):
    return params.new_empty(params.shape)


_backward, _setup_context = mixture_reference.autograd_for(
    lambda *args: torch.ops.genkernels.logistic_mixture_log_prob_backward_triton(*args))
logistic_mixture_log_prob_triton.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The mixture kernels' specialisations for the static GPU report (python -m
    genkernels._static): PixelCNN++'s heads, one channel with 5 components and three with 10,
    contiguous tensors (the unit column strides specialised, as the GPU launch does)."""
    from .._static import TritonKernel, ptr

    def entry(kernel, dtype: str, channels: int, mixtures: int) -> TritonKernel:
        torch_dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}[dtype]
        meta = {"K": mixtures, "C": channels, "ACC": TL_ACC[acc_dtype(torch_dtype)], "BLOCK": BLOCK}
        tensors = {"PARAMS": ptr(dtype), "V": ptr(dtype)}
        if kernel is _mixture_fwd_kernel:
            sig = tensors | {"OUT": ptr(dtype)}
            strided = ("p", "v")
        else:
            sig = {"GRAD": ptr(dtype)} | tensors | {"GRAD_PARAMS": ptr(dtype)}
            strided = ("g", "p", "v")
        sig |= {name: "i32" for name in ("N", "HW", "W", "LEVELS")}
        for t in strided:
            sig |= {f"stride_{t}{dim}": "i32" for dim in {"g": "bh", "p": "bph", "v": "bch"}[t]}
            meta[f"stride_{t}w"] = 1
        return TritonKernel("autoregressive", f"{kernel.__name__}[{dtype},C={channels},K={mixtures}]",
                            lambda: kernel, sig, meta, NUM_WARPS, 1)

    return [entry(kernel, dtype, c, k) for kernel in (_mixture_fwd_kernel, _mixture_bwd_kernel)
            for dtype in ("fp32", "bf16") for c, k in ((1, 5), (3, 10))]
