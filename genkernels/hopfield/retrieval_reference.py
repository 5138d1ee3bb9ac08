"""Pure-PyTorch specification of continuous modern Hopfield retrieval (Ramsauer et al.,
"Hopfield Networks is All You Need", 2020): the oracle of ``hopfield_retrieval``.

Shapes: B queries of D features; P stored patterns per query, ``stored`` (B, P, D) --
one set per query -- or (1, P, D) -- one set shared by every query (broadcast).

One step of query b (the update rule, eq. (3) of the paper)::

    r_p    = <X[b, p, :], xi_b>              p = 0 .. P-1   (raw scores)
    a      = softmax(beta * r)               over p (the max subtracted first)
    xi_b'  = sum_p a_p X[b, p, :]            = X[b]^T a

Stopping, per row and independently: a row takes at most ``max_steps`` steps; after a
step its change ``delta_b = max_d |xi_b' - xi_b|`` (the max-abs norm) is compared
with ``tol``, and unless ``delta_b > tol`` the row stops there (so NaN stops a row, and
``tol = 0`` runs until an exact fixed point). The step that stops a row is applied
and counted: ``steps[b]`` is in [1, max_steps]. A stopped row keeps its value while
the others go on.

Gradients flow through the steps actually taken (a stopped row is the identity from
then on); :func:`hopfield_retrieval` is differentiable by PyTorch's autograd, and
:func:`hopfield_retrieval_backward` is the same vector-Jacobian product written out
(the derivation the cpu kernel follows, csrc/cpu/hopfield_retrieval.cpp). With
a = softmax(beta X xi), xi' = X^T a and g = dL/dxi'::

    dL/da    = X g
    dL/ds    = a * (dL/da - <a, dL/da>)          (s = beta X xi, the softmax VJP)
    dL/dxi   = beta X^T dL/ds
    dL/dX   += a g^T + beta dL/ds xi^T
    dL/dbeta += <dL/ds, X xi>

All arithmetic runs in the inputs' dtype (the public op passes fp32 or fp64).
"""

from __future__ import annotations

import torch

from .._checks import acc_dtype, compiling


