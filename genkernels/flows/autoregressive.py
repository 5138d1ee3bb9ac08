"""Masked autoregressive flows: MAF (Papamakarios et al., 2017, "Masked Autoregressive Flow for
Density Estimation") and IAF (Kingma et al., 2016, "Improved Variational Inference with
Inverse Autoregressive Flow"), their transforms conditioned by the masked-models family's
MADE (imported through that family's public face).

``MaskedAffineAutoregressive`` maps x (B, D) to z, one dimension at a time in its ``order``:

    z_i = x_i exp(sigma_i) + t_i,   sigma_i = b tanh(s_i / b),   (s_i, t_i) = MADE(x_<i)

with x_<i the dimensions before i in the order. Every (s_i, t_i) sees only earlier
dimensions, so the Jacobian is triangular and log |det| = sum_i sigma_i; the elementwise part
is the fused ``affine_coupling`` op with nothing kept. The data-to-noise direction is one
MADE pass (MAF: density evaluation and training in one pass); the noise-to-data direction
solves for x one dimension at a time (D passes; sampling). ``inverse_autoregressive=True``
swaps the directions (IAF): MADE conditions on z, sampling is one pass and density
evaluation takes D.

``MaskedSplineAutoregressive`` is the same with a monotone rational-quadratic spline per
dimension in place of the affine map (neural spline flows; the fused ``rq_spline`` op).

The MADE's output layer starts at zero: an affine layer starts as the identity, a spline
layer as the spline of equal bins and unit knot derivatives (its derivative outputs' bias at
``spline_reference.IDENTITY_DERIVATIVE``) -- the identity too.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from ..autoregressive import MADE
from . import coupling_ops, spline_ops, spline_reference
from .coupling_ops import check_bound
from .spline_ops import check_tail_bound


def _hidden(hidden) -> tuple[int, ...]:
    if isinstance(hidden, bool):
        raise TypeError(f"hidden must be an int or a sequence of ints; got {hidden!r}")
    if isinstance(hidden, int):
        return (check_int("hidden", hidden, 1),) * 2
    if not isinstance(hidden, (tuple, list)) or not hidden:
        raise TypeError(f"hidden must be an int or a non-empty sequence of ints; got {hidden!r}")
    return tuple(check_int("hidden", h, 1) for h in hidden)


def _order(order, features: int) -> torch.Tensor:
    """The dimensions in the order they come (a permutation of 0..D-1)."""
    if isinstance(order, str):
        if order == "natural":
            return torch.arange(features)
        if order == "reversed":
            return torch.arange(features - 1, -1, -1)
        raise ValueError(f"order must be 'natural', 'reversed' or a permutation of 0..{features - 1}; got {order!r}")
    perm = torch.as_tensor(order)
    if perm.dim() != 1 or perm.numel() != features or perm.dtype.is_floating_point or perm.dtype == torch.bool \
            or not torch.equal(torch.sort(perm).values, torch.arange(features)):
        raise ValueError(f"order must be 'natural', 'reversed' or a permutation of 0..{features - 1}; got {order!r}")
    return perm.to(torch.int64)


class _MaskedAutoregressive(nn.Module):
    """What the autoregressive transforms share: the MADE (``params_per_dim`` raw outputs per
    dimension) in an order, the identity start, the one-pass and the sequential directions.
    A subclass sets ``_transform(v, params (B, D, P), inverse) -> (w, logdet)``."""

    takes_context = True

    def __init__(self, features: int, hidden, params_per_dim: int, *, order, context_features: int | None,
                 inverse_autoregressive: bool, made_backend: str | None, seed: int | None,
                 param_major: bool = False):
        super().__init__()
        self.features = check_int("features", features, 1)
        self.hidden = _hidden(hidden)
        perm = _order(order, self.features)
        # how the MADE's natural order maps onto the features: as they are, reversed (a flip),
        # or a gather (advanced indexing and its backward cost as much as a small layer)
        self._layout = "natural" if torch.equal(perm, torch.arange(self.features)) else \
            "reversed" if torch.equal(perm, torch.arange(self.features - 1, -1, -1)) else "permuted"
        self.register_buffer("order", perm)
        self.register_buffer("_unorder", torch.argsort(perm))
        self.inverse_autoregressive = bool(inverse_autoregressive)
        self.made = MADE(self.features, self.hidden, "params", params_per_dim, direct=True, seed=seed,
                         backend=made_backend, context_features=context_features, param_major=param_major)
        self.context_features = self.made.context_features
        with torch.no_grad():      # the identity at the start
            for p in (self.made.layers[-1].weight, self.made.layers[-1].bias, self.made.skip.weight):
                p.zero_()
            if self.made.context_out is not None:
                self.made.context_out.weight.zero_()

    def _check(self, v, name: str) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(v).__name__}")
        if v.dim() != 2 or v.shape[1] != self.features:
            raise ValueError(f"{name} must be (B, {self.features}); got shape {tuple(v.shape)}")
        if not v.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {v.dtype}")
        return v

    def raw_params(self, v: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, P): each dimension's raw parameters, from the dimensions of v before it in
        the order. The MADE's data checks are skipped (no device sync per layer): the
        transform checked v's shape, and a NaN in it shows in the output."""
        if self._layout == "natural":
            return self.made(v, 0, context, check=False).to(v.dtype)
        if self._layout == "reversed":   # flip keeps the strides: a param-major MADE's stay (B, P, D)
            return self.made(v.flip(1), 0, context, check=False).flip(1).to(v.dtype)
        p = self.made(v.index_select(1, self.order), 0, context, check=False)   # (B, D, P), dimensions in order
        return p.index_select(1, self._unorder).to(v.dtype)

    def _solve(self, w, context):
        """The sequential direction: v = map^-1(w; params(v)) -- x from z for MAF, z from x
        for IAF -- by D passes from v = 0: after pass r the first r dimensions in the order
        are exact (and so is autograd through the passes). -> (v, log |det| of w -> v)."""
        v = torch.zeros_like(w)
        logdet = None
        for _ in range(self.features):
            v, logdet = self._transform(w, self.raw_params(v, context), True)
        return v, logdet

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "x")
        if self.inverse_autoregressive:   # x = map(z; params(z)): z by the sequential solve
            return self._solve(x, context)
        return self._transform(x, self.raw_params(x, context), False)

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(z, "z")
        if self.inverse_autoregressive:
            return self._transform(z, self.raw_params(z, context), False)
        return self._solve(z, context)


