"""Triton kernels of the affine coupling's elementwise part: ``genkernels::affine_coupling_triton``
and ``genkernels::affine_coupling_backward_triton``.

Three layers (STYLE.md): ``_coupling_fwd_kernel`` -> ``coupling_fwd()`` -> the forward op, and
``_coupling_bwd_kernel`` -> ``coupling_bwd()`` -> the backward op (``torch.library.custom_op``s
with fake kernels; the forward op's autograd calls the backward op). The oracle is
coupling_reference.affine_coupling differentiated by autograd; its docstring is the spec.

The grid is (feature blocks, rows): a program owns BLOCK features of one row (4 warps), reads
x, s, t through the row's stride (a conditioner's (B, 2C, H, W) output chunked into s and t is
read in place) and the mask once per block, and writes y. The forward program's log-determinant
part (the sum of its block's sigma over the transformed features) goes to a (B, blocks) buffer
that torch sums per row: no atomics, the same result on every run. The backward program is
purely elementwise (the log-determinant's gradient is one value per row).

sigma = bound tanh(s / bound) is written with sigmoid alone (the interpreter has no
libdevice): tanh(a) = 2 sigmoid(2 a) - 1 and sigma' = 1 - tanh(a)^2 = 4 sigmoid(2 a)
sigmoid(-2 a), without cancellation. Arithmetic in fp32 (fp64 for fp64 inputs), loads and
stores in the tensors' dtypes.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _sigma(s, bound, BOUNDED: tl.constexpr):
    """(sigma, sigma') of the raw log-scales s."""
    if BOUNDED:
        a2 = 2.0 * s / bound
        up = tl.sigmoid(a2)
        return bound * (2.0 * up - 1.0), 4.0 * up * tl.sigmoid(-a2)
    else:
        return s, tl.full(s.shape, 1.0, s.dtype)


@triton.jit
def _coupling_fwd_kernel(X, S, T, MASK, Y, PART, N, stride_x, stride_s, stride_t, n_blocks, bound,
                         BOUNDED: tl.constexpr, INVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    valid = cols < N
    kept = tl.load(MASK + cols, mask=valid, other=1.0) != 0
    x = tl.load(X + row * stride_x + cols, mask=valid, other=0.0).to(ACC)
    s = tl.load(S + row * stride_s + cols, mask=valid, other=0.0).to(ACC)
    t = tl.load(T + row * stride_t + cols, mask=valid, other=0.0).to(ACC)
    sigma, _ = _sigma(s, bound, BOUNDED)
    sigma = tl.where(kept, 0.0, sigma)
    if INVERSE:
        moved = (x - t) * tl.exp(-sigma)
    else:
        moved = x * tl.exp(sigma) + t
    y = tl.where(kept, x, moved)
    tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=valid)
    part = tl.sum(sigma, axis=0)
    tl.store(PART + row * n_blocks + blk, -part if INVERSE else part)


@triton.jit
def _coupling_bwd_kernel(GY, GL, X, S, T, MASK, GX, GS, GT, N, stride_gy, stride_x, stride_s, stride_t, bound,
                         BOUNDED: tl.constexpr, INVERSE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    valid = cols < N
    kept = tl.load(MASK + cols, mask=valid, other=1.0) != 0
    g = tl.load(GY + row * stride_gy + cols, mask=valid, other=0.0).to(ACC)
    gl = tl.load(GL + row).to(ACC)
    x = tl.load(X + row * stride_x + cols, mask=valid, other=0.0).to(ACC)
    s = tl.load(S + row * stride_s + cols, mask=valid, other=0.0).to(ACC)
    t = tl.load(T + row * stride_t + cols, mask=valid, other=0.0).to(ACC)
    sigma, dsigma = _sigma(s, bound, BOUNDED)
    sigma = tl.where(kept, 0.0, sigma)
    if INVERSE:
        e = tl.exp(-sigma)
        moved = (x - t) * e
        gt = -g * e
        gs = (-(g * moved) - gl) * dsigma
    else:
        e = tl.exp(sigma)
        moved = x * e
        gt = g
        gs = (g * moved + gl) * dsigma
    gx = g * e
    out = row * N + cols
    tl.store(GX + out, gx.to(GX.dtype.element_ty), mask=valid)
    tl.store(GS + out, tl.where(kept, 0.0, gs).to(GS.dtype.element_ty), mask=valid)
    tl.store(GT + out, tl.where(kept, 0.0, gt).to(GT.dtype.element_ty), mask=valid)


def _check(x: torch.Tensor, *others: torch.Tensor) -> None:
    for v in (x, *others):
        if v.dim() == 2 and v.shape[1] > 1 and v.stride(1) != 1:
            raise ValueError(f"affine_coupling_triton: features must be contiguous; got strides {v.stride()}")


def coupling_fwd(x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, bound: float,
                 inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x, s, t (B, N) (features contiguous), mask (N,) -> y (B, N) contiguous in x's dtype,
    logdet (B,) in the accumulation dtype."""
    _check(x, s, t)
    batch, n = x.shape
    acc = acc_dtype(x.dtype)
    y = torch.empty((batch, n), dtype=x.dtype, device=x.device)
    blocks = triton.cdiv(n, BLOCK)
    part = torch.zeros((batch, max(blocks, 1)), dtype=acc, device=x.device)
    if batch and n:
        with device_of(x):
            _coupling_fwd_kernel[(blocks, batch)](
                x, s, t, mask, y, part, n, x.stride(0), s.stride(0), t.stride(0), blocks, bound,
                BOUNDED=not math.isinf(bound), INVERSE=inverse, ACC=TL_ACC[acc], BLOCK=BLOCK, num_warps=NUM_WARPS)
    return y, part.sum(1)


def coupling_bwd(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
                 mask: torch.Tensor, bound: float, inverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VJP: grad_y (B, N), grad_logdet (B,) -> (grad_x, grad_s, grad_t), (B, N) each,
    contiguous, in x's dtype."""
    if grad_y.dim() == 2 and grad_y.shape[1] > 1 and grad_y.stride(1) != 1:
        grad_y = grad_y.contiguous()
    _check(x, s, t)
    batch, n = x.shape
    acc = acc_dtype(x.dtype)
    gx, gs, gt = (torch.empty((batch, n), dtype=x.dtype, device=x.device) for _ in range(3))
    if batch and n:
        gl = grad_logdet.to(acc).contiguous()
        with device_of(x):
            _coupling_bwd_kernel[(triton.cdiv(n, BLOCK), batch)](
                grad_y, gl, x, s, t, mask, gx, gs, gt, n, grad_y.stride(0), x.stride(0), s.stride(0), t.stride(0),
                bound, BOUNDED=not math.isinf(bound), INVERSE=inverse, ACC=TL_ACC[acc], BLOCK=BLOCK,
                num_warps=NUM_WARPS)
    return gx, gs, gt


# ------------------------------------------------------------------------------- ops
@torch.library.custom_op("genkernels::affine_coupling_triton", mutates_args=())
def affine_coupling_triton(x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, bound: float,
                           inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return coupling_fwd(x, s, t, mask, bound, inverse)


@affine_coupling_triton.register_fake
def _affine_coupling_triton_fake(x, s, t, mask, bound, inverse):
    return x.new_empty(x.shape), x.new_empty((x.shape[0],), dtype=acc_dtype(x.dtype))


@torch.library.custom_op("genkernels::affine_coupling_backward_triton", mutates_args=())
def affine_coupling_backward_triton(grad_y: torch.Tensor, grad_logdet: torch.Tensor, x: torch.Tensor,
                                    s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, bound: float,
                                    inverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return coupling_bwd(grad_y, grad_logdet, x, s, t, mask, bound, inverse)


@affine_coupling_backward_triton.register_fake
def _affine_coupling_backward_triton_fake(grad_y, grad_logdet, x, s, t, mask, bound, inverse):
    return x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, s, t, mask, bound, inverse = inputs
    ctx.save_for_backward(x, s, t, mask)
    ctx.args = (bound, inverse)


def _backward(ctx, grad_y, grad_logdet):
    x, s, t, mask = ctx.saved_tensors
    gx, gs, gt = torch.ops.genkernels.affine_coupling_backward_triton(grad_y, grad_logdet, x, s, t, mask, *ctx.args)
    return gx, gs, gt, None, None, None


affine_coupling_triton.register_autograd(_backward, setup_context=_setup_context)


def static_kernels() -> list:
    """The coupling kernels' specialisations for the static GPU report (python -m
    genkernels._static): each kernel bounded in fp32 forward and inverse and in bf16, and
    unbounded in fp32."""
    from .._static import TritonKernel, ptr

    def entry(kernel, dtype: str, bounded: bool, inverse: bool) -> TritonKernel:
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        acc = acc_dtype(torch_dtype)
        acc_name = "fp64" if acc == torch.float64 else "fp32"
        meta = {"BOUNDED": bounded, "INVERSE": inverse, "ACC": TL_ACC[acc], "BLOCK": BLOCK}
        tensors = {"X": ptr(dtype), "S": ptr(dtype), "T": ptr(dtype), "MASK": ptr(acc_name)}
        if kernel is _coupling_fwd_kernel:
            sig = tensors | {"Y": ptr(dtype), "PART": ptr(acc_name), "N": "i32", "stride_x": "i32",
                             "stride_s": "i32", "stride_t": "i32", "n_blocks": "i32", "bound": "fp32"}
        else:
            sig = {"GY": ptr(dtype), "GL": ptr(acc_name)} | tensors | {
                "GX": ptr(dtype), "GS": ptr(dtype), "GT": ptr(dtype), "N": "i32", "stride_gy": "i32",
                "stride_x": "i32", "stride_s": "i32", "stride_t": "i32", "bound": "fp32"}
        name = f"{kernel.__name__}[{dtype},{'bounded' if bounded else 'free'},{'inverse' if inverse else 'forward'}]"
        return TritonKernel("flows", name, lambda: kernel, sig, meta, NUM_WARPS, 3)

    variants = [("fp32", True, False), ("fp32", True, True), ("bf16", True, False), ("fp32", False, False)]
    return [entry(kernel, *variant) for kernel in (_coupling_fwd_kernel, _coupling_bwd_kernel) for variant in variants]