def _times_patterns_t(v: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """(B, D) x (B | 1, P, D) -> (B, P): row b times X_b^T (one matrix product for a
    shared set, a batched one otherwise)."""
    if stored.shape[0] == 1:
        return v @ stored[0].T
    return (stored @ v[:, :, None])[:, :, 0]


def _times_patterns(w: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """(B, P) x (B | 1, P, D) -> (B, D): row b times X_b."""
    if stored.shape[0] == 1:
        return w @ stored[0]
    return (w[:, None, :] @ stored)[:, 0, :]


def retrieval_step(xi: torch.Tensor, stored: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """One update of every row: xi (B, D), stored (B | 1, P, D), beta 0-d -> (B, D)."""
    raw = _times_patterns_t(xi, stored)                       # (B, P)
    weights = torch.softmax(beta * raw, dim=1)                 # stable: max subtracted
    return _times_patterns(weights, stored)                    # (B, D)


def _change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """max_d |new - old| per row; 0 for D = 0."""
    if new.shape[1] == 0:
        return new.new_zeros(new.shape[0])
    return (new - old).abs().amax(dim=1)


def hopfield_retrieval(queries: torch.Tensor, stored: torch.Tensor, beta: torch.Tensor,
                       max_steps: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Iterate the update with per-row stopping.

    Args:
        queries: (B, D) float (fp32 or fp64). stored: (B, P, D) or (1, P, D), same dtype.
        beta: 0-d tensor (or a float) > 0, the inverse temperature.
        max_steps: >= 1. tol: >= 0; a row stops after the first step whose max-abs change
            is not > tol.
    Returns:
        retrieved (B, D) in queries' dtype -- differentiable in queries, stored and beta
        by autograd -- and steps (B,) int64, the number of steps each row took.
    """
    b = queries.shape[0]
    xi = queries
    steps = torch.zeros(b, dtype=torch.int64, device=queries.device)
    active = torch.ones(b, dtype=torch.bool, device=queries.device)
    for _ in range(max_steps):
        new = retrieval_step(xi, stored, beta)
        delta = _change(new, xi)
        xi = torch.where(active[:, None], new, xi)
        steps = steps + active.to(torch.int64)
        active = active & (delta > tol)
        if not compiling() and not bool(active.any()):
            break
    return xi, steps


def hopfield_retrieval_backward(grad: torch.Tensor, queries: torch.Tensor, stored: torch.Tensor,
                                beta: torch.Tensor, steps: torch.Tensor, max_steps: int
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VJP of :func:`hopfield_retrieval` through the steps each row took, written out.

    The iterates are recomputed from ``queries`` (one (B, D) tensor kept per step, never
    the (B, P) weights); then the steps are walked backwards with the formulas of the
    module docstring, a row contributing only at steps t < steps[b].

    Args:
        grad: (B, D) dL/d retrieved. queries, stored, beta: the forward's inputs.
        steps: (B,) int64 from the forward. max_steps: the forward's max_steps (an
            upper bound of steps, so the loop needs no device-to-host copy).
    Returns:
        (dL/dqueries (B, D), dL/dstored (stored's shape), dL/dbeta 0-d), in the inputs'
        dtype; for a broadcast ``stored`` (1, P, D) the gradient is summed over queries.
    """
    beta = torch.as_tensor(beta, dtype=queries.dtype, device=queries.device)
    iterates = [queries]
    for t in range(max_steps - 1):
        live = (t < steps)[:, None]
        iterates.append(torch.where(live, retrieval_step(iterates[-1], stored, beta), iterates[-1]))
    g = grad.to(queries.dtype)
    grad_stored = torch.zeros_like(stored)
    grad_beta = torch.zeros((), dtype=queries.dtype, device=queries.device)
    broadcast = stored.shape[0] == 1 and queries.shape[0] != 1
    for t in reversed(range(max_steps)):
        live = (t < steps)[:, None]                              # (B, 1)
        xi = iterates[t]
        raw = _times_patterns_t(xi, stored)                      # (B, P)  X xi
        a = torch.softmax(beta * raw, dim=1)
        u = _times_patterns_t(g, stored)                         # (B, P)  dL/da = X g
        ds = a * (u - (a * u).sum(dim=1, keepdim=True))          # dL/ds
        ds = torch.where(live, ds, torch.zeros_like(ds))
        a = torch.where(live, a, torch.zeros_like(a))
        grad_beta = grad_beta + (ds * raw).sum()
        if broadcast:
            grad_stored = grad_stored + (a.T @ g + beta * (ds.T @ xi))[None]
        else:
            grad_stored = grad_stored + a[:, :, None] * g[:, None, :] \
                + beta * ds[:, :, None] * xi[:, None, :]
        g = torch.where(live, beta * _times_patterns(ds, stored), g)
    return g, grad_stored, grad_beta


# ---- autograd of the registered ops (shared by the cpu and triton ops) -----------------
def retrieval_setup_context(ctx, inputs, output):
    queries, stored, beta, max_steps, _tol = inputs
    ctx.save_for_backward(queries, stored, beta, output[1])
    ctx.max_steps = max_steps
    ctx.mark_non_differentiable(output[1])


def as_input_grads(ctx, grads):
    """The three gradients in their inputs' dtypes, None where no gradient is needed."""
    queries, stored, beta, _ = ctx.saved_tensors
    return tuple(g.to(t.dtype) if need else None
                 for g, t, need in zip(grads, (queries, stored, beta), ctx.needs_input_grad[:3])) \
        + (None, None)


def retrieval_backward_reference(ctx, grad, _grad_steps):
    queries, stored, beta, steps = ctx.saved_tensors
    dt = acc_dtype(queries.dtype)
    grads = hopfield_retrieval_backward(
        grad.to(dt), queries.to(dt), stored.to(dt), beta.to(dt), steps, ctx.max_steps)
    return as_input_grads(ctx, grads)
