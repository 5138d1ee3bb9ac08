"""Parallel tempering (RBM.fit(method="pt"), RBM.sample(pt_betas=...)): the beta = 1 chains
sample the model exactly, cross between modes that trap Gibbs chains, and train."""

import itertools

import numpy as np
import pytest
import scipy.stats
import torch

from genkernels import RBM


def _bimodal(n_visible=6, w=4.0, seed=0):
    """n_visible visible, 2 hidden units: hidden unit 0 ties the visible units into two
    equally likely modes, mostly on (h0 = 1, each unit on with sigmoid(w / 2)) and mostly off
    (h0 = 0), E = 0 at all on and all off; a chain crosses only through states with half the
    units on. Unit 1 adds small random couplings."""
    rbm = RBM(n_visible, 2, seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    rbm.weights[:, 0] = w
    rbm.weights[:, 1] = torch.randn(n_visible, generator=g, dtype=torch.float64) * 0.3
    rbm.visible_bias.fill_(-w / 2)
    rbm.hidden_bias.copy_(torch.tensor([-w * n_visible / 2, 0.2], dtype=torch.float64))
    return rbm


def _toy_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0]], dtype=torch.float64)
    data = protos[torch.randint(0, 3, (n,), generator=g)]
    flip = torch.rand(data.shape, generator=g, dtype=torch.float64) < 0.05
    return torch.where(flip, 1 - data, data)


def _index(v):
    return (v.round().long() * (2 ** torch.arange(v.shape[1] - 1, -1, -1))).sum(1)


def test_pt_samples_pass_a_chi_square_test_against_the_exact_marginal():
    rbm = _bimodal()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    p = torch.exp(rbm.log_likelihood_exact(states)).numpy()
    assert abs(p.sum() - 1) < 1e-12
    n = 4000
    v = rbm.sample(n, n_steps=60, seed=1, pt_betas=[1.0, 0.6, 0.35, 0.2, 0.1])
    counts = np.bincount(_index(v).numpy(), minlength=64).astype(np.float64)
    expected = p * n
    # pool the states expected fewer than 5 times into one cell
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    assert big.sum() >= 10
    stat, pvalue = scipy.stats.chisquare(obs, exp)
    assert pvalue > 1e-3, (stat, pvalue)
    # a sampler with the swap rule's sign reversed fails the same test: tempered states
    # would be pulled to beta = 1 preferentially
    assert 0.35 < float((v.sum(1) > 3).double().mean()) < 0.65


def test_pt_chains_cross_between_modes_where_gibbs_chains_stay():
    # 10 units, w = 6: a Gibbs chain needs 5 of 10 units to flip against sigmoid(-3) odds
    rbm = _bimodal(10, 6.0)
    n = 400
    gibbs_a, gibbs_b = rbm.sample(n, 100, seed=2), rbm.sample(n, 150, seed=2)
    pt_a = rbm.sample(n, 100, seed=2, pt_betas=[1.0, 0.6, 0.35, 0.2, 0.1])
    pt_b = rbm.sample(n, 150, seed=2, pt_betas=[1.0, 0.6, 0.35, 0.2, 0.1])
    def mode(v):
        return v.sum(1) > 5
    gibbs_moves = float((mode(gibbs_a) != mode(gibbs_b)).double().mean())
    pt_moves = float((mode(pt_a) != mode(pt_b)).double().mean())
    assert gibbs_moves < 0.01 and pt_moves > 0.2, (gibbs_moves, pt_moves)
    assert len(rbm._swap_counts[0]) == 4
    rate = rbm._swap_counts[0] / rbm._swap_counts[1]
    assert bool(((rate > 0.05) & (rate <= 1)).all()), rate


def test_one_temperature_is_persistent_cd_exactly():
    x = _toy_data()
    a = RBM(6, 4, seed=3).fit(x, epochs=2, batch_size=10, method="pcd", verbose=False)
    b = RBM(6, 4, seed=3).fit(x, epochs=2, batch_size=10, method="pt", pt_betas=1, verbose=False)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.chains, b.chains) and a.offset == b.offset


