"""Public SOM ops: validation, backend choice, autograd and fake kernels.

Every op here is re-exported flat in ``genkernels.ops``. Backends (see
``genkernels.backends``): ``reference`` (genkernels/som/reference.py), ``cpu``
(csrc/cpu/som.cpp via ``torch.ops.genkernels.*``), ``triton``
(genkernels/som/triton.py via ``torch.ops.genkernels.*_triton``) and ``cuda``
(csrc/cuda/som.cu, the persistent online kernel).
"""

from __future__ import annotations

import functools
import math

import torch

from .. import backends, registry
from .._checks import (check_choice, check_float_tensor, check_index_tensor,
                       check_int_arg, check_positive, check_same_device, check_same_dtype, compiling)
from . import reference
from .reference import METRICS, NEIGHBORHOODS, PRECISIONS, RULES, SEARCHES, acc_dtype

# Neighbourhoods that factor into one function per lattice axis (csrc/common/som.h).
SEPARABLE_NEIGHBORHOODS = ("gaussian", "bubble", "triangle")
# Elements of one tile of the neighbourhood matrix H in the generic smoothing path.
_SMOOTH_TILE_ELEMENTS = 1 << 22


# ------------------------------------------------------------------ declared ops
def _bmu_fake(x, weights, k, metric, ignore_nan):
    n = x.shape[0]
    return x.new_empty((n, k), dtype=torch.int64), x.new_empty((n, k))


def _node_sums_fake(x, weights, metric, ignore_nan):
    k_nodes, d = weights.shape
    dt = acc_dtype(x.dtype)
    counts = x.new_empty((k_nodes, d) if ignore_nan else (k_nodes,), dtype=dt)
    return x.new_empty((k_nodes, d), dtype=dt), counts, x.new_empty((), dtype=torch.float64)


def _online_fake(weights, x, order, lr, sigma, coords, period_0, period_1, nb, rule, metric):
    return torch.empty_like(weights)


# precision and search change only the triton search; reference and cpu search exactly
def _bmu_reference(x, weights, k, metric, ignore_nan, precision="fp32", search="auto"):
    return reference.som_bmu(x, weights, k, metric, ignore_nan)


def _bmu_cpu(x, weights, k, metric, ignore_nan, precision="fp32", search="auto"):
    return torch.ops.genkernels.som_bmu(x, weights, k, metric, ignore_nan)


# som_bmu(x (N, D), weights (K, D), k, metric, ignore_nan, precision, search) -> (indices
# (N, k) int64, distances (N, k)); the C++ schema has no precision and search.
BMU = registry.declare(
    "som_bmu",
    reference=_bmu_reference,
    cpu=_bmu_cpu,
    triton=registry.lazy(__package__ + ".triton", "som_bmu_triton"),
    fake=_bmu_fake)
# som_node_sums(x, weights, metric, ignore_nan) -> (sums (K, D), counts, distance_sum)
NODE_SUMS = registry.declare(
    "som_node_sums",
    reference=reference.som_node_sums,
    cpu=registry.extension("som_node_sums"),
    triton=registry.lazy(__package__ + ".triton", "som_node_sums_triton"),
    fake=_node_sums_fake)
# som_online(weights (M, K, D), x, order (M, T), lr (M, T), sigma (M, T), coords (K, 2),
# period_0, period_1, neighborhood, rule, metric) -> trained weights
ONLINE = registry.declare(
    "som_online",
    reference=reference.som_online,
    cpu=registry.extension("som_online"),
    triton=registry.lazy(__package__ + ".triton", "som_online_triton"),
    cuda=registry.extension("som_online"),
    sequential=True,
    gpu=registry.GpuPreference(
        "cuda", lambda workload: workload.get("n_maps") == 1,
        "one map: bench/results/nvidia-h100-80gb-hbm3-gpu-quick.md (H100, commit 98f9abe; "
        "csrc/cuda/som.cu unchanged since cf16a02, before that run): the cooperative kernel "
        "17 ms vs triton 1.47 s (40x40x784, 2k steps), 53 ms vs 385 ms (32x32x64, 10k steps), "
        "equal to the one-block kernel bit for bit. Many maps stay on triton: 64 maps took "
        "1.49 s on cuda vs 0.37 s on triton (nvidia-h100-80gb-hbm3.md, commit 2540197)"),
    fake=_online_fake)
