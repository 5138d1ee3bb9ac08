"""Pure-PyTorch specification of the gated masked convolution (op ``masked_conv2d_gated``):
a Gated PixelCNN layer's convolution followed by its gated activation tanh(a) * sigmoid(b)
(van den Oord et al., 2016), the convolution as conv_reference specifies it."""

from __future__ import annotations

import torch

from .conv_reference import masked_conv2d


def gate(t: torch.Tensor, channel_groups: int = 1) -> torch.Tensor:
    """The gated activation of a Gated PixelCNN: t (B, 2p, H, W), whose channels are
    ``channel_groups`` blocks of [a | b] (each block 2p / G channels: its first half a, its
    second half b) -> tanh(a) * sigmoid(b), (B, p, H, W), the groups kept in order."""
    b, c2, h, w = t.shape
    t = t.view(b, channel_groups, 2, c2 // (2 * channel_groups), h, w)
    return (torch.tanh(t[:, :, 0]) * torch.sigmoid(t[:, :, 1])).reshape(b, c2 // 2, h, w)


def masked_conv2d_gated(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        addend: torch.Tensor | None, rules, channel_groups: int = 1,
                        dilation: int = 1) -> torch.Tensor:
    """The gated masked convolution (op ``masked_conv2d_gated``): gate(masked_conv2d(x, ...)
    + addend) with addend (B, Cout, H, W) or None (e.g. the vertical stack's link and a
    condition in a Gated PixelCNN layer); Cout divisible by 2 channel_groups -> (B, Cout / 2,
    H, W) (differentiable)."""
    pre = masked_conv2d(x, weight, bias, rules, channel_groups, dilation)
    return gate(pre if addend is None else pre + addend, channel_groups)