def test_pt_training_raises_the_exact_log_likelihood_and_reports_swaps():
    data = _toy_data()
    rbm = RBM(6, 4, seed=3, dtype=torch.float64)
    before = float(rbm.log_likelihood_exact(data).mean())
    rbm.fit(data, epochs=30, batch_size=10, method="pt", pt_betas=4, learning_rate=0.1, verbose=False)
    after = float(rbm.log_likelihood_exact(data).mean())
    assert before < -4.1 and after > before + 0.5, (before, after)
    assert rbm.chains.shape == (40, 4)
    rates = rbm.history[-1]["swap_acceptance"]
    assert len(rates) == 3 and all(0 < r <= 1 for r in rates), rates


def test_pt_gaussian_visible_units_train():
    g = torch.Generator().manual_seed(1)
    centers = torch.tensor([[2.0, -1.0, 0.5], [-1.5, 1.0, -0.5]], dtype=torch.float64)
    x = centers[torch.randint(0, 2, (400,), generator=g)] + 0.3 * torch.randn(400, 3, generator=g,
                                                                             dtype=torch.float64)
    before = float(RBM(3, 4, "gaussian", seed=2, dtype=torch.float64).log_likelihood_exact(x).mean())
    after = {}
    for method in ("pcd", "pt"):
        rbm = RBM(3, 4, "gaussian", seed=2, dtype=torch.float64)
        rbm.fit(x, epochs=20, batch_size=20, learning_rate=0.05, momentum=0.5, method=method, pt_betas=5,
                verbose=False)
        after[method] = float(rbm.log_likelihood_exact(x).mean())
    # two well-separated clusters: the tempered chains visit both, the persistent ones lag
    # (measured: -5.10 untrained, -4.35 after PCD, -3.74 after PT)
    assert after["pt"] > before + 1.0 and after["pt"] > after["pcd"] + 0.3, (before, after)


def test_pt_resume_equals_an_uninterrupted_run(tmp_path):
    x = _toy_data()
    path = str(tmp_path / "rbm.pt")
    whole = RBM(6, 4, seed=4).fit(x, epochs=3, batch_size=16, method="pt", pt_betas=3, verbose=False)
    part = RBM(6, 4, seed=4).fit(x, epochs=2, batch_size=16, method="pt", pt_betas=3, verbose=False,
                                  checkpoint=path)
    del part
    resumed = RBM(6, 4, seed=4).fit(x, epochs=3, batch_size=16, method="pt", pt_betas=3, verbose=False,
                                     checkpoint=path, resume=True)
    for name in ("weights", "visible_bias", "hidden_bias", "chains"):
        assert torch.equal(getattr(whole, name), getattr(resumed, name)), name
    assert whole.offset == resumed.offset


@pytest.mark.parametrize("betas,error,match", [
    (0, ValueError, "pt_betas must be"),
    (True, TypeError, "pt_betas must be an int"),
    ("hot", TypeError, "pt_betas must be an int"),
    ([0.5, 1.0], ValueError, "start at inverse temperature 1"),
    ([], ValueError, "start at inverse temperature 1"),
    ([1.0, 1.0], ValueError, "strictly decreasing"),
    ([1.0, 0.0], ValueError, r"pt_betas must be in \(0, 1\]"),
    ([1.0, float("nan")], ValueError, r"pt_betas must be in \(0, 1\]"),
])
def test_bad_temperatures(betas, error, match):
    rbm = RBM(6, 4, seed=0)
    with pytest.raises(error, match=match):
        rbm.fit(_toy_data(20), epochs=1, method="pt", pt_betas=betas, verbose=False)
    with pytest.raises(error, match=match):
        rbm.sample(2, 1, pt_betas=betas)
    assert rbm.epochs_done == 0 and rbm.offset == 0
