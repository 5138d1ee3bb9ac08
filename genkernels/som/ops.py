"""Public SOM ops: validation, backend choice, autograd and fake kernels.

Every op here is re-exported flat in ``genkernels.ops``. Backends (see
``genkernels.backends``): ``reference`` (genkernels/som/reference.py), ``cpu``
(csrc/cpu/som.cpp via ``torch.ops.genkernels.*``), ``triton``
(genkernels/som/triton.py via ``torch.ops.genkernels.*_triton``) and ``cuda``
(csrc/cuda/som.cu, the persistent online kernel).
"""

from __future__ import annotations

import torch

from .. import backends
from .._checks import (check_choice, check_float_tensor, check_index_tensor, check_int,
                       check_positive, check_same_device, check_same_dtype, compiling)
from . import reference
from .reference import METRICS, NEIGHBORHOODS, PRECISIONS, RULES, acc_dtype

# Neighbourhoods that factor into one function per lattice axis (csrc/common/som.h).
SEPARABLE_NEIGHBORHOODS = ("gaussian", "bubble", "triangle")
# Elements of one tile of the neighbourhood matrix H in the generic smoothing path.
_SMOOTH_TILE_ELEMENTS = 1 << 22


def _cpp_loaded() -> bool:
    return backends.extension_error() is None


def _triton_ops():
    """torch.ops.genkernels with the Triton custom ops registered (imported lazily:
    importing triton costs a second and is only needed when that backend runs)."""
    from . import triton  # noqa: F401  (registers genkernels::*_triton)
    return torch.ops.genkernels


# ----------------------------------------------------------------------------- fakes
if _cpp_loaded():
    @torch.library.register_fake("genkernels::som_bmu")
    def _bmu_fake(x, weights, k, metric, ignore_nan):
        n = x.shape[0]
        return x.new_empty((n, k), dtype=torch.int64), x.new_empty((n, k))

    @torch.library.register_fake("genkernels::som_node_sums")
    def _node_sums_fake(x, weights, metric, ignore_nan):
        k_nodes, d = weights.shape
        dt = acc_dtype(x.dtype)
        counts = x.new_empty((k_nodes, d) if ignore_nan else (k_nodes,), dtype=dt)
        return x.new_empty((k_nodes, d), dtype=dt), counts, x.new_empty((), dtype=torch.float64)

    @torch.library.register_fake("genkernels::som_online")
    def _online_fake(weights, x, order, lr, sigma, coords, period_0, period_1, nb, rule, metric):
        return torch.empty_like(weights)


# ------------------------------------------------------------------------ validation
def _check_x_weights(x, weights, metric, weights_ndim=2):
    check_float_tensor("x", x, 2)
    check_float_tensor("weights", weights, weights_ndim)
    check_same_device(x=x, weights=weights)
    check_same_dtype(x=x, weights=weights)
    if x.shape[1] != weights.shape[-1]:
        raise ValueError(f"x has {x.shape[1]} features but weights has {weights.shape[-1]}; "
                         "they must match")
    if weights.shape[-2] == 0:
        raise ValueError("weights must hold at least one node; got shape "
                         f"{tuple(weights.shape)}")
    check_choice("metric", metric, METRICS)


# ------------------------------------------------------------------------------ BMU
def _bmu_forward(x, weights, k, metric, ignore_nan, precision, backend):
    # precision only changes the triton search; reference and cpu search exactly
    if backend == "reference":
        return reference.som_bmu(x, weights, k, metric, ignore_nan)
    if backend == "triton":
        return _triton_ops().som_bmu_triton(x, weights, k, metric, ignore_nan, precision)
    return torch.ops.genkernels.som_bmu(x, weights, k, metric, ignore_nan)


