"""Masked autoregressive models: the masked convolution (kernels and the MaskedConv2d layer)
and the Gated PixelCNN."""
from .layers import MaskedConv2d
from .ops import masked_conv2d
from .pixelcnn import GatedPixelCNN

__all__ = ["GatedPixelCNN", "MaskedConv2d", "masked_conv2d"]
