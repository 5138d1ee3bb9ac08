"""Triton helpers every family's kernels share (the core: it imports no family).

* :func:`device_of` -- launch on a tensor's GPU (Triton launches on the current device);
* :data:`TL_ACC` -- the ``tl`` accumulator dtype of a torch accumulator dtype;
* :func:`next_pow2` -- block sizes and top-k slot counts;
* :func:`lane` -- one element of a 1-D register tensor;
* :data:`MAX_REGISTER_UNITS`, :func:`register_warps`, :func:`visiting_order` and
  :func:`single_site_update` -- the single-site sweeps (Hopfield recall, Boltzmann
  Gibbs) that hold a whole network's state in registers.

Imported by the families' Triton modules only (importing triton costs about a second).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}

# Largest N a single-site sweep holds in registers (state, fields, order: (BLOCK_N,) each).
# The in-register bitonic sort grows the code as log^2 BLOCK_N: on sm_90, BLOCK_N = 8192
# needed 255 registers with spills and a 56 s compile; 4096 with 16 warps takes 106
# registers, no spills (bench/results/static/hopfield.md).
MAX_REGISTER_UNITS = 4096


def device_of(t: torch.Tensor):
    """Launch on t's GPU (Triton launches on the current device), no-op on CPU."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (n - 1).bit_length())


@triton.jit
def lane(values, lanes, i):
    """values[i] of a 1-D register tensor (a masked reduction: exact, one nonzero term)."""
    return tl.sum(tl.where(lanes == i, values, tl.zeros_like(values)), 0)


def register_warps(block_n: int, itemsize: int = 4) -> int:
    """Warps per program of a register-resident sweep: 1 KiB of each register tensor per
    warp (sm_90: 1024 fp32 lanes take 80 registers at 4 warps; 2048 fp32, or 1024 fp64,
    spill at 4 warps but not at 8)."""
    return min(16, max(4, block_n * itemsize // 1024))


@triton.jit
def visiting_order(keys, lanes64, valid):
    """The visiting order of a random single-site sweep (Hopfield recall, Boltzmann Gibbs):
    the stable argsort of the units' 32-bit Philox keys (int64 holding uint32), lanes past
    N last. Each key is packed with its lane as (key - 2^31) * 2^32 + lane, so one tl.sort
    orders by key and then by lane; returns the lanes in that order (int64)."""
    packed = (keys - 2147483648) * 4294967296 + lanes64
    packed = tl.where(valid, packed, 2147483647 * 4294967296 + lanes64)
    return tl.sort(packed, 0) & 0xFFFFFFFF


@triton.jit
def single_site_update(W, N, s, h, i, new, old, lanes64, valid):
    """Unit i of a single-site sweep (Hopfield recall, Boltzmann Gibbs) changes from old
    to new (the kernel's rule chose new != old): returns the state with lane i set to new
    and the fields h + (new - old) * W[i] (row i of the symmetric (N, N) W = column i).
    delta = new - old is +-2 for +-1 states and +-1 for 0/1 states, so the product is
    exact and the one rounding is the addition's, as in the references'
    h.add_(W[i], alpha=delta)."""
    s = tl.where(lanes64 == i, new, s)
    w_row = tl.load(W + i * N + lanes64, mask=valid, other=0.0)
    return s, h + (new - old) * w_row
