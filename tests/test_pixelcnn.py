"""Gated PixelCNN (genkernels.GatedPixelCNN): causality without a blind spot, the density,
cached against naive sampling (same values, same logits teacher forced), completion,
training, checkpoints and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import genkernels
from genkernels.autoregressive.pixelcnn import GatedPixelCNN
from genkernels.data import load_digits


def _model(channels=3, head="categorical", levels=4, cond=None, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return GatedPixelCNN(channels, 6 * channels, 3, 5, head=head, levels=levels, condition_size=cond,
                         seed=seed).to(dtype)


def _data(model, n=2, size=(5, 6), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(model.levels, (n, model.in_channels, *size), generator=g).to(model.dtype)


@pytest.mark.parametrize("channels, head", [(1, "bernoulli"), (3, "categorical")])
def test_every_logit_depends_on_all_earlier_values_and_no_later_one(channels, head):
    """From the network's Jacobian with small positive weights (no cancellation, no dead ReLU,
    no saturated tanh): the logits of value (c, y, x) depend on every value before it in raster
    and colour order and on none after it -- no leak of the centre, no blind spot."""
    model = _model(channels, head)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.01, 0.02)
    x = _data(model, 1, (5, 6))
    scaled = model._scaled(x).requires_grad_()
    v = h = scaled
    for layer in model.layers:
        v, h = layer(v, h, None)
    logits = model.out2(F.relu(model.out1(F.relu(h))))
    per = logits.shape[1] // channels
    order = torch.arange(30).view(5, 6)
    for c in range(channels):
        for y in range(5):
            for col in range(6):
                (g,) = torch.autograd.grad(logits[0, c * per, y, col], scaled, retain_graph=True)
                seen = g[0] != 0
                before = (order < y * 6 + col)[None].expand(channels, 5, 6).clone()
                before[:c, y, col] = True
                assert torch.equal(seen, before), (c, y, col)


@pytest.mark.parametrize("channels, head, levels", [(1, "bernoulli", 2), (3, "categorical", 4)])
def test_cached_sampling_equals_naive_and_its_logits_the_forward(channels, head, levels):
    """On the automatic backend (the sampler's logic is the same on every backend; the
    masked convolution's backends are compared in test_masked_conv.py)."""
    model = _model(channels, head, levels)
    naive = model.sample(3, (5, 6), seed=7, method="naive")
    cached = model.sample(3, (5, 6), seed=7)
    assert torch.equal(naive, cached)
    assert model.offset == 0                         # seed= leaves the model's stream alone
    x = _data(model, 2)
    torch.testing.assert_close(model.cached_logits(x), model(x), rtol=1e-10, atol=1e-10)
    # completion: the observed values are kept, the rest sampled as the naive path does
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, :, :2] = True
    mask[0, 0, 3, 2] = True
    done = model.sample(2, given=x, mask=mask, seed=3)
    assert torch.equal(done[mask], x[mask])
    assert torch.equal(done, model.sample(2, given=x, mask=mask, seed=3, method="naive"))


def test_float32_cached_logits_within_tolerance():
    model = _model(1, "bernoulli", dtype=torch.float32)
    x = _data(model, 2, (7, 7))
    torch.testing.assert_close(model.cached_logits(x), model(x), rtol=1e-5, atol=1e-5)


def test_log_prob_is_the_sum_of_the_heads_log_likelihoods():
    model = _model(3, "categorical", 4)
    x = _data(model, 2)
    logits = model(x)
    want = torch.log_softmax(logits, 2).gather(2, x.long()[:, :, None]).sum((1, 2, 3, 4))
    torch.testing.assert_close(model.log_prob(x), want)
    torch.testing.assert_close(model.bits_per_dim(x), -want.mean() / (math.log(2) * x[0].numel()))
    binary = _model(1, "bernoulli")
    xb = _data(binary, 2)
    lb = binary(xb)
    want = (xb * F.logsigmoid(lb) + (1 - xb) * F.logsigmoid(-lb)).sum((1, 2, 3))
    torch.testing.assert_close(binary.log_prob(xb), want)


def test_conditional_model():
    model = _model(1, "bernoulli", cond=3)
    x = _data(model, 2)
    labels = torch.tensor([0, 2])
    a, b = model.log_prob(x, labels), model.log_prob(x, F.one_hot(labels, 3).double())
    torch.testing.assert_close(a, b)
    with torch.no_grad():
        model.layers[0].condition.weight.normal_()
    assert not torch.allclose(model.log_prob(x, torch.tensor([0, 0])), model.log_prob(x, torch.tensor([1, 1])))
    s = model.sample(2, (4, 4), cond=labels, seed=1)
    assert torch.equal(s, model.sample(2, (4, 4), cond=labels, seed=1, method="naive"))


