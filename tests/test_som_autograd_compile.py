"""Autograd through the BMU distances, and torch.compile(fullgraph=True) of the SOM ops."""
import pytest
import torch

import genkernels
from genkernels import ops

BACKENDS = [b for b in genkernels.available_backends("cpu") if b != "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan", "chebyshev"])
def test_gradcheck_bmu_distances(backend, metric):
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)

    def f(x, w):
        return ops.som_bmu(x, w, k=2, metric=metric, backend=backend)[1]

    assert torch.autograd.gradcheck(f, (x, w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bmu_gradient_trains_a_codebook(backend):
    # a SOM inside a neural net: pulling each winner towards its samples lowers the QE
    x = torch.randn(200, 3)
    w = torch.randn(8, 3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.5)
    first = None
    for _ in range(20):
        loss = ops.som_bmu(x, w, backend=backend)[1].pow(2).mean()
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first


def test_compile_fullgraph_bmu_and_node_sums():
    x = torch.randn(64, 5)
    w = torch.randn(12, 5)

    @torch.compile(fullgraph=True)
    def step(x, w):
        idx, dist = ops.som_bmu(x, w, k=2)
        sums, counts, _ = ops.som_node_sums(x, w)
        return idx, dist, sums / counts.clamp(min=1)[:, None]

    idx, dist, means = step(x, w)
    want_idx, want_dist = ops.som_bmu(x, w, k=2)
    assert torch.equal(idx, want_idx)
    assert torch.allclose(dist, want_dist, atol=1e-6)
    s, c, _ = ops.som_node_sums(x, w)
    assert torch.allclose(means, s / c.clamp(min=1)[:, None], atol=1e-6)


@pytest.mark.parametrize("n", [6, 0])
def test_compile_fullgraph_bmu_rejects_k_beyond_the_nodes(n):
    """k = K + 1 raises the library's ValueError in a fullgraph-compiled call as eagerly,
    not Dynamo's "Observed exception" (empty input too: the check is never dropped)."""
    x = torch.randn(n, 3)
    w = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"^k must be in \[1, 5\]; got 6$"):
        ops.som_bmu(x, w, k=6)
    step = torch.compile(lambda x, w: ops.som_bmu(x, w, k=6), fullgraph=True)
    with torch._inductor.config.patch(force_disable_caches=True):  # no graph cached before the fix
        with pytest.raises(ValueError, match=r"^k must be in \[1, 5\]; got 6$"):
            step(x, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_bmu_with_grad_requiring_inputs(backend):
    """A SOM layer inside a compiled training step: x and the codebook require grad, the
    graph is whole (no torch.autograd.grad inside it), and the gradients equal eager ones."""
    torch.manual_seed(0)
    x = torch.randn(24, 5, requires_grad=True)
    w = torch.randn(7, 5, requires_grad=True)

    def loss(x, w):
        idx, dist = ops.som_bmu(x, w, k=2, backend=backend)
        return dist.pow(2).sum() + idx.float().sum() * 0

    compiled = torch.compile(loss, fullgraph=True)
    got = compiled(x, w)
    gx, gw = torch.autograd.grad(got, (x, w))
    want = loss(x, w)
    ex, ew = torch.autograd.grad(want, (x, w))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gw, ew)
