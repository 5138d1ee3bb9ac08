"""Pure-PyTorch specification of the classical Hopfield ops: short, obviously correct,
the test oracle.

Shapes: N units, P stored patterns, B probes recalled at once. States are ±1 floats in
the weights' dtype. Weights are (N, N), symmetric; :func:`store_weights` gives them a
zero diagonal under every rule.

Update rule (both modes): a unit takes the sign of its local field h_i = Σ_j W_ij s_j;
a unit whose field is exactly 0 keeps its state.

Asynchronous recall (:func:`recall_async`) is a Python loop -- an oracle for small
sizes; the compiled kernel (csrc/cpu/hopfield.cpp) reproduces it bit for bit:

* the fields of every probe start as ``probes @ weights`` (one matrix product, which
  the kernel calls too, so both start from the same bits);
* one sweep visits every unit once, in the sweep's order; after unit i flips to s_i the
  fields are updated incrementally, ``h += (2 s_i) * W[i]`` (row i = column i, W being
  symmetric; the product by ±2 is exact, so the one rounding is the addition's);
* a probe stops after the first sweep that flips nothing (``converged``) or after
  ``max_sweeps`` sweeps.

Counter layout of the random order (genkernels.random, Philox4x32-10): sweep t
(0-based) of probe b sorts the units by the uint32 keys
``randint(seed, offset + (b * max_sweeps + t) * N + j)`` for j = 0 .. N-1 -- a stable
sort, so equal keys keep ascending unit order -- and visits them in that order. The
counters wrap as int64. Probe b's stream depends only on (seed, offset, b, max_sweeps,
N), so recalling probes[k:] with offset + k * max_sweeps * N repeats the batch's result
for them; a caller that recalls again advances the offset by B * max_sweeps * N. The
order of probe b > 0 depends on max_sweeps: runs with different max_sweeps are prefixes
of one another only for probe 0 (a batch of one).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .. import random as gk_random
from .._checks import acc_dtype
from ..sweep import single_site_sweep

RULES = ("hebbian", "storkey", "pseudoinverse")
MODES = ("async", "sync")
ORDERS = ("random", "sequential")


def _symmetric_zero_diagonal(w: torch.Tensor) -> torch.Tensor:
    # (a + b) / 2 == (b + a) / 2 exactly, so the result is symmetric bit for bit
    w = (w + w.T) / 2
    return w.fill_diagonal_(0)


# ---------------------------------------------------------------------------- storing
def store_weights(patterns: torch.Tensor, rule: str = "hebbian") -> torch.Tensor:
    """Weights that store ``patterns``.

    Args:
        patterns: (P, N) float, entries ±1.
        rule: "hebbian"        W = (1/N) Σ_μ ξ^μ ξ^μᵀ;
              "storkey"        Storkey's incremental rule (1997), one pattern at a time:
                               W += (1/N) (ξξᵀ − ξ h̃ᵀ − h̃ ξᵀ) with h̃_ij = Σ_{k≠i,j} W_ik ξ_k,
                               i.e. Δ_ij = (1/N)(ξ_iξ_j − ξ_i h_j − h_i ξ_j + 2 W_ij) for
                               h = W ξ and W with a zero diagonal;
              "pseudoinverse"  the projection rule W = Ξᵀ (Ξ Ξᵀ)⁺ Ξ (Personnaz et al.;
                               Kanter & Sompolinsky), Ξ the (P, N) pattern matrix.
    Returns:
        W: (N, N) in patterns' dtype, symmetric, diagonal zeroed (after every Storkey
        step). Hebbian and Storkey accumulate in fp32 (fp64 for fp64 patterns); the
        pseudo-inverse is computed in fp64.
    """
    _p, n = patterns.shape
    if rule == "hebbian":
        x = patterns.to(acc_dtype(patterns.dtype))
        w = (x.T @ x) / n
    elif rule == "storkey":
        x = patterns.to(acc_dtype(patterns.dtype))
        w = x.new_zeros((n, n))
        for xi in x:
            h = w @ xi
            delta = (torch.outer(xi, xi) - torch.outer(xi, h) - torch.outer(h, xi) + 2 * w) / n
            w = _symmetric_zero_diagonal(w + delta)
    elif rule == "pseudoinverse":
        x = patterns.to(torch.float64)
        w = x.T @ torch.linalg.pinv(x @ x.T, hermitian=True) @ x
    else:
        raise ValueError(f"rule must be one of {', '.join(map(repr, RULES))}; got {rule!r}")
    return _symmetric_zero_diagonal(w).to(patterns.dtype)


# ----------------------------------------------------------------------------- energy
def energy(weights: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """E(s) = −½ sᵀ W s of every row. weights (N, N), states (B, N) -> (B,) in the
    accumulation dtype of weights (fp32, or fp64 for fp64)."""
    dt = acc_dtype(weights.dtype)
    s = states.to(dt)
    return -0.5 * ((s @ weights.to(dt)) * s).sum(dim=-1)


# ------------------------------------------------------------------------------ update
def sign_keep(fields: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """sign(fields), except where a field is exactly 0 (or NaN): the state is kept."""
    one = torch.ones((), dtype=states.dtype, device=states.device)
    return torch.where(fields > 0, one, torch.where(fields < 0, -one, states))


def recall_sync(weights: torch.Tensor, probes: torch.Tensor,
                max_sweeps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synchronous (Little) dynamics: every unit at once, s ← sign(W s) (zero field
    keeps the state), at most ``max_sweeps`` times.

    weights (N, N); probes (B, N) ±1 in weights' dtype. Returns states (B, N) and
    converged (B,) bool: the last sweep changed nothing (a fixed point; a 2-cycle is
    not converged). A probe that reached a fixed point stays there; the loop stops
    once every probe has."""
    states = probes.clone()
    converged = torch.zeros(probes.shape[0], dtype=torch.bool, device=probes.device)
    for _ in range(max_sweeps):
        new = sign_keep(states @ weights, states)
        converged = (new == states).all(dim=1)
        states = new
        if bool(converged.all()):
            break
    return states, converged


