"""Checkerboard Ising sweeps in plain PyTorch: the specification and test oracle of
``genkernels::ising_sweep`` (cpu: csrc/cpu/ising.cpp, triton: genkernels/ising/triton.py,
cuda: csrc/cuda/ising.cu).

Model. ``B`` independent L x L periodic lattices of spins s = ±1 (L even, >= 4) with
energy E = -J Σ_<ij> s_i s_j - h Σ_i s_i (every nearest-neighbour bond once). A site
(i, j) is *black* (colour 0) when i + j is even and *white* (colour 1) otherwise; a
sweep updates every black site, then every white site (all sites of one colour at once:
their neighbours all have the other colour). A flip is one attempted spin update.

Acceptance. A site of spin s whose four neighbours hold ``n`` spins +1 (n = 0..4, the
neighbour sum Σnb = 2n - 4) draws one uint32 ``u`` and *flips* iff ``u < F[σ, n]``,
σ = 1 if s = +1 else 0. ``F`` (2, 5) int64 holds integer thresholds in [0, 2^32]
computed once per temperature in float64 by :func:`thresholds`:

    F = floor(p * 2^32 + 1/2)          (p in [0, 1], so F in [0, 2^32])

so P(flip) = F / 2^32 exactly and |P(flip) - p| <= 2^-33; F = 2^32 always flips (p = 1:
every downhill Metropolis move) and F = 0 never does. With H = J Σnb + h the local field:

* heat-bath: the new spin is +1 with probability p+ = 1 / (1 + exp(-2 β H)). A -1 spin
  flips with p = p+, a +1 spin with p = 1 - p+, and F[1, n] = 2^32 - F[0, n], so
  P(s' = +1) = F[0, n] / 2^32 whatever s was;
* metropolis: a spin flips with p = min(1, exp(-β ΔE)), ΔE = 2 s H.

Random numbers (docs/design.md, "Randomness"): Philox4x32-10, key ``seed``, one
``randint4x`` call per counter, all four words used. Within one colour of one lattice the
N/2 = L^2/2 sites are numbered in row-major order, k = i * (L/2) + m for the site of
column j = 2m + ((i + colour) mod 2) of row i; they form G = ceil(N / 128) groups of 64
sites, Q = 16 G counters per colour (a group's 16 counters are consecutive):

    site k = 64 g + 16 w + l   (w, l in [0, 4) x [0, 16))  uses word w of counter
    offset + ((t * B + b) * 2 + colour) * Q + 16 g + l

for sweep t (counted from 0 within one call) of lattice b. A call of n sweeps consumes
n * B * 2 * Q counters: running n1 sweeps with offset o and then n2 sweeps with offset
o + n1 * B * 2 * Q gives exactly the lattices of one call of n1 + n2 sweeps. (Words of
the padding sites k >= N/2 of the last group are drawn and not used.)
"""

from __future__ import annotations

import math

import torch

from .. import random as gk_random

ALGORITHMS = ("heatbath", "metropolis")
INITS = ("ordered", "random")
TWO_32 = 2**32


