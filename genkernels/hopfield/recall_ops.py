"""Public ops of classical Hopfield networks: validation, declarations, dispatch.

Re-exported flat in ``genkernels.ops`` (through ``hopfield/ops.py``). Backends (see
``genkernels.backends``): asynchronous recall (``hopfield_recall_async``) runs on
``reference`` (genkernels/hopfield/recall_reference.py, a Python loop: an oracle for small
sizes), ``cpu`` / ``cuda`` (csrc/cpu/hopfield.cpp, csrc/cuda/hopfield.cu via
``torch.ops.genkernels``) or ``triton`` (genkernels/hopfield/recall_triton.py); synchronous
recall, storing and the energy are a few PyTorch ops (matrix products and signs)
that run on any device and are not routed through the backends.
"""

from __future__ import annotations

import torch

from .. import random as gk_random
from .. import registry
from .._checks import (
    check_choice,
    check_float_tensor,
    check_int,
    check_same_device,
    compiling,
)
from . import recall_reference as reference
from .recall_reference import MODES, ORDERS, RULES, acc_dtype

# |W - W^T| may reach this fraction of max |W| (rounding of a user's own product); the
# kernels read row i as column i, so anything further from symmetric is rejected.
SYMMETRY_RTOL = 1e-6


# ------------------------------------------------------------------ declared ops
def _recall_async_reference(weights, states, max_sweeps, random_order, seed, offset):
    order = "random" if random_order else "sequential"
    return reference.recall_async(weights, states, order, max_sweeps, gk_random.key_of(seed), offset)


def _recall_async_fake(weights, states, max_sweeps, random_order, seed, offset):
    return torch.empty_like(states), states.new_empty((states.shape[0],), dtype=torch.bool)


# hopfield_recall_async(weights (N, N), states (B, N) in weights' dtype, max_sweeps,
# random_order, seed (int64 bit pattern), offset) -> (states, converged (B,) bool). The CUDA
# kernel measured 1.8e8 vs triton 8.7e7 unit updates/s (nvidia-h100-80gb-hbm3-gpu-quick.md)
# but changed after that run (ff00d6b, 729a895): reachable by name only until measured again.
RECALL_ASYNC = registry.declare(
    "hopfield_recall_async",
    reference=_recall_async_reference,
    cpu=registry.extension("hopfield_recall_async"),
    triton=registry.lazy(__package__ + ".recall_triton", "hopfield_recall_async_triton"),
    cuda=registry.extension("hopfield_recall_async"),
    sequential=True,
    fake=_recall_async_fake)
registry.static_kernels("hopfield.recall", registry.lazy(__package__ + ".recall_triton", "static_kernels"))


# ------------------------------------------------------------------------ validation
def _check_plus_minus_one(name: str, x: torch.Tensor) -> None:
    """Every entry is -1 or +1 (eager only)."""
    if compiling() or x.numel() == 0 or x.device.type == "meta":
        return
    bad = (x != 1) & (x != -1)
    if bool(bad.any()):
        at = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} must hold only -1 and +1; got {x[at].item()!r} at index {at}")


def _check_weights(weights) -> torch.Tensor:
    check_float_tensor("weights", weights, 2)
    if weights.shape[0] != weights.shape[1]:
        raise ValueError(f"weights must be square (N, N); got shape {tuple(weights.shape)}")
    if compiling() or weights.numel() == 0 or weights.device.type == "meta":
        return weights
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("weights contains NaN or Inf")
    w = weights.to(acc_dtype(weights.dtype))
    asym = float((w - w.T).abs().max())
    if asym > SYMMETRY_RTOL * float(w.abs().max()):
        raise ValueError(f"weights must be symmetric; max |W - W^T| is {asym:.3g} (allowed "
                         f"{SYMMETRY_RTOL:g} of max |W|); symmetrise with (W + W.T) / 2")
    return weights


def _check_states(name: str, states, weights: torch.Tensor) -> torch.Tensor:
    check_float_tensor(name, states, (1, 2))
    if states.shape[-1] != weights.shape[0]:
        raise ValueError(f"{name} has {states.shape[-1]} units but weights has "
                         f"{weights.shape[0]}; they must match")
    check_same_device(weights=weights, **{name: states})
    _check_plus_minus_one(name, states)
    return states


