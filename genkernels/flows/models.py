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

from .. import random as gk_random
from .._checks import check_int
from .autoregressive import MaskedAffineAutoregressive, _hidden
from .coupling import AffineCoupling, channel_mask, checkerboard_mask, half_mask
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
            steps += [ActNorm(c), AffineCoupling(checkerboard_mask((c, h, w), i % 2), hidden=hidden,
                                                 scale_bound=bound, context_features=context, backend=backend)]
        self.pre = nn.ModuleList(steps)
        if not last:
            self.squeeze = Squeeze(2)
            steps = []
            for i in range(3):
                steps += [ActNorm(4 * c), AffineCoupling(channel_mask(4 * c, i % 2), hidden=hidden, scale_bound=bound,
                                                         context_features=context, backend=backend)]
            self.post = nn.ModuleList(steps)

    check_finite = False

    @staticmethod
    def _run(steps, x, context, inverse: bool, check: bool = False):
        total = None
        order = list(enumerate(steps))
        for i, step in (reversed(order) if inverse else order):
            if getattr(step, "takes_context", False):
                x, ld = step.inverse(x, context) if inverse else step(x, context)
            else:
                x, ld = step.inverse(x) if inverse else step(x)
            if check and not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(ld).all())):
                raise FloatingPointError(
                    f"{type(step).__name__} (step {i} of its block, {'inverse' if inverse else 'forward'}) produced "
                    "NaN or Inf: its input was finite. Lower the learning rate or the coupling's scale_bound, or "
                    "check the data's scale")
            total = ld if total is None else total + ld
        return x, total

    def forward(self, x, context):
        x, logdet = self._run(self.pre, x, context, False, self.check_finite)
        if self.last:
            return x, None, logdet
        x, _ = self.squeeze(x)
        x, ld = self._run(self.post, x, context, False, self.check_finite)
        half = x.shape[1] // 2
        return x[:, :half], x[:, half:], logdet + ld

    def inverse(self, h, z, context):
        if not self.last:
            x, logdet = self._run(self.post, torch.cat([h, z], dim=1), context, True, self.check_finite)
            h, _ = self.squeeze.inverse(x)
        else:
            logdet = None
        x, ld = self._run(self.pre, h, context, True, self.check_finite)
        return x, ld if logdet is None else logdet + ld


class _Flow(nn.Module):
    """What the flow models share: argument checks, the flat latent's bookkeeping over a
    list of multi-scale blocks (``self.blocks``, each with ``out_shape`` and ``z_shape``) or
    a flat list of steps (``self.steps``), log_prob, bits_per_dim and sampling."""

    shape: tuple
    features: int

    @property
    def check_finite(self) -> bool:
        """When True, every layer's output and log-determinant are checked finite as they
        are made (a device sync per layer): a NaN or Inf raises FloatingPointError naming
        the layer that produced it, instead of surfacing as a NaN loss later."""
        return bool(getattr(self, "_check_finite", False))

    @check_finite.setter
    def check_finite(self, flag: bool) -> None:
        object.__setattr__(self, "_check_finite", bool(flag))
        for block in self.modules():
            if isinstance(block, (_Scale, _Level)):
                block.check_finite = bool(flag)

    def _check(self, x, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        want = self.shape if name == "x" else (self.features,)
        if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{name} must be (B, {', '.join(map(str, want))}); got shape {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
        return x

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Data (B, *shape) -> latent (B, D) and log |det| of the map (B,)."""
        self._check(x, "x")
        if len(self.shape) == 1:
            return _Scale._run(self.steps, x, context, False, self.check_finite)
        parts, logdet = [], None
        h = x
        for block in self.blocks:
            h, z, ld = block(h, context)
            logdet = ld if logdet is None else logdet + ld
            if z is not None:
                parts.append(z.flatten(1))
        parts.append(h.flatten(1))
        return torch.cat(parts, dim=1), logdet

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent (B, D) -> data (B, *shape) and log |det| of the inverse map (B,)."""
        self._check(z, "z")
        if len(self.shape) == 1:
            return _Scale._run(self.steps, z, context, True, self.check_finite)
        shapes = [b.z_shape for b in self.blocks if b.z_shape is not None] + [self.blocks[-1].out_shape]
        sizes = [math.prod(s) for s in shapes]
        chunks = list(torch.split(z, sizes, dim=1))
        h = chunks[-1].reshape(z.shape[0], *shapes[-1])
        logdet = None
        for i in reversed(range(len(self.blocks))):
            zi = None if self.blocks[i].z_shape is None else chunks[i].reshape(z.shape[0], *shapes[i])
            h, ld = self.blocks[i].inverse(h, zi, context)
            logdet = ld if logdet is None else logdet + ld
        return h, logdet

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) in nats (B,): the standard normal's log-density of z plus log |det|."""
        z, logdet = self(x, context)
        base = -0.5 * z.to(logdet.dtype).pow(2).sum(1) - 0.5 * self.features * math.log(2 * math.pi)
        return base + logdet

    def bits_per_dim(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """-log2 p(x) / D, averaged over the batch (of continuous x: dequantise first)."""
        return -self.log_prob(x, context).mean() / (self.features * math.log(2))

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0,
               context: torch.Tensor | None = None) -> torch.Tensor:
        """n samples (n, *shape): z ~ N(0, temperature^2 I) from the Philox stream (keyed by
        ``seed``; None draws a seed from torch's generator), mapped through the inverse."""
        check_int("n", n, 1)
        if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0; got {temperature!r}")
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, (1,)).item())
        param = next(self.parameters())
        offsets = torch.arange(n * self.features, dtype=torch.int64, device=param.device)
        z = gk_random.randn(seed, offsets, dtype=param.dtype).reshape(n, self.features) * temperature
        return self.inverse(z, context)[0]


