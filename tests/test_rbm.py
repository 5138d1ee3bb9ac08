"""genkernels.RBM: exact quantities on tiny models, training, resume, errors, scikit-learn."""

import itertools
import math

import numpy as np
import pytest
import torch

import genkernels
from genkernels import RBM, Hopfield, backends
from genkernels import checkpoint as ckpt
from genkernels.boltzmann import rbm_reference as reference
from genkernels.data import load_digits


def _tiny(visible="bernoulli", n_visible=5, n_hidden=4, seed=0, scale=1.0, learn_variance=False):
    rbm = RBM(n_visible, n_hidden, visible, learn_variance, seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    rbm.weights.copy_(torch.randn(n_visible, n_hidden, generator=g, dtype=torch.float64) * scale)
    rbm.visible_bias.copy_(torch.randn(n_visible, generator=g, dtype=torch.float64) * 0.5)
    rbm.hidden_bias.copy_(torch.randn(n_hidden, generator=g, dtype=torch.float64) * 0.5)
    if learn_variance:
        rbm.log_sigma.copy_(torch.randn(n_visible, generator=g, dtype=torch.float64) * 0.3)
    return rbm


def _all_states(n):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def _energy(rbm, v, h):
    """E(v, h) for every pair: v (P, n_visible), h (Q, n_hidden) -> (P, Q)."""
    return -(v @ rbm.visible_bias)[:, None] - (h @ rbm.hidden_bias)[None, :] - v @ rbm.weights @ h.T


def _toy_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0]], dtype=torch.float64)
    data = protos[torch.randint(0, 3, (n,), generator=g)]
    flip = torch.rand(data.shape, generator=g, dtype=torch.float64) < 0.05
    return torch.where(flip, 1 - data, data)


# ------------------------------------------------------------------ exact quantities
def test_log_partition_enumeration_equals_brute_force_over_both_layers():
    rbm = _tiny()
    v, h = _all_states(5), _all_states(4)
    brute = float(torch.logsumexp(-_energy(rbm, v, h).reshape(-1), 0))
    assert math.isclose(rbm.log_partition_exact(), brute, rel_tol=1e-12)
    assert math.isclose(rbm.log_partition_exact("visible"), brute, rel_tol=1e-12)
    assert math.isclose(rbm.log_partition_exact("hidden"), brute, rel_tol=1e-12)


def test_free_energy_identity_and_normalised_likelihood():
    rbm = _tiny()
    v, h = _all_states(5), _all_states(4)
    # F(v) = -log sum_h exp(-E(v, h))
    torch.testing.assert_close(rbm.free_energy(v), -torch.logsumexp(-_energy(rbm, v, h), 1),
                               rtol=1e-12, atol=1e-12)
    # p(v) sums to one over the 2^5 visible states
    assert abs(float(torch.logsumexp(rbm.log_likelihood_exact(v), 0))) < 1e-12


def test_gaussian_log_partition_equals_numerical_integral():
    """Gaussian visible units with learned variances: log Z in closed form over the hidden
    states equals the integral of exp(-F(v)) over a fine grid (2 visible units)."""
    rbm = _tiny("gaussian", n_visible=2, n_hidden=3, scale=0.6, learn_variance=True)
    grid = torch.linspace(-14, 14, 1401, dtype=torch.float64)
    v = torch.cartesian_prod(grid, grid)
    step = float(grid[1] - grid[0])
    integral = float(torch.logsumexp(-rbm.free_energy(v), 0)) + 2 * math.log(step)
    assert math.isclose(rbm.log_partition_exact(), integral, rel_tol=1e-8)


