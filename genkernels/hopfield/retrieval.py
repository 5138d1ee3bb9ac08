"""``genkernels.HopfieldRetrieval``: the continuous modern Hopfield update as a layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_int, check_positive
from .retrieval_ops import _check_tol, hopfield_retrieval


class HopfieldRetrieval(nn.Module):
    """Retrieval from a continuous modern Hopfield network (Ramsauer et al., "Hopfield
    Networks is All You Need"): every query iterates ``xi <- X^T softmax(beta X xi)``
    inside one fused kernel, for ``max_steps`` steps or until its max-abs change is
    <= ``tol`` (rows stop independently). See :func:`genkernels.ops.hopfield_retrieval`.

    Args:
        beta: inverse temperature > 0 (initial value when learnable).
        learnable_beta: make beta a parameter. It is stored as ``log_beta`` (an
            nn.Parameter) and used as ``exp(log_beta)``, so it stays positive whatever
            the optimiser does; otherwise ``log_beta`` is a buffer.
        max_steps: >= 1. tol: >= 0.
        backend: None (auto) or a backend name, as for the op.

    forward(queries (B, D), stored (B or 1, P, D)) -> (B, D) in queries' dtype,
    differentiable in queries, stored and (when learnable) beta. A single argument may
    also be the pair ``(queries, stored)``, so the layer follows a module returning it
    inside ``nn.Sequential``.

    Example::

        layer = genkernels.HopfieldRetrieval(beta=8.0, learnable_beta=True, max_steps=3)
        memory = torch.randn(1, 64, 32)              # 64 stored patterns of 32 features
        out = layer(torch.randn(10, 32), memory)     # (10, 32)
    """

    log_beta: torch.Tensor

    def __init__(self, beta: float = 1.0, learnable_beta: bool = False, max_steps: int = 1,
                 tol: float = 1e-4, *, backend: str | None = None):
        super().__init__()
        beta = check_positive("beta", beta)
        if not math.isfinite(beta):
            raise ValueError(f"beta must be > 0 and finite; got {beta!r}")
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.tol = _check_tol(tol)
        self.learnable_beta = bool(learnable_beta)
        self.backend = backend
        log_beta = torch.tensor(math.log(beta), dtype=torch.get_default_dtype())
        if self.learnable_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)

    @property
    def beta(self) -> torch.Tensor:
        """The inverse temperature, exp(log_beta): a 0-d tensor."""
        return self.log_beta.exp()

    def forward(self, queries, stored: torch.Tensor | None = None) -> torch.Tensor:
        if stored is None:
            if not (isinstance(queries, (tuple, list)) and len(queries) == 2):
                raise TypeError("HopfieldRetrieval takes (queries, stored), or one pair "
                                f"(queries, stored); got a single {type(queries).__name__}")
            queries, stored = queries
        return hopfield_retrieval(queries, stored, self.beta, self.max_steps, self.tol, self.backend)

    def extra_repr(self) -> str:
        return (f"beta={float(self.beta.detach()):g}, learnable_beta={self.learnable_beta}, "
                f"max_steps={self.max_steps}, tol={self.tol:g}")
