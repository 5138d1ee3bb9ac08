"""Triton kernel of the patch BMU search and its op ``genkernels::som_patch_bmu_triton``.

Three layers (STYLE.md): ``_som_patch_bmu_kernel`` -> ``som_patch_bmu_fwd()`` (output
allocation, grid, fixed meta-parameters, the exact re-search of uncertified patches) ->
``torch.ops.genkernels.som_patch_bmu_triton`` (a ``torch.library.custom_op`` with a fake
kernel). The signature is the C++ schema ``som_patch_bmu`` of csrc/genkernels.cpp with a
``_triton`` suffix; the oracle is patch_reference.som_patch_bmu (unfold + the reference BMU).

Tiling: a program owns BLOCK_P patches (flat ids p = (n Hp + i) Wp + j, consecutive along
an image row) and streams the codebook through them in tiles of BLOCK_K nodes. A patch
tile (BLOCK_P, BLOCK_D) is loaded straight from the image through two offset vectors --
the patch's corner, n stride_n + i sh stride_h + j sw stride_w, and the feature's position
inside the patch, c stride_c + a stride_h + b stride_w for feature (c, a, b) -- so the
im2col matrix never exists; the node tile (BLOCK_K, BLOCK_D) is held in registers and the
products go through ``tl.dot`` (shared memory). Each tile of keys is folded at once into a
per-patch sorted list of SLOTS candidates in registers (som/triton.py's _fold_tile): no
(patches, K) matrix anywhere.

Numerics, as the SOM family's fused BMU search (som/triton.py): fp32/fp16/bf16 images rank
the nodes by |w|^2 - 2 x.w with fp32 ``tl.dot`` (``input_precision="ieee"``; fp16/bf16
loads are upcast, so the operands are exact), keep SLOTS = 4 candidates and decide among
them on exact sums of squares (x - w)^2; a rigorous bound E = C (|x|^2 + max_j |w_j|^2) on
the keys' rounding error certifies each patch (the 4th candidate's key above the 1st's by
more than 2 E: no node left out can be nearer). Patches left uncertified (near-ties,
duplicated nodes) are searched again by the same kernel from the definition (EXACT, a
list of patch ids), so the index is the exact search's by construction; fp64 images are
searched from the definition directly. Ties break to the lowest node index. The returned
distance is the square root (rounded to nearest) of the exact sum.

Under ``TRITON_INTERPRET=1`` (CPU tensors) the kernel runs with the same fixed
configurations; nothing here autotunes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of, next_pow2
from .patch_reference import patch_grid
from .triton import CERTIFY_MARGIN, _certify_constant, _fold_tile, _sqrt_rn, _wsq_max

# Fixed launch configurations (genkernels/_static.py compiles exactly these; their registers
# and spills are in bench/results/static/som.md). The ranking path feeds tl.dot (every block
# dimension >= 16) and takes 8 warps, as som/triton.py's BMU_DOT_CONFIG, whose 64 x 64 key
# tile and top-k merge spill with 4; the exact path holds a (patches, nodes, features)
# difference tile in registers, so it takes a thin feature chunk.
PATCH_DOT_CONFIG = dict(BLOCK_P=64, BLOCK_K=64, BLOCK_D=32, num_warps=8, num_stages=2)
PATCH_EXACT_CONFIG = dict(BLOCK_P=32, BLOCK_K=32, BLOCK_D=8, num_warps=4, num_stages=2)
# Candidates kept per patch by the ranking path: k = 1 plus the certification margin.
PATCH_SLOTS = next_pow2(1 + CERTIFY_MARGIN)


@triton.jit
def _patch_tile(IMAGES, base, live, d0, D, KHKW, KW, stride_c, stride_h, stride_w,
                BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """(BLOCK_P, BLOCK_D) features d0 .. d0 + BLOCK_D of the patches whose corners are at
    ``base`` (int64 element offsets), read from the image; 0 outside (live, D), and the
    features' positions (BLOCK_D,) int64 and mask."""
    f = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
    c = f // KHKW
    r = f - c * KHKW
    a = r // KW
    b = r - a * KW
    feat_mask = f < D
    off = c * stride_c + a * stride_h + b * stride_w
    xv = tl.load(IMAGES + base[:, None] + off[None, :], mask=live[:, None] & feat_mask[None, :],
                 other=0.0).to(ACC)
    return xv, f, feat_mask


