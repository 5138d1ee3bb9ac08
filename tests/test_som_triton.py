"""The Triton SOM kernels (genkernels/som/triton.py) against the reference.

Without a GPU they run under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py), so
shapes stay small; with a GPU the same tests run on CUDA tensors.
"""

import pytest
import torch

pytest.importorskip("triton")

import genkernels  # noqa: E402
import genkernels.ops as gk_ops  # noqa: E402
from genkernels.som import reference  # noqa: E402
from genkernels.som import triton as som_triton  # noqa: E402
from genkernels.som.lattice import Lattice  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (N, K, D): one of everything, odd sizes that straddle the tiles, a D past two chunks
SHAPES = [(1, 1, 1), (37, 45, 13), (100, 97, 65)]
from tolerances import TOL  # noqa: E402


def _data(n, k_nodes, d, dtype, nan=False):
    x = torch.randn(n, d, dtype=torch.float64).to(dtype)
    w = torch.randn(k_nodes, d, dtype=torch.float64).to(dtype)
    if nan:
        x[torch.rand(n, d) < 0.2] = float("nan")
        x[n // 2] = float("nan")  # a sample with no present feature: +inf from every node
    return x.to(DEVICE), w.to(DEVICE)


def _assert_bmu_equal(x, w, k, metric, ignore_nan=False, **tol):
    idx, dist = torch.ops.genkernels.som_bmu_triton(x, w, k, metric, ignore_nan)
    ref_idx, ref_dist = reference.som_bmu(x, w, k, metric, ignore_nan)
    assert idx.dtype == torch.int64 and dist.dtype == x.dtype
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, **(tol or TOL[x.dtype]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", reference.METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bmu_matches_reference(shape, metric, dtype):
    n, k_nodes, d = shape
    x, w = _data(n, k_nodes, d, dtype)
    for k in sorted({1, min(2, k_nodes), k_nodes}):
        _assert_bmu_equal(x, w, k, metric)


@pytest.mark.parametrize("k", [7, 8, 9])
def test_bmu_around_the_register_topk_limit(k):
    # k <= TOPK_SLOTS_MAX runs the in-register top-k, k beyond it the tiled sort path
    assert som_triton.TOPK_SLOTS_MAX == 8
    x, w = _data(41, 53, 9, torch.float32)
    for metric in ("euclidean", "manhattan"):
        _assert_bmu_equal(x, w, k, metric)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", reference.METRICS)
def test_bmu_ignore_nan(metric, dtype):
    x, w = _data(37, 45, 13, dtype, nan=True)
    for k in (1, 3, 45):
        _assert_bmu_equal(x, w, k, metric, ignore_nan=True)


@pytest.mark.parametrize("metric", reference.METRICS)
def test_bmu_ties_go_to_the_lowest_index(metric):
    # nodes on the integer grid {0, 1, 2}^2 listed twice (duplicates), samples on grid
    # points and half-way between them: exact ties in every metric, in every arithmetic
    g = torch.arange(3.0)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    w = torch.cat([grid, grid])[torch.randperm(18)]
    x = torch.cat([grid, grid + 0.5, grid + torch.tensor([0.5, 0.0]), torch.zeros(1, 2)])
    x, w = x.to(DEVICE), w.to(DEVICE)
    for k in (1, 2, 5, 18):
        _assert_bmu_equal(x, w, k, metric)


def test_bmu_euclidean_near_tie_is_rechecked_exactly():
    # |x|^2 ~ 1e7 against distance gaps ~1e-2: the expansion |w|^2 - 2 x.w has an
    # error of ~1 in fp32 and alone would pick the wrong winner half the time
    torch.manual_seed(1)
    base = torch.full((64, 32), 500.0, dtype=torch.float64)
    x = (base + 0.1 * torch.randn(64, 32, dtype=torch.float64))
    w = (500.0 + 0.1 * torch.randn(2, 32, dtype=torch.float64))
    x32, w32 = x.float().to(DEVICE), w.float().to(DEVICE)
    idx, dist = torch.ops.genkernels.som_bmu_triton(x32, w32, 1, "euclidean", False)
    ref_idx, ref_dist = reference.som_bmu(x32, w32, 1, "euclidean")
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bmu_half_precision_inputs(dtype):
    x, w = _data(37, 45, 13, dtype)
    idx, dist = torch.ops.genkernels.som_bmu_triton(x, w, 2, "euclidean", False)
    ref_idx, ref_dist = reference.som_bmu(x, w, 2, "euclidean")
    assert dist.dtype == dtype
    assert torch.equal(idx, ref_idx)
    # both accumulate in fp32 and differ only in the final rounding to dtype: exact for
    # fp16; within one bf16 ulp, since the interpreter truncates fp32 -> bf16 stores
    ulp = {torch.float16: 0.0, torch.bfloat16: 2.0**-7}[dtype]
    torch.testing.assert_close(dist, ref_dist, rtol=ulp, atol=0)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_bmu_tensor_core_search_matches_the_exact_search(metric, precision):
    # random data: the gaps between neighbours dwarf the tf32/bf16 ranking error, so the
    # re-ranked candidates give the exact indices, and distances recomputed in fp32;
    # (70, 130, 65) straddles every tile of the 64 x 64 x 32 dot path (2 row blocks, 3 node
    # tiles, 3 feature chunks, each with a partial last one)
    for n, k_nodes, d in [(1, 1, 1), (70, 130, 65)]:
        x, w = _data(n, k_nodes, d, torch.float32)
        for k in sorted({1, min(2, k_nodes), min(5, k_nodes)}):
            idx, dist = torch.ops.genkernels.som_bmu_triton(x, w, k, metric, False, precision)
            ref_idx, ref_dist = reference.som_bmu(x, w, k, metric)
            assert torch.equal(idx, ref_idx)
            torch.testing.assert_close(dist, ref_dist, **TOL[torch.float32])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_bmu_bf16_search_is_reranked_exactly(metric):
    # node 1 is node 0 nudged by 2^-10 towards every sample: truly nearer, but identical
    # once rounded to bf16 (1 + 2^-10 -> 1 whether rounded to nearest or truncated), so a
    # bf16 ranking alone ties them and picks node 0; the fp32 re-rank must return node 1
    torch.manual_seed(3)
    n, d = 40, 32
    half = torch.arange(d) < d // 2
    if metric == "euclidean":
        x = 2.0 + 0.5 * torch.rand(n, d)          # every feature beyond 1 + 2^-10
        nudge = torch.ones(d)
    else:
        x = 1.0 + half * torch.rand(n, d)         # samples lean towards the first half
        nudge = half.float()
    w0 = torch.ones(d)
    w1 = w0 + 2.0**-10 * nudge
    far = 5.0 + torch.rand(6, d) if metric == "euclidean" else -torch.rand(6, d)
    w = torch.cat([w0[None], w1[None], far])
    assert torch.equal(w[0].bfloat16(), w[1].bfloat16())
    bf16_idx, _ = reference.som_bmu(x.bfloat16().float(), w.bfloat16().float(), 1, metric)
    assert (bf16_idx[:, 0] == 0).all()             # bf16 arithmetic alone mis-ranks
    x, w = x.to(DEVICE), w.to(DEVICE)
    ref_idx, ref_dist = reference.som_bmu(x, w, 2, metric)
    assert (ref_idx[:, 0] == 1).all()
    for precision in ("bf16", "tf32"):
        idx, dist = gk_ops.som_bmu(x, w, 2, metric, precision=precision, backend="triton")
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist, ref_dist, **TOL[torch.float32])


def test_bmu_precision_is_exact_where_no_tensor_core_search_exists():
    # other metrics, fp64 and ignore_nan accept a precision and search exactly
    x, w = _data(37, 45, 13, torch.float32)
    xd, wd = _data(37, 45, 13, torch.float64)
    xn, wn = _data(37, 45, 13, torch.float32, nan=True)
    for precision in ("tf32", "bf16"):
        for metric in ("manhattan", "chebyshev"):
            idx, dist = gk_ops.som_bmu(x, w, 3, metric, precision=precision, backend="triton")
            ref_idx, ref_dist = reference.som_bmu(x, w, 3, metric)
            assert torch.equal(idx, ref_idx)
            torch.testing.assert_close(dist, ref_dist, **TOL[torch.float32])
        idx, dist = gk_ops.som_bmu(xd, wd, 3, precision=precision, backend="triton")
        ref_idx, ref_dist = reference.som_bmu(xd, wd, 3)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist, ref_dist, **TOL[torch.float64])
        idx, dist = gk_ops.som_bmu(xn, wn, 3, ignore_nan=True, precision=precision, backend="triton")
        ref_idx, ref_dist = reference.som_bmu(xn, wn, 3, ignore_nan=True)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist, ref_dist, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bmu_precision_on_exact_backends(backend):
    if backend not in genkernels.available_backends("cpu"):
        pytest.skip(f"{backend} backend not available")
    x, w = _data(37, 45, 13, torch.float32)
    x, w = x.cpu(), w.cpu()
    ref_idx, ref_dist = reference.som_bmu(x, w, 2)
    for precision in ("tf32", "bf16"):
        idx, dist = gk_ops.som_bmu(x, w, 2, precision=precision, backend=backend)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(dist, ref_dist, **TOL[torch.float32])


