"""Triton kernels of the affine coupling's elementwise part: ``genkernels::affine_coupling_triton``
and ``genkernels::affine_coupling_backward_triton``.

Three layers (STYLE.md): ``_coupling_fwd_kernel`` -> ``coupling_fwd()`` -> the forward op, and
``_coupling_bwd_kernel`` -> ``coupling_bwd()`` -> the backward op (``torch.library.custom_op``s
with fake kernels; the forward op's autograd calls the backward op). The oracle is
coupling_reference.affine_coupling differentiated by autograd; its docstring is the spec.

The grid is (rows, feature blocks) (rows on the axis without CUDA's 65,535 limit): a program
owns BLOCK features of one row (4 warps), reads
x and the row's s and t halves of params through the rows' strides (a conditioner's
(B, 2C, H, W) output is read in place) and the mask once per block, and writes y and, when the
scale is bounded, sigma (which the backward reads instead of recomputing tanh). The forward
program's log-determinant part (the sum of its block's sigma over the transformed features)
goes to a (B, blocks) buffer that torch sums per row: no atomics, the same result on every
run. The backward program is purely elementwise (the log-determinant's gradient is one value
per row) and writes the gradient of params as one (B, 2N) tensor.

tanh is written without libdevice (the interpreter has none): its odd series below |a| = 1/4,
2 sigmoid(2 a) - 1 above -- accurate relatively, so a large bound (bound tanh(s / bound) ~ s)
loses nothing -- and sigma' = (1 - sigma / bound)(1 + sigma / bound). The bound travels as
two fp32 scalars (hi + lo: Triton passes Python floats as fp32), exact for fp64 inputs.
Arithmetic in fp32 (fp64 for fp64 inputs), loads and stores in the tensors' dtypes.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of
from . import coupling_reference

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _tanh(a):
    """tanh to a few ulps relative: its odd series through a^19 below |a| = 1/4 (under 1e-15
    off), 2 sigmoid(2 a) - 1 above (no cancellation there)."""
    a2 = a * a
    p = -443861162.0 / 1856156927625.0
    p = p * a2 + 6404582.0 / 10854718875.0
    p = p * a2 - 929569.0 / 638512875.0
    p = p * a2 + 21844.0 / 6081075.0
    p = p * a2 - 1382.0 / 155925.0
    p = p * a2 + 62.0 / 2835.0
    p = p * a2 - 17.0 / 315.0
    p = p * a2 + 2.0 / 15.0
    p = p * a2 - 1.0 / 3.0
    series = a + a * a2 * p
    return tl.where(tl.abs(a) < 0.25, series, 2.0 * tl.sigmoid(2.0 * a) - 1.0)


@triton.jit
def _coupling_fwd_kernel(X, P, MASK, Y, SIGMA, PART, N, stride_x, stride_p, n_blocks, bound_hi, bound_lo,
                         BOUNDED: tl.constexpr, INVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    valid = cols < N
    kept = tl.load(MASK + cols, mask=valid, other=1.0) != 0
    x = tl.load(X + row * stride_x + cols, mask=valid, other=0.0).to(ACC)
    s = tl.load(P + row * stride_p + cols, mask=valid, other=0.0).to(ACC)
    t = tl.load(P + row * stride_p + N + cols, mask=valid, other=0.0).to(ACC)
    if BOUNDED:
        bound = tl.cast(bound_hi, ACC) + tl.cast(bound_lo, ACC)             # the bound to fp64 precision
        s = bound * _tanh(s / bound)
    sigma = tl.where(kept, 0.0, s)
    if INVERSE:
        moved = (x - t) * tl.exp(-sigma)
    else:
        moved = x * tl.exp(sigma) + t
    y = tl.where(kept, x, moved)
    out = row * N + cols
    tl.store(Y + out, y.to(Y.dtype.element_ty), mask=valid)
    if BOUNDED:
        tl.store(SIGMA + out, sigma.to(SIGMA.dtype.element_ty), mask=valid)
    part = tl.sum(sigma, axis=0)
    tl.store(PART + row * n_blocks + blk, -part if INVERSE else part)


@triton.jit
def _coupling_bwd_kernel(GY, GL, X, P, SIGMA, MASK, GX, GP, N, stride_gy, stride_x, stride_p, stride_sigma, bound_hi,
                         bound_lo, BOUNDED: tl.constexpr, INVERSE: tl.constexpr, ACC: tl.constexpr,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    valid = cols < N
    kept = tl.load(MASK + cols, mask=valid, other=1.0) != 0
    g = tl.load(GY + row * stride_gy + cols, mask=valid, other=0.0).to(ACC)
    gl = tl.load(GL + row).to(ACC)
    x = tl.load(X + row * stride_x + cols, mask=valid, other=0.0).to(ACC)
    if BOUNDED:
        sigma = tl.load(SIGMA + row * stride_sigma + cols, mask=valid, other=0.0).to(ACC)
        r = sigma / (tl.cast(bound_hi, ACC) + tl.cast(bound_lo, ACC))
        dsigma = (1.0 - r) * (1.0 + r)
    else:
        sigma = tl.load(P + row * stride_p + cols, mask=valid, other=0.0).to(ACC)
        dsigma = 1.0
    sigma = tl.where(kept, 0.0, sigma)
    if INVERSE:
        t = tl.load(P + row * stride_p + N + cols, mask=valid, other=0.0).to(ACC)
        e = tl.exp(-sigma)
        gt = -g * e
        gs = (-(g * (x - t) * e) - gl) * dsigma
    else:
        e = tl.exp(sigma)
        gt = g
        gs = (g * x * e + gl) * dsigma
    gp = row * 2 * N + cols
    tl.store(GX + row * N + cols, (g * e).to(GX.dtype.element_ty), mask=valid)
    tl.store(GP + gp, tl.where(kept, 0.0, gs).to(GP.dtype.element_ty), mask=valid)
    tl.store(GP + gp + N, tl.where(kept, 0.0, gt).to(GP.dtype.element_ty), mask=valid)


def _split(bound: float) -> tuple[float, float]:
    """bound as fp32 hi + lo (Triton passes floats as fp32; their sum is the bound to ~2^-48)."""
    if math.isinf(bound):
        return 1.0, 0.0
    hi = float(torch.tensor(bound, dtype=torch.float32))
    return hi, bound - hi


def _features_contiguous(v: torch.Tensor) -> bool:
    return v.dim() < 2 or v.shape[1] <= 1 or v.stride(1) == 1


def coupling_fwd(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor, bound: float,
                 inverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, N), params (B, 2N) (features contiguous), mask (N,) -> y (B, N) contiguous in
    x's dtype, logdet (B,) and sigma (B, N) ((0,) unbounded) in the accumulation dtype."""
    if not (_features_contiguous(x) and _features_contiguous(params)):
        raise ValueError("affine_coupling_triton: the features of x and params must be contiguous")
    batch, n = x.shape
    acc = acc_dtype(x.dtype)
    bounded = not math.isinf(bound)
    y = torch.empty((batch, n), dtype=x.dtype, device=x.device)
    sigma = torch.empty((batch, n) if bounded else (0,), dtype=acc, device=x.device)
    blocks = triton.cdiv(n, BLOCK)
    part = torch.zeros((batch, max(blocks, 1)), dtype=acc, device=x.device)
    if batch and n:
        with device_of(x):
            _coupling_fwd_kernel[(batch, blocks)](
                x, params, mask, y, sigma, part, n, x.stride(0), params.stride(0), blocks, *_split(bound),
                BOUNDED=bounded, INVERSE=inverse, ACC=TL_ACC[acc], BLOCK=BLOCK, num_warps=NUM_WARPS)
    return y, part.sum(1), sigma