# --------------------------------------------------------------------------- storing
def hopfield_store(patterns: torch.Tensor, rule: str = "hebbian") -> torch.Tensor:
    """Weights that store ``patterns`` as fixed points.

    Args:
        patterns: (P, N) float, entries ±1 (P >= 1).
        rule: "hebbian" (W = (1/N) Σ ξξᵀ), "storkey" (Storkey's incremental rule) or
            "pseudoinverse" (the projection rule Ξᵀ (Ξ Ξᵀ)⁺ Ξ); see reference.store_weights.
    Returns:
        W: (N, N) in patterns' dtype, symmetric, zero diagonal.
    """
    check_float_tensor("patterns", patterns, 2)
    check_choice("rule", rule, RULES)
    if patterns.shape[0] == 0:
        raise ValueError("patterns must hold at least one pattern; got shape "
                         f"{tuple(patterns.shape)}")
    if patterns.shape[1] == 0:
        raise ValueError(f"patterns must have at least one unit; got shape {tuple(patterns.shape)}")
    _check_plus_minus_one("patterns", patterns)
    return reference.store_weights(patterns, rule)


# ---------------------------------------------------------------------------- energy
def hopfield_energy(weights: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """E(s) = −½ sᵀ W s. weights (N, N) symmetric; states (B, N) or (N,) ±1.
    Returns (B,) (or a 0-d tensor for one state) in fp32, fp64 for fp64 weights."""
    _check_weights(weights)
    _check_states("states", states, weights)
    e = reference.energy(weights, states.reshape(-1, weights.shape[0]))
    return e.reshape(states.shape[:-1])


# ---------------------------------------------------------------------------- recall
def hopfield_recall(weights: torch.Tensor, probes: torch.Tensor, mode: str = "async",
                    order: str = "random", max_sweeps: int = 100, seed: int = 0,
                    offset: int = 0, *, backend: str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall: run the network from every probe until it stops changing.

    A unit takes the sign of its local field h_i = Σ_j W_ij s_j; a unit whose field is
    exactly 0 keeps its state.

    Args:
        weights: (N, N) float, symmetric (e.g. from :func:`hopfield_store`).
        probes: (B, N) or (N,) float, entries ±1; same device as weights.
        mode: "async" -- one unit at a time, the fields updated after every flip (the
            energy never increases); "sync" -- every unit at once, s ← sign(W s).
        order: async only: "random" (a Philox permutation per probe and sweep, counter
            layout in genkernels/hopfield/recall_reference.py) or "sequential" (0..N-1).
        max_sweeps: at most this many sweeps (a sweep updates every unit once), >= 0.
        seed: int in [0, 2^64); offset: int64 -- the random order's stream; a caller
            recalling again advances offset by B * max_sweeps * N.
        backend: async only: "reference", "cpu", "triton" (N <= 4096; one program per
            probe) or "cuda" (one thread block per probe, state in shared memory) -- None:
            auto, see genkernels.backends.
    Returns:
        states: probes' shape and dtype, ±1; converged: (B,) (or 0-d) bool -- the last
        sweep changed nothing, i.e. a fixed point was reached.
    """
    _check_weights(weights)
    n = weights.shape[0]
    _check_states("probes", probes, weights)
    check_choice("mode", mode, MODES)
    check_choice("order", order, ORDERS)
    max_sweeps = check_int("max_sweeps", max_sweeps, 0)
    seed = gk_random._check_seed(seed)
    offset = check_int("offset", offset, *gk_random.INT64_RANGE)

    dt = acc_dtype(weights.dtype)
    w = weights.to(dt).contiguous()
    s = probes.reshape(-1, n).to(dt).contiguous()
    if mode == "sync":
        # a matrix product and a sign per sweep: plain PyTorch on any device, whatever
        # backend is forced for the compiled ops
        states, converged = reference.recall_sync(w, s, max_sweeps)
    else:
        name = RECALL_ASYNC.resolve(probes.device, backend)
        states, converged = RECALL_ASYNC.kernels[name](w, s, max_sweeps, order == "random",
                                                       gk_random._schema_seed(seed), offset)
    return states.to(probes.dtype).reshape(probes.shape), converged.reshape(probes.shape[:-1])
