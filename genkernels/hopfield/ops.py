"""Public ops of classical Hopfield networks: validation, backend choice, fake kernels.

Every op here is re-exported flat in ``genkernels.ops``. Backends (see
``genkernels.backends``): asynchronous recall (``hopfield_recall_async``) runs on
``reference`` (genkernels/hopfield/reference.py, a Python loop: an oracle for small
sizes), ``cpu`` / ``cuda`` (csrc/cpu/hopfield.cpp, csrc/cuda/hopfield.cu via
``torch.ops.genkernels``) or ``triton`` (genkernels/hopfield/recall_triton.py); synchronous
recall, storing and the energy are a few PyTorch ops (matrix products and signs)
that run on any device and are not routed through the backends. Continuous (modern)
Hopfield retrieval (``hopfield_retrieval``) runs on ``reference``, ``cpu`` and
``triton`` (genkernels/hopfield/triton.py, one fused kernel for all steps).
"""

from __future__ import annotations

import math
import numbers

import torch

from .. import random as gk_random
from .. import registry
from .._checks import (
    check_choice,
    check_float_tensor,
    check_int,
    check_positive,
    check_same_device,
    check_same_dtype,
    compiling,
)
from . import reference, retrieval_reference
from .retrieval_reference import as_input_grads, retrieval_setup_context
from .reference import MODES, ORDERS, RULES, acc_dtype

# |W - W^T| may reach this fraction of max |W| (rounding of a user's own product); the
# kernels read row i as column i, so anything further from symmetric is rejected.
SYMMETRY_RTOL = 1e-6
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


# ------------------------------------------------------------------ declared ops
def _recall_async_reference(weights, states, max_sweeps, random_order, seed, offset):
    order = "random" if random_order else "sequential"
    return reference.recall_async(weights, states, order, max_sweeps, seed % 2**64, offset)


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
            layout in genkernels/hopfield/reference.py) or "sequential" (0..N-1).
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
    offset = check_int("offset", offset, INT64_MIN, INT64_MAX)

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


# ------------------------------------------------- continuous (modern) Hopfield retrieval
# Backends: reference (retrieval_reference.py, differentiated by autograd), cpu
# (csrc/cpu/hopfield_retrieval.cpp: forward and backward kernels) and triton
# (genkernels/hopfield/triton.py: the fused forward; its backward is the reference's
# explicit VJP in PyTorch ops). The two registered ops share one autograd formula: the
# saved inputs and the steps each row took, from which the backward recomputes the iterates.


def _retrieval_backward_cpu(ctx, grad, _grad_steps):
    queries, stored, beta, steps = ctx.saved_tensors
    grads = torch.ops.genkernels.hopfield_retrieval_backward(grad.to(queries.dtype), queries, stored,
                                                             beta.to(queries.dtype), steps)
    return as_input_grads(ctx, grads)


def _retrieval_fake(queries, stored, beta, max_steps, tol):
    return torch.empty_like(queries), queries.new_empty((queries.shape[0],), dtype=torch.int64)


def _retrieval_backward_fake(grad, queries, stored, beta, steps):
    return torch.empty_like(queries), torch.empty_like(stored), beta.new_empty(())


def _retrieval_reference(queries, stored, beta, max_steps, tol):
    dt = acc_dtype(queries.dtype)
    return retrieval_reference.hopfield_retrieval(queries.to(dt), stored.to(dt), beta, max_steps, tol)


def _retrieval_cpu(queries, stored, beta, max_steps, tol):
    dt = acc_dtype(queries.dtype)
    return torch.ops.genkernels.hopfield_retrieval(queries.to(dt), stored.to(dt), beta, max_steps, tol)


# hopfield_retrieval(queries (B, D), stored (B | 1, P, D), beta 0-d in the accumulation
# dtype, max_steps, tol) -> (retrieved (B, D) in the accumulation dtype, steps (B,) int64);
# differentiable in queries, stored and beta on every backend.
RETRIEVAL = registry.declare(
    "hopfield_retrieval",
    reference=_retrieval_reference,
    cpu=_retrieval_cpu,
    triton=registry.lazy(__package__ + ".triton", "hopfield_retrieval_triton"),
    fake=_retrieval_fake,
    autograd=(_retrieval_backward_cpu, retrieval_setup_context))
