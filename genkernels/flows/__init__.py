"""Normalizing flows: invertible transforms with tractable log-determinants -- the fused
affine coupling op, the coupling layers built on it, their masks and conditioners, and
Glow's and RealNVP's other invertible layers (squeeze, ActNorm, invertible 1x1 convolution),
the masked autoregressive flows (MAF, IAF) on the masked-models family's MADE, and the
neural spline flows (the fused rational-quadratic spline op, spline couplings and
autoregressive spline transforms, NSF)."""
from .autoregressive import MaskedAffineAutoregressive, MaskedSplineAutoregressive
from .base import FlowDistribution, InvertibilityWarning
from .coupling import (
    MLP,
    AdditiveCoupling,
    AffineCoupling,
    KeptMLP,
    ResNet,
    SplineCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from .layers import ActNorm, InvConv1x1, LogitTransform, Squeeze, dequantize
from .models import IAF, MAF, NSF, Glow, RealNVP
from .ops import actnorm, affine_coupling, rq_spline

__all__ = ["ActNorm", "actnorm", "AdditiveCoupling", "AffineCoupling", "FlowDistribution", "Glow", "IAF", "InvConv1x1",
           "InvertibilityWarning", "KeptMLP", "LogitTransform", "MAF", "MLP", "MaskedAffineAutoregressive",
           "MaskedSplineAutoregressive", "NSF", "RealNVP", "ResNet", "SplineCoupling", "Squeeze", "affine_coupling",
           "alternating_mask", "channel_mask", "checkerboard_mask", "dequantize", "half_mask", "rq_spline"]
