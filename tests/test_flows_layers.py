"""Glow's and RealNVP's invertible layers besides the couplings (genkernels.flows.layers):
Squeeze, ActNorm, InvConv1x1 -- inverse(forward(x)) = x, the log-determinant against the
brute-force log |det J|, ActNorm's data-dependent initialisation (a constant channel
included), a singular 1x1 convolution, bad input."""

import math

import pytest
import torch
from helpers import jacobian_logdet, num_threads

from genkernels.flows import ActNorm, InvConv1x1, Squeeze


@pytest.fixture(autouse=True)
def _one_thread():
    """Small layers and batches: one thread (beside the other test worker a second thread
    waits a time slice per small call); the tests that compare thread counts set their own."""
    with num_threads(1):
        yield


def test_squeeze_moves_each_block_into_channels_and_back():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    y, ld = Squeeze()(x)
    assert y.shape == (2, 12, 2, 3) and torch.equal(ld, torch.zeros(2, dtype=torch.float64))
    # channel c * 4 + (i * 2 + j) holds pixel (2 r + i, 2 s + j) of channel c
    assert torch.equal(y[1, 2 * 4 + 3, 1, 2], x[1, 2, 3, 5]) and torch.equal(y[0, 1, 0, 0], x[0, 0, 0, 1])
    back, ld_inv = Squeeze().inverse(y)
    assert torch.equal(back, x) and torch.equal(ld_inv, ld)
    assert Squeeze(3)(torch.randn(1, 1, 3, 6))[0].shape == (1, 9, 1, 2)


@pytest.mark.parametrize("dims", [(3, 4, 5), (6,)])
def test_actnorm_initialises_from_data_and_inverts(dims):
    torch.manual_seed(0)
    layer = ActNorm(dims[0]).double()
    x = torch.randn(16, *dims, dtype=torch.float64) * 3 + 2
    y, ld = layer(x)
    assert bool(layer.initialized)
    per_channel = y.transpose(0, 1).reshape(dims[0], -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(dims[0], dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(per_channel.std(1, unbiased=False), torch.ones(dims[0], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    back, ld_inv = layer.inverse(y)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld))
    torch.testing.assert_close(ld[:2], jacobian_logdet(layer, x[:2]))


def test_actnorm_constant_channel_stays_finite_and_state_is_saved():
    layer = ActNorm(2)
    x = torch.randn(8, 2, 3, 3)
    x[:, 1] = 5.0                                   # zero variance: no division by zero
    y, ld = layer(x)
    assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(ld).all())
    assert float(y[:, 1].detach().abs().max()) == 0.0
    fresh = ActNorm(2)
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized) and fresh._ready
    torch.testing.assert_close(fresh(x)[0], y)      # no second initialisation
    with pytest.raises(ValueError, match="NaN or Inf"):
        ActNorm(2)(torch.full((4, 2), math.nan))
    with pytest.raises(ValueError, match="at least two values"):
        ActNorm(2)(torch.randn(1, 2))


def test_initialised_actnorm_compiles_to_one_graph_in_training_mode():
    """Once initialised, ActNorm's training-mode forward reads no buffer value in Python:
    a whole Glow's and RealNVP's loss compiles with fullgraph=True (it was a graph break per ActNorm)."""
    from genkernels import Glow, RealNVP
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    for flow in (Glow((1, 8, 8), levels=2, steps=2, hidden=4), RealNVP((1, 8, 8), scales=2, hidden=4)):
        with torch.no_grad():
            flow.log_prob(x)                        # the data-dependent initialisation, eager
        assert flow.training
        compiled = torch.compile(lambda v, flow=flow: -flow.log_prob(v).mean(), fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x), -flow.log_prob(x).mean())
    layer = ActNorm(3)
    layer.initialized.fill_(True)                   # set directly (as an old state would): read once
    y, _ = layer(torch.randn(4, 3))
    assert layer._ready and float(layer.bias.abs().sum()) == 0.0


@pytest.mark.parametrize("lu", [True, False])
def test_invconv_inverts_and_its_logdet_is_the_jacobians(lu):
    layer = InvConv1x1(4, lu=lu, seed=3).double()
    with torch.no_grad():                           # away from a rotation: |det| != 1
        if lu:
            layer.log_s.add_(torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64))
        else:
            layer.weight.mul_(1.5)
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64)
    y, ld = layer(x)
    back, ld_inv = layer.inverse(y)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ld, jacobian_logdet(layer, x))
    torch.testing.assert_close(ld_inv, -ld)
    torch.testing.assert_close(ld[0], 6 * torch.linalg.slogdet(layer.matrix())[1])
    assert torch.equal(InvConv1x1(4, lu=lu, seed=3).matrix(), InvConv1x1(4, lu=lu, seed=3).matrix())


def test_invconv_trains_and_a_singular_matrix_is_an_error():
    layer = InvConv1x1(3, seed=0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(4, 3, 2, 2)
    y, ld = layer(x)
    (y.pow(2).sum() - ld.sum()).backward()
    assert all(p.grad is not None for p in (layer.lower, layer.upper, layer.log_s))
    opt.step()
    with torch.no_grad():
        layer.log_s[1] = -math.inf
    with pytest.raises(ValueError, match="singular"):
        layer(x)
    full = InvConv1x1(3, lu=False, seed=0)
    with torch.no_grad():
        full.weight[2] = full.weight[0]
    with pytest.raises(ValueError, match="singular"):
        full.inverse(x)


@pytest.mark.parametrize("call, error, match", [
    (lambda: Squeeze()(torch.randn(1, 1, 3, 4)), ValueError, "divisible by 2"),
    (lambda: Squeeze().inverse(torch.randn(1, 3, 2, 2)), ValueError, "channels divisible by 4"),
    (lambda: Squeeze()(torch.randn(2, 4)), ValueError, r"\(B, C, H, W\)"),
    (lambda: Squeeze(1), ValueError, "factor"),
    (lambda: ActNorm(3)(torch.randn(2, 4)), ValueError, r"\(B, 3\)"),
    (lambda: ActNorm(3, eps=0), ValueError, "eps"),
    (lambda: InvConv1x1(3)(torch.randn(1, 4, 2, 2)), ValueError, "4 channels; this layer has 3"),
    (lambda: InvConv1x1(3)([1.0]), TypeError, "torch.Tensor"),
    (lambda: InvConv1x1(0), ValueError, "channels"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
