"""``genkernels.Hopfield``: a classical (binary, ±1) Hopfield network as an nn.Module."""

from __future__ import annotations

import torch

from .. import checkpoint as ckpt
from .._checks import check_choice, check_int, check_model_dtype
from ..model import Model
from .ops import hopfield_energy, hopfield_recall, hopfield_store
from .recall_reference import MODES, ORDERS, RULES


class Hopfield(Model):
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

    kind = "Hopfield"
    weights: torch.Tensor

    def __init__(self, n_units: int, *, seed: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.n_units = check_int("n_units", n_units, 1)
        check_model_dtype(dtype)
        self._init_stream(seed)
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
        with self._call_stream(seed) as stream:
            states, converged = hopfield_recall(self.weights, probes, mode, order, max_sweeps,
                                                stream.seed, stream.offset, backend=backend)
            if mode == "async" and order == "random":
                n_probes = probes.shape[0] if probes.dim() == 2 else 1
                stream.take(n_probes * max_sweeps * self.n_units)
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

    def _payload(self) -> dict:
        return {"config": self._config(), "state": self._state_payload(), "offset": self.offset,
                "rule": self.rule, "n_patterns": self.n_patterns}

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> Hopfield:
        """Every field validated (the config, the (N, N) weights' shape, dtype and
        finiteness, the stream position in [0, 2^63), the rule, the pattern count)."""
        cfg = fields.sub("config")
        dtype = cfg.dtype("dtype")
        model = cls(cfg.int("n_units", 1), seed=cfg.seed(), dtype=dtype, device=device)
        state = fields.state(model)
        offset = fields.offset()
        rule = fields.get("rule", (str, type(None)), "a str or None")
        if rule is not None and rule not in RULES:
            raise fields.error("rule", f"must be None or one of {list(RULES)}; got {rule!r}")
        n_patterns = fields.int("n_patterns", 0)
        model.load_state_dict({k: v.to(model.device) for k, v in state.items()})
        model.offset, model.rule, model.n_patterns = offset, rule, n_patterns
        return model

    def extra_repr(self) -> str:
        return f"n_units={self.n_units}, rule={self.rule!r}, n_patterns={self.n_patterns}"