registry.static_kernels("hopfield", registry.lazy(__package__ + ".triton", "static_kernels"))
registry.register_schema_kernels("hopfield_retrieval_backward", fake=_retrieval_backward_fake)


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a number >= 0; got {type(tol).__name__} {tol!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0; got {tol!r}")
    return float(tol)


def _check_finite(name: str, t: torch.Tensor) -> None:
    """Raise when t holds NaN or Inf (eager). A NaN or Inf makes the sum non-finite, so
    one reduction clears the common case; a non-finite sum (possibly an overflow of
    finite values) is confirmed element by element."""
    if t.numel() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def _check_beta(beta, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """beta as a 0-d tensor in ``dtype`` on ``device`` (differentiable when it was one)."""
    if isinstance(beta, torch.Tensor):
        if not beta.is_floating_point():
            raise TypeError(f"beta must be a float or a floating-point tensor; got dtype {beta.dtype}")
        if beta.numel() != 1:
            raise ValueError(f"beta must hold one number; got shape {tuple(beta.shape)}")
        if not compiling() and beta.device.type != "meta":
            value = float(beta.detach().reshape(()))
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"beta must be > 0 and finite; got {value!r}")
        return beta.reshape(()).to(device=device, dtype=dtype)
    value = check_positive("beta", beta)
    if not math.isfinite(value):
        raise ValueError(f"beta must be > 0 and finite; got {value!r}")
    return torch.tensor(value, dtype=dtype, device=device)


def hopfield_retrieval(queries: torch.Tensor, stored: torch.Tensor, beta=1.0, max_steps: int = 1,
                       tol: float = 1e-4, backend: str | None = None, *, return_steps: bool = False):
    """Continuous modern Hopfield retrieval (Ramsauer et al. 2020), iterated in one kernel.

    Each query row b iterates ``xi <- X_b^T softmax(beta X_b xi)`` from xi = queries[b],
    for at most ``max_steps`` steps; a row stops after the first step whose change
    ``max_d |xi_new - xi|`` (the max-abs norm) is not > ``tol`` -- rows stop
    independently, and the step that stops a row is applied. The softmax subtracts its
    max, so large beta does not overflow. Spec: genkernels/hopfield/retrieval_reference.py.

    Args:
        queries: (B, D) float (state patterns xi).
        stored: (B, P, D) -- P patterns per query -- or (1, P, D), one set shared by all
            queries; same dtype and device as queries; P >= 1.
        beta: inverse temperature > 0: a number, or a one-element float tensor (e.g. an
            nn.Parameter; the result is differentiable in it).
        max_steps: >= 1. tol: >= 0 (0: run until an exact fixed point or max_steps).
        backend: None (auto), "reference", "cpu" or "triton".
        return_steps: also return the steps each row took.
    Returns:
        retrieved (B, D) in queries' dtype -- differentiable in queries, stored and beta
        through the steps actually taken (the backward recomputes the iterates; it keeps
        only the inputs and the steps) -- and, with ``return_steps``, steps (B,) int64
        in [1, max_steps]. Arithmetic in fp32 (fp64 for fp64 input).

    Example::

        stored = torch.randn(1, 32, 16)                     # 32 patterns, shared
        noisy = stored[0, :4] + 0.1 * torch.randn(4, 16)
        out, steps = genkernels.ops.hopfield_retrieval(noisy, stored, beta=8.0, max_steps=5,
                                                       return_steps=True)
    """
    check_float_tensor("queries", queries, 2)
    check_float_tensor("stored", stored, 3)
    check_same_device(queries=queries, stored=stored)
    check_same_dtype(queries=queries, stored=stored)
    b_count, d = queries.shape
    if stored.shape[2] != d:
        raise ValueError(f"stored has {stored.shape[2]} features but queries has {d}; they must match")
    if stored.shape[0] not in (1, b_count):
        raise ValueError(f"stored must have a leading dimension of {b_count} (one pattern set per "
                         f"query) or 1 (one shared set); got shape {tuple(stored.shape)}")
    if stored.shape[1] == 0:
        raise ValueError(f"stored must hold at least one pattern; got shape {tuple(stored.shape)}")
    max_steps = check_int("max_steps", max_steps, 1)
    tol = _check_tol(tol)
    dt = acc_dtype(queries.dtype)
    beta_t = _check_beta(beta, queries.device, dt)
    if not compiling() and queries.device.type != "meta":
        for name, t in (("queries", queries), ("stored", stored)):
            _check_finite(name, t)
    name = RETRIEVAL.resolve(queries.device, backend)
    if b_count == 0:
        out = queries.clone()
        steps = torch.zeros((0,), dtype=torch.int64, device=queries.device)
    else:
        out, steps = RETRIEVAL.kernels[name](queries, stored, beta_t, max_steps, tol)
    out = out.to(queries.dtype)
    return (out, steps) if return_steps else out
