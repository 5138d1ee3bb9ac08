"""The masked linear layer (genkernels.ops.masked_linear, genkernels.MaskedLinear) against the
linear of the masked weight, and MADE (genkernels.MADE): causal under every mask, normalised,
order- and connectivity-agnostic training, sampling, checkpoints, bad input."""

import itertools
import math

import pytest
import torch
from helpers import DEVICE, needs, num_threads

import genkernels
from genkernels import MADE, MaskedLinear, check_autoregressive
from genkernels.autoregressive import linear_reference as R
from genkernels.data import load_digits

BACKENDS = [pytest.param("reference"), pytest.param("cpu", marks=needs("cpu")),
            pytest.param("triton", marks=needs("triton"))]
SWEEP_BACKENDS = BACKENDS[:2]   # the Triton kernels' shape sweep: tests/test_masked_linear_triton.py

# (B, Din, Dout, prefixes, bias)
CASES = [(5, 17, 33, "sorted", True), (1, 100, 64, "unsorted", False), (0, 3, 3, "sorted", True),
         (4, 64, 100, "zero", True), (3, 70, 130, "full", False), (7, 1500, 1300, "sorted", True),
         (3, 1200, 1500, "unsorted", True), (1, 40, 24, "sorted", True)]


def _prefix(kind, d_in, d_out, g):
    if kind == "sorted":
        return torch.sort(torch.randint(0, d_in + 1, (d_out,), generator=g)).values
    if kind == "unsorted":
        return torch.randint(0, d_in + 1, (d_out,), generator=g)
    return torch.zeros(d_out, dtype=torch.int64) if kind == "zero" else torch.full((d_out,), d_in)


@pytest.mark.parametrize("backend", SWEEP_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-{c[3]}")
def test_masked_linear_equals_linear_of_the_masked_weight(backend, case):
    b, d_in, d_out, kind, with_bias = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d_in, generator=g, dtype=torch.float64)
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    bias = torch.randn(d_out, generator=g, dtype=torch.float64) if with_bias else None
    prefix = _prefix(kind, d_in, d_out, g)
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((bias,) if with_bias else ())]
    want = R.masked_linear(leaves[0], leaves[1], leaves[2] if with_bias else None, prefix)
    grad = torch.randn_like(want)
    got_leaves = [t.clone().requires_grad_() for t in leaves]
    got = genkernels.ops.masked_linear(got_leaves[0], got_leaves[1], got_leaves[2] if with_bias else None, prefix,
                                       backend=backend)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    for kept, given in zip(leaves, got_leaves):   # the inputs (the bias of a one-row batch too) untouched
        assert torch.equal(kept, given)
    if b:
        for a, e in zip(torch.autograd.grad(got, got_leaves, grad), torch.autograd.grad(want, leaves, grad)):
            torch.testing.assert_close(a, e, rtol=1e-11, atol=1e-11)


@needs("cpu")
def test_cpu_gradcheck_opcheck_and_float32():
    g = torch.Generator().manual_seed(1)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((3, 9), (7, 9), (7,)))
    prefix = torch.tensor([0, 1, 1, 4, 6, 9, 9])
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda a, c, d: torch.ops.genkernels.masked_linear(a, c, d, prefix), leaves)
    torch.library.opcheck(torch.ops.genkernels.masked_linear.default, (x, w, b, prefix))
    torch.library.opcheck(torch.ops.genkernels.masked_linear.default, (x[:1], w, b, prefix))   # one row
    torch.library.opcheck(torch.ops.genkernels.masked_linear_backward.default,
                          (torch.randn(3, 7, dtype=torch.float64), x, w, prefix, [True, True, True]))
    got = genkernels.ops.masked_linear(x.float(), w.float(), b.float(), prefix, backend="cpu")
    torch.testing.assert_close(got.double(), R.masked_linear(x, w, b, prefix), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_compile_and_zero_gradients_at_masked_weights(backend):
    torch._dynamo.reset()
    layer = MaskedLinear(6, 5, torch.tensor([0, 2, 2, 5, 6]), backend=backend).to(DEVICE)
    x = torch.randn(4, 6, device=DEVICE)
    compiled = torch.compile(lambda t: layer(t).square().sum(), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), layer(x).square().sum())
    layer(x).sum().backward()
    mask = R.prefix_mask(layer.prefix.cpu(), 6).to(DEVICE)
    assert not layer.weight.grad[mask == 0].any()
    assert "kept=15/30" in repr(layer)


@pytest.mark.parametrize("kwargs", [dict(), dict(num_masks=3, order_agnostic=True),
                                    dict(output="gaussian", num_masks=2, order_agnostic=True),
                                    dict(output="mixture", components=3, num_masks=2, direct=False)],
                         ids=["bernoulli", "order-agnostic", "gaussian", "mixture"])
