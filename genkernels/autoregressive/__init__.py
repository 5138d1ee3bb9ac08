"""Masked autoregressive models: the masked convolution (kernels and the MaskedConv2d layer)."""
from .layers import MaskedConv2d
from .ops import masked_conv2d

__all__ = ["MaskedConv2d", "masked_conv2d"]