def test_fit_on_binarised_digits_lowers_bits_per_dim_and_reproduces(tmp_path):
    x = (torch.as_tensor(load_digits()[0][:240]).reshape(-1, 1, 8, 8) > 0.5).float()

    def trained():
        torch.manual_seed(0)
        return GatedPixelCNN(1, 8, 2, 3, seed=1).fit(x[:200], epochs=2, batch_size=40, learning_rate=1e-2,
                                                      verbose=False)
    torch.manual_seed(0)
    before = GatedPixelCNN(1, 8, 2, 3, seed=1)
    start = float(before.bits_per_dim(x[200:]).detach())
    model = trained()
    assert len(model.history) == 2 and float(model.bits_per_dim(x[200:])) < start
    again = trained()
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    path = tmp_path / "pcnn.pt"
    model.save(path)
    loaded = GatedPixelCNN.load(path)
    assert torch.equal(loaded.log_prob(x[:4]), model.log_prob(x[:4])) and loaded.history == model.history
    assert loaded.offset == model.offset and loaded.seed == model.seed


def test_bad_checkpoint(tmp_path):
    model = _model(1, "bernoulli", dtype=torch.float32)
    path = tmp_path / "m.pt"
    model.save(path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["channels"] = 7          # not what the state holds
    torch.save(payload, path)
    with pytest.raises(ValueError, match="state"):
        GatedPixelCNN.load(path)


@pytest.mark.parametrize("call, error, match", [
    (lambda m: m.log_prob(torch.full((1, 1, 4, 4), 0.5)), ValueError, "binary images"),
    (lambda m: m.log_prob(torch.zeros(1, 2, 4, 4)), ValueError, r"x must be \(B, 1, H, W\)"),
    (lambda m: m.sample(2), ValueError, "image_size"),
    (lambda m: m.sample(2, (4, 4), method="fast"), ValueError, "method"),
    (lambda m: m.sample(1, given=torch.zeros(1, 1, 4, 4)), ValueError, "mask"),
    (lambda m: m.sample(1, given=torch.zeros(1, 1, 4, 4), mask=torch.zeros(1, 1, 4, 4)), TypeError, "bool"),
    (lambda m: m.log_prob(torch.zeros(1, 1, 4, 4), torch.tensor([1])), ValueError, "no condition_size"),
])
def test_bad_input(call, error, match):
    model = _model(1, "bernoulli", dtype=torch.float32)
    with pytest.raises(error, match=match):
        call(model)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=4), "kernel_size must be odd"),
    (dict(in_channels=3, channels=10), "divisible by 3"),
    (dict(head="gaussian"), "head"),
    (dict(levels=1, head="categorical"), "levels"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedPixelCNN(**kwargs)


def test_categorical_range_and_integer_checks():
    model = _model(3, "categorical", 4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"integer levels in \[0, 3\]"):
        model.log_prob(torch.full((1, 3, 2, 2), 4.0))
    with pytest.raises(ValueError, match="not all integers"):
        model.log_prob(torch.full((1, 3, 2, 2), 1.5))
    assert genkernels.GatedPixelCNN is GatedPixelCNN


def test_autocast_bf16_within_the_tolerance_table():
    """Under CPU bf16 autocast the model's log-likelihoods are at most twice as far from the
    exact (fp64) ones as the reference backend's -- PyTorch's own convolutions in bf16 --
    (tests/tolerances.py), and a training step's gradients are finite."""
    from helpers import HAS_CPU
    x = (torch.rand(3, 3, 6, 5, generator=torch.Generator().manual_seed(2)) < 0.4).double()
    models = {}
    for backend in ("cpu" if HAS_CPU else "reference", "reference", "exact"):
        torch.manual_seed(0)
        models[backend] = GatedPixelCNN(3, 12, 2, 3, condition_size=4, seed=0,
                                        backend="reference" if backend == "exact" else backend)
    exact = models.pop("exact").double().log_prob(x, torch.tensor([0, 1, 3]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = {b: m.log_prob(x.float(), torch.tensor([0, 1, 3])) for b, m in models.items()}
    ours = got["cpu" if HAS_CPU else "reference"]
    assert ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max() <= 2 * (got["reference"].double() - exact).abs().max()
    model = next(iter(models.values()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = -model.log_prob(x.float(), torch.tensor([0, 1, 3])).mean()
    loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------- logistic mixture head
def _original_pixelcnnpp(params, v, mixtures, levels):
    """PixelCNN++'s published formula (the density at the bin centre where the bin's mass is
    below 1e-5), one channel: the oracle where both are accurate."""
    from genkernels.autoregressive import mixture_reference as M
    pi, m, log_s, _ = M.split(params.permute(0, 2, 3, 1), 1, mixtures)
    x = (v.permute(0, 2, 3, 1) * (2.0 / (levels - 1)) - 1.0)[..., None, :]
    centered, inv_s = x - m, torch.exp(-log_s)
    plus, minus = inv_s * (centered + 1.0 / (levels - 1)), inv_s * (centered - 1.0 / (levels - 1))
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * centered
    log_mid = mid - log_s - 2.0 * F.softplus(mid) - math.log((levels - 1) / 2)
    inner = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_mid)
    lp = torch.where(x < -0.999, plus - F.softplus(plus), torch.where(x > 0.999, -F.softplus(minus), inner))
    return torch.logsumexp(lp.sum(-1) + torch.log_softmax(pi, -1), -1)


def test_mixture_reference_matches_the_published_formula_and_is_normalised():
    from genkernels.autoregressive import mixture_reference as M
    g = torch.Generator().manual_seed(0)
    params = torch.randn(4, M.param_count(1, 3), 5, 6, generator=g, dtype=torch.float64)
    params[:, 3:6] = params[:, 3:6].tanh()           # means in [-1, 1] and scales near 0.6: every bin
    params[:, 6:9] = -0.5 + 0.1 * params[:, 6:9]      # holds > 1e-5, where the published formula is exact
    v = torch.randint(256, (4, 1, 5, 6), generator=g).double()
    torch.testing.assert_close(M.log_prob(params, v, 3, 256), _original_pixelcnnpp(params, v, 3, 256),
                               rtol=1e-9, atol=1e-9)
    # every level of three coupled channels: the probabilities sum to 1, and the chain of
    # level_probabilities (what the sampler inverts) is the joint
    import itertools
    p = torch.randn(1, M.param_count(3, 2), generator=g, dtype=torch.float64) * 2
    levels = torch.tensor(list(itertools.product(range(5), repeat=3)), dtype=torch.float64)
    joint = M.log_prob(p[:, :, None, None].expand(len(levels), -1, 1, 1), levels[:, :, None, None], 2, 5)[:, 0, 0]
    assert float(joint.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    chain = sum(M.level_probabilities(p.expand(len(levels), -1), levels, c, 2, 5)
                [torch.arange(len(levels)), levels[:, c].long()].log() for c in range(3))
    torch.testing.assert_close(chain, joint, rtol=1e-12, atol=1e-12)


def test_mixture_log_prob_is_finite_with_finite_gradients_at_extreme_scales():
    from genkernels.autoregressive import mixture_reference as M
    for dtype in (torch.float32, torch.float64):
        params = torch.zeros(1, M.param_count(1, 2), 1, 4, dtype=dtype)
        params[:, 2:4] = torch.tensor([30.0, -30.0], dtype=dtype)[:, None, None]   # means far outside
        params[:, 4:6] = torch.tensor([-12.0, 6.0], dtype=dtype)[:, None, None]    # scales tiny (clamped), huge
        params.requires_grad_()
        lp = M.log_prob(params, torch.tensor([[[[0.0, 1.0, 128.0, 255.0]]]], dtype=dtype), 2, 256)
        lp.sum().backward()
        assert bool(torch.isfinite(lp).all()) and bool(torch.isfinite(params.grad).all()), dtype


def test_mixture_head_is_causal_cached_exact_and_normalised():
    import itertools
    torch.manual_seed(0)
    model = GatedPixelCNN(3, 12, 3, 3, head="logistic_mixture", levels=4, mixtures=3, seed=0).double()
    assert genkernels.check_autoregressive(model, (3, 3, 3)).ok
    x = torch.randint(4, (2, 3, 4, 5), generator=torch.Generator().manual_seed(1)).double()
    torch.testing.assert_close(model.cached_logits(x), model(x), rtol=1e-10, atol=1e-10)
    assert torch.equal(model.sample(3, (4, 5), seed=1), model.sample(3, (4, 5), seed=1, method="naive"))
    every = torch.tensor(list(itertools.product(range(4), repeat=6)), dtype=torch.float64)
    every = every.view(-1, 2, 3).permute(0, 2, 1)[:, :, None, :].contiguous()   # all 1 x 2 images
    assert float(model.log_prob(every).exp().sum()) == pytest.approx(1.0, abs=1e-12)
    top = torch.zeros(2, 3, 4, 5, dtype=torch.bool)
    top[:, :, :2] = True
    top[:, 0, 2, 1] = True                      # one observed red value in a sampled pixel
    done = model.sample(2, given=x, mask=top, seed=3)
    assert torch.equal(done[top], x[top])
    assert torch.equal(done, model.sample(2, given=x, mask=top, seed=3, method="naive"))


def test_mixture_head_trains_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = GatedPixelCNN(1, 8, 2, 3, head="logistic_mixture", levels=17, mixtures=2, seed=0)
    x = torch.as_tensor(load_digits()[0][:200]).reshape(-1, 1, 8, 8).mul(16).round()
    start = float(model.bits_per_dim(x))
    model.fit(x, epochs=2, batch_size=50, learning_rate=3e-3, verbose=False)
    assert float(model.bits_per_dim(x)) < start
    model.save(tmp_path / "m.pt")
    again = GatedPixelCNN.load(tmp_path / "m.pt")
    assert again.mixtures == 2 and again.levels == 17
    torch.testing.assert_close(again.log_prob(x[:5]), model.log_prob(x[:5]))
    with pytest.raises(ValueError, match=r"logistic_mixture head models integer levels in \[0, 16\]"):
        model.log_prob(x[:2] + 17)
