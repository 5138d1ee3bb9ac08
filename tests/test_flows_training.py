"""What every flow model shares: fit (bits/dim history, validation, dequantisation, the
invertibility monitor and its warning, divergence as an error), checkpoints of every model
kind, the torch.distributions view (log_prob, sample, rsample, conditional batches), the
logit preprocessing and dequantisation, the model's random stream."""

import math
import warnings

import pytest
import torch
from helpers import num_threads

import genkernels
from genkernels import IAF, MAF, NSF, DivergedError, Glow, RealNVP
from genkernels.flows import FlowDistribution, InvertibilityWarning, LogitTransform, dequantize


@pytest.fixture(autouse=True)
def _one_thread():
    """Small layers and batches: one thread (beside the other test worker a second thread
    waits a time slice per small call); the tests that compare thread counts set their own."""
    with num_threads(1):
        yield


def _moons(n=256):
    from sklearn.datasets import make_moons

    return torch.as_tensor(make_moons(n, noise=0.05, random_state=0)[0], dtype=torch.float32)


def test_fit_records_history_validation_and_the_inverse_error():
    data = _moons(384)
    flow = RealNVP((2,), layers=4, hidden=32, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvertibilityWarning)
        flow.fit(data[:320], epochs=6, batch_size=64, learning_rate=5e-3, validation=data[320:], verbose=False)
    h = flow.history
    assert [r["epoch"] for r in h] == list(range(1, 7))
    assert h[-1]["bits_per_dim"] < h[0]["bits_per_dim"] - 0.2
    assert h[-1]["validation_bits_per_dim"] < h[0]["validation_bits_per_dim"]
    assert all(r["inverse_error"] < 1e-5 for r in h)
    held_out = flow.evaluate(data[320:])
    assert held_out == pytest.approx(h[-1]["validation_bits_per_dim"], rel=1e-6)
    # reproducible: the same initial weights and seed give the same run (the shuffles come
    # from the model's stream, not torch's generator)
    runs = []
    for noise in (1, 2):
        torch.manual_seed(7)
        twin = RealNVP((2,), layers=2, hidden=8, seed=0)
        torch.manual_seed(noise)
        twin.fit(data[:128], epochs=2, batch_size=32, verbose=False)
        runs.append(twin.history)
    assert runs[0] == runs[1]


def test_the_invertibility_monitor_warns_past_its_tolerance():
    flow = MAF(3, layers=2, hidden=8, seed=0)
    data = torch.randn(64, 3)
    with pytest.warns(InvertibilityWarning, match="inverse_tolerance"):
        flow.fit(data, epochs=1, batch_size=32, inverse_tolerance=1e-12, verbose=False)
    assert flow.history[-1]["inverse_error"] > 0


def test_a_diverging_fit_raises():
    flow = RealNVP((2,), layers=2, hidden=8, scale_bound=math.inf, seed=0)
    data = _moons(64)
    with torch.no_grad():
        flow.steps[3].conditioner.out.bias.fill_(math.nan)      # the last coupling: a NaN loss
    with pytest.raises(DivergedError, match="diverged in epoch 1"):
        flow.fit(data, epochs=2, batch_size=32, verbose=False)


@pytest.mark.parametrize("make, shape", [
    (lambda: RealNVP((1, 4, 4), scales=2, hidden=4, seed=1, logit_alpha=0.05), (1, 4, 4)),
    (lambda: RealNVP((3,), layers=2, hidden=8, seed=1, context_features=2), (3,)),
    (lambda: Glow((1, 4, 4), levels=1, steps=2, hidden=4, seed=1), (1, 4, 4)),
    (lambda: MAF(3, layers=2, hidden=(8, 6), seed=1), (3,)),
    (lambda: IAF(3, layers=2, hidden=8, seed=1), (3,)),
    (lambda: NSF(3, layers=2, bins=4, hidden=8, seed=1), (3,)),
    (lambda: NSF(4, layers=2, bins=3, hidden=8, coupling=True, seed=1), (4,)),
], ids=["realnvp-image-logit", "realnvp-conditional", "glow", "maf", "iaf", "nsf", "nsf-coupling"])
def test_every_flow_saves_and_loads(make, shape, tmp_path):
    flow = make()
    ctx = torch.randn(40, 2) if flow.context_features else None
    data = torch.rand(40, *shape) if len(shape) == 3 else torch.randn(40, *shape)
    flow.fit(data, epochs=1, batch_size=20, context=ctx, inverse_check=4, verbose=False)
    path = tmp_path / "flow.pt"
    flow.save(path)
    loaded = type(flow).load(path)
    x = data[:5]
    c = None if ctx is None else ctx[:5]
    torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c))
    assert loaded.history == flow.history and loaded.seed == flow.seed and loaded.offset == flow.offset
    torch.testing.assert_close(loaded.sample(3, seed=4, context=None if c is None else c[:3]),
                               flow.sample(3, seed=4, context=None if c is None else c[:3]))
    other = MAF(3) if not isinstance(flow, MAF) else RealNVP((3,))
    with pytest.raises(ValueError):
        type(other).load(path)