registry.static_kernels("som", registry.lazy(__package__ + ".triton", "static_kernels"))


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


# ---------------------------------------------------------------------- scale guard
# Scale robustness. Every backend squares differences (euclidean), or multiplies values
# (cosine) in the accumulation dtype, so data near sqrt(max) overflows to inf and data
# near sqrt(tiny) underflows to 0. When the largest |value| of x and weights lies outside
# the range where D squares of differences stay normal and finite, both are multiplied by
# ONE power of two (exact in floating point) that brings it to [0.5, 1), the backend runs
# on the scaled data, and the returned distances are multiplied back (distances are
# homogeneous of degree 1: euclidean, manhattan, chebyshev; cosine is scale-free).
# Inside the range nothing is scaled, so results there are bit-for-bit those of the
# backend. (The classic remedy of BLAS/LAPACK's nrm2, which scales by the largest
# magnitude before squaring; here the factor is a power of two, so scaling is exact.)


# inside every dtype's safe range for any D < 2^40 (the common case: no more work)
_ALWAYS_SAFE = (2.0 ** -30, 2.0 ** 30)


@functools.lru_cache(maxsize=256)
def _safe_exponents(dtype: torch.dtype, d: int) -> tuple[int, int]:
    """(lo, hi): max |value| = f 2^e with f in [0.5, 1) needs no scaling when
    lo <= e <= hi -- D squared differences (up to (2 m)^2 each) and the cosine products
    stay below max / 16, and differences down to m 2^-mant square to normal numbers."""
    fi = torch.finfo(acc_dtype(dtype))
    emax = int(round(math.log2(fi.max)))
    emin = int(round(math.log2(fi.tiny)))
    mant = 1 - int(round(math.log2(fi.eps)))
    log_d = max(int(d), 1).bit_length()
    return (emin + 2 * mant) // 2 + 1, (emax - 6 - log_d) // 2


def _ldexp(t: torch.Tensor, e: int) -> torch.Tensor:
    """t * 2^e in t's dtype, exact (in steps that stay representable)."""
    while e != 0:
        step = max(-100, min(100, e))
        t = t * (2.0 ** step)
        e -= step
    return t


def _max_abs(tensors) -> float:
    """max |value| over the tensors (NaN if any holds a NaN): the min and max of each,
    through numpy for CPU fp32/fp64 (a quarter of torch's per-call overhead at the small
    shapes where that overhead shows), no copy either way."""
    values = []
    for t in tensors:
        if t.numel() == 0:
            continue
        if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
            a = t.detach().numpy()
            values += [float(a.max()), -float(a.min())]
        else:
            lo, hi = torch.aminmax(t.detach())
            values += torch.stack([hi, -lo]).tolist()  # one device sync
    if any(v != v for v in values):
        return float("nan")
    return max(values, default=0.0)


def _scale_exponent(x: torch.Tensor, weights: torch.Tensor) -> tuple[int, bool]:
    """(e, has_nan): the data must be scaled by 2^-e (0: leave it), and whether x or
    weights hold a NaN. One max-abs pass over each; skipped (0, False) while
    torch.compile traces."""
    if compiling():
        return 0, False
    m = _max_abs((x, weights))
    has_nan = m != m
    if has_nan:
        m = _max_abs([torch.nan_to_num(t, nan=0.0) for t in (x, weights)])
    if _ALWAYS_SAFE[0] <= m <= _ALWAYS_SAFE[1] or m == 0 or m == float("inf"):
        return 0, has_nan
    e = math.frexp(m)[1]
    lo, hi = _safe_exponents(x.dtype, x.shape[-1])
    return (0 if lo <= e <= hi else e), has_nan


def _nan_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.isnan(x).any(dim=1)


