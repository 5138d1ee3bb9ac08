"""Pure-PyTorch specification of the patch SOM ops (``genkernels.PatchSOM``, op
``som_patch_bmu``): the test oracle.

A patch SOM's samples are the kh x kw patches of images (N, C, H, W) taken with strides
(sh, sw), no padding: Hp = (H - kh) // sh + 1 rows and Wp = (W - kw) // sw + 1 columns of
patches per image. Patch (n, i, j) is the vector of D = C kh kw values

    x[(c, a, b)] = images[n, c, i sh + a, j sw + b]      (c slowest, b fastest)

-- exactly a row of ``torch.nn.functional.unfold``'s output, so a codebook row reshapes to
a (C, kh, kw) filter. ``som_patch_bmu`` is then, by definition, unfold followed by the SOM
family's BMU search (reference.som_bmu, Euclidean, k = 1): the index of the nearest
codebook row of every patch, ties to the lowest index, and its (true, not squared)
Euclidean distance. The compiled backends read the patches from the image and never build
the (N Hp Wp, D) im2col matrix; this reference does, on tiles of images.

Shapes: N images, C channels, K codebook rows. Arithmetic in fp32 (fp64 for fp64 input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import reference

# Patch values (N Hp Wp D) the reference materialises at once.
_TILE_ELEMENTS = 1 << 22


def patch_grid(height: int, width: int, kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """(Hp, Wp): patches per column and per row of an image (no padding)."""
    return (height - kernel[0]) // stride[0] + 1, (width - kernel[1]) // stride[1] + 1


def extract_patches(images: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """images (N, C, H, W) -> (N Hp Wp, C kh kw) patches, row (n, i, j) in that order,
    features (c, a, b): torch.nn.functional.unfold, transposed. Fp16/bf16 are unfolded in fp32
    (the values are copied exactly)."""
    n = images.shape[0]
    x = images if images.dtype in (torch.float32, torch.float64) else images.float()
    cols = F.unfold(x, kernel, stride=stride)                      # (N, D, L)
    return cols.transpose(1, 2).reshape(n * cols.shape[2], cols.shape[1]).to(images.dtype)


def som_patch_bmu(images: torch.Tensor, codebook: torch.Tensor, kh: int, kw: int, sh: int,
                  sw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, C, H, W), codebook (K, C kh kw) -> indices (N, Hp, Wp) int64 and Euclidean
    distances (N, Hp, Wp) in images' dtype of every patch's nearest codebook row (lowest
    index on ties): reference.som_bmu of the unfolded patches, on tiles of images."""
    n, _, h, w = images.shape
    hp, wp = patch_grid(h, w, (kh, kw), (sh, sw))
    indices = torch.empty((n, hp, wp), dtype=torch.int64, device=images.device)
    distances = torch.empty((n, hp, wp), dtype=images.dtype, device=images.device)
    per_image = max(1, hp * wp * codebook.shape[1])
    step = max(1, _TILE_ELEMENTS // per_image)
    for start in range(0, n, step):
        part = images[start:start + step]
        idx, dist = reference.som_bmu(extract_patches(part, (kh, kw), (sh, sw)), codebook, 1, "euclidean")
        indices[start:start + step] = idx.reshape(part.shape[0], hp, wp)
        distances[start:start + step] = dist.reshape(part.shape[0], hp, wp)
    return indices, distances


def fold_patches(patches: torch.Tensor, size: tuple[int, int], kernel: tuple[int, int],
                 stride: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of extract_patches with overlaps averaged: patches (N, Hp, Wp, C kh kw)
    -> (images (N, C, H, W), coverage (1, 1, H, W)): every pixel the mean of the patch values
    that cover it (torch.nn.functional.fold of the values over fold of ones), 0 where no
    patch covers it (stride > kernel, or rows and columns past the last patch); coverage
    counts the patches over each pixel. In the accumulation dtype."""
    n, hp, wp, d = patches.shape
    dt = reference.acc_dtype(patches.dtype)
    cols = patches.to(dt).reshape(n, hp * wp, d).transpose(1, 2)
    summed = F.fold(cols, size, kernel, stride=stride)
    ones = torch.ones((1, d, hp * wp), dtype=dt, device=patches.device)
    coverage = F.fold(ones, size, kernel, stride=stride)[:, :1]
    return torch.where(coverage > 0, summed / coverage.clamp(min=1), torch.zeros((), dtype=dt)), coverage
