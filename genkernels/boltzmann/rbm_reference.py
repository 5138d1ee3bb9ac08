"""Pure-PyTorch specification of the RBM ops (the oracle of the cpu and triton backends).

Half-step of a restricted Boltzmann machine with weights ``W`` (n_visible, n_hidden):

* ``transpose=False`` (visible -> hidden): s (B, n_visible), bias (n_hidden,),
  P = sigmoid(s @ W + bias), (B, n_hidden);
* ``transpose=True`` (hidden -> visible): s (B, n_hidden), bias (n_visible,),
  P = sigmoid(s @ W^T + bias), (B, n_visible).

The Bernoulli draw of element (b, j) of P (B, n_out) is ``u < P[b, j]`` where u is word
j % 4 of ``randint4x(seed, offset + b * Q + j // 4)``, Q = ceil(n_out / 4) counters per
row, converted to [0, 1) as ``tl.rand`` does (``tl.rand4x``): one Philox call serves four
consecutive units, a quarter of the work of one call per element (the counter layout of
every backend). Row b is the caller's sample b: a caller holding rows r0.. of a larger
batch (a shard, a minibatch of a chain set) passes ``offset + r0 * Q`` and draws exactly
what the whole batch would draw for those rows, so the stream is keyed by the global
sample index and the unit. A half-step over B rows consumes B * Q counters.

Arithmetic is in fp32 (fp64 for fp64 weights); states may be uint8 samples or floats.

The binary-state half-step (``rbm_half_step_binary``) takes 0/1 states and defines the
product as bias + the sum of the weight rows of the active inputs, with the same counters;
``binary_outer_add_`` is the matching weight statistic x^T h of binary x.
"""

from __future__ import annotations

import torch

from .. import random as gk_random
from .._checks import acc_dtype


def counters_per_row(n_out: int) -> int:
    """Q = ceil(n_out / 4): Philox counters a half-step takes per row."""
    return (n_out + 3) // 4


def half_step_uniforms(seed: int, offset: int, rows: int, n_out: int, device) -> torch.Tensor:
    """(rows, n_out) float32 uniforms of the half-step: element (b, j) is word j % 4 of
    randint4x(seed, offset + b * Q + j // 4) as tl.rand converts it."""
    q = counters_per_row(n_out)
    b = torch.arange(rows, dtype=torch.int64, device=device)[:, None]
    c = torch.arange(q, dtype=torch.int64, device=device)[None, :]
    words = gk_random.randint4x(seed, b * q + c + offset, backend="reference")  # (rows, Q, 4)
    return gk_random.uint_to_uniform_float(words.reshape(rows, 4 * q)[:, :n_out].contiguous())


def half_step_probs(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor,
                    transpose: bool) -> torch.Tensor:
    """P = sigmoid(s @ W + bias) (transpose=False) or sigmoid(s @ W^T + bias): (B, n_out)."""
    dt = acc_dtype(w.dtype)
    wt = w.to(dt).T if transpose else w.to(dt)
    return torch.sigmoid(torch.mm(s.to(dt), wt) + bias.to(dt))


