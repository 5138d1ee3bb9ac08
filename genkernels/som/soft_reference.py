"""Pure-PyTorch specification of the soft SOM layer (``genkernels.SoftSOM``, op ``som_soft``).

A SOM's winner is piecewise constant in its input, so nothing flows back through it. The
soft SOM lets every node win a little: for an input row x (D,), nodes l_k (K, D) in input
space and per-node values g_k (K, C) (the nodes' grid coordinates, or any vectors),

    d_k  = ||x - l_k||_2            (distance="euclidean")  or  ||x - l_k||_2^2 ("squared")
    s_k  = -beta * d_k              (the scores)
    w_k  = exp(s_k - m) / Z,        m = max_k s_k,  Z = sum_k exp(s_k - m)
    out  = sum_k w_k g_k            (C,)

differentiable in x, l, g and beta. The Euclidean distance has no derivative at x = l_k;
its gradient there is defined as 0 (the subgradient of smallest norm), on every backend.

Shapes: B rows, D features, K nodes, C value columns. Arithmetic in fp32 (fp64 for fp64
input, the accumulation dtype of genkernels._checks.acc_dtype); results in that dtype.

Three functions:

* :func:`soft_som` -- the definition with autograd: the oracle of the tests and gradcheck;
* :func:`soft_som_forward` -- the fused algorithm the kernels run, in PyTorch: one pass over
  node tiles with a running (online) max and sum of the exponentials, never holding the
  B x K matrix; returns the output and the row statistics (m, Z) the backward needs;
* :func:`soft_som_backward` -- the explicit vector-Jacobian product from the saved inputs,
  output and row statistics, recomputing each tile's scores:

    w_bk      = exp(s_bk - m_b) / Z_b
    gs_bk     = w_bk (grad_b . g_k - grad_b . out_b)        (d loss / d s_bk)
    grad g_k  = sum_b w_bk grad_b
    grad beta = -sum_bk gs_bk d_bk
    grad x_b  = -beta sum_k gs_bk dd_bk,  grad l_k = beta sum_b gs_bk dd_bk
    dd_bk     = (x_b - l_k) / d_bk (0 where d_bk = 0)  or  2 (x_b - l_k) (squared)
"""

from __future__ import annotations

import torch

from .._checks import acc_dtype

DISTANCES = ("euclidean", "squared")
# nodes per tile of the fused algorithm (the kernels choose their own tile widths)
NODE_TILE = 256


def _squared_distances(x: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """(B, D), (K, D) -> (B, K) sum_d (x - l)^2, from the differences (no GEMM expansion)."""
    diff = x[:, None, :] - nodes[None, :, :]
    return (diff * diff).sum(-1)


def node_distances(x: torch.Tensor, nodes: torch.Tensor, distance: str) -> torch.Tensor:
    """(B, D), (K, D) -> (B, K) distances; the Euclidean one has gradient 0 where it is 0."""
    sq = _squared_distances(x, nodes)
    if distance == "squared":
        return sq
    positive = sq > 0
    # sqrt of a clamped copy: where sq is 0 the branch is not taken and its gradient is
    # multiplied by 0, never by sqrt's infinite slope
    return torch.where(positive, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq))


def soft_som(x: torch.Tensor, nodes: torch.Tensor, values: torch.Tensor, beta: torch.Tensor,
             distance: str = "euclidean") -> torch.Tensor:
    """The soft SOM by its definition (autograd differentiates it): x (B, D), nodes (K, D),
    values (K, C), beta a 0-d tensor -> (B, C) in the accumulation dtype."""
    dt = acc_dtype(x.dtype)
    x, nodes, values, beta = x.to(dt), nodes.to(dt), values.to(dt), beta.to(dt)
    scores = -beta * node_distances(x, nodes, distance)
    return torch.softmax(scores, dim=1) @ values