@triton.jit
def _som_patch_bmu_kernel(
    IMAGES,       # *images (N, C, H, W), fp16/bf16/fp32/fp64, any strides
    W,            # *codebook (K, D), images' dtype, any strides
    INDICES,      # *out (N Hp Wp,) int64, contiguous: the nearest node of each patch
    DISTANCES,    # *out (N Hp Wp,) images' dtype, contiguous: its Euclidean distance
    UNSURE,       # *out (P,) int8 (CERTIFY): 1 where the candidates are not proven to hold the nearest
    PATCHES,      # *(P,) int64 (HAS_LIST): the flat ids of the patches to search
    WSQ_MAX,      # *fp32 (1,) (CERTIFY): max_j |w_j|^2
    P,            # patches this launch searches (N Hp Wp, or the list's length)
    K, D,         # nodes, features per patch (C kh kw)
    HPWP, WP,     # patches per image, per image row
    KHKW, KW,     # pixels per channel of a patch, per patch row
    stride_n, stride_c, stride_h, stride_w,   # strides of images (elements)
    ROW_STEP, COL_STEP,                       # sh stride_h, sw stride_w: from one patch to the next
    stride_wk, stride_wd,                     # strides of the codebook (elements)
    C_BOUND,      # fp32 (CERTIFY): the key error bound per unit of |x|^2 + max |w|^2
    EXACT: tl.constexpr,     # rank by sum (x - w)^2 from the definition (True) or by tl.dot keys
    CERTIFY: tl.constexpr,   # flag the patches whose nearest node the error bound cannot prove
    HAS_LIST: tl.constexpr,  # search the patches listed in PATCHES, not 0 .. P - 1
    SLOTS: tl.constexpr,     # candidates kept per patch (power of two)
    BLOCK_P: tl.constexpr,   # patches per program
    BLOCK_K: tl.constexpr,   # nodes per tile of the node loop
    BLOCK_D: tl.constexpr,   # features per chunk of the feature loop
    ACC: tl.constexpr,       # accumulation dtype
):
    pid = tl.program_id(0)
    q = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    live = q < P
    if HAS_LIST:
        p = tl.load(PATCHES + q, mask=live, other=0)
    else:
        p = q
    n = p // HPWP
    rem = p - n * HPWP
    i = rem // WP
    j = rem - i * WP
    base = n * stride_n + i * ROW_STEP + j * COL_STEP

    best_v = tl.full((BLOCK_P, SLOTS), float("inf"), ACC)
    best_i = tl.full((BLOCK_P, SLOTS), 2147483647, tl.int32)
    for k0 in range(0, K, BLOCK_K):
        nodes = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        node_mask = nodes < K
        key = tl.zeros((BLOCK_P, BLOCK_K), ACC)
        w_sq = tl.zeros((1, BLOCK_K), ACC)
        for d0 in range(0, D, BLOCK_D):
            xv, f, feat_mask = _patch_tile(IMAGES, base, live, d0, D, KHKW, KW, stride_c, stride_h, stride_w,
                                           BLOCK_D, ACC)
            wv = tl.load(W + nodes[:, None] * stride_wk + f[None, :] * stride_wd,
                         mask=node_mask[:, None] & feat_mask[None, :], other=0.0).to(ACC)
            if EXACT:
                diff = xv[:, None, :] - wv[None, :, :]
                key += tl.sum(diff * diff, 2)
            else:
                key += tl.dot(xv, tl.trans(wv), input_precision="ieee")
                w_sq += tl.sum(wv * wv, 1)[None, :]
        if not EXACT:
            key = w_sq - 2.0 * key
        best_v, best_i = _fold_tile(best_v, best_i, key, nodes, node_mask, SLOTS)

    slot = tl.arange(0, SLOTS)[None, :]
    if CERTIFY:
        # every key is within E = C_BOUND (|x|^2 + max |w|^2) of its exact value: a node left
        # out is nearer than the best kept only if the last kept key is within 2 E of the first
        x_sq = tl.zeros((BLOCK_P,), ACC)
        for d0 in range(0, D, BLOCK_D):
            xv, f, feat_mask = _patch_tile(IMAGES, base, live, d0, D, KHKW, KW, stride_c, stride_h, stride_w,
                                           BLOCK_D, ACC)
            x_sq += tl.sum(xv * xv, 1)
        bound = C_BOUND * (x_sq + tl.load(WSQ_MAX))
        first_v = tl.min(tl.where(slot == 0, best_v, float("inf")), 1)
        last_v = tl.max(tl.where(slot == SLOTS - 1, best_v, float("-inf")), 1)
        last_i = tl.max(tl.where(slot == SLOTS - 1, best_i, -1), 1)
        unsure = live & (last_i != 2147483647) & ~(last_v > first_v + 2.0 * bound)
        tl.store(UNSURE + q, unsure.to(tl.int8), mask=live)
        # the candidates' exact sums of squares from the definition decide
        exact = tl.full((BLOCK_P, SLOTS), float("inf"), ACC)
        for s in tl.static_range(SLOTS):
            node = tl.sum(tl.where(slot == s, best_i, 0), 1)
            valid = live & (node < K)
            sq = tl.zeros((BLOCK_P,), ACC)
            for d0 in range(0, D, BLOCK_D):
                xv, f, feat_mask = _patch_tile(IMAGES, base, valid, d0, D, KHKW, KW, stride_c, stride_h, stride_w,
                                               BLOCK_D, ACC)
                wv = tl.load(W + node.to(tl.int64)[:, None] * stride_wk + f[None, :] * stride_wd,
                             mask=valid[:, None] & feat_mask[None, :], other=0.0).to(ACC)
                diff = xv - wv
                sq += tl.sum(diff * diff, 1)
            exact = tl.where(slot == s, tl.where(valid, sq, float("inf"))[:, None], exact)
        v = tl.min(exact, 1)
        winner = tl.min(tl.where(exact == v[:, None], best_i, 2147483647), 1)
    else:
        v = tl.min(tl.where(slot == 0, best_v, float("inf")), 1)
        winner = tl.min(tl.where(slot == 0, best_i, 2147483647), 1)
    tl.store(INDICES + p, winner.to(tl.int64), mask=live)
    tl.store(DISTANCES + p, _sqrt_rn(v).to(DISTANCES.dtype.element_ty), mask=live)


