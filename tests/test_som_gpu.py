"""GPU backends on a CUDA device (marked gpu: skipped where no GPU is present)."""
import functools

import pytest
import torch
from tolerances import TOL

import genkernels
from genkernels import ops
from genkernels.som import Lattice, reference

pytestmark = pytest.mark.gpu


def _online_case(m, k_side, d, t, dtype, periodic=False, topology="rectangular"):
    g = torch.Generator().manual_seed(0)
    lat = Lattice(k_side, k_side + 2, topology, periodic)
    w = torch.randn(m, lat.n_nodes, d, generator=g, dtype=dtype)
    x = torch.randn(300, d, generator=g, dtype=dtype)
    order = torch.randint(0, 300, (m, t), generator=g)
    acc = reference.acc_dtype(dtype)
    lr = torch.linspace(0.5, 0.01, t, dtype=acc).repeat(m, 1)
    sigma = torch.linspace(3.0, 1.0, t, dtype=acc).repeat(m, 1) * torch.linspace(1, 2, m, dtype=acc)[:, None]
    return w, x, order, lr, sigma, lat


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("rule,neighborhood", [(r, n) for r in reference.RULES for n in reference.NEIGHBORHOODS
                                               if not (r == "wtm" and n == "mexican_hat")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_online_matches_reference_step_for_step(backend, neighborhood, rule, dtype):
    if backend not in genkernels.available_backends("cuda"):
        pytest.skip(f"{backend} backend not available")
    w, x, order, lr, sigma, lat = _online_case(3, 6, 17, 200, dtype, periodic=True)
    coords = lat.coords(reference.acc_dtype(dtype))
    args = (lat.periods, neighborhood, rule)
    xc, cc = x.cuda(), coords.cuda()
    if dtype == torch.float64:
        # the whole persistent 200-step run against the reference
        want = reference.som_online(w, x, order, lr, sigma, coords, *lat.periods, neighborhood, rule)
        got = ops.som_online(w.cuda(), xc, order.cuda(), lr.cuda(), sigma.cuda(), cc, *args,
                             backend=backend)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-10)
        return
    # fp32: every step from the reference's state of the step before, so rounding cannot
    # compound. Steps whose winner is a near-tie (the two nearest nodes within 1e-5 of
    # each other, relatively, in fp64, but not equal) are skipped: there the last bit of a distance
    # summed in another order decides the winner -- the broad Gaussian neighbourhoods of
    # this case pull nodes together until some nearly coincide.
    state, compared = w, 0
    for t in range(order.shape[1]):
        step = slice(t, t + 1)
        want = reference.som_online(state, x, order[:, step], lr[:, step], sigma[:, step], coords,
                                    *lat.periods, neighborhood, rule)
        near_tie = False
        for m in range(state.shape[0]):
            rho = reference.pairwise_distances(x[order[m, t]][None].double(), state[m].double(),
                                               "euclidean")[0]
            best = torch.topk(rho, 2, largest=False).values
            gap = float(best[1] - best[0])
            near_tie |= 0 < gap <= 1e-5 * float(best[0])  # exact ties (coincident nodes) go to the lowest index everywhere
        if not near_tie:
            got = ops.som_online(state.cuda(), xc, order[:, step].cuda(), lr[:, step].cuda(),
                                 sigma[:, step].cuda(), cc, *args, backend=backend)
            torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, t=t: f"step {t}: {m}")
            compared += 1
        state = want
    # (winner-takes-most with a broad Gaussian merges nodes fastest: 100 of its 200 steps
    # stay free of near-ties; the others 166 to 200)
    assert compared >= 0.4 * order.shape[1], f"only {compared} of {order.shape[1]} steps free of near-ties"


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_online_map_beyond_shared_memory(backend):
    if backend not in genkernels.available_backends("cuda"):
        pytest.skip(f"{backend} backend not available")
    # 100 x 100 x 64 floats = 2.56 MB: the map lives in global memory
    g = torch.Generator().manual_seed(1)
    lat = Lattice(100, 100)
    w = torch.randn(1, lat.n_nodes, 64, generator=g)
    x = torch.randn(50, 64, generator=g)
    order = torch.arange(50)[None]
    lr = torch.full((1, 50), 0.3)
    sigma = torch.full((1, 50), 4.0)
    want = reference.som_online(w, x, order, lr, sigma, lat.coords(torch.float32), 0.0, 0.0, "gaussian")
    got = ops.som_online(w.cuda(), x.cuda(), order.cuda(), lr.cuda(), sigma.cuda(),
                         lat.coords(torch.float32).cuda(), backend=backend)
    assert torch.allclose(got.cpu(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan", "chebyshev"])
@pytest.mark.parametrize("n,k_nodes,d", [(1, 1, 1), (97, 1025, 65), (4099, 4096, 256)])
def test_triton_bmu_on_gpu(metric, n, k_nodes, d):
    x = torch.randn(n, d)
    w = torch.randn(k_nodes, d)
    got = ops.som_bmu(x.cuda(), w.cuda(), min(2, k_nodes), metric, backend="triton")
    # the reference on 300 rows spread over every row block (the whole N x K x D
    # broadcast of the large case takes minutes on the CPU)
    rows = torch.unique(torch.cat([torch.randperm(n)[:298], torch.tensor([0, n - 1])]))
    want = reference.som_bmu(x[rows], w, min(2, k_nodes), metric)
    assert torch.equal(got[0].cpu()[rows], want[0])
    assert torch.allclose(got[1].cpu()[rows], want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_triton_tensor_core_bmu_equals_the_fp32_search(precision, metric):
    # the benchmark's shape scaled down (1M x 256 vs 4096 nodes in bench/bench_som.py):
    # the tensor-core search re-ranks its candidates exactly, so on random data (gaps far
    # beyond the tf32/bf16 error) it returns the fp32 path's indices and distances
    g = torch.Generator().manual_seed(0)
    x = torch.randn(65536, 256, generator=g).cuda()
    w = torch.randn(4096, 256, generator=g).cuda()
    for k in (1, 2):
        want_idx, want_dist = ops.som_bmu(x, w, k, metric, precision="fp32", backend="triton")
        idx, dist = ops.som_bmu(x, w, k, metric, precision=precision, backend="triton")
        assert torch.equal(idx, want_idx)
        # both re-rank from the definition in fp32: the same distances up to summation order
        torch.testing.assert_close(dist, want_dist, rtol=1e-6, atol=1e-6)


def test_triton_bf16_bmu_reranks_near_ties_on_gpu():
    # node 1 = node 0 + 2^-10: equal in bf16 (round to nearest), truly nearer every sample
    x = (2.0 + 0.5 * torch.rand(1000, 64)).cuda()
    w = torch.cat([torch.ones(1, 64), torch.ones(1, 64) + 2.0**-10, 5.0 + torch.rand(30, 64)]).cuda()
    idx, dist = ops.som_bmu(x, w, 2, precision="bf16", backend="triton")
    want_idx, want_dist = reference.som_bmu(x.cpu(), w.cpu(), 2)
    assert (want_idx[:, 0] == 1).all()
    assert torch.equal(idx.cpu(), want_idx)
    assert torch.allclose(dist.cpu(), want_dist, rtol=1e-5, atol=1e-5)


def test_node_sums_on_gpu_and_model_trains():
    x = torch.randn(5000, 32)
    w = torch.randn(256, 32)
    s, c, ds = ops.som_node_sums(x.cuda(), w.cuda(), backend="triton")
    rs, rc, rds = reference.som_node_sums(x, w)
    assert torch.equal(c.cpu(), rc)
    assert torch.allclose(s.cpu(), rs, rtol=1e-4, atol=1e-3)
    # one batch epoch from the same start: the same update up to summation order
    som = genkernels.SOM((16, 16), 32, device="cuda", seed=0).fit(x, epochs=1, verbose=False)
    cpu = genkernels.SOM((16, 16), 32, seed=0).fit(x, epochs=1, verbose=False)
    torch.testing.assert_close(som.weights.cpu(), cpu.weights, rtol=1e-4, atol=1e-4)
    # three epochs: a sample near a Voronoi border may move between nodes in one run and
    # not the other, so the runs are compared by what training achieves
    som = genkernels.SOM((16, 16), 32, device="cuda", seed=0).fit(x, epochs=3, verbose=False)
    cpu = genkernels.SOM((16, 16), 32, seed=0).fit(x, epochs=3, verbose=False)
    qe_gpu, qe_cpu = float(som.quantization_error(x.cuda())), float(cpu.quantization_error(x))
    assert qe_gpu == pytest.approx(qe_cpu, rel=1e-3)


# ------------------------------------------------ online: one block per map vs cooperative
# GENKERNELS_SOM_ONLINE_BLOCKS (read by the CUDA binding at every call) forces the kernel:
# "1" the one-block-per-map kernel, N > 1 the cooperative one with up to N blocks per map
# (fewer only when M * N blocks cannot be resident at once: 1048576 checks that clamp).
ONLINE_BLOCKS = {"one_block": "1", "cooperative_5": "5", "cooperative_max": "1048576"}
ONLINE_RULES = [(r, n) for r in reference.RULES for n in reference.NEIGHBORHOODS
                if not (r == "wtm" and n == "mexican_hat")]
# Winners must be far from ties along the whole run (checked on the fp64 trajectory): a
# relative gap between the best and second-best distance of 32 sqrt(D) ulps is far
# beyond what rounding (summation order, a trajectory that drifted by rounding) moves a
# distance, so every implementation picks the same node at every step and the
# comparison below measures rounding only.
def _min_winner_gap(dtype, d):
    return 32 * max(d, 1) ** 0.5 * torch.finfo(dtype).eps


def _winner_gap(w, x, order, lr, sigma, coords, periods, neighborhood, rule, metric):
    """Smallest (second-best - best) / best distance over every step of the fp64 run."""
    w, x, lr, sigma, coords = (t.double() for t in (w, x, lr, sigma, coords))
    gap = float("inf")
    for t in range(order.shape[1]):
        for m in range(w.shape[0]):
            rho = reference.pairwise_distances(x[order[m, t]][None], w[m], metric)[0]
            if rho.numel() > 1:
                v = torch.topk(rho, 2, largest=False).values
                gap = min(gap, float((v[1] - v[0]) / (v[0].abs() + 1e-30)))
        w = reference.som_online(w, x, order[:, t:t + 1], lr[:, t:t + 1], sigma[:, t:t + 1], coords,
                                 *periods, neighborhood, rule, metric)
    return gap


def _coop_case(m, rows, cols, d, t, dtype, rule, metric, periodic, seed, n,
               protos_from_nodes=False):
    """Samples near n random prototypes (with protos_from_nodes: n distinct nodes of the
    first map, a clear winner even on a first visit in high dimension), a per-map
    schedule. Radii small enough that nodes do not merge (merged nodes are near-ties):
    1.2 -> 0.5 lattice units, and for winner-takes-most (whose radius is a data-space
    distance) 0.2 -> 0.08 of the median sample-node distance."""
    g = torch.Generator().manual_seed(seed)
    lat = Lattice(rows, cols, "rectangular", periodic)
    w = torch.rand(m, lat.n_nodes, d, generator=g, dtype=torch.float64)
    if protos_from_nodes:
        protos = w[0, torch.randperm(lat.n_nodes, generator=g)[:n]]
    else:
        protos = torch.rand(n, d, generator=g, dtype=torch.float64)
    x = protos + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)
    order = torch.randint(0, n, (m, t), generator=g)
    acc = reference.acc_dtype(dtype)
    scale = 1.0
    if rule == "wtm":
        scale = 0.2 / 1.2 * float(reference.pairwise_distances(x, w[0], metric).median())
    lr = torch.linspace(0.1, 0.01, t, dtype=acc)[None] * torch.linspace(1.0, 0.5, m, dtype=acc)[:, None]
    sigma = (scale * torch.linspace(1.2, 0.5, t, dtype=acc)[None]
             * torch.linspace(1.0, 1.5, m, dtype=acc)[:, None])
    return (w.to(dtype), x.to(dtype), order, lr.contiguous(), sigma.contiguous(), lat.coords(acc),
            lat.periods)


@functools.cache
def _conditioned_case(m, rows, cols, d, t, dtype, neighborhood, rule, metric="euclidean",
                      periodic=False, n=64, protos_from_nodes=False):
    """The case of the first seed whose run has no winner closer to a tie than
    _min_winner_gap (deterministic: the check runs on the fp64 reference)."""
    for seed in range(8):
        case = _coop_case(m, rows, cols, d, t, dtype, rule, metric, periodic, seed, n,
                          protos_from_nodes)
        if _winner_gap(*case, neighborhood, rule, metric) > _min_winner_gap(dtype, d):
            return case
    raise AssertionError("no well-conditioned seed: make the case less tie-prone")


def _assert_online_on_gpu(case, neighborhood, rule, metric="euclidean"):
    """The CUDA backend step for step against the reference. fp64: TOL. fp32: rounding
    (FMA, summation order, fast-math exp/sqrt/division) compounds over the steps (a
    Mexican hat can grow weights by orders of magnitude), so the error relative to the
    fp64 run is bounded by twice the fp32 reference's own plus 1e-6, as in
    test_som_cpu.py."""
    w, x, order, lr, sigma, coords, periods = case
    got = ops.som_online(w.cuda(), x.cuda(), order.cuda(), lr.cuda(), sigma.cuda(), coords.cuda(),
                         periods, neighborhood, rule, metric, backend="cuda").cpu()
    assert got.dtype == w.dtype and got.shape == w.shape
    want = reference.som_online(w, x, order, lr, sigma, coords, *periods, neighborhood, rule, metric)
    if w.dtype == torch.float64:
        torch.testing.assert_close(got, want, **TOL[torch.float64])
        return
    want64 = reference.som_online(w.double(), x.double(), order, lr.double(), sigma.double(),
                                  coords.double(), *periods, neighborhood, rule, metric)
    scale = want64.abs() + 1
    err = float(((got.double() - want64).abs() / scale).max())
    bound = 2 * float(((want.double() - want64).abs() / scale).max()) + 1e-6
    assert err <= bound, f"error {err:.3e} > bound {bound:.3e}"


def _needs_cuda_backend():
    if "cuda" not in genkernels.available_backends("cuda"):
        pytest.skip("cuda backend not available")


@pytest.mark.parametrize("blocks", ONLINE_BLOCKS.values(), ids=ONLINE_BLOCKS.keys())
@pytest.mark.parametrize("rule,neighborhood", ONLINE_RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_online_kernels_match_reference(monkeypatch, blocks, rule, neighborhood, dtype):
    # K = 48 nodes over 5 blocks (slices of 9 and 10), torus, D = 17 (groups of 32 lanes
    # with 15 idle), three maps with their own schedules
    _needs_cuda_backend()
    monkeypatch.setenv("GENKERNELS_SOM_ONLINE_BLOCKS", blocks)
    case = _conditioned_case(3, 6, 8, 17, 200, dtype, neighborhood, rule, periodic=True)
    _assert_online_on_gpu(case, neighborhood, rule)


@pytest.mark.parametrize("blocks", ONLINE_BLOCKS.values(), ids=ONLINE_BLOCKS.keys())
@pytest.mark.parametrize("metric", ["cosine", "manhattan", "chebyshev"])
@pytest.mark.parametrize("rule", ["som", "wtm"])
def test_online_kernels_other_metrics(monkeypatch, blocks, metric, rule):
    _needs_cuda_backend()
    monkeypatch.setenv("GENKERNELS_SOM_ONLINE_BLOCKS", blocks)
    case = _conditioned_case(2, 5, 7, 23, 150, torch.float32, "gaussian", rule, metric)
    _assert_online_on_gpu(case, "gaussian", rule, metric)


@pytest.mark.parametrize("blocks", ["1", "2", "7", "64"])
@pytest.mark.parametrize("m,rows,cols,d,dtype", [
    (2, 1, 3, 9, torch.float32),      # K = 3 < B: most cooperative blocks own no node
    (3, 7, 5, 1, torch.float32),      # D = 1: one lane per node
    (1, 9, 11, 785, torch.float32),   # D = 785: 24 full feature rounds + a 17-lane tail
    (2, 4, 9, 785, torch.float64),
    (5, 13, 1, 40, torch.float64),    # K = 13 prime, one lattice column
])
def test_online_kernels_odd_shapes(monkeypatch, blocks, m, rows, cols, d, dtype):
    _needs_cuda_backend()
    monkeypatch.setenv("GENKERNELS_SOM_ONLINE_BLOCKS", blocks)
    for rule, neighborhood in [("som", "gaussian"), ("som", "bubble"), ("wtm", "triangle"), ("wta", "gaussian")]:
        case = _conditioned_case(m, rows, cols, d, 120, dtype, neighborhood, rule,
                                 periodic=rows > 1 and cols > 1)
        _assert_online_on_gpu(case, neighborhood, rule)


@pytest.mark.parametrize("blocks", ["1", "auto", "1048576"])
def test_online_kernels_mnist_sized_map(monkeypatch, blocks):
    # the benchmark's MNIST map: 40 x 40 nodes x 784 features (5 MB in fp32, beyond one
    # block's shared memory: global memory for one block, ~40 KB slices cooperatively)
    _needs_cuda_backend()
    monkeypatch.setenv("GENKERNELS_SOM_ONLINE_BLOCKS", blocks)
    case = _conditioned_case(1, 40, 40, 784, 300, torch.float32, "gaussian", "som", n=500,
                             protos_from_nodes=True)
    _assert_online_on_gpu(case, "gaussian", "som")


def test_online_cooperative_and_one_block_agree_on_a_multi_map_batch(monkeypatch):
    # 8 maps of 32 x 32 x 64 (256 KB each, beyond one block's shared memory), the two
    # kernels against each other and the reference
    _needs_cuda_backend()
    case = _conditioned_case(8, 32, 32, 64, 100, torch.float32, "gaussian", "som", n=256)
    outs = []
    for blocks in ("1", "auto"):
        monkeypatch.setenv("GENKERNELS_SOM_ONLINE_BLOCKS", blocks)
        _assert_online_on_gpu(case, "gaussian", "som")
        w, x, order, lr, sigma, coords, periods = case
        outs.append(ops.som_online(w.cuda(), x.cuda(), order.cuda(), lr.cuda(), sigma.cuda(),
                                   coords.cuda(), periods, backend="cuda").cpu())
    # the same per-node arithmetic (lane order, shuffle tree, update formula) in both
    torch.testing.assert_close(outs[0], outs[1], **TOL[torch.float32])


@pytest.mark.parametrize("value", ["0", "-3", "two", "4x"])
def test_online_blocks_variable_is_validated(monkeypatch, value):
    _needs_cuda_backend()
    monkeypatch.setenv("GENKERNELS_SOM_ONLINE_BLOCKS", value)
    case = _coop_case(1, 3, 3, 4, 5, torch.float32, "som", "euclidean", False, 0, 8)
    w, x, order, lr, sigma, coords, periods = (t.cuda() if isinstance(t, torch.Tensor) else t for t in case)
    with pytest.raises(RuntimeError, match="GENKERNELS_SOM_ONLINE_BLOCKS"):
        ops.som_online(w, x, order, lr, sigma, coords, periods, backend="cuda")
