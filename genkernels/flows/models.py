"""The flow models: RealNVP (Dinh et al., 2017) and Glow (Kingma and Dhariwal, 2018), flows of
affine couplings with a standard normal base.

RealNVP.

For images (C, H, W), its multi-scale architecture: every scale but the last runs three
checkerboard couplings (alternating parity), a squeeze (C, H, W) -> (4C, H/2, W/2), three
channel-wise couplings, and factors out half of the channels (they go straight to the
latent); the last scale runs four checkerboard couplings. Each coupling is preceded by an
ActNorm (Glow's data-initialised normalisation, in place of the paper's batch norm). For
vectors (D,), ``layers`` couplings on alternating halves, each after an ActNorm.

``forward(x) -> (z, logdet)`` maps data to the flat latent (B, D) (the factored-out parts
and the last scale's output, flattened and concatenated), ``inverse(z) -> (x, logdet)``
maps back; ``log_prob(x)`` = log N(z; 0, I) + logdet (nats), ``bits_per_dim(x)``;
``sample(n, seed, temperature)`` draws z from genkernels' Philox stream (``seed``: a
reproducible draw) times the temperature (Glow's reduced-temperature sampling).

Glow. ``levels`` levels, each a squeeze (C, H, W) -> (4C, H/2, W/2), ``steps`` flow steps
(ActNorm, an invertible 1x1 convolution, an affine coupling on half the channels) and, but
for the last level, half of the channels factored out. The same interface as RealNVP.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_int
from . import spline_reference
from .autoregressive import (
    MaskedAffineAutoregressive,
    MaskedSplineAutoregressive,
    _hidden,
)
from .base import _Flow, run_steps
from .coupling import (
    AffineCoupling,
    KeptMLP,
    SplineCoupling,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from .layers import ActNorm, InvConv1x1, Squeeze


class _Scale(nn.Module):
    """One scale of the image architecture: couplings on (c, h, w); unless last, a squeeze,
    channel couplings on (4c, h/2, w/2) and a factor-out of 2c channels."""

    def __init__(self, shape: tuple[int, int, int], last: bool, hidden: int, bound: float, context: int | None,
                 backend: str | None):
        super().__init__()
        c, h, w = shape
        self.last = last
        # what the block passes on and what it factors out (None: nothing)
        self.out_shape = (c, h, w) if last else (2 * c, h // 2, w // 2)
        self.z_shape = None if last else (2 * c, h // 2, w // 2)
        steps = []
        for i in range(4 if last else 3):
            steps += [ActNorm(c, backend=backend),
                      AffineCoupling(checkerboard_mask((c, h, w), i % 2), hidden=hidden, scale_bound=bound,
                                     context_features=context, backend=backend)]
        self.pre = nn.ModuleList(steps)
        if not last:
            self.squeeze = Squeeze(2)
            steps = []
            for i in range(3):
                steps += [ActNorm(4 * c, backend=backend),
                          AffineCoupling(channel_mask(4 * c, i % 2), hidden=hidden, scale_bound=bound,
                                         context_features=context, backend=backend)]
            self.post = nn.ModuleList(steps)

    check_finite = False
    invertible_checkpoint = False

    def forward(self, x, context):
        x, logdet = run_steps(self.pre, x, context, False, self.check_finite, self.invertible_checkpoint)
        if self.last:
            return x, None, logdet
        x, _ = self.squeeze(x)
        x, ld = run_steps(self.post, x, context, False, self.check_finite, self.invertible_checkpoint)
        half = x.shape[1] // 2
        return x[:, :half], x[:, half:], logdet + ld

    def inverse(self, h, z, context):
        if not self.last:
            x, logdet = run_steps(self.post, torch.cat([h, z], dim=1), context, True, self.check_finite)
            h, _ = self.squeeze.inverse(x)
        else:
            logdet = None
        x, ld = run_steps(self.pre, h, context, True, self.check_finite)
        return x, ld if logdet is None else logdet + ld


class RealNVP(_Flow):
    """A RealNVP flow on images (``shape`` = (C, H, W); H and W divisible by 2^(scales - 1))
    or vectors (``shape`` = (D,), D >= 2).

    Args:
        shape: one sample's shape.
        scales: image scales (>= 1). layers: couplings of a vector flow (>= 1).
        hidden: the conditioners' width (ResNet channels for images, MLP units for vectors).
        scale_bound: the couplings' log-scale bound (see AffineCoupling).
        context_features: K for a conditional flow (every conditioner gets the context).
        backend: the fused ops' backend, the couplings' and the ActNorms' (None: automatic).
        seed: the model's Philox stream (sampling, fit's shuffles and dequantisation).
        logit_alpha: model data in [0, 1] through RealNVP's logit preprocessing
            (``LogitTransform(alpha)``, part of the density) -- None: data as it comes.
    """

    def __init__(self, shape, *, scales: int = 2, layers: int = 6, hidden: int = 64, scale_bound: float = 2.0,
                 context_features: int | None = None, backend: str | None = None, seed: int | None = None,
                 logit_alpha: float | None = None):
        config = dict(locals())
        super().__init__()
        self._init_flow(config, seed, logit_alpha)
        shape = tuple(int(n) for n in shape) if isinstance(shape, (tuple, list, torch.Size)) else None
        if shape is None or len(shape) not in (1, 3) or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) or (D,) of positive sizes; got {shape}")
        self.shape, self.features = shape, math.prod(shape)
        self.context_features = context_features
        if len(shape) == 3:
            c, h, w = shape
            self.scales = check_int("scales", scales, 1)
            f = 2 ** (self.scales - 1)
            if h % f or w % f:
                raise ValueError(f"{self.scales} scales halve H and W {self.scales - 1} times: they must be divisible "
                                 f"by {f}; got {h} x {w}")
            blocks = []
            for i in range(self.scales):
                last = i == self.scales - 1
                blocks.append(_Scale((c, h, w), last, hidden, scale_bound, context_features, backend))
                c, h, w = 2 * c, h // 2, w // 2
            self.blocks = nn.ModuleList(blocks)
        else:
            (d,) = shape
            check_int("features", d, 2)
            check_int("layers", layers, 1)
            steps = []
            for i in range(layers):
                steps += [ActNorm(d, backend=backend),
                          AffineCoupling(half_mask(d, i % 2), hidden=hidden, scale_bound=scale_bound,
                                         context_features=context_features, backend=backend)]
            self.steps = nn.ModuleList(steps)


class _Level(nn.Module):
    """One Glow level: a squeeze of (c, h, w), ``steps`` flow steps on (4c, h/2, w/2), and
    unless last, a factor-out of 2c channels."""

    check_finite = False
    invertible_checkpoint = False

    def __init__(self, shape: tuple[int, int, int], steps: int, last: bool, hidden: int, bound: float,
                 context: int | None, backend: str | None, seed: int | None):
        super().__init__()
        c, h, w = shape
        c4 = 4 * c
        self.last = last
        self.squeeze = Squeeze(2)
        self.out_shape = (c4, h // 2, w // 2) if last else (2 * c, h // 2, w // 2)
        self.z_shape = None if last else (2 * c, h // 2, w // 2)
        layers = []
        for i in range(steps):
            layers += [ActNorm(c4, backend=backend), InvConv1x1(c4, seed=None if seed is None else seed + i),
                       AffineCoupling(channel_mask(c4, i % 2), hidden=hidden, scale_bound=bound,
                                      context_features=context, backend=backend)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x, context):
        x, _ = self.squeeze(x)
        x, logdet = run_steps(self.layers, x, context, False, self.check_finite,
                                      self.invertible_checkpoint)
        if self.last:
            return x, None, logdet
        half = x.shape[1] // 2
        return x[:, :half], x[:, half:], logdet

    def inverse(self, h, z, context):
        x = h if z is None else torch.cat([h, z], dim=1)
        x, logdet = run_steps(self.layers, x, context, True, self.check_finite)
        return self.squeeze.inverse(x)[0], logdet


class Glow(_Flow):
    """A Glow flow on images (``shape`` = (C, H, W); H and W divisible by 2^levels).

    Args:
        shape: one image's shape. levels: squeeze-and-split levels (>= 1). steps: flow steps
            per level (>= 1): ActNorm, invertible 1x1 convolution (LU), affine coupling.
        hidden: the couplings' ResNet width. scale_bound, context_features, backend: as
            RealNVP's. seed: the model's Philox stream and the 1x1 convolutions' starting
            rotations (None: torch's generator). logit_alpha: as RealNVP's.
    """

    def __init__(self, shape, *, levels: int = 2, steps: int = 4, hidden: int = 64, scale_bound: float = 2.0,
                 context_features: int | None = None, backend: str | None = None, seed: int | None = None,
                 logit_alpha: float | None = None):
        config = dict(locals())
        super().__init__()
        self._init_flow(config, seed, logit_alpha)
        shape = tuple(int(n) for n in shape) if isinstance(shape, (tuple, list, torch.Size)) else None
        if shape is None or len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) of positive sizes; got {shape}")
        self.shape, self.features = shape, math.prod(shape)
        self.context_features = context_features
        self.levels = check_int("levels", levels, 1)
        check_int("steps", steps, 1)
        c, h, w = shape
        f = 2 ** self.levels
        if h % f or w % f:
            raise ValueError(f"{self.levels} levels halve H and W {self.levels} times: they must be divisible by "
                             f"{f}; got {h} x {w}")
        blocks = []
        for i in range(self.levels):
            block = _Level((c, h, w), steps, i == self.levels - 1, hidden, scale_bound, context_features, backend,
                           None if seed is None else seed + 1000 * i)
            blocks.append(block)
            c, h, w = block.out_shape
        self.blocks = nn.ModuleList(blocks)


class MAF(_Flow):
    """A masked autoregressive flow of vectors (``shape`` = (D,) or D): ``layers`` MADE-
    conditioned affine autoregressive transforms, each after an ActNorm, their orders
    alternating natural and reversed. Density evaluation (``log_prob``, training) is one
    MADE pass a layer; sampling solves each layer one dimension at a time (D passes).

    Args:
        shape: (D,) or D (>= 1).
        layers: transforms (>= 1). hidden: each MADE's hidden sizes (an int: two of that size).
        scale_bound, context_features, backend: as RealNVP's; made_backend: the MADEs'
            masked linear layers' backend.
        actnorm: an ActNorm before each transform.
        seed: the model's Philox stream (sampling, fit's shuffles).
    """

    _inverse_autoregressive = False

    def __init__(self, shape, *, layers: int = 5, hidden=64, scale_bound: float = 2.0,
                 context_features: int | None = None, actnorm: bool = True, backend: str | None = None,
                 made_backend: str | None = None, seed: int | None = None):
        config = dict(locals())
        super().__init__()
        self._init_flow(config, seed)
        self.shape, self.features = _vector_shape(shape, 1)
        self.context_features = context_features
        check_int("layers", layers, 1)
        hidden = _hidden(hidden)
        steps = []
        for i in range(layers):
            if actnorm:
                steps.append(ActNorm(self.features, backend=backend))
            steps.append(MaskedAffineAutoregressive(
                self.features, hidden, order="natural" if i % 2 == 0 else "reversed", scale_bound=scale_bound,
                context_features=context_features, inverse_autoregressive=self._inverse_autoregressive,
                backend=backend, made_backend=made_backend))
        self.steps = nn.ModuleList(steps)


class NSF(_Flow):
    """A neural spline flow of vectors (Durkan et al., 2019): ``layers`` rational-quadratic
    spline transforms, each after an ActNorm -- autoregressive (RQ-NSF (AR): a MADE per
    layer, orders alternating; density in one pass, sampling in D) or, with
    ``coupling=True``, couplings on alternating halves (RQ-NSF (C): both directions in one
    pass; D >= 2).

    Args:
        shape: (D,) or D. layers: transforms (>= 1). bins: K per spline (>= 1). bound: the
            splines' interval half-width (identity outside).
        hidden: the conditioners' hidden sizes (an int: two layers of that size).
        coupling: couplings instead of autoregressive transforms.
        context_features, actnorm, backend (the spline op's and the ActNorms'), made_backend, seed: as
            MAF's.
    """

    def __init__(self, shape, *, layers: int = 5, bins: int = 8, bound: float = 3.0, hidden=64,
                 coupling: bool = False, context_features: int | None = None, actnorm: bool = True,
                 backend: str | None = None, made_backend: str | None = None, seed: int | None = None):
        config = dict(locals())
        super().__init__()
        self._init_flow(config, seed)
        self.shape, self.features = _vector_shape(shape, 2 if coupling else 1)
        self.context_features = context_features
        check_int("layers", layers, 1)
        check_int("bins", bins, 1)
        hidden = _hidden(hidden)
        d = self.features
        steps = []
        for i in range(layers):
            if actnorm:
                steps.append(ActNorm(d, backend=backend))
            if coupling:
                mask = half_mask(d, i % 2)
                # the kept half in, the transformed half's spline parameters out, starting at the identity
                net = KeptMLP(mask, 3 * bins - 1, True, hidden[0], len(hidden), context_features)
                spline_reference.identity_bias(net.out.bias, net.out.out_features // (3 * bins - 1), bins)
                steps.append(SplineCoupling(mask, net, bins=bins, bound=bound, backend=backend))
            else:
                steps.append(MaskedSplineAutoregressive(
                    d, hidden, bins=bins, bound=bound, order="natural" if i % 2 == 0 else "reversed",
                    context_features=context_features, backend=backend, made_backend=made_backend))
        self.steps = nn.ModuleList(steps)


def _vector_shape(shape, low: int) -> tuple[tuple[int], int]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    shape = tuple(int(n) for n in shape) if isinstance(shape, (tuple, list, torch.Size)) else None
    if shape is None or len(shape) != 1 or shape[0] < low:
        raise ValueError(f"shape must be (D,) or D with D >= {low}; got {shape}")
    return shape, shape[0]


class IAF(MAF):
    """An inverse autoregressive flow of vectors: MAF's architecture with every transform
    inverted (its MADE reads the noise side). Sampling (``sample``, ``inverse``) and
    ``rsample``-style reparameterised draws are one MADE pass a layer; ``log_prob`` of an
    arbitrary x solves each layer one dimension at a time (D passes). The flow of choice for
    variational posteriors. Arguments as MAF's."""

    _inverse_autoregressive = True


__all__ = ["IAF", "MAF", "NSF", "Glow", "RealNVP"]
