"""Pure-PyTorch specification of general Boltzmann machines: short, obviously correct,
the test oracle.

Shapes: N = visible + hidden binary units in {0, 1}, C chains run at once. Weights are
(N, N), symmetric with a zero diagonal; bias (N,). The energy of a state s is
E(s) = -1/2 s^T W s - b^T s, so unit i sees the field h_i = sum_j W_ij s_j + b_i
(= E(s with s_i = 0) - E(s with s_i = 1)) and, at temperature T, turns on with
probability p_i = 1 / (1 + exp(-h_i / T)).

Sequential Gibbs sweeps (:func:`gibbs`) -- a Python loop: an oracle for small sizes;
the compiled kernels (csrc/cpu/boltzmann.cpp, genkernels/boltzmann/bm_triton.py) follow it
step for step:

* the fields of every chain start as ``torch.addmm(bias, states, weights)`` (the product
  which the kernels' launchers call too);
* sweep t of chain c visits every unit once, in sequential order (0..N-1) or in a
  random order; clamped units are visited but never change;
* the visited unit draws u_i < p_i (u the uniform below, p in the accumulation dtype);
  when it changes by delta = +-1 the fields get ``h += delta * W[i]`` (exact product,
  one rounding) -- genkernels/sweep.py's sweep, which Hopfield recall runs too;
* temperatures[t] is the temperature of sweep t (annealing schedules are sequences).

Counter layout (genkernels.random, Philox4x32-10): sweep t of chain c uses the counters
``offset + (c * S + t) * N + i`` for units i = 0..N-1 (S = number of sweeps of the call,
int64 wrap). Of the four words of counter i, word 0 is unit i's sort key for the random
order (a stable argsort, as in genkernels/hopfield) and word 1 its uniform
(``uint_to_uniform_float``, as ``tl.rand``). A caller that samples again advances the
offset by C * S * N.
"""

from __future__ import annotations

import torch

from .. import random as gk_random
from .._checks import acc_dtype
from ..sweep import single_site_sweep

ORDERS = ("random", "sequential")


def energy(weights: torch.Tensor, bias: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """E(s) = -1/2 s^T W s - b^T s for states (..., N) in {0, 1} -> (...)."""
    dt = acc_dtype(weights.dtype)
    s = states.to(dt)
    return -0.5 * ((s @ weights.to(dt)) * s).sum(-1) - s @ bias.to(dt)


def sweep_words(n: int, seed: int, offset: int, chain: int, sweep: int, n_sweeps: int,
                device=None) -> torch.Tensor:
    """(N, 4) uint32 Philox words of sweep ``sweep`` of chain ``chain`` (module docstring)."""
    start = offset + (chain * n_sweeps + sweep) * n
    start = gk_random.wrap_int64(start)
    counters = start + torch.arange(n, dtype=torch.int64, device=device)
    return gk_random.randint4x(seed, counters, backend="reference")


def unit_probability(field: torch.Tensor, temperature: float) -> torch.Tensor:
    """p = 1 / (1 + exp(-h / T)), in the field's dtype (the kernels use this formula)."""
    return 1.0 / (1.0 + torch.exp(-(field / temperature)))


def gibbs(weights: torch.Tensor, bias: torch.Tensor, states: torch.Tensor,
          clamp: torch.Tensor, temperatures: torch.Tensor, order: str, seed: int,
          offset: int) -> torch.Tensor:
    """Sequential Gibbs sweeps of C chains (module docstring).

    Args:
        weights: (N, N) float32/float64, symmetric, zero diagonal; bias (N,) same dtype.
        states: (C, N) in {0, 1}, weights' dtype: the chains' starting states.
        clamp: (N,) bool: units that keep their state (the clamped phase's visibles).
        temperatures: (S,) > 0: the temperature of each sweep (S sweeps).
        order: "random" or "sequential"; seed in [0, 2^64), offset int64.
    Returns:
        (C, N) states after the S sweeps, weights' dtype.
    """
    c_count, n = states.shape
    s = states.clone()
    fields = torch.addmm(bias, s, weights)  # the kernels' launchers take this product too
    temps = temperatures.tolist()
    frozen = clamp.tolist()
    for c in range(c_count):
        for t, temp in enumerate(temps):
            words = sweep_words(n, seed, offset, c, t, len(temps), states.device)
            if order == "random":
                units = gk_random.visiting_order(words[:, 0]).tolist()
            else:
                units = range(n)
            u = gk_random.uint_to_uniform_float(words[:, 1]).to(s.dtype)
            chain_fields = fields[c]

            def draw(i: int) -> float:
                return 1.0 if bool(u[i] < unit_probability(chain_fields[i], temp)) else 0.0

            # clamped units never change: the sweep skips them
            free_units = [i for i in units if not frozen[i]]
            for _ in single_site_sweep(weights, s[c], chain_fields, free_units, draw):
                pass
    return s


# -------------------------------------------------------------------- exact answers
def all_states(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(2^N, N) every binary state; row k is the binary expansion of k, unit 0 first."""
    if n > 24:
        raise ValueError(f"n must be <= 24 to enumerate every state; got {n}")
    k = torch.arange(2**n, device=device)
    return ((k[:, None] >> torch.arange(n, device=device)) & 1).to(dtype)


def log_partition(weights: torch.Tensor, bias: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log Z = log sum_s exp(-E(s) / T) by enumeration (N <= 24), float64."""
    s = all_states(weights.shape[0], device=weights.device)
    return torch.logsumexp(-energy(weights.double(), bias.double(), s) / temperature, 0)


def joint_probabilities(weights: torch.Tensor, bias: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(2^N,) exact Boltzmann probabilities of every state of all_states order."""
    s = all_states(weights.shape[0], device=weights.device)
    logits = -energy(weights.double(), bias.double(), s) / temperature
    return torch.softmax(logits, 0)


def visible_marginal(weights: torch.Tensor, bias: torch.Tensor, n_visible: int,
                     temperature: float = 1.0) -> torch.Tensor:
    """(2^V,) exact marginal of the first V units (state index = binary expansion)."""
    joint = joint_probabilities(weights, bias, temperature)
    index = torch.arange(joint.numel(), device=joint.device) & (2**n_visible - 1)
    return torch.zeros(2**n_visible, dtype=joint.dtype, device=joint.device).index_add_(0, index, joint)


def state_index(states: torch.Tensor) -> torch.Tensor:
    """Index of each binary state (..., N) in all_states order."""
    powers = 2 ** torch.arange(states.shape[-1], device=states.device)
    return (states.round().to(torch.int64) * powers).sum(-1)


def ground_state(weights: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(state (N,), energy) of lowest energy by enumeration (ties: lowest index)."""
    s = all_states(weights.shape[0], device=weights.device)
    e = energy(weights.double(), bias.double(), s)
    k = int(torch.argmin(e))
    return s[k], e[k]


__all__ = ["ORDERS", "all_states", "energy", "gibbs", "ground_state", "joint_probabilities",
           "log_partition", "state_index", "sweep_words", "unit_probability", "visible_marginal"]