def test_score_is_sklearn_pseudo_likelihood_with_a_keyed_flip():
    rbm = _tiny()
    x = _all_states(5)[torch.tensor([3, 7, 30, 12])]
    score = rbm.score(x)
    assert torch.equal(score, rbm.score(x))
    unit = genkernels.random.randint(rbm.seed, torch.arange(4)).to(torch.int64) % 5
    flipped = x.clone()
    flipped[torch.arange(4), unit] = 1 - flipped[torch.arange(4), unit]
    fe, fe_ = rbm.free_energy(x), rbm.free_energy(flipped)
    expected = -5 * torch.from_numpy(np.logaddexp(0, -(fe_ - fe).numpy()))
    torch.testing.assert_close(score, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", ["cd", "pcd"])
def test_training_raises_the_exact_log_likelihood(method):
    data = _toy_data()
    rbm = RBM(6, 4, seed=3, dtype=torch.float64)
    before = float(rbm.log_likelihood_exact(data).mean())
    rbm.fit(data, epochs=30, batch_size=10, method=method, learning_rate=0.1, verbose=False)
    after = float(rbm.log_likelihood_exact(data).mean())
    # an untrained model is near uniform: 6 log 2 = 4.16 nats; the data's entropy is far lower
    assert before < -4.1 and after > before + 0.5, (before, after)


def test_gaussian_training_raises_the_likelihood():
    g = torch.Generator().manual_seed(1)
    centers = torch.tensor([[2.0, -1.0, 0.5], [-1.5, 1.0, -0.5]], dtype=torch.float64)
    x = centers[torch.randint(0, 2, (400,), generator=g)] + 0.3 * torch.randn(400, 3, generator=g,
                                                                             dtype=torch.float64)
    fixed = RBM(3, 4, "gaussian", seed=2, dtype=torch.float64)
    before = float(fixed.log_likelihood_exact(x).mean())
    fixed.fit(x, epochs=20, batch_size=20, learning_rate=0.05, momentum=0.5, verbose=False)
    assert float(fixed.log_likelihood_exact(x).mean()) > before + 1.0
    assert torch.equal(fixed.sigma, torch.ones(3, dtype=torch.float64))
    learned = RBM(3, 4, "gaussian", learn_variance=True, seed=2, dtype=torch.float64)
    learned.fit(x, epochs=20, batch_size=20, learning_rate=0.02, momentum=0.5, verbose=False)
    assert float(learned.log_likelihood_exact(x).mean()) > before + 1.0
    assert bool((learned.sigma < 0.9).all())  # the clusters are narrower than unit variance


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_update_is_the_free_energy_gradient(visible):
    """With h probabilities, the CD statistics are exactly -dF/dtheta: the update equals
    lr * (d mean F(v_neg) - d mean F(v_pos)) / dtheta from autograd, log sigma included."""
    rbm = _tiny(visible, n_visible=5, n_hidden=4, scale=0.5, learn_variance=visible == "gaussian")
    g = torch.Generator().manual_seed(5)
    v_pos = torch.rand(7, 5, generator=g, dtype=torch.float64)
    v_neg = torch.rand(9, 5, generator=g, dtype=torch.float64)
    names = ["weights", "visible_bias", "hidden_bias"] + (["log_sigma"] if visible == "gaussian" else [])
    params = {n: getattr(rbm, n).clone().requires_grad_(True) for n in names}
    saved = {n: getattr(rbm, n) for n in names}
    for n in names:
        setattr(rbm, n, params[n])
    objective = rbm._free_energy(v_neg).mean() - rbm._free_energy(v_pos).mean()
    grads = dict(zip(names, torch.autograd.grad(objective, [params[n] for n in names])))
    for n in names:
        setattr(rbm, n, saved[n])
    with torch.no_grad():
        h_pos, h_neg = rbm._hidden_probs(v_pos), rbm._hidden_probs(v_neg)
        rbm._apply_gradient(v_pos, h_pos, v_neg, h_neg, 0.1, 0.0, 0.0, None, 0.0)
    for n in names:
        torch.testing.assert_close(getattr(rbm, n) - params[n].detach(), 0.1 * grads[n],
                                   rtol=1e-10, atol=1e-12)


def test_digits_training_lowers_reconstruction_error():
    x, _ = load_digits()
    rbm = RBM(64, 48, seed=0)
    before = rbm.reconstruction_error(x)
    rbm.fit(x, epochs=4, batch_size=20, learning_rate=0.05, momentum=0.5, verbose=False)
    after = rbm.reconstruction_error(x)
    assert after < 0.6 * before, (before, after)
    assert [h["epoch"] for h in rbm.history] == [1, 2, 3, 4]
    assert rbm.history[-1]["reconstruction_error"] < rbm.history[0]["reconstruction_error"]


def test_options_sparsity_weight_decay_and_monitor():
    data = _toy_data(200)
    rbm = RBM(6, 8, seed=4, dtype=torch.float64)
    rbm.fit(data, epochs=20, batch_size=10, learning_rate=0.1, sparsity_target=0.05, sparsity_cost=0.5,
            weight_decay=1e-3, monitor="pseudo_likelihood", verbose=False)
    assert float(rbm.transform(data).mean()) < 0.3
    assert all("pseudo_likelihood" in h for h in rbm.history)
    plain = RBM(6, 8, seed=4, dtype=torch.float64).fit(data, epochs=20, batch_size=10, learning_rate=0.1,
                                                       monitor=None, verbose=False)
    assert float(plain.transform(data).mean()) > float(rbm.transform(data).mean())


def test_binarize_options():
    x = torch.tensor([[0.2, 1.7, -0.3], [0.9, 0.4, 0.6]])
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\].*binarize"):
        RBM(3, 2, seed=0).fit(x, epochs=1, verbose=False)
    rbm = RBM(3, 2, seed=0)
    assert torch.equal(rbm._data(x, binarize="threshold"), torch.tensor([[0.0, 1, 0], [1, 0, 1]]))
    sampled = rbm._data(x, binarize="stochastic")
    assert set(sampled.unique().tolist()) <= {0.0, 1.0} and sampled[0, 1] == 1 and sampled[0, 2] == 0
    RBM(3, 2, seed=0).fit(x, epochs=1, binarize="threshold", verbose=False)


