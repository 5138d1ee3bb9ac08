"""GPU backends on a CUDA device (marked gpu: skipped where no GPU is present)."""
import pytest
import torch

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
    # fp32: every step from the reference's state of the step before. A whole fp32 run
    # can part from the reference for good at a near-tie (a BMU decided by the last bit
    # of a distance summed in another order); one step cannot.
    state = w
    for t in range(order.shape[1]):
        step = slice(t, t + 1)
        want = reference.som_online(state, x, order[:, step], lr[:, step], sigma[:, step], coords,
                                    *lat.periods, neighborhood, rule)
        got = ops.som_online(state.cuda(), xc, order[:, step].cuda(), lr[:, step].cuda(),
                             sigma[:, step].cuda(), cc, *args, backend=backend)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5, msg=lambda m, t=t: f"step {t}: {m}")
        state = want


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
