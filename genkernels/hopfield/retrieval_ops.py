"""Public op of continuous (modern) Hopfield retrieval: validation, declaration, dispatch.

Re-exported flat in ``genkernels.ops`` (through ``hopfield/ops.py``). Backends (see
``genkernels.backends``): ``reference`` (genkernels/hopfield/retrieval_reference.py),
``cpu`` (csrc/cpu/hopfield_retrieval.cpp) and ``triton``
(genkernels/hopfield/retrieval_triton.py, one fused kernel for all steps).
"""

from __future__ import annotations

import numbers

import torch

from .. import registry
from .._checks import (
    acc_dtype,
    check_beta,
    check_float_tensor,
    check_int,
    check_same_device,
    check_same_dtype,
    compiling,
)
from . import retrieval_reference
from .retrieval_reference import as_input_grads, retrieval_setup_context

# Backends: reference (retrieval_reference.py, differentiated by autograd), cpu
# (csrc/cpu/hopfield_retrieval.cpp: forward and backward kernels) and triton
# (genkernels/hopfield/retrieval_triton.py: the fused forward; its backward is the reference's
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
    triton=registry.lazy(__package__ + ".retrieval_triton", "hopfield_retrieval_triton"),
    fake=_retrieval_fake,
    autograd=(_retrieval_backward_cpu, retrieval_setup_context))
registry.static_kernels("hopfield.retrieval", registry.lazy(__package__ + ".retrieval_triton", "static_kernels"))
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
    beta_t = check_beta(beta, queries.device, dt)
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