@pytest.mark.parametrize("method", ["cd", "pcd"])
def test_resume_equals_uninterrupted(tmp_path, method):
    x, _ = load_digits()
    x = x[:300]
    kwargs = {"batch_size": 32, "method": method, "k": 2, "learning_rate": 0.05, "momentum": 0.7,
              "sparsity_target": 0.1, "verbose": False}
    whole = RBM(64, 20, seed=11).fit(x, epochs=4, **kwargs)
    path = str(tmp_path / "rbm.pt")
    RBM(64, 20, seed=11).fit(x, epochs=2, checkpoint=path, **kwargs)
    assert RBM.load(path).epochs_done == 2
    resumed = RBM(64, 20, seed=11).fit(x, epochs=4, checkpoint=path, resume=True, **kwargs)
    assert resumed.epochs_done == 4 and resumed.offset == whole.offset
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert resumed.history == whole.history


def test_save_load_round_trip_and_sampling(tmp_path):
    x, _ = load_digits()
    rbm = RBM(64, 16, seed=5).fit(x[:200], epochs=1, method="pcd", batch_size=50, verbose=False)
    path = tmp_path / "m.pt"
    rbm.save(path)
    loaded = RBM.load(path)
    assert torch.equal(loaded.transform(x[:10]), rbm.transform(x[:10]))
    assert loaded.chains.shape == (50, 16) and loaded.offset == rbm.offset
    samples = rbm.sample(7, n_steps=5, seed=9)
    assert samples.shape == (7, 64) and set(samples.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(samples, loaded.sample(7, n_steps=5, seed=9))
    assert loaded.offset == rbm.offset  # an explicit seed leaves the model's stream alone
    first = rbm.sample(3, n_steps=2)
    assert rbm.offset != loaded.offset and not torch.equal(first, rbm.sample(3, n_steps=2))
    gauss = RBM(4, 3, "gaussian", seed=1).sample(5, n_steps=3)
    assert gauss.shape == (5, 4) and bool(torch.isfinite(gauss).all())


# ------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors(tmp_path):
    rbm = RBM(4, 3, seed=0)
    good = torch.ones(5, 4)
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\]"):
        rbm.fit(good * 2, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"x must be \(N, 4\)"):
        rbm.fit(torch.ones(5, 3), epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"x must be \(N, 4\)"):
        rbm.transform(torch.ones(4))
    for bad in (math.nan, math.inf):
        x = good.clone()
        x[2, 1] = bad
        with pytest.raises(ValueError, match="x contains NaN or Inf .first at row 2"):
            rbm.fit(x, epochs=1, verbose=False)
    with pytest.raises(ValueError, match=r"learning_rate must be in \(0"):
        rbm.fit(good, learning_rate=-0.1, verbose=False)
    with pytest.raises(ValueError, match=r"k must be in \[1, inf\]; got 0"):
        rbm.fit(good, k=0, verbose=False)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        rbm.fit(good, momentum=1.0, verbose=False)
    with pytest.raises(ValueError, match="method must be one of 'cd', 'pcd', 'pt'"):
        rbm.fit(good, method="gibbs", verbose=False)
    with pytest.raises(ValueError, match="at least one row"):
        rbm.fit(torch.ones(0, 4), verbose=False)
    with pytest.raises(TypeError, match="x must be a torch.Tensor or numpy array"):
        rbm.fit([[0, 1, 0, 1]], verbose=False)
    with pytest.raises(ValueError, match="visible must be one of"):
        RBM(4, 3, "poisson")
    with pytest.raises(ValueError, match="learn_variance=True needs visible='gaussian'"):
        RBM(4, 3, learn_variance=True)
    with pytest.raises(ValueError, match="at most 20 units"):
        RBM(30, 25).log_partition_exact()
    with pytest.raises(ValueError, match="score .pseudo-likelihood. is defined for Bernoulli"):
        RBM(4, 3, "gaussian").score(good)
    other = tmp_path / "hopfield.pt"
    Hopfield(4, seed=0).save(other)
    with pytest.raises(ValueError, match="not a genkernels RBM checkpoint"):
        RBM.load(other)
    with pytest.raises(ValueError, match="not a genkernels RBM checkpoint"):
        rbm.fit(good, epochs=1, checkpoint=str(other), resume=True, verbose=False)
    mine = tmp_path / "rbm.pt"
    RBM(5, 3, seed=0).save(mine)
    with pytest.raises(ValueError, match="checkpoint: it holds an RBM with"):
        rbm.fit(good, epochs=1, checkpoint=str(mine), resume=True, verbose=False)


