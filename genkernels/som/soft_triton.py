"""Triton kernels of the soft SOM, forward and backward, and their ops
``genkernels::som_soft_triton`` and ``genkernels::som_soft_backward_triton``.

Three layers (STYLE.md) each: ``_som_soft_kernel`` -> ``som_soft_fwd()`` (output
allocation, grid, fixed meta-parameters) -> ``torch.ops.genkernels.som_soft_triton``, and
``_som_soft_bwd_rows_kernel`` + ``_som_soft_bwd_nodes_kernel`` -> ``som_soft_bwd()`` ->
``torch.ops.genkernels.som_soft_backward_triton`` (``torch.library.custom_op``s with fake
kernels; the forward op's autograd calls the backward op). The signatures are the C++
schemas of csrc/genkernels.cpp (``som_soft``, ``som_soft_backward``) with a ``_triton``
suffix; the oracles are soft_reference.soft_som_forward and soft_reference.soft_som_backward
(the explicit VJP of its docstring, which stays the specification of these kernels).

Forward: one program owns one input row with all its features in registers and walks the
nodes in (BLOCK_K, BLOCK_D) tiles: distances from the differences (no GEMM expansion: exact
near 0, where the Euclidean gradient is defined), the scores -beta d, a running max m and
sum Z of their exponentials (online softmax, as attention does with its scores), and the
running sum of exp(s - m) g_k over the tile's values. Memory: the inputs, (B, C) + 2 B
numbers out.

Backward: both kernels recompute the weights w_bk = exp(-beta d_bk - m_b) / Z_b of a
(BLOCK_B rows, BLOCK_K nodes) tile from the saved row statistics, with the distances again
from the differences, held as a (BLOCK_D, BLOCK_B, BLOCK_K) register tensor that serves the
distances and the gradients alike. Features come first so that Triton's default layout
spreads the (row, node) pairs over the threads and keeps a pair's features in one thread
(the sum over features mostly in registers); with features last it put 32 lanes along the
features, every lane repeating its pair's exp, division and square root, and took up to
242 registers where this takes 62-128 (static report, sm_80 / sm_90).

    gs_bk = w_bk (grad_b . g_k - grad_b . out_b),   -beta gs_bk dd_bk = c_bk (x_b - l_k)
    with c_bk = -2 beta gs_bk (squared distance) or -beta gs_bk / d_bk (Euclidean; 0 where
    d_bk = 0), so grad x_b = sum_k c_bk (x_b - l_k) and grad l_k = -sum_b c_bk (x_b - l_k):
    sums of the differences, never x_b sum_k c_bk - sum_k c_bk l_k, whose cancellation near
    a node (c_bk ~ 1 / d_bk) would cost the Euclidean gradient its digits.

* ``_som_soft_bwd_rows_kernel``: a program owns BLOCK_B rows of grad_x and walks every
  node tile (a sum over nodes);
* ``_som_soft_bwd_nodes_kernel``: a program owns BLOCK_K nodes' rows of grad_nodes and
  grad_values and their share of grad_beta, and walks the row tiles of one split of the
  rows (sums over rows, in row order). With few node blocks the rows are split (at most
  NODE_PROGRAMS programs, at least MIN_SPLIT_ROWS rows a split), each split writing its
  own partial sums, which the launcher adds in split order.

No program adds into another's output and no atomics are used: the result is the same on
every run. The grad_beta partials (one per node block and split) are summed in a fixed
order after the launch. The scores are computed twice (once per kernel), the price of
sums without a B x K buffer. Memory: the gradients, and splits x K x (D + C + 1) partials
when the rows are split.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of
from .soft_reference import as_input_grads, soft_setup_context

# Elements of one (BLOCK_K, BLOCK_D) node tile held in registers: 4096 fp32 over 128
# threads is 32 registers a thread.
TILE_ELEMENTS = 4096
# Elements of the backward's (BLOCK_D, BLOCK_B, BLOCK_K) differences (the fp32 figure;
# fp64 takes half), and at most BWD_TILE_PAIRS (row, node) pairs a tile: each pair costs an
# exp, a division and (Euclidean) a square root, about 4 pairs a thread at 128 threads.
# Static report (4 warps): 2048 elements / 512 pairs take 62-128 registers on sm_80 / sm_90
# (bench/results/static/som.md); twice the elements and pairs 96-241 on sm_90; no spills.
BWD_TILE_ELEMENTS = 2048
BWD_TILE_PAIRS = 512
# The node kernel's rows are split so that about this many programs run (a few waves on
# the 108-132 SMs of an A100 / H100) ...
NODE_PROGRAMS = 512
# ... but a split holds at least this many rows, so the partial sums stay small beside the
# work. Neither depends on the device: the same shapes sum in the same order everywhere.
MIN_SPLIT_ROWS = 256


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




# ------------------------------------------------------------------------- backward
@triton.jit
def _soft_tile_terms(x_t, l_t, grad_t, g_t, g_out, m, z, beta, row_mask, node_mask, SQUARED: tl.constexpr):
    """The backward's terms of one (BLOCK_B rows, BLOCK_K nodes) tile, features first:
    x_t (BLOCK_D, BLOCK_B), l_t (BLOCK_D, BLOCK_K), grad_t (BLOCK_C, BLOCK_B), g_t (BLOCK_C, BLOCK_K),
    g_out = grad . out, m, z (BLOCK_B,). Returns diff = x_b - l_k (BLOCK_D, BLOCK_B, BLOCK_K)
    and, per (b, k), the distance d, the weight w, gs = d loss / d s and c (module
    docstring); w, gs and c are 0 outside the masks."""
    diff = x_t[:, :, None] - l_t[:, None, :]
    d = tl.sum(diff * diff, 0)
    if not SQUARED:
        d = tl.sqrt(d)
    valid = row_mask[:, None] & node_mask[None, :]
    w = tl.where(valid, tl.exp(-beta * d - m[:, None]) / z[:, None], 0.0)
    gs = w * (tl.sum(grad_t[:, :, None] * g_t[:, None, :], 0) - g_out[:, None])
    if SQUARED:
        c = -2.0 * beta * gs
    else:
        # d = 0 (x_b = l_k): the Euclidean gradient is defined as 0 there
        positive = d > 0
        c = tl.where(positive, -beta * gs / tl.where(positive, d, 1.0), 0.0)
    return diff, d, w, gs, c


@triton.jit
def _soft_rows(GRAD, OUT, M, Z, X, rows, row_mask, feats, feat_mask, cols, col_mask,
               stride_grad_b, stride_grad_c, stride_out_b, stride_out_c, stride_xb, stride_xd, ACC: tl.constexpr):
    """Loads a tile of rows, features first: x_t (BLOCK_D, BLOCK_B), grad_t (BLOCK_C, BLOCK_B)
    in ACC, g_out = grad . out, m, z (BLOCK_B,); rows past the end read m = 0, z = 1
    (finite, and their weights are masked to 0)."""
    cr_mask = col_mask[:, None] & row_mask[None, :]
    x_t = tl.load(X + rows[None, :] * stride_xb + feats[:, None] * stride_xd,
                  mask=feat_mask[:, None] & row_mask[None, :], other=0.0).to(ACC)
    grad_t = tl.load(GRAD + rows[None, :] * stride_grad_b + cols[:, None] * stride_grad_c, mask=cr_mask,
                     other=0.0).to(ACC)
    out = tl.load(OUT + rows[None, :] * stride_out_b + cols[:, None] * stride_out_c, mask=cr_mask, other=0.0).to(ACC)
    m = tl.load(M + rows, mask=row_mask, other=0.0)
    z = tl.load(Z + rows, mask=row_mask, other=1.0)
    return x_t, grad_t, tl.sum(grad_t * out, 0), m, z


@triton.jit
def _som_soft_bwd_rows_kernel(
    GRAD_X,       # *grad_x (B, D) ACC contiguous
    GRAD,         # *grad (B, C) ACC, any strides (0 for an expanded gradient)
    OUT,          # *out (B, C) ACC, any strides: the forward's output
    M,            # *m (B,) ACC contiguous: the forward's row max of the scores
    Z,            # *Z (B,) ACC contiguous: the forward's row sum of exp(score - m)
    X,            # *x (B, D), any float dtype and strides
    L,            # *nodes (K, D), any float dtype and strides
    G,            # *values (K, C), any float dtype and strides
    BETA,         # *beta 0-d ACC
    B, K, D, C,
    stride_grad_b, stride_grad_c, stride_out_b, stride_out_c,
    stride_xb, stride_xd, stride_lk, stride_ld, stride_gk, stride_gc,
    SQUARED: tl.constexpr,   # squared distance, else Euclidean
    BLOCK_B: tl.constexpr,   # rows per program
    BLOCK_K: tl.constexpr,   # nodes per tile
    BLOCK_D: tl.constexpr,   # >= D: whole rows in registers
    BLOCK_C: tl.constexpr,   # >= C
    ACC: tl.constexpr,       # accumulation dtype
):
    """grad_x of BLOCK_B rows: sum over every node tile of c_bk (x_b - l_k)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    feats = tl.arange(0, BLOCK_D)
    feat_mask = feats < D
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    x_t, grad_t, g_out, m, z = _soft_rows(GRAD, OUT, M, Z, X, rows, row_mask, feats, feat_mask, cols, col_mask,
                                          stride_grad_b, stride_grad_c, stride_out_b, stride_out_c,
                                          stride_xb, stride_xd, ACC)
    beta = tl.load(BETA)
    lanes = tl.arange(0, BLOCK_K).to(tl.int64)
    acc = tl.zeros([BLOCK_D, BLOCK_B], ACC)
    for k0 in range(0, K, BLOCK_K):
        nodes = k0 + lanes
        node_mask = nodes < K
        l_t = tl.load(L + nodes[None, :] * stride_lk + feats[:, None] * stride_ld,
                      mask=feat_mask[:, None] & node_mask[None, :], other=0.0).to(ACC)
        g_t = tl.load(G + nodes[None, :] * stride_gk + cols[:, None] * stride_gc,
                      mask=col_mask[:, None] & node_mask[None, :], other=0.0).to(ACC)
        diff, d, w, gs, c = _soft_tile_terms(x_t, l_t, grad_t, g_t, g_out, m, z, beta, row_mask, node_mask, SQUARED)
        acc += tl.sum(c[None, :, :] * diff, 2)
    tl.store(GRAD_X + rows[None, :] * D + feats[:, None], acc, mask=feat_mask[:, None] & row_mask[None, :])


