"""The soft SOM (genkernels.ops.som_soft, genkernels/som/soft_reference.py): the fused
online-softmax forward and the explicit backward against the definition differentiated by
autograd, over odd shapes and node tiles; the Euclidean gradient at x = l; gradcheck and
torch.compile through the op; bad input."""

import pytest
import torch
from helpers import DEVICE, needs

import genkernels
from genkernels.som import soft_reference as R

BACKENDS = [pytest.param("reference"), pytest.param("cpu", marks=needs("cpu")),
            pytest.param("triton", marks=needs("triton"))]

SHAPES = [(1, 1, 1, 1), (5, 3, 7, 2), (4, 6, 300, 3), (17, 2, 5, 4), (0, 3, 4, 2)]


def _problem(b, d, k, c, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    nodes = torch.randn(k, d, generator=g, dtype=dtype)
    values = torch.randn(k, c, generator=g, dtype=dtype)
    return x, nodes, values, torch.tensor(1.3, dtype=dtype)


@pytest.mark.parametrize("distance", R.DISTANCES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile", [1, 3, 256])
def test_fused_forward_and_explicit_backward_equal_the_definition(distance, shape, tile):
    x, nodes, values, beta = _problem(*shape)
    if shape[0] and shape[2] > 1:
        nodes[1] = x[0]  # a row exactly at a node: distance 0
    leaves = [t.clone().requires_grad_() for t in (x, nodes, values, beta)]
    want = R.soft_som(*leaves, distance)
    grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, grad, allow_unused=True) if want.numel() else \
        [torch.zeros_like(t) for t in leaves]
    out, m, z = R.soft_som_forward(x, nodes, values, beta, distance, tile)
    torch.testing.assert_close(out, want.detach(), rtol=1e-12, atol=1e-12)
    got = R.soft_som_backward(grad, x, nodes, values, beta, out, m, z, distance, tile)
    for name, a, b in zip(("x", "nodes", "values", "beta"), got, want_grads):
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_euclidean_gradient_at_a_node_is_zero_there(backend):
    """x = l_k: d_k has no derivative; its contribution to the gradient is defined as 0, so
    with a single node (the output is g whatever x is) every input gradient is 0."""
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64, device=DEVICE, requires_grad=True)
    nodes = x.detach().clone().requires_grad_()
    values = torch.tensor([[2.0, 3.0]], dtype=torch.float64, device=DEVICE, requires_grad=True)
    out = genkernels.ops.som_soft(x, nodes, values, beta=4.0, backend=backend)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(nodes.grad, torch.zeros_like(nodes))
    assert torch.isfinite(values.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("distance", R.DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 3, 7, 2), (1, 1, 1, 1), (9, 40, 300, 3), (3, 2, 5, 5), (0, 2, 3, 2)])
def test_every_backend_matches_the_definition(backend, distance, dtype, shape):
    x, nodes, values, beta = (t.to(DEVICE) for t in _problem(*shape, dtype=dtype, seed=3))
    x = x[:, :].t().contiguous().t() if x.shape[0] else x  # column-major rows: any strides
    got = genkernels.ops.som_soft(x, nodes, values, beta, distance, backend=backend)
    want = R.soft_som(x, nodes, values, beta, distance).to(dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-6)
    assert got.dtype == dtype and got.shape == (shape[0], shape[3])
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_is_differentiable_in_every_input(backend):
    x, nodes, values, beta = (t.to(DEVICE).requires_grad_() for t in _problem(3, 2, 5, 2))
    for distance in R.DISTANCES:
        assert torch.autograd.gradcheck(
            lambda a, b, c, d: genkernels.ops.som_soft(a, b, c, d, distance, backend=backend), (x, nodes, values, beta))


@needs("triton")
def test_triton_op_passes_opcheck():
    from genkernels.som import soft_triton  # noqa: F401 (registers the ops)
    x, nodes, values, beta = (t.to(DEVICE) for t in _problem(4, 3, 6, 2))
    for squared in (False, True):
        torch.library.opcheck(torch.ops.genkernels.som_soft_triton.default, (x, nodes, values, beta, squared))
        args = tuple(t.clone().requires_grad_() for t in (x, nodes, values, beta)) + (squared,)
        torch.library.opcheck(torch.ops.genkernels.som_soft_triton.default, args)
        out, m, z = torch.ops.genkernels.som_soft_triton(x, nodes, values, beta, squared)
        torch.library.opcheck(torch.ops.genkernels.som_soft_backward_triton.default,
                              (torch.randn_like(out), x, nodes, values, beta, out, m, z, squared))