class _BMUFunction(torch.autograd.Function):
    """Distances are differentiable in x and weights; indices are not. The backward
    recomputes the k winning distances from their definition on (N, k, D) gathered
    rows, so every backend shares one exact gradient."""

    @staticmethod
    def forward(x, weights, k, metric, ignore_nan, precision, backend):
        return _bmu_forward(x, weights, k, metric, ignore_nan, precision, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weights, k, metric, ignore_nan, _, _ = inputs
        ctx.save_for_backward(x, weights, output[0])
        ctx.metric, ctx.ignore_nan = metric, ignore_nan
        ctx.mark_non_differentiable(output[0])

    @staticmethod
    def backward(ctx, _grad_indices, grad_distances):
        x, weights, indices = ctx.saved_tensors
        with torch.enable_grad():
            xg = x.detach().requires_grad_(ctx.needs_input_grad[0])
            wg = weights.detach().requires_grad_(ctx.needs_input_grad[1])
            d = _winner_distances(xg, wg, indices, ctx.metric, ctx.ignore_nan)
            inputs = [t for t in (xg, wg) if t.requires_grad]
            grads = torch.autograd.grad(d, inputs, grad_distances.to(d.dtype), allow_unused=True)
        grads = iter(grads)
        gx = next(grads) if ctx.needs_input_grad[0] else None
        gw = next(grads) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None, None, None, None


def _winner_distances(x, weights, indices, metric, ignore_nan):
    """Distances between x (N, D) and its k winners weights[indices]: (N, k)."""
    return reference.paired_distances(x[:, None, :], weights[indices], metric, ignore_nan)


def som_bmu(x: torch.Tensor, weights: torch.Tensor, k: int = 1, metric: str = "euclidean", *,
            ignore_nan: bool = False, precision: str = "fp32",
            backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-matching units: the k nearest nodes of every sample.

    Args:
        x: (N, D) float samples.
        weights: (K, D) float codebook, same dtype and device; node index = row.
        k: how many nearest nodes, 1 <= k <= K (k=2 feeds the topographic error).
        metric: "euclidean" | "cosine" | "manhattan" | "chebyshev" -- the true
            distance (Euclidean, not squared).
        ignore_nan: skip NaN features of x, rescaling the distance to the present ones.
        precision: "fp32" | "tf32" | "bf16" -- the arithmetic of the candidate search.
            "fp32" searches exactly. "tf32" / "bf16" (triton backend, fp32 input,
            euclidean or cosine, ignore_nan=False) rank the nodes on tensor cores --
            x.w from tf32 operands, or from x and w rounded to bf16, accumulated in
            fp32 -- keep a few more candidates per row than k (k + 2, rounded up to a
            power of two, at most 16), and re-rank those exactly in fp32 from the
            definition. The distances returned are exact (as with "fp32"), and the
            indices equal the exact search's wherever the true k-th and (k+1)-th
            distances are separated by more than the low-precision error: with
            u = 2^-10 (tf32) or 2^-8 (bf16), squared euclidean distances that differ
            by more than 4.1 u (|x|^2 + max_j |w_j|^2), cosine distances by more than
            4.1 u. Closer than that, the k returned are still the k nearest of the
            candidates, so a miss needs more than (candidates - k) nodes inside the
            error band. Everywhere else -- the reference and cpu backends, other
            metrics, fp16/bf16/fp64 input, ignore_nan, k > 16 -- ``precision`` is
            accepted and the search is exact (fp32, fp64 for fp64 input).
        backend: None (auto), "reference", "cpu" or "triton".

    Returns:
        indices (N, k) int64 and distances (N, k) in x's dtype, ascending; ties break
        to the lowest node index. Distances are differentiable in x and weights.

    Raises:
        ValueError: precision is not one of "fp32", "tf32", "bf16" (and the checks on
            x, weights, k, metric).
    """
    _check_x_weights(x, weights, metric)
    k = check_int("k", k, 1, weights.shape[0])
    check_choice("precision", precision, PRECISIONS)
    name = backends.resolve("som_bmu", x.device, backend)
    if x.shape[0] == 0:
        return (torch.empty((0, k), dtype=torch.int64, device=x.device),
                torch.empty((0, k), dtype=x.dtype, device=x.device))
    if torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad):
        return _BMUFunction.apply(x, weights, k, metric, bool(ignore_nan), precision, name)
    return _bmu_forward(x, weights, k, metric, bool(ignore_nan), precision, name)


# ------------------------------------------------------------------------ batch rule
def som_node_sums(x: torch.Tensor, weights: torch.Tensor, metric: str = "euclidean", *,
                  ignore_nan: bool = False, deterministic: bool = False, backend: str | None = None):
    """Per-node sums and counts of the samples each node wins (the Voronoi step of
    Kohonen's batch rule), fused with the BMU search: no (N, K) matrix is stored.

    Args:
        x: (N, D) float, weights: (K, D) float.
    Returns:
        sums (K, D), counts (K,) -- (K, D) per-feature counts with ignore_nan -- in fp32
        (fp64 for fp64 input), and distance_sum, a 0-d fp64 tensor: the sum of the
        winners' distances (N x the quantization error of ``weights``). Deterministic
        on CPU: a fixed reduction order, no float atomics. The triton kernel
        accumulates with atomics on the GPU; ``deterministic=True`` there runs the
        BMU kernel, then sorted segment sums (bit-reproducible, one extra (N, D) copy).
    """
    _check_x_weights(x, weights, metric)
    name = backends.resolve("som_node_sums", x.device, backend)
    if x.shape[0] == 0:
        dt = acc_dtype(x.dtype)
        k_nodes, d = weights.shape
        return (torch.zeros((k_nodes, d), dtype=dt, device=x.device),
                torch.zeros((k_nodes, d) if ignore_nan else (k_nodes,), dtype=dt, device=x.device),
                torch.zeros((), dtype=torch.float64, device=x.device))
    if name == "reference":
        return reference.som_node_sums(x, weights, metric, bool(ignore_nan))
    if name == "triton":
        if deterministic:
            return _sorted_node_sums(x, weights, metric, bool(ignore_nan), name)
        return _triton_ops().som_node_sums_triton(x, weights, metric, bool(ignore_nan))
    return torch.ops.genkernels.som_node_sums(x, weights, metric, bool(ignore_nan))


def _sorted_node_sums(x, weights, metric, ignore_nan, backend):
    """Node sums without atomics: winners from the backend's BMU kernel, samples sorted
    by winner (a stable sort), then one segment sum per node in a fixed order."""
    dt = acc_dtype(x.dtype)
    k_nodes, d = weights.shape
    idx, dist = _bmu_forward(x, weights, 1, metric, ignore_nan, "fp32", backend)
    idx = idx[:, 0]
    order = torch.sort(idx, stable=True).indices
    xs = x[order].to(dt)
    present = None
    if ignore_nan:
        present = ~torch.isnan(xs)
        xs = torch.where(present, xs, torch.zeros((), dtype=dt, device=x.device))
    lengths = torch.bincount(idx, minlength=k_nodes)
    sums = torch.segment_reduce(xs, "sum", lengths=lengths, axis=0, unsafe=True)
    if present is not None:
        counts = torch.segment_reduce(present.to(dt), "sum", lengths=lengths, axis=0, unsafe=True)
    else:
        counts = lengths.to(dt)
    dist = dist[:, 0].to(torch.float64)
    return sums, counts, dist[torch.isfinite(dist)].sum()


def _axis_neighborhood(kind, n, period, sigma, dtype, device):
    pos = torch.arange(n, dtype=dtype, device=device)
    d = (pos[:, None] - pos[None, :]).abs()
    if period > 0:
        d = torch.minimum(d, period - d)
    return reference.neighborhood(kind, d, torch.zeros_like(d), sigma)


def neighborhood_matmul(values: torch.Tensor, coords: torch.Tensor,
                        periods: tuple[float, float] = (0.0, 0.0), neighborhood: str = "gaussian",
                        sigma: float = 1.0, grid_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """H @ values for the lattice neighbourhood matrix H[k, j] = h(pos_k - pos_j), without
    building H whole: with ``grid_shape=(rows, cols)`` (a rectangular lattice whose
    coords are (r, c)) and a separable neighbourhood (gaussian, bubble, triangle) it is
    one small product per grid axis, O(K (rows + cols) E); otherwise H is computed tile
    by tile from the node positions, O(K^2 E) time and O(tile) memory.

    values (K, E) float -> (K, E) in values' dtype.
    """
    if not callable(neighborhood):
        check_choice("neighborhood", neighborhood, NEIGHBORHOODS)
    check_positive("sigma", sigma)
    dt = values.dtype
    k_nodes = values.shape[0]
    if grid_shape is not None and not callable(neighborhood) and neighborhood in SEPARABLE_NEIGHBORHOODS:
        rows, cols = grid_shape
        h0 = _axis_neighborhood(neighborhood, rows, periods[0], sigma, dt, values.device)
        h1 = _axis_neighborhood(neighborhood, cols, periods[1], sigma, dt, values.device)
        # (rows x rows) . (rows, cols*E), then (cols x cols) applied along the column axis
        out = (h0 @ values.reshape(rows, -1)).reshape(rows, cols, -1)
        return torch.einsum("cj,rje->rce", h1, out).reshape(k_nodes, -1)
    c = coords.to(device=values.device, dtype=dt)
    out = torch.empty_like(values)
    tile = max(1, _SMOOTH_TILE_ELEMENTS // max(1, k_nodes))
    for start in range(0, k_nodes, tile):
        stop = min(k_nodes, start + tile)
        d0, d1 = reference.lattice_deltas(c[start:stop, None, :], c[None, :, :], *periods)
        out[start:stop] = reference.neighborhood(neighborhood, d0, d1, sigma) @ values
    return out


def som_smooth(sums: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor,
               coords: torch.Tensor, periods: tuple[float, float] = (0.0, 0.0),
               neighborhood: str = "gaussian", sigma: float = 1.0,
               grid_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Neighbourhood smoothing of the batch rule, W = (H S) / (H n), via
    :func:`neighborhood_matmul` (separable on rectangular grids, tiled otherwise).

    Args:
        sums (K, D), counts (K,) or (K, D): from :func:`som_node_sums`.
        weights (K, D): the current map; a node with (H n)_k <= 0 keeps its weights.
        coords (K, 2): node positions; periods: torus period per axis (0 = flat).
    Returns:
        new weights (K, D) in weights' dtype.
    """
    dt = sums.dtype
    d = sums.shape[1]
    den_src = counts if counts.dim() == 2 else counts[:, None]
    both = neighborhood_matmul(torch.cat([sums, den_src.to(dt)], dim=1), coords, periods,
                               neighborhood, sigma, grid_shape)
    num, den = both[:, :d], both[:, d:]
    positive = den > 0
    new = num / torch.where(positive, den, torch.ones((), dtype=dt, device=den.device))
    return torch.where(positive, new, weights.to(dt)).to(weights.dtype)


# ----------------------------------------------------------------------- online rule
def som_online(weights: torch.Tensor, x: torch.Tensor, order: torch.Tensor, lr: torch.Tensor,
               sigma: torch.Tensor, coords: torch.Tensor,
               periods: tuple[float, float] = (0.0, 0.0), neighborhood: str = "gaussian",
               rule: str = "som", metric: str = "euclidean", *,
               backend: str | None = None) -> torch.Tensor:
    """One epoch of Kohonen's sequential rule for M independent maps in one launch.

    Args:
        weights: (M, K, D) float maps (not modified).
        x: (N, D) float samples, same dtype and device.
        order: (M, T) int64 -- the sample index of each step, in [0, N).
        lr, sigma: (M, T) float -- per-step learning rate and neighbourhood radius
            (schedules evaluated once, read by the kernel).
        coords: (K, 2) node positions; periods: torus period per axis (0 = flat).
        neighborhood: gaussian | bubble | mexican_hat | triangle.
        rule: "som" (lattice neighbourhood), "wta" (winner takes all) or "wtm"
            (winner takes most: h of the data-space distance; not mexican_hat).
    Returns:
        the trained weights (M, K, D). See reference.som_online for the exact rule.
    """
    check_float_tensor("weights", weights, 3)
    _check_x_weights(x, weights, metric, weights_ndim=3)
    check_index_tensor("order", order, 2)
    check_choice("neighborhood", neighborhood, NEIGHBORHOODS)
    check_choice("rule", rule, RULES)
    if rule == "wtm" and neighborhood == "mexican_hat":
        raise ValueError("rule='wtm' needs a non-increasing kernel; neighborhood='mexican_hat' is not")
    m, k_nodes, _ = weights.shape
    for name, t in (("lr", lr), ("sigma", sigma)):
        check_float_tensor(name, t, 2)
        if tuple(t.shape) != tuple(order.shape):
            raise ValueError(f"{name} must have the shape of order {tuple(order.shape)}; "
                             f"got {tuple(t.shape)}")
    if order.shape[0] != m:
        raise ValueError(f"order must have one row per map ({m}); got shape {tuple(order.shape)}")
    check_float_tensor("coords", coords, 2)
    if tuple(coords.shape) != (k_nodes, 2):
        raise ValueError(f"coords must have shape ({k_nodes}, 2); got {tuple(coords.shape)}")
    check_same_device(weights=weights, x=x, order=order, lr=lr, sigma=sigma, coords=coords)
    if not compiling() and order.numel():
        lo, hi = int(order.min()), int(order.max())
        if lo < 0 or hi >= x.shape[0]:
            raise ValueError(f"order must index x's {x.shape[0]} rows; got values in [{lo}, {hi}]")
        if rule != "wta" and not bool((sigma > 0).all()):
            raise ValueError("sigma must be > 0 at every step")
    name = backends.resolve("som_online", x.device, backend, n_maps=m)
    if order.shape[1] == 0 or m == 0:
        return weights.clone()
    dt = acc_dtype(weights.dtype)
    lr, sigma, coords = lr.to(dt), sigma.to(dt), coords.to(dt)
    p0, p1 = (float(p) for p in periods)
    if name == "reference":
        return reference.som_online(weights, x, order, lr, sigma, coords, p0, p1, neighborhood, rule, metric)
    if name == "triton":
        return _triton_ops().som_online_triton(weights, x, order.contiguous(), lr.contiguous(),
                                                      sigma.contiguous(), coords.contiguous(), p0, p1,
                                                      neighborhood, rule, metric)
    return torch.ops.genkernels.som_online(weights, x, order.contiguous(), lr.contiguous(),
                                           sigma.contiguous(), coords.contiguous(), p0, p1,
                                           neighborhood, rule, metric)
