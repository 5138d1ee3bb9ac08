"""Triton kernels of the SOM ops, their launchers and the ``genkernels::*_triton`` ops.

Three layers per op (STYLE.md): ``_som_<op>_kernel`` (the @triton.jit kernel) ->
``som_<op>_fwd()`` (the launcher: output allocation, grid, fixed meta-parameters) ->
``torch.ops.genkernels.som_<op>_triton`` (a ``torch.library.custom_op`` with a fake
kernel), which ``genkernels.som.ops`` calls for ``backend="triton"``. The signatures are
the C++ schemas of csrc/genkernels.cpp with a ``_triton`` suffix; the oracle is
genkernels/som/reference.py.

Kernels take string choices as int constexprs, numbered as the enums of
csrc/common/som.h: metric euclidean 0, cosine 1, manhattan 2, chebyshev 3;
neighborhood gaussian 0, bubble 1, mexican_hat 2, triangle 3; rule som 0, wta 1, wtm 2.

Numerics
--------
* Accumulation in fp32 (fp64 for fp64 input); fp16/bf16 are upcast on load.
* Euclidean BMU search (fp32/fp16/bf16) ranks nodes by the expansion |w|^2 - 2 x.w on
  ``tl.dot`` tiles (``input_precision="ieee"``), keeps SLOTS = next power of two
  >= k + CERTIFY_MARGIN candidates per row (at most TOPK_SLOTS_MAX), then recomputes
  their exact sum((x - w)^2) from the definition and re-sorts them. fp64 input and
  manhattan/chebyshev use broadcast tiles computed from the definition (no expansion).
* Certified search. Every key of the expansion is within a rigorous rounding-error
  bound E of its exact value (_certify_constant: euclidean E = C (|x|^2 + max_j
  |w_j|^2), cosine E = C). A row is certified when its last kept candidate's key
  exceeds its k-th by more than 2 E: every node left out is then truly farther than
  each of the k best kept, so the exact re-rank returns the exact top-k. Rows not
  certified (near-ties, or data with |x|^2 far above the gaps between nodes) are
  searched again: from the definition after an fp32 search, with the certified fp32
  search after a tf32/bf16 one. The indices therefore equal the exact fp32 search's by
  construction (up to ties between exact distances, which break to the lowest index as
  the exact distances are computed here).
* Tensor-core search (``precision="tf32"`` or ``"bf16"``; euclidean and cosine, fp32
  input, no ignore_nan): the ranking products run as ``tl.dot(input_precision="tf32")``
  or on x/w tiles cast to bf16 (fp32 accumulate), and the bound takes each operand's
  conversion error u (tf32 2^-10, bf16 2^-8; the interpreter emulates both by
  truncation, bf16 then 2^-7). The returned distances are exact.
* Blocked search (``search="blocked"``, euclidean, fp32 input): the products of a
  block of rows with every node come from cuBLAS (fp32; the bound follows torch's
  matmul setting, TF32 included) or _som_products_kernel (tf32/bf16, the kernel's own
  precision), the block kept small enough to stay in L2; one selection pass per block
  adds the norms, keeps the candidates, certifies and re-ranks exactly.
* Ties break to the lowest node index everywhere: candidates are ordered by the pair
  (distance, index).
* A NaN distance (a sample with NaN features and ``ignore_nan=False``) ranks as +inf
  and comes back as +inf from the in-register top-k path; the indices match the
  reference (lowest first). ``genkernels.ops.som_bmu`` turns those distances back into
  NaN, so every backend follows one documented rule (see its docstring).
* ``som_node_sums_triton`` accumulates with ``tl.atomic_add``: on a GPU the float sums
  depend on the order in which programs finish (non-deterministic in the last bits);
  under the interpreter programs run in order.

Top-k: up to ``TOPK_SLOTS_MAX`` candidates are kept in registers per row (a sorted
(BLOCK_N, SLOTS) list merged with every distance tile by SLOTS selection passes, skipped
when a tile cannot improve any row of the block). For ``k > TOPK_SLOTS_MAX`` the launcher
computes exact distances for bounded row tiles (``_som_distances_kernel``, at most
``_TILE_ELEMENTS`` distances at a time) and selects with a stable ``torch.sort``.

Under ``TRITON_INTERPRET=1`` (CPU tensors, the CI tests) every kernel runs with the same
fixed configurations; nothing here autotunes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import check_choice
from ..triton_common import TL_ACC, device_of, next_pow2
from .reference import METRICS, NEIGHBORHOODS, PRECISIONS, RULES, SEARCHES, acc_dtype

METRIC_IDS = {name: i for i, name in enumerate(METRICS)}
NEIGHBORHOOD_IDS = {name: i for i, name in enumerate(NEIGHBORHOODS)}
RULE_IDS = {name: i for i, name in enumerate(RULES)}

# Candidates one row keeps in registers; k beyond it takes the tiled sort path. 8, not
# 16: a 16-slot list needs 255 registers and spills on sm_90 (ptxas, 64x64 tiles), and
# its compile ran past 100 s on an H100 machine; k <= 8 covers BMU searches in practice.
TOPK_SLOTS_MAX = 8
# Sentinel node index of an empty candidate slot (int32: node indices are < 2^31).
_NO_NODE = 2**31 - 1
# Distances materialised at once by the k > TOPK_SLOTS_MAX path.
_TILE_ELEMENTS = 1 << 22
# Candidates beyond k that a certified search keeps for its exact re-rank: the more
# candidates, the further the last kept one lies from the k-th and the more rows the
# error bound certifies (see _uncertain_rows). fp32 dot products keep k + 3 (k = 1: 4),
# tf32/bf16 k + 7 (8, at most TOPK_SLOTS_MAX), their bound being 2^14 - 2^16 times wider.
# Rows left uncertified, measured on 20,000 rows (1 - 4 slots, then 8): uniform data of
# 256 features against 4,096 of its rows, fp32 0%, tf32 2.8%, bf16 89%; MNIST (784
# features, 1,024 nodes) fp32 0%, tf32 0.01%, bf16 3%. A power-of-two list of SLOTS
# costs SLOTS selection passes per tile (bench/results/static/som.md has the registers).
CERTIFY_MARGIN = 3
LOW_PRECISION_MARGIN = 7
# Kernel ids of the BMU search precisions (genkernels.som.reference.PRECISIONS), and
# the ids of bf16 and tf32 under the interpreter (CPU tensors), which emulate the
# rounding of the operands (truncation) with products in fp32.
PRECISION_IDS = {name: i for i, name in enumerate(PRECISIONS)}
_BF16_INTERPRETED = len(PRECISIONS)
_TF32_INTERPRETED = len(PRECISIONS) + 1
# BMU search kernels: "fused" streams the codebook through registers per row block
# (_som_bmu_kernel); "blocked" (euclidean, fp32 input) computes the products of a block
# of rows with every node first -- cuBLAS for fp32, _som_products_kernel on tensor
# cores for tf32/bf16 -- and selects from them (_som_bmu_products_kernel). "auto" is
# "fused" on every device until a committed GPU run shows "blocked" faster
# (bench/gpu_targets.py times both; `bash scripts/gpu_check.sh som`).
BMU_SEARCH_AUTO = "fused"
# Products one row block of the blocked search holds: 32 MiB of fp32 stays in the L2
# of an H100 (50 MB) between the product and the selection kernels.
BLOCKED_PRODUCT_BYTES = 32 << 20

# Fixed launch configurations (the GPU static report in genkernels/_static.py compiles
# exactly these; bench/results/static/som.md has their registers and spills). The dot
# path tiles (rows, nodes, features) for tl.dot (every block dimension >= 16) and needs
# 8 warps: with 4, the 64 x 64 distance tile plus the top-k merge spill 150-1200 bytes
# of stack per thread. The broadcast path holds a (rows, nodes, features) product in
# registers, so it takes a thin feature chunk.
BMU_DOT_CONFIG = dict(BLOCK_N=64, BLOCK_K=64, BLOCK_D=32, num_warps=8, num_stages=2)
BMU_BROADCAST_CONFIG = dict(BLOCK_N=32, BLOCK_K=32, BLOCK_D=8, num_warps=4, num_stages=2)
DISTANCES_CONFIG = dict(BLOCK_N=32, BLOCK_K=32, BLOCK_D=8, num_warps=4, num_stages=2)
# Blocked search: the selection pass reads the (rows, K) products of a block in tiles
# of 16 rows by 64 nodes (2,048 rows of 4,096 nodes make 128 programs, one wave on an
# H100; 128-node tiles with 8 candidates spill 464 bytes on sm_90, 64-node tiles use
# 122 registers and no stack); the tensor-core products use the classic 128 x 128 tile.
BLOCKED_SELECT_CONFIG = dict(BLOCK_N=16, BLOCK_K=64, BLOCK_D=32, num_warps=4, num_stages=2)
PRODUCTS_CONFIG = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_D=32, num_warps=8, num_stages=3)
# One program per map: the update pass must see every store of the previous step, so no
# software pipelining across the barrier (num_stages=1).
ONLINE_CONFIG = dict(BLOCK_K=64, BLOCK_D=32, num_warps=4, num_stages=1)



# ------------------------------------------------------------------- shared helpers
@triton.jit
def _distance_tile(
    X,            # *x (N, D): samples, any float dtype, any strides
    W,            # *weights (K, D): codebook, same dtype, any strides
    rows,         # (BLOCK_N,) int64: row index of x of each tile row
    nodes,        # (BLOCK_K,) int64: node index of each tile column
    row_mask,     # (BLOCK_N,) bool: rows < N
    node_mask,    # (BLOCK_K,) bool: nodes < K
    D,            # features
    stride_xn, stride_xd,  # strides of x (elements)
    stride_wk, stride_wd,  # strides of weights (elements)
    METRIC: tl.constexpr,      # 0 euclidean, 1 cosine, 2 manhattan, 3 chebyshev
    IGNORE_NAN: tl.constexpr,  # skip NaN features of x and rescale (reference.paired_distances)
    EXACT: tl.constexpr,       # True: from the definition on broadcast tiles; False: tl.dot
    PRECISION: tl.constexpr,   # x.w of the tl.dot path: 0 fp32 ("ieee"), 1 tf32, 2 bf16,
                               #  3 bf16 / 4 tf32 emulated in fp32 (the interpreter)
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,         # accumulation dtype: tl.float32 or tl.float64
):
    """(BLOCK_N, BLOCK_K) ranking keys of one tile, looping over features by BLOCK_D.

    EXACT: the true distance, except euclidean gives its square (rescaled with
    IGNORE_NAN). Not EXACT (euclidean, cosine only): euclidean gives
    |w|^2 - 2 x.w (restricted to present features), which orders the nodes of a row as
    the true distance does but is not a distance; cosine gives the cosine distance.
    PRECISION 1/2 (not EXACT, not IGNORE_NAN) computes x.w on tensor cores from tf32 /
    bf16 operands (fp32 accumulate); |w|^2 and |x|^2 stay fp32.
    A row with no present feature (IGNORE_NAN) is +inf."""
    dot = tl.zeros((BLOCK_N, BLOCK_K), ACC)    # x.w, or the metric's running sum / max
    if IGNORE_NAN or EXACT:
        w_sq = tl.zeros((BLOCK_N, BLOCK_K), ACC)   # |w|^2 over the row's present features
    else:
        w_sq = tl.zeros((1, BLOCK_K), ACC)         # |w|^2: one per node, no tile
    x_sq = tl.zeros((BLOCK_N,), ACC)           # |x|^2 (cosine)
    n_present = tl.zeros((BLOCK_N,), ACC)      # present features per row (IGNORE_NAN)
    for d0 in range(0, D, BLOCK_D):
        feats = d0 + tl.arange(0, BLOCK_D)
        feat_mask = feats < D
        xv = tl.load(X + rows[:, None] * stride_xn + feats[None, :] * stride_xd,
                     mask=row_mask[:, None] & feat_mask[None, :], other=0.0).to(ACC)
        wv = tl.load(W + nodes[:, None] * stride_wk + feats[None, :] * stride_wd,
                     mask=node_mask[:, None] & feat_mask[None, :], other=0.0).to(ACC)
        if IGNORE_NAN:
            present = (xv == xv) & feat_mask[None, :]
            xv = tl.where(present, xv, 0.0)
            n_present += tl.sum(present.to(ACC), 1)
        if EXACT:
            xb = xv[:, None, :]
            wb = wv[None, :, :]
            if IGNORE_NAN:
                wb = tl.where(present[:, None, :], wb, 0.0)
            diff = xb - wb
            if METRIC == 0:
                dot += tl.sum(diff * diff, 2)
            elif METRIC == 1:
                dot += tl.sum(xb * wb, 2)
                w_sq += tl.sum(wb * wb, 2)
                x_sq += tl.sum(xv * xv, 1)
            elif METRIC == 2:
                dot += tl.sum(tl.abs(diff), 2)
            else:
                dot = tl.maximum(dot, tl.max(tl.abs(diff), 2))
        else:
            dot += _dot_precision(xv, wv, PRECISION, ACC)
            if IGNORE_NAN:
                # sum over the row's present features of w^2: one more product
                w_sq += tl.dot(present.to(ACC), tl.trans(wv * wv), input_precision="ieee")
            else:
                w_sq += tl.sum(wv * wv, 1)[None, :]
            if METRIC == 1:
                x_sq += tl.sum(xv * xv, 1)
    if METRIC == 0:
        if EXACT:
            key = dot
        else:
            key = w_sq - 2.0 * dot
    elif METRIC == 1:
        key = 1.0 - _div_rn(dot, _sqrt_rn(x_sq)[:, None] * _sqrt_rn(w_sq) + 1e-8)  # reference.COSINE_EPS
    else:
        key = dot
    if IGNORE_NAN:
        if EXACT and (METRIC == 0 or METRIC == 2):
            key = key * (D / tl.maximum(n_present, 1.0))[:, None]
        key = tl.where(n_present[:, None] > 0, key, float("inf"))
    return key


@triton.jit
def _dot_precision(xv, wv, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """xv (M, BLOCK_D) . wv (N, BLOCK_D)^T -> (M, N) in ACC; BLOCK_D >= 16.
    PRECISION 0: fp32 ("ieee"); 1: tf32 tensor cores; 2: operands rounded to bf16
    (HMMA/HGMMA.BF16), fp32 accumulate; 3 / 4: bf16 / tf32 under the interpreter."""
    if PRECISION == 2:
        return tl.dot(xv.to(tl.bfloat16), tl.trans(wv.to(tl.bfloat16)), out_dtype=tl.float32)
    elif PRECISION == 3:
        # the interpreter's tl.dot multiplies the bit patterns of bf16 operands as
        # integers (triton 3.9): the same bf16-rounded operands (the interpreter's cast
        # truncates), their products exact in fp32, accumulated in fp32
        return tl.dot(xv.to(tl.bfloat16).to(ACC), tl.trans(wv.to(tl.bfloat16).to(ACC)),
                      input_precision="ieee")
    elif PRECISION == 4:
        # the interpreter's tl.dot does not round to tf32: operands truncated to tf32's
        # 10 stored mantissa bits (the worst case of the tensor cores' conversion)
        return tl.dot(_tf32_truncate(xv), tl.trans(_tf32_truncate(wv)), input_precision="ieee")
    elif PRECISION == 1:
        return tl.dot(xv, tl.trans(wv), input_precision="tf32")
    else:
        return tl.dot(xv, tl.trans(wv), input_precision="ieee")


@triton.jit
def _tf32_truncate(v):
    """fp32 v with the 13 low mantissa bits cleared: tf32's 10 stored bits, rounded
    toward zero (relative error < 2^-10; inf and the canonical NaN keep their class)."""
    return (v.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _sqrt_rn(x):
    """Square root rounded to nearest, as the reference computes it (``tl.sqrt`` of fp32
    is the approximate instruction on NVIDIA GPUs; fp64 ``tl.sqrt`` is already exact)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _div_rn(a, b):
    """a / b rounded to nearest (the reference's division), fp32 or fp64."""
    if a.dtype == tl.float32:
        return tl.div_rn(a, b.to(tl.float32))
    else:
        return a / b


