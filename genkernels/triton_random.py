"""Triton kernels of the Philox ops and the ``genkernels::philox_*_triton`` ops.

These kernels call ``tl.randint4x`` / ``tl.rand`` themselves: they are the ground truth
that genkernels/random.py (PyTorch) and csrc/common/philox.h (cpu, cuda) reproduce bit for
bit. Three layers (STYLE.md): ``_philox_*_kernel`` -> ``philox_*_fwd()`` (output
allocation, grid, fixed BLOCK) -> ``torch.ops.genkernels.philox_*_triton`` (a
``torch.library.custom_op`` with a fake kernel), which ``genkernels.random`` calls for
``backend="triton"``. Imported lazily: importing triton costs a second.

Seeds travel through the op schema as int64 (the bit pattern of a seed in [0, 2^64)) and
are handed to the kernel as the Python int in [0, 2^64) again, so Triton types it i32,
i64 or u64 by value and ``tl.randint4x`` widens it to the uint64 key it documents.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .random import key_of

# Offsets per program: each is one independent Philox call, so any size that keeps the
# loads coalesced serves; fixed (the interpreter cannot autotune, docs/design.md, "Testing").
BLOCK = 1024


@triton.jit
def _philox_randint4x_kernel(
    OFFSETS,          # *i64 (N,) Philox counters
    OUT,              # *i32 (N, 4) row-major: the four uint32 words, stored as their int32 bits
    seed,             # scalar key, [0, 2^64)
    N,                # number of offsets
    BLOCK: tl.constexpr,
):
    # program p owns offsets [p * BLOCK, (p + 1) * BLOCK); 64-bit indices (N may exceed 2^31 / 4)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < N
    offset = tl.load(OFFSETS + idx, mask=mask, other=0)
    r0, r1, r2, r3 = tl.randint4x(seed, offset)
    row = OUT + idx * 4
    tl.store(row + 0, r0.to(tl.int32, bitcast=True), mask=mask)
    tl.store(row + 1, r1.to(tl.int32, bitcast=True), mask=mask)
    tl.store(row + 2, r2.to(tl.int32, bitcast=True), mask=mask)
    tl.store(row + 3, r3.to(tl.int32, bitcast=True), mask=mask)


@triton.jit
def _philox_rand_kernel(
    OFFSETS,          # *i64 (N,) Philox counters
    OUT,              # *fp32 (N,) uniforms in [0, 1)
    seed,             # scalar key, [0, 2^64)
    N,                # number of offsets
    BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < N
    offset = tl.load(OFFSETS + idx, mask=mask, other=0)
    tl.store(OUT + idx, tl.rand(seed, offset), mask=mask)


def philox_randint4x_fwd(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """offsets (...) int64 -> (..., 4) uint32 from tl.randint4x."""
    flat = offsets.contiguous().reshape(-1)
    out = torch.empty((flat.numel(), 4), dtype=torch.int32, device=offsets.device)
    if flat.numel():
        grid = (triton.cdiv(flat.numel(), BLOCK),)
        _philox_randint4x_kernel[grid](flat, out, key_of(seed), flat.numel(), BLOCK=BLOCK)
    return out.view(torch.uint32).reshape(*offsets.shape, 4)


def philox_rand_fwd(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """offsets (...) int64 -> (...) float32 from tl.rand."""
    flat = offsets.contiguous().reshape(-1)
    out = torch.empty(flat.numel(), dtype=torch.float32, device=offsets.device)
    if flat.numel():
        grid = (triton.cdiv(flat.numel(), BLOCK),)
        _philox_rand_kernel[grid](flat, out, key_of(seed), flat.numel(), BLOCK=BLOCK)
    return out.reshape(offsets.shape)


@torch.library.custom_op("genkernels::philox_randint4x_triton", mutates_args=())
def philox_randint4x_triton(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    return philox_randint4x_fwd(seed, offsets)


@philox_randint4x_triton.register_fake
def _philox_randint4x_triton_fake(seed, offsets):
    return offsets.new_empty((*offsets.shape, 4), dtype=torch.uint32)


@torch.library.custom_op("genkernels::philox_rand_triton", mutates_args=())
def philox_rand_triton(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    return philox_rand_fwd(seed, offsets)


@philox_rand_triton.register_fake
def _philox_rand_triton_fake(seed, offsets):
    return offsets.new_empty(offsets.shape, dtype=torch.float32)


def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from ._static import TritonKernel

    # seeds >= 2^31 reach the kernels as i64 (>= 2^63 as u64): the i64 case is the common one
    def sig(out):
        return {"OFFSETS": "*i64", "OUT": out, "seed": "i64", "N": "i32"}

    meta = {"BLOCK": BLOCK}
    return [
        TritonKernel("random", "_philox_randint4x_kernel",
                     lambda: _philox_randint4x_kernel, sig("*i32"), meta),
        TritonKernel("random", "_philox_rand_kernel", lambda: _philox_rand_kernel,
                     sig("*fp32"), meta),
    ]