def test_bmu_invalid_precision_raises():
    x, w = _data(5, 4, 3, torch.float32)
    with pytest.raises(ValueError, match="precision must be one of 'fp32', 'tf32', 'bf16'; got 'fp16'"):
        gk_ops.som_bmu(x, w, precision="fp16", backend="triton")
    with pytest.raises(ValueError, match="precision must be one of"):
        torch.ops.genkernels.som_bmu_triton(x, w, 1, "euclidean", False, "tf16")


def test_bmu_low_precision_gradient_is_exact():
    # the distances are recomputed from the definition: so is their gradient
    x, w = _data(11, 7, 4, torch.float32)
    grads = []
    for precision in ("fp32", "bf16"):
        xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        _, dist = gk_ops.som_bmu(xg, wg, 2, precision=precision, backend="triton")
        dist.sum().backward()
        grads.append((xg.grad, wg.grad))
    torch.testing.assert_close(grads[0], grads[1])


def test_bmu_non_contiguous_inputs():
    x_full, w_full = _data(40, 60, 26, torch.float32)
    x = x_full[::2, ::2]                     # strided rows and features
    w = w_full[:, :13].t().contiguous().t()  # column-major codebook
    assert not x.is_contiguous() and not w.is_contiguous()
    for metric in reference.METRICS:
        for k in (1, 3, 20):
            _assert_bmu_equal(x, w, k, metric)


