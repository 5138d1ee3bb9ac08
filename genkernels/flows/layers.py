"""Glow's and RealNVP's invertible layers besides the couplings: ``Squeeze`` (space to depth),
``ActNorm`` (per-channel affine with data-dependent initialisation), ``InvConv1x1`` (an
invertible 1x1 convolution, LU-parametrised) and ``LogitTransform`` (RealNVP's preprocessing
of data in [0, 1]), and ``dequantize`` (uniform dequantisation of discrete data).

Every layer maps (B, C, H, W) (``ActNorm``: also (B, D)) and has ``forward(x) -> (y, logdet)``
and ``inverse(y) -> (x, logdet of the inverse map)``, logdet (B,) in the accumulation dtype
(fp64 for fp64 inputs, fp32 otherwise).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_int
from . import actnorm_ops


def _logdet_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_image(name: str, x, channels: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, C, H, W); got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels; this layer has {channels}")
    return x


class Squeeze(nn.Module):
    """RealNVP's squeeze: each ``factor`` x ``factor`` block of pixels becomes factor^2
    channels, (B, C, H, W) -> (B, C f^2, H / f, W / f); volume-preserving (logdet 0). H and
    W must be multiples of the factor."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = check_int("factor", factor, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image("x", x)
        b, c, h, w = x.shape
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"squeeze by {f} needs H and W divisible by {f}; got {h} x {w} (pad or crop the "
                             f"images first)")
        y = x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4).reshape(b, c * f * f, h // f, w // f)
        return y, x.new_zeros(b, dtype=_logdet_dtype(x.dtype))

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image("y", y)
        b, c, h, w = y.shape
        f = self.factor
        if c % (f * f):
            raise ValueError(f"unsqueeze by {f} needs channels divisible by {f * f}; got {c}")
        x = y.reshape(b, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (f * f), h * f, w * f)
        return x, y.new_zeros(b, dtype=_logdet_dtype(y.dtype))

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def _sync_ready(module, incompatible_keys) -> None:
    module._ready = bool(module.initialized)


class ActNorm(nn.Module):
    """Glow's activation normalisation: y = (x + bias) exp(log_scale) per channel (dimension
    1 of (B, C, H, W) or (B, D)), logdet = H W sum(log_scale).

    Data-dependent initialisation: the first forward in training mode sets bias and scale so
    that its batch has zero mean and unit variance per channel -- the scale is 1 / (std +
    eps), so a constant channel gets a finite scale (1 / eps), never a division by zero;
    ``initialized`` (a buffer, saved with the state) records it. An uninitialised layer's
    inverse is the identity map it starts as. The map runs as the fused op
    ``genkernels.ops.actnorm`` (``backend``: its backend, None for the automatic one)."""

    def __init__(self, num_features: int, eps: float = 1e-6, *, backend: str | None = None):
        super().__init__()
        self.num_features = check_int("num_features", num_features, 1)
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0):
            raise ValueError(f"eps must be a number > 0; got {eps!r}")
        self.eps = float(eps)
        self.backend = backend
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        # a Python mirror of the buffer, so that a compiled forward reads a constant (guarded)
        # rather than the buffer's value (a graph break at every ActNorm); loading a state
        # syncs it
        self._ready = False
        self.register_load_state_dict_post_hook(_sync_ready)

    def _shape(self, x: torch.Tensor, name: str) -> tuple[int, ...]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(f"{name} must be (B, {self.num_features}) or (B, {self.num_features}, H, W); got "
                             f"shape {tuple(x.shape)}")
        return (1, -1) + (1,) * (x.dim() - 2)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set bias and log_scale from the batch x (zero mean, unit variance per channel)."""
        self._shape(x, "x")
        if x.shape[0] * (x[0, 0].numel()) < 2:
            raise ValueError("ActNorm's data-dependent initialisation needs at least two values per channel; "
                             f"got a batch of shape {tuple(x.shape)}")
        flat = x.detach().transpose(0, 1).reshape(self.num_features, -1).double()
        if not bool(torch.isfinite(flat).all()):
            raise ValueError("ActNorm initialisation: the batch holds NaN or Inf")
        mean, std = flat.mean(1), flat.std(1, unbiased=False)
        self.bias.copy_((-mean).to(self.bias.dtype))
        self.log_scale.copy_((-torch.log(std + self.eps)).to(self.log_scale.dtype))
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._shape(x, "x")
        if self.training and not self._ready:
            if bool(self.initialized):   # set by a loaded state
                self._ready = True
            else:
                self.initialize(x)
        return actnorm_ops.apply(x, self.bias, self.log_scale, False, self.backend)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._shape(y, "y")
        return actnorm_ops.apply(y, self.bias, self.log_scale, True, self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution: every pixel's channels times a C x C matrix W,
    logdet = H W log |det W|. ``lu=True`` (the default) keeps W = P L (U + diag(sign
    exp(log_s))) -- P a fixed permutation, L unit lower- and U strictly upper-triangular --
    so log |det W| = sum(log_s) costs O(C); ``lu=False`` keeps W itself (torch.linalg.slogdet).
    Starts as a random rotation (QR of a Gaussian matrix; ``seed`` for a reproducible one,
    else torch's global generator). A singular or non-finite W raises ValueError."""

    def __init__(self, channels: int, lu: bool = True, seed: int | None = None):
        super().__init__()
        self.channels = check_int("channels", channels, 1)
        self.lu = bool(lu)
        g = None if seed is None else torch.Generator().manual_seed(check_int("seed", seed, 0))
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=g, dtype=torch.float64))
        if self.lu:
            p, lower, upper = torch.linalg.lu(q)
            s = torch.diagonal(upper)
            self.register_buffer("perm", p.float())
            self.register_buffer("sign_s", torch.sign(s).float())
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
            self.lower = nn.Parameter(lower.float())
            self.upper = nn.Parameter(torch.triu(upper, 1).float())
            self.log_s = nn.Parameter(torch.log(s.abs()).float())
        else:
            self.weight = nn.Parameter(q.float())

    def matrix(self) -> torch.Tensor:
        """W (C, C)."""
        if not self.lu:
            return self.weight
        c = self.channels
        eye = torch.eye(c, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.t() + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _log_abs_det(self) -> torch.Tensor:
        # the checks read values in Python: skipped inside a compiled graph, where a singular
        # matrix shows as a non-finite log-density (fit stops on it with DivergedError)
        checking = not torch.compiler.is_compiling()
        if self.lu:
            if checking and not bool(torch.isfinite(self.log_s).all()):
                raise ValueError("InvConv1x1: the matrix is singular or not finite (log_s holds -inf, inf or NaN)")
            return self.log_s.sum()
        sign, logabs = torch.linalg.slogdet(self.weight.double())
        if checking and float(sign.detach()) == 0.0 or not math.isfinite(float(logabs.detach())):
            raise ValueError("InvConv1x1: the weight matrix is singular (det 0) or not finite; it has no inverse")
        return logabs.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image("x", x, self.channels)
        logabs = self._log_abs_det()
        w = self.matrix().to(x.dtype)
        y = torch.einsum("ij,bjhw->bihw", w, x)
        pixels = x.shape[2] * x.shape[3]
        return y, (logabs.to(_logdet_dtype(x.dtype)) * pixels).expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image("y", y, self.channels)
        logabs = self._log_abs_det()
        w_inv = torch.linalg.inv(self.matrix().double()).to(y.dtype)
        x = torch.einsum("ij,bjhw->bihw", w_inv, y)
        pixels = y.shape[2] * y.shape[3]
        return x, (-logabs.to(_logdet_dtype(y.dtype)) * pixels).expand(y.shape[0])

    def extra_repr(self) -> str:
        return f"{self.channels}, lu={self.lu}"


__all__ = ["ActNorm", "InvConv1x1", "Squeeze"]


class LogitTransform(nn.Module):
    """RealNVP's preprocessing of data in [0, 1]: y = logit(alpha + (1 - 2 alpha) x), so a
    flow models the unbounded logits while its density stays one of x (the log-determinant
    sum(log(1 - 2 alpha) - log s - log(1 - s)), s = alpha + (1 - 2 alpha) x, is part of it).
    alpha in (0, 1/2) keeps the ends 0 and 1 finite. x outside [0, 1] is an error."""

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 0.5:
            raise ValueError(f"alpha must be a number in (0, 0.5); got {alpha!r}")
        self.alpha = float(alpha)

    def _logdet(self, s: torch.Tensor) -> torch.Tensor:
        per = math.log1p(-2 * self.alpha) - torch.log(s) - torch.log1p(-s)
        return per.flatten(1).sum(1).to(_logdet_dtype(s.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.compiler.is_compiling() and x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
            raise ValueError(f"the logit preprocessing takes data in [0, 1]; got values in [{float(x.min())}, "
                             f"{float(x.max())}] (scale the data, e.g. pixels / 255, and dequantise it)")
        s = self.alpha + (1 - 2 * self.alpha) * x
        return torch.log(s) - torch.log1p(-s), self._logdet(s)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.sigmoid(y)
        return (s - self.alpha) / (1 - 2 * self.alpha), -self._logdet(s)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def dequantize(x: torch.Tensor, levels: int = 256, *, seed: int | None = None, offset: int = 0) -> torch.Tensor:
    """Uniform dequantisation: x in [0, 1] holding k / (levels - 1) (e.g. pixels / 255) ->
    (k + u) / levels with u ~ U[0, 1) from genkernels' Philox stream (``seed``: that stream
    from counter ``offset``; None: a seed drawn from torch's generator). A continuous density
    p on [0, 1]^D of the result bounds the discrete likelihood: log P(k) >= E log p - D log
    levels (``bits_per_dim(..., levels=levels)`` adds that term)."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor in [0, 1]; got {getattr(x, 'dtype', type(x).__name__)}")
    levels = check_int("levels", levels, 2)
    k = torch.round(x * (levels - 1))
    if x.numel() and not bool(((k >= 0) & (k <= levels - 1)).all()):
        raise ValueError(f"x must lie in [0, 1] (k / (levels - 1)); got values in [{float(x.min())}, "
                         f"{float(x.max())}]")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    from .. import random as gk_random

    counters = torch.arange(x.numel(), dtype=torch.int64, device=x.device) + int(offset)
    u = gk_random.rand(seed, counters).reshape(x.shape).to(x.dtype)
    return (k + u) / levels
