"""Triton kernel of the soft SOM forward and the ``genkernels::som_soft_triton`` op.

Three layers (STYLE.md): ``_som_soft_kernel`` -> ``som_soft_fwd()`` (output allocation,
grid, fixed meta-parameters) -> ``torch.ops.genkernels.som_soft_triton`` (a
``torch.library.custom_op`` with a fake kernel and the autograd of
genkernels/som/soft_reference.py: its explicit VJP, which recomputes each node tile's
weights from the saved row statistics). The signature is the C++ schema of
csrc/genkernels.cpp with a ``_triton`` suffix; the oracle is soft_reference.soft_som_forward.

One program owns one input row with all its features in registers and walks the nodes in
(BLOCK_K, BLOCK_D) tiles: distances from the differences (no GEMM expansion: exact near
0, where the Euclidean gradient is defined), the scores -beta d, a running max m and sum Z
of their exponentials (online softmax, as attention does with its scores), and the running
sum of exp(s - m) g_k over the tile's values. Memory: the inputs, (B, C) + 2 B numbers out.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of
from .soft_reference import soft_backward_reference, soft_setup_context

# Elements of one (BLOCK_K, BLOCK_D) node tile held in registers: 4096 fp32 over 128
# threads is 32 registers a thread.
TILE_ELEMENTS = 4096


@triton.jit
def _som_soft_kernel(
    OUT,          # *out (B, C) ACC contiguous
    M,            # *m (B,) ACC: the row's max score
    Z,            # *Z (B,) ACC: sum of exp(score - m)
    X,            # *x (B, D), any float dtype and strides
    L,            # *nodes (K, D), any float dtype and strides
    G,            # *values (K, C), any float dtype and strides
    BETA,         # *beta 0-d ACC
    K, D, C,
    stride_xb, stride_xd, stride_lk, stride_ld, stride_gk, stride_gc,
    SQUARED: tl.constexpr,   # squared distance, else Euclidean
    BLOCK_K: tl.constexpr,   # nodes per tile
    BLOCK_D: tl.constexpr,   # >= D: the whole row in registers
    BLOCK_C: tl.constexpr,   # >= C
    ACC: tl.constexpr,       # accumulation dtype
):
    b = tl.program_id(0).to(tl.int64)
    feats = tl.arange(0, BLOCK_D)
    feat_mask = feats < D
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    x = tl.load(X + b * stride_xb + feats * stride_xd, mask=feat_mask, other=0.0).to(ACC)
    beta = tl.load(BETA)
    lanes = tl.arange(0, BLOCK_K).to(tl.int64)
    m = tl.full([], float("-inf"), ACC)
    z = tl.zeros([], ACC)
    acc = tl.zeros([BLOCK_C], ACC)
    for k0 in range(0, K, BLOCK_K):
        nodes = k0 + lanes
        node_mask = nodes < K
        tile = tl.load(L + nodes[:, None] * stride_lk + feats[None, :] * stride_ld,
                       mask=node_mask[:, None] & feat_mask[None, :], other=0.0).to(ACC)
        diff = tile - x[None, :]
        d = tl.sum(diff * diff, 1)
        if not SQUARED:
            d = tl.sqrt(d)
        score = tl.where(node_mask, -beta * d, float("-inf"))
        m_new = tl.maximum(m, tl.max(score, 0))
        rescale = tl.exp(m - m_new)           # 0 on the first tile (m = -inf)
        e = tl.exp(score - m_new)
        g = tl.load(G + nodes[:, None] * stride_gk + cols[None, :] * stride_gc,
                    mask=node_mask[:, None] & col_mask[None, :], other=0.0).to(ACC)
        z = z * rescale + tl.sum(e, 0)
        acc = acc * rescale + tl.sum(e[:, None] * g, 0)
        m = m_new
    tl.store(OUT + b * C + cols, acc / z, mask=col_mask)
    tl.store(M + b, m)
    tl.store(Z + b, z)


def _config(d: int, c: int) -> dict:
    """Fixed meta-parameters (also compiled by genkernels/_static.py)."""
    block_d = max(16, triton.next_power_of_2(max(d, 1)))
    block_k = max(16, min(128, TILE_ELEMENTS // block_d))
    return {"BLOCK_K": block_k, "BLOCK_D": block_d, "BLOCK_C": max(2, triton.next_power_of_2(max(c, 1))),
            "num_warps": 4 if block_d <= 256 else 8}


def som_soft_fwd(x: torch.Tensor, nodes: torch.Tensor, values: torch.Tensor, beta: torch.Tensor,
                 squared: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, D), nodes (K, D), values (K, C), beta 0-d -> out (B, C), m (B,), Z (B,) in the
    accumulation dtype; see soft_reference.soft_som_forward."""
    rows, d = x.shape
    k_nodes, c = values.shape
    acc = acc_dtype(x.dtype)
    out = torch.empty((rows, c), dtype=acc, device=x.device)
    m = torch.empty((rows,), dtype=acc, device=x.device)
    z = torch.empty((rows,), dtype=acc, device=x.device)
    if rows == 0:
        return out, m, z
    beta = beta.to(device=x.device, dtype=acc).reshape(())
    with device_of(x):
        _som_soft_kernel[(rows,)](
            out, m, z, x, nodes, values, beta, k_nodes, d, c,
            x.stride(0), x.stride(1), nodes.stride(0), nodes.stride(1), values.stride(0), values.stride(1),
            SQUARED=bool(squared), ACC=TL_ACC[acc], **_config(d, c))
    return out, m, z


@torch.library.custom_op("genkernels::som_soft_triton", mutates_args=())
def som_soft_triton(x: torch.Tensor, nodes: torch.Tensor, values: torch.Tensor, beta: torch.Tensor,
                    squared: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return som_soft_fwd(x, nodes, values, beta, squared)


@som_soft_triton.register_fake
def _som_soft_triton_fake(x, nodes, values, beta, squared):
    acc = acc_dtype(x.dtype)
    rows = x.shape[0]
    return (x.new_empty((rows, values.shape[1]), dtype=acc), x.new_empty((rows,), dtype=acc),
            x.new_empty((rows,), dtype=acc))


som_soft_triton.register_autograd(soft_backward_reference, setup_context=soft_setup_context)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def soft(dtype: str, d: int, c: int, squared: bool) -> TritonKernel:
        acc = "fp64" if dtype == "fp64" else "fp32"
        cfg = _config(d, c)
        sig = {"OUT": ptr(acc), "M": ptr(acc), "Z": ptr(acc), "X": ptr(dtype), "L": ptr(dtype),
               "G": ptr(dtype), "BETA": ptr(acc), "K": "i32", "D": "i32", "C": "i32",
               "stride_xb": "i32", "stride_xd": "i32", "stride_lk": "i32", "stride_ld": "i32",
               "stride_gk": "i32", "stride_gc": "i32"}
        meta = {"SQUARED": squared, "BLOCK_K": cfg["BLOCK_K"], "BLOCK_D": cfg["BLOCK_D"],
                "BLOCK_C": cfg["BLOCK_C"], "ACC": {"fp32": tl.float32, "fp64": tl.float64}[acc]}
        name = f"_som_soft_kernel[{dtype},D={d},C={c},{'squared' if squared else 'euclidean'}]"
        return TritonKernel("som", name, lambda: _som_soft_kernel, sig, meta, cfg["num_warps"], 2)

    # the spiral layer (D=2 inputs, 2 grid coordinates), a hidden-layer width, fp64
    return [soft("fp32", 2, 2, False), soft("fp32", 32, 2, False), soft("fp32", 64, 2, True),
            soft("fp64", 32, 2, False)]