class MaskedAffineAutoregressive(_MaskedAutoregressive):
    """MAF's (or, with ``inverse_autoregressive=True``, IAF's) affine autoregressive transform
    of vectors (B, D): z_i = x_i exp(sigma_i) + t_i, sigma_i = b tanh(s_i / b).

    Args:
        features: D >= 1.
        hidden: the MADE's hidden layer sizes (an int: two layers of that size).
        order: "natural", "reversed", or a permutation of 0..D-1 (the dimensions in the
            order they come); stacks alternate orders so every dimension gets conditioned.
        scale_bound: the log-scales' bound (see AffineCoupling; math.inf: unbounded).
        context_features: K for a conditional transform (the MADE gets the context).
        inverse_autoregressive: IAF -- the conditioner reads the noise side.
        backend: the affine op's backend; made_backend: the MADE's masked linear layers'.

    ``forward(x, context=None) -> (z, logdet)`` (data to noise), ``inverse(z, context=None)
    -> (x, logdet of the inverse map)``; ``params(v, context)`` -> (B, 2, D): the raw
    log-scales and shifts the MADE gives for v (the input of the autoregressive side).
    """

    def __init__(self, features: int, hidden=64, *, order="natural", scale_bound: float = 2.0,
                 context_features: int | None = None, inverse_autoregressive: bool = False,
                 backend: str | None = None, made_backend: str | None = None, seed: int | None = None):
        # the MADE's outputs every log-scale, then every shift: the affine op's (B, 2D) layout,
        # read without a copy (a (B, D, 2) -> (B, 2, D) transpose cost 150 us a layer fw + bw)
        super().__init__(features, hidden, 2, order=order, context_features=context_features,
                         inverse_autoregressive=inverse_autoregressive, made_backend=made_backend, seed=seed,
                         param_major=True)
        self.scale_bound = check_bound(scale_bound)
        self.backend = backend
        self.register_buffer("_nothing_kept", torch.zeros(self.features))

    def params(self, v: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2, D): log-scales then shifts for each dimension, each from the dimensions of v
        before it in the order."""
        return self.raw_params(v, context).transpose(1, 2)

    def _transform(self, v, params, inverse: bool):
        # the affine op's params: (B, 2D), every log-scale then every shift (a view of the
        # param-major MADE's output; a copy only after a permuted order's gather)
        return coupling_ops.apply(v, params.transpose(1, 2).reshape(v.shape[0], -1), self._nothing_kept,
                                  self.scale_bound, inverse, self.backend)

    def extra_repr(self) -> str:
        kind = "IAF" if self.inverse_autoregressive else "MAF"
        return f"{kind}, features={self.features}, hidden={self.hidden}, scale_bound={self.scale_bound}"


class MaskedSplineAutoregressive(_MaskedAutoregressive):
    """The autoregressive neural spline transform (Durkan et al., 2019, RQ-NSF (AR)): each
    dimension through its own monotone rational-quadratic spline on [-bound, bound] (the
    identity outside), its 3K - 1 raw parameters from the MADE given the dimensions before
    it; the fused ``rq_spline`` op applies them.

    Args:
        features, hidden, order, context_features, inverse_autoregressive, made_backend,
            seed: as MaskedAffineAutoregressive's.
        bins: K >= 1. bound: the spline's interval half-width (> 0).
        backend: the spline op's backend.
    """

    def __init__(self, features: int, hidden=64, *, bins: int = 8, bound: float = 3.0, order="natural",
                 context_features: int | None = None, inverse_autoregressive: bool = False,
                 backend: str | None = None, made_backend: str | None = None, seed: int | None = None):
        self_bins = check_int("bins", bins, 1)
        super().__init__(features, hidden, 3 * self_bins - 1, order=order, context_features=context_features,
                         inverse_autoregressive=inverse_autoregressive, made_backend=made_backend, seed=seed)
        self.bins = self_bins
        self.bound = check_tail_bound(bound)
        # the MADE's outputs (dimension by dimension in its natural order) start at the identity spline
        spline_reference.identity_bias(self.made.layers[-1].bias, self.features, self_bins)
        self.backend = backend

    def _transform(self, v, params, inverse: bool):
        return spline_ops.apply(v, params, None, self.bound, inverse, self.backend)

    def extra_repr(self) -> str:
        kind = "inverse autoregressive" if self.inverse_autoregressive else "autoregressive"
        return f"{kind} spline, features={self.features}, hidden={self.hidden}, bins={self.bins}, bound={self.bound}"


__all__ = ["MaskedAffineAutoregressive", "MaskedSplineAutoregressive"]
