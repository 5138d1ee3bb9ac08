"""The masked layers of autoregressive models: ``MaskedConv2d`` (PixelCNN's masked
convolution). Each is a drop-in ``nn.Module`` over this family's ops."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_choice, check_int
from .conv_ops import check_channel_groups, check_kernel_size, check_rules, masked_conv2d
from .conv_reference import MASK_TYPES, dense_mask, kept_taps, tap_rules
from .gate_ops import masked_conv2d_gated


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``device``'s type when autocast is on there, else None."""
    kind = device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


class MaskedConv2d(nn.Module):
    """A PixelCNN masked convolution: output pixel (y, x) sees only the input pixels before
    it in raster order (and, inside the pixel, the channel groups before its own -- type A
    -- or up to its own -- type B).

    Args:
        in_channels, out_channels: channel counts, each divisible by ``channel_groups``.
        kernel_size: an odd int or (odd, odd).
        mask_type: "A" (the first layer: the pixel itself is hidden) or "B".
        channel_groups: groups of channels in pixel order (3 for RGB: R, G, B); the output
            channels are split into the same groups, group g predicting colour g.
        dilation: the taps' spacing (padding keeps the image size).
        bias: learn a bias per output channel.
        rules: instead of mask_type, one tap rule per tap (see
            genkernels.autoregressive.conv_reference): e.g. the stacks of a Gated PixelCNN.
        backend: None (auto), "reference", "cpu" or "triton".

    ``forward(x (B, in_channels, H, W))`` -> (B, out_channels, H, W). The weight is a full
    (out, in, kh, kw) parameter; its masked entries never act and get zero gradients. Under
    ``torch.autocast`` the layer runs in the autocast dtype (arithmetic in fp32).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, mask_type: str = "B",
                 channel_groups: int = 1, dilation: int = 1, bias: bool = True, *, rules=None,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.out_channels = check_int("out_channels", out_channels, 1)
        self.kernel_size = check_kernel_size(kernel_size)
        self.channel_groups = check_channel_groups(channel_groups, in_channels, out_channels)
        self.dilation = check_int("dilation", dilation, 1)
        if rules is None:
            self.mask_type = check_choice("mask_type", mask_type, MASK_TYPES)
            self.rules = tap_rules(self.kernel_size, mask_type, self.channel_groups)
        else:
            self.mask_type = "custom"
            self.rules = tuple(check_rules(rules, self.kernel_size))
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's initialisation with the fan-in of the taps the mask keeps (so a
        masked layer's outputs start at the scale of a dense one's)."""
        fan_in = max(1, self.in_channels * kept_taps(self.rules))
        bound = 1 / math.sqrt(fan_in)
        with torch.no_grad():
            self.weight.uniform_(-math.sqrt(3) * bound, math.sqrt(3) * bound)   # kaiming_uniform(a=sqrt(5))'s scale
            self.weight.mul_(self.mask().to(self.weight.dtype))
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def mask(self) -> torch.Tensor:
        """(out, in, kh, kw) 0/1 float mask of the taps and channel groups used."""
        return dense_mask(self.rules, self.out_channels, self.in_channels, self.kernel_size, self.channel_groups,
                          device=self.weight.device)

    def _operands(self, x):
        """x, weight and bias in the dtype the layer runs in (autocast's, else the weight's)."""
        weight, bias = self.weight, self.bias
        dt = _autocast_dtype(x.device) if isinstance(x, torch.Tensor) else None
        if dt is not None:
            x, weight = x.to(dt), weight.to(dt)
            bias = None if bias is None else bias.to(dt)
        elif isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != weight.dtype:
            x = x.to(weight.dtype)
        return x, weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, bias = self._operands(x)
        return masked_conv2d(x, weight, bias, channel_groups=self.channel_groups, dilation=self.dilation,
                             rules=list(self.rules), backend=self.backend)

    def gated(self, x: torch.Tensor, addend: torch.Tensor | None = None, return_pre: bool = False):
        """tanh(a) * sigmoid(b) of this layer's output plus addend, in one op
        (genkernels.ops.masked_conv2d_gated): out_channels in channel_groups blocks of
        [a | b] -> (B, out_channels / 2, H, W) (with return_pre: (out, the gate's input))."""
        x, weight, bias = self._operands(x)
        if addend is not None and addend.dtype != x.dtype:
            addend = addend.to(x.dtype)
        return masked_conv2d_gated(x, weight, bias, addend, channel_groups=self.channel_groups,
                                   dilation=self.dilation, rules=list(self.rules), backend=self.backend,
                                   return_pre=return_pre)

    def extra_repr(self) -> str:
        kh, kw = self.kernel_size
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=({kh}, {kw}), mask_type={self.mask_type!r}, "
                f"channel_groups={self.channel_groups}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"taps={kept_taps(self.rules)}/{kh * kw}")
