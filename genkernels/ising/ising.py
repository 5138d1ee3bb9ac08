"""``genkernels.Ising2D``: many periodic L x L Ising lattices swept on the checkerboard,
with observables and error bars from a binning analysis."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import checkpoint as ckpt
from .._checks import check_choice, check_int
from ..model import Model
from .ops import (
    MAX_L,
    _check_real,
    check_lattice_size,
    ising_observables,
    ising_thresholds,
    run_sweeps,
)
from .reference import ALGORITHMS, INITS, counters_per_sweep


class Estimate(NamedTuple):
    """A Monte Carlo estimate: the mean and its standard error."""

    mean: float
    stderr: float


class Ising2D(Model):
    """``n_lattices`` independent L x L Ising lattices with periodic boundaries,
    E = -J Σ_<ij> s_i s_j - h Σ_i s_i, at one temperature.

    Args:
        L: lattice side, even, in [4, 2^24] (genkernels.ising.ops.MAX_L, every backend).
        temperature: T > 0 (k_B = 1; β = 1 / T).
        J: coupling (J > 0 ferromagnetic); h: external field.
        n_lattices: B >= 1 independent replicas, swept together.
        algorithm: "heatbath" or "metropolis" single-spin updates on the checkerboard
            (every black site, then every white site, per sweep).
        init: "ordered" (every spin +1) or "random" (each ±1 with probability 1/2, from
            a generator seeded with ``seed``).
        seed: Philox key, an int in [0, 2^64); None draws one from torch's RNG. The model
            owns the stream: every sweep advances :attr:`offset` by
            ``genkernels.ops.ising_counters_per_sweep(L, B)``, so runs reproduce from the
            seed and are identical on every backend.
        device: where the lattices live (the sweeps run there: cpu, triton or cuda).

    Attributes:
        spins: (B, L, L) int8 buffer of ±1. thresholds: (2, 5) int64, the integer flip
        thresholds of the temperature (genkernels.ops.ising_thresholds).

    Example::

        model = genkernels.Ising2D(128, temperature=2.0, n_lattices=16)
        model.sweep(200)                              # thermalise
        result = model.measure(1000)                  # 1000 sweeps, one sample each
        result["energy"].mean, result["energy"].stderr
    """

    kind = "Ising2D"
    _dtype_source = "spins"
    spins: torch.Tensor

    def __init__(self, L: int, temperature: float, J: float = 1.0, h: float = 0.0,
                 n_lattices: int = 1, algorithm: str = "heatbath", init: str = "ordered",
                 seed: int | None = None, device=None):
        super().__init__()
        self.L = check_lattice_size(L)
        self.n_lattices = check_int("n_lattices", n_lattices, 1)
        self.J = _check_real("J", J)
        self.h = _check_real("h", h)
        self.algorithm = check_choice("algorithm", algorithm, ALGORITHMS)
        check_choice("init", init, INITS)
        self._init_stream(seed)
        self.sweeps_done = 0
        self.temperature = temperature  # validates and sets the thresholds
        shape = (self.n_lattices, self.L, self.L)
        if init == "ordered":
            spins = torch.ones(shape, dtype=torch.int8)
        else:
            g = torch.Generator().manual_seed(self.seed % 2**63)
            spins = (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(torch.int8)
        self.register_buffer("spins", spins.to(device))

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        """Changing the temperature recomputes the thresholds; the lattices stay."""
        self._temperature = _check_real("temperature", value, positive=True)
        self.thresholds = ising_thresholds(self._temperature, self.J, self.h, self.algorithm)

    @property
    def beta(self) -> float:
        return 1.0 / self._temperature

    @property
    def n_spins(self) -> int:
        return self.L * self.L

    # ------------------------------------------------------------------- sweeping
    def sweep(self, n: int = 1, *, backend: str | None = None) -> Ising2D:
        """Run ``n`` checkerboard sweeps (n L^2 flips per lattice) and advance the stream.
        backend: None (auto), "reference", "cpu", "triton" or "cuda". Returns self."""
        self._run(check_int("n", n, 0), 0, backend)
        return self

    def _run(self, n: int, every: int, backend: str | None):
        """n sweeps (samples every `every`, 0: none) from the model's stream, which advances."""
        spins, bonds, totals = run_sweeps(self.spins, self.thresholds, n, self.seed, self.offset,
                                          every, backend)
        self.spins = spins
        self._advance(n * counters_per_sweep(self.L, self.n_lattices))
        self.sweeps_done += n
        return bonds, totals

    # ---------------------------------------------------------------- observables
    def _sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        return ising_observables(self.spins)

    def energy_per_spin(self) -> torch.Tensor:
        """E / N of every lattice: (B,) float64."""
        bonds, total = self._sums()
        return (-self.J * bonds.double() - self.h * total.double()) / self.n_spins

    def magnetization(self) -> torch.Tensor:
        """M / N = Σ s_i / N of every lattice: (B,) float64."""
        return self._sums()[1].double() / self.n_spins

    def measure(self, n_sweeps: int, thermalize: int = 0, every: int = 1, *,
                backend: str | None = None) -> dict[str, object]:
        """Sample the lattices and estimate the observables with binned error bars.

        Runs ``thermalize`` sweeps, then ``n_sweeps`` sweeps taking one sample of every
        lattice each ``every`` sweeps (T = n_sweeps // every samples per lattice).

        Estimates (per spin; the B lattices are independent replicas): "energy" ⟨e⟩,
        "abs_magnetization" ⟨|m|⟩, "magnetization" ⟨m⟩, "energy_squared" ⟨e²⟩,
        "specific_heat" c = β² N (⟨e²⟩ - ⟨e⟩²), "susceptibility" χ = β N (⟨m²⟩ - ⟨|m|⟩²)
        (the finite-lattice form with |m|), each an :class:`Estimate` (mean, stderr).

        Binning: each lattice's series is cut into bins of ``bin_size`` consecutive
        samples, the largest power of two leaving at least max(4, ceil(64 / B)) bins per
        lattice; the B x n_bins bin means are taken as independent samples (standard
        error of their mean; jackknife over bins for c and χ). Also returned:
        "bin_size", "n_bins" (in all), "binning" -- the energy's standard error for bin
        sizes 1, 2, 4, ... (a plateau means the bins are longer than the correlation
        time) -- "tau_int_energy" = ½ (stderr at bin_size / stderr at 1)², and
        "energy_series", "magnetization_series" (B, T) float64."""
        n_sweeps = check_int("n_sweeps", n_sweeps, 1)
        thermalize = check_int("thermalize", thermalize, 0)
        every = check_int("every", every, 1)
        n_samples = n_sweeps // every
        if n_samples < 1:
            raise ValueError(f"n_sweeps // every must be >= 1 sample; got n_sweeps={n_sweeps}, "
                             f"every={every}")
        self.sweep(thermalize, backend=backend)
        bonds, totals = self._run(n_sweeps, every, backend)  # one kernel call: (B, T) each
        bond_series = bonds.double().cpu()
        spin_series = totals.double().cpu()
        e = (-self.J * bond_series - self.h * spin_series) / self.n_spins
        m = spin_series / self.n_spins
        return binning_analysis(e, m, self.beta, self.n_spins)

    # ------------------------------------------------------------ persistence
    def _payload(self) -> dict:
        """The lattices, the temperature and the stream position: :meth:`load` resumes
        exactly where this left."""
        config = {"L": self.L, "temperature": self.temperature, "J": self.J, "h": self.h,
                  "n_lattices": self.n_lattices, "algorithm": self.algorithm, "seed": self.seed}
        return {"config": config, "spins": self.spins.detach().cpu(), "offset": self.offset,
                "sweeps_done": self.sweeps_done}

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> Ising2D:
        """Every field validated (the config's values, the (B, L, L) int8 spins holding
        only ±1, the stream position in [0, 2^63), the sweep count)."""
        cfg = fields.sub("config")
        L = cfg.int("L", 4, MAX_L)
        if L % 2:
            raise cfg.error("L", f"must be even; got {L}")
        reals = {key: cfg.real(key, positive=key == "temperature") for key in ("temperature", "J", "h")}
        n_lattices = cfg.int("n_lattices", 1)
        algorithm = cfg.choice("algorithm", ALGORITHMS)
        seed = cfg.seed()
        spins = fields.tensor("spins", (n_lattices, L, L), torch.int8, values=(-1, 1))
        offset = fields.offset()
        sweeps_done = fields.int("sweeps_done", 0)
        # ordered init: no (B, L, L) random draw for the lattices replaced just below
        model = cls(L, n_lattices=n_lattices, algorithm=algorithm, seed=seed, device=device, **reals)
        model.spins = spins.to(model.device)
        model.offset = offset
        model.sweeps_done = sweeps_done
        return model

    def extra_repr(self) -> str:
        return (f"L={self.L}, temperature={self.temperature:g}, J={self.J:g}, h={self.h:g}, "
                f"n_lattices={self.n_lattices}, algorithm={self.algorithm!r}, "
                f"sweeps_done={self.sweeps_done}")