def coupling_bwd(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, params: torch.Tensor,
                 sigma: torch.Tensor, mask: torch.Tensor, bound: float,
                 inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The VJP: grad_y (B, N), grad_logdet (B,) -> (grad_x (B, N) in x's dtype, grad_params
    (B, 2N) in params' dtype), contiguous."""
    if not _features_contiguous(grad_y):
        grad_y = grad_y.contiguous()
    batch, n = x.shape
    acc = acc_dtype(x.dtype)
    bounded = not math.isinf(bound)
    gx = torch.empty((batch, n), dtype=x.dtype, device=x.device)
    gp = torch.empty((batch, 2 * n), dtype=params.dtype, device=x.device)
    if batch and n:
        gl = grad_logdet.to(acc).contiguous()
        with device_of(x):
            _coupling_bwd_kernel[(batch, triton.cdiv(n, BLOCK))](
                grad_y, gl, x, params, sigma, mask, gx, gp, n, grad_y.stride(0), x.stride(0), params.stride(0),
                sigma.stride(0) if bounded else 0, *_split(bound), BOUNDED=bounded, INVERSE=inverse, ACC=TL_ACC[acc],
                BLOCK=BLOCK, num_warps=NUM_WARPS)
    return gx, gp


# ------------------------------------------------------------------------------- ops
@torch.library.custom_op("genkernels::affine_coupling_triton", mutates_args=())
def affine_coupling_triton(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor, bound: float,
                           inverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return coupling_fwd(x, params, mask, bound, inverse)


@affine_coupling_triton.register_fake
def _affine_coupling_triton_fake(x, params, mask, bound, inverse):
    dt = acc_dtype(x.dtype)
    sigma = x.new_empty(x.shape, dtype=dt) if not math.isinf(bound) else x.new_empty((0,), dtype=dt)
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=dt), sigma


@torch.library.custom_op("genkernels::affine_coupling_backward_triton", mutates_args=())
def affine_coupling_backward_triton(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor,
                                    params: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor, bound: float,
                                    inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return coupling_bwd(grad_y, grad_logdet, x, params, sigma, mask, bound, inverse)


@affine_coupling_backward_triton.register_fake
def _affine_coupling_backward_triton_fake(grad_y, grad_logdet, x, params, sigma, mask, bound, inverse):
    return x.new_empty(x.shape), params.new_empty(params.shape)


_backward, _setup_context = coupling_reference.autograd_for(
    lambda *args: torch.ops.genkernels.affine_coupling_backward_triton(*args))
affine_coupling_triton.register_autograd(_backward, setup_context=_setup_context)


def static_kernels() -> list:
    """The coupling kernels' specialisations for the static GPU report (python -m
    genkernels._static): each kernel bounded in fp32 forward and inverse and in bf16, and
    unbounded in fp32."""
    from .._static import TritonKernel, ptr

    def entry(kernel, dtype: str, bounded: bool, inverse: bool) -> TritonKernel:
        meta = {"BOUNDED": bounded, "INVERSE": inverse, "ACC": TL_ACC[torch.float32], "BLOCK": BLOCK}
        if kernel is _coupling_fwd_kernel:
            sig = {"X": ptr(dtype), "P": ptr(dtype), "MASK": ptr("fp32"), "Y": ptr(dtype), "SIGMA": ptr("fp32"),
                   "PART": ptr("fp32"), "N": "i32", "stride_x": "i32", "stride_p": "i32", "n_blocks": "i32",
                   "bound_hi": "fp32", "bound_lo": "fp32"}
        else:
            sig = {"GY": ptr(dtype), "GL": ptr("fp32"), "X": ptr(dtype), "P": ptr(dtype), "SIGMA": ptr("fp32"),
                   "MASK": ptr("fp32"), "GX": ptr(dtype), "GP": ptr(dtype), "N": "i32", "stride_gy": "i32",
                   "stride_x": "i32", "stride_p": "i32", "stride_sigma": "i32", "bound_hi": "fp32",
                   "bound_lo": "fp32"}
        name = f"{kernel.__name__}[{dtype},{'bounded' if bounded else 'free'},{'inverse' if inverse else 'forward'}]"
        return TritonKernel("flows", name, lambda: kernel, sig, meta, NUM_WARPS, 3)

    variants = [("fp32", True, False), ("fp32", True, True), ("bf16", True, False), ("fp32", False, False)]
    return [entry(kernel, *variant) for kernel in (_coupling_fwd_kernel, _coupling_bwd_kernel) for variant in variants]