@triton.jit
def _som_soft_bwd_nodes_kernel(
    GRAD_L,       # *grad_nodes (S, K, D) ACC contiguous: split s's partial sums
    GRAD_G,       # *grad_values (S, K, C) ACC contiguous: split s's partial sums
    GRAD_BETA,    # *(S, cdiv(K, BLOCK_K)) ACC: grad_beta's partial of each split and node block
    GRAD,         # *grad (B, C) ACC, any strides
    OUT,          # *out (B, C) ACC, any strides
    M,            # *m (B,) ACC contiguous
    Z,            # *Z (B,) ACC contiguous
    X,            # *x (B, D), any float dtype and strides
    L,            # *nodes (K, D), any float dtype and strides
    G,            # *values (K, C), any float dtype and strides
    BETA,         # *beta 0-d ACC
    B, K, D, C,
    SPLIT_ROWS,   # rows per split (a multiple of BLOCK_B); program_id(1) is the split
    stride_grad_b, stride_grad_c, stride_out_b, stride_out_c,
    stride_xb, stride_xd, stride_lk, stride_ld, stride_gk, stride_gc,
    SQUARED: tl.constexpr,
    BLOCK_B: tl.constexpr,   # rows per tile
    BLOCK_K: tl.constexpr,   # nodes per program
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """BLOCK_K nodes' grad_nodes (-sum_b c_bk (x_b - l_k)), grad_values (sum_b w_bk grad_b)
    and grad_beta share (-sum_bk gs_bk d_bk) over the rows of split program_id(1), row tile
    after row tile."""
    block = tl.program_id(0)
    split = tl.program_id(1).to(tl.int64)
    nodes = block.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    node_mask = nodes < K
    feats = tl.arange(0, BLOCK_D)
    feat_mask = feats < D
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    dn_mask = feat_mask[:, None] & node_mask[None, :]
    cn_mask = col_mask[:, None] & node_mask[None, :]
    l_t = tl.load(L + nodes[None, :] * stride_lk + feats[:, None] * stride_ld, mask=dn_mask, other=0.0).to(ACC)
    g_t = tl.load(G + nodes[None, :] * stride_gk + cols[:, None] * stride_gc, mask=cn_mask, other=0.0).to(ACC)
    beta = tl.load(BETA)
    lanes = tl.arange(0, BLOCK_B).to(tl.int64)
    acc_l = tl.zeros([BLOCK_D, BLOCK_K], ACC)
    acc_g = tl.zeros([BLOCK_C, BLOCK_K], ACC)
    acc_beta = tl.zeros([BLOCK_K], ACC)
    first = split * SPLIT_ROWS
    last = tl.minimum(first + SPLIT_ROWS, B)
    for b0 in range(first, last, BLOCK_B):
        rows = b0 + lanes
        row_mask = rows < last
        x_t, grad_t, g_out, m, z = _soft_rows(GRAD, OUT, M, Z, X, rows, row_mask, feats, feat_mask, cols,
                                              col_mask, stride_grad_b, stride_grad_c, stride_out_b, stride_out_c,
                                              stride_xb, stride_xd, ACC)
        diff, d, w, gs, c = _soft_tile_terms(x_t, l_t, grad_t, g_t, g_out, m, z, beta, row_mask, node_mask, SQUARED)
        acc_l -= tl.sum(c[None, :, :] * diff, 1)
        acc_g += tl.sum(w[None, :, :] * grad_t[:, :, None], 1)
        acc_beta += tl.sum(gs * d, 0)
    base = split * K
    tl.store(GRAD_L + (base + nodes[None, :]) * D + feats[:, None], acc_l, mask=dn_mask)
    tl.store(GRAD_G + (base + nodes[None, :]) * C + cols[:, None], acc_g, mask=cn_mask)
    tl.store(GRAD_BETA + split * tl.num_programs(0) + block, -tl.sum(acc_beta, 0))


def _bwd_config(d: int, c: int, acc: torch.dtype) -> dict:
    """Fixed meta-parameters of both backward kernels (also compiled by genkernels/_static.py):
    whole rows (BLOCK_D >= D) and a (BLOCK_B, BLOCK_K) tile of at most BWD_TILE_PAIRS pairs
    sharing what remains of the element budget, nodes taking the larger half."""
    block_d = triton.next_power_of_2(max(d, 1))
    budget = BWD_TILE_ELEMENTS // (2 if acc == torch.float64 else 1)
    pairs = max(4, min(BWD_TILE_PAIRS, budget // block_d))         # BLOCK_B * BLOCK_K
    block_b = max(2, 1 << ((pairs.bit_length() - 1) // 2))
    block_k = max(2, pairs // block_b)
    return {"BLOCK_B": block_b, "BLOCK_K": block_k, "BLOCK_D": block_d,
            "BLOCK_C": max(2, triton.next_power_of_2(max(c, 1))), "num_warps": 4 if block_d <= 256 else 8}


def _row_splits(rows: int, node_blocks: int, block_b: int, min_split_rows: int) -> tuple[int, int]:
    """(splits, rows per split) of the node kernel: about NODE_PROGRAMS programs, at least
    min_split_rows rows a split, a multiple of block_b rows each."""
    splits = max(1, min(triton.cdiv(rows, min_split_rows), triton.cdiv(NODE_PROGRAMS, node_blocks)))
    split_rows = triton.cdiv(triton.cdiv(max(rows, 1), splits), block_b) * block_b
    return triton.cdiv(max(rows, 1), split_rows), split_rows


def som_soft_bwd(grad: torch.Tensor, x: torch.Tensor, nodes: torch.Tensor, values: torch.Tensor,
                 beta: torch.Tensor, out: torch.Tensor, m: torch.Tensor, z: torch.Tensor, squared: bool,
                 min_split_rows: int = MIN_SPLIT_ROWS
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VJP of som_soft_fwd: grad (B, C) and the forward's inputs and outputs ->
    (grad_x (B, D), grad_nodes (K, D), grad_values (K, C), grad_beta 0-d) in the
    accumulation dtype; see soft_reference.soft_som_backward. ``min_split_rows``: the
    fewest rows a split of the node kernel holds (tests lower it to split tiny inputs)."""
    rows, d = x.shape
    k_nodes, c = values.shape
    acc = acc_dtype(x.dtype)
    grad_x = torch.empty((rows, d), dtype=acc, device=x.device)
    cfg = _bwd_config(d, c, acc)
    node_blocks = triton.cdiv(k_nodes, cfg["BLOCK_K"])
    if node_blocks == 0:
        return (grad_x.zero_(), torch.zeros((0, d), dtype=acc, device=x.device),
                torch.zeros((0, c), dtype=acc, device=x.device), torch.zeros((), dtype=acc, device=x.device))
    splits, split_rows = _row_splits(rows, node_blocks, cfg["BLOCK_B"], min_split_rows)
    grad_nodes = torch.empty((splits, k_nodes, d), dtype=acc, device=x.device)
    grad_values = torch.empty((splits, k_nodes, c), dtype=acc, device=x.device)
    grad_beta = torch.empty((splits, node_blocks), dtype=acc, device=x.device)
    grad = grad.to(acc)
    beta = beta.to(device=x.device, dtype=acc).reshape(())
    m, z = m.contiguous(), z.contiguous()
    strides = (grad.stride(0), grad.stride(1), out.stride(0), out.stride(1), x.stride(0), x.stride(1),
               nodes.stride(0), nodes.stride(1), values.stride(0), values.stride(1))
    meta = dict(SQUARED=bool(squared), ACC=TL_ACC[acc], **cfg)
    with device_of(x):
        if rows:
            _som_soft_bwd_rows_kernel[(triton.cdiv(rows, cfg["BLOCK_B"]),)](
                grad_x, grad, out, m, z, x, nodes, values, beta, rows, k_nodes, d, c, *strides, **meta)
        _som_soft_bwd_nodes_kernel[(node_blocks, splits)](
            grad_nodes, grad_values, grad_beta, grad, out, m, z, x, nodes, values, beta,
            rows, k_nodes, d, c, split_rows, *strides, **meta)
    # the splits' partial sums in split order, grad_beta's partials in (split, block) order:
    # a fixed order, no atomics
    if splits > 1:
        grad_nodes, grad_values = grad_nodes.sum(0), grad_values.sum(0)
    else:
        grad_nodes, grad_values = grad_nodes[0], grad_values[0]
    return grad_x, grad_nodes, grad_values, grad_beta.sum()


@torch.library.custom_op("genkernels::som_soft_backward_triton", mutates_args=())
def som_soft_backward_triton(grad: torch.Tensor, x: torch.Tensor, nodes: torch.Tensor, values: torch.Tensor,
                             beta: torch.Tensor, out: torch.Tensor, m: torch.Tensor, z: torch.Tensor,
                             squared: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return som_soft_bwd(grad, x, nodes, values, beta, out, m, z, squared)


@som_soft_backward_triton.register_fake
def _som_soft_backward_triton_fake(grad, x, nodes, values, beta, out, m, z, squared):
    acc = acc_dtype(x.dtype)
    return (x.new_empty(x.shape, dtype=acc), x.new_empty(nodes.shape, dtype=acc),
            x.new_empty(values.shape, dtype=acc), x.new_empty((), dtype=acc))


def _som_soft_triton_backward(ctx, grad, _grad_m, _grad_z):
    """Autograd of som_soft_triton: the backward op on the saved inputs, output and row
    statistics (soft_reference.soft_setup_context); the row statistics get no gradient."""
    x, nodes, values, beta, out, m, z = ctx.saved_tensors
    grads = torch.ops.genkernels.som_soft_backward_triton(grad, x, nodes, values, beta, out, m, z, ctx.squared)
    return as_input_grads(ctx, grads)


som_soft_triton.register_autograd(_som_soft_triton_backward, setup_context=soft_setup_context)


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

    def soft_bwd(kernel: str, dtype: str, d: int, c: int, squared: bool) -> TritonKernel:
        acc = "fp64" if dtype == "fp64" else "fp32"
        cfg = _bwd_config(d, c, torch.float64 if acc == "fp64" else torch.float32)
        sig = {"GRAD_X": ptr(acc)} if kernel == "rows" else \
            {"GRAD_L": ptr(acc), "GRAD_G": ptr(acc), "GRAD_BETA": ptr(acc)}
        sig |= {"GRAD": ptr(acc), "OUT": ptr(acc), "M": ptr(acc), "Z": ptr(acc), "X": ptr(dtype),
                "L": ptr(dtype), "G": ptr(dtype), "BETA": ptr(acc), "B": "i32", "K": "i32", "D": "i32", "C": "i32"}
        if kernel == "nodes":
            sig["SPLIT_ROWS"] = "i32"
        sig |= {name: "i32" for name in ("stride_grad_b", "stride_grad_c", "stride_out_b", "stride_out_c", "stride_xb",
                                         "stride_xd", "stride_lk", "stride_ld", "stride_gk", "stride_gc")}
        meta = {"SQUARED": squared, "BLOCK_B": cfg["BLOCK_B"], "BLOCK_K": cfg["BLOCK_K"],
                "BLOCK_D": cfg["BLOCK_D"], "BLOCK_C": cfg["BLOCK_C"],
                "ACC": {"fp32": tl.float32, "fp64": tl.float64}[acc]}
        fn = _som_soft_bwd_rows_kernel if kernel == "rows" else _som_soft_bwd_nodes_kernel
        name = f"{fn.__name__}[{dtype},D={d},C={c},{'squared' if squared else 'euclidean'}]"
        return TritonKernel("som", name, lambda: fn, sig, meta, cfg["num_warps"], 2)

    # the spiral layer (D=2 inputs, 2 grid coordinates), a hidden-layer width, fp64; the
    # backward also with bf16 inputs (loads upcast to fp32)
    shapes = [("fp32", 2, 2, False), ("fp32", 32, 2, False), ("fp32", 64, 2, True), ("fp64", 32, 2, False)]
    return ([soft(*shape) for shape in shapes]
            + [soft_bwd(kernel, *shape) for kernel in ("rows", "nodes")
               for shape in shapes + [("bf16", 32, 2, False)]])