# ------------------------------------------------------------------------------ BMU
def _bmu_scaled(x, weights, k, metric, ignore_nan, precision, backend, search="auto"):
    """_bmu_forward with the scale guard and the NaN rule (see som_bmu). The cpu
    kernels apply both themselves (csrc/cpu/som.cpp, scale_exponent): no Python pass."""
    if backend == "cpu":
        return _bmu_forward(x, weights, k, metric, ignore_nan, precision, backend, search)
    e, has_nan = _scale_exponent(x, weights)
    if e:
        idx, dist = _bmu_forward(_ldexp(x, -e), _ldexp(weights, -e), k, metric, ignore_nan, precision,
                                 backend, search)
        if metric != "cosine":
            dist = _ldexp(dist.to(acc_dtype(dist.dtype)), e).to(dist.dtype)
    else:
        idx, dist = _bmu_forward(x, weights, k, metric, ignore_nan, precision, backend, search)
    if has_nan:
        idx, dist = _apply_nan_rule(x, weights, idx, dist, metric, ignore_nan)
    return idx, dist


def _apply_nan_rule(x, weights, idx, dist, metric, ignore_nan):
    """One rule on every backend: a NaN distance is NaN (the triton kernels rank it as
    +inf and return +inf) and ranks after every number, ties to the lowest index."""
    if not ignore_nan:
        bad = _nan_rows(x)
        if bool(bad.any()):
            k = idx.shape[1]
            idx = torch.where(bad[:, None], torch.arange(k, device=idx.device)[None, :], idx)
            dist = torch.where(bad[:, None], torch.full((), float("nan"), dtype=dist.dtype, device=dist.device),
                               dist)
    if bool(torch.isnan(weights).any()):
        # NaN nodes: their distance is NaN for every sample; recompute the returned
        # +inf distances from the definition so that NaN comes back as NaN
        inf = torch.isinf(dist)
        if bool(inf.any()):
            rows, cols = inf.nonzero(as_tuple=True)
            exact = reference.paired_distances(x[rows], weights[idx[rows, cols]], metric, ignore_nan)
            dist = dist.clone()
            dist[rows, cols] = exact.to(dist.dtype)
    return idx, dist


def _bmu_forward(x, weights, k, metric, ignore_nan, precision, backend, search="auto"):
    return BMU.kernels[backend](x, weights, k, metric, ignore_nan, precision, search)


def _bmu_differentiable(x, weights, k, metric, ignore_nan, precision, backend, search):
    """som_bmu with distances differentiable in x and weights (indices are not): the
    search runs without autograd, then the k winning distances are recomputed from
    their definition on (N, k, D) gathered rows, so every backend shares one exact
    gradient. The values returned are the backend's own: the recomputed distances enter
    as (d - d.detach()), zero in value (a non-finite distance contributes no gradient).
    No autograd.Function and no torch.autograd.grad: torch.compile(fullgraph=True)
    traces it with grad-requiring inputs."""
    with torch.no_grad():
        idx, dist = _bmu_scaled(x.detach(), weights.detach(), k, metric, ignore_nan, precision, backend,
                                search)
    d = _winner_distances(x, weights, idx, metric, ignore_nan)
    live = torch.isfinite(d.detach())
    delta = torch.where(live, d - d.detach(), torch.zeros((), dtype=d.dtype, device=d.device))
    return idx, dist + delta.to(dist.dtype)


def _winner_distances(x, weights, indices, metric, ignore_nan):
    """Distances between x (N, D) and its k winners weights[indices]: (N, k)."""
    return reference.paired_distances(x[:, None, :], weights[indices], metric, ignore_nan)