def soft_som_forward(x: torch.Tensor, nodes: torch.Tensor, values: torch.Tensor, beta: torch.Tensor,
                     distance: str = "euclidean", tile: int = NODE_TILE
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused forward: node tiles of ``tile`` nodes, a running max m and sum Z per row.
    Returns (out (B, C), m (B,), Z (B,)) in the accumulation dtype; out equals
    :func:`soft_som` up to rounding. K = 0 gives out = 0, m = -inf, Z = 0."""
    dt = acc_dtype(x.dtype)
    x, nodes, values, beta = x.to(dt), nodes.to(dt), values.to(dt), beta.to(dt)
    rows, k_nodes, cols = x.shape[0], nodes.shape[0], values.shape[1]
    m = torch.full((rows,), -torch.inf, dtype=dt, device=x.device)
    z = torch.zeros(rows, dtype=dt, device=x.device)
    acc = torch.zeros(rows, cols, dtype=dt, device=x.device)
    for k0 in range(0, k_nodes, tile):
        s = -beta * node_distances(x, nodes[k0:k0 + tile], distance)          # (B, T)
        m_new = torch.maximum(m, s.amax(1))
        rescale = torch.exp(m - m_new)                                          # 0 on the first tile
        p = torch.exp(s - m_new[:, None])
        z = z * rescale + p.sum(1)
        acc = acc * rescale[:, None] + p @ values[k0:k0 + tile]
        m = m_new
    out = acc / z[:, None] if k_nodes else acc
    return out, m, z


def soft_som_backward(grad: torch.Tensor, x: torch.Tensor, nodes: torch.Tensor, values: torch.Tensor,
                      beta: torch.Tensor, out: torch.Tensor, m: torch.Tensor, z: torch.Tensor,
                      distance: str = "euclidean", tile: int = NODE_TILE
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The explicit VJP (module docstring) from the forward's output and row statistics,
    tile by tile: (grad_x (B, D), grad_nodes (K, D), grad_values (K, C), grad_beta 0-d), in
    the accumulation dtype."""
    dt = acc_dtype(x.dtype)
    x, nodes, values, beta = x.to(dt), nodes.to(dt), values.to(dt), beta.to(dt)
    grad, out = grad.to(dt), out.to(dt)
    grad_x = torch.zeros_like(x)
    grad_nodes = torch.zeros_like(nodes)
    grad_values = torch.zeros_like(values)
    grad_beta = torch.zeros((), dtype=dt, device=x.device)
    g_out = (grad * out).sum(1)                                                 # (B,)
    for k0 in range(0, nodes.shape[0], tile):
        l_t, g_t = nodes[k0:k0 + tile], values[k0:k0 + tile]
        diff = x[:, None, :] - l_t[None, :, :]                                  # (B, T, D)
        sq = (diff * diff).sum(-1)
        if distance == "squared":
            d, dd = sq, 2.0 * diff
        else:
            d = sq.sqrt()
            dd = torch.where(d[..., None] > 0, diff / d.clamp_min(torch.finfo(dt).tiny)[..., None],
                             torch.zeros_like(diff))
        w = torch.exp(-beta * d - m[:, None]) / z[:, None]                      # (B, T)
        gs = w * (grad @ g_t.T - g_out[:, None])
        grad_values[k0:k0 + tile] = w.T @ grad
        grad_beta -= (gs * d).sum()
        gd = -beta * gs                                                         # d loss / d d_bk
        grad_x += (gd[..., None] * dd).sum(1)
        grad_nodes[k0:k0 + tile] = -(gd[..., None] * dd).sum(0)
    return grad_x, grad_nodes, grad_values, grad_beta


# ---- autograd of the compiled som_soft ops (genkernels/som/soft_triton.py, soft_ops.py) ----
# Saved: the inputs, the output and the row statistics; the backward ops (C++
# genkernels::som_soft_backward, Triton genkernels::som_soft_backward_triton) recompute each
# tile's weights from them (no B x K matrix is kept), by soft_som_backward's formulas. The
# row statistics are outputs of the op for this purpose only: the public function returns
# the output alone, so their gradients are 0.
def soft_setup_context(ctx, inputs, output):
    x, nodes, values, beta, squared = inputs
    out, m, z = output
    ctx.save_for_backward(x, nodes, values, beta, out, m, z)
    ctx.squared = squared


def as_input_grads(ctx, grads):
    """The backward's four gradients in the dtypes of the op's inputs, None where an input
    needs none."""
    return (*(g.to(t.dtype) if need else None
              for g, t, need in zip(grads, ctx.saved_tensors[:4], ctx.needs_input_grad[:4])), None)
