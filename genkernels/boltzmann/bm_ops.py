"""Public ops of general Boltzmann machines: validation, backend choice, fake kernels.

Re-exported flat in ``genkernels.ops``. Backends (see ``genkernels.backends``): the
sequential Gibbs sweep ``bm_gibbs`` runs on ``reference`` (genkernels/boltzmann/
bm_reference.py, a Python loop: an oracle for small sizes), ``cpu`` (csrc/cpu/
boltzmann.cpp), ``triton`` (genkernels/boltzmann/bm_triton.py, one program per chain) or
``cuda`` (csrc/cuda/boltzmann.cu, one thread block per chain, state in shared memory).
"""

from __future__ import annotations

import torch

from .. import random as gk_random
from .. import registry
from .._checks import check_choice, check_float_tensor, check_int, check_same_device, compiling, real_values
from . import bm_reference as reference
from .bm_reference import ORDERS

SYMMETRY_RTOL = 1e-6


def _bm_gibbs_fake(weights, bias, states, clamp, temperatures, random_order, seed, offset):
    return torch.empty_like(states)


def _bm_gibbs_reference(weights, bias, states, clamp, temperatures, random_order, seed, offset):
    order = "random" if random_order else "sequential"
    return reference.gibbs(weights, bias, states, clamp, temperatures, order, gk_random.key_of(seed), offset)


# bm_gibbs(weights (N, N), bias (N,), states (C, N) in weights' dtype, clamp (N,) bool,
# temperatures (C,) or (1,), random_order, seed (int64 bit pattern), offset) -> states.
# The CUDA kernel changed after its GPU run (ff00d6b): reachable by name only.
GIBBS = registry.declare(
    "bm_gibbs",
    reference=_bm_gibbs_reference,
    cpu=registry.extension("bm_gibbs"),
    triton=registry.lazy(__package__ + ".bm_triton", "bm_gibbs_triton"),
    cuda=registry.extension("bm_gibbs"),
    sequential=True,
    fake=_bm_gibbs_fake)
registry.static_kernels("boltzmann.gibbs", registry.lazy(__package__ + ".bm_triton", "static_kernels"))


def check_machine(weights, bias) -> None:
    """(N, N) symmetric zero-diagonal finite weights and an (N,) bias of one dtype."""
    check_float_tensor("weights", weights, 2)
    if weights.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"weights must be torch.float32 or torch.float64; got {weights.dtype}")
    if weights.shape[0] != weights.shape[1]:
        raise ValueError(f"weights must be square (N, N); got shape {tuple(weights.shape)}")
    check_float_tensor("bias", bias, 1)
    if bias.shape[0] != weights.shape[0]:
        raise ValueError(f"bias has {bias.shape[0]} units but weights has {weights.shape[0]}; they must match")
    if bias.dtype != weights.dtype:
        raise TypeError(f"bias must have weights' dtype {weights.dtype}; got {bias.dtype}")
    check_same_device(weights=weights, bias=bias)
    if compiling() or weights.numel() == 0 or weights.device.type == "meta":
        return
    if not bool(torch.isfinite(weights.sum())) and not bool(torch.isfinite(weights).all()):
        raise ValueError("weights contains NaN or Inf")
    if not bool(torch.isfinite(bias).all()):
        raise ValueError("bias contains NaN or Inf")
    scale = float(weights.abs().max())
    asym = float((weights - weights.T).abs().max())
    if asym > SYMMETRY_RTOL * scale:
        raise ValueError(f"weights must be symmetric; max |W - W^T| is {asym:.3g} (allowed "
                         f"{SYMMETRY_RTOL:g} of max |W|); symmetrise with (W + W.T) / 2")
    if bool((weights.diagonal() != 0).any()):
        raise ValueError("weights must have a zero diagonal (no self-coupling)")