# The Triton backward against the reference VJP (soft_som_backward), on the same forward
# output: B = 1, K = 1, D = 1 with C = 1, C = 3, K over two node tiles and B over two row
# tiles (D = 3: 16 x 32 tiles), no rows; the first row sits exactly on node 1.
BACKWARD_SHAPES = [(1, 3, 5, 2), (4, 2, 1, 3), (5, 1, 9, 1), (3, 4, 6, 3), (20, 3, 37, 2), (0, 2, 4, 2)]


def _triton_backward_case(shape, dtype, distance, seed=5):
    x, nodes, values, beta = (t.to(DEVICE) for t in _problem(*shape, seed=seed))
    if shape[0] and shape[2] > 1:
        nodes[1] = x[0]
    x, nodes, values = x.to(dtype), nodes.to(dtype), values.to(dtype)
    beta = beta.to(R.acc_dtype(dtype))
    squared = distance == "squared"
    out, m, z = torch.ops.genkernels.som_soft_triton(x, nodes, values, beta, squared)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return (grad, x, nodes, values, beta, out, m, z), squared


def _assert_backward_equal(got, want, tol):
    for name, a, b in zip(("grad_x", "grad_nodes", "grad_values", "grad_beta"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, **tol, msg=name)


@needs("triton")
@pytest.mark.parametrize("distance", R.DISTANCES)
@pytest.mark.parametrize("shape", BACKWARD_SHAPES)
def test_triton_backward_equals_the_reference_vjp(shape, distance):
    from genkernels.som import soft_triton  # noqa: F401 (registers the ops)
    args, squared = _triton_backward_case(shape, torch.float64, distance)
    got = torch.ops.genkernels.som_soft_backward_triton(*args, squared)
    _assert_backward_equal(got, R.soft_som_backward(*args, distance), dict(rtol=1e-12, atol=1e-12))


@needs("triton")
@pytest.mark.parametrize("distance", R.DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_backward_in_low_precision_accumulates_in_fp32(dtype, distance):
    """fp32, fp16 and bf16 inputs: loaded as they are, the arithmetic and the gradients in
    fp32, as the reference VJP's on the same inputs."""
    from genkernels.som import soft_triton  # noqa: F401 (registers the ops)
    args, squared = _triton_backward_case((20, 3, 37, 2), dtype, distance)
    got = torch.ops.genkernels.som_soft_backward_triton(*args, squared)
    assert all(g.dtype == torch.float32 for g in got)
    _assert_backward_equal(got, R.soft_som_backward(*args, distance), dict(rtol=1e-5, atol=1e-5))


@needs("triton")
def test_triton_backward_row_splits_any_strides_and_determinism():
    """The node kernel's rows split in parts (min_split_rows lowered: 3 splits of 16 rows
    here) add up to the unsplit sums; an expanded gradient (stride 0, as from out.sum()) and
    strided inputs read right; two runs agree bit for bit."""
    from genkernels.som.soft_triton import som_soft_bwd
    args, squared = _triton_backward_case((40, 3, 37, 2), torch.float64, "euclidean")
    grad, x, nodes, values, beta, out, m, z = args
    want = R.soft_som_backward(*args, "euclidean")
    grad = torch.ones((1, 1), dtype=grad.dtype, device=DEVICE).expand(grad.shape)
    want_ones = R.soft_som_backward(grad, x, nodes, values, beta, out, m, z, "euclidean")
    strided = (x.t().contiguous().t(), nodes.t().contiguous().t(), values.repeat_interleave(2, 1)[:, ::2])
    unsplit = som_soft_bwd(args[0], x, nodes, values, beta, out, m, z, squared)
    split = som_soft_bwd(args[0], x, nodes, values, beta, out, m, z, squared, min_split_rows=16)
    again = som_soft_bwd(args[0], x, nodes, values, beta, out, m, z, squared, min_split_rows=16)
    tol = dict(rtol=1e-12, atol=1e-12)
    _assert_backward_equal(unsplit, want, tol)
    _assert_backward_equal(split, want, tol)
    assert all(torch.equal(a, b) for a, b in zip(split, again))
    _assert_backward_equal(som_soft_bwd(grad, *strided, beta, out, m, z, squared, min_split_rows=16), want_ones, tol)


@needs("triton")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_gradients_of_low_precision_inputs_follow_the_reference(dtype):
    """Through the public op: the Triton backward's fp32 gradients cast to the inputs' dtype
    equal the reference backend's (its autograd, also in fp32) within that dtype's rounding."""
    leaves = {}
    for backend in ("reference", "triton"):
        x, nodes, values, _ = (t.to(DEVICE, dtype).requires_grad_() for t in _problem(6, 3, 9, 2, seed=7))
        genkernels.ops.som_soft(x, nodes, values, 1.3, backend=backend).float().square().sum().backward()
        leaves[backend] = (x.grad, nodes.grad, values.grad)
    for name, a, b in zip(("x", "nodes", "values"), leaves["triton"], leaves["reference"]):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3, msg=name)


def test_large_beta_does_not_overflow_and_approaches_the_winner():
    x, nodes, values, _ = _problem(6, 3, 9, 2, torch.float32)
    out = genkernels.ops.som_soft(x, nodes, values, beta=1e30)
    winner = torch.cdist(x, nodes).argmin(1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, values[winner])


def test_float32_follows_float64():
    x, nodes, values, beta = _problem(8, 4, 40, 3)
    want = genkernels.ops.som_soft(x, nodes, values, beta)
    got = genkernels.ops.som_soft(x.float(), nodes.float(), values.float(), float(beta))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiles_fullgraph(backend):
    x, nodes, values, _ = (t.to(DEVICE) for t in _problem(4, 3, 6, 2, torch.float32))
    nodes.requires_grad_()
    fn = torch.compile(lambda a, b, c: genkernels.ops.som_soft(a, b, c, 2.0, backend=backend), fullgraph=True,
                       backend="eager")
    out = fn(x, nodes, values)
    torch.testing.assert_close(out, genkernels.ops.som_soft(x, nodes, values, 2.0, backend="reference"))
    out.sum().backward()
    assert nodes.grad is not None and torch.isfinite(nodes.grad).all()


@pytest.mark.parametrize("call, error, match", [
    (lambda x, n, v: genkernels.ops.som_soft(x, n, v, beta=0.0), ValueError, "beta must be > 0"),
    (lambda x, n, v: genkernels.ops.som_soft(x, n, v, beta=float("nan")), ValueError, "beta must be > 0"),
    (lambda x, n, v: genkernels.ops.som_soft(x, n, v, beta="1"), TypeError, "beta must be a positive number"),
    (lambda x, n, v: genkernels.ops.som_soft(x, n, v, beta=torch.ones(2)), ValueError, "one number"),
    (lambda x, n, v: genkernels.ops.som_soft(x, n[:, :2], v), ValueError, "nodes has 2 features"),
    (lambda x, n, v: genkernels.ops.som_soft(x, n[:0], v[:0]), ValueError, "at least one node"),
    (lambda x, n, v: genkernels.ops.som_soft(x, n, v[:3]), ValueError, "one row per node"),
    (lambda x, n, v: genkernels.ops.som_soft(x, n.double(), v), TypeError, "dtype"),
    (lambda x, n, v: genkernels.ops.som_soft(x, n, v, distance="cosine"), ValueError, "distance"),
    (lambda x, n, v: genkernels.ops.som_soft(x.fill_(float("nan")), n, v), ValueError, "x contains NaN"),
])
def test_bad_input_is_named(call, error, match):
    x, nodes, values, _ = _problem(4, 3, 6, 2, torch.float32)
    with pytest.raises(error, match=match):
        call(x, nodes, values)


def test_soft_som_layer_trains_inside_a_network():
    """SoftSOM in front of a linear layer: the loss falls, gradients reach the embeddings,
    a learnable beta and per-node values; (..., D) inputs keep their leading shape."""
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    layer = genkernels.SoftSOM((4, 4), 2, values=torch.randn(16, 3), beta=2.0, learnable_beta=True, seed=1)
    net = torch.nn.Sequential(layer, torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    for p in (layer.nodes, layer.values, layer.log_beta):
        assert isinstance(p, torch.nn.Parameter) and p.grad is not None and torch.isfinite(p.grad).all()
    assert layer(torch.randn(5, 7, 2)).shape == (5, 7, 3)


def test_soft_som_defaults_are_grid_coordinates_and_fixed_beta():
    layer = genkernels.SoftSOM((3, 5), 4, beta=1e6, seed=0)
    assert tuple(layer.values.shape) == (15, 2) and "values" in dict(layer.named_buffers())
    assert "log_beta" in dict(layer.named_buffers())
    # a very cold layer returns the winning node's grid coordinate
    x = layer.nodes.detach()[[3, 11]] + 1e-4
    torch.testing.assert_close(layer(x), layer.values[[3, 11]])


def test_som_trained_embedding_follows_the_batch_rule_and_only_in_training():
    """train_embedding="som": each training forward is one damped batch-rule step (the
    SOM ops' node sums smoothed by the scheduled sigma, lerped by the scheduled rate), the
    output uses the updated map, the input still gets its gradient, eval mode and steps
    past som_steps change nothing, and an earlier forward's graph keeps its map."""
    from genkernels.som import ops as som_ops
    torch.manual_seed(0)
    layer = genkernels.SoftSOM((3, 4), 2, beta=2.0, train_embedding="som", som_steps=3, sigma=(2.0, 0.5),
                               learning_rate=(0.8, 0.2), seed=0)
    assert "nodes" in dict(layer.named_buffers()) and not list(layer.parameters())
    assert [layer.som_rates(s) for s in (0, 2)] == [pytest.approx((0.8, 2.0)), pytest.approx((0.2, 0.5))]
    x = torch.randn(40, 2, requires_grad=True)
    before = layer.nodes.clone()
    out = layer(x)
    sums, counts, _ = som_ops.som_node_sums(x.detach(), before)
    batch = som_ops.som_smooth(sums, counts, before, layer.lattice.coords(torch.float32), (0.0, 0.0), "gaussian",
                               2.0, (3, 4))
    torch.testing.assert_close(layer.nodes, before + 0.8 * (batch - before))
    torch.testing.assert_close(out, genkernels.ops.som_soft(x.detach(), layer.nodes, layer.values, 2.0))
    second = layer(x)  # a second step: the first graph still backpropagates (its map is kept)
    (out.sum() + second.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    layer.eval()
    frozen = layer.nodes.clone()
    layer(x)
    assert torch.equal(layer.nodes, frozen) and int(layer.som_step) == 2
    layer.train()
    assert layer.som_update(x) and not layer.som_update(x)  # the third step, then the map is fixed
    assert int(layer.som_step) == 3
    state = layer.state_dict()
    assert int(state["som_step"]) == 3 and "nodes" in state


def test_som_trained_embedding_organises_the_map_on_the_spiral():
    """A 6x6 map organised by the batch rule on minibatches of the spiral becomes
    topographic: grid neighbours end close in input space (their mean distance falls below
    a third of the random initial map's) while the map stays on the data (quantization
    error no worse than the random map's, which N(0, 1) draws place well on this data)."""
    from genkernels.data import spirals
    x = torch.from_numpy(spirals(600, seed=0)[0]).float()
    layer = genkernels.SoftSOM((6, 6), 2, beta=4.0, train_embedding="som", som_steps=30, seed=0)
    grid = layer.nodes.view(6, 6, 2)
    qe = lambda: float(torch.cdist(x, layer.nodes).min(1).values.mean())  # noqa: E731
    spread = lambda g: float(torch.cat([(g[1:] - g[:-1]).norm(dim=-1).flatten(),  # noqa: E731
                                        (g[:, 1:] - g[:, :-1]).norm(dim=-1).flatten()]).mean())
    start_qe, start_spread = qe(), spread(grid)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        layer(x[torch.randint(0, 600, (64,), generator=g)])
    assert spread(layer.nodes.view(6, 6, 2)) < start_spread / 3
    assert qe() < 1.25 * start_qe


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(train_embedding="som"), ValueError, "som_steps is required"),
    (dict(som_steps=5), ValueError, "som_steps applies"),
    (dict(train_embedding="adam"), ValueError, "train_embedding"),
    (dict(train_embedding="som", som_steps=0), ValueError, "som_steps"),
    (dict(train_embedding="som", som_steps=5, sigma=-1.0), ValueError, "sigma"),
    (dict(train_embedding="som", som_steps=5, learning_rate=1.5), ValueError, "learning_rate must be <= 1"),
    (dict(train_embedding="som", som_steps=5, learning_rate=(0.5, 0.1, 0.0)), ValueError, "learning_rate"),
    (dict(train_embedding="som", som_steps=5, sigma=lambda t: t), TypeError, "sigma"),
    (dict(train_embedding="som", som_steps=5, schedule="cosine"), ValueError, "schedule"),
])
def test_som_trained_embedding_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        genkernels.SoftSOM((2, 3), 4, **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(grid=(0, 3)), ValueError, "grid"),
    (dict(n_features=0), ValueError, "n_features"),
    (dict(beta=-1.0), ValueError, "beta"),
    (dict(distance="cosine"), ValueError, "distance"),
    (dict(values=torch.zeros(5, 2)), ValueError, "values must be a \\(6, C\\)"),
    (dict(values=torch.full((6, 2), float("inf"))), ValueError, "NaN or Inf"),
    (dict(learnable_beta=1), TypeError, "learnable_beta"),
    (dict(dtype=torch.float16), TypeError, "dtype"),
])
def test_soft_som_bad_arguments(kwargs, error, match):
    args = {"grid": (2, 3), "n_features": 4, **kwargs}
    with pytest.raises(error, match=match):
        genkernels.SoftSOM(**args)
    with pytest.raises(ValueError, match="n_features = 4"):
        genkernels.SoftSOM((2, 3), 4)(torch.zeros(3, 5))


