"""Data-parallel helpers over torch.distributed (NCCL on GPU, gloo on CPU).

Models call :func:`ensure_process_group` when asked to train with
``distributed=True``: it uses the default process group, initialising it from
torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) when the caller
has not. Reductions are sums of the same per-unit statistics a single process
accumulates, so 1 and N processes agree up to float summation order.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def ensure_process_group(device: torch.device) -> None:
    if not dist.is_available():
        raise RuntimeError("distributed=True needs torch.distributed, which this torch build lacks")
    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError("distributed=True: no process group is initialised and the torchrun "
                           f"environment is incomplete (missing {', '.join(missing)}); launch with "
                           "`torchrun --nproc-per-node N ...` or call "
                           "torch.distributed.init_process_group first")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)


def shutdown() -> None:
    """End a distributed run cleanly on every rank: a barrier (no rank leaves while another
    still talks to it), then destroy the default process group. A process that exits with
    the group alive can abort in the backend's destructor ("terminate called without an
    active exception", seen with gloo when one rank returned early)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor across ranks, in place (a no-op in a single process)."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_gather_counts(n: int, device: torch.device) -> list[int]:
    """The row count of every rank's shard, in rank order."""
    if world_size() == 1:
        return [n]
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(out, mine)
    return [int(t) for t in out]
