"""The affine coupling's elementwise part, in PyTorch: the spec of ``affine_coupling``.

A coupling layer (NICE, RealNVP, Glow) splits the features with a binary mask m: the kept
features (m = 1) pass through and condition a network that returns, for every feature, a raw
log-scale s and a shift t; the others (m = 0) are scaled and shifted. This module is the part
after that network -- the mask, the bounded scale, the scale-and-shift and the per-sample
log-determinant -- which eager PyTorch runs as a chain of memory-bound kernels.

Shapes: x (B, N) (features flattened); params (B, 2N): each row's raw log-scales s, then its
shifts t (a conditioner's (B, 2C, H, W) or (B, 2D) output flattened); mask (N,), 1 = kept,
0 = transformed.
Bounded scale: sigma = bound tanh(s / bound) for a finite bound > 0 (|sigma| < bound: the
scale e^sigma stays in (e^-bound, e^bound), RealNVP's tanh scale), sigma = s for bound = inf.

    forward:  y = x                 where m = 1,   x e^sigma + t      where m = 0;
              logdet = sum over m = 0 of sigma
    inverse:  x = y                 where m = 1,   (y - t) e^-sigma  where m = 0;
              logdet = -sum over m = 0 of sigma

so inverse(forward(x)) = x and the two log-determinants cancel. The kept features' s and t
are ignored (never read into the result, zero gradient), whatever they hold.
"""

from __future__ import annotations

import math

import torch


def bounded_scale(s: torch.Tensor, bound: float) -> torch.Tensor:
    """sigma = bound tanh(s / bound) (finite bound > 0), or s itself (bound = inf)."""
    return s if math.isinf(bound) else bound * torch.tanh(s / bound)


def affine_coupling(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor, bound: float,
                    inverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N) input, (B, 2N) raw log-scales and shifts, (N,) binary mask -> output (B, N) in
    x's dtype, the per-sample log-determinant (B,) and the bounded log-scales sigma (B, N),
    zero on the kept features ((0,) when unbounded; the fused kernels' backward reads it),
    both in the accumulation dtype (fp32 for half and bfloat16 inputs)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n = x.shape[1]
    xa, pa = x.to(acc), params.to(acc)
    s, t = pa[:, :n], pa[:, n:]
    kept = mask.to(torch.bool)
    sigma = torch.where(kept, torch.zeros((), dtype=acc, device=x.device), bounded_scale(s, bound))
    if inverse:
        moved = (xa - t) * torch.exp(-sigma)
    else:
        moved = xa * torch.exp(sigma) + t
    out = torch.where(kept, xa, moved).to(x.dtype)
    logdet = sigma.sum(1)
    saved = sigma if not math.isinf(bound) else sigma.new_empty((0,))
    return out, -logdet if inverse else logdet, saved