def test_spirals_data():
    from genkernels.data import spirals
    x, y = spirals(2000, arms=2, noise=0.2, turns=2, seed=0)
    assert x.shape == (2000, 2) and x.dtype.name == "float32" and y.dtype.name == "int64"
    assert sorted(set(y.tolist())) == [0, 1] and (y == 0).sum() == 1000
    again, _ = spirals(2000, arms=2, noise=0.2, turns=2, seed=0)
    assert (x == again).all() and not (x == spirals(2000, seed=1)[0]).all()
    clean, labels = spirals(300, arms=3, noise=0.0, turns=1.5, seed=2)
    radius = (clean ** 2).sum(1) ** 0.5
    assert radius.min() >= 0.25 - 1e-6 and radius.max() <= 1.5 + 1e-6 and set(labels.tolist()) == {0, 1, 2}
    for kwargs, match in ((dict(n=0), "n must"), (dict(arms=1), "arms must"), (dict(noise=-1.0), "noise"),
                          (dict(turns=0.2), "turns must be > 0.25")):
        with pytest.raises(ValueError, match=match):
            spirals(**kwargs)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_soft_som_layer_under_bf16_autocast(backend):
    """A network with a SoftSOM between bf16 autocast layers: the layer takes their bf16
    output, computes in fp32 and returns it in the input's dtype; every gradient is at most
    twice as far from the fp32 network's as PyTorch's own bf16 network without the layer's
    kernels (the reference backend under the same autocast) is, plus bf16 rounding."""
    needs(backend, "cpu")

    def run(layer_backend, autocast):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(),
                                  genkernels.SoftSOM((4, 4), 16, beta=2.0, learnable_beta=True, seed=0,
                                                     backend=layer_backend),
                                  torch.nn.Linear(2, 2))
        x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
        y = torch.arange(32) % 2
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x)
            loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        return out.dtype, [p.grad for p in net.parameters()]

    _, exact = run("reference", False)
    dtype, ours = run(backend, True)
    _, torch_bf16 = run("reference", True)
    assert dtype == torch.bfloat16
    for got, want, base in zip(ours, exact, torch_bf16):
        err, base_err = (got - want).abs().max(), (base - want).abs().max()
        assert err <= 2 * base_err + 8e-3 * want.abs().max(), (float(err), float(base_err))
