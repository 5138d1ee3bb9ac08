"""Masked autoregressive flows (genkernels.MAF, genkernels.IAF and their transform
genkernels.flows.MaskedAffineAutoregressive, conditioned by genkernels.MADE): exact inverses,
the log-determinant against the brute-force log |det J|, causality of the conditioner in every
order (and a wrong mask caught), a 2-D density that integrates to its mass, IAF's one-pass
reparameterised sampling, conditioning, training, torch.compile, bad input."""

import math

import pytest
import torch
from helpers import grid_mass_and_inside, jacobian_logdet, needs, num_threads, randomise_flow

import genkernels
from genkernels import IAF, MAF, check_autoregressive
from genkernels.flows import MaskedAffineAutoregressive


@pytest.fixture(autouse=True)
def _one_thread():
    """Small layers and batches: one thread (beside the other test worker a second thread
    waits a time slice per small call); the tests that compare thread counts set their own."""
    with num_threads(1):
        yield


BACKENDS = [pytest.param("reference"), pytest.param("cpu", marks=needs("cpu")),
            pytest.param("triton", marks=needs("triton"))]



@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iaf", [False, True], ids=["MAF", "IAF"])
@pytest.mark.parametrize("order", ["natural", "reversed", [2, 0, 4, 1, 3]], ids=["natural", "reversed", "custom"])
def test_transform_inverse_logdet_and_causality(backend, iaf, order):
    torch.manual_seed(0)
    layer = randomise_flow(MaskedAffineAutoregressive(5, (12, 10), order=order, inverse_autoregressive=iaf,
                                                  backend=backend, made_backend="reference"), scale=0.3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    z, logdet = layer(x)
    back, logdet_inv = layer.inverse(z)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_inv, -logdet)
    torch.testing.assert_close(logdet, jacobian_logdet(layer, x))
    # the conditioner: dimension i's (s, t) depend on exactly the dimensions before i
    ranks = torch.argsort(layer.order)
    report = check_autoregressive(lambda v: layer.params(v).transpose(1, 2), (5,), order=ranks)
    assert report.ok and not report.blind, str(report)


def test_a_wrong_mask_is_caught_and_breaks_the_inverse():
    torch.manual_seed(0)
    layer = randomise_flow(MaskedAffineAutoregressive(4, 8), scale=0.3).double()
    skip = layer.made.skip
    skip.set_prefix((skip.prefix + 1).clamp(max=4))        # each output now sees its own input
    report = check_autoregressive(lambda v: layer.params(v).transpose(1, 2), (4,), order="natural")
    assert not report.ok
    x = torch.randn(3, 4, dtype=torch.float64)
    assert not torch.allclose(layer.inverse(layer(x)[0])[0], x)


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_flow_inverse_logdet_gradcheck_and_compile(cls):
    torch.manual_seed(0)
    flow = randomise_flow(cls(3, layers=2, hidden=8), scale=0.3).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    z, logdet = flow(x)
    back, logdet_inv = flow.inverse(z)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_inv, -logdet)
    torch.testing.assert_close(logdet, jacobian_logdet(flow, x))
    leaf = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: flow.log_prob(v), (leaf,))
    torch._dynamo.reset()
    flow.eval()          # (a training-mode ActNorm reads its init flag: a graph break)
    compiled = torch.compile(lambda v: flow.log_prob(v), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), flow.log_prob(x))


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_a_2d_density_integrates_to_its_mass_on_the_grid(cls):
    torch.manual_seed(0)
    # a made-up state (seed 4) that keeps most of its mass in the box, so the comparison means something
    flow = randomise_flow(cls(2, layers=3, hidden=16), seed=4, scale=0.4).double()
    mass, inside = grid_mass_and_inside(flow, 9, 301, 20000)
    assert inside > 0.3 and abs(mass - inside) < 0.015, (mass, inside)


def test_iaf_samples_in_one_pass_with_gradients_and_scores_them():
    """IAF's sampling direction is one MADE pass a layer, differentiable in the parameters
    (reparameterised draws, as a variational posterior needs); log_prob of its own samples
    equals the base density of z minus the sampling map's log-determinant."""
    torch.manual_seed(0)
    flow = randomise_flow(IAF(4, layers=2, hidden=16), scale=0.3).double()
    z = torch.randn(6, 4, dtype=torch.float64)
    calls = []
    handles = [m.made.register_forward_hook(lambda *_: calls.append(1)) for m in flow.modules()
               if isinstance(m, MaskedAffineAutoregressive)]
    x, logdet = flow.inverse(z)
    assert len(calls) == 2                                   # one pass per layer
    for h in handles:
        h.remove()
    x.sum().backward()
    assert all(p.grad is not None for p in flow.parameters() if p.requires_grad and p.dim() == 2)
    base = -0.5 * z.pow(2).sum(1) - 2 * math.log(2 * math.pi)
    torch.testing.assert_close(flow.log_prob(x.detach()), base - logdet.detach())


def test_maf_trains_on_two_moons_and_conditions_on_a_label():
    from sklearn.datasets import make_moons

    torch.manual_seed(0)
    data, label = make_moons(512, noise=0.05, random_state=0)
    data = torch.as_tensor(data, dtype=torch.float32)
    flow = MAF(2, layers=4, hidden=32)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    losses = []
    for _ in range(150):
        loss = -flow.log_prob(data).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 1.0, losses[::25]
    # conditional: the label picks the moon
    ctx = torch.as_tensor(label, dtype=torch.float32)[:, None]
    flow = MAF(2, layers=3, hidden=32, context_features=1)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for _ in range(150):
        loss = -flow.log_prob(data, ctx).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        upper = flow.sample(300, seed=0, context=torch.zeros(300, 1))
        lower = flow.sample(300, seed=0, context=torch.ones(300, 1))
    assert float(upper[:, 1].mean()) > float(lower[:, 1].mean()) + 0.4


@pytest.mark.parametrize("call, error, match", [
    (lambda: MAF(0), ValueError, r"shape must be \(D,\)"),
    (lambda: MAF((2, 2)), ValueError, r"shape must be \(D,\)"),
    (lambda: MAF(3, layers=0), ValueError, "layers"),
    (lambda: MAF(3, hidden=0), ValueError, "hidden"),
    (lambda: MAF(3, hidden=()), TypeError, "hidden"),
    (lambda: MaskedAffineAutoregressive(3, order=[0, 0, 1]), ValueError, "permutation"),
    (lambda: MaskedAffineAutoregressive(3, order="random"), ValueError, "order"),
    (lambda: MaskedAffineAutoregressive(3, scale_bound=0.0), ValueError, "bound"),
    (lambda: MaskedAffineAutoregressive(3)(torch.randn(2, 4)), ValueError, r"x must be \(B, 3\)"),
    (lambda: MaskedAffineAutoregressive(3).inverse(torch.zeros(2, 3, dtype=torch.int64)), TypeError, "floating"),
    (lambda: MAF(3, context_features=2).log_prob(torch.randn(2, 3)), TypeError, "context"),
    (lambda: MAF(3).log_prob(torch.randn(2, 3), torch.randn(2, 1)), ValueError, "unconditional"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_public_names():
    assert genkernels.MAF is MAF and genkernels.IAF is IAF
    assert genkernels.flows.MaskedAffineAutoregressive is MaskedAffineAutoregressive
