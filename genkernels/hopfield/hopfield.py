"""``genkernels.Hopfield``: a classical (binary, ±1) Hopfield network as an nn.Module."""

from __future__ import annotations


import torch
from torch import nn

from .. import checkpoint as ckpt
from .. import random as gk_random
from .._checks import OnWeights, check_choice, check_int, check_model_dtype, model_seed
from .ops import hopfield_energy, hopfield_recall, hopfield_store
from .reference import MODES, ORDERS, RULES

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Hopfield(OnWeights, nn.Module):
    """A Hopfield network of ``n_units`` ±1 units with symmetric weights.

    Args:
        n_units: N, the number of units (>= 1).
        seed: seed of the random update order (an int in [0, 2^64)); None draws one
            from torch's RNG. The model owns the stream: every random-order recall that
            uses it advances :attr:`offset` by B * max_sweeps * N, so a sequence of
            recalls reproduces from the seed.
        dtype: float32 or float64 weights. device: where the weights live.

    Example::

        net = genkernels.Hopfield(100)
        net.store(patterns)                   # (P, 100) of ±1
        states, converged = net.recall(noisy)  # (B, 100), (B,)
    """

    weights: torch.Tensor

    def __init__(self, n_units: int, *, seed: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.n_units = check_int("n_units", n_units, 1)
        check_model_dtype(dtype)
        self.seed = model_seed(seed)
        self.offset = 0
        self.rule: str | None = None
        self.n_patterns = 0
        self.register_buffer("weights", torch.zeros(self.n_units, self.n_units, dtype=dtype,
                                                    device=device))

    def store(self, patterns: torch.Tensor, rule: str = "hebbian") -> Hopfield:
        """Set the weights so that ``patterns`` (P, N) of ±1 are stored; the previous
        weights are replaced, not added to (store every pattern in one call; the
        Storkey rule is incremental within that call). rule: "hebbian", "storkey" or
        "pseudoinverse" (genkernels.ops.hopfield_store). Returns self."""
        check_choice("rule", rule, RULES)
        if isinstance(patterns, torch.Tensor) and patterns.dim() == 2 and \
                patterns.shape[1] != self.n_units:
            raise ValueError(f"patterns has {patterns.shape[1]} units but the network has "
                             f"{self.n_units}; they must match")
        w = hopfield_store(patterns, rule)
        self.weights.copy_(w.to(device=self.device, dtype=self.dtype))
        self.rule, self.n_patterns = rule, int(patterns.shape[0])
        return self

    def recall(self, probes: torch.Tensor, mode: str = "async", order: str = "random",
               max_sweeps: int = 100, seed: int | None = None, *,
               backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network from ``probes`` (B, N) or (N,) of ±1 until no unit changes
        (or ``max_sweeps`` sweeps). mode: "async" (one unit at a time; order "random"
        or "sequential") or "sync" (all units at once). seed: None draws the random
        order from the model's stream and advances it; an int uses (seed, offset 0)
        and leaves the model's stream alone. Returns (states, converged) as
        genkernels.ops.hopfield_recall."""
        check_choice("mode", mode, MODES)
        check_choice("order", order, ORDERS)
        use_stream = seed is None and mode == "async" and order == "random"
        run_seed, run_offset = (self.seed, self.offset) if seed is None else (seed, 0)
        states, converged = hopfield_recall(self.weights, probes, mode, order, max_sweeps,
                                            run_seed, run_offset, backend=backend)
        if use_stream:
            n_probes = probes.shape[0] if probes.dim() == 2 else 1
            self.offset = gk_random.wrap_int64(self.offset + n_probes * max_sweeps * self.n_units)
        return states, converged

    def energy(self, states: torch.Tensor) -> torch.Tensor:
        """E(s) = −½ sᵀ W s of states (B, N) or (N,) -> (B,) or 0-d."""
        return hopfield_energy(self.weights, states)

    def forward(self, probes: torch.Tensor) -> torch.Tensor:
        """The recalled states (async, random order, the model's stream)."""
        return self.recall(probes)[0]

    # ------------------------------------------------------------ persistence
    def _config(self) -> dict:
        return {"n_units": self.n_units, "seed": self.seed,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def save(self, path: str) -> None:
        """Write the model to ``path`` atomically (a temp file in the same folder, then
        os.replace): an interrupted save never damages an existing file."""
        ckpt.save_atomic({"config": self._config(),
                                "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                                "offset": self.offset, "rule": self.rule, "n_patterns": self.n_patterns},
                               path, "Hopfield")

    @staticmethod
    def _read(path: str) -> dict:
        return ckpt.read(path, "Hopfield")

    @classmethod
    def load(cls, path: str, device=None) -> Hopfield:
        """Read a model written by :meth:`save` (``weights_only=True``). Every field is
        validated (the config, the (N, N) weights' shape, dtype and finiteness, the stream
        position in [0, 2^63), the rule, the pattern count); a bad or missing one raises
        ValueError naming it."""
        payload = cls._read(path)
        cfg = ckpt.field(payload, "config", dict, path)
        cfg = {f"config.{k}": v for k, v in cfg.items()}
        dtype_name = ckpt.field(cfg, "config.dtype", str, path)
        if dtype_name not in _DTYPES:
            raise ValueError(f"checkpoint {str(path)!r}: the field 'config.dtype' must be one of "
                             f"{sorted(_DTYPES)}; got {dtype_name!r}")
        model = cls(ckpt.int_field(cfg, "config.n_units", 1, path=path),
                    seed=ckpt.int_field(cfg, "config.seed", 0, 2**64 - 1, path),
                    dtype=_DTYPES[dtype_name], device=device)
        state = ckpt.check_state(payload, model, path)
        offset = ckpt.int_field(payload, "offset", 0, 2**63 - 1, path)
        rule = ckpt.field(payload, "rule", (str, type(None)), path, "a str or None")
        if rule is not None and rule not in RULES:
            raise ValueError(f"checkpoint {str(path)!r}: the field 'rule' must be None or one of {list(RULES)}; "
                             f"got {rule!r}")
        n_patterns = ckpt.int_field(payload, "n_patterns", 0, path=path)
        model.load_state_dict({k: v.to(model.device) for k, v in state.items()})
        model.offset, model.rule, model.n_patterns = offset, rule, n_patterns
        return model

    def extra_repr(self) -> str:
        return f"n_units={self.n_units}, rule={self.rule!r}, n_patterns={self.n_patterns}"