def test_made_is_causal_under_every_mask(kwargs):
    model = MADE(6, (24, 18), seed=0, **kwargs).double()
    for k in range(model.num_masks):
        ranks = torch.argsort(model._perm(k, 0))
        report = check_autoregressive(lambda x, k=k: model._params(x, k), (6,), order=ranks)
        assert report.ok, str(report)
    # a deliberately wrong mask (an output that sees its own input) is caught
    if model.skip is None:
        last = model.layers[-1]
        last.set_prefix((last.prefix + 1).clamp(max=last.in_features))
    else:
        model.skip.set_prefix((model.skip.prefix + 1).clamp(max=6))
    report = check_autoregressive(lambda x: model._params(x, 0), (6,), order="natural")
    assert not report.ok


@pytest.mark.parametrize("kwargs", [dict(), dict(num_masks=2, order_agnostic=True), dict(context_features=2)],
                         ids=["natural", "order-agnostic", "conditional"])
def test_param_major_made_is_the_same_function_with_its_outputs_regrouped(kwargs, tmp_path):
    """param_major orders the output units parameter by parameter: with the dimension-major
    model's output rows (and the direct and context maps' rows) regrouped, the (B, D, P)
    parameters are the same under every mask, the output is a view of a contiguous (B, P, D)
    tensor on the natural mask, it stays causal, and the flag survives a checkpoint."""
    d, p = 5, 3
    ref = MADE(d, (16, 12), "params", p, seed=0, **kwargs).double()
    pm = MADE(d, (16, 12), "params", p, seed=0, param_major=True, **kwargs).double()
    rows = (torch.arange(d)[None, :] * p + torch.arange(p)[:, None]).flatten()   # param-major row -> ref row
    with torch.no_grad():
        for a, b in zip(ref.parameters(), pm.parameters()):
            a.normal_()
        for name, a in ref.named_parameters():
            b = pm.get_parameter(name)
            regroup = name.startswith(("layers.2.", "skip.", "context_out."))
            b.copy_(a[rows] if regroup else a)
    x = torch.randn(7, d, dtype=torch.float64)
    ctx = torch.randn(7, 2, dtype=torch.float64) if "context_features" in kwargs else None
    for k in range(ref.num_masks):
        want, got = ref(x, k, ctx), pm(x, k, ctx)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        ranks = torch.argsort(pm._perm(k, 0))
        c1 = None if ctx is None else ctx[:1]
        report = check_autoregressive(
            lambda v, k=k: pm._params(v, k, None if c1 is None else c1.expand(v.shape[0], 2)), (d,), order=ranks)
        assert report.ok, str(report)
    out = pm(x, 0, ctx)
    assert out.shape == (7, d, p) and out.transpose(1, 2).is_contiguous()
    pm.save(tmp_path / "pm.pt")
    loaded = MADE.load(tmp_path / "pm.pt")
    assert loaded.param_major
    torch.testing.assert_close(loaded(x, 0, ctx), out)


def test_made_forward_without_the_data_check():
    """check=False reads no value of x (a flow's transform: no sync, a NaN flows into the
    output) but still rejects a wrong shape."""
    model = MADE(3, (8,), "params", 2, seed=0)
    x = torch.tensor([[0.0, math.nan, 1.0]])
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(x)
    assert model(x, check=False).shape == (1, 3, 2)
    with pytest.raises(ValueError, match=r"x must be \(B, 3\)"):
        model(torch.zeros(2, 4), check=False)