def sweep_order(n: int, order: str, seed: int, offset: int, probe: int, sweep: int,
                max_sweeps: int, device=None) -> torch.Tensor:
    """The units visited by sweep ``sweep`` of probe ``probe``, (N,) int64: 0..N-1 for
    order="sequential"; for "random" the stable argsort of the Philox keys at counters
    offset + (probe * max_sweeps + sweep) * N + j (module docstring)."""
    if order == "sequential":
        return torch.arange(n, device=device)
    start = offset + (probe * max_sweeps + sweep) * n
    start = gk_random.wrap_int64(start)  # the int64 counter
    counters = start + torch.arange(n, dtype=torch.int64, device=device)
    return gk_random.visiting_order(gk_random.randint(seed, counters, backend="reference"))


def async_sweep(weights: torch.Tensor, state: torch.Tensor, fields: torch.Tensor,
                units: torch.Tensor) -> Iterator[int]:
    """One asynchronous sweep of one probe over ``units``, in place: state (N,) and its
    fields (N,) are updated; yields the index of every unit that flips, right after its
    flip (so a caller can watch the energy step by step). The sweep of
    genkernels/sweep.py, which the Boltzmann Gibbs sweeps run too, with the sign rule."""
    def sign(i: int) -> float:
        h = fields[i].item()
        return 1.0 if h > 0 else (-1.0 if h < 0 else state[i].item())

    return single_site_sweep(weights, state, fields, units.tolist(), sign)


def recall_async(weights: torch.Tensor, probes: torch.Tensor, order: str, max_sweeps: int,
                 seed: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asynchronous (Hopfield) dynamics, one unit at a time (module docstring).

    Args:
        weights: (N, N) float32 or float64, symmetric.
        probes: (B, N) ±1 in weights' dtype.
        order: "sequential" (units 0..N-1 every sweep) or "random" (a Philox permutation
            per probe and sweep).
        max_sweeps: sweeps at most; seed in [0, 2^64), offset an int64: the random order.
    Returns:
        states (B, N) in weights' dtype; converged (B,) bool -- a full sweep flipped
        nothing (False after max_sweeps sweeps that all flipped something, and when
        max_sweeps == 0).
    """
    b_count, n = probes.shape
    states = probes.clone()
    fields = probes @ weights
    converged = torch.zeros(b_count, dtype=torch.bool, device=probes.device)
    for b in range(b_count):
        for t in range(max_sweeps):
            units = sweep_order(n, order, seed, offset, b, t, max_sweeps, probes.device)
            flips = sum(1 for _ in async_sweep(weights, states[b], fields[b], units))
            if flips == 0:
                converged[b] = True
                break
    return states, converged