def _bin(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, T) -> (B, T // size) means of consecutive bins (the tail is dropped)."""
    n_bins = x.shape[1] // size
    return x[:, : n_bins * size].reshape(x.shape[0], n_bins, size).mean(dim=2)


def _stderr(samples: torch.Tensor) -> float:
    flat = samples.reshape(-1)
    if flat.numel() < 2:
        return float("nan")
    return float(flat.std(unbiased=True)) / math.sqrt(flat.numel())


def binning_analysis(e: torch.Tensor, m: torch.Tensor, beta: float, n_spins: int) -> dict:
    """Estimates of :meth:`Ising2D.measure` from per-spin energy and magnetisation series
    e, m: (B, T) float64, B independent replicas."""
    n_lattices, n_samples = e.shape
    min_bins = max(4, -(-64 // n_lattices))
    size = 1
    while n_samples // (2 * size) >= min_bins:
        size *= 2
    curve, s = [], 1
    while s <= size:
        curve.append(_stderr(_bin(e, s)))
        s *= 2
    series = {"e": e, "e2": e * e, "m": m, "am": m.abs(), "m2": m * m}
    bins = {k: _bin(v, size).reshape(-1) for k, v in series.items()}
    total = {k: v.sum() for k, v in bins.items()}
    count = bins["e"].numel()

    def specific_heat(mean):
        return beta * beta * n_spins * (mean["e2"] - mean["e"] ** 2)

    def susceptibility(mean):
        return beta * n_spins * (mean["m2"] - mean["am"] ** 2)

    def jackknife(f):
        full = float(f({k: v.mean() for k, v in bins.items()}))
        if count < 2:
            return Estimate(full, float("nan"))
        leave_out = f({k: (total[k] - v) / (count - 1) for k, v in bins.items()})
        err = math.sqrt((count - 1) / count * float(((leave_out - leave_out.mean()) ** 2).sum()))
        return Estimate(full, err)

    def plain(key):
        return Estimate(float(bins[key].mean()), _stderr(bins[key]))

    tau = 0.5 * (curve[-1] / curve[0]) ** 2 if curve[0] > 0 else float("nan")
    return {
        "energy": plain("e"),
        "energy_squared": plain("e2"),
        "magnetization": plain("m"),
        "abs_magnetization": plain("am"),
        "specific_heat": jackknife(specific_heat),
        "susceptibility": jackknife(susceptibility),
        "bin_size": size,
        "n_bins": count,
        "binning": curve,
        "tau_int_energy": tau,
        "energy_series": e,
        "magnetization_series": m,
    }
