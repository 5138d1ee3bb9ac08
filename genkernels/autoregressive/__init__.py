"""Masked autoregressive models: the masked convolution and linear layers (kernels and the
MaskedConv2d / MaskedLinear layers), the Gated PixelCNN, MADE, and the causality check."""
from .causality import AutoregressiveReport, check_autoregressive
from .layers import MaskedConv2d
from .made import MADE, MaskedLinear
from .mlp_ops import runs_fused as masked_mlp_runs_fused
from .ops import masked_conv2d, masked_linear, masked_mlp
from .pixelcnn import GatedPixelCNN

__all__ = ["MADE", "AutoregressiveReport", "GatedPixelCNN", "MaskedConv2d", "MaskedLinear", "check_autoregressive",
           "masked_conv2d", "masked_linear", "masked_mlp", "masked_mlp_runs_fused"]
