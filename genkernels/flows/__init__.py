"""Normalizing flows: invertible transforms with tractable log-determinants -- the fused
affine coupling op, the coupling layers built on it, their masks and conditioners, and
Glow's and RealNVP's other invertible layers (squeeze, ActNorm, invertible 1x1 convolution),
and the masked autoregressive flows (MAF, IAF) on the masked-models family's MADE."""
from .autoregressive import MaskedAffineAutoregressive
from .coupling import (
    MLP,
    AdditiveCoupling,
    AffineCoupling,
    ResNet,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from .layers import ActNorm, InvConv1x1, Squeeze
from .models import IAF, MAF, Glow, RealNVP
from .ops import affine_coupling

__all__ = ["IAF", "MAF", "ActNorm", "AdditiveCoupling", "AffineCoupling", "Glow", "InvConv1x1", "MLP",
           "MaskedAffineAutoregressive", "RealNVP", "ResNet", "Squeeze",
           "affine_coupling", "alternating_mask", "channel_mask", "checkerboard_mask", "half_mask"]
