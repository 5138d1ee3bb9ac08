"""The CPU C++ SOM kernels (csrc/cpu/som*.cpp) against the reference (genkernels/som/reference.py).

The euclidean BMU runs a fused GEMM-style micro-kernel whose expanded distances are
rechecked exactly, so indices are compared exactly on data without near-ties and on
constructed exact ties (duplicated nodes: the lowest index wins).
"""

import pytest
import torch

pytest.importorskip("genkernels._C")

import genkernels  # noqa: E402,F401  (registers the fake kernels opcheck needs)
import genkernels.ops as gk_ops  # noqa: E402
from genkernels.som import reference  # noqa: E402

ops = torch.ops.genkernels
from helpers import cpu_backoff, num_threads  # noqa: E402
from tolerances import TOL  # noqa: E402

# (N, K, D): single everything, odd sizes around the register tiles (8 x 48 / 6 x 16 nodes,
# 8-feature lanes), a D past 64, a full 32x32 map.
SHAPES = [(1, 1, 1), (7, 5, 3), (97, 97, 64), (1025, 1024, 65), (97, 1024, 1), (1025, 5, 3), (7, 97, 65)]
# k = K sorts the whole (N, K) matrix in the reference: skipped on the largest shape
FULL_SORT_MAX = 200_000


def _data(n, k_nodes, d, dtype=torch.float32, nan=False):
    x = torch.randn(n, d, dtype=torch.float64)
    w = torch.randn(k_nodes, d, dtype=torch.float64)
    if nan:
        x[torch.rand(n, d) < 0.25] = float("nan")
        x[n // 2] = float("nan")  # no present feature: +inf from every node, indices 0..k-1
    return x.to(dtype), w.to(dtype)


def _assert_same_ranking(x, w, idx, dist, ref_idx, ref_dist, metric, ignore_nan=False):
    """idx/dist equal to the reference's, except that where two nodes' distances agree
    within rounding the order between them may differ: the reference's own distance of
    every chosen node must then equal the reference's distance at that rank."""
    tol = TOL[dist.dtype]
    torch.testing.assert_close(dist, ref_dist, **tol)
    differ = idx != ref_idx
    if differ.any():
        mine = reference.paired_distances(x[:, None, :], w[idx], metric, ignore_nan).to(dist.dtype)
        torch.testing.assert_close(mine[differ], ref_dist[differ], **tol)


# ------------------------------------------------------------------------------------ BMU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", reference.METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bmu_matches_reference(shape, metric, dtype):
    n, k_nodes, d = shape
    x, w = _data(n, k_nodes, d, dtype)
    ks = sorted({1, 2, 5} | ({k_nodes} if n * k_nodes <= FULL_SORT_MAX else {k_nodes // 2 + 1}))
    ks = [k for k in ks if k <= k_nodes]
    # the reference sorts every row in full and keeps the first k: its answer for each k is
    # the first k columns of its answer for the largest (computed once)
    ref_all = reference.som_bmu(x, w, ks[-1], metric)
    for k in ks:
        idx, dist = ops.som_bmu(x, w, k, metric, False)
        ref_idx, ref_dist = ref_all[0][:, :k], ref_all[1][:, :k]
        assert idx.dtype == torch.int64 and dist.dtype == dtype and idx.shape == (n, k)
        if k <= 5 and not (metric == "cosine" and d == 1):
            # a few nearest of random data are far apart: exact indices (cosine in 1-D is
            # 0 or 2 up to rounding, all ties)
            assert torch.equal(idx, ref_idx)
            torch.testing.assert_close(dist, ref_dist, **TOL[dtype])
        else:
            _assert_same_ranking(x, w, idx, dist, ref_idx, ref_dist, metric)


@pytest.mark.parametrize("k", [1, 2, 32, 33])
def test_bmu_euclidean_fast_path_around_k_limit(k):
    # k <= 32 runs the fused micro-kernel + exact recheck, k > 32 the direct path
    x, w = _data(300, 200, 20)
    idx, dist = ops.som_bmu(x, w, k, "euclidean", False)
    ref_idx, ref_dist = reference.som_bmu(x, w, k, "euclidean")
    _assert_same_ranking(x, w, idx, dist, ref_idx, ref_dist, "euclidean")
    assert torch.equal(idx[:, :2], ref_idx[:, :2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", reference.METRICS)
@pytest.mark.parametrize("k", [1, 2, 40])
def test_bmu_exact_ties_lowest_index_wins(metric, dtype, k):
    # every node has an exact duplicate at a higher index; samples sit exactly on nodes
    base = torch.randn(30, 24, dtype=torch.float64)
    perm = torch.randperm(30)
    w = torch.cat([base, base[perm]]).to(dtype)
    x = torch.cat([torch.randn(50, 24, dtype=torch.float64).to(dtype), w[30:40]])  # = base[perm[:10]]
    idx, dist = ops.som_bmu(x, w, k, metric, False)
    ref_idx, ref_dist = reference.som_bmu(x, w, k, metric)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, **TOL[dtype])
    if k >= 2:
        assert torch.equal(dist[:, 0], dist[:, 1])  # the duplicate comes second, same distance
        assert bool((idx[:, 0] < idx[:, 1]).all())
    if metric == "euclidean":
        # on-node samples: the exact recheck gives 0 (the GEMM expansion would not)
        assert bool((dist[50:, 0] == 0).all())
        assert torch.equal(idx[50:, 0], perm[:10])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bmu_avx2_kernel(monkeypatch, dtype):
    # the AVX2 micro-kernel (6 x 16 / 6 x 8 tiles), also on machines that pick AVX-512
    monkeypatch.setenv("GENKERNELS_CPU_ISA", "avx2")
    for n, k_nodes, d in [(1, 1, 1), (97, 97, 64), (1025, 1024, 65), (7, 5, 3)]:
        x, w = _data(n, k_nodes, d, dtype)
        w = torch.cat([w, w])  # exact ties: the lower copy wins
        ks = sorted({1, 2, 5} & set(range(1, 2 * k_nodes + 1)))
        ref_all = reference.som_bmu(x, w, ks[-1], "euclidean")  # each k: its first k columns
        for k in ks:
            idx, dist = ops.som_bmu(x, w, k, "euclidean", False)
            ref_idx, ref_dist = ref_all[0][:, :k], ref_all[1][:, :k]
            assert torch.equal(idx, ref_idx)
            torch.testing.assert_close(dist, ref_dist, **TOL[dtype])


def test_bmu_all_nodes_equal_overflows_to_exact_path():
    # every node within the recheck margin of the best: the candidate list overflows
    w = torch.randn(1, 16).repeat(300, 1)
    x = torch.randn(20, 16)
    for k in (1, 5, 32):
        idx, dist = ops.som_bmu(x, w, k, "euclidean", False)
        assert torch.equal(idx, torch.arange(k).expand(20, k))
        torch.testing.assert_close(dist, reference.som_bmu(x, w, k)[1], **TOL[torch.float32])


def test_bmu_near_tie_resolved_exactly():
    # two nodes whose distances differ far below the GEMM expansion's error (|x|^2 ~ 1e6):
    # the exact recheck must still pick the truly nearest
    x = torch.full((1, 64), 100.0)
    w = x.repeat(4, 1)
    w[0, 0] += 2e-2
    w[1, 0] += 1e-2
    w[2:] += 50.0
    idx, dist = ops.som_bmu(x, w, 2, "euclidean", False)
    assert idx.tolist() == [[1, 0]]
    torch.testing.assert_close(dist, torch.tensor([[1e-2, 2e-2]]), rtol=1e-3, atol=0)


# ------------------------------------------------------- BLAS-tiled euclidean path (large D)
# Large D runs at::mm on tiles of rows, then the micro-kernel's candidate filter and exact
# recheck (gemm_euclidean in som.cpp): D >= 256 in fp32, or K * D * itemsize >= 2 MiB from
# D = 128 on. GENKERNELS_CPU_GEMM=1 forces it on smaller shapes, =0 forces it off.
GEMM_SHAPES = [(1, 1, 300), (7, 5, 257), (97, 33, 300), (601, 129, 300), (257, 1031, 784)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bmu_gemm_path_matches_reference(monkeypatch, shape, dtype):
    monkeypatch.setenv("GENKERNELS_CPU_GEMM", "1")  # fp64 below 2 MiB of weights too
    n, k_nodes, d = shape
    x, w = _data(n, k_nodes, d, dtype)
    w = torch.cat([w, w[: max(1, k_nodes // 3)]])  # exact ties with lower-index copies
    ks = sorted({1, 2, 5} & set(range(1, w.shape[0] + 1)))
    ref_all = reference.som_bmu(x, w, ks[-1], "euclidean")  # each k: its first k columns
    for k in ks:
        idx, dist = ops.som_bmu(x, w, k, "euclidean", False)
        ref_idx, ref_dist = ref_all[0][:, :k], ref_all[1][:, :k]
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist, ref_dist, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bmu_gemm_path_equals_micro_kernel(monkeypatch, dtype):
    # the same contract: identical indices, and distances from the same exact sums
    x, w = _data(1000, 300, 400, dtype)
    x[:10] = w[-10:]  # samples on nodes: distance exactly 0
    w[5] = w[250]  # an exact tie: node 5 wins over 250
    for k in (1, 2, 5, 32):
        monkeypatch.setenv("GENKERNELS_CPU_GEMM", "1")
        gi, gd = ops.som_bmu(x, w, k, "euclidean", False)
        monkeypatch.setenv("GENKERNELS_CPU_GEMM", "0")
        mi, md = ops.som_bmu(x, w, k, "euclidean", False)
        assert torch.equal(gi, mi) and torch.equal(gd, md)
        assert bool((gd[:10, 0] == 0).all()) and torch.equal(gi[:10, 0], torch.arange(290, 300))


def test_bmu_gemm_path_chosen_for_large_d_and_near_ties():
    # two nodes whose distances differ far below the expansion's error at D = 784, with the
    # auto-selected path (the BLAS one at this D): the recheck picks the truly nearest
    x = torch.full((3, 784), 100.0)
    w = x[:1].repeat(300, 1) + 50.0
    w[7] = x[0]
    w[7, 0] += 2e-2
    w[123] = x[0]
    w[123, 0] += 1e-2
    w[200] = w[123]  # exact duplicate of the best: second
    idx, dist = ops.som_bmu(x, w, 3, "euclidean", False)
    assert idx.tolist() == [[123, 200, 7]] * 3
    torch.testing.assert_close(dist, torch.tensor([[1e-2, 1e-2, 2e-2]] * 3), rtol=1e-3, atol=0)


def test_bmu_gemm_path_all_nodes_equal_and_nan():
    # overflowing candidate lists and rows with NaN (fewer finite candidates than k) fall
    # back to the exact path, as in the micro-kernel
    w = torch.randn(1, 300).repeat(200, 1)
    x = torch.randn(20, 300)
    idx, dist = ops.som_bmu(x, w, 5, "euclidean", False)
    assert torch.equal(idx, torch.arange(5).expand(20, 5))
    x, w = _data(50, 40, 300, nan=True)
    for ignore_nan in (False, True):
        idx, dist = ops.som_bmu(x, w, 2, "euclidean", ignore_nan)
        ref_idx, ref_dist = reference.som_bmu(x, w, 2, "euclidean", ignore_nan)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist, ref_dist, equal_nan=True, **TOL[torch.float32])


def test_bmu_gemm_path_reduced_precision_matmul_ignored():
    # bf16 matmul in oneDNN would break the margin: the micro-kernel serves fp32 then
    x, w = _data(200, 150, 300)
    ref = ops.som_bmu(x, w, 2, "euclidean", False)
    mk = torch.backends.mkldnn.matmul
    saved = mk.fp32_precision
    try:
        mk.fp32_precision = "bf16"
        out = ops.som_bmu(x, w, 2, "euclidean", False)
    finally:
        mk.fp32_precision = saved
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bmu_and_node_sums_gemm_path_thread_count_independent(dtype):
    # the BLAS path (D = 784; fp64 weights past 2 MiB): 4 tiles of 256 rows shared by the
    # threads, 88 chunks of 8 nodes for the sums (the fp64 reference sums take most of the time)
    x, w = _data(1001, 700, 784, dtype)
    w[3] = w[600]
    x[:5] = w[600]
    bmu = ops.som_bmu(x, w, 5, "euclidean", False)
    sums = ops.som_node_sums(x, w, "euclidean", False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        bmu1 = ops.som_bmu(x, w, 5, "euclidean", False)
        sums1 = ops.som_node_sums(x, w, "euclidean", False)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(bmu + sums, bmu1 + sums1):
        assert torch.equal(a, b)
    assert bool((bmu[0][:5, 0] == 3).all()) and bool((bmu[1][:5, 0] == 0).all())
    ref_sums, ref_counts, ref_dsum = reference.som_node_sums(x, w, "euclidean", False)
    assert torch.equal(sums[1], ref_counts)
    torch.testing.assert_close(sums[0], ref_sums, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", reference.METRICS)
def test_bmu_low_precision(metric, dtype):
    x, w = _data(257, 97, 33, dtype)
    idx, dist = ops.som_bmu(x, w, 3, metric, False)
    ref_idx, ref_dist = reference.som_bmu(x, w, 3, metric)
    assert dist.dtype == dtype
    assert torch.equal(idx, ref_idx)
    # error against the exact distances of the same low-precision inputs, bounded by
    # twice PyTorch's own (the reference's rounding to the dtype) plus one ulp
    exact = reference.paired_distances(x.double()[:, None, :], w.double()[idx], metric)
    err = (dist.double() - exact).abs()
    ref_err = (ref_dist.double() - exact).abs()
    ulp = torch.finfo(dtype).eps * exact.abs().clamp(min=1e-3)
    assert bool((err <= 2 * ref_err + ulp).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", reference.METRICS)
def test_bmu_ignore_nan(metric, dtype):
    x, w = _data(97, 61, 13, dtype, nan=True)
    for k in (1, 3, 61):
        idx, dist = ops.som_bmu(x, w, k, metric, True)
        ref_idx, ref_dist = reference.som_bmu(x, w, k, metric, True)
        assert bool(torch.isinf(dist[48]).all()) and torch.equal(idx[48], torch.arange(k))
        if k <= 3:
            assert torch.equal(idx, ref_idx)
            torch.testing.assert_close(dist, ref_dist, **TOL[dtype])
        else:
            _assert_same_ranking(x, w, idx, dist, ref_idx, ref_dist, metric, ignore_nan=True)


def test_bmu_nan_without_ignore_nan_matches_reference():
    x, w = _data(9, 7, 5)
    x[3, 2] = float("nan")
    idx, dist = ops.som_bmu(x, w, 2, "euclidean", False)
    ref_idx, ref_dist = reference.som_bmu(x, w, 2, "euclidean")
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, equal_nan=True)


@pytest.mark.parametrize("metric", reference.METRICS)
def test_bmu_non_contiguous(metric):
    xb, wb = _data(80, 40, 30)
    x, w = xb[::2, ::3], wb.t().contiguous().t()[::2, ::3]
    assert not x.is_contiguous() and not w.is_contiguous()
    idx, dist = ops.som_bmu(x, w, 2, metric, False)
    ref_idx, ref_dist = reference.som_bmu(x, w, 2, metric)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, **TOL[torch.float32])


def test_bmu_public_api_cpu_backend():
    x, w = _data(50, 36, 8)
    idx, dist = gk_ops.som_bmu(x, w, 2, "manhattan", backend="cpu")
    ref_idx, ref_dist = reference.som_bmu(x, w, 2, "manhattan")
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist)
    empty_idx, empty_dist = gk_ops.som_bmu(x[:0], w, 3, backend="cpu")
    assert empty_idx.shape == (0, 3) and empty_dist.shape == (0, 3)


def test_unknown_strings_rejected_by_kernels():
    x, w = _data(4, 3, 2)
    with pytest.raises(RuntimeError, match="metric"):
        ops.som_bmu(x, w, 1, "hamming", False)
    with pytest.raises(RuntimeError, match="metric"):
        ops.som_node_sums(x, w, "hamming", False)
    order = torch.zeros(1, 2, dtype=torch.int64)
    rates = torch.ones(1, 2)
    coords = torch.zeros(3, 2)
    with pytest.raises(RuntimeError, match="neighborhood"):
        ops.som_online(w[None], x, order, rates, rates, coords, 0.0, 0.0, "square", "som", "euclidean")
    with pytest.raises(RuntimeError, match="rule"):
        ops.som_online(w[None], x, order, rates, rates, coords, 0.0, 0.0, "gaussian", "batch", "euclidean")


# ------------------------------------------------------------------------------ node sums
@pytest.mark.parametrize("ignore_nan", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("metric", reference.METRICS)
def test_node_sums_match_reference(metric, dtype, ignore_nan):
    x, w = _data(1025, 97, 17, dtype, nan=ignore_nan)
    sums, counts, dsum = ops.som_node_sums(x, w, metric, ignore_nan)
    ref_sums, ref_counts, ref_dsum = reference.som_node_sums(x, w, metric, ignore_nan)
    acc = reference.acc_dtype(dtype)
    assert sums.dtype == acc and counts.dtype == acc and dsum.dtype == torch.float64 and dsum.dim() == 0
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, **TOL[acc])
    # per-sample distances agree to an ulp of the accumulation dtype (summation order)
    torch.testing.assert_close(dsum, ref_dsum, rtol=16 * torch.finfo(acc).eps, atol=0)


def test_node_sums_deterministic_and_thread_count_independent():
    x, w = _data(5000, 100, 24)
    first = ops.som_node_sums(x, w, "euclidean", False)
    again = ops.som_node_sums(x, w, "euclidean", False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.som_node_sums(x, w, "euclidean", False)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, again, single):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("grid,dtype,separable", [((6, 7), torch.float32, True), ((6, 7), torch.float64, True),
                                                    ((6, 7), torch.float32, False), ((20, 20), torch.float32, True)])
def test_smoothing_independent_of_threads_and_backoff(grid, dtype, separable):
    # the batch rule's smoothing products (torch matmuls between the kernels) run on BLAS
    # threads fixed by their shape: after a late region the back-off leaves the calling
    # thread's BLAS on one thread, and MKL rounds a 6 x 6 x 455 fp32 product differently
    # there than on its threaded path -- batch-trained maps depended on the machine's load
    rows, cols = grid
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1000, 64, generator=g, dtype=torch.float64).to(dtype) * 16
    w = torch.rand(rows * cols, 64, generator=g, dtype=torch.float64).to(dtype) * 16
    coords = torch.cartesian_prod(torch.arange(rows), torch.arange(cols)).to(dtype)

    def epoch():
        sums, counts, _ = gk_ops.som_node_sums(x, w, backend="cpu")
        return gk_ops.som_smooth(sums, counts, w, coords, (0.0, 0.0), "gaussian", 3.5,
                                 grid if separable else None)

    with cpu_backoff(-1):
        quiet = epoch()
    with cpu_backoff():
        busy = epoch()
    with num_threads(1):
        single = epoch()
    assert torch.equal(quiet, busy) and torch.equal(quiet, single)


def test_node_sums_public_api_cpu_backend():
    x, w = _data(64, 9, 4)
    sums, counts, dsum = gk_ops.som_node_sums(x, w, backend="cpu")
    ref = reference.som_node_sums(x, w)
    torch.testing.assert_close(sums, ref[0])
    assert torch.equal(counts, ref[1])
    torch.testing.assert_close(dsum, ref[2])


# ---------------------------------------------------------------------------------- online
def _grid(rows, cols):
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r, c], -1).reshape(-1, 2).to(torch.float64)


def _online_case(m, steps, rows=6, cols=5, d=5, n=40, dtype=torch.float32):
    x = torch.randn(n, d, dtype=torch.float64).to(dtype)
    w = torch.randn(m, rows * cols, d, dtype=torch.float64).to(dtype)
    order = torch.randint(0, n, (m, steps))
    acc = reference.acc_dtype(dtype)
    # a different schedule per map
    lr = (torch.linspace(0.5, 0.01, steps, dtype=acc)[None] * torch.linspace(1.0, 0.5, m, dtype=acc)[:, None])
    sigma = torch.linspace(2.5, 0.7, steps, dtype=acc)[None] * torch.linspace(1.0, 1.4, m, dtype=acc)[:, None]
    return w, x, order, lr.contiguous(), sigma.contiguous(), _grid(rows, cols).to(acc)


def _assert_online(w, x, order, lr, sigma, coords, periods, nb, rule, metric, tol=None):
    """Step for step with the reference. fp32: rounding differences (FMA, summation order)
    compound over hundreds of steps (a Mexican hat's repulsion can grow weights by orders
    of magnitude), so the relative error against the fp64 reference run on the same inputs
    is bounded by twice the fp32 reference's own, plus 1e-6."""
    out = ops.som_online(w, x, order, lr, sigma, coords, *periods, nb, rule, metric)
    ref = reference.som_online(w, x, order, lr, sigma, coords, *periods, nb, rule, metric)
    assert out.dtype == w.dtype and out.shape == w.shape
    if tol is not None:
        torch.testing.assert_close(out, ref, **tol)
        return
    ref64 = reference.som_online(w.double(), x.double(), order, lr.double(), sigma.double(), coords.double(),
                                 *periods, nb, rule, metric)
    scale = ref64.abs() + 1
    err = ((out.double() - ref64).abs() / scale).max()
    assert err <= 2 * ((ref.double() - ref64).abs() / scale).max() + 1e-6


ONLINE_CASES = [(nb, rule) for rule in reference.RULES for nb in reference.NEIGHBORHOODS
                if not (rule == "wtm" and nb == "mexican_hat")]


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("nb,rule", ONLINE_CASES)
def test_online_matches_reference(nb, rule, periodic):
    case = _online_case(3, 300)
    periods = (6.0, 5.0) if periodic else (0.0, 0.0)
    w = case[0].clone()
    _assert_online(*case, periods, nb, rule, "euclidean")
    assert torch.equal(case[0], w)  # input untouched


@pytest.mark.parametrize("nb,rule", [("gaussian", "som"), ("bubble", "wtm"), ("triangle", "wta")])
def test_online_fp64(nb, rule):
    _assert_online(*_online_case(2, 200, dtype=torch.float64), (6.0, 0.0), nb, rule, "euclidean",
                   TOL[torch.float64])


@pytest.mark.parametrize("metric", ["cosine", "manhattan", "chebyshev"])
@pytest.mark.parametrize("rule", ["som", "wtm"])
def test_online_other_metrics(metric, rule):
    _assert_online(*_online_case(1, 200), (0.0, 0.0), "gaussian", rule, metric)


def test_online_low_precision_weights():
    w, x, order, lr, sigma, coords = _online_case(2, 100, dtype=torch.bfloat16)
    out = ops.som_online(w, x, order, lr, sigma, coords, 0.0, 0.0, "gaussian", "som", "euclidean")
    ref = reference.som_online(w, x, order, lr, sigma, coords, 0.0, 0.0, "gaussian", "som", "euclidean")
    assert out.dtype == torch.bfloat16
    # both train in fp32 and round once at the end: at most one bf16 ulp apart
    torch.testing.assert_close(out, ref, rtol=2 ** -7, atol=1e-2)


def test_online_large_map_split_over_threads():
    # K * D = 16x16 x 33 >= 8192: one map's nodes are split over two threads (a node
    # range boundary falls mid-map; D = 33 exercises the feature tail)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        w, x, order, lr, sigma, coords = _online_case(1, 300, rows=16, cols=16, d=33, n=100)
        _assert_online(w, x, order, lr, sigma, coords, (0.0, 0.0), "gaussian", "som", "euclidean")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("nb,rule", [("gaussian", "som"), ("triangle", "som"), ("bubble", "wtm")])
def test_online_avx2_pass(monkeypatch, nb, rule):
    # the AVX2 fused pass, also on machines that pick the AVX-512 one
    monkeypatch.setenv("GENKERNELS_CPU_ISA", "avx2")
    _assert_online(*_online_case(2, 200, d=19), (6.0, 0.0), nb, rule, "euclidean")


@pytest.mark.parametrize("d", [1, 16, 37])
@pytest.mark.parametrize("nb", ["gaussian", "bubble", "triangle", "mexican_hat"])
def test_online_hexagonal_and_scattered_coords(nb, d):
    # hexagonal positions (2 x rows distinct values on one axis: the separable
    # neighbourhood tables) and scattered ones (the per-node formula)
    w, x, order, lr, sigma, coords = _online_case(2, 150, rows=5, cols=6, d=d)
    r, c = coords[:, 0], coords[:, 1]
    hexagonal = torch.stack([r + 0.5 * (c % 2), c * 3 ** 0.5 / 2], -1)
    _assert_online(w, x, order, lr, sigma, hexagonal, (0.0, 0.0), nb, "som", "euclidean")
    _assert_online(w, x, order, lr, sigma, hexagonal, (5.0, 6 * 3 ** 0.5 / 2), nb, "som", "euclidean")
    scattered = torch.rand(coords.shape, dtype=coords.dtype) * 5
    _assert_online(w, x, order, lr, sigma, scattered, (0.0, 0.0), nb, "som", "euclidean")


@pytest.mark.parametrize("isa", ["avx2", None])
@pytest.mark.parametrize("rows,cols,d,threads", [(6, 5, 7, 1), (3, 7, 64, 1), (16, 16, 33, 2)])
def test_online_exact_ties_lowest_index_wins(monkeypatch, isa, rows, cols, d, threads):
    # every node duplicated (first half == second half): within full groups, the tail
    # group and across the two threads' node ranges. Step 0 moves every node by less than
    # half an ulp (values in [1, 2), lr 1e-12), so its pass measures exact ties while
    # updating; step 1 (bubble of radius 0.5) moves only the winner: the lower copy.
    if isa:
        monkeypatch.setenv("GENKERNELS_CPU_ISA", isa)
    k = rows * cols
    half = k // 2
    base = torch.rand(half, d) + 1
    w = torch.cat([base, base] + ([torch.full((1, d), 1e3)] if k % 2 else []))[None]
    x = torch.rand(8, d) + 1
    lr = torch.tensor([[1e-12, 0.5]])
    sigma = torch.tensor([[100.0, 0.5]])
    coords = _grid(rows, cols).float()
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for i in range(8):
            order = torch.tensor([[i, i]])
            out = ops.som_online(w, x, order, lr, sigma, coords, 0.0, 0.0, "bubble", "som", "euclidean")
            ref = reference.som_online(w, x, order, lr, sigma, coords, 0.0, 0.0, "bubble", "som", "euclidean")
            moved = (out[0] != w[0]).any(1).nonzero().flatten().tolist()
            assert len(moved) == 1 and moved[0] < half
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(saved)


def test_online_public_api_cpu_backend():
    w, x, order, lr, sigma, coords = _online_case(2, 50)
    out = gk_ops.som_online(w, x, order, lr, sigma, coords, (0.0, 0.0), "bubble", "som", backend="cpu")
    ref = reference.som_online(w, x, order, lr, sigma, coords, 0.0, 0.0, "bubble", "som", "euclidean")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------------- opcheck
def test_opcheck_bmu():
    x, w = _data(33, 20, 7)
    torch.library.opcheck(ops.som_bmu.default, (x, w, 3, "euclidean", False))
    torch.library.opcheck(ops.som_bmu.default, (x, w, 2, "cosine", True))


def test_opcheck_node_sums():
    x, w = _data(33, 20, 7)
    torch.library.opcheck(ops.som_node_sums.default, (x, w, "euclidean", False))
    torch.library.opcheck(ops.som_node_sums.default, (x, w, "manhattan", True))


def test_opcheck_online():
    w, x, order, lr, sigma, coords = _online_case(2, 20)
    torch.library.opcheck(ops.som_online.default,
                          (w, x, order, lr, sigma, coords, 0.0, 0.0, "gaussian", "som", "euclidean"))
