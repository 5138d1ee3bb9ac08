"""The rational-quadratic spline (genkernels.ops.rq_spline): the reference against nflows'
spline (when installed); every backend against the reference over odd and edge shapes (no
rows, one feature, one bin, many bins, images, a row longer than a Triton block, strided
params, every mask kind), values inside, outside and exactly at the interval's ends and at
knots, forward and inverse, output, log-determinant and gradients; monotone, inverse(forward(x))
= x, the log-determinant against autograd's derivative; NaN parameters of kept features;
gradcheck, gradgradcheck, opcheck, torch.compile; threads; autocast; bad input."""

import math

import pytest
import torch
from helpers import HAS_TRITON, grid_mass_and_inside, needs, num_threads, randomise_flow
from tolerances import TOL

import genkernels
from genkernels.flows import alternating_mask, checkerboard_mask, half_mask
from genkernels.flows import spline_reference as R


@pytest.fixture(autouse=True)
def _one_thread():
    """Small layers and batches: one thread (beside the other test worker a second thread
    waits a time slice per small call); the tests that compare thread counts set their own."""
    with num_threads(1):
        yield


BACKENDS = ["cpu"] + (["triton"] if HAS_TRITON else [])

# (batch, feature shape, bins, mask kind)
CASES = [(3, (7,), 8, "alternating"), (2, (1,), 1, "none"), (0, (5,), 4, "half"), (1, (8,), 3, "half"),
         (4, (17,), 17, "random"), (2, (3, 5, 7), 5, "checkerboard"), (2, (1100,), 2, "random")]


def _mask(kind: str, shape: tuple):
    if kind == "none":
        return None
    if kind == "alternating":
        return alternating_mask(shape[0], 1)
    if kind == "half":
        return half_mask(shape[0])
    if kind == "checkerboard":
        return checkerboard_mask(shape, 1)
    g = torch.Generator().manual_seed(5)
    m = (torch.rand(shape, generator=g) < 0.4).float()
    m.view(-1)[0] = 0.0
    return m