def _launch(images, codebook, indices, distances, kh, kw, sh, sw, hp, wp, *, exact, patches=None):
    """One launch over every patch (patches None) or the listed ones; returns the int8
    flags of the uncertified patches (the ranking path) or None."""
    n_all = indices.numel()
    count = n_all if patches is None else patches.numel()
    k_nodes, d = codebook.shape
    cfg = dict(PATCH_EXACT_CONFIG if exact else PATCH_DOT_CONFIG)
    if exact:
        unsure, wsq_max, c_bound = indices, indices, 0.0   # placeholders: not read
    else:
        unsure = torch.empty(count, dtype=torch.int8, device=images.device)
        wsq_max = _wsq_max(codebook)
        c_bound = _certify_constant("euclidean", d, 0.0)
    sn, sc, sh_img, sw_img = images.stride()
    grid = (triton.cdiv(count, cfg["BLOCK_P"]),)
    with device_of(images):
        _som_patch_bmu_kernel[grid](
            images, codebook, indices, distances, unsure, indices if patches is None else patches, wsq_max,
            count, k_nodes, d, hp * wp, wp, kh * kw, kw, sn, sc, sh_img, sw_img, sh * sh_img, sw * sw_img,
            codebook.stride(0), codebook.stride(1), c_bound,
            EXACT=exact, CERTIFY=not exact, HAS_LIST=patches is not None, SLOTS=1 if exact else PATCH_SLOTS,
            ACC=TL_ACC[acc_dtype(images.dtype)], **cfg)
    return None if exact else unsure


