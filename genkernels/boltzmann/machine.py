"""``genkernels.BoltzmannMachine``: a general (fully connected) Boltzmann machine of
binary visible and hidden units, with sequential Gibbs sampling, simulated annealing and
learning from the clamped and free phases."""

from __future__ import annotations

import math

import torch

from .. import checkpoint as ckpt
from .._checks import check_choice, check_int, check_model_dtype, compiling, real_values
from ..model import Model, check_finite_model
from . import bm_reference as reference
from ._train import check_real
from .bm_ops import bm_energy, bm_gibbs, check_binary
from .bm_reference import ORDERS

SCHEDULES = ("geometric", "linear")


class BoltzmannMachine(Model):
    """Fully connected binary units: ``n_visible`` visible then ``n_hidden`` hidden.

    E(s) = -1/2 s^T W s - b^T s with W symmetric, zero diagonal; p(s) ∝ exp(-E(s) / T).

    Args:
        n_visible: V >= 1. n_hidden: H >= 0.
        seed: the model's Philox stream (int in [0, 2^64)); None draws one from torch's
            RNG. Every stochastic call that uses the stream advances :attr:`offset`, so a
            sequence of calls reproduces from the seed.
        init_std: standard deviation of the initial couplings (drawn from the stream), a
            finite real number >= 0.
        dtype: float32 or float64. device: where the parameters live.

    Example::

        bm = genkernels.BoltzmannMachine(6, 4, seed=0)
        bm.fit(data, epochs=200)                 # (M, 6) of 0/1
        samples = bm.sample(1000, n_sweeps=50)   # (1000, 10)
        states, energies = bm.anneal(16)         # simulated annealing, lowest energy first
    """

    kind = "BoltzmannMachine"
    weights: torch.Tensor
    bias: torch.Tensor

    def __init__(self, n_visible: int, n_hidden: int = 0, *, seed: int | None = None,
                 init_std: float = 0.01, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.n_visible = check_int("n_visible", n_visible, 1)
        self.n_hidden = check_int("n_hidden", n_hidden, 0)
        check_model_dtype(dtype)
        self._init_stream(seed)
        n = self.n_units
        init_std = check_real("init_std", init_std, 0)
        # couplings from the stream: Box-Muller-free, a centred uniform of the same std
        u = self._uniform(n * n, torch.device("cpu")).reshape(n, n).double()
        a = (u - 0.5) * (init_std * math.sqrt(12.0))
        w = torch.triu(a, 1)
        self.register_buffer("weights", (w + w.T).to(device=device, dtype=dtype))
        self.register_buffer("bias", torch.zeros(n, dtype=dtype, device=device))
        self.register_buffer("chains", torch.empty(0, n, dtype=dtype, device=device))

    # ------------------------------------------------------------------ basics
    @property
    def n_units(self) -> int:
        return self.n_visible + self.n_hidden

    def _uniform(self, count: int, device) -> torch.Tensor:
        """count uniforms from the model's stream (advances it)."""
        return self._stream.rand(count, backend="reference").to(device)

    def _random_states(self, n_chains: int) -> torch.Tensor:
        return (self._uniform(n_chains * self.n_units, self.device) < 0.5).to(self.dtype).reshape(
            n_chains, self.n_units)

    def energy(self, states: torch.Tensor) -> torch.Tensor:
        """E(s) of states (..., N) in {0, 1} -> (...)."""
        return bm_energy(self.weights, self.bias, states)

    def gibbs(self, states: torch.Tensor, n_sweeps: int = 1, temperature=1.0,
              clamp_visible: bool = False, order: str = "random", *,
              backend: str | None = None) -> torch.Tensor:
        """``n_sweeps`` sequential Gibbs sweeps from states (C, N), at one temperature or
        a schedule of n_sweeps temperatures; clamp_visible keeps the visible units fixed
        (the clamped phase). Uses and advances the model's stream."""
        n_sweeps = check_int("n_sweeps", n_sweeps, 1)
        temps = self._temperatures(temperature, n_sweeps)
        clamp = torch.zeros(self.n_units, dtype=torch.bool, device=self.device)
        if clamp_visible:
            clamp[: self.n_visible] = True
        chains = states.shape[0] if states.dim() == 2 else 1
        out = bm_gibbs(self.weights, self.bias, states, temps, clamp, order, self.seed,
                       self.offset, backend=backend)
        self._advance(chains * n_sweeps * self.n_units)
        return out

    @staticmethod
    def _temperatures(temperature, n_sweeps: int) -> torch.Tensor:
        temps = real_values("temperature", temperature)
        if temps.numel() == 1:
            temps = temps.expand(n_sweeps)
        if temps.numel() != n_sweeps:
            raise ValueError(f"temperature must be one value or {n_sweeps} (one per sweep); "
                             f"got {temps.numel()}")
        if not bool((temps > 0).all() and torch.isfinite(temps).all()):
            raise ValueError(f"temperature must be finite and > 0; got {temps.tolist()[:8]}")
        return temps

    def sample(self, n_samples: int, n_sweeps: int = 100, temperature: float = 1.0, *,
               backend: str | None = None) -> torch.Tensor:
        """n_samples independent chains from uniform random states, ``n_sweeps`` sweeps
        each: (n_samples, N) states (visible units first)."""
        n_samples = check_int("n_samples", n_samples, 1)
        return self.gibbs(self._random_states(n_samples), n_sweeps, temperature, backend=backend)

    def anneal(self, n_chains: int = 16, t_start: float = 10.0, t_end: float = 0.05,
               n_sweeps: int = 200, schedule: str = "geometric", *,
               backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Simulated annealing: n_chains from random states, the temperature lowered from
        t_start to t_end over n_sweeps (geometric or linear), then one zero-temperature
        sweep (greedy descent). Returns (states (n_chains, N), energies (n_chains,)) sorted
        by energy, lowest first."""
        n_chains = check_int("n_chains", n_chains, 1)
        n_sweeps = check_int("n_sweeps", n_sweeps, 1)
        t0 = check_real("t_start", t_start, 0, low_open=True)
        t1 = check_real("t_end", t_end, 0, low_open=True)
        check_choice("schedule", schedule, SCHEDULES)
        if schedule == "geometric":
            temps = torch.logspace(math.log10(t0), math.log10(t1), n_sweeps, dtype=torch.float64)
        else:
            temps = torch.linspace(t0, t1, n_sweeps, dtype=torch.float64)
        # the last sweep at a temperature so low that every draw is the greedy choice
        temps = torch.cat([temps, torch.tensor([1e-30], dtype=torch.float64)])
        states = self.gibbs(self._random_states(n_chains), n_sweeps + 1, temps, backend=backend)
        energies = self.energy(states)
        order = torch.argsort(energies, stable=True)
        return states[order], energies[order]

    # ---------------------------------------------------------------- learning
    def fit(self, data: torch.Tensor, epochs: int = 100, learning_rate: float = 0.05,
            n_sweeps: int = 5, n_chains: int = 100, weight_decay: float = 0.0,
            verbose: bool = False, *, backend: str | None = None) -> BoltzmannMachine:
        """Learn from binary data (M, V) for ``epochs`` MORE epochs from the current state
        (a second call continues: fit(E) then fit(F) equals fit(E + F), the stream and the
        persistent chains carrying on). Every epoch is one update
        dW = lr (<s s^T>_clamped - <s s^T>_free), db = lr (<s>_clamped - <s>_free).

        Clamped phase: each data row with its hidden units run n_sweeps Gibbs sweeps
        (visible units clamped); free phase: n_chains persistent chains (kept between
        epochs and in checkpoints) run n_sweeps free sweeps. The diagonal stays zero.
        learning_rate: finite > 0; weight_decay: finite >= 0. The data are detached (no
        autograd history is recorded). The model is checked after every epoch: a NaN or
        Inf parameter raises ValueError (DivergedError) naming the epoch."""
        epochs = check_int("epochs", epochs, 1)
        lr = check_real("learning_rate", learning_rate, 0, low_open=True)
        n_sweeps = check_int("n_sweeps", n_sweeps, 1)
        n_chains = check_int("n_chains", n_chains, 1)
        weight_decay = check_real("weight_decay", weight_decay, 0)
        if isinstance(data, torch.Tensor):
            data = data.detach()
        if not isinstance(data, torch.Tensor) or data.dim() != 2:
            raise ValueError(f"data must be a 2-D tensor (M, {self.n_visible}); got "
                             f"{tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}")
        if data.shape[1] != self.n_visible:
            raise ValueError(f"data has {data.shape[1]} columns but the machine has "
                             f"{self.n_visible} visible units; they must match")
        if data.shape[0] == 0:
            raise ValueError("data must hold at least one row")
        if not torch.is_floating_point(data):
            data = data.to(self.dtype)
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data contains NaN or Inf")
        check_binary("data", data)
        data = data.to(device=self.device, dtype=self.dtype)
        m = data.shape[0]
        if self.chains.shape[0] != n_chains:
            self.chains = self._random_states(n_chains)
        off_diag = 1.0 - torch.eye(self.n_units, dtype=self.dtype, device=self.device)
        for epoch in range(epochs):
            if self.n_hidden:
                hidden = (self._uniform(m * self.n_hidden, self.device) < 0.5).to(self.dtype)
                clamped = torch.cat([data, hidden.reshape(m, self.n_hidden)], 1)
                clamped = self.gibbs(clamped, n_sweeps, clamp_visible=True, backend=backend)
            else:
                clamped = data
            self.chains = self.gibbs(self.chains, n_sweeps, backend=backend)
            pos = clamped.T @ clamped / m
            neg = self.chains.T @ self.chains / n_chains
            dw = (pos - neg) * off_diag - weight_decay * self.weights
            self.weights.add_(lr * dw)
            self.bias.add_(lr * (clamped.mean(0) - self.chains.mean(0)))
            check_finite_model("BoltzmannMachine", {"weights": self.weights, "bias": self.bias}, epoch + 1,
                               epoch + 1, epochs, f"Lower learning_rate (now {lr:g}).")
            if verbose and (epoch + 1) % max(1, epochs // 10) == 0:
                msg = f"epoch {epoch + 1}/{epochs}"
                if self.n_units <= 20:
                    msg += f": KL(data || model) = {float(self.kl_divergence(data)):.4f} nats"
                print(msg, flush=True)
        return self

    # ---------------------------------------------------------- exact answers
    def log_partition(self, temperature: float = 1.0) -> torch.Tensor:
        """log Z by enumerating all 2^N states (N <= 24), float64. temperature: finite > 0."""
        temperature = check_real("temperature", temperature, 0, low_open=True)
        self._check_enumerable()
        return reference.log_partition(self.weights, self.bias, temperature)

    def probabilities(self, temperature: float = 1.0) -> torch.Tensor:
        """(2^N,) exact probability of every state (index = binary expansion, unit 0 the
        lowest bit). temperature: finite > 0."""
        temperature = check_real("temperature", temperature, 0, low_open=True)
        self._check_enumerable()
        return reference.joint_probabilities(self.weights, self.bias, temperature)

    def visible_distribution(self) -> torch.Tensor:
        """(2^V,) exact marginal of the visible units."""
        self._check_enumerable()
        return reference.visible_marginal(self.weights, self.bias, self.n_visible)

    def kl_divergence(self, data: torch.Tensor) -> torch.Tensor:
        """KL(empirical distribution of data (M, V) || the model's visible marginal), nats.
        data: a tensor of M >= 1 rows of V = n_visible binary values (0 or 1)."""
        data = self._check_data("data", data)
        q = self.visible_distribution()
        idx = reference.state_index(data.to(q.device))
        p = torch.bincount(idx, minlength=q.numel()).double() / idx.numel()
        support = p > 0
        return (p[support] * (p[support].log() - q[support].log())).sum()

    def _check_data(self, name: str, data) -> torch.Tensor:
        """data: a (M >= 1, n_visible) tensor of 0/1 values (a real or bool dtype), detached."""
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (M, {self.n_visible}); got {type(data).__name__}")
        if data.is_complex():
            raise TypeError(f"{name} must hold real 0/1 values; got dtype {data.dtype}")
        if data.dim() != 2 or data.shape[1] != self.n_visible:
            raise ValueError(f"{name} must be (M, {self.n_visible}) (n_visible = {self.n_visible}); got shape "
                             f"{tuple(data.shape)}")
        if data.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one row; got shape {tuple(data.shape)}")
        data = data.detach()
        if not data.is_floating_point():
            data = data.to(torch.float64)
        if not compiling():
            check_binary(name, data)  # NaN is neither 0 nor 1
        return data

    def _check_enumerable(self) -> None:
        if self.n_units > 24:
            raise ValueError(f"exact enumeration needs at most 24 units; the machine has {self.n_units}")

    # ------------------------------------------------------------ persistence
    def _config(self) -> dict:
        return {"n_visible": self.n_visible, "n_hidden": self.n_hidden, "seed": self.seed,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def _payload(self) -> dict:
        """Parameters, persistent chains and the stream position."""
        return {"config": self._config(), "state": self._state_payload(), "offset": self.offset}

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> BoltzmannMachine:
        """Every field validated -- shapes, dtypes, finite values, symmetric couplings with
        a zero diagonal, binary chains, a stream position in [0, 2^63)."""
        cfg = fields.sub("config")
        model = cls(cfg.int("n_visible", 1), cfg.int("n_hidden", 0), seed=cfg.seed(), dtype=cfg.dtype(),
                    device=device)
        n, dtype = model.n_units, model.dtype
        stored = fields.get("state", dict, "a dict of tensors")
        state = fields.tensors("state", {"weights": ((n, n), dtype), "bias": ((n,), dtype),
                                         "chains": ((ckpt.leading_rows(stored.get("chains")), n), dtype)},
                               values={"chains": (0, 1)})
        w = state["weights"]
        if not (torch.equal(w, w.T) and bool((w.diagonal() == 0).all())):
            raise fields.error("state.weights", "must be symmetric with a zero diagonal (the couplings of a "
                               "Boltzmann machine)")
        offset = fields.offset()
        model.chains = state["chains"].to(model.device)
        model.load_state_dict({k: v.to(model.device) for k, v in state.items()})
        model.offset = offset
        return model

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}"


__all__ = ["ORDERS", "SCHEDULES", "BoltzmannMachine"]
