"""Pure-PyTorch specification of the SOM ops: short, obviously correct, the test oracle.

Shapes: N samples, D features, K = rows * cols nodes, M independent maps, T steps.
Accumulation runs in fp32 (fp64 for fp64 input); results come back in the input dtype.
"""

from __future__ import annotations

import torch

from .._checks import acc_dtype  # noqa: F401  (re-exported)

METRICS = ("euclidean", "cosine", "manhattan", "chebyshev")
NEIGHBORHOODS = ("gaussian", "bubble", "mexican_hat", "triangle")
RULES = ("som", "wta", "wtm")
# Arithmetic of the BMU candidate search (genkernels.ops.som_bmu): the returned
# distances are exact in every one; the reference always searches exactly.
PRECISIONS = ("fp32", "tf32", "bf16")
# Kernels of the triton BMU search (genkernels/som/triton.py); the reference is exact.
SEARCHES = ("auto", "fused", "blocked")
COSINE_EPS = 1e-8
# Rows per tile of the reference's distance matrix: bounded memory on any N.
_TILE_ELEMENTS = 1 << 22


def paired_distances(x: torch.Tensor, w: torch.Tensor, metric: str,
                     ignore_nan: bool = False) -> torch.Tensor:
    """Distances between broadcastable x (..., D) and w (..., D) along the last axis,
    in the accumulation dtype, computed from the definition (no GEMM expansion):

    euclidean  sqrt(sum (x - w)^2)          manhattan  sum |x - w|
    chebyshev  max |x - w|                  cosine     1 - x.w / (|x| |w| + 1e-8)

    With ignore_nan, NaN features of x are skipped; euclidean and manhattan are
    rescaled by D / (present features) (the squared sum for euclidean), chebyshev and
    cosine use the present features as they are; a sample with no present feature is
    at distance +inf from every node.
    """
    dt = acc_dtype(x.dtype)
    x = x.to(dt)
    w = w.to(dt)
    d_features = x.shape[-1]
    present = ~torch.isnan(x) if ignore_nan else None
    if present is not None:
        x = torch.where(present, x, torch.zeros((), dtype=dt, device=x.device))
        w = w * present
    diff = x - w
    if metric == "euclidean":
        out = (diff * diff).sum(-1)
    elif metric == "manhattan":
        out = diff.abs().sum(-1)
    elif metric == "chebyshev":
        out = diff.abs().amax(-1) if d_features else diff.sum(-1)
    elif metric == "cosine":
        num = (x * w).sum(-1)
        den = torch.linalg.vector_norm(x, dim=-1) * torch.linalg.vector_norm(w, dim=-1)
        out = 1.0 - num / (den + COSINE_EPS)
    else:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    if present is not None:
        n_present = present.sum(-1).to(dt)
        if metric in ("euclidean", "manhattan"):
            out = out * (d_features / n_present.clamp(min=1))
        out = torch.where(n_present > 0, out, torch.full((), float("inf"), dtype=dt, device=x.device))
    if metric == "euclidean":
        out = out.sqrt()
    return out


def pairwise_distances(x: torch.Tensor, weights: torch.Tensor, metric: str,
                       ignore_nan: bool = False) -> torch.Tensor:
    """Distances between every row of x (n, D) and of weights (K, D): (n, K) in the
    accumulation dtype (see paired_distances for the definitions)."""
    return paired_distances(x[:, None, :], weights[None, :, :], metric, ignore_nan)