@triton.jit
def _merge_topk(best_v, best_i, tile_v, tile_i, SLOTS: tl.constexpr):
    """The SLOTS smallest (value, index) pairs of a sorted candidate list
    best_v/best_i (BLOCK_N, SLOTS) and a tile tile_v/tile_i (BLOCK_N, BLOCK_K), row by
    row, ascending by value then index. Empty entries are (+inf, _NO_NODE)."""
    slot = tl.arange(0, SLOTS)[None, :]
    new_v = best_v
    new_i = best_i
    for j in tl.static_range(SLOTS):
        tv = tl.min(tile_v, 1)
        ti = tl.min(tl.where(tile_v == tv[:, None], tile_i, 2147483647), 1)
        lv = tl.min(best_v, 1)
        li = tl.min(tl.where(best_v == lv[:, None], best_i, 2147483647), 1)
        take_tile = (tv < lv) | ((tv == lv) & (ti < li))
        v = tl.where(take_tile, tv, lv)
        i = tl.where(take_tile, ti, li)
        new_v = tl.where(slot == j, v[:, None], new_v)
        new_i = tl.where(slot == j, i[:, None], new_i)
        # consume the chosen entry
        hit = take_tile[:, None] & (tile_i == ti[:, None])
        tile_v = tl.where(hit, float("inf"), tile_v)
        tile_i = tl.where(hit, 2147483647, tile_i)
        hit = (~take_tile)[:, None] & (best_i == li[:, None])
        best_v = tl.where(hit, float("inf"), best_v)
        best_i = tl.where(hit, 2147483647, best_i)
    return new_v, new_i


