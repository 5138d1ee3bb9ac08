"""The flow models (genkernels.RealNVP: the multi-scale image flow and the vector flow;
genkernels.Glow) --
inverse(forward(x)) = x, the log-determinant against the brute-force log |det J|, a 2-D
density that integrates to 1, reproducible and reduced-temperature sampling, conditioning,
a short training run, bad input."""

import math

import pytest
import torch
from helpers import grid_mass_and_inside, jacobian_logdet, num_threads, randomise_flow

import genkernels


@pytest.fixture(autouse=True)
def _one_thread():
    """Small layers and batches: one thread (beside the other test worker a second thread
    waits a time slice per small call); the tests that compare thread counts set their own."""
    with num_threads(1):
        yield



@pytest.mark.parametrize("model, shape, kwargs", [
    ("RealNVP", (1, 4, 4), dict(scales=2, hidden=4)), ("RealNVP", (2, 2, 2), dict(scales=1, hidden=4)),
    ("RealNVP", (3,), dict(layers=3, hidden=8)), ("Glow", (1, 4, 4), dict(levels=2, steps=2, hidden=4, seed=0))])
def test_inverse_and_logdet_are_exact(model, shape, kwargs):
    torch.manual_seed(0)
    flow = randomise_flow(getattr(genkernels, model)(shape, **kwargs).double(), scale=0.2)
    x = torch.randn(2 if len(shape) == 1 else 1, *shape, dtype=torch.float64)
    z, logdet = flow(x)
    assert z.shape == (x.shape[0], math.prod(shape))
    back, logdet_inv = flow.inverse(z)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(logdet_inv, -logdet)
    torch.testing.assert_close(logdet, jacobian_logdet(flow, x))


def test_a_2d_density_integrates_to_its_mass_on_the_grid():
    """The grid integral of exp(log_prob) over [-9, 9]^2 equals the fraction of the flow's
    own samples that land there (a random flow may put mass outside any fixed box)."""
    torch.manual_seed(0)
    flow = randomise_flow(genkernels.RealNVP((2,), layers=4, hidden=16), scale=0.3).double()
    mass, inside = grid_mass_and_inside(flow, 9, 451, 40000)
    assert inside > 0.3 and abs(mass - inside) < 0.01, (mass, inside)


def test_sampling_is_reproducible_and_tempered():
    torch.manual_seed(0)
    flow = randomise_flow(genkernels.RealNVP((1, 4, 4), scales=2, hidden=4), scale=0.2)
    a, b = flow.sample(5, seed=7), flow.sample(5, seed=7)
    assert a.shape == (5, 1, 4, 4) and torch.equal(a, b)
    assert not torch.equal(a, flow.sample(5, seed=8))
    cold = flow.sample(3, seed=7, temperature=0.0)
    torch.testing.assert_close(cold, flow.inverse(torch.zeros(3, 16))[0])
    z = flow(flow.sample(4, seed=1, temperature=0.5))[0]
    assert float(z.detach().std()) < 0.75           # the latent came from N(0, 0.25 I)


def test_glow_samples_and_trains():
    torch.manual_seed(0)
    flow = genkernels.Glow((1, 4, 4), levels=2, steps=2, hidden=8, seed=0)
    assert flow.sample(3, seed=2).shape == (3, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(64, 1, 4, 4, generator=g) * 0.1 + torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = flow.bits_per_dim(data)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.5, losses[::5]


def test_conditional_flow_and_training():
    torch.manual_seed(0)
    flow = genkernels.RealNVP((2,), layers=4, hidden=32, context_features=1)
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 2, (256, 1), generator=g).float()
    data = torch.randn(256, 2, generator=g) * 0.3 + (label * 4 - 2)   # the label moves the cluster
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = -flow.log_prob(data, label).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 1.0, losses[::10]
    with torch.no_grad():
        left = flow.sample(200, seed=0, context=torch.zeros(200, 1))
        right = flow.sample(200, seed=0, context=torch.ones(200, 1))
    assert float(left.mean()) < -1.0 < 1.0 < float(right.mean())


def test_check_finite_names_the_layer_that_made_a_nan():
    torch.manual_seed(0)
    flow = genkernels.RealNVP((4,), layers=3, hidden=8)
    x = torch.randn(5, 4)
    flow(x)                                         # ActNorms initialised on clean data
    coupling = flow.steps[3]                        # the second coupling (ActNorm, coupling, ...)
    with torch.no_grad():
        coupling.conditioner.out.bias[0] = math.nan
    z, _ = flow(x)
    assert not bool(torch.isfinite(z).all())        # unchecked: the NaN surfaces at the end
    flow.check_finite = True
    with pytest.raises(FloatingPointError, match=r"AffineCoupling \(step 3 of its block, forward\)"):
        flow(x)
    glow = genkernels.Glow((1, 4, 4), levels=1, steps=1, hidden=4, seed=0)
    glow(torch.randn(2, 1, 4, 4))
    glow.check_finite = True
    with torch.no_grad():
        glow.blocks[0].layers[1].log_s[0] = 200.0   # the 1x1 convolution's scale overflows
    with pytest.raises(FloatingPointError, match="InvConv1x1"):
        glow(torch.randn(2, 1, 4, 4))


@pytest.mark.parametrize("call, error, match", [
    (lambda: genkernels.RealNVP((1, 6, 6), scales=3), ValueError, "divisible by 4"),
    (lambda: genkernels.RealNVP((1, 6)), ValueError, r"shape must be \(C, H, W\) or \(D,\)"),
    (lambda: genkernels.RealNVP((1,)), ValueError, "features"),
    (lambda: genkernels.RealNVP((2,))(torch.randn(3, 3)), ValueError, r"x must be \(B, 2\)"),
    (lambda: genkernels.RealNVP((2,)).inverse(torch.randn(3, 2, 1)), ValueError, r"z must be \(B, 2\)"),
    (lambda: genkernels.RealNVP((2,)).sample(2, temperature=-1.0), ValueError, "temperature"),
    (lambda: genkernels.RealNVP((2,)).sample(0), ValueError, "n"),
    (lambda: genkernels.Glow((1, 6, 6), levels=2), ValueError, "divisible by 4"),
    (lambda: genkernels.Glow((4,)), ValueError, r"shape must be \(C, H, W\)"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
