"""Learning-rate and radius schedules, evaluated once into per-step vectors.

A schedule maps the global training step t in [0, total) to a value. Named shapes
decay from ``start`` to ``end`` over the whole fit (p = t / (total - 1)):

  constant     start
  linear       start + (end - start) p
  exponential  start (end / start)^p
  inverse      start / (1 + (start / end - 1) p)
  asymptotic   start / (1 + 2 p)          (MiniSom's asymptotic_decay; ignores end)

A callable is called with the step index tensor and returns the values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SCHEDULES = ("constant", "linear", "exponential", "inverse", "asymptotic")


def evaluate(kind: str | Callable, start: torch.Tensor, end: torch.Tensor, first: int, count: int,
             total: int) -> torch.Tensor:
    """Values for steps first .. first + count - 1 of a run of ``total`` steps.

    start, end: (M,) float64, one per map. Returns (M, count) float64.
    """
    t = torch.arange(first, first + count, dtype=torch.float64)
    if callable(kind):
        values = torch.as_tensor(kind(t), dtype=torch.float64)
        return values.expand(start.shape[0], count).clone() if values.dim() <= 1 else values
    p = (t / max(total - 1, 1))[None, :]
    s, e = start[:, None], end[:, None]
    if kind == "constant":
        return s.expand(-1, count).clone()
    if kind == "linear":
        return s + (e - s) * p
    if kind == "exponential":
        return s * (e / s) ** p
    if kind == "inverse":
        return s / (1 + (s / e - 1) * p)
    if kind == "asymptotic":
        return s / (1 + 2 * p)
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)} or a callable; got {kind!r}")
