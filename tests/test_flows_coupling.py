"""The affine coupling (genkernels.ops.affine_coupling and the AffineCoupling /
AdditiveCoupling layers): every backend against coupling_reference over odd and edge shapes
(no rows, one feature, a vector tail, a chunk boundary, strided s and t, every mask kind),
forward and inverse, output, log-determinant and gradients; inverse(forward(x)) = x; the
log-determinant against the brute-force log |det J| of the whole layer; gradcheck, opcheck,
torch.compile; threads; autocast; bad input."""

import math

import pytest
import torch
from helpers import HAS_TRITON, jacobian_logdet, needs, num_threads
from tolerances import TOL

import genkernels
from genkernels.flows import (
    MLP,
    AdditiveCoupling,
    AffineCoupling,
    KeptMLP,
    ResNet,
    SplineCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from genkernels.flows import coupling_reference as R

BACKENDS = ["cpu"] + (["triton"] if HAS_TRITON else [])

# (batch, feature shape, mask kind)
CASES = [(3, (7,), "alternating"), (2, (1,), "zero"), (0, (5,), "half"), (1, (8,), "half"), (4, (17,), "random"),
         (2, (3, 5, 7), "checkerboard"), (2, (4, 3, 3), "channel"), (2, (4097,), "random"),
         # runs of 8 kept features (a vector the cpu kernel passes through) beside mixed ones and tails
         (3, (43,), "half"), (2, (6, 4, 3), "channel"),
         # alternating lanes (computed two vectors at a time): rows of 16, rows of 8 in opposite phases
         (2, (2, 6, 16), "checkerboard"), (3, (1, 4, 8), "checkerboard")]


def _mask(kind: str, shape: tuple) -> torch.Tensor:
    if kind == "alternating":
        return alternating_mask(shape[0], 1)
    if kind == "half":
        return half_mask(shape[0])
    if kind == "zero":
        return torch.zeros(shape)
    if kind == "checkerboard":
        return checkerboard_mask(shape, 1)
    if kind == "channel":
        return channel_mask(shape[0])
    g = torch.Generator().manual_seed(5)
    m = (torch.rand(shape, generator=g) < 0.4).float()
    m.view(-1)[0] = 0.0
    return m


def _problem(batch, shape, dtype, seed=0, scale=1.5):
    """x (B, *F), and params (B, 2 F0, ...) -- a conditioner's output -- as a view with a
    batch stride of its own (every other row of a wider tensor)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    params = torch.randn(2 * batch, 2 * shape[0], *shape[1:], generator=g, dtype=torch.float64) * scale
    return x.to(dtype), params.to(dtype)[::2]


# the interpreted Triton kernel's blocks are 1024 wide: the 17-wide case has its tail, and the
# 4097-wide one (the cpu kernel's chunk boundary) is left to the cpu backend
PAIRS = [(backend, case) for backend in BACKENDS for case in CASES if backend == "cpu" or case[1] != (4097,)]


@pytest.mark.parametrize("bound", [2.0, math.inf], ids=["bounded", "free"])
@pytest.mark.parametrize("backend, case", PAIRS,
                         ids=[f"{b}-B{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}" for b, c in PAIRS])
def test_backends_equal_the_reference(backend, bound, case):
    batch, shape, kind = case
    mask = _mask(kind, shape)
    for dtype in (torch.float64, torch.float32):
        x, params = _problem(batch, shape, dtype)
        for inverse in (False, True):
            results = {}
            for name in ("reference", backend):
                leaves = [x.detach().clone().requires_grad_(), params.detach().requires_grad_()]
                y, logdet = genkernels.ops.affine_coupling(*leaves, mask, bound=bound, inverse=inverse, backend=name)
                assert y.shape == x.shape and y.dtype == dtype and logdet.shape == (batch,)
                gy = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
                gl = torch.linspace(0.5, -2, batch, dtype=logdet.dtype)
                grads = torch.autograd.grad((y * gy).sum() + (logdet * gl).sum(), leaves) if batch else (None,) * 2
                results[name] = (y, logdet, *grads)
            for got, want in zip(results[backend], results["reference"]):
                if want is not None:
                    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_inverse_undoes_forward_and_logdets_cancel(backend):
    x, params = _problem(16, (3, 8, 8), torch.float32, scale=1.0)   # unit scale: the 1e-5
    mask = checkerboard_mask((3, 8, 8))
    for bound in (2.0, math.inf):
        y, ld = genkernels.ops.affine_coupling(x, params, mask, bound=bound, backend=backend)
        back, ld_inv = genkernels.ops.affine_coupling(y, params, mask, bound=bound, inverse=True, backend=backend)
        assert float((back - x).abs().max()) <= 1e-5
        torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld), atol=1e-5, rtol=0)


def _randomise(module):
    """Non-zero conditioner weights (the default output layer starts at zero)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_layer_logdet_is_the_jacobians(backend):
    torch.manual_seed(0)
    vec = _randomise(AffineCoupling(alternating_mask(5), hidden=8, backend=backend).double())
    x = torch.randn(3, 5, dtype=torch.float64) * 2
    torch.testing.assert_close(vec(x)[1], jacobian_logdet(vec, x))
    torch.testing.assert_close(vec.inverse(x)[1], jacobian_logdet(vec.inverse, x))
    img = _randomise(AffineCoupling(checkerboard_mask((2, 3, 3)), hidden=4, scale_bound=math.inf,
                                    backend=backend).double())
    xi = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(img(xi)[1], jacobian_logdet(img, xi))
    cond = _randomise(AffineCoupling(channel_mask(2).expand(2, 3, 3), hidden=4, context_features=3,
                                     backend=backend).double())
    ctx = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(cond(xi, ctx)[1], jacobian_logdet(cond, xi, ctx))
    y, _ = cond(xi, ctx)
    torch.testing.assert_close(cond.inverse(y, ctx)[0], xi)


def test_additive_coupling_is_volume_preserving_and_invertible():
    torch.manual_seed(0)
    layer = _randomise(AdditiveCoupling(half_mask(6), hidden=8).double())
    x = torch.randn(4, 6, dtype=torch.float64)
    y, ld = layer(x)
    assert torch.equal(ld, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(jacobian_logdet(layer, x), ld)
    torch.testing.assert_close(layer.inverse(y)[0], x)
    assert torch.equal(y[:, :3], x[:, :3])


def test_layers_start_as_the_identity_and_train():
    torch.manual_seed(0)
    layer = AffineCoupling(checkerboard_mask((1, 4, 4)), conditioner=ResNet(1, 2, hidden=8, blocks=1))
    x = torch.randn(8, 1, 4, 4)
    y, ld = layer(x)
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros(8))
    vec = AffineCoupling(half_mask(4), hidden=16)
    opt = torch.optim.Adam(vec.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(1)
    data = torch.randn(128, 4, generator=g)
    data[:, 2:] = data[:, :2] * 0.9 + 0.1 * data[:, 2:]      # the second half follows the first
    losses = []
    for _ in range(40):
        z, ld = vec(data)
        nll = (0.5 * z.pow(2).sum(1) - ld).mean()
        losses.append(nll.item())
        opt.zero_grad()
        nll.backward()
        opt.step()
    assert losses[-1] < losses[0] - 1.0, losses


@needs("cpu")
def test_cpu_gradcheck_opcheck_compile_and_threads():
    op = torch.ops.genkernels.affine_coupling
    x, params = _problem(3, (6,), torch.float64)
    mask = alternating_mask(6).double()
    for bound, inverse in ((2.0, False), (2.0, True), (math.inf, True), (math.inf, False)):
        assert torch.autograd.gradcheck(lambda a, b: op(a, b, mask, bound, inverse)[:2],
                                        [x.clone().requires_grad_(), params.clone().requires_grad_()])
        # the C++ autograd's double backward (through the spec's ATen ops), every direction and bound
        assert torch.autograd.gradgradcheck(lambda a, b: op(a, b, mask, bound, inverse)[:2],
                                            [x.clone().requires_grad_(), params.clone().requires_grad_()])
        torch.library.opcheck(op.default, (x, params, mask, bound, inverse))
    _, _, sigma = op(x, params, mask, 2.0, False)
    torch.library.opcheck(torch.ops.genkernels.affine_coupling_backward.default,
                          (torch.randn(3, 6, dtype=torch.float64), torch.randn(3, dtype=torch.float64), x, params,
                           sigma, mask, 2.0, False))
    # only the output, or only the log-determinant, used (the other's gradient never formed)
    for pick in (0, 1):
        grads = []
        for backend in ("cpu", "reference"):
            leaves = [x.clone().requires_grad_(), params.clone().requires_grad_()]
            out = genkernels.ops.affine_coupling(*leaves, mask, bound=2.0, backend=backend)[pick]
            grads.append(torch.autograd.grad(out.sum(), leaves, allow_unused=True, materialize_grads=True))
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, **TOL[torch.float64])
    torch._dynamo.reset()
    layer = AffineCoupling(half_mask(6), hidden=8).double()

    def step(v):
        y, ld = layer(v)
        return y.sum() + ld.sum()

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), step(x))
    # long rows in several chunks each, and short rows (3 features: 8 elements of the flattened
    # problem per vector) in groups: the same results on one thread and on two
    for batch, n in ((5, 3 * 4096 + 11), (50000, 3)):
        big, bp = _problem(batch, (n,), torch.float32)
        bmask = _mask("random", (n,)).float()
        results = []
        for threads in (1, 2):
            with num_threads(threads):
                y, ld, sig = op(big, bp, bmask, 2.0, False)
                grads = torch.ops.genkernels.affine_coupling_backward(torch.ones_like(y), torch.ones(batch), big, bp,
                                                                      sig, bmask, 2.0, False)
                results.append((y, ld, sig, *grads))
        for a, b in zip(*results):
            assert torch.equal(a, b)
        y_ref, ld_ref, _ = R.affine_coupling(big, bp, bmask, 2.0, False)
        torch.testing.assert_close(results[0][0], y_ref, **TOL[torch.float32])
        torch.testing.assert_close(results[0][1], ld_ref, **TOL[torch.float32])