def _problem(batch, shape, bins, dtype, bound=3.0, seed=0, scale=1.5, edges=True):
    """x (B, *F) spread over and past [-bound, bound] (with ``edges``, the ends and a knot
    exactly: where the derivative jumps, no place for finite differences), and params
    (B, *F, 3K - 1) as a view with a batch stride of its own (every other row)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64) * bound * 0.8
    params = torch.randn(2 * batch, *shape, 3 * bins - 1, generator=g, dtype=torch.float64) * scale
    params = params.to(dtype)[::2]
    flat = x.view(batch, math.prod(shape))
    if edges and flat.numel() >= 3:
        flat[0, 0], flat[-1, -1] = bound, -bound
        if bins > 1:   # exactly at the first interior knot of element (0, 1)
            knot = R.knots(params.reshape(batch, -1, 3 * bins - 1)[0, 1, :bins].double(), bound)[1]
            flat[0, 1] = knot
    return x.to(dtype), params


PAIRS = [(backend, case) for backend in BACKENDS for case in CASES]


def test_reference_equals_nflows():
    nflows = pytest.importorskip("nflows.transforms.splines.rational_quadratic")
    x, params = _problem(64, (6,), 7, torch.float64, bound=2.5)
    k = 7
    for inverse in (False, True):
        y, logdet = R.rq_spline(x, params, torch.zeros(6), 2.5, inverse)
        y2, ld2 = nflows.unconstrained_rational_quadratic_spline(
            x, params[..., :k], params[..., k:2 * k], params[..., 2 * k:], inverse=inverse, tails="linear",
            tail_bound=2.5)
        torch.testing.assert_close(y, y2, **TOL[torch.float64])
        torch.testing.assert_close(logdet, ld2.sum(1), rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("backend, case", PAIRS,
                         ids=[f"{b}-B{c[0]}-{'x'.join(map(str, c[1]))}-K{c[2]}-{c[3]}" for b, c in PAIRS])
def test_backends_equal_the_reference(backend, case):
    batch, shape, bins, kind = case
    mask = _mask(kind, shape)
    for dtype in (torch.float64, torch.float32):
        x, params = _problem(batch, shape, bins, dtype)
        for inverse in (False, True):
            results = {}
            for name in ("reference", backend):
                leaves = [x.detach().clone().requires_grad_(), params.detach().requires_grad_()]
                y, logdet = genkernels.ops.rq_spline(*leaves, mask, bound=3.0, inverse=inverse, backend=name)
                assert y.shape == x.shape and y.dtype == dtype and logdet.shape == (batch,)
                gy = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
                gl = torch.linspace(0.5, -2, batch, dtype=logdet.dtype)
                grads = torch.autograd.grad((y * gy).sum() + (logdet * gl).sum(), leaves) if batch else (None,) * 2
                results[name] = (y, logdet, *grads)
            for got, want in zip(results[backend], results["reference"]):
                if want is not None:
                    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
                    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_monotone_invertible_and_the_logdet_is_the_derivative(backend):
    g = torch.Generator().manual_seed(1)
    # 401 points past both ends of [-3, 3] through one spline: as 401 rows of one feature
    # (each row's log-determinant is that point's), or for the interpreted Triton kernels
    # (a program per row) one row of 401 features (the log-determinant their sum)
    rows = backend != "triton"
    shape = (401, 1) if rows else (1, 401)
    params = torch.randn(1, 1, 3 * 6 - 1, generator=g, dtype=torch.float64).expand(*shape, -1) * 2
    x = torch.linspace(-4, 4, 401, dtype=torch.float64).reshape(shape)
    leaf = x.clone().requires_grad_()
    y, logdet = genkernels.ops.rq_spline(leaf, params, bound=3.0, backend=backend)
    flat_x, flat_y = x.flatten(), y.detach().flatten()
    assert bool((flat_y[1:] > flat_y[:-1]).all())                          # strictly increasing
    assert torch.equal(flat_y[flat_x.abs() > 3], flat_x[flat_x.abs() > 3])  # the identity tails
    (dydx,) = torch.autograd.grad(y.sum(), leaf)
    torch.testing.assert_close(logdet, dydx.log().sum(1), rtol=1e-10, atol=1e-10)
    back, logdet_inv = genkernels.ops.rq_spline(y.detach(), params, bound=3.0, inverse=True, backend=backend)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_inv, -logdet.detach())
    # fp32 at unit scale: the inverse undoes the forward within 1e-5 times the local condition
    # (1 + 1 / (dy/dx): a flat bin maps a rounding of y to a wider interval of x)
    x32, p32 = _problem(8, (128,), 8, torch.float32, bound=3.0, scale=1.0)
    y32, ld32 = genkernels.ops.rq_spline(x32, p32, bound=3.0, backend=backend)
    b32, li32 = genkernels.ops.rq_spline(y32, p32, bound=3.0, inverse=True, backend=backend)
    x64 = x32.double().requires_grad_()
    (slope,) = torch.autograd.grad(R.rq_spline(x64, p32.double(), torch.zeros(128), 3.0, False)[0].sum(), x64)
    assert bool(((b32 - x32).abs() <= 1e-5 * (1 + 1 / slope)).all())
    want_ld = R.rq_spline(x32.double(), p32.double(), torch.zeros(128), 3.0, False)[1]
    want_li = R.rq_spline(y32.double(), p32.double(), torch.zeros(128), 3.0, True)[1]
    torch.testing.assert_close(ld32.double(), want_ld, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(li32.double(), want_li, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_kept_features_large_parameters_and_second_derivatives(backend):
    x, params = _problem(3, (9,), 5, torch.float32)
    mask = half_mask(9)                       # features 0..4 kept
    p = params.clone()
    p[:, :5] = torch.nan
    leaf = p.requires_grad_()
    y, ld = genkernels.ops.rq_spline(x, leaf, mask, bound=3.0, backend=backend)
    assert torch.equal(y[:, :5], x[:, :5]) and bool(torch.isfinite(ld).all())
    (grad,) = torch.autograd.grad(y.sum() + ld.sum(), leaf)
    assert bool(torch.isfinite(grad).all()) and float(grad[:, :5].abs().max()) == 0.0
    # raw parameters far from zero (one bin takes nearly everything, derivatives at the floor)
    for scale, bound in ((50.0, 3.0), (1.5, 1e-3), (1.5, 1e3)):
        xb, pb = _problem(4, (6,), 4, torch.float64, bound=bound, scale=scale, edges=False)
        for inverse in (False, True):
            got = genkernels.ops.rq_spline(xb, pb, bound=bound, inverse=inverse, backend=backend)
            want = R.rq_spline(xb, pb, torch.zeros(6, dtype=torch.float64), bound, inverse)
            for a, e in zip(got, want):
                assert bool(torch.isfinite(a).all())
                torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9 * max(bound, 1.0))
    if backend == "triton":   # its double backward runs through the reference (tested there)
        return
    xd, pd = (v.double().requires_grad_() for v in _problem(2, (3,), 3, torch.float32, edges=False))
    for inverse in (False, True):
        assert torch.autograd.gradgradcheck(
            lambda a, b: genkernels.ops.rq_spline(a, b, alternating_mask(3), bound=3.0, inverse=inverse,
                                                  backend=backend), [xd, pd])


@needs("cpu")
def test_cpu_gradcheck_opcheck_compile_and_threads():
    op = torch.ops.genkernels.rq_spline
    x, params = _problem(3, (5,), 4, torch.float64, edges=False)
    mask = alternating_mask(5).double()
    for inverse in (False, True):
        assert torch.autograd.gradcheck(lambda a, b: op(a, b, mask, 3.0, inverse),
                                        [x.clone().requires_grad_(), params.clone().requires_grad_()])
        torch.library.opcheck(op.default, (x, params, mask, 3.0, inverse))
        torch.library.opcheck(torch.ops.genkernels.rq_spline_backward.default,
                              (torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64), x,
                               params.contiguous(), mask, 3.0, inverse))
    # only the output, or only the log-determinant, used
    for pick in (0, 1):
        grads = []
        for backend in ("cpu", "reference"):
            leaves = [x.clone().requires_grad_(), params.clone().requires_grad_()]
            out = genkernels.ops.rq_spline(*leaves, mask, bound=3.0, backend=backend)[pick]
            grads.append(torch.autograd.grad(out.sum(), leaves, allow_unused=True, materialize_grads=True))
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, **TOL[torch.float64])
    torch._dynamo.reset()

    def step(v, p):
        y, ld = genkernels.ops.rq_spline(v, p, bound=3.0)
        return y.sum() + ld.sum()

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, params), step(x, params))
    # the same results on one thread and on two
    big, bp = _problem(3000, (37,), 8, torch.float32)
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            y, ld = op(big, bp.contiguous(), torch.zeros(37), 3.0, False)
            grads = torch.ops.genkernels.rq_spline_backward(torch.ones_like(y), torch.ones(3000), big,
                                                            bp.contiguous(), torch.zeros(37), 3.0, False)
            results.append((y, ld, *grads))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs("cpu")
def test_autocast_bf16_and_half_inputs():
    xb, pb = (v.to(torch.bfloat16) for v in _problem(2, (9,), 4, torch.float32))
    yb, ldb = genkernels.ops.rq_spline(xb, pb, half_mask(9), bound=3.0)
    assert yb.dtype == torch.bfloat16 and ldb.dtype == torch.float32
    exact_y, exact_ld = R.rq_spline(xb.double(), pb.double(), half_mask(9).double(), 3.0, False)
    ref_y, _ = R.rq_spline(xb, pb, half_mask(9), 3.0, False)
    assert (yb.double() - exact_y).abs().max() <= 2 * (ref_y.double() - exact_y).abs().max() + 1e-12
    torch.testing.assert_close(ldb.double(), exact_ld, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("call, error, match", [
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 3, 4)), ValueError, "3K - 1"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 3, 1)), ValueError, "3K - 1"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 4, 5)), ValueError, "params must be"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(3), torch.zeros(3, 5)), ValueError, "at least one feature"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 3, 5, dtype=torch.int64)), TypeError,
     "params"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 3, 8), bound=0.0), ValueError, "bound"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 3, 8), bound=math.inf), ValueError,
     "bound"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 3, 8), bound=True), TypeError, "bound"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 3, 8), torch.ones(3)), ValueError,
     "nothing to transform"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 3, 8), torch.full((3,), 0.5)), ValueError,
     "binary"),
    (lambda: genkernels.ops.rq_spline(torch.zeros(2, 3), torch.zeros(2, 3, 8), torch.zeros(4)), ValueError,
     "mask must have"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- layers
def _layers(backend):
    from genkernels.flows import MaskedSplineAutoregressive, SplineCoupling, channel_mask

    return [("coupling-vector", SplineCoupling(half_mask(5), hidden=8, bins=4, backend=backend), (5,)),
            ("coupling-image", SplineCoupling(checkerboard_mask((2, 3, 4)), hidden=4, bins=3, backend=backend),
             (2, 3, 4)),
            ("coupling-channel", SplineCoupling(channel_mask(4), hidden=4, bins=2, backend=backend), (4, 2, 2)),
            ("autoregressive", MaskedSplineAutoregressive(5, (10, 8), bins=4, order=[3, 1, 4, 0, 2],
                                                          backend=backend), (5,)),
            ("inverse-autoregressive", MaskedSplineAutoregressive(4, 8, bins=5, inverse_autoregressive=True,
                                                                  backend=backend), (4,))]


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_spline_layers_start_as_identity_invert_and_their_logdet_is_the_jacobians(backend):
    from helpers import jacobian_logdet

    from genkernels.flows import MaskedSplineAutoregressive

    torch.manual_seed(0)
    layers = _layers(backend)
    for name, layer, shape in layers[1:4] if backend == "triton" else layers:   # the interpreter: fewer
        x = torch.randn(3, *shape) * 2
        y, ld = layer(x)                                    # the identity at the start
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ld, torch.zeros(3), rtol=0, atol=1e-5)
        layer = randomise_flow(layer, scale=0.3).double()
        x = x.double()
        y, ld = layer(x)
        back, ld_inv = layer.inverse(y)
        torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9, msg=name)
        torch.testing.assert_close(ld_inv, -ld, msg=name)
        torch.testing.assert_close(ld[:1], jacobian_logdet(layer, x[:1]), msg=name)   # one row: a backward per output
        if isinstance(layer, MaskedSplineAutoregressive):   # each dimension's spline from the ones before it
            ranks = torch.argsort(layer.order)
            report = genkernels.check_autoregressive(lambda v, m=layer: m.raw_params(v), shape, order=ranks)
            assert report.ok and not report.blind, str(report)


@pytest.mark.parametrize("coupling", [False, True], ids=["autoregressive", "coupling"])
def test_nsf_density_integrates_and_trains_on_two_moons(coupling):
    from sklearn.datasets import make_moons

    torch.manual_seed(0)
    flow = randomise_flow(genkernels.NSF(2, layers=2, bins=6, hidden=16, coupling=coupling), scale=0.4).double()
    mass, inside = grid_mass_and_inside(flow, 6, 241, 20000, seed=5)
    assert inside > 0.3 and abs(mass - inside) < 0.015, (mass, inside)
    data = torch.as_tensor(make_moons(512, noise=0.05, random_state=0)[0], dtype=torch.float32)
    flow = genkernels.NSF(2, layers=3, bins=8, hidden=32, coupling=coupling)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    losses = []
    for _ in range(100):
        loss = -flow.log_prob(data).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 1.0, losses[::20]


@pytest.mark.parametrize("call, error, match", [
    (lambda: genkernels.NSF(1, coupling=True), ValueError, r"D >= 2"),
    (lambda: genkernels.NSF(3, bins=0), ValueError, "bins"),
    (lambda: genkernels.NSF(3, bound=-1.0), ValueError, "bound"),
    (lambda: genkernels.SplineCoupling(half_mask(4), bins=0), ValueError, "bins"),
    (lambda: genkernels.SplineCoupling(half_mask(4), bound=math.nan), ValueError, "bound"),
    (lambda: genkernels.SplineCoupling(torch.ones(4)), ValueError, "nothing to transform"),
    (lambda: genkernels.SplineCoupling(half_mask(4), torch.nn.Linear(4, 4))(torch.randn(2, 4)), ValueError,
     "conditioner must return"),
])
def test_layer_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