def test_made_densities_sum_to_one_for_every_mask_and_the_ensemble():
    model = MADE(4, (16,), seed=0, num_masks=3, order_agnostic=True).double()
    every = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.float64)
    for k in range(3):
        assert float(model.log_prob(every, mask=k).exp().sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(model.log_prob(every).exp().sum()) == pytest.approx(1.0, abs=1e-12)


def test_made_fit_sample_and_checkpoint(tmp_path):
    x = (torch.as_tensor(load_digits()[0][:300]) > 0.5).float()
    model = MADE(64, (64,), seed=0, num_masks=2, order_agnostic=True)
    before = float(-model.log_prob(x[250:]).mean().detach())
    model.fit(x[:250], epochs=3, batch_size=50, learning_rate=3e-3, verbose=False)
    after = float(-model.log_prob(x[250:]).mean().detach())
    assert after < before and len(model.history) == 3
    s = model.sample(5, seed=2)
    assert s.shape == (5, 64) and bool(((s == 0) | (s == 1)).all())
    assert torch.equal(s, model.sample(5, seed=2))
    model.save(tmp_path / "made.pt")
    loaded = MADE.load(tmp_path / "made.pt")
    torch.testing.assert_close(loaded.log_prob(x[:8]), model.log_prob(x[:8]))
    gaussian = MADE(3, (12,), "gaussian", seed=0)
    assert gaussian.sample(4, seed=0).shape == (4, 3)


@pytest.mark.parametrize("call, error, match", [
    (lambda: MADE(4, ()), ValueError, "hidden"),
    (lambda: MADE(4, (8,), "poisson"), ValueError, "output"),
    (lambda: MADE(4, (8,)).log_prob(torch.full((2, 4), 0.5)), ValueError, "binary"),
    (lambda: MADE(4, (8,)).log_prob(torch.zeros(2, 5)), ValueError, r"x must be \(B, 4\)"),
    (lambda: MADE(4, (8,), "gaussian").log_prob(torch.full((2, 4), float("nan"))), ValueError, "NaN"),
    (lambda: MADE(4, (8,)).log_prob(torch.zeros(2, 4), mask=1), ValueError, "mask"),
    (lambda: genkernels.ops.masked_linear(torch.zeros(2, 3), torch.zeros(4, 3), None, torch.tensor([0, 1, 2, 4])),
     ValueError, r"prefix must lie in \[0, 3\]"),
    (lambda: genkernels.ops.masked_linear(torch.zeros(2, 3), torch.zeros(4, 3), None, torch.zeros(4)), TypeError,
     "integers"),
    (lambda: genkernels.ops.masked_linear(torch.zeros(2, 3), torch.zeros(4, 2), None, torch.zeros(4, dtype=int)),
     ValueError, "input features"),
    (lambda: MaskedLinear(3, 2, torch.tensor([1])), ValueError, r"prefix must be \(2,\)"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_autocast_bf16_within_the_tolerance_table():
    """Under CPU bf16 autocast MADE's layers run in bf16 (fp32 arithmetic in the kernels): its
    log-likelihoods at most twice as far from the exact (fp64) ones as the reference backend's
    (torch's linear in bf16), and the gradients finite."""
    from helpers import HAS_CPU
    x = (torch.rand(6, 12, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    backend = "cpu" if HAS_CPU else "reference"
    models = {}
    for b in (backend, "reference", "exact"):
        torch.manual_seed(0)   # the same weights in each
        models[b] = MADE(12, (32, 32), num_masks=2, seed=0, backend="reference" if b == "exact" else b)
    exact = models.pop("exact").double().log_prob(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = {b: m.log_prob(x) for b, m in models.items()}
    assert not torch.equal(got[backend], models[backend].log_prob(x))   # autocast took effect
    assert (got[backend].double() - exact).abs().max() <= 2 * (got["reference"].double() - exact).abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (-models[backend].log_prob(x).mean()).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in models[backend].parameters() if p.grad is not None)


def test_conditional_made_is_causal_normalised_per_context_and_trains(tmp_path):
    """A context (B, K) enters the first hidden layer: under every mask the outputs stay causal in
    x, each context's distribution sums to one, the context changes it, and fit/save/load carry it."""
    model = MADE(4, (16, 12), seed=0, num_masks=2, order_agnostic=True, context_features=3).double()
    ctx = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    every = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.float64)
    for k in range(2):
        ranks = torch.argsort(model._perm(k, 0))
        report = check_autoregressive(lambda x, k=k: model._params(x, k, ctx[:1].expand(x.shape[0], 3)), (4,),
                                      order=ranks)
        assert report.ok, str(report)
        for c in ctx:
            p = model.log_prob(every, mask=k, context=c.expand(16, 3)).exp()
            assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    p0, p1 = (model.log_prob(every, context=c.expand(16, 3)) for c in ctx)
    assert not torch.allclose(p0, p1)
    # fit: two contexts, each with its own data; the model learns which goes with which
    x = torch.cat([torch.zeros(64, 4), torch.ones(64, 4)]).double()
    c = torch.cat([torch.zeros(64, 3), torch.ones(64, 3)]).double()
    with num_threads(1):      # 4 x 4 batches: a second thread would only wait beside the other worker
        model.fit(x, epochs=80, batch_size=32, learning_rate=1e-2, verbose=False, context=c)
    assert float(model.log_prob(x[:1], context=c[:1])) > float(model.log_prob(x[:1], context=c[-1:])) + 0.5
    s = model.sample(8, seed=0, context=torch.ones(8, 3, dtype=torch.float64))
    assert float(s.mean()) > 0.8
    model.save(tmp_path / "cmade.pt")
    loaded = MADE.load(tmp_path / "cmade.pt")
    torch.testing.assert_close(loaded.log_prob(x[:8], context=c[:8]), model.log_prob(x[:8], context=c[:8]))
    with pytest.raises(TypeError, match="context must be"):
        model.log_prob(x[:2])
    with pytest.raises(ValueError, match=r"context must be \(2, 3\)"):
        model.log_prob(x[:2], context=torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        model.log_prob(x[:2], context=torch.full((2, 3), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="unconditional"):
        MADE(4, (8,)).log_prob(torch.zeros(2, 4), context=torch.zeros(2, 3))
