"""Pure-PyTorch specification of the masked convolution (``genkernels.MaskedConv2d``, op
``masked_conv2d``).

An autoregressive image model orders the pixels in raster order (row by row, left to
right) and, inside a pixel, its channels in ``channel_groups`` groups (R before G before B
for colour images: the input channels and the output channels are each split into that
many contiguous groups). A masked convolution computes output pixel (y, x) from the inputs
that come before it in that order only. Its mask is a grid of *tap rules*, one per kernel
tap (ky, kx) of a (kh, kw) kernel with odd sides and its centre at (kh // 2, kw // 2):

    OFF        (0)  the tap is not used
    FULL       (1)  every input channel reaches every output channel
    STRICT     (2)  output group g sees input groups < g    (the centre of a type-A mask)
    INCLUSIVE  (3)  output group g sees input groups <= g   (the centre of a type-B mask)

Type A (the first layer, which must not see the pixel it predicts) and type B (later
layers) keep the taps before the centre in raster order (FULL) and the centre (STRICT /
INCLUSIVE); the taps after it are OFF. A 7x7 type-A mask keeps 24 of 49 taps (and, with one
group, drops the centre). :func:`tap_rules` builds them; the Gated PixelCNN's vertical and
horizontal stacks use other grids of the same rules.

With x (B, Cin, H, W), weight (Cout, Cin, kh, kw) and bias (Cout,) or None:

    out = conv2d(x, weight * mask, bias, padding=(d (kh // 2), d (kw // 2)), dilation=d)

(B, Cout, H, W): "same" size, stride 1, dilation d; mask (Cout, Cin, kh, kw) in {0, 1} from
the rules (:func:`dense_mask`). Weights under an OFF tap (or outside a group rule) get a zero
gradient. The kernels compute the same without multiplying the zeros: they visit only the
taps (and channel groups) the rules keep.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OFF, FULL, STRICT, INCLUSIVE = 0, 1, 2, 3
RULES = (OFF, FULL, STRICT, INCLUSIVE)
MASK_TYPES = ("A", "B")


def tap_rules(kernel_size: tuple[int, int], mask_type: str, channel_groups: int = 1) -> tuple[int, ...]:
    """The rules of a type-A or type-B mask, row-major (kh * kw,).

    The taps before the centre in raster order are FULL, the centre STRICT (A) or INCLUSIVE
    (B), the rest OFF; with one channel group the centre is OFF (A) or FULL (B).
    """
    kh, kw = kernel_size
    cy, cx = kh // 2, kw // 2
    centre = {"A": STRICT, "B": INCLUSIVE}[mask_type]
    if channel_groups == 1:
        centre = OFF if centre == STRICT else FULL
    rules = []
    for ky in range(kh):
        for kx in range(kw):
            before = ky < cy or (ky == cy and kx < cx)
            rules.append(FULL if before else centre if (ky, kx) == (cy, cx) else OFF)
    return tuple(rules)


def group_rule_mask(rule: int, c_out: int, c_in: int, channel_groups: int) -> torch.Tensor:
    """(c_out, c_in) bool: which input channels reach which output channels under ``rule``."""
    if rule == OFF:
        return torch.zeros(c_out, c_in, dtype=torch.bool)
    if rule == FULL:
        return torch.ones(c_out, c_in, dtype=torch.bool)
    g_out = torch.arange(c_out) // (c_out // channel_groups)
    g_in = torch.arange(c_in) // (c_in // channel_groups)
    return g_in[None, :] < g_out[:, None] if rule == STRICT else g_in[None, :] <= g_out[:, None]


def dense_mask(rules, c_out: int, c_in: int, kernel_size: tuple[int, int], channel_groups: int = 1,
               dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(Cout, Cin, kh, kw) 0/1 mask of the rules (row-major, kh * kw of them)."""
    kh, kw = kernel_size
    rules = [int(rule) for rule in rules]
    r = torch.tensor(rules, dtype=torch.int64).view(1, 1, kh, kw)
    mask = (r == FULL).expand(c_out, c_in, kh, kw)
    if any(rule >= STRICT for rule in rules):
        g_out = torch.arange(c_out) // (c_out // channel_groups)
        g_in = torch.arange(c_in) // (c_in // channel_groups)
        lower = (g_in[None, :] < g_out[:, None])[:, :, None, None]
        lower_eq = (g_in[None, :] <= g_out[:, None])[:, :, None, None]
        mask = mask | ((r == STRICT) & lower) | ((r == INCLUSIVE) & lower_eq)
    return mask.to(dtype=dtype, device=device)


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rules, channel_groups: int = 1,
                  dilation: int = 1) -> torch.Tensor:
    """The definition: conv2d of the masked weight, "same" padding (differentiable)."""
    c_out, c_in, kh, kw = weight.shape
    mask = dense_mask(rules, c_out, c_in, (kh, kw), channel_groups, weight.dtype, weight.device)
    return F.conv2d(x, weight * mask, bias, padding=(dilation * (kh // 2), dilation * (kw // 2)), dilation=dilation)


def kept_taps(rules) -> int:
    """How many taps the rules use (any rule but OFF)."""
    return sum(1 for r in rules if r != OFF)

