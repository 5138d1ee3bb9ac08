"""The SOM-masked layers (genkernels.SOMMaskLinear / SOMMaskConv2d, ops som_mask_linear /
som_mask_conv2d, genkernels/som/mask_reference.py): the mask tables; every backend against
the definition differentiated by autograd over odd and edge shapes (one output kept, all
kept, batch 1 and 0, odd spatial sizes, stride / padding / dilation, per-image and
per-position winners, no bias, no ReLU); gradcheck, opcheck, torch.compile; results that do
not depend on the thread count; the layers' SOM training (training mode) and its absence
(eval); bad input."""

import pytest
import torch
from helpers import DEVICE, HAS_EXT, needs, num_threads

import genkernels
from genkernels.som import mask_reference as R
from genkernels.som.lattice import Lattice

BACKENDS = [pytest.param("reference"), pytest.param("cpu", marks=needs("cpu")),
            pytest.param("triton", marks=needs("triton"))]
COMPILED = [p for p in BACKENDS if p.values[0] != "reference"]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}

# (grid, sigma, keep): keep = ("threshold", t) | ("top_k", k) | ("all", None)
KEEPS = {
    "five": ((10, 10), 1.0, ("threshold", 0.5)),     # winner and its 4 lattice neighbours
    "one": ((3, 4), 1.0, ("threshold", 1.0)),        # the winner alone
    "all": ((3, 4), 1.0, ("top_k", 12)),             # every output
    "top3": ((2, 5), 0.7, ("top_k", 3)),
    "single": ((1, 1), 1.0, ("threshold", 0.5)),     # one output, one node
}


def _tables(name, dtype=torch.float64, device=DEVICE):
    grid, sigma, (kind, value) = KEEPS[name]
    coords = Lattice(*grid).coords()
    kept, values = R.mask_tables(coords, sigma, **{kind: value}, dtype=dtype)
    return kept.to(device), values.to(device), grid[0] * grid[1]


def _linear_problem(b, d, keep, dtype=torch.float64, seed=0, bias=True):
    kept, values, c = _tables(keep, dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype).to(DEVICE)
    w = torch.randn(c, d, generator=g, dtype=dtype).to(DEVICE)
    bias_t = torch.randn(c, generator=g, dtype=dtype).to(DEVICE) if bias else None
    winners = torch.randint(c, (b,), generator=g).to(DEVICE)
    return x, w, bias_t, winners, kept, values


def _conv_problem(b, cin, hw, kernel, keep, per_position, stride=1, padding=0, dilation=1, dtype=torch.float64,
                  seed=0, bias=True):
    kept, values, c = _tables(keep, dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cin, *hw, generator=g, dtype=dtype).to(DEVICE)
    w = torch.randn(c, cin, *kernel, generator=g, dtype=dtype).to(DEVICE)
    bias_t = torch.randn(c, generator=g, dtype=dtype).to(DEVICE) if bias else None
    geo = [(s, s) if isinstance(s, int) else s for s in (stride, padding, dilation)]
    ho, wo = genkernels.som.mask_ops.conv_output_size(hw, kernel, *geo)
    winners = torch.randint(c, (b, ho * wo) if per_position else (b,), generator=g).to(DEVICE)
    return x, w, bias_t, winners, kept, values, geo