def test_failed_save_never_damages_an_existing_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "rbm.pt"
    rbm = RBM(6, 3, seed=0)
    rbm.save(path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    saved = rbm.weights.clone()
    rbm.weights.add_(1.0)
    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        rbm.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(RBM.load(path).weights, saved)
    assert [p.name for p in tmp_path.iterdir()] == ["rbm.pt"]


# ------------------------------------------------------------------------ scikit-learn
@pytest.mark.parametrize("method", ["pcd", "cd"])
def test_one_update_equals_sklearn_bernoulli_rbm(method):
    """With the same parameters, the same chain states and the same negative visible
    samples, our update equals BernoulliRBM._fit (h_pos probabilities, v_neg sampled,
    h_neg probabilities, learning_rate / batch_size times the summed statistics)."""
    sklearn_rbm = pytest.importorskip("sklearn.neural_network").BernoulliRBM
    n_vis, n_hid, batch, lr = 12, 7, 16, 0.3
    g = torch.Generator().manual_seed(0)
    v_pos = (torch.rand(batch, n_vis, generator=g, dtype=torch.float64) < 0.4).to(torch.float64)
    v_pos[:3] = torch.rand(3, n_vis, generator=g, dtype=torch.float64)  # probabilities as data
    ours = _tiny(n_visible=n_vis, n_hidden=n_hid, seed=3, scale=0.3)
    if method == "pcd":
        chains = (torch.rand(batch, n_hid, generator=g) < 0.5).to(torch.uint8)
        ours.chains = chains.clone()
    else:  # CD-1 starts from the hidden samples of the data: the model's next draws
        chains = reference.rbm_half_step(v_pos, ours.weights, ours.hidden_bias, ours.seed, ours.offset,
                                         False, False)[0]
    theirs = sklearn_rbm(n_components=n_hid, learning_rate=lr, batch_size=batch)
    theirs.components_ = ours.weights.T.numpy().copy()
    theirs.intercept_hidden_ = ours.hidden_bias.numpy().copy()
    theirs.intercept_visible_ = ours.visible_bias.numpy().copy()
    theirs.h_samples_ = chains.numpy().astype(np.float64)

    with torch.no_grad():
        v_neg = ours._update(v_pos, method, 1, lr, 0.0, 0.0, None, 0.0, batch)
    seen = {}

    def sample_visibles(h, rng):
        seen["h"] = h.copy()
        return v_neg.numpy().copy()

    theirs._sample_visibles = sample_visibles
    theirs._fit(v_pos.numpy(), np.random.RandomState(0))
    assert np.array_equal(seen["h"], chains.numpy().astype(np.float64))
    np.testing.assert_allclose(ours.weights.T.numpy(), theirs.components_, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ours.hidden_bias.numpy(), theirs.intercept_hidden_, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ours.visible_bias.numpy(), theirs.intercept_visible_, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("backend", [b for b in ("reference", "cpu") if b in backends.available_backends()])
def test_training_is_the_same_on_every_cpu_backend(backend):
    """The backend only changes the kernel: a short run gives the same model within the
    float tolerance (samples agree wherever |u - P| exceeds the rounding)."""
    data = _toy_data(60)
    with genkernels.use_backend(backend):
        rbm = RBM(6, 5, seed=8, dtype=torch.float64).fit(data, epochs=2, batch_size=10, verbose=False)
    ref = RBM(6, 5, seed=8, dtype=torch.float64)
    with genkernels.use_backend("reference"):
        ref.fit(data, epochs=2, batch_size=10, verbose=False)
    torch.testing.assert_close(rbm.weights, ref.weights, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ CUDA graphs
def test_cuda_graph_argument_errors():
    """fit(cuda_graph=True) names what it needs, before any training."""
    x = _toy_data(40)
    rbm = RBM(6, 4, seed=0)
    with pytest.raises(TypeError, match="cuda_graph must be a bool; got int 1"):
        rbm.fit(x, epochs=1, cuda_graph=1, verbose=False)
    with pytest.raises(ValueError, match="cuda_graph=True captures CD-k and PCD.*got method 'pt'"):
        rbm.fit(x, epochs=1, method="pt", cuda_graph=True, verbose=False)
    with pytest.raises(ValueError, match="cuda_graph=True trains in one process.*distributed=False"):
        rbm.fit(x, epochs=1, distributed=True, cuda_graph=True, verbose=False)
    with pytest.raises(ValueError, match="cuda_graph=True needs Bernoulli visible units.*gaussian"):
        RBM(6, 4, "gaussian", seed=0).fit(x, epochs=1, cuda_graph=True, verbose=False)
    with pytest.raises(ValueError, match="cuda_graph=True captures the dense state path.*'binary'"):
        rbm.fit(x, epochs=1, state_path="binary", cuda_graph=True, verbose=False)
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device.*cpu"):
        rbm.fit(x, epochs=1, cuda_graph=True, verbose=False)
    assert rbm.epochs_done == 0 and rbm.offset == 0 and rbm.history == []
    assert torch.equal(rbm.weights, RBM(6, 4, seed=0).weights)


def _graph_fit_kwargs(method, momentum):
    return {"batch_size": 32, "method": method, "k": 2, "learning_rate": 0.05, "momentum": momentum,
            "weight_decay": 1e-3, "sparsity_target": 0.1, "verbose": False}


def _assert_same_model(got, want):
    assert got.offset == want.offset and got.epochs_done == want.epochs_done
    for name, value in want.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name
    assert got.history == want.history


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cd", "pcd"])
@pytest.mark.parametrize("momentum", [0.0, 0.7])
@pytest.mark.parametrize("rows", [250, 256, 20])  # a partial last batch; full batches only; no full batch
def test_cuda_graph_fit_equals_the_eager_fit_on_cuda(method, momentum, rows):
    """The replayed updates draw the same counters, run the same kernels and float
    operations in the same order: the model equals the eager fit's bit for bit, over two
    epochs (the graph is replayed across them)."""
    x, _ = load_digits()
    x = torch.as_tensor(x[:rows])
    kwargs = _graph_fit_kwargs(method, momentum)
    eager = RBM(64, 20, seed=11, device="cuda").fit(x, epochs=2, **kwargs)
    graphed = RBM(64, 20, seed=11, device="cuda").fit(x, epochs=2, cuda_graph=True, **kwargs)
    _assert_same_model(graphed, eager)
    # the stream moved: a third epoch (a fresh capture) still follows the eager run
    eager.fit(x, epochs=3, **kwargs)
    graphed.fit(x, epochs=3, cuda_graph=True, **kwargs)
    _assert_same_model(graphed, eager)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cd", "pcd"])
def test_cuda_graph_resume_equals_the_uninterrupted_eager_fit_on_cuda(tmp_path, method):
    x, _ = load_digits()
    x = torch.as_tensor(x[:300])
    kwargs = _graph_fit_kwargs(method, 0.7)
    whole = RBM(64, 20, seed=11, device="cuda").fit(x, epochs=3, **kwargs)
    path = str(tmp_path / "rbm.pt")
    RBM(64, 20, seed=11, device="cuda").fit(x, epochs=1, checkpoint=path, cuda_graph=True, **kwargs)
    resumed = RBM(64, 20, seed=11, device="cuda").fit(x, epochs=3, checkpoint=path, resume=True,
                                                      cuda_graph=True, **kwargs)
    _assert_same_model(resumed, whole)


@pytest.mark.gpu
def test_cuda_graph_fit_on_cuda_rejects_a_non_triton_backend():
    x = _toy_data(40)
    rbm = RBM(6, 4, seed=0, device="cuda")
    with genkernels.use_backend("reference"), \
            pytest.raises(ValueError, match="cuda_graph=True needs the triton backend.*'reference'"):
        rbm.fit(x, epochs=1, cuda_graph=True, verbose=False)


@pytest.mark.skipif("triton" not in backends.available_backends("cpu"), reason="needs the Triton interpreter")
@pytest.mark.parametrize("method", ["cd", "pcd"])
def test_graph_path_updates_run_eagerly_equal_the_eager_fit(monkeypatch, method):
    """What fit(cuda_graph=True) captures, run eagerly on the CPU under the Triton
    interpreter (no CUDA here): every update draws from the counter base in memory, the
    host and the base advance alike and the persistent buffers are updated in place --
    the model equals the plain fit bit for bit, partial last batch and second epoch included."""
    from genkernels.boltzmann import rbm as rbm_module
    monkeypatch.setattr(rbm_module.RBM, "_check_cuda_graph", lambda *args: None)
    monkeypatch.setattr(rbm_module._GraphedUpdate, "_capture", rbm_module._GraphedUpdate._eager)
    x, _ = load_digits()
    x = torch.as_tensor(x[:150])
    kwargs = _graph_fit_kwargs(method, 0.7)
    with genkernels.use_backend("triton"):
        eager = RBM(64, 20, seed=11).fit(x, epochs=2, **kwargs)
        graph_path = RBM(64, 20, seed=11).fit(x, epochs=2, cuda_graph=True, **kwargs)
    _assert_same_model(graph_path, eager)
    assert graph_path.chains.shape == ((32, 20) if method == "pcd" else (0, 20))