@triton.jit
def _fold_tile(best_v, best_i, key, nodes, node_mask, SLOTS: tl.constexpr):
    """Fold one (BLOCK_N, BLOCK_K) tile of ranking keys of the given nodes into the
    sorted per-row candidate lists; padding nodes never win, NaN ranks as +inf."""
    key = tl.where(node_mask[None, :] & (key == key), key, float("inf"))
    tile_i = tl.broadcast_to(tl.where(node_mask, nodes, 2147483647).to(tl.int32)[None, :],
                             key.shape)
    # merge only when some row of the block gains a candidate (rows whose list is
    # full and whose worst candidate beats the whole tile are left alone)
    worst_v = tl.max(best_v, 1)
    worst_empty = tl.max(best_i, 1) == 2147483647
    gains = (tl.min(key, 1) < worst_v) | worst_empty
    if tl.sum(gains.to(tl.int32), 0) > 0:
        best_v, best_i = _merge_topk(best_v, best_i, key, tile_i, SLOTS)
    return best_v, best_i


@triton.jit
def _bmu_block(
    X, W,         # *x (N, D), *weights (K, D)
    N, K, D,      # samples, nodes, features
    stride_xn, stride_xd, stride_wk, stride_wd,
    METRIC: tl.constexpr, IGNORE_NAN: tl.constexpr,
    EXACT: tl.constexpr,    # rank from the definition (True) or by tl.dot (False)
    PRECISION: tl.constexpr,  # x.w of the tl.dot ranking (see _distance_tile)
    SLOTS: tl.constexpr,    # candidates kept per row (power of two >= k)
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    """The program's BLOCK_N rows against every node: the SLOTS best ranking keys
    (BLOCK_N, SLOTS), ascending, their int32 node indices, and the rows."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    best_v = tl.full((BLOCK_N, SLOTS), float("inf"), ACC)
    best_i = tl.full((BLOCK_N, SLOTS), 2147483647, tl.int32)
    for k0 in range(0, K, BLOCK_K):
        nodes = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        node_mask = nodes < K
        key = _distance_tile(X, W, rows, nodes, row_mask, node_mask, D,
                             stride_xn, stride_xd, stride_wk, stride_wd,
                             METRIC, IGNORE_NAN, EXACT, PRECISION, BLOCK_N, BLOCK_K, BLOCK_D,
                             ACC)
        best_v, best_i = _fold_tile(best_v, best_i, key, nodes, node_mask, SLOTS)
    return best_v, best_i, rows, row_mask


@triton.jit
def _uncertain_rows(
    X, rows, row_mask, D, stride_xn, stride_xd,
    best_v, best_i,   # (BLOCK_N, SLOTS) ascending ranking keys and their nodes
    k,                # neighbours wanted, 1 <= k <= SLOTS
    C_BOUND,          # fp32: the key error bound per unit (launcher: _certify_constant)
    WSQ_MAX,          # *fp32 (1,): max_j |w_j|^2 (euclidean)
    METRIC: tl.constexpr, SLOTS: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """(BLOCK_N,) bool: rows whose exact top-k is NOT proven to lie among the kept
    candidates. Every key is within E of its exact value (euclidean E = C_BOUND
    (|x|^2 + max_j |w_j|^2), cosine E = C_BOUND). A node left out has a key >= the last
    kept one; when that exceeds the k-th kept key by more than 2 E, the node is truly
    farther than each of the k best kept, so the exact re-rank of the kept candidates
    is the exact top-k. A row whose list holds every node is certain."""
    if METRIC == 0:
        x_sq = tl.zeros((BLOCK_N,), ACC)
        for d0 in range(0, D, BLOCK_D):
            feats = d0 + tl.arange(0, BLOCK_D)
            xv = tl.load(X + rows[:, None] * stride_xn + feats[None, :] * stride_xd,
                         mask=row_mask[:, None] & (feats < D)[None, :], other=0.0).to(ACC)
            xv = tl.where(xv == xv, xv, 0.0)    # IGNORE_NAN: the present features' norm
            x_sq += tl.sum(xv * xv, 1)
        bound = C_BOUND * (x_sq + tl.load(WSQ_MAX))
    else:
        bound = tl.full((BLOCK_N,), C_BOUND, ACC)
    slot = tl.arange(0, SLOTS)[None, :]
    kth = tl.max(tl.where(slot == k - 1, best_v, float("-inf")), 1)
    last_v = tl.max(tl.where(slot == SLOTS - 1, best_v, float("-inf")), 1)
    last_i = tl.max(tl.where(slot == SLOTS - 1, best_i, -1), 1)
    return row_mask & (last_i != 2147483647) & ~(last_v > kth + 2.0 * bound)


@triton.jit
def _bmu_finish(
    X, W, best_v, best_i, rows, row_mask, K, D,
    stride_xn, stride_xd, stride_wk, stride_wd,
    METRIC: tl.constexpr, IGNORE_NAN: tl.constexpr,
    RECHECK: tl.constexpr,  # recompute exact distances (euclidean, cosine) of the candidates
    SLOTS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """Candidates ranked by key -> (values, nodes) ranked by the true distance: with
    RECHECK each candidate's distance is recomputed from the definition and the list
    re-sorted by (distance, index); euclidean squares are rooted."""
    if RECHECK:
        slot = tl.arange(0, SLOTS)[None, :]
        exact = tl.full((BLOCK_N, SLOTS), float("inf"), ACC)
        for j in tl.static_range(SLOTS):
            node = tl.sum(tl.where(slot == j, best_i, 0), 1)   # (BLOCK_N,) int32
            valid = row_mask & (node < K)
            node_off = node.to(tl.int64) * stride_wk
            sq = tl.zeros((BLOCK_N,), ACC)       # euclidean: sum (x - w)^2; cosine: x.w
            x_sq = tl.zeros((BLOCK_N,), ACC)     # cosine: |x|^2
            w_sq = tl.zeros((BLOCK_N,), ACC)     # cosine: |w|^2
            n_present = tl.zeros((BLOCK_N,), ACC)
            for d0 in range(0, D, BLOCK_D):
                feats = d0 + tl.arange(0, BLOCK_D)
                mask = valid[:, None] & (feats < D)[None, :]
                xv = tl.load(X + rows[:, None] * stride_xn + feats[None, :] * stride_xd,
                             mask=mask, other=0.0).to(ACC)
                wv = tl.load(W + node_off[:, None] + feats[None, :] * stride_wd,
                             mask=mask, other=0.0).to(ACC)
                if METRIC == 1:
                    sq += tl.sum(xv * wv, 1)
                    x_sq += tl.sum(xv * xv, 1)
                    w_sq += tl.sum(wv * wv, 1)
                else:
                    diff = xv - wv
                    if IGNORE_NAN:
                        present = (xv == xv) & mask
                        diff = tl.where(present, diff, 0.0)
                        n_present += tl.sum(present.to(ACC), 1)
                    sq += tl.sum(diff * diff, 1)
            if METRIC == 1:
                sq = 1.0 - _div_rn(sq, _sqrt_rn(x_sq) * _sqrt_rn(w_sq) + 1e-8)  # reference.COSINE_EPS
            if IGNORE_NAN:
                sq = sq * (D / tl.maximum(n_present, 1.0))
                sq = tl.where(n_present > 0, sq, float("inf"))
            sq = tl.where(valid & (sq == sq), sq, float("inf"))
            exact = tl.where(slot == j, sq[:, None], exact)
        empty_v = tl.full((BLOCK_N, SLOTS), float("inf"), ACC)
        empty_i = tl.full((BLOCK_N, SLOTS), 2147483647, tl.int32)
        best_v, best_i = _merge_topk(empty_v, empty_i, exact, best_i, SLOTS)
    if METRIC == 0:
        best_v = _sqrt_rn(best_v)
    return best_v, best_i


@triton.jit
def _store_bmu(INDICES, DISTANCES, UNSURE, best_v, best_i, unsure, rows, row_mask, k,
               CERTIFY: tl.constexpr, SLOTS: tl.constexpr):
    slot = tl.arange(0, SLOTS)
    out = rows[:, None] * k + slot[None, :]
    mask = row_mask[:, None] & (slot < k)[None, :]
    tl.store(INDICES + out, best_i.to(tl.int64), mask=mask)
    tl.store(DISTANCES + out, best_v.to(DISTANCES.dtype.element_ty), mask=mask)
    if CERTIFY:
        tl.store(UNSURE + rows, unsure.to(tl.int8), mask=row_mask)


# ------------------------------------------------------------------------------ BMU
@triton.jit
def _som_bmu_kernel(
    X,            # *x (N, D) samples, fp16/bf16/fp32/fp64, any strides
    W,            # *weights (K, D) codebook, x's dtype, any strides
    INDICES,      # *out (N, k) int64, contiguous: node indices, ascending distance
    DISTANCES,    # *out (N, k) x's dtype, contiguous: the true distances
    UNSURE,       # *out (N,) int8 (CERTIFY): 1 where the top-k is not certified
    WSQ_MAX,      # *fp32 (1,) (CERTIFY, euclidean): max_j |w_j|^2
    N, K, D,      # samples, nodes, features
    k,            # neighbours wanted per row, 1 <= k <= SLOTS
    stride_xn, stride_xd,   # strides of x (elements)
    stride_wk, stride_wd,   # strides of weights (elements)
    C_BOUND,      # fp32 (CERTIFY): key error bound per unit, see _uncertain_rows
    METRIC: tl.constexpr,      # 0 euclidean, 1 cosine, 2 manhattan, 3 chebyshev
    IGNORE_NAN: tl.constexpr,  # skip NaN features of x, rescale as the reference
    EXACT: tl.constexpr,       # broadcast tiles from the definition instead of tl.dot
    PRECISION: tl.constexpr,   # x.w of the tl.dot ranking: 0 fp32 ("ieee"), 1 tf32, 2 bf16,
                               #  3 bf16 / 4 tf32 emulated in fp32 (the interpreter)
    RECHECK: tl.constexpr,     # exact recheck (euclidean, cosine) of the SLOTS candidates
    CERTIFY: tl.constexpr,     # flag rows whose top-k the key error bound cannot prove
    SLOTS: tl.constexpr,       # candidates kept in registers per row, power of two
    BLOCK_N: tl.constexpr,     # rows of x per program
    BLOCK_K: tl.constexpr,     # nodes per tile of the node loop
    BLOCK_D: tl.constexpr,     # features per chunk of the feature loop
    ACC: tl.constexpr,         # accumulation dtype
):
    """One program owns BLOCK_N rows of x and streams the codebook through it in tiles
    of BLOCK_K nodes; each distance tile is folded into a per-row top-SLOTS list in
    registers as soon as it is computed, so no (N, K) matrix exists anywhere."""
    best_v, best_i, rows, row_mask = _bmu_block(
        X, W, N, K, D, stride_xn, stride_xd, stride_wk, stride_wd,
        METRIC, IGNORE_NAN, EXACT, PRECISION, SLOTS, BLOCK_N, BLOCK_K, BLOCK_D, ACC)
    unsure = row_mask
    if CERTIFY:
        unsure = _uncertain_rows(X, rows, row_mask, D, stride_xn, stride_xd, best_v, best_i, k,
                                 C_BOUND, WSQ_MAX, METRIC, SLOTS, BLOCK_N, BLOCK_D, ACC)
    best_v, best_i = _bmu_finish(X, W, best_v, best_i, rows, row_mask, K, D,
                                 stride_xn, stride_xd, stride_wk, stride_wd,
                                 METRIC, IGNORE_NAN, RECHECK, SLOTS, BLOCK_N, BLOCK_D, ACC)
    _store_bmu(INDICES, DISTANCES, UNSURE, best_v, best_i, unsure, rows, row_mask, k,
               CERTIFY, SLOTS)


@triton.jit
def _som_products_kernel(
    X, W,         # *x (N, D) fp32, *weights (K, D) fp32, any strides
    G,            # *out (N, K) fp32, row stride stride_gn: x.w
    N, K, D,
    stride_xn, stride_xd, stride_wk, stride_wd, stride_gn,
    PRECISION: tl.constexpr,   # operands of the products (see _dot_precision): 1 tf32, 2 bf16, 3/4 emulated
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The tensor-core products of the blocked search, G = x w^T from tf32 or bf16
    operands with fp32 accumulation: the precision is the kernel's own, not the
    process-wide matmul setting, so the search's error bound holds whatever it is."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    nodes = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    node_mask = nodes < K
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        feats = d0 + tl.arange(0, BLOCK_D)
        feat_mask = feats < D
        xv = tl.load(X + rows[:, None] * stride_xn + feats[None, :] * stride_xd,
                     mask=row_mask[:, None] & feat_mask[None, :], other=0.0)
        wv = tl.load(W + nodes[:, None] * stride_wk + feats[None, :] * stride_wd,
                     mask=node_mask[:, None] & feat_mask[None, :], other=0.0)
        acc += _dot_precision(xv, wv, PRECISION, tl.float32)
    tl.store(G + rows[:, None] * stride_gn + nodes[None, :], acc,
             mask=row_mask[:, None] & node_mask[None, :])


@triton.jit
def _som_bmu_products_kernel(
    G,            # *(N, K) fp32 or bf16: x.w of this row block (cuBLAS), row stride stride_gn
    WSQ,          # *fp32 (K,): |w_j|^2
    WSQ_MAX,      # *fp32 (1,): max_j |w_j|^2
    X, W,         # *x (N, D) fp32 (this row block), *weights (K, D) fp32, any strides
    INDICES,      # *out (N, k) int64, contiguous
    DISTANCES,    # *out (N, k) fp32, contiguous
    UNSURE,       # *out (N,) int8: 1 where the top-k is not certified
    N, K, D, k,
    stride_gn, stride_xn, stride_xd, stride_wk, stride_wd,
    C_BOUND,      # fp32: key error bound per unit (launcher: _certify_constant)
    SLOTS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The selection pass of the blocked euclidean search: keys |w_j|^2 - 2 x.w_j from
    the products of one row block (kept in L2 by the launcher's block size), the
    top-SLOTS candidates per row in registers, the certificate, and the exact re-rank
    of the candidates from the definition."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    best_v = tl.full((BLOCK_N, SLOTS), float("inf"), tl.float32)
    best_i = tl.full((BLOCK_N, SLOTS), 2147483647, tl.int32)
    for k0 in range(0, K, BLOCK_K):
        nodes = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        node_mask = nodes < K
        g = tl.load(G + rows[:, None] * stride_gn + nodes[None, :],
                    mask=row_mask[:, None] & node_mask[None, :], other=0.0).to(tl.float32)
        w_sq = tl.load(WSQ + nodes, mask=node_mask, other=0.0)
        key = w_sq[None, :] - 2.0 * g
        best_v, best_i = _fold_tile(best_v, best_i, key, nodes, node_mask, SLOTS)
    unsure = _uncertain_rows(X, rows, row_mask, D, stride_xn, stride_xd, best_v, best_i, k,
                             C_BOUND, WSQ_MAX, 0, SLOTS, BLOCK_N, BLOCK_D, tl.float32)
    best_v, best_i = _bmu_finish(X, W, best_v, best_i, rows, row_mask, K, D,
                                 stride_xn, stride_xd, stride_wk, stride_wd,
                                 0, False, True, SLOTS, BLOCK_N, BLOCK_D, tl.float32)
    _store_bmu(INDICES, DISTANCES, UNSURE, best_v, best_i, unsure, rows, row_mask, k,
               True, SLOTS)

@triton.jit
def _som_distances_kernel(
    X, W,         # *x (N, D), *weights (K, D), any strides
    OUT,          # *out (N, K) contiguous, accumulation dtype: true distances
    N, K, D,
    stride_xn, stride_xd, stride_wk, stride_wd,
    METRIC: tl.constexpr, IGNORE_NAN: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    """Exact distance matrix of a bounded row tile (the k > TOPK_SLOTS_MAX path): one
    program per (BLOCK_N rows, BLOCK_K nodes) tile, from the definition."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nodes = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < N
    node_mask = nodes < K
    dist = _distance_tile(X, W, rows, nodes, row_mask, node_mask, D,
                          stride_xn, stride_xd, stride_wk, stride_wd,
                          METRIC, IGNORE_NAN, True, 0, BLOCK_N, BLOCK_K, BLOCK_D, ACC)
    if METRIC == 0:
        dist = _sqrt_rn(dist)
    tl.store(OUT + rows[:, None] * K + nodes[None, :], dist,
             mask=row_mask[:, None] & node_mask[None, :])


def _bmu_precision(dtype: torch.dtype, metric: str, ignore_nan: bool, precision: str,
                   interpreted: bool) -> int:
    """PRECISION id the kernel ranks with: tf32/bf16 only where the tensor-core search
    is implemented (euclidean/cosine, fp32 input, no ignore_nan); fp32 elsewhere.
    interpreted: the launch runs under TRITON_INTERPRET (CPU tensors), whose tl.dot does
    not round, so the rounding is emulated."""
    check_choice("precision", precision, PRECISIONS)
    if (precision != "fp32" and metric in ("euclidean", "cosine") and dtype == torch.float32
            and not ignore_nan):
        if interpreted:
            return _BF16_INTERPRETED if precision == "bf16" else _TF32_INTERPRETED
        return PRECISION_IDS[precision]
    return PRECISION_IDS["fp32"]


def _operand_unit(precision_id: int) -> float:
    """Relative error bound u of one operand once converted for the products: tf32
    keeps 10 stored mantissa bits (2^-10 covers truncation as well as rounding), bf16
    7, rounded to nearest by the GPU's cast (2^-8) but truncated by the interpreter's
    (2^-7); fp32 operands are used as they are."""
    return {PRECISION_IDS["fp32"]: 0.0, PRECISION_IDS["tf32"]: 2.0 ** -10, _TF32_INTERPRETED: 2.0 ** -10,
            PRECISION_IDS["bf16"]: 2.0 ** -8, _BF16_INTERPRETED: 2.0 ** -7}[precision_id]


def _certify_constant(metric: str, d: int, u_in: float) -> float:
    """C such that every ranking key of the dot-product search is within E of its
    exact value: euclidean keys |w|^2 - 2 x.w within E = C (|x|^2 + max_j |w_j|^2),
    cosine distances within E = C. Standard rounding analysis (Higham, ch. 3): with
    u = 2^-24 and gamma = D u / (1 - D u), operands off by u_in each make a product off
    by (2 u_in + u_in^2) |x_d w_d|; any fp32 summation order of D terms adds
    gamma (1 + u_in)^2 sum |x_d w_d|; and sum |x_d w_d| <= (|x|^2 + |w|^2) / 2. The norms
    carry gamma each, the key's subtraction u; the sum and margin are rounded up.
    inf when D is so large that gamma has no bound (every row then goes to the exact
    search)."""
    u = 2.0 ** -24
    if d * u >= 0.25:
        return float("inf")
    gamma = d * u / (1 - d * u)
    eps_dot = 2 * u_in + u_in * u_in + gamma * (1 + u_in) ** 2
    if metric == "euclidean":
        c = eps_dot + gamma + 4 * u
    else:  # cosine: |x.w| <= |x||w|; two norms, a product, a division, a subtraction
        c = eps_dot + 2 * gamma + 8 * u
    return c * (1 + 2 * gamma) * (1 + 2.0 ** -8)


def _bmu_plan(x: torch.Tensor, metric: str, k: int, precision_id: int = 0, certify: bool = True):
    """(EXACT, RECHECK, CERTIFY, SLOTS, config) of the in-register BMU path for this call;
    precision_id from _bmu_precision. certify=False: the node-sums kernel, which keeps
    the k + 1 candidates of the plain recheck."""
    exact = metric in ("manhattan", "chebyshev") or x.dtype == torch.float64
    low_precision = precision_id != PRECISION_IDS["fp32"] and not exact
    recheck = (metric == "euclidean" and not exact) or low_precision
    certified = certify and recheck
    if certified:
        wanted = k + (LOW_PRECISION_MARGIN if low_precision else CERTIFY_MARGIN)
    elif recheck:
        wanted = k + 1
    else:
        wanted = k
    slots = next_pow2(min(wanted, TOPK_SLOTS_MAX))
    config = BMU_BROADCAST_CONFIG if exact else BMU_DOT_CONFIG
    return exact, recheck, certified, slots, config


def _wsq_max(weights: torch.Tensor) -> torch.Tensor:
    """(1,) fp32: max_j |w_j|^2 (computed once per launch, no host sync)."""
    w = weights.float()
    return (w * w).sum(1).amax().reshape(1)


def _bmu_fused(x, weights, k, metric, ignore_nan, precision_id, exact=None):
    """The in-register search (_som_bmu_kernel): (indices, distances, unsure) where
    unsure (N,) int8 flags the rows whose top-k the error bound does not prove (None
    when the plan does not certify). exact=True forces the search from the definition."""
    n, d = x.shape
    k_nodes = weights.shape[0]
    plan_exact, recheck, certify, slots, cfg = _bmu_plan(x, metric, k, precision_id)
    if exact:
        plan_exact, recheck, certify = True, False, False
        slots, cfg = next_pow2(k), BMU_BROADCAST_CONFIG
        precision_id = PRECISION_IDS["fp32"]
    cfg = dict(cfg)
    acc = acc_dtype(x.dtype)
    indices = torch.empty((n, k), dtype=torch.int64, device=x.device)
    distances = torch.empty((n, k), dtype=x.dtype, device=x.device)
    if certify:
        unsure = torch.empty(n, dtype=torch.int8, device=x.device)
        wsq_max = _wsq_max(weights)
        c_bound = _certify_constant(metric, d, _operand_unit(precision_id))
    else:
        unsure, wsq_max, c_bound = None, indices, 0.0   # placeholders: not read
    grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
    with device_of(x):
        _som_bmu_kernel[grid](
            x, weights, indices, distances, unsure if certify else indices, wsq_max,
            n, k_nodes, d, k,
            x.stride(0), x.stride(1), weights.stride(0), weights.stride(1), c_bound,
            METRIC=METRIC_IDS[metric], IGNORE_NAN=bool(ignore_nan), EXACT=plan_exact,
            PRECISION=precision_id, RECHECK=recheck, CERTIFY=certify, SLOTS=slots,
            ACC=TL_ACC[acc], **cfg)
    return indices, distances, unsure


def _cublas_operand_unit() -> float:
    """u_in of torch.mm on fp32 CUDA tensors under the process's matmul setting: 0 for
    IEEE fp32, 2^-10 when TF32 is allowed (or the setting cannot be read)."""
    try:
        mode = torch.backends.cuda.matmul.fp32_precision
        if mode == "none":
            mode = torch.backends.fp32_precision
    except (AttributeError, RuntimeError):
        return 2.0 ** -10
    return 0.0 if mode in ("ieee", "none") else 2.0 ** -10


def _block_rows(k_nodes: int) -> int:
    """Rows of x per block of the blocked search: its (rows, K) fp32 products stay
    within BLOCKED_PRODUCT_BYTES (in L2 on an A100/H100), a multiple of both kernels'
    row tiles."""
    unit = max(BLOCKED_SELECT_CONFIG["BLOCK_N"], PRODUCTS_CONFIG["BLOCK_M"])
    rows = BLOCKED_PRODUCT_BYTES // (4 * k_nodes)
    return max(unit, rows // unit * unit)


def _bmu_blocked(x, weights, k, precision_id):
    """The blocked euclidean search, fp32 input: per block of rows, the products
    x w^T -- fp32 from cuBLAS (torch.mm), tf32/bf16 from _som_products_kernel -- then
    _som_bmu_products_kernel selects, certifies and re-ranks. (indices, distances,
    unsure) as _bmu_fused."""
    n, d = x.shape
    k_nodes = weights.shape[0]
    margin = CERTIFY_MARGIN if precision_id == PRECISION_IDS["fp32"] else LOW_PRECISION_MARGIN
    slots = next_pow2(min(k + margin, TOPK_SLOTS_MAX))
    indices = torch.empty((n, k), dtype=torch.int64, device=x.device)
    distances = torch.empty((n, k), dtype=x.dtype, device=x.device)
    unsure = torch.empty(n, dtype=torch.int8, device=x.device)
    w_sq = (weights * weights).sum(1)
    wsq_max = w_sq.amax().reshape(1)
    cublas = precision_id == PRECISION_IDS["fp32"]
    # CPU tensors (the interpreter): torch.mm on the CPU is IEEE fp32
    u_in = (_cublas_operand_unit() if x.is_cuda else 0.0) if cublas else _operand_unit(precision_id)
    c_bound = _certify_constant("euclidean", d, u_in)
    rows = min(_block_rows(k_nodes), n)
    products = torch.empty((rows, k_nodes), dtype=torch.float32, device=x.device)
    sel, mm = BLOCKED_SELECT_CONFIG, PRODUCTS_CONFIG
    with device_of(x):
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            xb, g = x[start:stop], products[: stop - start]
            if cublas:
                torch.mm(xb, weights.t(), out=g)
            else:
                grid = (triton.cdiv(stop - start, mm["BLOCK_M"]), triton.cdiv(k_nodes, mm["BLOCK_N"]))
                _som_products_kernel[grid](
                    xb, weights, g, stop - start, k_nodes, d,
                    xb.stride(0), xb.stride(1), weights.stride(0), weights.stride(1), g.stride(0),
                    PRECISION=precision_id, **mm)
            grid = (triton.cdiv(stop - start, sel["BLOCK_N"]),)
            _som_bmu_products_kernel[grid](
                g, w_sq, wsq_max, xb, weights, indices[start:stop], distances[start:stop],
                unsure[start:stop], stop - start, k_nodes, d, k,
                g.stride(0), xb.stride(0), xb.stride(1), weights.stride(0), weights.stride(1),
                c_bound, SLOTS=slots, **sel)
    return indices, distances, unsure


def _settle_unsure(x, weights, k, metric, ignore_nan, precision_id, search, indices, distances,
                   unsure):
    """Search again the rows the certificate left open (one host sync to find them):
    after a tf32/bf16 search with the fp32 search of the same kind (certified in turn),
    after an fp32 one from the definition, which is exact by construction."""
    rows = unsure.nonzero()[:, 0]
    if rows.numel() == 0:
        return
    xs = x.index_select(0, rows)
    fp32 = PRECISION_IDS["fp32"]
    if precision_id != fp32:
        if search == "blocked":
            idx, dist, again = _bmu_blocked(xs, weights, k, fp32)
        else:
            idx, dist, again = _bmu_fused(xs, weights, k, metric, ignore_nan, fp32)
        if again is not None:
            _settle_unsure(xs, weights, k, metric, ignore_nan, fp32, search, idx, dist, again)
    else:
        idx, dist, _ = _bmu_fused(xs, weights, k, metric, ignore_nan, fp32, exact=True)
    indices[rows] = idx
    distances[rows] = dist


def _bmu_search(search: str, x: torch.Tensor, metric: str, ignore_nan: bool) -> str:
    """'fused' or 'blocked' for this call; 'blocked' runs the euclidean search of fp32
    input without ignore_nan and raises elsewhere (nothing falls back silently)."""
    check_choice("search", search, SEARCHES)
    if search == "auto":
        return BMU_SEARCH_AUTO
    if search == "blocked" and (metric != "euclidean" or x.dtype != torch.float32 or ignore_nan):
        raise ValueError("search='blocked' runs the euclidean search of float32 input without "
                         f"ignore_nan; got metric={metric!r}, dtype {x.dtype}, ignore_nan={ignore_nan} "
                         "(use search='fused' or 'auto')")
    return search


def som_bmu_fwd(x: torch.Tensor, weights: torch.Tensor, k: int, metric: str,
                ignore_nan: bool, precision: str = "fp32",
                search: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D), weights (K, D) -> indices (N, k) int64, distances (N, k) x.dtype.
    precision "tf32" / "bf16" ranks on tensor cores and re-ranks exactly (module
    docstring); search "fused" | "blocked" | "auto" picks the kernels; the
    k > TOPK_SLOTS_MAX path is exact whatever the precision."""
    n, d = x.shape
    k_nodes = weights.shape[0]
    precision_id = _bmu_precision(x.dtype, metric, ignore_nan, precision, not x.is_cuda)
    search = _bmu_search(search, x, metric, ignore_nan)
    if n == 0 or k == 0:
        return (torch.empty((n, k), dtype=torch.int64, device=x.device),
                torch.empty((n, k), dtype=x.dtype, device=x.device))
    if k > TOPK_SLOTS_MAX:
        indices = torch.empty((n, k), dtype=torch.int64, device=x.device)
        distances = torch.empty((n, k), dtype=x.dtype, device=x.device)
        rows = max(1, _TILE_ELEMENTS // k_nodes)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            tile = som_distances_fwd(x[start:stop], weights, metric, ignore_nan)
            values, order = torch.sort(tile, dim=1, stable=True)
            indices[start:stop] = order[:, :k]
            distances[start:stop] = values[:, :k].to(x.dtype)
        return indices, distances
    if search == "blocked":
        indices, distances, unsure = _bmu_blocked(x, weights, k, precision_id)
    else:
        indices, distances, unsure = _bmu_fused(x, weights, k, metric, ignore_nan, precision_id)
    if unsure is not None:
        _settle_unsure(x, weights, k, metric, ignore_nan, precision_id, search, indices, distances,
                       unsure)
    return indices, distances


def som_distances_fwd(x: torch.Tensor, weights: torch.Tensor, metric: str,
                      ignore_nan: bool) -> torch.Tensor:
    """Exact (N, K) distances in the accumulation dtype (keep N * K bounded)."""
    n, d = x.shape
    k_nodes = weights.shape[0]
    acc = acc_dtype(x.dtype)
    out = torch.empty((n, k_nodes), dtype=acc, device=x.device)
    cfg = dict(DISTANCES_CONFIG)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(k_nodes, cfg["BLOCK_K"]))
    with device_of(x):
        _som_distances_kernel[grid](
            x, weights, out, n, k_nodes, d,
            x.stride(0), x.stride(1), weights.stride(0), weights.stride(1),
            METRIC=METRIC_IDS[metric], IGNORE_NAN=bool(ignore_nan), ACC=TL_ACC[acc], **cfg)
    return out


# ------------------------------------------------------------------------ node sums
@triton.jit
def _som_node_sums_kernel(
    X, W,         # *x (N, D), *weights (K, D), any strides
    SUMS,         # *out (K, D) contiguous, accumulation dtype, zeroed: sums of won samples
    COUNTS,       # *out (K,) or (K, D) with IGNORE_NAN, contiguous, zeroed: counts
    DISTANCE_SUM, # *out () fp64, zeroed: sum of the finite winner distances
    N, K, D,
    stride_xn, stride_xd, stride_wk, stride_wd,
    METRIC: tl.constexpr, IGNORE_NAN: tl.constexpr, EXACT: tl.constexpr,
    RECHECK: tl.constexpr, SLOTS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    """The BMU search of _som_bmu_kernel (k = 1) fused with the Voronoi accumulation:
    each program finds the winners of its BLOCK_N rows, then scatters the rows into
    their winners' sums/counts with atomics (order-dependent on a GPU) and adds its
    block's distance sum to DISTANCE_SUM."""
    best_v, best_i, rows, row_mask = _bmu_block(
        X, W, N, K, D, stride_xn, stride_xd, stride_wk, stride_wd,
        METRIC, IGNORE_NAN, EXACT, 0, SLOTS, BLOCK_N, BLOCK_K, BLOCK_D, ACC)
    best_v, best_i = _bmu_finish(X, W, best_v, best_i, rows, row_mask, K, D,
                                 stride_xn, stride_xd, stride_wk, stride_wd,
                                 METRIC, IGNORE_NAN, RECHECK, SLOTS, BLOCK_N, BLOCK_D, ACC)
    slot = tl.arange(0, SLOTS)[None, :]
    winner = tl.sum(tl.where(slot == 0, best_i, 0), 1)          # (BLOCK_N,) int32
    dist = tl.sum(tl.where(slot == 0, best_v, 0.0), 1)          # (BLOCK_N,) ACC
    valid = row_mask & (winner < K)
    winner = winner.to(tl.int64)
    for d0 in range(0, D, BLOCK_D):
        feats = d0 + tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (feats < D)[None, :]
        xv = tl.load(X + rows[:, None] * stride_xn + feats[None, :] * stride_xd,
                     mask=mask, other=0.0).to(ACC)
        out = winner[:, None] * D + feats[None, :]
        if IGNORE_NAN:
            present = xv == xv
            xv = tl.where(present, xv, 0.0)
            tl.atomic_add(COUNTS + out, present.to(ACC), mask=mask)
        tl.atomic_add(SUMS + out, xv, mask=mask)
    if not IGNORE_NAN:
        tl.atomic_add(COUNTS + winner, tl.full((BLOCK_N,), 1.0, ACC), mask=valid)
    # the reference sums the distances as returned (x's dtype), in fp64
    dist64 = dist.to(X.dtype.element_ty).to(tl.float64)
    finite = valid & (dist64 < float("inf"))
    tl.atomic_add(DISTANCE_SUM, tl.sum(tl.where(finite, dist64, 0.0), 0))


def som_node_sums_fwd(x: torch.Tensor, weights: torch.Tensor, metric: str, ignore_nan: bool):
    """x (N, D), weights (K, D) -> sums (K, D), counts (K,) or (K, D), distance_sum ()."""
    n, d = x.shape
    k_nodes = weights.shape[0]
    acc = acc_dtype(x.dtype)
    sums = torch.zeros((k_nodes, d), dtype=acc, device=x.device)
    counts = torch.zeros((k_nodes, d) if ignore_nan else (k_nodes,), dtype=acc, device=x.device)
    distance_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    if n == 0:
        return sums, counts, distance_sum
    exact, recheck, _, slots, cfg = _bmu_plan(x, metric, 1, certify=False)
    cfg = dict(cfg)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
    with device_of(x):
        _som_node_sums_kernel[grid](
            x, weights, sums, counts, distance_sum, n, k_nodes, d,
            x.stride(0), x.stride(1), weights.stride(0), weights.stride(1),
            METRIC=METRIC_IDS[metric], IGNORE_NAN=bool(ignore_nan), EXACT=exact,
            RECHECK=recheck, SLOTS=slots, ACC=TL_ACC[acc], **cfg)
    return sums, counts, distance_sum


# ----------------------------------------------------------------------- online rule
@triton.jit
def _neighborhood(NEIGHBORHOOD: tl.constexpr, d0, d1, sigma):
    """csrc/common/som.h neighborhood(): 1 at the winner, for offsets d0, d1 >= 0."""
    if NEIGHBORHOOD == 0:    # gaussian
        h = tl.exp(-(d0 * d0 + d1 * d1) / (2.0 * sigma * sigma))
    elif NEIGHBORHOOD == 1:  # bubble
        h = ((d0 < sigma) & (d1 < sigma)).to(d0.dtype)
    elif NEIGHBORHOOD == 2:  # mexican hat
        two_s2 = 2.0 * sigma * sigma
        p = d0 * d0 + d1 * d1
        h = tl.exp(-p / two_s2) * (1.0 - 2.0 / two_s2 * p)
    else:                    # triangle
        h = tl.maximum(1.0 - d0 / sigma, 0.0) * tl.maximum(1.0 - d1 / sigma, 0.0)
    return h


@triton.jit
def _lattice_delta(a, b, period):
    """csrc/common/som.h lattice_delta(): |a - b| the short way round a torus of
    `period` (0 = flat)."""
    d = tl.abs(a - b)
    return tl.where(period > 0, tl.minimum(d, period - d), d)


@triton.jit
def _node_distances(
    W_MAP,        # *working map (K, D) contiguous, ACC
    X_ROW,        # *the sample's row of x (D,), stride stride_xd
    nodes, node_mask,  # (BLOCK_K,) int64 node indices and nodes < K
    D, stride_xd,
    METRIC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """(BLOCK_K,) true distances of one sample to BLOCK_K nodes, from the definition."""
    acc = tl.zeros((BLOCK_K,), ACC)
    w_sq = tl.zeros((BLOCK_K,), ACC)
    s_sq = tl.zeros((BLOCK_K,), ACC)
    for d0 in range(0, D, BLOCK_D):
        feats = d0 + tl.arange(0, BLOCK_D)
        feat_mask = feats < D
        s = tl.load(X_ROW + feats * stride_xd, mask=feat_mask, other=0.0).to(ACC)
        w = tl.load(W_MAP + nodes[:, None] * D + feats[None, :],
                    mask=node_mask[:, None] & feat_mask[None, :], other=0.0)
        diff = s[None, :] - w
        if METRIC == 0:
            acc += tl.sum(diff * diff, 1)
        elif METRIC == 1:
            acc += tl.sum(s[None, :] * w, 1)
            w_sq += tl.sum(w * w, 1)
            s_sq += tl.sum(s * s, 0)
        elif METRIC == 2:
            acc += tl.sum(tl.abs(diff), 1)
        else:
            acc = tl.maximum(acc, tl.max(tl.abs(diff), 1))
    if METRIC == 0:
        acc = _sqrt_rn(acc)
    elif METRIC == 1:
        acc = 1.0 - _div_rn(acc, _sqrt_rn(s_sq) * _sqrt_rn(w_sq) + 1e-8)
    return acc


@triton.jit
def _som_online_kernel(
    OUT,          # *working maps (M, K, D) contiguous, ACC: the input weights on entry,
                  #  the trained weights on exit (updated in place, step by step)
    X,            # *x (N, D) samples, any float dtype and strides
    ORDER,        # *order (M, T) int64 contiguous: sample index of each step
    LR,           # *lr (M, T) ACC contiguous: learning rate of each step
    SIGMA,        # *sigma (M, T) ACC contiguous: neighbourhood radius of each step
    COORDS,       # *coords (K, 2) ACC contiguous: lattice position of each node
    PERIODS,      # *(2,) ACC: torus period of each lattice axis (0 = flat); a tensor, not
                  #  scalar arguments, so fp64 maps keep fp64 periods (floats pass as fp32)
    K, D, T,      # nodes, features, steps
    stride_xn, stride_xd,   # strides of x (elements)
    NEIGHBORHOOD: tl.constexpr,  # 0 gaussian, 1 bubble, 2 mexican_hat, 3 triangle
    RULE: tl.constexpr,          # 0 som, 1 wta, 2 wtm
    METRIC: tl.constexpr,        # 0 euclidean, 1 cosine, 2 manhattan, 3 chebyshev
    BLOCK_K: tl.constexpr,       # nodes per tile
    BLOCK_D: tl.constexpr,       # features per chunk
    ACC: tl.constexpr,           # accumulation dtype
):
    """One program owns one map for the whole epoch and walks its T steps in order:
    a distance pass over node tiles (argmin, lowest index on ties), a barrier, an
    update pass w += lr * h * (s - w) over node tiles, a barrier. The map lives in
    global memory (L2-resident for the map sizes this kernel is meant for; the CUDA
    kernel in csrc/cuda/som.cu keeps it in shared memory)."""
    m = tl.program_id(0).to(tl.int64)
    w_map = OUT + m * K * D
    lanes = tl.arange(0, BLOCK_K).to(tl.int64)
    period_0 = tl.load(PERIODS)
    period_1 = tl.load(PERIODS + 1)
    for t in range(T):
        step = m * T + t
        sample = tl.load(ORDER + step)
        eta = tl.load(LR + step)
        sigma = tl.load(SIGMA + step)
        x_row = X + sample * stride_xn
        # ---- distance pass: lane j keeps the best of nodes j, j + BLOCK_K, ...
        lane_v = tl.full((BLOCK_K,), float("inf"), ACC)
        lane_i = tl.full((BLOCK_K,), 2147483647, tl.int64)
        for k0 in range(0, K, BLOCK_K):
            nodes = k0 + lanes
            node_mask = nodes < K
            rho = _node_distances(w_map, x_row, nodes, node_mask, D, stride_xd,
                                  METRIC, BLOCK_K, BLOCK_D, ACC)
            rho = tl.where(rho == rho, rho, float("inf"))  # NaN ranks last
            better = node_mask & ((rho < lane_v) | (lane_i == 2147483647))
            lane_v = tl.where(better, rho, lane_v)
            lane_i = tl.where(better, nodes, lane_i)
        best_v = tl.min(lane_v, 0)
        winner = tl.min(tl.where(lane_v == best_v, lane_i, 2147483647), 0)
        tl.debug_barrier()
        # ---- update pass
        if RULE == 1:
            for d0 in range(0, D, BLOCK_D):
                feats = d0 + tl.arange(0, BLOCK_D)
                feat_mask = feats < D
                s = tl.load(x_row + feats * stride_xd, mask=feat_mask, other=0.0).to(ACC)
                w = tl.load(w_map + winner * D + feats, mask=feat_mask, other=0.0)
                tl.store(w_map + winner * D + feats, w + eta * (s - w), mask=feat_mask)
        else:
            win_0 = tl.load(COORDS + winner * 2)
            win_1 = tl.load(COORDS + winner * 2 + 1)
            for k0 in range(0, K, BLOCK_K):
                nodes = k0 + lanes
                node_mask = nodes < K
                if RULE == 0:
                    pos_0 = tl.load(COORDS + nodes * 2, mask=node_mask, other=0.0)
                    pos_1 = tl.load(COORDS + nodes * 2 + 1, mask=node_mask, other=0.0)
                    h = _neighborhood(NEIGHBORHOOD, _lattice_delta(pos_0, win_0, period_0),
                                      _lattice_delta(pos_1, win_1, period_1), sigma)
                else:
                    # winner takes most: h of the data-space distance, computed before
                    # this tile's update (its own rows are untouched so far this step)
                    rho = _node_distances(w_map, x_row, nodes, node_mask, D, stride_xd,
                                          METRIC, BLOCK_K, BLOCK_D, ACC)
                    h = _neighborhood(NEIGHBORHOOD, rho, tl.zeros_like(rho), sigma)
                coef = eta * h
                for d0 in range(0, D, BLOCK_D):
                    feats = d0 + tl.arange(0, BLOCK_D)
                    mask = node_mask[:, None] & (feats < D)[None, :]
                    s = tl.load(x_row + feats * stride_xd, mask=feats < D, other=0.0).to(ACC)
                    ptrs = w_map + nodes[:, None] * D + feats[None, :]
                    w = tl.load(ptrs, mask=mask, other=0.0)
                    tl.store(ptrs, w + coef[:, None] * (s[None, :] - w), mask=mask)
        tl.debug_barrier()


def som_online_fwd(weights, x, order, lr, sigma, coords, period_0: float, period_1: float,
                   neighborhood: str, rule: str, metric: str) -> torch.Tensor:
    """weights (M, K, D) -> trained weights (M, K, D) in weights' dtype (input untouched)."""
    m, k_nodes, d = weights.shape
    acc = acc_dtype(weights.dtype)
    out = weights.to(dtype=acc, memory_format=torch.contiguous_format, copy=True)
    t_steps = order.shape[1]
    if m == 0 or t_steps == 0 or k_nodes == 0:
        return out.to(weights.dtype)
    order = order.contiguous()
    lr = lr.to(acc).contiguous()
    sigma = sigma.to(acc).contiguous()
    coords = coords.to(acc).contiguous()
    periods = torch.tensor([period_0, period_1], dtype=acc).to(x.device)
    with device_of(x):
        _som_online_kernel[(m,)](
            out, x, order, lr, sigma, coords, periods, k_nodes, d, t_steps,
            x.stride(0), x.stride(1),
            NEIGHBORHOOD=NEIGHBORHOOD_IDS[neighborhood], RULE=RULE_IDS[rule],
            METRIC=METRIC_IDS[metric], ACC=TL_ACC[acc], **ONLINE_CONFIG)
    return out if out.dtype == weights.dtype else out.to(weights.dtype)


# ----------------------------------------------------------------------- custom ops
@torch.library.custom_op("genkernels::som_bmu_triton", mutates_args=())
def som_bmu_triton(x: torch.Tensor, weights: torch.Tensor, k: int, metric: str,
                   ignore_nan: bool, precision: str = "fp32",
                   search: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    return som_bmu_fwd(x, weights, k, metric, ignore_nan, precision, search)


@som_bmu_triton.register_fake
def _som_bmu_triton_fake(x, weights, k, metric, ignore_nan, precision="fp32", search="auto"):
    n = x.shape[0]
    return x.new_empty((n, k), dtype=torch.int64), x.new_empty((n, k))


@torch.library.custom_op("genkernels::som_node_sums_triton", mutates_args=())
def som_node_sums_triton(x: torch.Tensor, weights: torch.Tensor, metric: str,
                         ignore_nan: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return som_node_sums_fwd(x, weights, metric, ignore_nan)


@som_node_sums_triton.register_fake
def _som_node_sums_triton_fake(x, weights, metric, ignore_nan):
    k_nodes, d = weights.shape
    dt = acc_dtype(x.dtype)
    counts = x.new_empty((k_nodes, d) if ignore_nan else (k_nodes,), dtype=dt)
    return x.new_empty((k_nodes, d), dtype=dt), counts, x.new_empty((), dtype=torch.float64)


@torch.library.custom_op("genkernels::som_online_triton", mutates_args=())
def som_online_triton(weights: torch.Tensor, x: torch.Tensor, order: torch.Tensor,
                      lr: torch.Tensor, sigma: torch.Tensor, coords: torch.Tensor,
                      period_0: float, period_1: float, neighborhood: str, rule: str,
                      metric: str) -> torch.Tensor:
    return som_online_fwd(weights, x, order, lr, sigma, coords, period_0, period_1,
                          neighborhood, rule, metric)


@som_online_triton.register_fake
def _som_online_triton_fake(weights, x, order, lr, sigma, coords, period_0, period_1,
                            neighborhood, rule, metric):
    return torch.empty_like(weights, memory_format=torch.contiguous_format)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    acc = {"fp32": tl.float32, "fp64": tl.float64}
    # contiguous inputs: the unit feature stride is specialised to a constexpr 1 by the
    # Triton launcher, as here
    strides = {"stride_xn": "i32", "stride_wk": "i32"}
    unit = {"stride_xd": 1, "stride_wd": 1}
    entries = []

    def bmu(metric, k, dtype="fp32", ignore_nan=False, precision="fp32"):
        import torch

        x_dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16,
                   "fp16": torch.float16}[dtype]
        precision_id = _bmu_precision(x_dtype, metric, ignore_nan, precision,
                                                 interpreted=False)
        exact, recheck, certify, slots, cfg = _bmu_plan(
            torch.empty(0, dtype=x_dtype), metric, k, precision_id)
        cfg = dict(cfg)
        acc_name = "fp64" if dtype == "fp64" else "fp32"
        # without CERTIFY the launcher passes the indices for the two unread pointers
        sig = {"X": ptr(dtype), "W": ptr(dtype), "INDICES": "*i64", "DISTANCES": ptr(dtype),
               "UNSURE": "*i8" if certify else "*i64", "WSQ_MAX": "*fp32" if certify else "*i64",
               "N": "i32", "K": "i32", "D": "i32", "k": "i32", **strides, "C_BOUND": "fp32"}
        meta = dict(METRIC=METRIC_IDS[metric], IGNORE_NAN=ignore_nan, EXACT=exact,
                    PRECISION=precision_id, RECHECK=recheck, CERTIFY=certify, SLOTS=slots,
                    ACC=acc[acc_name],
                    BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"])
        tag = (f"{metric},{dtype},k={k}" + (",ignore_nan" if ignore_nan else "")
               + (f",precision={precision}" if precision != "fp32" else ""))
        entries.append(TritonKernel("som", f"_som_bmu_kernel[{tag}]",
                                    lambda: _som_bmu_kernel, sig, {**meta, **unit},
                                    cfg["num_warps"], cfg["num_stages"]))

    def products(precision):
        cfg = dict(PRODUCTS_CONFIG)
        sig = {"X": "*fp32", "W": "*fp32", "G": "*fp32", "N": "i32", "K": "i32", "D": "i32",
               **strides, "stride_gn": "i32"}
        meta = dict(PRECISION=PRECISION_IDS[precision],
                    BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"])
        entries.append(TritonKernel("som", f"_som_products_kernel[{precision}]",
                                    lambda: _som_products_kernel, sig, {**meta, **unit},
                                    cfg["num_warps"], cfg["num_stages"]))

    def blocked_select(k, precision="fp32"):
        cfg = dict(BLOCKED_SELECT_CONFIG)
        margin = CERTIFY_MARGIN if precision == "fp32" else LOW_PRECISION_MARGIN
        slots = next_pow2(min(k + margin, TOPK_SLOTS_MAX))
        sig = {"G": "*fp32", "WSQ": "*fp32", "WSQ_MAX": "*fp32", "X": "*fp32", "W": "*fp32",
               "INDICES": "*i64", "DISTANCES": "*fp32", "UNSURE": "*i8",
               "N": "i32", "K": "i32", "D": "i32", "k": "i32", "stride_gn": "i32", **strides,
               "C_BOUND": "fp32"}
        meta = dict(SLOTS=slots, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"])
        tag = f"k={k}" + (f",precision={precision}" if precision != "fp32" else "")
        entries.append(TritonKernel("som", f"_som_bmu_products_kernel[{tag}]",
                                    lambda: _som_bmu_products_kernel, sig, {**meta, **unit},
                                    cfg["num_warps"], cfg["num_stages"]))

    def node_sums(metric, dtype="fp32", ignore_nan=False):
        import torch

        x_dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}[dtype]
        exact, recheck, _, slots, cfg = _bmu_plan(torch.empty(0, dtype=x_dtype), metric, 1,
                                                             certify=False)
        cfg = dict(cfg)
        acc_name = "fp64" if dtype == "fp64" else "fp32"
        sig = {"X": ptr(dtype), "W": ptr(dtype), "SUMS": ptr(acc_name),
               "COUNTS": ptr(acc_name), "DISTANCE_SUM": "*fp64",
               "N": "i32", "K": "i32", "D": "i32", **strides}
        meta = dict(METRIC=METRIC_IDS[metric], IGNORE_NAN=ignore_nan, EXACT=exact,
                    RECHECK=recheck, SLOTS=slots, ACC=acc[acc_name],
                    BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"])
        tag = f"{metric},{dtype}" + (",ignore_nan" if ignore_nan else "")
        entries.append(TritonKernel("som", f"_som_node_sums_kernel[{tag}]",
                                    lambda: _som_node_sums_kernel, sig,
                                    {**meta, **unit}, cfg["num_warps"], cfg["num_stages"]))

    def distances(metric):
        cfg = dict(DISTANCES_CONFIG)
        sig = {"X": "*fp32", "W": "*fp32", "OUT": "*fp32", "N": "i32", "K": "i32", "D": "i32",
               **strides}
        meta = dict(METRIC=METRIC_IDS[metric], IGNORE_NAN=False, ACC=tl.float32,
                    BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"])
        entries.append(TritonKernel("som", f"_som_distances_kernel[{metric},fp32]",
                                    lambda: _som_distances_kernel, sig,
                                    {**meta, **unit}, cfg["num_warps"], cfg["num_stages"]))

    def online(rule, neighborhood, metric="euclidean", dtype="fp32"):
        cfg = dict(ONLINE_CONFIG)
        acc_name = "fp64" if dtype == "fp64" else "fp32"
        sig = {"OUT": ptr(acc_name), "X": ptr(dtype), "ORDER": "*i64", "LR": ptr(acc_name),
               "SIGMA": ptr(acc_name), "COORDS": ptr(acc_name), "PERIODS": ptr(acc_name),
               "K": "i32", "D": "i32", "T": "i32", "stride_xn": "i32"}
        meta = dict(NEIGHBORHOOD=NEIGHBORHOOD_IDS[neighborhood],
                    RULE=RULE_IDS[rule], METRIC=METRIC_IDS[metric],
                    ACC=acc[acc_name], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"],
                    stride_xd=1)
        entries.append(TritonKernel("som", f"_som_online_kernel[{rule},{neighborhood},{metric},{dtype}]",
                                    lambda: _som_online_kernel, sig, meta,
                                    cfg["num_warps"], cfg["num_stages"]))

    bmu("euclidean", 1)
    bmu("euclidean", 2)
    bmu("euclidean", 8)
    bmu("euclidean", 1, "bf16")
    bmu("euclidean", 2, "fp16")
    bmu("euclidean", 1, ignore_nan=True)
    bmu("euclidean", 1, "fp64")
    bmu("euclidean", 1, precision="tf32")
    bmu("euclidean", 1, precision="bf16")
    bmu("euclidean", 4, precision="bf16")
    bmu("cosine", 1)
    bmu("cosine", 1, precision="tf32")
    bmu("cosine", 1, precision="bf16")
    bmu("manhattan", 1)
    bmu("chebyshev", 1)
    products("tf32")
    products("bf16")
    blocked_select(1)
    blocked_select(3)
    blocked_select(1, "tf32")
    distances("euclidean")
    node_sums("euclidean")
    node_sums("euclidean", ignore_nan=True)
    node_sums("euclidean", "fp64")
    node_sums("euclidean", "bf16")
    online("som", "gaussian")
    online("som", "bubble", "cosine")
    online("wtm", "gaussian")
    online("wta", "gaussian")
    online("som", "mexican_hat", dtype="fp64")
    return entries