class RealNVP(_Flow):
    """A RealNVP flow on images (``shape`` = (C, H, W); H and W divisible by 2^(scales - 1))
    or vectors (``shape`` = (D,), D >= 2).

    Args:
        shape: one sample's shape.
        scales: image scales (>= 1). layers: couplings of a vector flow (>= 1).
        hidden: the conditioners' width (ResNet channels for images, MLP units for vectors).
        scale_bound: the couplings' log-scale bound (see AffineCoupling).
        context_features: K for a conditional flow (every conditioner gets the context).
        backend: the coupling op's backend (None: automatic).
    """

    def __init__(self, shape, *, scales: int = 2, layers: int = 6, hidden: int = 64, scale_bound: float = 2.0,
                 context_features: int | None = None, backend: str | None = None):
        super().__init__()
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
                steps += [ActNorm(d), AffineCoupling(half_mask(d, i % 2), hidden=hidden, scale_bound=scale_bound,
                                                     context_features=context_features, backend=backend)]
            self.steps = nn.ModuleList(steps)


class _Level(nn.Module):
    """One Glow level: a squeeze of (c, h, w), ``steps`` flow steps on (4c, h/2, w/2), and
    unless last, a factor-out of 2c channels."""

    check_finite = False

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
            layers += [ActNorm(c4), InvConv1x1(c4, seed=None if seed is None else seed + i),
                       AffineCoupling(channel_mask(c4, i % 2), hidden=hidden, scale_bound=bound,
                                      context_features=context, backend=backend)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x, context):
        x, _ = self.squeeze(x)
        x, logdet = _Scale._run(self.layers, x, context, False, self.check_finite)
        if self.last:
            return x, None, logdet
        half = x.shape[1] // 2
        return x[:, :half], x[:, half:], logdet

    def inverse(self, h, z, context):
        x = h if z is None else torch.cat([h, z], dim=1)
        x, logdet = _Scale._run(self.layers, x, context, True, self.check_finite)
        return self.squeeze.inverse(x)[0], logdet


class Glow(_Flow):
    """A Glow flow on images (``shape`` = (C, H, W); H and W divisible by 2^levels).

    Args:
        shape: one image's shape. levels: squeeze-and-split levels (>= 1). steps: flow steps
            per level (>= 1): ActNorm, invertible 1x1 convolution (LU), affine coupling.
        hidden: the couplings' ResNet width. scale_bound, context_features, backend: as
            RealNVP's. seed: the 1x1 convolutions' starting rotations (None: torch's generator).
    """

    def __init__(self, shape, *, levels: int = 2, steps: int = 4, hidden: int = 64, scale_bound: float = 2.0,
                 context_features: int | None = None, backend: str | None = None, seed: int | None = None):
        super().__init__()
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
    """

    _inverse_autoregressive = False

    def __init__(self, shape, *, layers: int = 5, hidden=64, scale_bound: float = 2.0,
                 context_features: int | None = None, actnorm: bool = True, backend: str | None = None,
                 made_backend: str | None = None):
        super().__init__()
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        shape = tuple(int(n) for n in shape) if isinstance(shape, (tuple, list, torch.Size)) else None
        if shape is None or len(shape) != 1 or shape[0] < 1:
            raise ValueError(f"shape must be (D,) or D with D >= 1; got {shape}")
        self.shape, self.features = shape, shape[0]
        self.context_features = context_features
        check_int("layers", layers, 1)
        hidden = _hidden(hidden)
        steps = []
        for i in range(layers):
            if actnorm:
                steps.append(ActNorm(self.features))
            steps.append(MaskedAffineAutoregressive(
                self.features, hidden, order="natural" if i % 2 == 0 else "reversed", scale_bound=scale_bound,
                context_features=context_features, inverse_autoregressive=self._inverse_autoregressive,
                backend=backend, made_backend=made_backend))
        self.steps = nn.ModuleList(steps)


class IAF(MAF):
    """An inverse autoregressive flow of vectors: MAF's architecture with every transform
    inverted (its MADE reads the noise side). Sampling (``sample``, ``inverse``) and
    ``rsample``-style reparameterised draws are one MADE pass a layer; ``log_prob`` of an
    arbitrary x solves each layer one dimension at a time (D passes). The flow of choice for
    variational posteriors. Arguments as MAF's."""

    _inverse_autoregressive = True


__all__ = ["IAF", "MAF", "Glow", "RealNVP"]