def _compare_with_definition(run, define, inputs, dtype, relu):
    """Forward and the gradients in every differentiable input against the definition."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    live = [t for t in leaves if t is not None]
    want = define(*leaves)
    got = run(*[t.detach().clone().requires_grad_() if t is not None else None for t in inputs], leaves=live)
    out, got_grads = got
    assert out.dtype == dtype and out.shape == want.shape
    torch.testing.assert_close(out, want.to(dtype).detach(), **TOL[dtype])
    grad = torch.randn(want.shape, dtype=dtype, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    if want.numel() == 0:
        return
    want_grads = torch.autograd.grad(want, live, grad.to(want.dtype))
    for a, b in zip(got_grads(grad), want_grads):
        torch.testing.assert_close(a, b.to(dtype), **TOL[dtype])


def _run_op(op, backend, relu, extra=()):
    def run(*inputs, leaves):
        out = op(*inputs, *extra, relu=relu, backend=backend)
        live = [t for t in inputs[:3] if t is not None]

        def grads(grad):
            return torch.autograd.grad(out, live, grad)
        return out, grads
    return run


# ------------------------------------------------------------------------------ tables
def test_tables_keep_the_winner_its_neighbours_or_the_top_k():
    coords = Lattice(10, 10).coords()
    kept, values = R.mask_tables(coords, 1.0, threshold=0.5)
    assert kept.shape == (100, 5)
    assert kept[55].tolist() == [45, 54, 55, 56, 65]
    torch.testing.assert_close(values[55].double(), torch.tensor([0.5 ** 0 * 0.6065306597126334] * 2 + [1.0]
                                                                 + [0.6065306597126334] * 2, dtype=torch.float64))
    assert kept[0].tolist() == [0, 1, 10, -1, -1] and values[0, 3:].tolist() == [0, 0]  # a corner: 3 kept
    one, one_v = R.mask_tables(coords, 1.0, threshold=1.0)
    assert one.shape == (100, 1) and torch.equal(one[:, 0], torch.arange(100)) and bool((one_v == 1).all())
    top, _ = R.mask_tables(coords, 1.0, top_k=1)
    assert torch.equal(top, one)
    every, every_v = R.mask_tables(coords, 1.0, top_k=100)
    assert torch.equal(every, torch.arange(100).expand(100, 100))
    torch.testing.assert_close(every_v.double(), R.neighborhood_table(coords, 1.0), rtol=1e-7, atol=0)
    # ties at equal lattice distance go to the lowest index: node 55's three nearest
    top3, _ = R.mask_tables(coords, 1.0, top_k=3)
    assert top3[55].tolist() == [45, 54, 55]


# ------------------------------------------------------------------------ against spec
# b, d, keep, relu and bias, dtype
LINEAR_CASES = [(5, 7, "top3", True, torch.float32), (1, 1, "single", False, torch.float64),
                (33, 70, "five", True, torch.float64), (4, 9, "one", True, torch.float64),
                (6, 3, "all", False, torch.float32), (0, 4, "top3", True, torch.float64),
                (70, 17, "five", False, torch.float32)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,d,keep,relu,dtype", LINEAR_CASES)
def test_linear_every_backend_matches_the_definition(backend, b, d, keep, relu, dtype):
    if backend == "triton" and b > 33:
        pytest.skip("interpreter: small shapes")
    x, w, bias_t, winners, kept, values = _linear_problem(b, d, keep, dtype, bias=relu)
    x = x.t().contiguous().t() if b else x  # column-major rows: any strides

    def define(x, w, bias_t):
        return R.som_mask_linear(x, w, bias_t, winners, kept, values, relu)

    op = genkernels.ops.som_mask_linear
    _compare_with_definition(lambda x, w, bias_t, leaves: _run_op(op, backend, relu)(
        x, w, bias_t, winners, kept, values, leaves=leaves), define, (x, w, bias_t), dtype, relu)


CONV_CASES = [
    # b, cin, (H, W), kernel, keep, stride, padding, dilation, dtype
    (2, 1, (5, 5), (3, 3), "top3", 1, 0, 1, torch.float32),
    (1, 2, (7, 6), (3, 3), "five", 2, 1, 1, torch.float64),
    (3, 3, (9, 8), (3, 2), "all", 1, (2, 1), 2, torch.float64),
    (2, 2, (6, 7), (1, 1), "one", 1, 0, 1, torch.float64),
    (1, 1, (4, 4), (4, 4), "single", 1, 0, 1, torch.float32),
    (0, 2, (5, 5), (3, 3), "top3", 1, 1, 1, torch.float64),
    (4, 4, (11, 13), (3, 3), "five", 1, 1, 1, torch.float32),
    (2, 2, (5, 37), (3, 3), "five", 1, 1, 1, torch.float64),   # output rows of 32 + 5 columns
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}k{c[3]}-{c[4]}-s{c[5]}p{c[6]}d{c[7]}"
                         f"-{str(c[8])[6:]}")
@pytest.mark.parametrize("per_position", [False, True], ids=["image", "patch"])
def test_conv_every_backend_matches_the_definition(backend, case, per_position):
    b, cin, hw, kernel, keep, stride, padding, dilation, dtype = case
    if backend == "triton" and b * cin * hw[0] * hw[1] > 200:
        pytest.skip("interpreter: small shapes")
    relu = not (per_position and keep == "one")  # one case without the ReLU
    x, w, bias_t, winners, kept, values, geo = _conv_problem(b, cin, hw, kernel, keep, per_position, stride,
                                                             padding, dilation, dtype, bias=keep != "all")
    x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides

    def define(x, w, bias_t):
        wn = winners if per_position else winners.reshape(b, 1)
        return R.som_mask_conv2d(x, w, bias_t, wn, kept, values, *geo, relu)

    op = genkernels.ops.som_mask_conv2d
    _compare_with_definition(lambda x, w, bias_t, leaves: _run_op(op, backend, relu, (stride, padding, dilation))(
        x, w, bias_t, winners, kept, values, leaves=leaves), define, (x, w, bias_t), dtype, relu)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frozen", ["weight", "bias"])
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_gradients_of_a_frozen_weight_or_bias(backend, frozen, layer):
    """Only one of weight and bias requires grad (a frozen layer part): the other's
    gradient is still the definition's, and the frozen one gets none."""
    if layer == "linear":
        x, w, bias_t, winners, kept, values = _linear_problem(5, 6, "top3")
        op, define, extra = genkernels.ops.som_mask_linear, R.som_mask_linear, ()
        args = (winners, kept, values)
        ref_args = args
    else:
        x, w, bias_t, winners, kept, values, geo = _conv_problem(2, 2, (5, 5), (3, 3), "five", True)
        op, define, extra = genkernels.ops.som_mask_conv2d, R.som_mask_conv2d, (1, 0, 1)
        args = (winners, kept, values)
        ref_args = (winners, kept, values, *geo)
    x, w, bias_t = (t.detach().requires_grad_(name != frozen) for name, t in (("x", x), ("weight", w),
                                                                             ("bias", bias_t)))
    live = [t for name, t in (("x", x), ("weight", w), ("bias", bias_t)) if name != frozen]
    out = op(x, w, bias_t, *args, *extra, relu=True, backend=backend)
    want = define(x, w, bias_t, *ref_args, True)
    grad = torch.randn(want.shape, dtype=want.dtype, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for a, b in zip(torch.autograd.grad(out, live, grad), torch.autograd.grad(want, live, grad)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_and_weight_rows_not_kept_get_exact_zeros(backend):
    x, w, bias_t, winners, kept, values = _linear_problem(9, 5, "five")
    winners.fill_(0)  # a corner: outputs 0, 1 and 10 kept
    w.requires_grad_()
    out = genkernels.ops.som_mask_linear(x, w, bias_t, winners, kept, values, relu=False, backend=backend)
    out.sum().backward()
    others = torch.ones(100, dtype=torch.bool)
    others[[0, 1, 10]] = False
    assert bool((out[:, others] == 0).all()) and bool((w.grad[others] == 0).all())
    assert bool((w.grad[~others] != 0).all())


def test_order_and_mask_commute_in_the_definition():
    x, w, bias_t, winners, kept, values = _linear_problem(20, 6, "five")
    a = R.som_mask_linear(x, w, bias_t, winners, kept, values, True, "mask_relu")
    b = R.som_mask_linear(x, w, bias_t, winners, kept, values, True, "relu_mask")
    assert torch.equal(a, b)


def test_explicit_vjps_equal_autograd_of_the_definition():
    x, w, bias_t, winners, kept, values = _linear_problem(11, 6, "five")
    leaves = [t.clone().requires_grad_() for t in (x, w, bias_t)]
    out = R.som_mask_linear(*leaves[:2], leaves[2], winners, kept, values, True)
    grad = torch.randn_like(out)
    want = torch.autograd.grad(out, leaves, grad)
    got = R.som_mask_linear_backward(grad, x, w, winners, kept, values, out.detach(), True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    x, w, bias_t, winners, kept, values, geo = _conv_problem(2, 3, (7, 8), (3, 3), "top3", True, 2, 1, 1)
    leaves = [t.clone().requires_grad_() for t in (x, w, bias_t)]
    out = R.som_mask_conv2d(*leaves[:2], leaves[2], winners, kept, values, *geo, True)
    grad = torch.randn_like(out)
    want = torch.autograd.grad(out, leaves, grad)
    got = R.som_mask_conv2d_backward(grad, x, w, winners, kept, values, out.detach(), *geo, True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ gradcheck, opcheck
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    # fast mode (random projections): the interpreter pays about a second per launch
    x, w, bias_t, winners, kept, values = _linear_problem(3, 3, "top3", seed=2)
    inputs = tuple(t.requires_grad_() for t in (x, w, bias_t))
    assert torch.autograd.gradcheck(lambda *a: genkernels.ops.som_mask_linear(
        *a[:2], a[2], winners, kept, values, backend=backend), inputs, fast_mode=True)
    for per_position in (False, True):
        x, w, bias_t, winners, kept, values, geo = _conv_problem(2, 2, (3, 4), (2, 3), "top3", per_position, 1,
                                                                 (1, 0), 1, seed=3)
        inputs = tuple(t.requires_grad_() for t in (x, w, bias_t))
        assert torch.autograd.gradcheck(lambda *a: genkernels.ops.som_mask_conv2d(
            *a[:2], a[2], winners, kept, values, 1, (1, 0), 1, backend=backend), inputs, fast_mode=True)


@pytest.mark.skipif(not HAS_EXT, reason="the C++ extension is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_cpu_ops(dtype):
    x, w, bias_t, winners, kept, values = _linear_problem(7, 5, "top3", dtype)
    for grad in (False, True):
        args = (x.clone().requires_grad_(grad), w.clone().requires_grad_(grad), bias_t, winners, kept, values, True)
        torch.library.opcheck(torch.ops.genkernels.som_mask_linear.default, args)
    out = torch.ops.genkernels.som_mask_linear(x, w, bias_t, winners, kept, values, True)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(torch.ops.genkernels.som_mask_linear_backward.default,
                              (torch.randn_like(out), x, w, winners, kept, values, out, True, mask))
    for per_position in (False, True):
        x, w, bias_t, winners, kept, values, geo = _conv_problem(2, 2, (5, 6), (3, 3), "top3", per_position, 1, 1,
                                                                 1, dtype)
        winners = winners.reshape(2, -1)
        for grad in (False, True):
            args = (x.clone().requires_grad_(grad), w.clone().requires_grad_(grad), None if grad else bias_t,
                    winners, kept, values, *geo, True)
            torch.library.opcheck(torch.ops.genkernels.som_mask_conv2d.default, args)
        out = torch.ops.genkernels.som_mask_conv2d(x, w, bias_t, winners, kept, values, *geo, True)
        torch.library.opcheck(torch.ops.genkernels.som_mask_conv2d_backward.default,
                              (torch.randn_like(out), x, w, winners, kept, values, out, *geo, True,
                               [True, False, True]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_forward_and_backward(backend):
    x, w, bias_t, winners, kept, values = _linear_problem(6, 5, "top3", torch.float32)
    w.requires_grad_()

    def f(x, w):
        return genkernels.ops.som_mask_linear(x, w, bias_t, winners, kept, values, backend=backend).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(x, w)
    got.backward()
    grad = w.grad.clone()
    w.grad = None
    want = f(x, w)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, w.grad)


# ------------------------------------------------------------------------- threads
@pytest.mark.skipif(not HAS_EXT, reason="the C++ extension is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_results_do_not_depend_on_the_thread_count(dtype):
    problems = [("linear", _linear_problem(700, 96, "five", dtype)),
                ("image", _conv_problem(40, 4, (16, 16), (3, 3), "five", False, 1, 1, 1, dtype)),
                ("patch", _conv_problem(40, 4, (16, 16), (3, 3), "five", True, 1, 1, 1, dtype))]
    for kind, p in problems:
        results = []
        for threads in (1, 2):
            with num_threads(threads):
                leaves = [t.clone().requires_grad_() for t in p[:3]]
                if kind == "linear":
                    out = genkernels.ops.som_mask_linear(*leaves, *p[3:], backend="cpu")
                else:
                    out = genkernels.ops.som_mask_conv2d(*leaves, *p[3:6], *p[6], backend="cpu")
                grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
                results.append((out, *grads))
        for one, two in zip(*results):
            assert torch.equal(one, two), kind


# --------------------------------------------------------------------------- layers
def _layer_backends():
    return [p for p in BACKENDS if p.values[0] != "triton"]


@pytest.mark.parametrize("backend", _layer_backends())
def test_linear_layer_trains_its_som_in_training_mode_only(backend):
    layer = genkernels.SOMMaskLinear(8, 12, sigma_organize=1.5, sigma_forward=1.0, top_k=3, seed=1, backend=backend)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    before = layer.synaptic.clone()
    layer.eval()
    layer(x)
    assert torch.equal(layer.synaptic, before) and not bool(layer.som_initialized)
    layer.train()
    layer(x)
    assert bool(layer.som_initialized) and not torch.equal(layer.synaptic, before)
    trained = layer.synaptic.clone()
    layer(x)
    assert not torch.equal(layer.synaptic, trained)
    layer.eval()
    trained = layer.synaptic.clone()
    layer(x)
    assert torch.equal(layer.synaptic, trained)


def test_batch_rule_with_learning_rate_one_is_kohonens_batch_rule():
    layer = genkernels.SOMMaskLinear(5, 6, sigma_organize=1.2, top_k=2, learning_rate=1.0, seed=3, backend="reference")
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    layer.train()
    layer(x)  # initialises from x, then one batch step
    w = layer.synaptic.clone()
    layer(x)
    idx = ((x[:, None, :] - w[None]) ** 2).sum(-1).argmin(1)
    coords = layer.lattice.coords()
    h = R.neighborhood_table(coords, 1.2).float()
    onehot = torch.nn.functional.one_hot(idx, 6).float()
    want = (h @ (onehot.T @ x)) / (h @ onehot.sum(0))[:, None]
    torch.testing.assert_close(layer.synaptic, want, rtol=1e-5, atol=1e-6)


def test_online_rule_trains_the_som():
    layer = genkernels.SOMMaskLinear(3, 4, top_k=1, rule="online", learning_rate=0.3, seed=0)
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(2))
    layer.train()
    layer(x)
    w = layer.synaptic.clone()
    layer(x)
    want = genkernels.som.reference.som_online(w[None].double(), x.double(), torch.arange(30)[None],
                                               torch.full((1, 30), 0.3, dtype=torch.float64),
                                               torch.full((1, 30), 1.0, dtype=torch.float64),
                                               layer.lattice.coords(), 0.0, 0.0, "gaussian", "som", "euclidean")[0]
    torch.testing.assert_close(layer.synaptic.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", _layer_backends())
@pytest.mark.parametrize("winner", ["image", "patch"])
def test_conv_layer_threshold_with_every_output_kept_equals_dense_mode(backend, winner):
    kwargs = dict(winner=winner, input_size=(6, 5) if winner == "image" else None, sigma_forward=1.3, seed=4,
                  backend=backend, dtype=torch.float64)
    dense = genkernels.SOMMaskConv2d(2, 6, 3, padding=1, mode="dense", **kwargs)
    sparse = genkernels.SOMMaskConv2d(2, 6, 3, padding=1, top_k=6, **kwargs)
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(3, 2, 6, 5, dtype=torch.float64)
    for layer in (dense, sparse):
        layer.eval()
    torch.testing.assert_close(sparse(x), dense(x), rtol=1e-12, atol=1e-12)
    dense.train()
    sparse.train()
    torch.testing.assert_close(sparse(x), dense(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sparse.synaptic, dense.synaptic, rtol=0, atol=0)


@pytest.mark.parametrize("backend", _layer_backends())
def test_layers_keep_five_of_a_hundred_and_learn(backend):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        genkernels.SOMMaskConv2d(1, 100, 3, padding=1, winner="image", input_size=(8, 8), sigma_organize=2.0,
                                 threshold=0.5, seed=0, backend=backend),
        torch.nn.Flatten(), torch.nn.Linear(100 * 64, 2))
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = (x.mean((1, 2, 3)) > 0).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = net(x)
        assert int((out[:0].numel())) == 0
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    active = (net[0](x) != 0).any(-1).any(-1).sum(1)
    assert int(active.max()) <= 5
    assert losses[-1] < 0.5 * losses[0]


def test_state_dict_round_trip_keeps_the_som():
    a = genkernels.SOMMaskLinear(4, 6, top_k=2, seed=5)
    a.train()
    a(torch.randn(10, 4))
    b = genkernels.SOMMaskLinear(4, 6, top_k=2, seed=9)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.synaptic, b.synaptic) and bool(b.som_initialized)
    a.eval()
    b.eval()
    x = torch.randn(7, 4)
    assert torch.equal(a(x), b(x))
    assert set(a.state_dict()) == {"weight", "bias", "synaptic", "som_initialized"}


def test_sigma_forward_setter_rebuilds_the_tables():
    layer = genkernels.SOMMaskLinear(4, 100, threshold=0.5, sigma_forward=1.0)
    assert layer.kept_outputs == 5
    layer.sigma_forward = 2.0
    assert layer.kept_outputs > 5
    layer.double()
    assert layer.mask_values.dtype == torch.float64 and layer.kept.dtype == torch.int64


# ------------------------------------------------------------------------ bad input
def test_bad_op_input_raises_naming_the_argument():
    x, w, bias_t, winners, kept, values = _linear_problem(5, 4, "top3")
    op = genkernels.ops.som_mask_linear
    cases = [
        (dict(x=x[:, :3]), ValueError, "features"),
        (dict(x=x.float()), TypeError, "weight has dtype"),
        (dict(x=x.long()), TypeError, "x must be a floating-point"),
        (dict(bias=bias_t[:3]), ValueError, "bias must have one value per output"),
        (dict(winners=winners.int()), TypeError, "winners must be an int64"),
        (dict(winners=winners[:3]), ValueError, r"winners must be \(5,\)"),
        (dict(winners=winners + 100), ValueError, r"winners must lie in \[0, 10\)"),
        (dict(kept=kept + 20), ValueError, "kept must hold output indices"),
        (dict(kept=kept.flip(1)), ValueError, "ascending"),
        (dict(values=-values), ValueError, "values must be finite and >= 0"),
        (dict(values=values[:, :2]), ValueError, "values must have kept's shape"),
        (dict(values=values.float()), TypeError, "values has dtype"),
    ]
    base = dict(x=x, weight=w, bias=bias_t, winners=winners, kept=kept, values=values)
    for change, error, match in cases:
        args = {**base, **change}
        with pytest.raises(error, match=match):
            op(args["x"], args["weight"], args["bias"], args["winners"], args["kept"], args["values"])
    xc, wc, bc, wn, kc, vc, geo = _conv_problem(2, 2, (5, 5), (3, 3), "top3", True)
    conv = genkernels.ops.som_mask_conv2d
    with pytest.raises(ValueError, match="one per output position"):
        conv(xc, wc, bc, wn[:, :4], kc, vc)
    with pytest.raises(ValueError, match="input channels"):
        conv(xc[:, :1], wc, bc, wn, kc, vc)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        conv(xc, wc, bc, wn, kc, vc, stride=0)
    with pytest.raises(TypeError, match="padding must be an int or a pair"):
        conv(xc, wc, bc, wn, kc, vc, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="does not fit"):
        conv(xc, wc, bc, wn, kc, vc, padding=0, dilation=3)


def test_bad_layer_arguments_raise_naming_them():
    cases = [
        (dict(threshold=0.0), ValueError, r"threshold must be a number in \(0, 1\]"),
        (dict(threshold=1.5), ValueError, r"threshold must be a number in \(0, 1\]"),
        (dict(top_k=0), ValueError, r"top_k must be in \[1, 12\]"),
        (dict(top_k=13), ValueError, r"top_k must be in \[1, 12\]"),
        (dict(top_k=2.0), TypeError, "top_k must be an integer"),
        (dict(threshold=0.5, top_k=2), ValueError, "exactly one of threshold and top_k"),
        (dict(), ValueError, "exactly one of threshold and top_k"),
        (dict(mode="dense", top_k=2), ValueError, "threshold and top_k must be None"),
        (dict(mode="sparse", top_k=2), ValueError, "mode must be one of"),
        (dict(order="before", top_k=2), ValueError, "order must be one of"),
        (dict(grid=(5, 5), top_k=2), ValueError, "rows \\* cols = 12"),
        (dict(sigma_forward=0, top_k=2), ValueError, "sigma_forward must be > 0"),
        (dict(sigma_organize=-1.0, top_k=2), ValueError, "sigma_organize must be > 0"),
        (dict(learning_rate=2.0, top_k=2), ValueError, r"learning_rate must be a number in \(0, 1\]"),
        (dict(rule="sgd", top_k=2), ValueError, "rule must be one of"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            genkernels.SOMMaskLinear(4, 12, **kwargs)
    with pytest.raises(ValueError, match="needs input_size"):
        genkernels.SOMMaskConv2d(1, 12, 3, top_k=2)
    with pytest.raises(ValueError, match="winner must be one of"):
        genkernels.SOMMaskConv2d(1, 12, 3, winner="pixel", top_k=2)
    layer = genkernels.SOMMaskLinear(4, 12, top_k=2)
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., 4\)"):
        layer(torch.randn(3, 5))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(3, 4, dtype=torch.long))
    conv = genkernels.SOMMaskConv2d(2, 12, 3, winner="image", input_size=(5, 5), top_k=2)
    with pytest.raises(ValueError, match="input_size"):
        conv(torch.randn(1, 2, 6, 5))
    with pytest.raises(ValueError, match="2 channels"):
        conv(torch.randn(1, 3, 5, 5))