def counters_per_colour(L: int) -> int:
    """Q = 16 * ceil(L^2 / 128): Philox counters one colour of one lattice draws per sweep."""
    return 16 * -(-(L * L // 2) // 64)


def counters_per_sweep(L: int, n_lattices: int) -> int:
    """Counters one sweep of ``n_lattices`` lattices consumes: n_lattices * 2 * Q."""
    return n_lattices * 2 * counters_per_colour(L)


def _probability_threshold(p: float) -> int:
    return min(TWO_32, max(0, math.floor(p * TWO_32 + 0.5)))


def _logistic(x: float) -> float:
    """1 / (1 + exp(-x)) without overflow."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def thresholds(beta: float, J: float, h: float, algorithm: str) -> torch.Tensor:
    """Integer flip thresholds F (2, 5) int64 in [0, 2^32] for inverse temperature
    ``beta``, coupling ``J``, field ``h``: F[σ, n] for a spin s = 2σ - 1 with n
    neighbours at +1 (formula in the module docstring). Plain float64 arithmetic,
    computed once per temperature and passed unchanged to every backend."""
    rows = [[0] * 5, [0] * 5]
    for n in range(5):
        field = J * (2 * n - 4) + h
        if algorithm == "heatbath":
            up = _probability_threshold(_logistic(2.0 * beta * field))
            rows[0][n], rows[1][n] = up, TWO_32 - up
        else:
            for sigma, s in ((0, -1.0), (1, 1.0)):
                delta_e = 2.0 * s * field
                p = 1.0 if delta_e <= 0 else math.exp(-beta * delta_e)
                rows[sigma][n] = _probability_threshold(p)
    return torch.tensor(rows, dtype=torch.int64)


def colour_randoms(seed: int, offset: int, L: int, n_lattices: int, sweep: int, colour: int,
                   device=None) -> torch.Tensor:
    """The uint32 words of one colour of every lattice in sweep ``sweep``, as int64:
    (B, L^2 / 2), entry [b, k] for site k of that colour (numbering above)."""
    q_count = counters_per_colour(L)
    q = torch.arange(q_count, dtype=torch.int64, device=device)
    b = torch.arange(n_lattices, dtype=torch.int64, device=device)
    base = offset + ((sweep * n_lattices + b) * 2 + colour) * q_count          # (B,)
    counters = base[:, None] + q[None, :]  # (B, Q); int64 arithmetic wraps like the kernels'
    words = gk_random.randint4x(seed, counters, backend="reference")            # (B, Q, 4)
    words = words.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    # (B, G, 16 lanes l, 4 words w) -> site 64 g + 16 w + l
    sites = words.reshape(n_lattices, -1, 16, 4).transpose(2, 3).reshape(n_lattices, -1)
    return sites[:, : L * L // 2]


def colour_sites(L: int, colour: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns (L^2 / 2,) int64 of the sites of ``colour``, in site order k."""
    k = torch.arange(L * L // 2, dtype=torch.int64, device=device)
    rows = k // (L // 2)
    cols = 2 * (k % (L // 2)) + (rows + colour) % 2
    return rows, cols


def neighbours_up(spins: torch.Tensor) -> torch.Tensor:
    """n (B, L, L) int64: how many of the four periodic neighbours of each site are +1."""
    s = spins.to(torch.int64)
    total = (torch.roll(s, 1, 1) + torch.roll(s, -1, 1) + torch.roll(s, 1, 2)
             + torch.roll(s, -1, 2))
    return (total + 4) // 2


def sweep(spins: torch.Tensor, flip_thresholds: torch.Tensor, n_sweeps: int, seed: int,
          offset: int, measure_every: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_sweeps`` checkerboard sweeps.

    spins: (B, L, L) int8, entries ±1; flip_thresholds: (2, 5) int64 (:func:`thresholds`);
    seed: int in [0, 2^64); offset: int64, the first counter; measure_every: >= 0.
    Returns the new (B, L, L) int8 spins (the input is untouched) and, taken after sweeps
    measure_every, 2 measure_every, ... (none when measure_every = 0), the bond sums and
    spin sums (:func:`energy_sums`, :func:`magnetization_sums`): (B, S) int64 each,
    S = n_sweeps // measure_every."""
    spins = spins.clone(memory_format=torch.contiguous_format)
    n_lattices, L = spins.shape[0], spins.shape[1]
    table = flip_thresholds.to(device=spins.device, dtype=torch.int64)
    bonds, totals = [], []
    for t in range(n_sweeps if n_lattices else 0):
        for colour in (0, 1):
            rows, cols = colour_sites(L, colour, spins.device)
            u = colour_randoms(seed, offset, L, n_lattices, t, colour, spins.device)  # (B, N/2)
            n = neighbours_up(spins)[:, rows, cols]                                  # (B, N/2)
            s = spins[:, rows, cols]
            sigma = (s > 0).to(torch.int64)
            flip = u < table[sigma, n]
            spins[:, rows, cols] = torch.where(flip, -s, s)
        if measure_every and (t + 1) % measure_every == 0:
            bonds.append(energy_sums(spins))
            totals.append(magnetization_sums(spins))
    if not bonds:  # no samples, or no lattices to sweep
        n_samples = n_sweeps // measure_every if measure_every else 0
        empty = torch.zeros(n_lattices, n_samples, dtype=torch.int64, device=spins.device)
        return spins, empty, empty.clone()
    return spins, torch.stack(bonds, 1), torch.stack(totals, 1)


def energy_sums(spins: torch.Tensor) -> torch.Tensor:
    """Σ_<ij> s_i s_j over the 2 N bonds of each lattice: (B, L, L) -> (B,) int64."""
    s = spins.to(torch.int64)
    return (s * torch.roll(s, 1, 1) + s * torch.roll(s, 1, 2)).sum(dim=(1, 2))


def magnetization_sums(spins: torch.Tensor) -> torch.Tensor:
    """Σ_i s_i of each lattice: (B, L, L) -> (B,) int64."""
    return spins.to(torch.int64).sum(dim=(1, 2))