def test_bmu_empty_input():
    x, w = _data(0, 5, 3, torch.float32)
    idx, dist = torch.ops.genkernels.som_bmu_triton(x, w, 2, "euclidean", False)
    assert idx.shape == (0, 2) and dist.shape == (0, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ignore_nan", [False, True])
@pytest.mark.parametrize("metric", reference.METRICS)
def test_node_sums_match_reference(metric, ignore_nan, dtype):
    for n, k_nodes, d in [(1, 1, 1), (77, 45, 13), (100, 9, 65)]:
        x, w = _data(n, k_nodes, d, dtype, nan=ignore_nan)
        sums, counts, dsum = torch.ops.genkernels.som_node_sums_triton(x, w, metric, ignore_nan)
        ref = reference.som_node_sums(x, w, metric, ignore_nan)
        assert sums.dtype == counts.dtype == reference.acc_dtype(dtype)
        assert dsum.dtype == torch.float64 and dsum.shape == ()
        torch.testing.assert_close(sums, ref[0], **TOL[dtype])
        assert torch.equal(counts, ref[1])
        torch.testing.assert_close(dsum, ref[2], rtol=1e-6, atol=1e-6)


def test_node_sums_non_contiguous_and_ties():
    x_full, w_full = _data(60, 20, 14, torch.float32)
    x, w = x_full[::3, ::2], torch.cat([w_full[:5], w_full[:5]]).t().contiguous().t()[:, ::2]
    sums, counts, _ = torch.ops.genkernels.som_node_sums_triton(x, w, "euclidean", False)
    ref = reference.som_node_sums(x, w, "euclidean")
    torch.testing.assert_close(sums, ref[0])
    assert torch.equal(counts, ref[1])
    assert counts[5:].sum() == 0  # duplicates of nodes 0..4 never win


def _online_case(m, k_nodes, d, t, dtype, rows=5):
    w = torch.rand(m, k_nodes, d, dtype=dtype)
    x = torch.rand(31, d, dtype=dtype)
    order = torch.randint(0, 31, (m, t))
    lr = torch.linspace(0.5, 0.01, t, dtype=dtype).repeat(m, 1)
    sigma = torch.linspace(2.5, 0.5, t, dtype=dtype).repeat(m, 1)
    cols = k_nodes // rows
    coords = torch.stack([torch.arange(k_nodes) // cols, torch.arange(k_nodes) % cols], 1).to(dtype)
    return [v.to(DEVICE) for v in (w, x, order, lr, sigma, coords)], (float(rows), float(cols))


# every rule with every neighbourhood, except wtm with the Mexican hat (wtm needs a
# non-increasing kernel; ops.som_online rejects that pair)
RULE_NEIGHBORHOODS = [(r, n) for r in reference.RULES for n in reference.NEIGHBORHOODS
                      if not (r == "wtm" and n == "mexican_hat")]


@pytest.mark.parametrize("periodic", [False, True], ids=["flat", "torus"])
@pytest.mark.parametrize("rule,neighborhood", RULE_NEIGHBORHOODS)
def test_online_step_for_step(neighborhood, rule, periodic):
    # 16 steps: the learning rate falls from 0.5 to 0.01, the radius from 2.5 to 0.5
    (w, x, order, lr, sigma, coords), periods = _online_case(2, 35, 7, 16, torch.float32)
    p0, p1 = periods if periodic else (0.0, 0.0)
    out = torch.ops.genkernels.som_online_triton(w, x, order, lr, sigma, coords, p0, p1,
                                                 neighborhood, rule, "euclidean")
    ref = reference.som_online(w, x, order, lr, sigma, coords, p0, p1, neighborhood, rule)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "manhattan", "chebyshev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_online_metrics_and_dtypes(metric, dtype):
    # 70 nodes and 33 features: two node tiles and two feature chunks, each with a
    # partial last one; two maps (programs) of 10 steps each
    (w, x, order, lr, sigma, coords), (p0, p1) = _online_case(2, 70, 33, 10, dtype, rows=7)
    for rule in ("som", "wtm"):
        out = torch.ops.genkernels.som_online_triton(w, x, order, lr, sigma, coords, p0, 0.0,
                                                     "gaussian", rule, metric)
        ref = reference.som_online(w, x, order, lr, sigma, coords, p0, 0.0, "gaussian", rule, metric)
        assert out.dtype == dtype
        torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_online_hexagonal_torus(dtype):
    # irrational period (cols * sqrt(3) / 2): fp64 maps must get it in fp64
    lattice = Lattice(5, 6, "hexagonal", periodic=True)
    (w, x, order, lr, sigma, _), _ = _online_case(2, 30, 4, 30, dtype)
    coords = lattice.coords(dtype=dtype, device=DEVICE)
    p0, p1 = lattice.periods
    out = torch.ops.genkernels.som_online_triton(w, x, order, lr, sigma, coords, p0, p1,
                                                 "gaussian", "som", "euclidean")
    ref = reference.som_online(w, x, order, lr, sigma, coords, p0, p1, "gaussian", "som")
    torch.testing.assert_close(out, ref, **TOL[dtype])


def test_online_ties_and_non_contiguous():
    # every node starts identical: each step's winner is decided by the tie rule alone,
    # and with wta only that node may move
    w = torch.zeros(2, 6, 5)
    x_full = torch.rand(12, 10)
    x = x_full[::2, ::2]
    order = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 1]])
    lr = torch.full((2, 4), 0.5)
    sigma = torch.ones(2, 4)
    coords = torch.stack([torch.arange(6) // 3, torch.arange(6) % 3], 1).float()
    args = [v.to(DEVICE) for v in (w, x, order, lr, sigma, coords)]
    out = torch.ops.genkernels.som_online_triton(*args, 0.0, 0.0, "gaussian", "wta", "euclidean")
    ref = reference.som_online(*args, 0.0, 0.0, "gaussian", "wta")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-7)
    assert out[:, 0].abs().sum() > 0  # the first step's tie went to node 0


def test_online_does_not_modify_its_input():
    (w, x, order, lr, sigma, coords), _ = _online_case(1, 10, 3, 5, torch.float32)
    before = w.clone()
    torch.ops.genkernels.som_online_triton(w, x, order, lr, sigma, coords, 0.0, 0.0,
                                           "gaussian", "som", "euclidean")
    assert torch.equal(w, before)


def test_opcheck():
    x, w = _data(9, 7, 5, torch.float32)
    torch.library.opcheck(torch.ops.genkernels.som_bmu_triton.default, (x, w, 2, "euclidean", False))
    torch.library.opcheck(torch.ops.genkernels.som_bmu_triton.default,
                          (x, w, 2, "cosine", False, "bf16"))
    torch.library.opcheck(torch.ops.genkernels.som_node_sums_triton.default, (x, w, "cosine", True))
    (wm, xo, order, lr, sigma, coords), _ = _online_case(2, 6, 5, 4, torch.float32, rows=2)
    torch.library.opcheck(torch.ops.genkernels.som_online_triton.default,
                          (wm, xo, order, lr, sigma, coords, 2.0, 0.0, "bubble", "som", "euclidean"))


def test_public_ops_with_triton_backend():
    x, w = _data(23, 17, 6, torch.float32)
    idx, dist = gk_ops.som_bmu(x, w, 2, "manhattan", backend="triton")
    ref_idx, ref_dist = reference.som_bmu(x, w, 2, "manhattan")
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist)

    sums, counts, dsum = gk_ops.som_node_sums(x, w, backend="triton")
    ref = reference.som_node_sums(x, w)
    torch.testing.assert_close(sums, ref[0])
    assert torch.equal(counts, ref[1])

    (wm, xo, order, lr, sigma, coords), periods = _online_case(2, 10, 4, 12, torch.float32, rows=2)
    out = gk_ops.som_online(wm, xo, order, lr, sigma, coords, periods, "triangle", backend="triton")
    ref = reference.som_online(wm, xo, order, lr, sigma, coords, *periods, "triangle")
    torch.testing.assert_close(out, ref)


def test_public_bmu_gradient_through_triton_backend():
    x, w = _data(11, 7, 4, torch.float64)
    x.requires_grad_(True)
    w.requires_grad_(True)
    _, dist = gk_ops.som_bmu(x, w, 2, backend="triton")
    dist.sum().backward()
    xr, wr = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    _, ref_dist = gk_ops.som_bmu(xr, wr, 2, backend="reference")
    ref_dist.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(w.grad, wr.grad)


def test_deterministic_node_sums_equal_the_reference():
    x = torch.randn(150, 7)
    x[3, 2] = float("nan")
    w = torch.randn(20, 7)
    x, w = x.to(DEVICE), w.to(DEVICE)
    for ignore_nan in (False, True):
        xin = x if ignore_nan else torch.nan_to_num(x)
        s, c, ds = gk_ops.som_node_sums(xin, w, ignore_nan=ignore_nan, deterministic=True,
                                                backend="triton")
        rs, rc, rds = reference.som_node_sums(xin, w, ignore_nan=ignore_nan)
        assert torch.equal(c, rc)
        assert torch.allclose(s, rs, rtol=1e-5, atol=1e-5)
        assert float(ds) == pytest.approx(float(rds), rel=1e-6)
