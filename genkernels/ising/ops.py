"""Public ops of checkerboard Ising lattices: validation, backend choice, fake kernels.

Every op here is re-exported flat in ``genkernels.ops``. ``ising_sweep`` runs on
``reference`` (genkernels/ising/reference.py, PyTorch on int8 spins), ``cpu``
(csrc/cpu/ising.cpp, multi-spin coded), ``triton`` (genkernels/ising/triton.py, int8
spins) and ``cuda`` (csrc/cuda/ising.cu, multi-spin coded); all of them return identical
lattices for identical arguments. The state every backend takes and returns is the
(B, L, L) int8 lattice of ±1: the bit-packed backends pack it on entry and unpack it on
exit (O(L^2) per call, next to the O(n_sweeps L^2) of the sweeps).
"""

from __future__ import annotations

import math
import numbers

import torch

from .. import registry
from .. import random as gk_random
from .._checks import check_choice, check_int, compiling
from . import reference
from .reference import ALGORITHMS, TWO_32



def _sweep_fake(spins, thresholds, n_sweeps, seed, offset, measure_every):
    n_samples = n_sweeps // measure_every if measure_every else 0
    sums = spins.new_empty((spins.shape[0], n_samples), dtype=torch.int64)
    return torch.empty_like(spins, memory_format=torch.contiguous_format), sums, sums.clone()


def _sweep_reference(spins, thresholds, n_sweeps, seed, offset, measure_every):
    return reference.sweep(spins, thresholds, n_sweeps, gk_random.key_of(seed), offset, measure_every)


# ising_sweep(spins (B, L, L) int8 ±1, thresholds, n_sweeps, seed (int64 bit
# pattern), offset, measure_every) -> (spins, bond sums (B, S), spin sums (B, S)). The bit-
# packed CUDA kernel never ran on a GPU: reachable by name only.
SWEEP = registry.declare(
    "ising_sweep",
    reference=_sweep_reference,
    cpu=registry.extension("ising_sweep"),
    triton=registry.lazy(__package__ + ".triton", "ising_sweep_triton"),
    cuda=registry.extension("ising_sweep"),
    fake=_sweep_fake)
registry.static_kernels("ising", registry.lazy(__package__ + ".triton", "static_kernels"))


# ------------------------------------------------------------------------ validation
# The largest lattice side every backend supports (reference, cpu, triton, cuda alike; the
# C++ kernels check the same bound): 2^24, so the sites of one lattice (L^2 <= 2^48), a
# batch's int64 element offsets and the Philox counters of a sweep stay far inside int64.
# Every backend indexes sites with 64-bit arithmetic (the triton kernel casts L to int64
# before L * L: in int32 it overflows from L = 46,342 on).
MAX_L = 1 << 24


def check_lattice_size(L) -> int:
    """L: an even integer in [4, MAX_L = 2^24], one range for every backend."""
    L = check_int("L", L)
    if L < 4 or L % 2 or L > MAX_L:
        raise ValueError(f"L must be an even integer in [4, {MAX_L}] (checkerboard on a periodic lattice; "
                         f"2^24 is the largest side every backend supports); got {L}")
    return L


def _check_real(name: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    return value


def _check_spins(spins) -> torch.Tensor:
    if not isinstance(spins, torch.Tensor):
        raise TypeError(f"spins must be a torch.Tensor; got {type(spins).__name__}")
    if spins.dtype != torch.int8:
        raise TypeError(f"spins must be an int8 tensor of ±1; got dtype {spins.dtype}")
    if spins.dim() != 3 or spins.shape[1] != spins.shape[2]:
        raise ValueError(f"spins must be (B, L, L); got shape {tuple(spins.shape)}")
    check_lattice_size(spins.shape[1])
    if not compiling() and spins.numel() and spins.device.type != "meta":
        bad = (spins != 1) & (spins != -1)
        if bool(bad.any()):
            at = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"spins must hold only -1 and +1; got {int(spins[at])} at index {at}")
    return spins


def _check_thresholds(thresholds) -> torch.Tensor:
    if not isinstance(thresholds, torch.Tensor):
        raise TypeError(f"thresholds must be a torch.Tensor; got {type(thresholds).__name__}")
    if thresholds.dtype != torch.int64 or tuple(thresholds.shape) != (2, 5):
        raise ValueError(f"thresholds must be a (2, 5) int64 tensor (ising_thresholds); got "
                         f"{thresholds.dtype} {tuple(thresholds.shape)}")
    if not compiling() and thresholds.device.type != "meta" and \
            bool(((thresholds < 0) | (thresholds > TWO_32)).any()):
        raise ValueError(f"thresholds must lie in [0, 2^32]; got {thresholds.tolist()}")
    return thresholds


