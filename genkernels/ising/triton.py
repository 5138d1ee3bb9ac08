"""Triton kernel of the checkerboard Ising sweep and ``genkernels::ising_sweep_triton``.

Works on the int8 lattice directly (no bit packing): a half-sweep is one launch over
(lattice, block of Philox counters); every counter's four words serve the four sites of
its group that take them (site 64 g + 16 w + l <- word w of counter 16 g + l, layout in
genkernels/ising/reference.py), so each program draws BLOCK Philox calls and updates up
to 4 BLOCK sites of one colour in place. Sites of one colour have no neighbour in
common colour, so the in-place update is race-free; the launches of one call run in
order on one stream. Three layers (STYLE.md): ``_ising_half_sweep_kernel`` ->
``ising_sweep_fwd()`` -> ``torch.ops.genkernels.ising_sweep_triton``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..random import key_of
from .reference import counters_per_colour, energy_sums, magnetization_sums

# Philox counters per program (each updates up to 4 sites): fixed, the interpreter
# cannot autotune (docs/design.md, "Testing").
BLOCK = 256
NUM_WARPS = 4


@triton.jit
def _geometry(L):
    """(L, H = L / 2, sites = L^2 / 2 of one colour), all int64. L arrives as an int32
    scalar: L * L in int32 overflows from L = 46,342 on (and a sweep then updated nothing),
    so every index below is computed from the int64 L (docs/design.md, "Memory")."""
    L64 = L.to(tl.int64)
    H = L64 // 2
    return L64, H, L64 * H


@triton.jit
def _site(k, colour, L, H):
    """Row i, column j and element offset i L + j within its lattice of site k (int64) of
    `colour`, row-major numbering among that colour's L^2 / 2 sites; L and H int64."""
    i = k // H
    j = 2 * (k % H) + (i + colour) % 2
    return i, j, i * L + j


@triton.jit
def _update_site(SPINS, TH, lattice, k, word, valid, colour, L, H):
    """Update site k of `colour` (row-major numbering among that colour's L^2 / 2 sites)
    with its random word; `lattice` points at the lattice's first spin. Every offset is
    int64 (L, H, k and lattice are)."""
    i, j, _ = _site(k, colour, L, H)
    up = (i + L - 1) % L
    down = (i + 1) % L
    left = (j + L - 1) % L
    right = (j + 1) % L
    s = tl.load(SPINS + lattice + i * L + j, mask=valid, other=1).to(tl.int32)
    total = (tl.load(SPINS + lattice + up * L + j, mask=valid, other=1).to(tl.int32)
             + tl.load(SPINS + lattice + down * L + j, mask=valid, other=1).to(tl.int32)
             + tl.load(SPINS + lattice + i * L + left, mask=valid, other=1).to(tl.int32)
             + tl.load(SPINS + lattice + i * L + right, mask=valid, other=1).to(tl.int32))
    n = (total + 4) // 2
    sigma = (s > 0).to(tl.int32)
    threshold = tl.load(TH + sigma * 5 + n, mask=valid, other=0)
    u = word.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    flip = u < threshold
    tl.store(SPINS + lattice + i * L + j, tl.where(flip, -s, s).to(tl.int8), mask=valid & flip)


@triton.jit
def _ising_half_sweep_kernel(
    SPINS,            # *i8 (B, L, L) contiguous, updated in place
    TH,               # *i64 (2, 5) flip thresholds in [0, 2^32]
    seed,             # Philox key, [0, 2^64)
    offset,           # i64 first counter of the call
    sweep,            # sweep index t within the call
    B,                # lattices
    L,                # lattice side (even, <= 2^24; int32 here, int64 from _geometry on)
    Q,                # counters per colour and lattice (16 * ceil(L^2 / 128))
    COLOUR: tl.constexpr,  # 0 black (i + j even), 1 white
    BLOCK: tl.constexpr,
):
    # program (b, p) owns counters [p BLOCK, (p + 1) BLOCK) of colour COLOUR of lattice b
    b = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    L, H, sites = _geometry(L)
    base = offset + ((sweep.to(tl.int64) * B + b) * 2 + COLOUR) * Q.to(tl.int64)
    r0, r1, r2, r3 = tl.randint4x(seed, base + q)
    lattice = b * L * L
    first = 64 * (q // 16) + q % 16
    in_range = q < Q
    _update_site(SPINS, TH, lattice, first, r0, in_range & (first < sites), COLOUR, L, H)
    _update_site(SPINS, TH, lattice, first + 16, r1, in_range & (first + 16 < sites), COLOUR, L, H)
    _update_site(SPINS, TH, lattice, first + 32, r2, in_range & (first + 32 < sites), COLOUR, L, H)
    _update_site(SPINS, TH, lattice, first + 48, r3, in_range & (first + 48 < sites), COLOUR, L, H)


def ising_sweep_fwd(spins: torch.Tensor, thresholds: torch.Tensor, n_sweeps: int, seed: int,
                    offset: int, measure_every: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """spins (B, L, L) int8 -> the spins after n_sweeps sweeps (a new tensor), and the bond
    and spin sums (B, n_sweeps // measure_every) int64 after every measure_every sweeps
    (PyTorch reductions on the device between launches)."""
    out = spins.contiguous().clone()
    n_lattices, L = out.shape[0], out.shape[1]
    n_samples = n_sweeps // measure_every if measure_every else 0
    bonds = torch.zeros(n_lattices, n_samples, dtype=torch.int64, device=out.device)
    totals = torch.zeros_like(bonds)
    if n_lattices == 0:
        return out, bonds, totals
    th = thresholds.to(device=out.device, dtype=torch.int64).contiguous()
    q_count = counters_per_colour(L)
    grid = (n_lattices, triton.cdiv(q_count, BLOCK))
    for t in range(n_sweeps):
        for colour in (0, 1):
            _ising_half_sweep_kernel[grid](out, th, key_of(seed), offset, t, n_lattices, L,
                                           q_count, COLOUR=colour, BLOCK=BLOCK,
                                           num_warps=NUM_WARPS)
        if measure_every and (t + 1) % measure_every == 0:
            sample = (t + 1) // measure_every - 1
            bonds[:, sample] = energy_sums(out)
            totals[:, sample] = magnetization_sums(out)
    return out, bonds, totals


def _fake(spins, thresholds, n_sweeps, seed, offset, measure_every):
    n_samples = n_sweeps // measure_every if measure_every else 0
    sums = spins.new_empty((spins.shape[0], n_samples), dtype=torch.int64)
    return torch.empty_like(spins, memory_format=torch.contiguous_format), sums, sums.clone()


@torch.library.custom_op("genkernels::ising_sweep_triton", mutates_args=())
def ising_sweep_triton(spins: torch.Tensor, thresholds: torch.Tensor, n_sweeps: int, seed: int,
                       offset: int, measure_every: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return ising_sweep_fwd(spins, thresholds, n_sweeps, seed, offset, measure_every)


ising_sweep_triton.register_fake(_fake)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel

    # offsets beyond 2^31 reach the kernel as i64, the common case for a model's stream
    sig = {"SPINS": "*i8", "TH": "*i64", "seed": "i64", "offset": "i64", "sweep": "i32",
           "B": "i32", "L": "i32", "Q": "i32"}
    return [TritonKernel("ising", f"_ising_half_sweep_kernel[colour={colour}]",
                         lambda: _ising_half_sweep_kernel, sig,
                         {"COLOUR": colour, "BLOCK": BLOCK}, NUM_WARPS)
            for colour in (0, 1)]