def check_binary(name: str, x: torch.Tensor) -> None:
    """Every entry is 0 or 1 (eager only)."""
    if compiling() or x.numel() == 0 or x.device.type == "meta":
        return
    bad = (x != 0) & (x != 1)
    if bool(bad.any()):
        at = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} must hold only 0 and 1; got {x[at].item()!r} at index {at}")


def bm_gibbs(weights: torch.Tensor, bias: torch.Tensor, states: torch.Tensor,
             temperatures, clamp: torch.Tensor | None = None, order: str = "random",
             seed: int = 0, offset: int = 0, *, backend: str | None = None) -> torch.Tensor:
    """Sequential Gibbs sweeps of many chains of a general Boltzmann machine.

    Unit i sees h_i = sum_j W_ij s_j + b_i and turns on with probability
    1 / (1 + exp(-h_i / T)); one sweep visits every unit once (clamped units keep their
    state); the fields are updated after every change, so each step samples the exact
    conditional. Counter layout in genkernels/boltzmann/bm_reference.py.

    Args:
        weights: (N, N) float32/float64, symmetric, zero diagonal.
        bias: (N,) in weights' dtype.
        states: (C, N) or (N,) in {0, 1}: the chains' starting states.
        temperatures: a float (one sweep) or a 1-D sequence / tensor of S floats > 0:
            sweep t runs at temperatures[t] (an annealing schedule is a decreasing one).
        clamp: (N,) bool, units that never change (the clamped phase), default none.
        order: "random" (a Philox permutation per chain and sweep) or "sequential".
        seed: int in [0, 2^64); offset: int64. A caller sampling again advances offset by
            C * S * N.
        backend: "reference", "cpu", "triton" (N <= 4096) or "cuda" (None: auto; see
            genkernels.backends).
    Returns:
        states after the S sweeps, states' shape and dtype.
    """
    check_machine(weights, bias)
    n = weights.shape[0]
    check_float_tensor("states", states, (1, 2))
    if states.shape[-1] != n:
        raise ValueError(f"states has {states.shape[-1]} units but weights has {n}; they must match")
    check_same_device(weights=weights, states=states)
    check_binary("states", states)
    temps = real_values("temperatures", temperatures)
    if temps.numel() == 0:
        raise ValueError("temperatures must hold at least one temperature")
    if not compiling() and not bool((temps > 0).all() and torch.isfinite(temps).all()):
        raise ValueError(f"temperatures must be finite and > 0; got {temps.tolist()[:8]}")
    if clamp is None:
        clamp = torch.zeros(n, dtype=torch.bool, device=weights.device)
    if not isinstance(clamp, torch.Tensor) or clamp.dtype != torch.bool or clamp.shape != (n,):
        got = f"{clamp.dtype} {tuple(clamp.shape)}" if isinstance(clamp, torch.Tensor) else type(clamp).__name__
        raise ValueError(f"clamp must be a ({n},) bool tensor; got {got}")
    check_same_device(weights=weights, clamp=clamp)
    check_choice("order", order, ORDERS)
    seed = gk_random._check_seed(seed)
    offset = check_int("offset", offset, *gk_random.INT64_RANGE)

    dt = weights.dtype
    w = weights.contiguous()
    b = bias.contiguous()
    s = states.reshape(-1, n).to(dt).contiguous()
    t = temps.to(device=weights.device, dtype=dt)
    gibbs = GIBBS.kernels[GIBBS.resolve(weights.device, backend)]
    out = gibbs(w, b, s, clamp, t, order == "random", gk_random._schema_seed(seed), offset)
    return out.to(states.dtype).reshape(states.shape)


def bm_energy(weights: torch.Tensor, bias: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """E(s) = -1/2 s^T W s - b^T s of states (..., N) in {0, 1} -> (...)."""
    check_machine(weights, bias)
    check_float_tensor("states", states)
    if states.shape[-1] != weights.shape[0]:
        raise ValueError(f"states has {states.shape[-1]} units but weights has "
                         f"{weights.shape[0]}; they must match")
    return reference.energy(weights, bias, states)
