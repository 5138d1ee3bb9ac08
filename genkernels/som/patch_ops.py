"""Public op of the patch SOM: validation, declaration, dispatch.

Re-exported flat in ``genkernels.ops``. ``som_patch_bmu`` finds the nearest codebook row of
every kh x kw patch of a batch of images. It runs on ``reference``
(genkernels/som/patch_reference.py: unfold, then the SOM family's reference BMU search --
the specification), ``cpu`` (csrc/cpu/som_patch.cpp: the fused euclidean micro-kernel of
som_bmu with its rows gathered from the images; the scale guard and the finiteness check
in its own pass) and ``triton`` (genkernels/som/patch_triton.py: a program per block of
patches, loaded from the image through their offsets, the codebook streamed through it in
node tiles). The compiled backends never build the im2col matrix.

Not differentiable: the result is an index and the distance that decided it, returned
without autograd history (use ``genkernels.ops.som_bmu`` on unfolded patches, or the soft
SOM, for gradients).
"""

from __future__ import annotations

import numbers

import torch

from .. import registry
from .._checks import (
    acc_dtype,
    all_finite,
    check_float_tensor,
    check_int,
    check_same_device,
    check_same_dtype,
    compiling,
)
from . import patch_reference
from .ops import _ldexp, _scale_exponent


def _patch_fake(images, codebook, kh, kw, sh, sw):
    n, _, h, w = images.shape
    hp, wp = (h - kh) // sh + 1, (w - kw) // sw + 1
    return images.new_empty((n, hp, wp), dtype=torch.int64), images.new_empty((n, hp, wp))


# som_patch_bmu(images (N, C, H, W), codebook (K, C kh kw), kh, kw, sh, sw) -> (indices
# (N, Hp, Wp) int64, Euclidean distances (N, Hp, Wp) in images' dtype)
PATCH_BMU = registry.declare(
    "som_patch_bmu",
    reference=patch_reference.som_patch_bmu,
    cpu=registry.extension("som_patch_bmu"),
    triton=registry.lazy(__package__ + ".patch_triton", "som_patch_bmu_triton"),
    fake=_patch_fake)
registry.static_kernels("som.patch", registry.lazy(__package__ + ".patch_triton", "static_kernels"))


def pair(name: str, value) -> tuple[int, int]:
    """An int >= 1 or a pair of them as (rows, cols); TypeError / ValueError naming ``name``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints (rows, cols); got {value!r}")
        return check_int(name, value[0], 1), check_int(name, value[1], 1)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or a pair of ints (rows, cols); got {type(value).__name__} "
                        f"{value!r}")
    v = check_int(name, value, 1)
    return v, v


def check_patch_args(images: torch.Tensor, kernel_size, stride, codebook_width: int | None = None):
    """Validate images (N, C, H, W) float, kernel_size and stride against each other (and the
    codebook's width when given): returns ((kh, kw), (sh, sw))."""
    check_float_tensor("images", images, 4)
    kernel = pair("kernel_size", kernel_size)
    strides = pair("stride", stride)
    c, h, w = images.shape[1:]
    if kernel[0] > h or kernel[1] > w:
        raise ValueError(f"kernel_size {kernel} is larger than the images ({h}, {w}); a patch must fit inside "
                         "an image")
    if codebook_width is not None and codebook_width != c * kernel[0] * kernel[1]:
        raise ValueError(f"codebook has {codebook_width} columns but images with {c} channel(s) and "
                         f"{kernel[0]} x {kernel[1]} patches need channels * kh * kw = {c * kernel[0] * kernel[1]}")
    return kernel, strides


def som_patch_bmu(images: torch.Tensor, codebook: torch.Tensor, kernel_size, stride=1, *,
                  backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-matching codebook row of every patch of a batch of images, read from the images.

    Args:
        images: (N, C, H, W) float.
        codebook: (K, C * kh * kw) float, same dtype and device, K >= 1; row k reshapes to a
            (C, kh, kw) filter (the feature order of ``torch.nn.functional.unfold``).
        kernel_size: kh x kw patches: an int or (kh, kw), at most the image size.
        stride: an int >= 1 or (sh, sw); no padding.
        backend: None (auto), "reference", "cpu" or "triton".

    Returns:
        indices (N, Hp, Wp) int64 and Euclidean distances (N, Hp, Wp) in images' dtype, with
        Hp = (H - kh) // sh + 1 and Wp = (W - kw) // sw + 1: the nearest codebook row of patch
        (n, i, j) -- pixels [i sh, i sh + kh) x [j sw, j sw + kw) of image n -- and its true
        (not squared) distance. Equal to ``som_bmu(unfold(images).transpose(1, 2).reshape(-1,
        C kh kw), codebook)`` reshaped (the reference backend computes exactly that); ties
        break to the lowest index; arithmetic in fp32 (fp64 for fp64 input). The compiled
        backends read the patches from the images: no (N Hp Wp, C kh kw) matrix is built.

    Not differentiable: the outputs carry no autograd history. Images and codebook must be
    finite (a ValueError names the one that is not); data far outside unit scale runs on
    power-of-two-scaled copies, as in ``som_bmu``.
    """
    check_float_tensor("images", images, 4)
    check_float_tensor("codebook", codebook, 2)
    check_same_device(images=images, codebook=codebook)
    check_same_dtype(images=images, codebook=codebook)
    kernel, strides = check_patch_args(images, kernel_size, stride, codebook.shape[1])
    if codebook.shape[0] == 0:
        raise ValueError(f"codebook must hold at least one row; got shape {tuple(codebook.shape)}")
    name = PATCH_BMU.resolve(images.device, backend)
    images, codebook = images.detach(), codebook.detach()
    if name == "cpu":  # finiteness check and scale guard in the kernel (csrc/cpu/som_patch.cpp)
        return PATCH_BMU.kernels[name](images, codebook, *kernel, *strides)
    e = 0
    if not compiling() and images.device.type != "meta":
        for arg, t in (("images", images), ("codebook", codebook)):
            if not all_finite(t):
                raise ValueError(f"{arg} contains NaN or Inf")
        # the scale guard of som_bmu for D = C kh kw features (its x argument sets D)
        e = _scale_exponent(codebook, images)[0]
    if not e:
        return PATCH_BMU.kernels[name](images, codebook, *kernel, *strides)
    idx, dist = PATCH_BMU.kernels[name](_ldexp(images, -e), _ldexp(codebook, -e), *kernel, *strides)
    return idx, _ldexp(dist.to(acc_dtype(dist.dtype)), e).to(dist.dtype)

