"""Triton kernel of asynchronous Hopfield recall (genkernels/hopfield/retrieval_triton.py holds the
modern Hopfield retrieval kernels) and the
``genkernels::hopfield_recall_async_triton`` op.

Three layers (STYLE.md): ``_hopfield_recall_async_kernel`` (the @triton.jit kernel) ->
``hopfield_recall_async_fwd()`` (fields, output allocation, grid) ->
``torch.ops.genkernels.hopfield_recall_async_triton`` (a ``torch.library.custom_op``
with a fake kernel), which genkernels/hopfield/recall_ops.py calls for ``backend="triton"``.

One program per probe walks every sweep of its probe in one launch (no host round trip
per sweep or per unit). The probe's state, its local fields and the sweep's visiting
order live in registers as (BLOCK_N,) tensors, BLOCK_N = next power of two >= N, so N is
limited to ``MAX_UNITS``. The semantics are genkernels/hopfield/recall_reference.py's, bit for
bit:

* the fields start as ``probes @ weights``, computed by the launcher with the same
  PyTorch product the reference uses;
* sweep t of probe b visits the units in the stable argsort of the Philox keys
  ``tl.randint(seed, offset + (b * max_sweeps + t) * N + j)``: each key is packed with
  its unit index as ``(key - 2^31) * 2^32 + j`` (an int64 that orders by key, then by
  unit) and the packed keys are sorted with ``tl.sort``; padding lanes get the largest
  key and an index >= N, so they sort last;
* a visited unit takes the sign of its field, keeping its state at exactly 0; after a
  flip to s_i the fields get ``h + (2 s_i) * W[i]`` (``triton_common.single_site_update``,
  which the Boltzmann Gibbs kernel calls too; one rounding, as in the reference: the
  product by +-2 is exact, so a fused multiply-add rounds the same way);
* a probe stops after the first sweep without a flip (converged) or after max_sweeps.

Reading one lane of a register tensor is a masked reduction over BLOCK_N lanes, so a
sweep costs O(N^2) per probe, like the flips' field updates themselves; probes run in
parallel, one per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..random import key_of
from ..triton_common import (
    MAX_REGISTER_UNITS,
    device_of,
    lane,
    register_warps,
    single_site_update,
    visiting_order,
)

MAX_UNITS = MAX_REGISTER_UNITS


@triton.jit
def _hopfield_recall_async_kernel(
    W,              # *acc (N, N) symmetric weights, row-major
    STATES,         # *acc (B, N) in: probes, out: recalled states
    FIELDS,         # *acc (B, N) in: probes @ weights
    CONVERGED,      # *i8 (B,) out
    N, max_sweeps,  # units, sweeps at most
    seed, offset,   # Philox key and the int64 counter base of the random order
    RANDOM: tl.constexpr,   # Philox order (True) or 0..N-1 (False)
    BLOCK_N: tl.constexpr,  # power of two >= N
):
    b = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK_N)
    valid = lanes < N
    row = b * N
    s = tl.load(STATES + row + lanes, mask=valid, other=0.0)
    h = tl.load(FIELDS + row + lanes, mask=valid, other=0.0)
    lanes64 = lanes.to(tl.int64)
    done = 0
    for t in range(max_sweeps):
        if done == 0:
            if RANDOM:
                # int64 counters wrap like the reference's
                counters = offset + (b * max_sweeps + t) * N + lanes64
                keys = tl.randint(seed, counters).to(tl.int64) & 0xFFFFFFFF
                order = visiting_order(keys, lanes64, valid)
            else:
                order = lanes64
            flips = 0
            for j in range(N):
                i = lane(order, lanes64, j)
                hi = lane(h, lanes64, i)
                si = lane(s, lanes64, i)
                new = tl.where(hi > 0, 1.0, tl.where(hi < 0, -1.0, si)).to(si.dtype)
                if new != si:
                    flips += 1
                    s, h = single_site_update(W, N, s, h, i, new, si, lanes64, valid)
            if flips == 0:
                done = 1
    tl.store(STATES + row + lanes, s, mask=valid)
    tl.store(CONVERGED + b, done.to(tl.int8))


def hopfield_recall_async_fwd(weights: torch.Tensor, states: torch.Tensor, max_sweeps: int,
                              random_order: bool, seed: int, offset: int
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """weights (N, N), states (B, N) ±1 in weights' dtype (float32/64, contiguous) ->
    recalled states (B, N), converged (B,) bool. seed in [0, 2^64), offset int64."""
    b_count, n = states.shape
    out = states.clone()
    converged = torch.zeros(b_count, dtype=torch.int8, device=states.device)
    if b_count == 0 or n == 0 or max_sweeps == 0:
        if n == 0 and max_sweeps > 0:
            converged.fill_(1)  # an empty sweep flips nothing
        return out, converged.bool()
    if n > MAX_UNITS:
        raise ValueError(f"the triton backend of hopfield recall holds at most {MAX_UNITS} "
                         f"units per probe in registers; got N = {n} (use the cpu backend)")
    fields = (states @ weights).contiguous()  # the reference's product: the same bits
    block_n = max(16, triton.next_power_of_2(n))
    with device_of(states):
        _hopfield_recall_async_kernel[(b_count,)](
            weights, out, fields, converged, n, max_sweeps, seed, offset,
            RANDOM=bool(random_order), BLOCK_N=block_n,
            num_warps=register_warps(block_n, states.element_size()))
    return out, converged.bool()


@torch.library.custom_op("genkernels::hopfield_recall_async_triton", mutates_args=())
def hopfield_recall_async_triton(weights: torch.Tensor, states: torch.Tensor, max_sweeps: int,
                                 random_order: bool, seed: int, offset: int
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Asynchronous recall on Triton; seed is the int64 bit pattern of a seed in
    [0, 2^64) (as in the C++ op's schema)."""
    return hopfield_recall_async_fwd(weights, states, max_sweeps, random_order,
                                     key_of(seed), offset)


@hopfield_recall_async_triton.register_fake
def _hopfield_recall_async_triton_fake(weights, states, max_sweeps, random_order, seed, offset):
    return torch.empty_like(states), states.new_empty((states.shape[0],), dtype=torch.bool)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def recall(dtype, random, block_n):
        p = ptr(dtype)
        sig = {"W": p, "STATES": p, "FIELDS": p, "CONVERGED": "*i8", "N": "i32",
               "max_sweeps": "i32", "seed": "i64", "offset": "i64"}
        order = "random" if random else "sequential"
        return TritonKernel("hopfield", f"_hopfield_recall_async_kernel[{dtype},{order},N<={block_n}]",
                            lambda: _hopfield_recall_async_kernel, sig,
                            {"RANDOM": random, "BLOCK_N": block_n},
                            register_warps(block_n, 8 if dtype == "fp64" else 4), 3)

    # N <= 1024 in each dtype and order, and the largest N
    return [recall("fp32", True, 1024), recall("fp32", False, 1024), recall("fp64", True, 1024),
            recall("fp32", True, MAX_UNITS)]