# ------------------------------------------------------------------------------ ops
def ising_thresholds(temperature: float, J: float = 1.0, h: float = 0.0,
                     algorithm: str = "heatbath") -> torch.Tensor:
    """The integer flip thresholds of one temperature: (2, 5) int64 in [0, 2^32].

    A spin s with n of its four neighbours at +1 flips iff its uint32 Philox word
    u < F[s > 0, n], F = floor(p 2^32 + 1/2) for the flip probability p of the algorithm
    ("heatbath" or "metropolis") at temperature T (> 0), coupling J and field h
    (exact formulas in genkernels/ising/reference.py). Computed once in float64 and passed
    unchanged to every backend, which is what makes their lattices identical."""
    temperature = _check_real("temperature", temperature, positive=True)
    J = _check_real("J", J)
    h = _check_real("h", h)
    check_choice("algorithm", algorithm, ALGORITHMS)
    return reference.thresholds(1.0 / temperature, J, h, algorithm)


def run_sweeps(spins: torch.Tensor, thresholds: torch.Tensor, n_sweeps: int, seed: int,
               offset: int, measure_every: int, backend: str | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backend's ``ising_sweep`` on validated arguments (the model calls this directly)."""
    thresholds = thresholds.to(spins.device)
    sweep = SWEEP.kernels[SWEEP.resolve(spins.device, backend)]
    return sweep(spins, thresholds, n_sweeps, gk_random._schema_seed(seed), offset, measure_every)


def _check_run(spins, thresholds, n_sweeps, seed, offset):
    _check_spins(spins)
    _check_thresholds(thresholds)
    return (check_int("n_sweeps", n_sweeps, 0), gk_random._check_seed(seed),
            check_int("offset", offset, *gk_random.INT64_RANGE))


def ising_sweep(spins: torch.Tensor, thresholds: torch.Tensor, n_sweeps: int = 1,
                seed: int = 0, offset: int = 0, *, backend: str | None = None) -> torch.Tensor:
    """``n_sweeps`` checkerboard sweeps of B independent periodic L x L Ising lattices.

    A sweep updates every black site (i + j even), then every white site; each update
    draws its own Philox word, counter offset + ((t B + b) 2 + colour) Q + ... (layout in
    genkernels/ising/reference.py; Q = :func:`ising_counters_per_sweep` / (2 B)).

    Args:
        spins: (B, L, L) int8, entries ±1, L even in [4, 2^24] (any device, every backend).
        thresholds: (2, 5) int64 from :func:`ising_thresholds` (moved to spins' device).
        n_sweeps: sweeps to run, >= 0.
        seed: int in [0, 2^64); offset: int64, the first Philox counter. A caller that
            sweeps again continues the stream with offset + n_sweeps *
            ising_counters_per_sweep(L, B), which gives exactly the lattices of one
            longer call.
        backend: None (auto), "reference", "cpu", "triton" or "cuda".
    Returns:
        (B, L, L) int8, the new spins (the input is untouched).
    """
    n_sweeps, seed, offset = _check_run(spins, thresholds, n_sweeps, seed, offset)
    return run_sweeps(spins, thresholds, n_sweeps, seed, offset, 0, backend)[0]


def ising_sample(spins: torch.Tensor, thresholds: torch.Tensor, n_sweeps: int, every: int = 1,
                 seed: int = 0, offset: int = 0, *, backend: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`ising_sweep` that also records the observables of every lattice after sweeps
    every, 2 every, ... (S = n_sweeps // every samples), inside the kernel (the cpu and
    cuda backends count them on the packed bits with popcounts).

    Returns (spins (B, L, L) int8, bond_sums (B, S) int64 Σ_<ij> s_i s_j over the 2 L^2
    bonds, spin_sums (B, S) int64 Σ_i s_i). Energy per spin: (-J bond_sums - h spin_sums)
    / L^2."""
    n_sweeps, seed, offset = _check_run(spins, thresholds, n_sweeps, seed, offset)
    every = check_int("every", every, 1)
    return run_sweeps(spins, thresholds, n_sweeps, seed, offset, every, backend)


def ising_counters_per_sweep(L: int, n_lattices: int) -> int:
    """Philox counters one sweep of ``n_lattices`` L x L lattices consumes."""
    return reference.counters_per_sweep(check_lattice_size(L), check_int("n_lattices", n_lattices, 1))


def ising_observables(spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bond and spin sums of every lattice: spins (B, L, L) int8 -> (Σ_<ij> s_i s_j,
    Σ_i s_i), each (B,) int64 (2 L^2 bonds, every nearest-neighbour pair once)."""
    _check_spins(spins)
    return reference.energy_sums(spins), reference.magnetization_sums(spins)
