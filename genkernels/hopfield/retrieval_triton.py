"""Triton kernel of continuous modern Hopfield retrieval, its launcher and the
``genkernels::hopfield_retrieval_triton`` op.

Three layers (STYLE.md): ``_hopfield_retrieval_kernel`` (@triton.jit) ->
``hopfield_retrieval_fwd()`` (the launcher: output allocation, grid, fixed
meta-parameters) -> ``torch.ops.genkernels.hopfield_retrieval_triton`` (a
``torch.library.custom_op`` with a fake kernel; its autograd is registered in
genkernels/hopfield/retrieval_ops.py). The oracle is genkernels/hopfield/retrieval_reference.py.

The forward is one launch for all steps: one program per query row keeps the row's
iterate xi (BLOCK_D features) in registers and, every step, streams the row's stored
patterns in (BLOCK_P, BLOCK_D) tiles with an online softmax (FlashAttention-style: a
running max m, a running sum l and a running weighted sum of patterns, rescaled by
exp(m_old - m_new) when the max grows), so each step reads the patterns once and any P
works. A row leaves its loop after the first step whose max-abs change is not > tol,
or after max_steps; nothing goes back to the host between steps. A shared pattern set
((1, P, D)) is read with a batch stride of 0, so every program streams the same
patterns (L2-resident on a GPU for the sizes of bench/bench_hopfield.py).

Numerics: loads are upcast to ACC (fp32, fp64 for fp64 input); the result is returned
in ACC. beta and tol reach the kernel in a small ACC tensor, so an fp64 run compares in
fp64 and beta never leaves the device.

The backward is the reference's explicit VJP (``hopfield_retrieval_backward`` in
retrieval_reference.py: the iterates recomputed, then per-step batched matrix products)
and runs as PyTorch ops on the tensors' device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of
from .retrieval_reference import retrieval_backward_reference, retrieval_setup_context

# Elements of one (BLOCK_P, BLOCK_D) tile of stored patterns held in registers: 4096
# fp32 over 128 threads is 32 registers a thread for the tile.
TILE_ELEMENTS = 4096


@triton.jit
def _hopfield_retrieval_kernel(
    OUT,          # *retrieved (B, D) ACC contiguous
    STEPS,        # *steps (B,) int64: steps each row took
    Q,            # *queries (B, D), any float dtype and strides
    X,            # *stored (B | 1, P, D), any float dtype and strides
    PARAMS,       # *(2,) ACC: beta, tol
    P, D,         # patterns per row, features
    max_steps,    # >= 1
    stride_qb, stride_qd,               # strides of queries (elements)
    stride_xb, stride_xp, stride_xd,    # strides of stored; stride_xb = 0 for a shared set
    BLOCK_P: tl.constexpr,   # patterns per tile
    BLOCK_D: tl.constexpr,   # >= D: the whole row in registers
    ACC: tl.constexpr,       # accumulation dtype
):
    """Program b owns query row b for all its steps."""
    b = tl.program_id(0).to(tl.int64)
    feats = tl.arange(0, BLOCK_D)
    feat_mask = feats < D
    xi = tl.load(Q + b * stride_qb + feats * stride_qd, mask=feat_mask, other=0.0).to(ACC)
    beta = tl.load(PARAMS)
    tol = tl.load(PARAMS + 1)
    x_row = X + b * stride_xb
    lanes = tl.arange(0, BLOCK_P).to(tl.int64)
    t = max_steps * 0
    running = max_steps > 0
    while running:
        m = tl.full([], float("-inf"), ACC)       # running max of beta * <X_p, xi>
        l = tl.zeros([], ACC)                     # running sum of exp(score - m)
        acc = tl.zeros([BLOCK_D], ACC)            # running sum of exp(score - m) X_p
        for p0 in range(0, P, BLOCK_P):
            pats = p0 + lanes
            pat_mask = pats < P
            tile = tl.load(x_row + pats[:, None] * stride_xp + feats[None, :] * stride_xd,
                           mask=pat_mask[:, None] & feat_mask[None, :], other=0.0).to(ACC)
            score = tl.sum(tile * xi[None, :], 1) * beta
            score = tl.where(pat_mask, score, float("-inf"))
            m_new = tl.maximum(m, tl.max(score, 0))
            rescale = tl.exp(m - m_new)           # 0 on the first tile (m = -inf)
            e = tl.exp(score - m_new)
            l = l * rescale + tl.sum(e, 0)
            acc = acc * rescale + tl.sum(e[:, None] * tile, 0)
            m = m_new
        new = acc / l
        changed = tl.max((tl.abs(new - xi) > tol).to(tl.int32), 0)
        xi = new
        t += 1
        running = (changed > 0) & (t < max_steps)
    tl.store(OUT + b * D + feats, xi, mask=feat_mask)
    tl.store(STEPS + b, t.to(tl.int64))


def _config(d: int) -> dict:
    """Fixed meta-parameters (also compiled by genkernels/_static.py)."""
    block_d = max(16, triton.next_power_of_2(max(d, 1)))
    block_p = max(16, min(128, TILE_ELEMENTS // block_d))
    return {"BLOCK_P": block_p, "BLOCK_D": block_d, "num_warps": 4 if block_d <= 256 else 8}


def hopfield_retrieval_fwd(queries: torch.Tensor, stored: torch.Tensor, beta: torch.Tensor,
                           max_steps: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """queries (B, D), stored (B | 1, P, D), beta 0-d -> retrieved (B, D) in the
    accumulation dtype, steps (B,) int64."""
    b_count, d = queries.shape
    acc = acc_dtype(queries.dtype)
    out = torch.empty((b_count, d), dtype=acc, device=queries.device)
    steps = torch.zeros((b_count,), dtype=torch.int64, device=queries.device)
    if b_count == 0:
        return out, steps
    params = torch.stack([beta.to(device=queries.device, dtype=acc).reshape(()),
                          torch.tensor(tol, dtype=acc, device=queries.device)])
    stride_xb = 0 if stored.shape[0] == 1 else stored.stride(0)
    with device_of(queries):
        _hopfield_retrieval_kernel[(b_count,)](
            out, steps, queries, stored, params, stored.shape[1], d, max_steps,
            queries.stride(0), queries.stride(1), stride_xb, stored.stride(1), stored.stride(2),
            ACC=TL_ACC[acc], **_config(d))
    return out, steps


@torch.library.custom_op("genkernels::hopfield_retrieval_triton", mutates_args=())
def hopfield_retrieval_triton(queries: torch.Tensor, stored: torch.Tensor, beta: torch.Tensor,
                              max_steps: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    return hopfield_retrieval_fwd(queries, stored, beta, max_steps, tol)


@hopfield_retrieval_triton.register_fake
def _hopfield_retrieval_triton_fake(queries, stored, beta, max_steps, tol):
    return (queries.new_empty(queries.shape, dtype=acc_dtype(queries.dtype)),
            queries.new_empty((queries.shape[0],), dtype=torch.int64))


hopfield_retrieval_triton.register_autograd(retrieval_backward_reference,
                                            setup_context=retrieval_setup_context)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def retrieval(dtype: str, d: int) -> TritonKernel:
        acc = "fp64" if dtype == "fp64" else "fp32"
        cfg = _config(d)
        # contiguous inputs: unit feature strides are specialised to 1 by the launcher; a
        # shared pattern set differs only by the value of stride_xb (0)
        sig = {"OUT": ptr(acc), "STEPS": "*i64", "Q": ptr(dtype), "X": ptr(dtype),
               "PARAMS": ptr(acc), "P": "i32", "D": "i32", "max_steps": "i32",
               "stride_qb": "i32", "stride_xb": "i32", "stride_xp": "i32"}
        meta = {"BLOCK_P": cfg["BLOCK_P"], "BLOCK_D": cfg["BLOCK_D"],
                "ACC": {"fp32": tl.float32, "fp64": tl.float64}[acc], "stride_qd": 1, "stride_xd": 1}
        return TritonKernel("hopfield", f"_hopfield_retrieval_kernel[{dtype},D={d}]",
                            lambda: _hopfield_retrieval_kernel, sig, meta,
                            cfg["num_warps"], 2)

    # the benchmark's feature counts (64, 256), a large D, half precision and fp64
    return [retrieval("fp32", 64), retrieval("fp32", 256), retrieval("fp32", 1024),
            retrieval("bf16", 64), retrieval("fp16", 256), retrieval("fp64", 64)]