def _row_tiles(n: int, k_nodes: int, d: int):
    rows = max(1, _TILE_ELEMENTS // max(1, k_nodes * max(d, 1)))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def som_bmu(x: torch.Tensor, weights: torch.Tensor, k: int = 1, metric: str = "euclidean",
            ignore_nan: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-matching units: the k nearest nodes of each sample.

    x (N, D), weights (K, D) -> indices (N, k) int64, distances (N, k) in x's dtype,
    ascending; ties break to the lowest node index (a stable sort).
    """
    n, k_nodes = x.shape[0], weights.shape[0]
    indices = torch.empty((n, k), dtype=torch.int64, device=x.device)
    distances = torch.empty((n, k), dtype=x.dtype, device=x.device)
    for start, stop in _row_tiles(n, k_nodes, x.shape[1]):
        d = pairwise_distances(x[start:stop], weights, metric, ignore_nan)
        values, order = torch.sort(d, dim=1, stable=True)
        indices[start:stop] = order[:, :k]
        distances[start:stop] = values[:, :k].to(x.dtype)
    return indices, distances


def som_node_sums(x: torch.Tensor, weights: torch.Tensor, metric: str = "euclidean",
                  ignore_nan: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voronoi sums of Kohonen's batch rule.

    x (N, D), weights (K, D) -> sums (K, D) of the samples each node wins, counts (K,)
    of them ((K, D) per-feature counts with ignore_nan, NaN features left out), both in
    the accumulation dtype, and distance_sum, a 0-d fp64 tensor holding the sum of the
    winners' distances (N times the quantization error of the current map).
    """
    dt = acc_dtype(x.dtype)
    k_nodes, d = weights.shape
    idx, dist = som_bmu(x, weights, 1, metric, ignore_nan)
    idx = idx[:, 0]
    xs = x.to(dt)
    if ignore_nan:
        present = ~torch.isnan(xs)
        xs = torch.where(present, xs, torch.zeros((), dtype=dt))
        counts = torch.zeros((k_nodes, d), dtype=dt, device=x.device).index_add_(0, idx, present.to(dt))
    else:
        counts = torch.zeros(k_nodes, dtype=dt, device=x.device).index_add_(
            0, idx, torch.ones(idx.shape[0], dtype=dt, device=x.device))
    sums = torch.zeros((k_nodes, d), dtype=dt, device=x.device).index_add_(0, idx, xs)
    finite = dist[:, 0].to(torch.float64)
    distance_sum = finite[torch.isfinite(finite)].sum()
    return sums, counts, distance_sum


def _callable_neighborhood(kind, d0: torch.Tensor, d1: torch.Tensor, sigma) -> torch.Tensor:
    """A user's neighbourhood kind(d0, d1, sigma): one real value per pair of offsets."""
    h = kind(d0, d1, sigma)
    shape = torch.broadcast_shapes(d0.shape, d1.shape)
    if not isinstance(h, torch.Tensor) or not (h.is_floating_point() or h.dtype == torch.bool) \
            or h.shape != shape:
        got = f"a {h.dtype} tensor of shape {tuple(h.shape)}" if isinstance(h, torch.Tensor) else \
            f"{type(h).__name__} {h!r}"
        raise ValueError(f"neighborhood (a callable) must return a float tensor shaped like its offsets "
                         f"d0 and d1, {tuple(shape)} (one value per node); got {got}")
    return h.to(d0.dtype)


def neighborhood(kind: str, d0: torch.Tensor, d1: torch.Tensor, sigma) -> torch.Tensor:
    """Neighbourhood value for per-axis lattice offsets d0, d1 >= 0 (csrc/common/som.h).

    gaussian     exp(-(d0^2 + d1^2) / (2 sigma^2))
    bubble       1 where d0 < sigma and d1 < sigma, else 0
    mexican_hat  exp(-p / (2 sigma^2)) * (1 - p / sigma^2),  p = d0^2 + d1^2
    triangle     max(0, 1 - d0 / sigma) * max(0, 1 - d1 / sigma)

    A callable kind is called as kind(d0, d1, sigma) (a user-defined neighbourhood).

    Every built-in is 1 at a zero offset whatever sigma > 0, also where sigma's square
    (or sigma itself, in the dtype) underflows to 0: a tiny sigma gives the limit,
    h = 1 at the winner and 0 elsewhere, never 0 / 0 (for any other sigma the values
    are bit-for-bit the formulas above). The compiled kernels reach the same limit
    because genkernels.ops.som_online runs such a sigma as ops.sigma_min.
    """
    if callable(kind):
        return _callable_neighborhood(kind, d0, d1, sigma)
    zero = torch.zeros((), dtype=d0.dtype, device=d0.device)
    if kind == "gaussian":
        q = d0 * d0 + d1 * d1
        return torch.exp(torch.where(q == 0, zero, -q / (2 * sigma * sigma)))
    if kind == "bubble":
        return (((d0 < sigma) | (d0 == 0)) & ((d1 < sigma) | (d1 == 0))).to(d0.dtype)
    if kind == "mexican_hat":
        two_s2 = 2 * sigma * sigma
        p = d0 * d0 + d1 * d1
        g = torch.exp(torch.where(p == 0, zero, -p / two_s2))
        h = torch.where(g == 0, zero, g * (1 - 2 / two_s2 * p))
        return torch.where(p == 0, torch.ones_like(h), h)
    if kind == "triangle":
        one = torch.ones((), dtype=d0.dtype, device=d0.device)
        f0 = torch.where(d0 == 0, one, (1 - d0 / sigma).clamp(min=0))
        f1 = torch.where(d1 == 0, one, (1 - d1 / sigma).clamp(min=0))
        return f0 * f1
    raise ValueError(f"neighborhood must be one of {NEIGHBORHOODS}; got {kind!r}")


def lattice_deltas(a: torch.Tensor, b: torch.Tensor, period_0: float, period_1: float):
    """Per-axis |a - b| of positions (..., 2), the short way round a torus (period 0 = flat)."""
    d0 = (a[..., 0] - b[..., 0]).abs()
    d1 = (a[..., 1] - b[..., 1]).abs()
    if period_0 > 0:
        d0 = torch.minimum(d0, period_0 - d0)
    if period_1 > 0:
        d1 = torch.minimum(d1, period_1 - d1)
    return d0, d1


def som_smooth(sums: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor,
               coords: torch.Tensor, period_0: float, period_1: float, neighborhood_kind: str,
               sigma: float) -> torch.Tensor:
    """Neighbourhood smoothing of the batch rule: W = (H S) / (H n), H[k, j] = h(k, j).

    sums (K, D), counts (K,) or (K, D), weights (K, D), coords (K, 2) -> new weights
    (K, D) in weights' dtype. A node whose smoothed count (H n)_k is not positive keeps
    its weights. Builds H whole: the oracle for the tiled and separable versions.
    """
    dt = sums.dtype
    c = coords.to(dt)
    d0, d1 = lattice_deltas(c[:, None, :], c[None, :, :], period_0, period_1)
    h = neighborhood(neighborhood_kind, d0, d1, sigma)
    num = h @ sums
    den = h @ (counts if counts.dim() == 2 else counts[:, None])
    new = num / torch.where(den > 0, den, torch.ones((), dtype=dt))
    return torch.where(den > 0, new, weights.to(dt)).to(weights.dtype)


def som_online(weights: torch.Tensor, x: torch.Tensor, order: torch.Tensor, lr: torch.Tensor,
               sigma: torch.Tensor, coords: torch.Tensor, period_0: float, period_1: float,
               neighborhood_kind: str, rule: str = "som", metric: str = "euclidean") -> torch.Tensor:
    """Kohonen's sequential rule, one sample per step, for M independent maps.

    weights (M, K, D); x (N, D); order (M, T) int64: the sample of each step; lr, sigma
    (M, T): the learning rate and radius of each step; coords (K, 2) node positions.
    At step t of map m, with s = x[order[m, t]] and winner b (lowest index on ties):

      som  w_j += lr * h(|pos_j - pos_b|, sigma) * (s - w_j)   (lattice neighbourhood)
      wta  w_b += lr * (s - w_b)                               (only the winner moves)
      wtm  w_j += lr * h((rho_j, 0), sigma) * (s - w_j),  rho_j = dist(s, w_j)

    Returns the trained weights (M, K, D); the input is not modified.
    """
    dt = acc_dtype(weights.dtype)
    out = weights.to(dt).clone()
    xs = x.to(dt)
    c = coords.to(dt)
    for m in range(out.shape[0]):
        w = out[m]
        for t in range(order.shape[1]):
            s = xs[order[m, t]]
            rho = pairwise_distances(s[None], w, metric)[0]
            b = int(torch.argmin(rho))  # argmin returns the first minimum
            eta, sig = lr[m, t].to(dt), sigma[m, t].to(dt)
            if rule == "som":
                d0, d1 = lattice_deltas(c, c[b], period_0, period_1)
                h = neighborhood(neighborhood_kind, d0, d1, sig)
            elif rule == "wta":
                h = torch.zeros(w.shape[0], dtype=dt, device=w.device)
                h[b] = 1
            elif rule == "wtm":
                h = neighborhood(neighborhood_kind, rho, torch.zeros_like(rho), sig)
            else:
                raise ValueError(f"rule must be one of {RULES}; got {rule!r}")
            w += (eta * h)[:, None] * (s[None, :] - w)
    return out.to(weights.dtype)