def test_a_crafted_checkpoint_config_is_refused(tmp_path):
    flow = MAF(3, layers=1, hidden=8, seed=0)
    path = tmp_path / "maf.pt"
    flow.save(path)
    payload = torch.load(path, weights_only=True)
    for bad in ({"features": 3}, {"shape": [3], "layers": -1}, {"shape": [3], "hidden": {"a": 1}}):
        payload["config"] = bad
        torch.save(payload, path)
        with pytest.raises(ValueError, match="config"):
            MAF.load(path)


@pytest.mark.parametrize("make, refused", [
    (lambda: MAF(3, layers=1, hidden=8, seed=0), True),
    (lambda: IAF(3, layers=1, hidden=8, seed=0), True),
    (lambda: RealNVP((4,), layers=2, hidden=8, seed=0), True),
    (lambda: NSF(4, layers=1, bins=3, hidden=8, coupling=True, seed=0), True),
    (lambda: NSF(3, layers=1, bins=3, hidden=8, seed=0), False),
    (lambda: Glow((1, 4, 4), levels=1, steps=1, hidden=4, seed=0), False),
], ids=["maf", "iaf", "realnvp-vector", "nsf-coupling", "nsf", "glow"])
def test_a_checkpoint_of_an_earlier_layout_is_refused_where_its_parameters_mean_otherwise(make, refused, tmp_path):
    """A checkpoint without the layout field (written before MAF's MADE emitted its outputs
    parameter by parameter and before vector couplings read only their kept features) loads
    where nothing changed and is refused, naming the layers, where the same keys would now
    mean something else; a layout from the future is refused too."""
    flow = make()
    path = tmp_path / "flow.pt"
    flow.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["layout"] == 2
    del payload["layout"]
    torch.save(payload, path)
    if refused:
        with pytest.raises(ValueError, match="earlier genkernels"):
            type(flow).load(path)
    else:
        type(flow).load(path)
    payload["layout"] = 3
    torch.save(payload, path)
    with pytest.raises(ValueError, match="newer genkernels"):
        type(flow).load(path)


def test_distribution_interface():
    torch.manual_seed(0)
    flow = NSF(2, layers=2, bins=4, hidden=8, seed=3)
    dist = flow.distribution()
    assert isinstance(dist, torch.distributions.Distribution)
    assert dist.event_shape == (2,) and dist.batch_shape == ()
    s = dist.sample((4, 5))
    assert s.shape == (4, 5, 2) and not s.requires_grad
    torch.testing.assert_close(dist.log_prob(s), flow.log_prob(s.reshape(-1, 2)).reshape(4, 5))
    r = dist.rsample((6,))
    r.sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in flow.parameters())
    # a conditional flow: a batch of distributions, one per context row
    cond = MAF(2, layers=2, hidden=8, context_features=1, seed=0)
    ctx = torch.tensor([[0.0], [1.0], [2.0]])
    cdist = cond.distribution(ctx)
    assert cdist.batch_shape == (3,)
    cs = cdist.sample((7,))
    assert cs.shape == (7, 3, 2)
    want = cond.log_prob(cs.reshape(-1, 2), ctx.repeat(7, 1)).reshape(7, 3)
    torch.testing.assert_close(cdist.log_prob(cs), want)
    with pytest.raises(ValueError, match="event shape"):
        dist.log_prob(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="context's rows"):
        cdist.log_prob(torch.zeros(7, 2, 2))
    assert isinstance(cdist, FlowDistribution)


def test_sampling_draws_from_the_models_stream():
    flow = RealNVP((2,), layers=2, hidden=8, seed=5)
    start = flow.offset
    a = flow.sample(4)
    assert flow.offset == start + 8
    b = flow.sample(4)
    assert not torch.equal(a, b)
    flow.offset = start
    torch.testing.assert_close(flow.sample(4), a)
    torch.testing.assert_close(flow.sample(4, seed=9), flow.sample(4, seed=9))