def som_bmu(x: torch.Tensor, weights: torch.Tensor, k: int = 1, metric: str = "euclidean", *,
            ignore_nan: bool = False, precision: str = "fp32", search: str = "auto",
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
            Every precision returns the exact search's indices and distances. The
            triton backend ranks the nodes by |w|^2 - 2 x.w from dot products -- fp32,
            or on tensor cores from tf32 operands or operands rounded to bf16
            (euclidean or cosine, fp32 input, ignore_nan=False) -- keeps a few more
            candidates per row than k, and re-ranks those exactly in fp32 from the
            definition. A rigorous rounding-error bound certifies each row: when the
            last kept candidate is farther than the k-th by more than twice the bound,
            no node left out can be among the k nearest. Rows it cannot certify
            (near-ties) are searched again, with fp32 products after tf32/bf16 and
            from the definition after fp32, so the indices equal the exact search by
            construction; near-ties cost time, never accuracy. On data whose
            neighbours are nearly equidistant the bf16 bound (4x tf32's) certifies few
            rows and bf16 is then slower than tf32. Everywhere else -- the reference and
            cpu backends, other metrics, fp16/bf16/fp64 input, ignore_nan, k > 8 --
            ``precision`` is accepted and the search is exact (fp32, fp64 for fp64
            input).
        search: "auto" | "fused" | "blocked" -- the triton kernels (other backends
            accept it and ignore it). "fused" streams the codebook through registers,
            no (N, K) matrix anywhere; "blocked" (euclidean, fp32 input, no
            ignore_nan; a ValueError elsewhere) computes the products of blocks of
            rows with every node first -- cuBLAS for fp32, a tensor-core Triton GEMM
            for tf32/bf16 -- in blocks of 32 MiB that stay in a GPU's L2, then selects
            from them. "auto" is "fused" until a GPU run shows "blocked" faster.
        backend: None (auto), "reference", "cpu" or "triton".

    Returns:
        indices (N, k) int64 and distances (N, k) in x's dtype, ascending; ties break
        to the lowest node index. Distances are differentiable in x and weights.

    Scale: the search is robust to the magnitude of the data. Where the largest |value|
    of x and weights lies outside the range in which squares of differences stay
    normal and finite in the accumulation dtype (fp32: about 2^-38 .. 2^60 / sqrt(D)),
    both are scaled by one power of two -- exact -- and the distances scaled back, so
    1e20 or 1e-30 data give the indices of unit data and exact distances (cosine is
    scale-free; its 1e-8 guard then acts on the rescaled norms). Inside the range the
    results are bit-for-bit unchanged. A distance that does not fit x's dtype comes
    back as inf (e.g. fp32 data near 3e38); its index is still right.

    NaN, the same on every backend: a NaN distance ranks after every number. A sample
    with a NaN feature (ignore_nan=False) is at distance NaN from every node, so it gets
    indices 0 .. k-1 and NaN distances; a node holding a NaN never wins a sample that
    has a finite distance to another node. With ignore_nan, a sample with no present
    feature is at +inf from every node (indices 0 .. k-1).

    Raises:
        ValueError: precision is not one of "fp32", "tf32", "bf16" (and the checks on
            x, weights, k, metric). A k outside [1, K] raises the same ValueError from a
            ``torch.compile(fullgraph=True)`` function, when it runs.
    """
    _check_x_weights(x, weights, metric)
    k, x = check_int_arg("k", k, 1, weights.shape[0], x)  # the ValueError under torch.compile too
    check_choice("precision", precision, PRECISIONS)
    check_choice("search", search, SEARCHES)
    name = BMU.resolve(x.device, backend)
    if x.shape[0] == 0:
        return (torch.empty((0, k), dtype=torch.int64, device=x.device),
                torch.empty((0, k), dtype=x.dtype, device=x.device))
    if torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad):
        return _bmu_differentiable(x, weights, k, metric, bool(ignore_nan), precision, name, search)
    return _bmu_scaled(x, weights, k, metric, bool(ignore_nan), precision, name, search)


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

    NaN, the same on every backend: a sample whose winning distance is NaN (a NaN
    feature without ignore_nan, or NaN in every node) is counted nowhere -- in no sum,
    no count and not in distance_sum; with ignore_nan a sample's NaN features are left
    out of its node's sums and per-feature counts. Scale as in :func:`som_bmu` (sums
    and distance_sum scaled back; distance_sum in fp64, so it stays finite where a
    single distance would overflow x's dtype).
    """
    _check_x_weights(x, weights, metric)
    name = NODE_SUMS.resolve(x.device, backend)
    if name != "cpu":  # its deterministic path and the NaN rule call the BMU kernel: load it here
        BMU.resolve(x.device, name)
    if x.shape[0] == 0:
        dt = acc_dtype(x.dtype)
        k_nodes, d = weights.shape
        return (torch.zeros((k_nodes, d), dtype=dt, device=x.device),
                torch.zeros((k_nodes, d) if ignore_nan else (k_nodes,), dtype=dt, device=x.device),
                torch.zeros((), dtype=torch.float64, device=x.device))
    ignore_nan = bool(ignore_nan)
    if name == "cpu":  # scale guard and NaN rule in the kernel (csrc/cpu/som.cpp)
        return NODE_SUMS.kernels[name](x, weights, metric, ignore_nan)
    e, has_nan = _scale_exponent(x, weights)
    if has_nan:
        x = x[_countable_rows(x, weights, metric, ignore_nan, name)]
        if x.shape[0] == 0:
            return som_node_sums(x, weights, metric, ignore_nan=ignore_nan, backend=name)
    if not e:
        return _node_sums_forward(x, weights, metric, ignore_nan, deterministic, name)
    sums, counts, distance_sum = _node_sums_forward(_ldexp(x, -e), _ldexp(weights, -e), metric, ignore_nan,
                                                    deterministic, name)
    if metric != "cosine":
        distance_sum = distance_sum * (2.0 ** e)
    return _ldexp(sums, e), counts, distance_sum


def _countable_rows(x, weights, metric, ignore_nan, backend) -> torch.Tensor:
    """(N,) bool: the samples som_node_sums counts -- those whose winning distance is
    not NaN (without ignore_nan: no NaN feature; and not every node NaN)."""
    if not ignore_nan and not bool(torch.isnan(weights).any()):
        return ~_nan_rows(x)
    dist = _bmu_scaled(x, weights, 1, metric, ignore_nan, "fp32", backend)[1][:, 0]
    return ~torch.isnan(dist)


def _node_sums_forward(x, weights, metric, ignore_nan, deterministic, name):
    if name == "triton" and deterministic:
        return _sorted_node_sums(x, weights, metric, ignore_nan, name)
    return NODE_SUMS.kernels[name](x, weights, metric, ignore_nan)


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
    k_nodes = values.shape[0]
    if grid_shape is not None and not callable(neighborhood) and neighborhood in SEPARABLE_NEIGHBORHOODS:
        rows, cols = grid_shape
        threads = _blas_threads(values, k_nodes, rows + cols)
        if threads:
            with backends.blas_threads(threads):
                return _separable_matmul(values, rows, cols, periods, neighborhood, sigma)
        return _separable_matmul(values, rows, cols, periods, neighborhood, sigma)
    tile = max(1, _SMOOTH_TILE_ELEMENTS // max(1, k_nodes))
    threads = _blas_threads(values, min(tile, k_nodes), k_nodes)
    if threads:
        with backends.blas_threads(threads):
            return _tiled_matmul(values, coords, periods, neighborhood, sigma, tile)
    return _tiled_matmul(values, coords, periods, neighborhood, sigma, tile)


def _separable_matmul(values, rows, cols, periods, neighborhood, sigma):
    dt = values.dtype
    h0 = _axis_neighborhood(neighborhood, rows, periods[0], sigma, dt, values.device)
    h1 = _axis_neighborhood(neighborhood, cols, periods[1], sigma, dt, values.device)
    # (rows x rows) . (rows, cols*E), then (cols x cols) applied along the column axis
    out = (h0 @ values.reshape(rows, -1)).reshape(rows, cols, -1)
    return torch.einsum("cj,rje->rce", h1, out).reshape(values.shape[0], -1)


def _tiled_matmul(values, coords, periods, neighborhood, sigma, tile):
    k_nodes = values.shape[0]
    c = coords.to(device=values.device, dtype=values.dtype)
    out = torch.empty_like(values)
    for start in range(0, k_nodes, tile):
        stop = min(k_nodes, start + tile)
        d0, d1 = reference.lattice_deltas(c[start:stop, None, :], c[None, :, :], *periods)
        out[start:stop] = reference.neighborhood(neighborhood, d0, d1, sigma) @ values
    return out


def _blas_threads(values: torch.Tensor, rows: int, inner: int) -> int:
    """The BLAS threads neighborhood_matmul's products (rows x inner) @ (inner x E) run on,
    fixed by their shape (backends.blas_threads_for), or 0: leave them (one thread already,
    torch.set_num_threads(1); not a CPU tensor; compiling). After a late region the cpu
    kernels' busy-machine back-off leaves this thread's BLAS on one thread (csrc/cpu/
    parallel_region.h), and MKL rounds the small products of a batch epoch differently
    there (6 x 6 x 455 in fp32 for a 6 x 7 map of 64 features): the trained map depended
    on how busy the machine was."""
    if torch.get_num_threads() == 1 or not values.is_cpu or compiling():
        return 0
    return backends.blas_threads_for(rows, inner, values.shape[1])


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
def sigma_min(dtype: torch.dtype) -> float:
    """The smallest sigma the online kernels run with in ``dtype``'s accumulation dtype:
    2^floor(emin / 3) with tiny = 2^emin (2^-42 in fp32, 2^-341 in fp64), so that
    2 sigma^2 is a normal number and the Mexican hat's p / sigma^2 stays finite for
    lattice offsets up to 2^40."""
    return 2.0 ** math.floor(math.log2(torch.finfo(acc_dtype(dtype)).tiny) / 3)


def _check_steps(name: str, values: torch.Tensor, needed: bool, positive: bool) -> None:
    """Every per-step value finite (and > 0, or >= 0); the error names the map and step."""
    if not needed or values.numel() == 0:
        return
    bad = ~torch.isfinite(values) | ((values <= 0) if positive else (values < 0))
    if bool(bad.any()):
        m, t = (int(i) for i in bad.nonzero()[0])
        want = "> 0 and finite" if positive else ">= 0 and finite"
        raise ValueError(f"{name} must be {want} at every step; got {float(values[m, t])!r} at map {m}, "
                         f"step {t}")


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

    lr must be finite and >= 0 and sigma finite and > 0 at every step (ValueError
    naming the map and step). A sigma whose square underflows (1e-30 in fp32), or that
    rounds to 0 in the accumulation dtype, runs as :func:`sigma_min` (2^-42 in fp32):
    the limit sigma -> 0, only the winner moves (never 0 / 0). The rule is linear in (x, weights), so data outside the safe
    range of :func:`som_bmu` trains on power-of-two-scaled copies and the result is
    scaled back (winner-takes-most scales sigma with them: its kernel reads distances).
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
        _check_steps("lr", lr, rule != "wta", positive=False)
        if rule != "wta":
            _check_steps("sigma", sigma, True, positive=True)
    name = ONLINE.resolve(x.device, backend, n_maps=m)
    if order.shape[1] == 0 or m == 0:
        return weights.clone()
    dt = acc_dtype(weights.dtype)
    lr, coords = lr.to(dt), coords.to(dt)
    e = _scale_exponent(x, weights)[0] if name != "cpu" else 0  # cpu: in the kernel
    if e:
        # the rule is linear in (x, w): train on the scaled data, scale the result back;
        # winner-takes-most's kernel reads distances over sigma, so sigma scales too
        if rule == "wtm":
            sigma = _ldexp(sigma.to(torch.float64), -e)
        out = som_online(_ldexp(weights, -e), _ldexp(x, -e), order, lr, sigma, coords, periods, neighborhood,
                         rule, metric, backend=name)
        return _ldexp(out.to(dt), e).to(weights.dtype)
    # sigma -> 0 is winner-only updates. A sigma whose square underflows (1e-30 in fp32)
    # or that rounds to 0 would make the kernels' neighbourhoods 0 / 0 at the winner, so
    # it runs as sigma_min (2^-42 in fp32) -- already winner-only for every lattice offset
    # (>= 1/2) and every data distance above ~1e-11 (fp32; below that fp32 data are ties).
    sigma = sigma.to(dt).clamp(min=sigma_min(dt), max=torch.finfo(dt).max)
    p0, p1 = (float(p) for p in periods)
    return ONLINE.kernels[name](weights, x, order.contiguous(), lr.contiguous(), sigma.contiguous(),
                                coords.contiguous(), p0, p1, neighborhood, rule, metric)
