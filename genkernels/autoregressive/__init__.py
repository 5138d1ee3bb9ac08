"""Masked autoregressive models: the masked convolution (kernels and the MaskedConv2d layer),
the Gated PixelCNN, and the causality check."""
from .causality import AutoregressiveReport, check_autoregressive
from .layers import MaskedConv2d
from .ops import masked_conv2d
from .pixelcnn import GatedPixelCNN

__all__ = ["AutoregressiveReport", "GatedPixelCNN", "MaskedConv2d", "check_autoregressive", "masked_conv2d"]
