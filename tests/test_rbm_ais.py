"""RBM.log_partition_ais / log_likelihood_ais against exact enumeration on small models."""

import math

import numpy as np
import pytest
import torch

from genkernels import RBM


def _random_rbm(dtype=torch.float64, std=0.5, seed=1):
    rbm = RBM(10, 8, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    rbm.weights.copy_(torch.randn(10, 8, generator=g, dtype=torch.float64) * std)
    rbm.visible_bias.copy_(torch.randn(10, generator=g, dtype=torch.float64) * 0.5)
    rbm.hidden_bias.copy_(torch.randn(8, generator=g, dtype=torch.float64) * 0.5)
    return rbm


def _data(n=500, seed=2):
    g = torch.Generator().manual_seed(seed)
    p = torch.linspace(0.1, 0.7, 10, dtype=torch.float64)
    return (torch.rand(n, 10, generator=g, dtype=torch.float64) < p).to(torch.float64)


def _trained(dtype=torch.float64):
    x = _data()
    rbm = RBM(10, 8, seed=3, dtype=dtype)
    rbm.fit(x.to(dtype), epochs=20, batch_size=50, learning_rate=0.1, verbose=False)
    return rbm, x


def _base_rate(x):
    p = x.mean(0).clamp(0.01, 0.99)
    return torch.log(p / (1 - p))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("schedule", ["linear", "piecewise"])
def test_random_rbm_matches_exact(dtype, schedule):
    rbm = _random_rbm(dtype)
    exact = rbm.log_partition_exact()
    est, se = rbm.log_partition_ais(n_chains=100, n_betas=1000, schedule=schedule, seed=0)
    assert se > 0
    assert abs(est - exact) < 3 * se
    assert abs(est - exact) < 0.1


@pytest.mark.parametrize("base", ["uniform", "data"])
def test_trained_rbm_matches_exact(base):
    rbm, x = _trained()
    exact = rbm.log_partition_exact()
    kw = {"base_visible_bias": _base_rate(x)} if base == "data" else {}
    est, se = rbm.log_partition_ais(n_chains=100, n_betas=1000, seed=0, **kw)
    assert se > 0
    assert abs(est - exact) < 3 * se
    assert abs(est - exact) < 0.1


def test_standard_error_shrinks_with_more_chains():
    rbm = _random_rbm(std=1.0)
    exact = rbm.log_partition_exact()
    est_few, se_few = rbm.log_partition_ais(n_chains=50, n_betas=20, seed=0)
    est_many, se_many = rbm.log_partition_ais(n_chains=3200, n_betas=20, seed=0)
    # 64 times the chains: the error bar shrinks about 8-fold
    assert 0 < se_many < se_few / 3
    assert abs(est_many - exact) < 3 * se_many
    assert abs(est_few - exact) < 3 * se_few


def test_more_betas_shrink_the_error():
    rbm = _random_rbm(std=1.0)
    _, se_few = rbm.log_partition_ais(n_chains=200, n_betas=10, seed=0)
    _, se_many = rbm.log_partition_ais(n_chains=200, n_betas=1000, seed=0)
    assert se_many < se_few / 2


def test_single_step_is_importance_sampling_from_the_base():
    """n_betas=1 (betas [0, 1]): log w = -F(v) + F_A(v) with v ~ p_A, no Gibbs step."""
    rbm = _random_rbm()
    exact = rbm.log_partition_exact()
    est, se = rbm.log_partition_ais(n_chains=4000, n_betas=1, seed=0)
    same = rbm.log_partition_ais(n_chains=4000, betas=[0.0, 1.0], seed=0)
    assert (est, se) == same
    assert se > 0 and abs(est - exact) < 3 * se
    # the weights by hand: base samples with the counters the model documents
    from genkernels.boltzmann.rbm_reference import counters_per_row, half_step_uniforms
    u = half_step_uniforms(0, 0, 4000, 10, "cpu")
    v = (u < 0.5).to(torch.float64)
    log_w = -rbm.free_energy(v).to(torch.float64) - 8 * math.log(2.0)  # -F(v) + F_0(v), F_0 = -8 log 2
    log_z_a = 8 * math.log(2.0) + 10 * math.log(2.0)
    ref = float(torch.logsumexp(log_w, 0) - math.log(4000)) + log_z_a
    assert est == pytest.approx(ref, abs=1e-9)
    assert counters_per_row(10) == 3


def test_model_equal_to_base_is_exact():
    """Zero weights and hidden biases, visible bias = base: every weight is 1."""
    rbm = RBM(6, 5, seed=0, dtype=torch.float64)
    rbm.weights.zero_()
    rbm.visible_bias.copy_(torch.linspace(-1, 1, 6, dtype=torch.float64))
    est, se = rbm.log_partition_ais(n_chains=10, n_betas=5, base_visible_bias=rbm.visible_bias.clone(), seed=0)
    assert se == 0.0
    assert est == pytest.approx(rbm.log_partition_exact(), abs=1e-12)


def test_repeated_betas_and_all_at_zero_then_one():
    rbm = _random_rbm()
    exact = rbm.log_partition_exact()
    betas = torch.tensor([0.0, 0.0, 0.0] + torch.linspace(0, 1, 201)[1:].tolist(), dtype=torch.float64)
    est, se = rbm.log_partition_ais(n_chains=200, betas=betas, seed=0)
    assert abs(est - exact) < 3 * se
    est2, se2 = rbm.log_partition_ais(n_chains=200, betas=np.linspace(0, 1, 201), seed=0)
    assert abs(est2 - exact) < 3 * se2
    # a schedule given in n_betas's place is the same schedule
    assert rbm.log_partition_ais(200, torch.from_numpy(np.linspace(0, 1, 201)), seed=0) == (est2, se2)
    # the linear schedule (torch.linspace: equal up to the last bit of a few betas)
    assert rbm.log_partition_ais(200, 200, seed=0) == pytest.approx((est2, se2), rel=1e-9)


def test_log_likelihood_ais_matches_exact():
    rbm, x = _trained()
    ll, err = rbm.log_likelihood_ais(x, n_chains=100, n_betas=1000, seed=0,
                                     base_visible_bias=_base_rate(x))
    exact = float(rbm.log_likelihood_exact(x).mean())
    assert err > 0
    assert abs(ll - exact) < 3 * err
    assert abs(ll - exact) < 0.1
    log_z, se = rbm.log_partition_ais(n_chains=100, n_betas=1000, seed=0, base_visible_bias=_base_rate(x))
    assert ll == pytest.approx(-float(rbm.free_energy(x).mean()) - log_z, abs=1e-12)
    assert err == se


def test_deterministic_and_stream():
    rbm = _random_rbm()
    a = rbm.log_partition_ais(n_chains=50, n_betas=100, seed=7)
    b = rbm.log_partition_ais(n_chains=50, n_betas=100, seed=7)
    c = rbm.log_partition_ais(n_chains=50, n_betas=100, seed=8)
    assert a == b and a != c
    assert rbm.offset == 0  # an explicit seed leaves the model's stream alone
    # seed=None draws from the model's stream and advances it
    d = rbm.log_partition_ais(n_chains=50, n_betas=100)
    moved = rbm.offset
    assert moved > 0
    e = rbm.log_partition_ais(n_chains=50, n_betas=100)
    assert d != e and rbm.offset == 2 * moved
    # the model's stream at offset 0 with seed s is what seed=s draws
    fresh = _random_rbm(seed=1)
    fresh.seed = 7
    assert fresh.log_partition_ais(n_chains=50, n_betas=100) == a


def test_bad_arguments():
    rbm = _random_rbm()
    with pytest.raises(ValueError, match="n_chains"):
        rbm.log_partition_ais(n_chains=1)
    with pytest.raises(TypeError, match="n_chains"):
        rbm.log_partition_ais(n_chains=2.5)
    with pytest.raises(ValueError, match="n_betas"):
        rbm.log_partition_ais(n_betas=0)
    with pytest.raises(ValueError, match="schedule"):
        rbm.log_partition_ais(schedule="geometric")
    with pytest.raises(ValueError, match="betas must start at 0 and end at 1"):
        rbm.log_partition_ais(betas=[0.0, 0.5])
    with pytest.raises(ValueError, match="betas must start at 0"):
        rbm.log_partition_ais(betas=[0.1, 1.0])
    with pytest.raises(ValueError, match="betas must be 1-D"):
        rbm.log_partition_ais(betas=[1.0])
    with pytest.raises(ValueError, match="betas must be 1-D"):
        rbm.log_partition_ais(betas=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="betas must be non-decreasing"):
        rbm.log_partition_ais(betas=[0.0, 0.6, 0.4, 1.0])
    with pytest.raises(ValueError, match="betas contains NaN"):
        rbm.log_partition_ais(betas=[0.0, float("nan"), 1.0])
    with pytest.raises(TypeError, match="betas"):
        rbm.log_partition_ais(betas="0 1")
    with pytest.raises(ValueError, match="base_visible_bias must be \\(10,\\)"):
        rbm.log_partition_ais(base_visible_bias=torch.zeros(9))
    with pytest.raises(ValueError, match="base_visible_bias contains NaN"):
        rbm.log_partition_ais(base_visible_bias=torch.full((10,), float("inf")))
    with pytest.raises(TypeError, match="base_visible_bias"):
        rbm.log_partition_ais(base_visible_bias=[0.0] * 10)
    with pytest.raises(ValueError, match="seed"):
        rbm.log_partition_ais(seed=-1)
    with pytest.raises(ValueError, match="x must hold at least one row"):
        rbm.log_likelihood_ais(torch.zeros(0, 10))
    with pytest.raises(ValueError, match="x must be"):
        rbm.log_likelihood_ais(torch.zeros(3, 9))
    with pytest.raises(TypeError, match="unexpected keyword"):
        rbm.log_likelihood_ais(torch.zeros(3, 10), n_chain=10)
    gauss = RBM(4, 3, "gaussian", seed=0)
    with pytest.raises(NotImplementedError, match="Bernoulli visible units"):
        gauss.log_partition_ais()
    with pytest.raises(NotImplementedError, match="Bernoulli visible units"):
        gauss.log_likelihood_ais(torch.zeros(2, 4))


def test_far_base_model():
    """A base far from the model (every b_A = -2): the Gibbs steps must mix the base's
    visible bias into the intermediate ones, or the estimate is off by several nats."""
    rbm = _random_rbm(std=1.0)
    exact = rbm.log_partition_exact()
    est, se = rbm.log_partition_ais(n_chains=2000, n_betas=50, seed=0,
                                    base_visible_bias=torch.full((10,), -2.0, dtype=torch.float64))
    assert se > 0
    assert abs(est - exact) < 3 * se
    assert abs(est - exact) < 0.1
