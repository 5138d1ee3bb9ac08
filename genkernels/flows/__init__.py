"""Normalizing flows: invertible transforms with tractable log-determinants -- the fused
affine coupling op, the coupling layers built on it, their masks and conditioners."""
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
from .ops import affine_coupling

__all__ = ["MLP", "AdditiveCoupling", "AffineCoupling", "ResNet", "affine_coupling", "alternating_mask",
           "channel_mask", "checkerboard_mask", "half_mask"]