@needs("cpu")
def test_autocast_bf16_and_half_inputs():
    torch.manual_seed(0)
    layer = _randomise(AffineCoupling(checkerboard_mask((2, 4, 4)), hidden=8))
    x = torch.randn(3, 2, 4, 4)
    want_y, want_ld = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ld = layer(x)
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    # the conditioner ran in bf16 (8 bits of mantissa): within bf16's resolution of the scale
    torch.testing.assert_close(y, want_y, rtol=0.05, atol=0.05)
    torch.testing.assert_close(ld, want_ld, rtol=0.05, atol=0.2)
    xb, pb = (v.to(torch.bfloat16) for v in _problem(2, (9,), torch.float32))
    yb, ldb = genkernels.ops.affine_coupling(xb, pb, half_mask(9), bound=2.0)
    exact_y, exact_ld, _ = R.affine_coupling(xb.double(), pb.double(), half_mask(9).double(), 2.0, False)
    assert yb.dtype == torch.bfloat16 and ldb.dtype == torch.float32
    ref_y, _, _ = R.affine_coupling(xb, pb, half_mask(9), 2.0, False)
    assert (yb.double() - exact_y).abs().max() <= 2 * (ref_y.double() - exact_y).abs().max() + 1e-12
    torch.testing.assert_close(ldb.double(), exact_ld, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_bounds_nan_at_kept_features_and_double_backward(backend):
    # a large bound (bound tanh(s / bound) ~ s) keeps the scale's relative precision
    x, params = _problem(3, (9,), torch.float32)
    mask = half_mask(9)
    for bound in (1000.0, 1e31):
        got = genkernels.ops.affine_coupling(x, params, mask, bound=bound, backend=backend)
        want = genkernels.ops.affine_coupling(x.double(), params.double(), mask, bound=bound, backend="reference")
        for a, e in zip(got, want):
            torch.testing.assert_close(a.double(), e, **TOL[torch.float32])
    # whatever the kept features' s and t hold, they pass x through and get no gradient
    p = params.clone()
    p[:, :5] = torch.nan
    p[:, 9:14] = torch.inf
    leaf = p.requires_grad_()
    y, ld = genkernels.ops.affine_coupling(x, leaf, mask, bound=2.0, backend=backend)
    assert torch.equal(y[:, :5], x[:, :5]) and bool(torch.isfinite(ld).all())
    (grad,) = torch.autograd.grad(y.sum() + ld.sum(), leaf)
    assert bool(torch.isfinite(grad).all()) and float(grad[:, :5].abs().max()) == 0.0
    # second derivatives (the VJP with create_graph runs through the reference)
    xd, pd = (v.double().requires_grad_() for v in _problem(2, (5,), torch.float32))
    assert torch.autograd.gradgradcheck(
        lambda a, b: genkernels.ops.affine_coupling(a, b, alternating_mask(5), bound=2.0, backend=backend), [xd, pd])


def test_mask_cache_follows_changes_and_inference_mode():
    torch.manual_seed(0)
    # a conditioner that reads x * mask (the default one of a vector layer reads its own mask's kept features)
    layer = _randomise(AffineCoupling(half_mask(4), MLP(4, 8, 8)))
    x = torch.randn(3, 4)
    with torch.inference_mode():
        first, _ = layer(x)
    y, ld = layer(x)                       # trains after an inference-mode call
    (ld.sum() + y.sum()).backward()
    torch.testing.assert_close(y.detach(), first)
    layer.mask.data = half_mask(4, 1)      # a swapped .data: the new mask is used
    y2, _ = layer(x)
    assert torch.equal(y2[:, 2:], x[:, 2:]) and not torch.equal(y2[:, :2], x[:, :2])
    layer.mask.copy_(half_mask(4))         # an in-place edit
    y3, _ = layer(x)
    assert torch.equal(y3[:, :2], x[:, :2])
    with torch.inference_mode():
        made_here = AffineCoupling(half_mask(4), hidden=8)
        assert made_here(x)[0].shape == (3, 4)
    # the default conditioner (KeptMLP) follows its layer's mask or says it cannot
    layer = AffineCoupling(half_mask(4), hidden=8)
    layer(x)
    layer.mask.data = half_mask(4, 1)
    with pytest.raises(ValueError, match="differs from the one its conditioner"):
        layer(x)
    layer.mask.data = half_mask(4)         # the same values in a new tensor: accepted again
    assert torch.equal(layer(x)[0][:, :2], x[:, :2])
    layer.mask[0] = 0.0                     # an in-place edit is seen too
    with pytest.raises(ValueError, match="differs from the one its conditioner"):
        layer.inverse(x)
    spline = SplineCoupling(half_mask(4), hidden=8)
    spline(x)
    spline.conditioner = KeptMLP(half_mask(4, 1), 3 * 8 - 1, True, hidden=8)   # made for another mask
    with pytest.raises(ValueError, match="differs from the one its conditioner"):
        spline(x)


@pytest.mark.parametrize("mask", [half_mask(7), half_mask(7, 1), alternating_mask(6, 1),
                                  torch.tensor([1.0, 0, 0, 1, 0, 1, 1])],
                         ids=["first-half", "second-half", "alternating", "irregular"])
@pytest.mark.parametrize("per, feature_major", [(2, False), (1, False), (5, True)],
                         ids=["affine", "additive", "spline"])
@pytest.mark.parametrize("context", [None, 3], ids=["plain", "context"])
def test_kept_mlp_is_the_dense_conditioner_without_its_dead_work(mask, per, feature_major, context):
    """KeptMLP (a vector layer's default conditioner) equals an MLP(D, P D) fed x * mask whose
    first layer has KeptMLP's weights at the kept columns (zeros elsewhere) and whose last
    layer has its rows at the transformed features' parameters (zeros elsewhere) -- values and
    gradients -- with zeros at the kept features' parameters."""
    torch.manual_seed(0)
    d = mask.numel()
    kept_mlp = _randomise(KeptMLP(mask, per, feature_major, hidden=6, context_features=context)).double()
    dense = MLP(d, per * d, 6, 2, context).double()
    kept, moved = mask.bool().nonzero().flatten(), (~mask.bool()).nonzero().flatten()
    # row of the dense output for (transformed feature k, parameter q), in KeptMLP's row order
    if feature_major:
        rows = (moved[:, None] * per + torch.arange(per)[None, :]).flatten()
    else:
        rows = (torch.arange(per)[:, None] * d + moved[None, :]).flatten()
    with torch.no_grad():
        for a, b in zip(dense.parameters(), kept_mlp.parameters()):
            a.zero_()
        first, last = dense._linears[0], dense.out
        first.weight[:, kept] = kept_mlp._linears[0].weight[:, :kept.numel()]
        if context:
            first.weight[:, d:] = kept_mlp._linears[0].weight[:, kept.numel():]
        first.bias.copy_(kept_mlp._linears[0].bias)
        dense._linears[1].weight.copy_(kept_mlp._linears[1].weight)
        dense._linears[1].bias.copy_(kept_mlp._linears[1].bias)
        last.weight[rows] = kept_mlp.out.weight
        last.bias[rows] = kept_mlp.out.bias
    x = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    c = None if context is None else torch.randn(5, context, dtype=torch.float64)
    got = kept_mlp(x, c)
    want = dense(x * mask.double(), c)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    unused = torch.ones(per * d, dtype=torch.bool)
    unused[rows] = False
    assert float(got.detach()[:, unused].abs().max()) == 0.0
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad(got, x, g)
    x2 = x.detach().requires_grad_()
    (gx2,) = torch.autograd.grad(dense(x2 * mask.double(), c), x2, g)
    torch.testing.assert_close(gx, gx2, rtol=1e-12, atol=1e-12)
    c2 = None if c is None else c[:2]
    assert torch.autograd.gradcheck(lambda v: kept_mlp(v, c2), [x.detach()[:2].clone().requires_grad_()])


def test_vector_layers_default_to_kept_mlp_with_the_dense_parameter_counts_cut():
    """Vector layers read the kept half only and write the transformed half's parameters:
    at D = 64, H = 128 the default affine conditioner has 28,992 weights and biases (the
    x * mask one had 41,344); a mask keeping nothing keeps the dense MLP (its input is all
    zeros), an image mask its ResNet; the spline layer starts at the identity."""
    layer = AffineCoupling(half_mask(64), hidden=128)
    assert isinstance(layer.conditioner, KeptMLP)
    assert sum(p.numel() for p in layer.conditioner.parameters()) == 28_992
    nothing_kept = AffineCoupling(torch.zeros(3), hidden=4)
    assert type(nothing_kept.conditioner) is MLP
    x = torch.randn(4, 3)
    y, _ = nothing_kept(x)
    torch.testing.assert_close(y, x)
    assert isinstance(AffineCoupling(checkerboard_mask((1, 4, 4))).conditioner, ResNet)
    spline = SplineCoupling(alternating_mask(5), bins=4, hidden=8)
    assert isinstance(spline.conditioner, KeptMLP)
    x = torch.randn(6, 5)
    y, ld = spline(x)
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld, torch.zeros(6), rtol=0, atol=1e-5)
    additive = AdditiveCoupling(half_mask(4, 1), hidden=4)
    assert isinstance(additive.conditioner, KeptMLP) and additive.conditioner.out.out_features == 2


