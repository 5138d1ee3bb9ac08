"""Coupling layers (NICE's additive, RealNVP's and Glow's affine), their masks, and the
conditioner networks they ship with.

A coupling layer keeps the features where its binary mask is 1 and transforms the others
with a scale and shift computed from the kept ones, so its inverse and log-determinant are
exact and cheap. ``AffineCoupling`` runs the elementwise part (mask, bounded scale,
scale-and-shift, per-sample log-determinant) as the fused op ``genkernels.ops.affine_coupling``.

Shapes: vectors (B, D) with a (D,) mask, or images (B, C, H, W) with a (C, H, W) mask (or one
that broadcasts: a channel mask is (C, 1, 1)). A conditioner maps the masked input (B, *F) --
and the context (B, K) when the layer is conditional -- to (B, 2 F1, ...) for the affine
layer (raw log-scales, then shifts, along dimension 1) or (B, F1, ...) for the additive one.
A vector layer's default conditioner, ``KeptMLP``, reads the unmasked input and only its kept
features, and computes only the transformed features' parameters (the same function without
the dense network's multiplications by the mask's zeros).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int
from ..autoregressive import masked_mlp, masked_mlp_runs_fused
from . import coupling_ops, spline_ops, spline_reference
from .coupling_ops import check_bound, check_mask


# ------------------------------------------------------------------------------- masks
def checkerboard_mask(shape, parity: int = 0) -> torch.Tensor:
    """RealNVP's checkerboard: 1 where (row + column + parity) is even. ``shape``: (H, W) or
    (C, H, W) (every channel the same) -> float tensor of that shape."""
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) or (C, H, W) of positive sizes; got {shape}")
    h, w = shape[-2:]
    board = ((torch.arange(h)[:, None] + torch.arange(w)[None, :] + _parity(parity)) % 2 == 0).float()
    return board.expand(shape).contiguous()


def channel_mask(channels: int, parity: int = 0) -> torch.Tensor:
    """RealNVP's channel-wise mask: the first half of the channels kept (parity 0) or the
    second (parity 1) -> (C, 1, 1) float (broadcasts over H and W); C >= 2."""
    check_int("channels", channels, 2)
    return half_mask(channels, parity).reshape(channels, 1, 1)


def half_mask(features: int, parity: int = 0) -> torch.Tensor:
    """The first ceil(D / 2) features kept (parity 0), or the other features (parity 1)
    -> (D,) float; D >= 2."""
    check_int("features", features, 2)
    keep = (torch.arange(features) < (features + 1) // 2).float()
    return keep if _parity(parity) == 0 else 1.0 - keep


def alternating_mask(features: int, parity: int = 0) -> torch.Tensor:
    """Every other feature kept, starting with the first (parity 0) or the second (parity 1)
    -> (D,) float; D >= 2."""
    check_int("features", features, 2)
    return ((torch.arange(features) + _parity(parity)) % 2 == 0).float()


def _parity(parity) -> int:
    if isinstance(parity, bool) or parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1; got {parity!r}")
    return int(parity)


# ------------------------------------------------------------------------ conditioners
class MLP(nn.Module):
    """in_features (+ context_features) -> hidden ... -> out_features, ReLU between; the last
    layer starts at zero, so a coupling layer starts as the identity (Glow's initialisation).
    On the CPU (float32/float64, outside autocast, input and hidden layers up to 256 units) the whole
    network runs as the fused ``masked_mlp`` op with every prefix full (dense layers): one
    call each way rather than a chain of linear layers and ReLUs."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 128, layers: int = 2,
                 context_features: int | None = None):
        super().__init__()
        check_int("in_features", in_features, 1)
        check_int("out_features", out_features, 1)
        check_int("hidden", hidden, 1)
        check_int("layers", layers, 1)
        self.context_features = 0 if context_features is None else check_int("context_features", context_features, 1)
        sizes = [in_features + self.context_features] + [hidden] * layers
        body = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            body += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*body)
        self.out = nn.Linear(sizes[-1], out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._linears = [m for m in self.body if isinstance(m, nn.Linear)] + [self.out]
        for i, layer in enumerate(self._linears):   # full prefixes: every output sees every input
            self.register_buffer(f"_prefix{i}", torch.full((layer.out_features,), layer.in_features),
                                 persistent=False)

    def _fused(self, h: torch.Tensor) -> bool:
        return masked_mlp_runs_fused(h, [m.weight for m in self._linears])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = _with_context(x, context, self.context_features)
        if self._fused(h):
            return masked_mlp(h, [m.weight for m in self._linears], [m.bias for m in self._linears],
                              [getattr(self, f"_prefix{i}") for i in range(len(self._linears))], backend="cpu",
                              checked=True)
        return self.out(self.body(h))


class KeptMLP(MLP):
    """A vector coupling's default conditioner: the MLP from the kept features alone to the
    transformed features' parameters, returned in the layout the coupling's op reads -- (B, P
    D) as (B, P, D) for ``feature_major=False`` (affine: s then t; additive), (B, D P) as (B, D,
    P) for ``feature_major=True`` (spline) -- with zeros at the kept features (never read).

    The same function as an ``MLP(D, P D)`` fed x * mask, without what that one spends on the
    mask: its first layer multiplies the transformed features' zeros and its last layer
    computes parameters nobody reads -- with half masks about 30 % of the work and of the
    weights (at D = 64, H = 128: 28,992 parameters where the dense one has 41,344). A
    contiguous run of kept (transformed) features is read (written) as one slice, any other
    set through an index.

    Args:
        mask: (D,) zeros and ones, 1 = kept, at least one of each.
        per: P, the parameters of each transformed feature (2 affine, 1 additive, 3K - 1 spline).
        feature_major: the output layout, as above.
        hidden, layers, context_features: as MLP's.
    """

    def __init__(self, mask: torch.Tensor, per: int, feature_major: bool = False, hidden: int = 128,
                 layers: int = 2, context_features: int | None = None):
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a (D,) torch.Tensor of zeros and ones; got {type(mask).__name__}")
        if mask.dim() != 1:
            raise ValueError(f"mask must be a (D,) tensor of zeros and ones; got shape {tuple(mask.shape)}")
        kept = check_mask(mask, tuple(mask.shape)).cpu()
        if not bool(kept.any()):
            raise ValueError("mask keeps no feature (all zeros): KeptMLP needs one to read; use MLP")
        per = check_int("per", per, 1)
        kept_idx, moved_idx = kept.nonzero().flatten(), (~kept).nonzero().flatten()
        super().__init__(kept_idx.numel(), per * moved_idx.numel(), hidden, layers, context_features)
        self.features, self.per, self.feature_major = kept.numel(), per, bool(feature_major)
        self._kept_run, self._moved_run = _run(kept_idx), _run(moved_idx)
        self.register_buffer("kept", kept, persistent=False)   # the mask it reads (bool)
        self.register_buffer("_kept_idx", kept_idx, persistent=False)
        self.register_buffer("_moved_idx", moved_idx, persistent=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"x must be (B, {self.features}); got shape {tuple(x.shape)}")
        a = self._kept_run
        h = x.narrow(1, a[0], a[1]) if a is not None else x.index_select(1, self._kept_idx)
        out = super().forward(h, context)
        b, n, dim = x.shape[0], self._moved_idx.numel(), 1 if self.feature_major else 2
        out = out.view(b, n, self.per) if self.feature_major else out.view(b, self.per, n)
        full = list(out.shape)
        full[dim] = self.features
        r = self._moved_run
        if r is not None:   # zeros, the run, zeros: one cat (its backward, one narrow)
            pieces = [out.new_zeros(*full[:dim], r[0], *full[dim + 1:]), out,
                      out.new_zeros(*full[:dim], self.features - r[0] - r[1], *full[dim + 1:])]
            p = torch.cat([t for t in pieces if t.shape[dim]], dim)
        else:
            p = out.new_zeros(full).index_copy(dim, self._moved_idx, out)
        return p.reshape(b, self.features * self.per)

    def extra_repr(self) -> str:
        return f"features={self.features}, per={self.per}, feature_major={self.feature_major}"


def _run(idx: torch.Tensor) -> tuple[int, int] | None:
    """(first, count) when the sorted indices are one contiguous run, else None."""
    n = idx.numel()
    return (int(idx[0]), n) if n and int(idx[-1]) - int(idx[0]) == n - 1 else None


class ResNet(nn.Module):
    """RealNVP's conditioner for images: a 3x3 convolution to ``hidden`` channels, ``blocks``
    residual blocks (3x3 convolution, ReLU, 3x3 convolution, added), ReLU, a 3x3 convolution
    to ``out_channels`` that starts at zero. A context vector (B, K) is broadcast over the
    pixels and concatenated to the input channels."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 2,
                 context_features: int | None = None):
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("out_channels", out_channels, 1)
        check_int("hidden", hidden, 1)
        check_int("blocks", blocks, 0)
        self.context_features = 0 if context_features is None else check_int("context_features", context_features, 1)
        self.inp = nn.Conv2d(in_channels + self.context_features, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(hidden, hidden, 3, padding=1)) for _ in range(blocks))
        self.out = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_features:
            if context is None:
                raise ValueError(f"this conditioner takes a context (B, {self.context_features}); got None")
            if context.dim() != 2 or context.shape != (x.shape[0], self.context_features):
                raise ValueError(f"context must be ({x.shape[0]}, {self.context_features}); got shape "
                                 f"{tuple(context.shape)}")
            x = torch.cat([x, context.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        elif context is not None:
            raise ValueError("this conditioner takes no context (context_features=None); got one")
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(torch.relu(h))


def _with_context(x: torch.Tensor, context: torch.Tensor | None, features: int) -> torch.Tensor:
    if features:
        if context is None:
            raise ValueError(f"this conditioner takes a context (B, {features}); got None")
        if context.dim() != 2 or context.shape != (x.shape[0], features):
            raise ValueError(f"context must be ({x.shape[0]}, {features}); got shape {tuple(context.shape)}")
        return torch.cat([x, context.to(x.dtype)], dim=1)
    if context is not None:
        raise ValueError("this conditioner takes no context (context_features=None); got one")
    return x


# ---------------------------------------------------------------------------- layers
class _Coupling(nn.Module):
    """What the coupling layers share: the mask (checked once), the conditioner (a user
    module, or the KeptMLP (vectors) / ResNet (images) made for the mask), the call with the
    context."""

    takes_context = True
    feature_major = False   # the default conditioner's output layout (KeptMLP)

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module | None, out_factor: int, hidden: int | None,
                 context_features: int | None):
        super().__init__()
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor of zeros and ones; got {type(mask).__name__}")
        if mask.dim() not in (1, 3):
            raise ValueError(f"mask must be (D,) for vectors or (C, H, W) / (C, 1, 1) for images; got shape "
                             f"{tuple(mask.shape)}")
        kept = check_mask(mask, tuple(mask.shape))
        self.register_buffer("mask", kept.to(torch.get_default_dtype()))
        self.image = mask.dim() == 3
        features = mask.shape[0]
        if conditioner is None:
            if self.image:
                conditioner = ResNet(features, out_factor * features, hidden or 64, 2, context_features)
            elif bool(kept.any()):   # read the kept features only, write the transformed ones' parameters
                conditioner = KeptMLP(kept, out_factor, self.feature_major, hidden or 128, 2, context_features)
            else:
                conditioner = MLP(features, out_factor * features, hidden or 128, 2, context_features)
        elif not isinstance(conditioner, nn.Module):
            raise TypeError(f"conditioner must be a torch.nn.Module (or None for the default); got "
                            f"{type(conditioner).__name__}")
        self.conditioner = conditioner
        self.out_factor = out_factor

    def _check_input(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        want = self.mask.dim() + 1
        if x.dim() != want:
            kind = "(B, C, H, W)" if self.image else "(B, D)"
            raise ValueError(f"{name} must be {kind}; got shape {tuple(x.shape)}")
        # the mask broadcasts to the features (same rank, checked above): each size equal or 1
        # (torch.broadcast_shapes cost 40 us a call)
        if not all(m == f or m == 1 for m, f in zip(self.mask.shape, x.shape[1:])):
            raise ValueError(f"{name}'s features {tuple(x.shape[1:])} do not match the mask {tuple(self.mask.shape)}")
        if self.image and self.mask.shape[0] != x.shape[1]:
            raise ValueError(f"{name} has {x.shape[1]} channels; the mask has {self.mask.shape[0]}")

    def _check_kept_mask(self) -> None:
        """A KeptMLP conditioner reads the features its own mask keeps: the layer's mask must
        still be that one. Compared when the mask's storage or version, or the conditioner,
        changed (once on a GPU: a sync; at every call for an inference-mode mask), not inside
        torch.compile."""
        if torch.compiler.is_compiling():
            return
        # an inference tensor has no version counter: compared at every call
        kept = self.conditioner.kept
        key = None if self.mask.is_inference() or kept.is_inference() else \
            (self.mask.data_ptr(), self.mask._version, self.mask.storage_offset(), self.mask.device,
             id(self.conditioner), kept.data_ptr(), kept._version)
        if key is not None and getattr(self, "_kept_key", None) == key:
            return
        if self.mask.shape != self.conditioner.kept.shape or \
                not torch.equal(self.mask.to(torch.bool), self.conditioner.kept.to(self.mask.device)):
            raise ValueError("the layer's mask differs from the one its conditioner (KeptMLP) reads -- the "
                             "default conditioner of a vector layer is made for the mask the layer was made "
                             "with: make a new layer for another mask, or pass a conditioner of your own")
        object.__setattr__(self, "_kept_key", key)

    def _params(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.conditioner, KeptMLP):
            self._check_kept_mask()
            kept = x
        else:
            kept = x * self.mask.to(x.dtype)
        out = self.conditioner(kept) if context is None else self.conditioner(kept, context)
        want = (x.shape[0], self.out_factor * x.shape[1], *x.shape[2:])
        if tuple(out.shape) != want:
            raise ValueError(f"the conditioner must return {want} for input {tuple(x.shape)}; got "
                             f"{tuple(out.shape)}")
        return out


class AffineCoupling(_Coupling):
    """y = x on the kept features, x exp(sigma) + t on the others, sigma = bound tanh(s /
    bound), with (s, t) = conditioner(x * mask[, context]) split along dimension 1 (the
    fused op reads the conditioner's output in place and writes its gradient whole).

    Args:
        mask: (D,) for vectors, (C, H, W) or (C, 1, 1) for images: 1 = kept, 0 = transformed
            (``checkerboard_mask``, ``channel_mask``, ``half_mask``, ``alternating_mask``, or
            any binary tensor that transforms something).
        conditioner: a module mapping x * mask (B, *F) [and the context (B, K)] to (B, 2 F1,
            ...); None: a KeptMLP (vectors: the kept features in, the transformed ones' s and
            t out; it reads x itself, and the layer's mask must stay the one it was made with)
            or a ResNet (images) with ``hidden`` units, its last layer at zero (the layer starts
            as the identity).
        scale_bound: the log-scales' bound (> 0; math.inf: not bounded). The default, 2,
            keeps every scale in (e^-2, e^2): an unbounded exp(s) is where affine flows
            diverge.
        context_features: K for a conditional layer with the default conditioner.
        backend: the fused op's backend (None: automatic).

    ``forward(x, context=None)`` -> (y, logdet (B,)); ``inverse(y, context=None)`` -> (x,
    logdet of the inverse map) = minus the forward's.
    """

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module | None = None, *, scale_bound: float = 2.0,
                 hidden: int | None = None, context_features: int | None = None, backend: str | None = None):
        super().__init__(mask, conditioner, 2, hidden, context_features)
        self.scale_bound = check_bound(scale_bound)
        self.backend = backend

    def _couple(self, x, context, inverse: bool, name: str):
        self._check_input(x, name)
        params = self._params(x, context)
        return coupling_ops.apply(x, params, self.mask, self.scale_bound, inverse, self.backend)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(x, context, False, "x")

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(y, context, True, "y")

    def extra_repr(self) -> str:
        return f"mask={tuple(self.mask.shape)}, scale_bound={self.scale_bound}"


class SplineCoupling(_Coupling):
    """The rational-quadratic spline coupling (Durkan et al., 2019, RQ-NSF (C)): y = x on the
    kept features; each transformed feature through its own monotone spline of ``bins`` bins
    on [-bound, bound] (the identity outside), its 3K - 1 raw parameters (K widths, K
    heights, K - 1 interior derivatives) from conditioner(x * mask[, context]); the fused op
    ``genkernels.ops.rq_spline`` does the bin search, the spline (or its inverse) and the
    log-determinant in one pass.

    Args:
        mask: as AffineCoupling's.
        conditioner: a module mapping (B, *F) [and the context] to (B, (3K - 1) D) for
            vectors (read as (B, D, 3K - 1)) or (B, (3K - 1) C, H, W) for images (read as
            (B, C, 3K - 1, H, W)); None: the KeptMLP / ResNet with ``hidden`` units, its last
            layer's weights at zero and its bias at the identity spline's parameters (equal
            bins, unit derivatives: the layer starts as the identity); a conditioner of your
            own can do the same with ``spline_reference.identity_bias``.
        bins: K >= 1. bound: the interval's half-width (> 0).
        context_features, backend: as AffineCoupling's.
    """

    feature_major = True   # its parameters are read as (B, D, 3K - 1)

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module | None = None, *, bins: int = 8,
                 bound: float = 3.0, hidden: int | None = None, context_features: int | None = None,
                 backend: str | None = None):
        self_bins = check_int("bins", bins, 1)
        super().__init__(mask, conditioner, 3 * self_bins - 1, hidden, context_features)
        self.bins = self_bins
        if conditioner is None:   # the default conditioner starts at the identity spline
            bias = self.conditioner.out.bias   # (D P), or KeptMLP's (D1 P): the transformed features'
            spline_reference.identity_bias(bias, bias.numel() // (3 * self_bins - 1), self_bins)
        self.bound = spline_ops.check_tail_bound(bound)
        self.backend = backend

    def _couple(self, x, context, inverse: bool, name: str):
        self._check_input(x, name)
        p = self._params(x, context)
        per = 3 * self.bins - 1
        if self.image:   # (B, P C, H, W) -> (B, C, H, W, P)
            p = p.reshape(x.shape[0], x.shape[1], per, *x.shape[2:]).movedim(2, -1)
        else:
            p = p.reshape(x.shape[0], x.shape[1], per)
        return spline_ops.apply(x, p, self.mask, self.bound, inverse, self.backend)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(x, context, False, "x")

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(y, context, True, "y")

    def extra_repr(self) -> str:
        return f"mask={tuple(self.mask.shape)}, bins={self.bins}, bound={self.bound}"


class AdditiveCoupling(_Coupling):
    """NICE's volume-preserving coupling: y = x + t on the transformed features, t =
    conditioner(x * mask[, context]) of the input's shape; log-determinant 0. Arguments as
    AffineCoupling's (the default conditioner returns F channels, not 2 F)."""

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module | None = None, *, hidden: int | None = None,
                 context_features: int | None = None):
        super().__init__(mask, conditioner, 1, hidden, context_features)

    def _couple(self, x, context, sign: float, name: str):
        self._check_input(x, name)
        t = self._params(x, context)
        y = torch.where(self.mask.to(torch.bool), x, x + sign * t)   # a kept feature's t never enters
        return y.to(x.dtype), torch.zeros(x.shape[0], dtype=_logdet_dtype(x.dtype), device=x.device)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(x, context, 1.0, "x")

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(y, context, -1.0, "y")

    def extra_repr(self) -> str:
        return f"mask={tuple(self.mask.shape)}"


def _logdet_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


__all__ = ["MLP", "AdditiveCoupling", "AffineCoupling", "KeptMLP", "ResNet", "SplineCoupling", "alternating_mask",
           "channel_mask", "checkerboard_mask", "half_mask"]
