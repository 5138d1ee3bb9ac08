"""Triton kernel of sequential Gibbs sweeps in general Boltzmann machines and the
``genkernels::bm_gibbs_triton`` op.

One program per chain walks all S sweeps in one launch; the chain's state, fields, the
sweep's uniforms and visiting order live in registers as (BLOCK_N,) tensors (BLOCK_N =
next power of two >= N, N <= ``MAX_UNITS``). Semantics and counter layout are
genkernels/boltzmann/bm_reference.py's: fields start as ``torch.addmm(bias, states, weights)`` (the
launcher's PyTorch product); sweep t of chain c takes the words of counters
``offset + (c * S + t) * N + i`` -- word 0 keys the stable random order (packed as
``(key - 2^31) * 2^32 + i`` and sorted with ``tl.sort``, as in genkernels/hopfield/
recall_triton.py), word 1 is the uniform (``tl.rand``'s conversion); a visited, unclamped unit
turns on iff u < 1 / (1 + exp(-h / T)); a change by +-1 adds +-W[i] to the fields
(``triton_common.single_site_update``, which the Hopfield recall kernel calls too).
The probability uses the GPU's exp, so a draw may differ from the reference's where
|u - p| is within rounding (docs/design.md, "Randomness").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.random import uint_to_uniform_float

from ..random import key_of
from ..triton_common import MAX_REGISTER_UNITS as MAX_UNITS
from ..triton_common import device_of, lane, register_warps, single_site_update, visiting_order


@triton.jit
def _bm_gibbs_kernel(
    W,              # *acc (N, N) symmetric, zero diagonal
    STATES,         # *acc (C, N) in/out, {0, 1}
    FIELDS,         # *acc (C, N) in: states @ W + b
    CLAMP,          # *i8 (N,) 1 = never changes
    TEMPS,          # *acc (S,) temperature of each sweep
    N, S,           # units, sweeps
    seed, offset,   # Philox key and int64 counter base
    RANDOM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK_N)
    valid = lanes < N
    lanes64 = lanes.to(tl.int64)
    row = c * N
    s = tl.load(STATES + row + lanes, mask=valid, other=0.0)
    h = tl.load(FIELDS + row + lanes, mask=valid, other=0.0)
    frozen = tl.load(CLAMP + lanes, mask=valid, other=1).to(s.dtype)
    for t in range(S):
        temp = tl.load(TEMPS + t)
        counters = offset + (c * S + t) * N + lanes64
        r0, r1, r2, r3 = tl.randint4x(seed, counters)
        u = uint_to_uniform_float(r1).to(s.dtype)
        if RANDOM:
            keys = r0.to(tl.int64) & 0xFFFFFFFF
            order = visiting_order(keys, lanes64, valid)
        else:
            order = lanes64
        for k in range(N):
            i = lane(order, lanes64, k)
            if lane(frozen, lanes64, i) == 0:
                hi = lane(h, lanes64, i)
                si = lane(s, lanes64, i)
                p = 1.0 / (1.0 + tl.exp(-(hi / temp)))
                new = tl.where(lane(u, lanes64, i) < p, 1.0, 0.0).to(s.dtype)
                if new != si:
                    s, h = single_site_update(W, N, s, h, i, new, si, lanes64, valid)
    tl.store(STATES + row + lanes, s, mask=valid)


def bm_gibbs_fwd(weights: torch.Tensor, bias: torch.Tensor, states: torch.Tensor,
                 clamp: torch.Tensor, temperatures: torch.Tensor, random_order: bool, seed: int,
                 offset: int) -> torch.Tensor:
    """weights (N, N), bias (N,), states (C, N), clamp (N,) bool, temperatures (S,) ->
    states (C, N) after S sweeps (one dtype, float32/64, contiguous)."""
    c_count, n = states.shape
    out = states.clone()
    if c_count == 0 or n == 0 or temperatures.numel() == 0:
        return out
    if n > MAX_UNITS:
        raise ValueError(f"the triton backend of bm_gibbs holds at most {MAX_UNITS} units per "
                         f"chain in registers; got N = {n} (use the cpu backend)")
    fields = torch.addmm(bias, states, weights).contiguous()  # the reference's product
    block_n = max(16, triton.next_power_of_2(n))
    with device_of(states):
        _bm_gibbs_kernel[(c_count,)](
            weights, out, fields, clamp.to(torch.int8), temperatures.contiguous(), n,
            temperatures.numel(), seed, offset, RANDOM=bool(random_order), BLOCK_N=block_n,
            num_warps=register_warps(block_n, states.element_size()))
    return out


@torch.library.custom_op("genkernels::bm_gibbs_triton", mutates_args=())
def bm_gibbs_triton(weights: torch.Tensor, bias: torch.Tensor, states: torch.Tensor,
                    clamp: torch.Tensor, temperatures: torch.Tensor, random_order: bool,
                    seed: int, offset: int) -> torch.Tensor:
    """Gibbs sweeps on Triton; seed is the int64 bit pattern of a seed in [0, 2^64)."""
    return bm_gibbs_fwd(weights, bias, states, clamp, temperatures, random_order,
                        key_of(seed), offset)


@bm_gibbs_triton.register_fake
def _bm_gibbs_triton_fake(weights, bias, states, clamp, temperatures, random_order, seed, offset):
    return torch.empty_like(states)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def gibbs(dtype, random, block_n):
        p = ptr(dtype)
        sig = {"W": p, "STATES": p, "FIELDS": p, "CLAMP": "*i8", "TEMPS": p, "N": "i32",
               "S": "i32", "seed": "i64", "offset": "i64"}
        order = "random" if random else "sequential"
        return TritonKernel("boltzmann", f"_bm_gibbs_kernel[{dtype},{order},N<={block_n}]",
                            lambda: _bm_gibbs_kernel, sig,
                            {"RANDOM": random, "BLOCK_N": block_n},
                            register_warps(block_n, 8 if dtype == "fp64" else 4), 3)

    return [gibbs("fp32", True, 1024), gibbs("fp32", False, 1024), gibbs("fp64", True, 1024)]