def som_patch_bmu_fwd(images: torch.Tensor, codebook: torch.Tensor, kh: int, kw: int, sh: int,
                      sw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, C, H, W), codebook (K, C kh kw) -> indices (N, Hp, Wp) int64 and Euclidean
    distances (N, Hp, Wp) in images' dtype; see patch_reference.som_patch_bmu."""
    n, _, h, w = images.shape
    hp, wp = patch_grid(h, w, (kh, kw), (sh, sw))
    indices = torch.empty((n, hp, wp), dtype=torch.int64, device=images.device)
    distances = torch.empty((n, hp, wp), dtype=images.dtype, device=images.device)
    if indices.numel() == 0:
        return indices, distances
    if images.dtype == torch.float64:
        _launch(images, codebook, indices, distances, kh, kw, sh, sw, hp, wp, exact=True)
        return indices, distances
    unsure = _launch(images, codebook, indices, distances, kh, kw, sh, sw, hp, wp, exact=False)
    redo = unsure.nonzero().flatten()
    if redo.numel():
        _launch(images, codebook, indices, distances, kh, kw, sh, sw, hp, wp, exact=True, patches=redo)
    return indices, distances


@torch.library.custom_op("genkernels::som_patch_bmu_triton", mutates_args=())
def som_patch_bmu_triton(images: torch.Tensor, codebook: torch.Tensor, kh: int, kw: int, sh: int,
                         sw: int) -> tuple[torch.Tensor, torch.Tensor]:
    return som_patch_bmu_fwd(images, codebook, kh, kw, sh, sw)


@som_patch_bmu_triton.register_fake
def _som_patch_bmu_triton_fake(images, codebook, kh, kw, sh, sw):
    n, _, h, w = images.shape
    hp, wp = (h - kh) // sh + 1, (w - kw) // sw + 1
    return images.new_empty((n, hp, wp), dtype=torch.int64), images.new_empty((n, hp, wp))


def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def entry(dtype: str, exact: bool, listed: bool) -> TritonKernel:
        cfg = dict(PATCH_EXACT_CONFIG if exact else PATCH_DOT_CONFIG)
        acc = tl.float64 if dtype == "fp64" else tl.float32
        sig = {"IMAGES": ptr(dtype), "W": ptr(dtype), "INDICES": "*i64", "DISTANCES": ptr(dtype),
               "UNSURE": "*i64" if exact else "*i8", "PATCHES": "*i64", "WSQ_MAX": "*i64" if exact else "*fp32",
               "P": "i32", "K": "i32", "D": "i32", "HPWP": "i32", "WP": "i32", "KHKW": "i32", "KW": "i32",
               "stride_n": "i32", "stride_c": "i32", "stride_h": "i32", "ROW_STEP": "i32", "COL_STEP": "i32",
               "stride_wk": "i32", "C_BOUND": "fp32"}
        # contiguous images and codebook: the unit strides are specialised to constexpr 1 by the launcher
        meta = {"stride_w": 1, "stride_wd": 1, "EXACT": exact, "CERTIFY": not exact, "HAS_LIST": listed,
                "SLOTS": 1 if exact else PATCH_SLOTS, "ACC": acc, "BLOCK_P": cfg["BLOCK_P"],
                "BLOCK_K": cfg["BLOCK_K"], "BLOCK_D": cfg["BLOCK_D"]}
        tag = f"{dtype},{'exact' if exact else 'ranked'}" + (",listed" if listed else "")
        return TritonKernel("som", f"_som_patch_bmu_kernel[{tag}]", lambda: _som_patch_bmu_kernel, sig, meta,
                            cfg["num_warps"], cfg["num_stages"])

    # the ranking search (fp32, bf16 images), its exact re-search of listed patches, fp64
    return [entry("fp32", False, False), entry("bf16", False, False), entry("fp32", True, True),
            entry("fp64", True, False)]
