"""The single-site sweep of the references (Hopfield asynchronous recall, Boltzmann Gibbs
sweeps): one unit at a time, each change folded into the local fields at once. The
family supplies only the rule that picks a unit's next state (the sign of its field, a
Bernoulli draw); the compiled kernels share theirs the same way (csrc/cpu/single_site.h,
csrc/cuda/single_site.cuh, ``triton_common.single_site_update``).

A Python loop: an oracle for small sizes (docs/design.md, "One op, four implementations").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

__all__ = ["single_site_sweep"]


def single_site_sweep(weights: torch.Tensor, state: torch.Tensor, fields: torch.Tensor,
                      order: Iterable[int], rule: Callable[[int], float]) -> Iterator[int]:
    """One sweep of one chain or probe over the units of ``order``, in place.

    weights (N, N) float, symmetric; state (N,) and fields (N,) in its dtype: the chain's
    states and local fields (rows of larger tensors are updated through the views).
    ``rule(i)`` returns the next state of unit i (a Python float), reading what it needs
    (its state, its field) itself. A unit that changes by delta = new - old (+-2 for +-1
    states, +-1 for 0/1 states) updates ``fields += delta * weights[i]`` (row i = column
    i; the product is exact, so the one rounding is the addition's). Yields each unit that
    changed, right after its change (so a caller can watch the energy step by step); the
    sweep runs as the caller consumes it."""
    for i in order:
        new = rule(i)
        old = state[i].item()
        if new != old:
            state[i] = new
            fields.add_(weights[i], alpha=new - old)
            yield i