def test_a_vector_realnvp_loss_compiles_to_one_graph():
    torch.manual_seed(0)
    flow = genkernels.RealNVP((6,), layers=3, hidden=8)
    x = torch.randn(10, 6)
    with torch.no_grad():
        flow.log_prob(x)                            # ActNorm's initialisation, eager
    compiled = torch.compile(lambda v: -flow.log_prob(v).mean(), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), -flow.log_prob(x).mean())


def test_masks():
    assert torch.equal(checkerboard_mask((2, 3)), torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    assert torch.equal(checkerboard_mask((2, 2, 2), 1)[1], torch.tensor([[0.0, 1], [1, 0]]))
    assert channel_mask(4, 1).flatten().tolist() == [0, 0, 1, 1]
    assert half_mask(5).tolist() == [1, 1, 1, 0, 0] and half_mask(5, 1).tolist() == [0, 0, 0, 1, 1]
    assert alternating_mask(4).tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize("call, error, match", [
    (lambda: AffineCoupling(torch.tensor([1.0, 0.5, 0.0])), ValueError, "mask must be binary"),
    (lambda: AffineCoupling(torch.ones(4)), ValueError, "nothing to transform"),
    (lambda: AffineCoupling(torch.zeros(2, 2)), ValueError, r"mask must be \(D,\)"),
    (lambda: AffineCoupling([1, 0]), TypeError, "mask must be a torch.Tensor"),
    (lambda: AffineCoupling(half_mask(4), scale_bound=0.0), ValueError, "bound must be >= 1e-6"),
    (lambda: AffineCoupling(half_mask(4), conditioner=lambda v: v), TypeError, "conditioner must be"),
    (lambda: AffineCoupling(half_mask(4))(torch.randn(2, 5)), ValueError, "do not match the mask"),
    (lambda: AffineCoupling(half_mask(4))(torch.randn(2, 4, 1)), ValueError, r"x must be \(B, D\)"),
    (lambda: AffineCoupling(half_mask(4), conditioner=MLP(4, 4))(torch.randn(2, 4)), ValueError,
     r"conditioner must return \(2, 8\)"),
    (lambda: AffineCoupling(half_mask(4), context_features=2)(torch.randn(2, 4)), ValueError, "takes a context"),
    (lambda: AffineCoupling(half_mask(4))(torch.randn(2, 4), torch.randn(2, 2)), ValueError, "takes no context"),
    (lambda: genkernels.ops.affine_coupling(torch.randn(2, 3), torch.randn(2, 3), half_mask(3)),
     ValueError, r"params must be \(2, 6\)"),
    (lambda: genkernels.ops.affine_coupling(torch.randn(2, 3), torch.randn(2, 6), torch.tensor([2.0, 0, 0])),
     ValueError, "binary"),
    (lambda: genkernels.ops.affine_coupling(torch.randn(2, 3), torch.randn(2, 6), half_mask(3), bound=-1.0),
     ValueError, "bound must be >= 1e-6"),
    (lambda: AffineCoupling(half_mask(4))(torch.randn(2, 1)), ValueError, "do not match the mask"),
    (lambda: genkernels.ops.affine_coupling(torch.randn(2, 3), torch.randn(2, 6), half_mask(3), bound="2"),
     TypeError, "bound must be a positive number"),
    (lambda: genkernels.ops.affine_coupling(torch.randn(3), torch.randn(6), half_mask(3)),
     ValueError, r"x must be \(B, \*features\)"),
    (lambda: genkernels.ops.affine_coupling(torch.randn(2, 3), torch.randn(2, 6), half_mask(4)),
     ValueError, "mask must have the features' shape"),
    (lambda: genkernels.ops.affine_coupling(torch.randn(2, 3), torch.randn(2, 6), torch.ones(3)),
     ValueError, "nothing to transform"),
    (lambda: genkernels.ops.affine_coupling(torch.randn(2, 3).int(), torch.randn(2, 6), half_mask(3)),
     TypeError, "x must be a floating-point tensor"),
    (lambda: KeptMLP(torch.ones(3), 2), ValueError, "nothing to transform"),
    (lambda: KeptMLP(torch.zeros(3), 2), ValueError, "keeps no feature"),
    (lambda: KeptMLP(torch.zeros(2, 2), 2), ValueError, r"mask must be a \(D,\) tensor"),
    (lambda: KeptMLP(half_mask(4), 0), ValueError, "per"),
    (lambda: KeptMLP(half_mask(4), 2)(torch.randn(2, 5)), ValueError, r"x must be \(B, 4\)"),
    (lambda: KeptMLP([1, 0, 1, 0], 2), TypeError, "mask must be a"),
    (lambda: KeptMLP(half_mask(4), 2)([[0.0] * 4]), TypeError, "x must be a torch.Tensor"),
    (lambda: checkerboard_mask((3,)), ValueError, "shape must be"),
    (lambda: channel_mask(1), ValueError, "channels"),
    (lambda: half_mask(4, 2), ValueError, "parity must be 0 or 1"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@needs("cpu")
def test_cpu_kernel_rejects_bad_arguments_without_crashing():
    op = torch.ops.genkernels.affine_coupling
    x, p = torch.randn(2, 4), torch.randn(2, 8)
    with pytest.raises(ValueError, match="mask must be"):
        op(x, p, torch.zeros(3), 2.0, False)
    with pytest.raises(ValueError, match="params must be"):
        op(x, x, torch.zeros(4), 2.0, False)
    with pytest.raises(ValueError, match="bound must be > 0"):
        op(x, p, torch.zeros(4), 0.0, False)
    with pytest.raises(TypeError, match="must have x's dtype"):
        op(x, p.double(), torch.zeros(4), 2.0, False)
    with pytest.raises(ValueError, match="contiguous"):
        op(torch.randn(4, 2).t(), p, torch.zeros(4), 2.0, False)
    with pytest.raises(ValueError, match="sigma"):
        torch.ops.genkernels.affine_coupling_backward(x, torch.ones(2), x, p, torch.zeros(0), torch.zeros(4), 2.0,
                                                      False)