def test_logit_preprocessing_and_dequantisation():
    layer = LogitTransform(0.05).double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    y, ld = layer(x)
    back, ld_inv = layer.inverse(y)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ld_inv, -ld)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0].sum(0), x).reshape(16, 3, 16)
    want = torch.stack([torch.linalg.slogdet(jac[:, i, :])[1] for i in range(3)])
    torch.testing.assert_close(ld, want)
    with pytest.raises(ValueError, match=r"data in \[0, 1\]"):
        layer(x + 1)
    # dequantisation: k / 255 -> (k + u) / 256, u in [0, 1), reproducible from the seed
    pixels = torch.randint(0, 256, (5, 7)).float() / 255
    d = dequantize(pixels, 256, seed=3)
    k = torch.round(pixels * 255)
    assert bool(((d * 256 - k >= 0) & (d * 256 - k < 1)).all())
    assert torch.equal(d, dequantize(pixels, 256, seed=3)) and not torch.equal(d, dequantize(pixels, 256, seed=4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dequantize(pixels * 2, 256)
    # an image flow with the logit preprocessing, trained on dequantised digits, reports the
    # discrete data's bits/dim: the continuous density's plus log2(levels)
    flow = RealNVP((1, 4, 4), scales=1, hidden=8, seed=0, logit_alpha=0.05)
    x = dequantize(pixels[:1].repeat(1, 3)[:, :16].reshape(1, 1, 4, 4).repeat(4, 1, 1, 1), 256, seed=0)
    assert float(flow.bits_per_dim(x, levels=256)) == pytest.approx(float(flow.bits_per_dim(x)) + 8.0)
    samples = flow.sample(6, seed=0)
    assert bool(((samples >= 0) & (samples <= 1)).all())


@pytest.mark.parametrize("call, error, match", [
    (lambda: RealNVP((2,)).fit(torch.randn(1, 2), verbose=False), ValueError, "at least 2 rows"),
    (lambda: RealNVP((2,)).fit(torch.full((4, 2), math.nan), verbose=False), ValueError, "NaN"),
    (lambda: RealNVP((2,)).fit(torch.randn(4, 3), verbose=False), ValueError, r"x must be \(B, 2\)"),
    (lambda: RealNVP((2,)).fit(torch.randn(4, 2), batch_size=1, verbose=False), ValueError, "batch_size"),
    (lambda: RealNVP((2,)).fit(torch.randn(4, 2), learning_rate=0, verbose=False), ValueError, "learning_rate"),
    (lambda: RealNVP((2,), context_features=1).fit(torch.randn(4, 2), context=torch.randn(3, 1), verbose=False),
     ValueError, r"context must be \(4, K\)"),
    (lambda: RealNVP((1, 2, 2), scales=1, logit_alpha=0.5), ValueError, "alpha"),
    (lambda: RealNVP((2,)).sample(2, temperature=-1.0), ValueError, "temperature"),
    (lambda: RealNVP((2,)).bits_per_dim(torch.randn(2, 2), levels=1), ValueError, "levels"),
    (lambda: RealNVP((2,)).distribution(torch.zeros(3)), ValueError, "context"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_public_names():
    for name in ("RealNVP", "Glow", "MAF", "IAF", "NSF", "SplineCoupling"):
        assert getattr(genkernels, name) is getattr(genkernels.flows, name)


def _saved_bytes(fn):
    """Bytes of the tensors autograd saves for the backward while fn() runs (counted by
    torch.autograd.graph.saved_tensors_hooks), and fn's result."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


@pytest.mark.parametrize("make, depths, shape", [
    (lambda d: RealNVP((6,), layers=d, hidden=16, seed=0), (2, 8), (6,)),
    (lambda d: Glow((1, 4, 4), levels=2, steps=d, hidden=8, seed=0), (1, 4), (1, 4, 4)),
    (lambda d: NSF(4, layers=d, bins=4, hidden=8, coupling=True, seed=0), (2, 6), (4,)),
    (lambda d: MAF(3, layers=d, hidden=8, seed=0), (1, 3), (3,)),
], ids=["realnvp", "glow", "nsf-coupling", "maf"])
def test_invertible_checkpoint_saves_depth_independent_memory_with_equal_gradients(make, depths, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, *shape, generator=g, dtype=torch.float64)
    if len(shape) == 3:
        x = torch.rand(16, *shape, generator=g, dtype=torch.float64)
    saved = {}
    for depth in depths:
        torch.manual_seed(1)
        flow = make(depth).double()
        with torch.no_grad():
            for p in flow.parameters():   # non-trivial layers (the conditioners start at zero)
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
        flow(x)                            # ActNorm's data-dependent initialisation
        grads = {}
        for mode in (None, "invertible"):
            flow.checkpoint = mode
            flow.zero_grad()
            leaf = x.clone().requires_grad_()
            saved[depth, mode], loss = _saved_bytes(lambda: -flow.log_prob(leaf).mean())
            loss.backward()
            grads[mode] = [leaf.grad] + [p.grad.clone() for p in flow.parameters()]
        for a, b in zip(grads[None], grads["invertible"]):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    small, deep = depths
    assert saved[deep, None] > saved[small, None]                    # stored activations grow with depth
    assert saved[deep, "invertible"] == saved[small, "invertible"]   # the checkpointed ones do not
    assert saved[deep, "invertible"] < saved[deep, None]


def test_fit_optimiser_is_fused_adam_with_the_same_update():
    """The models' fit optimiser (genkernels.model.adam) is torch's fused Adam for CPU float
    parameters, and its steps equal the default implementation's within float rounding."""
    from genkernels.model import adam
    torch.manual_seed(0)
    weights = [torch.randn(5, 3, dtype=torch.float64, requires_grad=True), torch.randn(7, requires_grad=True)]
    twins = [w.detach().clone().requires_grad_() for w in weights]
    fused, plain = adam(weights, 1e-2), torch.optim.Adam(twins, lr=1e-2)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for step in range(5):
        for group in (weights, twins):
            for w in group:
                w.grad = torch.sin(w.detach() * (step + 1))
        fused.step()
        plain.step()
    for a, b in zip(weights, twins):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