def bernoulli(probs: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """uint8 samples (u < probs) of probs (B, n_out) with the counters of the half-step."""
    u = half_step_uniforms(seed, offset, *probs.shape, probs.device)
    return (u < probs).to(torch.uint8)


def rbm_half_step(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
                  transpose: bool, return_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples (B, n_out) uint8, probs (B, n_out) in the accumulation dtype, or an empty
    (0, n_out) tensor when return_probs is False)."""
    probs = half_step_probs(s, w, bias, transpose)
    samples = bernoulli(probs, seed, offset)
    if not return_probs:
        probs = probs.new_empty((0, probs.shape[1]))
    return samples, probs


def half_step_binary_preactivations(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor,
                                    transpose: bool) -> torch.Tensor:
    """Pre-activations of 0/1 states s (B, n_in) (nonzero = 1) as sums of gathered weight rows:
    row b is bias + sum over the active inputs i of s[b] of row i of W (transpose=False,
    W (n_visible, n_hidden)) or of W^T (transpose=True): (B, n_out)."""
    dt = acc_dtype(w.dtype)
    w_rows = w.to(dt).T if transpose else w.to(dt)
    rows, inputs = (s != 0).nonzero(as_tuple=True)
    pre = bias.to(dt).expand(s.shape[0], w_rows.shape[1]).clone()
    return pre.index_add_(0, rows, w_rows[inputs])


def rbm_half_step_binary(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
                         transpose: bool, return_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rbm_half_step` on 0/1 states s (B, n_in) uint8 or float: P = sigmoid of
    :func:`half_step_binary_preactivations` (B, n_out), drawn with the half-step's counters.
    Returns (samples (B, n_out) uint8, P or an empty (0, n_out))."""
    probs = torch.sigmoid(half_step_binary_preactivations(s, w, bias, transpose))
    samples = bernoulli(probs, seed, offset)
    if not return_probs:
        probs = probs.new_empty((0, probs.shape[1]))
    return samples, probs


def binary_outer_add_(out: torch.Tensor, x: torch.Tensor, h: torch.Tensor, alpha: float,
                      column_sums: torch.Tensor, sums_alpha: float) -> None:
    """out (n_in, n_out) += alpha * x^T h in place, x (B, n_in) 0/1 states (nonzero = 1),
    h (B, n_out): row i of out gains alpha times the sum of the rows h[b] with x[b, i] = 1;
    and column_sums (n_in,) += sums_alpha * (the number of ones in column i of x)."""
    rows, inputs = (x != 0).nonzero(as_tuple=True)
    sums = torch.zeros_like(out).index_add_(0, inputs, h.to(out.dtype)[rows])
    out.add_(sums, alpha=alpha)
    column_sums.add_((x != 0).sum(0).to(column_sums.dtype), alpha=sums_alpha)


def rbm_pcd_step_(v_pos: torch.Tensor, w: torch.Tensor, visible_bias: torch.Tensor,
                  hidden_bias: torch.Tensor, chains: torch.Tensor, seed: int, offset_v: int,
                  offset_h: int, lr: float, half_step=rbm_half_step) -> torch.Tensor:
    """One persistent-CD batch of scikit-learn's BernoulliRBM rule (genkernels.compat), in
    place on w (n_visible, n_hidden), visible_bias and hidden_bias; v_pos (B, n_visible)
    in w's dtype, chains (C, n_hidden) uint8. Returns the new chains (C, n_hidden) uint8.

    h_pos = sigmoid(v_pos w + hidden_bias); v_neg ~ p(v | chains) (half-step at offset_v,
    transpose); new chains, h_neg = samples and p(h | v_neg) (half-step at offset_h); then
    w += lr (v_pos^T h_pos - v_neg^T h_neg), hidden_bias += lr (sum h_pos - sum h_neg),
    visible_bias += lr (sum v_pos - sum v_neg). ``half_step``: the half-step function
    (this module's, or a backend's with the same signature)."""
    h_pos = torch.sigmoid(torch.addmm(hidden_bias, v_pos, w))
    v_neg = half_step(chains, w, visible_bias, seed, offset_v, True, False)[0]
    new_chains, h_neg = half_step(v_neg, w, hidden_bias, seed, offset_h, False, True)
    v_neg = v_neg.to(w.dtype)
    w.addmm_(v_pos.T, h_pos, alpha=lr).addmm_(v_neg.T, h_neg, alpha=-lr)
    hidden_bias.add_(h_pos.sum(0) - h_neg.sum(0), alpha=lr)
    visible_bias.add_(v_pos.sum(0) - v_neg.sum(0), alpha=lr)
    return new_chains


# ---- autograd of the Triton half-step ops (genkernels/boltzmann/rbm_triton.py) ----------------
def half_step_setup_context(ctx, inputs, output):
    s, w, _bias, _seed, _offset, transpose, _return_probs = inputs
    ctx.transpose = transpose
    ctx.save_for_backward(s, w, output[1])
    ctx.mark_non_differentiable(output[0])


def half_step_backward(ctx, _grad_samples, grad_probs):
    """Gradients of P = sigmoid(z), z = s @ w + bias (transpose: s @ w.T + bias), in s
    (float states), w and bias, for the Triton ops. The uint8 samples are not
    differentiable; without return_probs nothing is. The C++ ops carry the same backward in
    C++ (csrc/cpu/rbm_autograd.cpp: no Python autograd layer on calls without gradients)."""
    s, w, probs = ctx.saved_tensors
    need_s, need_w, need_bias = ctx.needs_input_grad[:3]
    if grad_probs is None or probs.shape[0] != s.shape[0]:
        return (None,) * 7
    dz = grad_probs * probs * (1 - probs)
    sf = s.to(dz.dtype)
    grad_s = (dz @ w if ctx.transpose else dz @ w.t()) if need_s else None
    grad_w = (dz.t() @ sf if ctx.transpose else sf.t() @ dz) if need_w else None
    grad_bias = dz.sum(0) if need_bias else None
    return grad_s, grad_w, grad_bias, None, None, None, None


def half_step_binary_backward(ctx, grad_samples, grad_probs):
    """:func:`half_step_backward` without a gradient in s: 0/1 states are discrete, as in
    the reference (which gathers weight rows by them)."""
    return (None, *half_step_backward(ctx, grad_samples, grad_probs)[1:])
