"""Pure-PyTorch specification of the RBM ops (the oracle of the cpu and triton backends).

Half-step of a restricted Boltzmann machine with weights ``W`` (n_visible, n_hidden):

* ``transpose=False`` (visible -> hidden): s (B, n_visible), bias (n_hidden,),
  P = sigmoid(s @ W + bias), (B, n_hidden);
* ``transpose=True`` (hidden -> visible): s (B, n_hidden), bias (n_visible,),
  P = sigmoid(s @ W^T + bias), (B, n_visible).

The Bernoulli draw of element (b, j) of P (B, n_out) is ``u < P[b, j]`` with
``u = genkernels.random.rand(seed, offset + b * n_out + j)`` -- one Philox counter per
element, rows consecutive (the counter layout of every backend). Row b is the caller's
sample b: a caller holding rows r0.. of a larger batch (a shard, a minibatch of a chain
set) passes ``offset + r0 * n_out`` and draws exactly what the whole batch would draw for
those rows, so the stream is keyed by the global sample index and the unit.

Arithmetic is in fp32 (fp64 for fp64 weights); states may be uint8 samples or floats.
"""

from __future__ import annotations

import torch

from .. import random as gk_random
from .._checks import acc_dtype


def half_step_offsets(offset: int, rows: int, n_out: int, device) -> torch.Tensor:
    """(rows, n_out) int64 Philox counters offset + b * n_out + j (wrapping as int64)."""
    b = torch.arange(rows, dtype=torch.int64, device=device)[:, None]
    j = torch.arange(n_out, dtype=torch.int64, device=device)[None, :]
    return b * n_out + j + offset


def half_step_probs(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor,
                    transpose: bool) -> torch.Tensor:
    """P = sigmoid(s @ W + bias) (transpose=False) or sigmoid(s @ W^T + bias): (B, n_out)."""
    dt = acc_dtype(w.dtype)
    wt = w.to(dt).T if transpose else w.to(dt)
    return torch.sigmoid(torch.mm(s.to(dt), wt) + bias.to(dt))


def bernoulli(probs: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """uint8 samples (u < probs) of probs (B, n_out) with the counters of the half-step."""
    rows, n_out = probs.shape
    offsets = half_step_offsets(offset, rows, n_out, probs.device)
    u = gk_random.rand(seed, offsets, backend="reference")
    return (u < probs).to(torch.uint8)


def rbm_half_step(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
                  transpose: bool, return_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples (B, n_out) uint8, probs (B, n_out) in the accumulation dtype, or an empty
    (0, n_out) tensor when return_probs is False)."""
    probs = half_step_probs(s, w, bias, transpose)
    samples = bernoulli(probs, seed, offset)
    if not return_probs:
        probs = probs.new_empty((0, probs.shape[1]))
    return samples, probs
