"""Regression tests of the SOM hardening items ("Silently wrong results"): scale
robustness, rate validation, the tuple/list reading of rates, autograd, missing data,
the NaN rule of the ops, resume and checkpoint validation, repeated fits; and the
errors a person can read (issue 14, part C)."""
import json
import math
import os
import re

import numpy as np
import pytest
import torch

import genkernels
from genkernels import SOM, ops
from genkernels.som.som import SOMDivergedError

BACKENDS = [b for b in ("reference", "cpu", "triton") if b in genkernels.available_backends("cpu")]


def unit_data(n=40, d=5, seed=0, dtype=torch.float32):
    """Values in [-1, 1) with max |value| in [0.5, 1): scaling by 2^k and back is exact."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, d), generator=g, dtype=torch.float64) * 2 - 1
    x[0, 0] = 0.75
    return x.to(dtype)


def blobs(n=120, d=3, seed=0):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(4, d)) * 4
    return (centres[g.integers(0, 4, n)] + g.normal(size=(n, d)) * 0.3).astype(np.float32)


# ------------------------------------------------------------------ 1. scale robustness
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan", "chebyshev"])
@pytest.mark.parametrize("scale", [2.0 ** 66, 2.0 ** -100])
def test_bmu_is_scale_robust(backend, metric, scale):
    """1e20-like and 1e-30-like fp32 data give the indices of unit data and the
    distances scaled exactly (cosine: unchanged), on every backend."""
    x, w = unit_data(30, 6, 0), unit_data(12, 6, 1)
    i1, d1 = ops.som_bmu(x, w, 3, metric, backend=backend)
    i2, d2 = ops.som_bmu(x * scale, w * scale, 3, metric, backend=backend)
    assert torch.isfinite(d2).all() and (d2 > 0).any()
    assert torch.equal(i1, i2)
    expected = d1 if metric == "cosine" else d1.double() * scale
    torch.testing.assert_close(d2.double(), expected.double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bmu_large_values_agree_with_fp64(backend):
    g = torch.Generator().manual_seed(3)
    x = torch.randn((50, 8), generator=g, dtype=torch.float64) * 1e20
    w = torch.randn((16, 8), generator=g, dtype=torch.float64) * 1e20
    i64, d64 = ops.som_bmu(x, w, 2, backend="reference")
    i32, d32 = ops.som_bmu(x.float(), w.float(), 2, backend=backend)
    assert torch.equal(i32, i64)
    torch.testing.assert_close(d32.double(), d64, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_node_sums_scale_robust(backend):
    x, w = unit_data(30, 4, 0), unit_data(6, 4, 1)
    s1, c1, ds1 = ops.som_node_sums(x, w, backend=backend)
    s2, c2, ds2 = ops.som_node_sums(x * 2.0 ** 70, w * 2.0 ** 70, backend=backend)
    assert torch.equal(c1, c2)
    torch.testing.assert_close(s2.double(), s1.double() * 2.0 ** 70, rtol=1e-6, atol=0)
    assert math.isclose(float(ds2), float(ds1) * 2.0 ** 70, rel_tol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["som", "wtm"])
def test_online_op_scale_equivariant(backend, rule):
    x, w = unit_data(20, 4, 0), unit_data(9, 4, 1)[None]
    coords = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij"), -1).reshape(-1, 2)
    order = torch.arange(20)[None]
    lr = torch.full((1, 20), 0.3)
    sigma = torch.full((1, 20), 1.2)
    base = ops.som_online(w, x, order, lr, sigma, coords, rule=rule, backend=backend)
    s = 2.0 ** 70
    sig = sigma * s if rule == "wtm" else sigma  # wtm's kernel is of data-space distance
    big = ops.som_online(w * s, x * s, order, lr, sig, coords, rule=rule, backend=backend)
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big.double(), base.double() * s, rtol=1e-5, atol=0)


@pytest.mark.parametrize("mode", ["batch", "online", "minibatch"])
def test_fit_on_huge_data_is_the_scaled_fit(mode):
    x = unit_data(60, 4, 0)
    kw = dict(seed=0, init="random")
    small = SOM((3, 3), 4, **kw).fit(x, epochs=2, mode=mode, batch_size=16, verbose=False)
    big = SOM((3, 3), 4, **kw).fit(x * 2.0 ** 66, epochs=2, mode=mode, batch_size=16, verbose=False)
    torch.testing.assert_close(big.codebook.double(), small.codebook.double() * 2.0 ** 66, rtol=1e-5, atol=0)
    qe = float(big.quantization_error(x * 2.0 ** 66))
    assert math.isfinite(qe)
    assert math.isclose(qe, float(small.quantization_error(x)) * 2.0 ** 66, rel_tol=1e-5)
    assert all(math.isfinite(h["quantization_error"]) for h in big.history)


def test_quantization_error_never_returns_inf():
    som = SOM((1, 2), 3, seed=0)
    som.weights = torch.full((2, 3), -3e38)
    x = torch.full((4, 3), 3e38)
    with pytest.raises(OverflowError, match="overflow"):
        som.quantization_error(x)


def _cli_train(tmp_path, x, *extra):
    from genkernels.cli import main
    data = tmp_path / "x.npy"
    np.save(data, x)
    out = tmp_path / "out"
    debug = ["--debug"] if "--debug" in extra else []
    extra = [a for a in extra if a != "--debug"]
    rc = main([*debug, "train", "som", str(data), "--out", str(out), "--grid", "3", "3", "--epochs", "2",
               "--quiet", "--init", "random", *extra])
    return rc, out


def test_cli_train_som_on_huge_data_reports_a_finite_qe(tmp_path):
    rc, out = _cli_train(tmp_path, (unit_data(50, 4, 0) * 1e20).numpy())
    assert rc == 0
    qe = json.loads((out / "metrics.json").read_text())["quantization_error"]
    assert math.isfinite(qe) and qe > 1e18


def test_cli_train_som_overflow_is_an_error_not_inf(tmp_path):
    x = np.full((20, 4), 3e38, dtype=np.float32)
    x[::2] *= -1
    with pytest.raises((OverflowError, SOMDivergedError)):
        _cli_train(tmp_path, x, "--debug")
    assert not (tmp_path / "out" / "metrics.json").exists()
    rc, out = _cli_train(tmp_path, x)  # without --debug: one error line, exit 2
    assert rc == 2 and not (out / "metrics.json").exists() and not (out / "som.pt").exists()


# ---------------------------------------------------------------- 2. rates and widths
@pytest.mark.parametrize("kwargs, pattern", [
    (dict(learning_rate=float("inf")), "learning_rate must be finite"),
    (dict(learning_rate=(0.5, float("inf"))), "learning_rate must be finite"),
    (dict(sigma=float("inf")), "sigma must be finite"),
    (dict(sigma=(float("inf"), 1.0)), "sigma must be finite"),
    (dict(sigma=float("nan")), "sigma must be > 0"),
    (dict(n_maps=2, learning_rate=[0.5, float("inf")]), "learning_rate must be finite"),
])
def test_non_finite_rates_are_rejected(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SOM((3, 3), 2, **kwargs)


@pytest.mark.parametrize("mode", ["online", "minibatch"])
def test_huge_learning_rate_reports_divergence_and_saves_nothing(mode, tmp_path):
    x = blobs()
    path = tmp_path / "ck.pt"
    som = SOM((4, 4), 3, seed=0, learning_rate=1e30)
    with pytest.raises(SOMDivergedError, match=r"epoch 1 of 3.*learning_rate=1e\+30"):
        som.fit(x, epochs=3, mode=mode, batch_size=16, verbose=False, checkpoint=str(path))
    assert not path.exists()
    assert torch.isfinite(som.codebook).all()


@pytest.mark.parametrize("sigma", [1e-30, 1e-50])
@pytest.mark.parametrize("neighborhood", ["gaussian", "mexican_hat", "bubble", "triangle"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_online_op_tiny_sigma_is_winner_only(sigma, neighborhood, backend):
    x, w = unit_data(25, 4, 0), unit_data(16, 4, 1)[None]
    coords = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(-1, 2)
    order = torch.arange(25)[None]
    lr = torch.full((1, 25), 0.4)
    sig = torch.full((1, 25), sigma, dtype=torch.float64)  # 1e-50 rounds to 0 in fp32
    got = ops.som_online(w, x, order, lr, sig, coords, neighborhood=neighborhood, backend=backend)
    wta = ops.som_online(w, x, order, lr, torch.ones(1, 25), coords, rule="wta", backend=backend)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, wta, rtol=0, atol=0)


@pytest.mark.parametrize("neighborhood", ["gaussian", "mexican_hat", "bubble", "triangle"])
def test_neighbourhood_at_tiny_sigma_is_the_limit(neighborhood):
    from genkernels.som import reference
    d = torch.tensor([0.0, 1.0, 2.0])
    for sigma in (1e-30, 1e-50, torch.tensor(1e-30)):
        h = reference.neighborhood(neighborhood, d, torch.zeros(3), sigma)
        assert torch.equal(h, torch.tensor([1.0, 0.0, 0.0])), (sigma, h)


@pytest.mark.parametrize("mode", ["batch", "online", "minibatch"])
def test_fit_with_tiny_sigma_is_winner_takes_all(mode):
    x = blobs()
    kw = dict(seed=0, init="random", learning_rate=0.3)
    tiny = SOM((3, 3), 3, sigma=1e-30, **kw).fit(x, epochs=2, mode=mode, batch_size=32, verbose=False)
    wta = SOM((3, 3), 3, rule="wta", **kw).fit(x, epochs=2, mode=mode, batch_size=32, verbose=False)
    assert torch.isfinite(tiny.codebook).all()
    torch.testing.assert_close(tiny.codebook, wta.codebook, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("param", ["learning_rate", "sigma"])
@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf")])
def test_callable_rates_are_checked_at_every_use(param, bad):
    x = blobs()

    def rate(t):
        return torch.where(t < 150, torch.full_like(t, 0.5), torch.full_like(t, bad))
    som = SOM((3, 3), 3, seed=0, **{param: rate})
    with pytest.raises(ValueError, match=rf"{param} \(a callable\) must be > 0 and finite.*step 150 \(epoch 2 of 3\)"):
        som.fit(x, epochs=3, mode="online", verbose=False)


def test_som_online_op_rejects_non_finite_steps():
    x, w = unit_data(5, 2, 0), unit_data(4, 2, 1)[None]
    coords = torch.tensor([[0.0, 0], [0, 1], [1, 0], [1, 1]])
    order = torch.arange(5)[None]
    with pytest.raises(ValueError, match="sigma must be > 0 and finite at every step.*step 2"):
        ops.som_online(w, x, order, torch.ones(1, 5), torch.tensor([[1.0, 1, float("inf"), 1, 1]]), coords)
    with pytest.raises(ValueError, match="lr must be >= 0 and finite"):
        ops.som_online(w, x, order, torch.tensor([[1.0, float("nan"), 1, 1, 1]]), torch.ones(1, 5), coords)


# ------------------------------------------------------------ 3. tuple pair vs per-map
def test_tuple_is_always_a_start_end_schedule():
    for n_maps in (1, 2, 3):
        som = SOM((3, 3), 2, n_maps=n_maps, learning_rate=(0.5, 0.01), sigma=(2.0, 0.5))
        start, end = som._learning_rate
        assert torch.equal(start, torch.full((n_maps,), 0.5, dtype=torch.float64))
        assert torch.equal(end, torch.full((n_maps,), 0.01, dtype=torch.float64))
        assert torch.equal(som._sigma[1], torch.full((n_maps,), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("value", [[0.5, 0.3], torch.tensor([0.5, 0.3]), np.array([0.5, 0.3])])
def test_per_map_values_are_lists_or_tensors(value):
    som = SOM((3, 3), 2, n_maps=2, learning_rate=value)
    assert som._learning_rate[0].tolist() == pytest.approx([0.5, 0.3])
    assert som._learning_rate[1].tolist() == pytest.approx([0.01, 0.006])


@pytest.mark.parametrize("n_maps", [1, 3])
def test_ambiguous_list_is_rejected(n_maps):
    with pytest.raises(ValueError, match=rf"learning_rate must be a list / 1-D tensor of n_maps={n_maps} "
                                         r"per-map values; got 2 values \(for a \(start, end\) schedule pass a tuple\)"):
        SOM((3, 3), 2, n_maps=n_maps, learning_rate=[0.5, 0.01])
    with pytest.raises(ValueError, match="sigma must be a"):
        SOM((3, 3), 2, n_maps=n_maps, sigma=(1.0, 2.0, 3.0))


def test_tuple_schedule_survives_save_and_load(tmp_path):
    som = SOM((3, 3), 2, n_maps=2, learning_rate=(0.5, 0.01), seed=0)
    som.save(tmp_path / "m.pt")
    back = SOM.load(tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(back._learning_rate, som._learning_rate))


# ----------------------------------------------------------------------- 4. autograd
@pytest.mark.parametrize("mode", ["batch", "online", "minibatch"])
def test_fit_records_no_autograd_history(mode):
    x = torch.from_numpy(blobs()).requires_grad_(True)
    som = SOM((3, 3), 3, seed=0).fit(x, epochs=2, mode=mode, batch_size=32, verbose=False)
    assert som.codebook.grad_fn is None and not som.codebook.requires_grad
    som.partial_fit(x, mode=mode)
    assert som.codebook.grad_fn is None and not som.codebook.requires_grad


# ------------------------------------------------------------------- 5. missing data
def test_missing_ignore_on_all_nan_data_raises():
    x = np.full((20, 3), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="every entry is NaN"):
        SOM((3, 3), 3, missing="ignore", seed=0).fit(x, epochs=1, verbose=False)


def test_missing_ignore_feature_never_present_raises():
    x = blobs()
    x[:, 1] = np.nan
    with pytest.raises(ValueError, match="feature 1 is NaN in every row"):
        SOM((3, 3), 3, missing="ignore", seed=0).fit(x, epochs=1, verbose=False)


@pytest.mark.parametrize("init", ["pca", "random"])
def test_missing_ignore_init_uses_present_values(init):
    g = np.random.default_rng(0)
    x = (10 + g.normal(size=(400, 3))).astype(np.float32)
    x[g.random(400) < 0.5, 0] = np.nan
    som = SOM((4, 4), 3, missing="ignore", init=init, seed=0)
    som._initialize(torch.from_numpy(x), False)
    assert abs(float(som.codebook[0, :, 0].mean()) - 10) < 1.0
    assert torch.isfinite(som.codebook).all()


# ------------------------------------------------------------------ 6. NaN rule of ops
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan"])
def test_bmu_nan_row_is_nan_at_the_first_nodes(backend, metric):
    x, w = unit_data(10, 4, 0), unit_data(6, 4, 1)
    x[3, 2] = float("nan")
    idx, dist = ops.som_bmu(x, w, 2, metric, backend=backend)
    ref_idx, ref_dist = ops.som_bmu(x, w, 2, metric, backend="reference")
    assert idx[3].tolist() == [0, 1] and torch.isnan(dist[3]).all()
    keep = torch.arange(10) != 3
    assert torch.equal(idx[keep], ref_idx[keep])
    assert torch.isfinite(dist[keep]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_node_sums_skip_nan_rows(backend, deterministic):
    x, w = unit_data(12, 3, 0), unit_data(5, 3, 1)
    bad = x.clone()
    bad[[2, 7], 1] = float("nan")
    keep = torch.tensor([i not in (2, 7) for i in range(12)])
    sums, counts, dsum = ops.som_node_sums(bad, w, backend=backend, deterministic=deterministic)
    s_ref, c_ref, d_ref = ops.som_node_sums(x[keep], w, backend=backend)
    assert torch.isfinite(sums).all()
    assert float(counts.sum()) == 10
    torch.testing.assert_close(sums, s_ref)
    torch.testing.assert_close(counts, c_ref)
    assert math.isclose(float(dsum), float(d_ref), rel_tol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_node_sums_nan_nodes_never_win(backend):
    x, w = unit_data(12, 3, 0), unit_data(5, 3, 1)
    w[1, 0] = float("nan")
    sums, counts, _ = ops.som_node_sums(x, w, backend=backend)
    assert float(counts[1]) == 0 and float(counts.sum()) == 12 and torch.isfinite(sums).all()


# ---------------------------------------------------------------- 7. resume, checkpoints
def test_resume_with_a_new_checkpoint_trains_and_writes(tmp_path):
    x = blobs()
    som = SOM((3, 3), 3, seed=0).fit(x, epochs=2, verbose=False)
    before = som.codebook.clone()
    path = tmp_path / "new.pt"
    som.fit(x, epochs=2, verbose=False, checkpoint=str(path), resume=True)
    assert path.exists()
    assert not torch.equal(som.codebook, before)
    assert int(SOM.load(path).epochs_done) == 2


@pytest.mark.parametrize("field, value", [("metric", "manhattan"), ("neighborhood", "bubble"),
                                          ("rule", "wta"), ("schedule", "linear"), ("sigma", 3.0),
                                          ("topology", "hexagonal"), ("dtype", torch.float64)])
def test_resume_rejects_a_checkpoint_of_another_config(tmp_path, field, value):
    x = blobs()
    path = tmp_path / "ck.pt"
    SOM((4, 4), 3, seed=0).fit(x, epochs=2, verbose=False, checkpoint=str(path))
    other = SOM((4, 4), 3, seed=0, **{field: value})
    with pytest.raises(ValueError, match=rf"has {field}=.*resume=True continues only a run with the same {field}"):
        other.fit(x, epochs=3, verbose=False, checkpoint=str(path), resume=True)


def test_resume_rejects_other_fit_arguments(tmp_path):
    x = blobs()
    path = tmp_path / "ck.pt"
    SOM((4, 4), 3, seed=0).fit(x, epochs=2, mode="online", verbose=False, checkpoint=str(path))
    with pytest.raises(ValueError, match=r"fit\(mode='online'\) but this call has mode='batch'"):
        SOM((4, 4), 3, seed=0).fit(x, epochs=2, verbose=False, checkpoint=str(path), resume=True)
    with pytest.raises(ValueError, match=r"fit\(sampling='permutation'\) but this call has sampling='sequential'"):
        SOM((4, 4), 3, seed=0).fit(x, epochs=3, mode="online", sampling="sequential", verbose=False,
                                   checkpoint=str(path), resume=True)
    # a larger epochs extends the run
    more = SOM((4, 4), 3, seed=0).fit(x, epochs=3, mode="online", verbose=False, checkpoint=str(path), resume=True)
    assert int(more.epochs_done) == 3 and len(more.history) == 3


def _tamper(path, fn):
    payload = torch.load(path, weights_only=True)
    fn(payload)
    torch.save(payload, path)


@pytest.mark.parametrize("change, pattern", [
    (lambda p: p["state"].__setitem__("codebook", torch.zeros(1, 9, 2)), r"'state.codebook' must be a \(1, 16, 3\)"),
    (lambda p: p["state"].__setitem__("codebook", p["state"]["codebook"].double()), "'state.codebook' must be"),
    (lambda p: p["state"]["codebook"].__setitem__((0, 0, 0), float("nan")), "'state.codebook' holds NaN"),
    (lambda p: p["state"].pop("epochs_done"), r"missing \['epochs_done'\]"),
    (lambda p: p.pop("generator"), "'generator' is missing"),
    (lambda p: p.__setitem__("generator", torch.zeros(3, dtype=torch.uint8)), "'generator' must be a"),
    (lambda p: p.__setitem__("history", "x"), "'history' must be a list"),
    (lambda p: p.__setitem__("node_labels", [1, 2]), "'node_labels' must hold 16 labels"),
    (lambda p: p["config"].pop("metric"), "'config.metric' is missing"),
    (lambda p: p["config"].__setitem__("dtype", "int8"), "'config.dtype' must be one of"),
    (lambda p: p["config"].__setitem__("n_maps", "2"), "'config.n_maps' must be"),
    (lambda p: p["config"].__setitem__("metric", "l7"), "'config' holds an invalid model configuration"),
    (lambda p: p["fit"].__setitem__("epochs", 0), r"'fit.epochs' must lie in \[1, inf\]"),
])
def test_load_validates_every_field(tmp_path, change, pattern):
    path = tmp_path / "ck.pt"
    SOM((4, 4), 3, seed=0).fit(blobs(), epochs=1, verbose=False, checkpoint=str(path))
    _tamper(path, change)
    with pytest.raises(ValueError, match=pattern):
        SOM.load(path)


def test_resume_validates_the_state(tmp_path):
    path = tmp_path / "ck.pt"
    SOM((4, 4), 3, seed=0).fit(blobs(), epochs=1, verbose=False, checkpoint=str(path))
    _tamper(path, lambda p: p["state"].__setitem__("codebook", torch.zeros(1, 16, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match="'state.codebook' must be a"):
        SOM((4, 4), 3, seed=0).fit(blobs(), epochs=2, verbose=False, checkpoint=str(path), resume=True)


# ------------------------------------------------------------------ 8. repeated fits
@pytest.mark.parametrize("mode", ["batch", "online", "minibatch"])
def test_second_fit_trains_more_epochs_with_fresh_schedules(mode):
    x = blobs()
    som = SOM((4, 4), 3, seed=0).fit(x, epochs=3, mode=mode, batch_size=32, verbose=False)
    state, gen = som.codebook.clone(), som._generator.get_state()
    som.fit(x, epochs=2, mode=mode, batch_size=32, verbose=False)
    fresh = SOM((4, 4), 3, seed=0)
    fresh.weights = state[0]
    fresh._generator.set_state(gen)
    fresh.fit(x, epochs=2, mode=mode, batch_size=32, verbose=False)
    assert torch.equal(som.codebook, fresh.codebook)
    assert int(som.epochs_done) == 2 and len(som.history) == 2


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["batch", "online", "minibatch"])
def test_resume_finishes_the_interrupted_call(tmp_path, mode):
    x = blobs()
    kw = dict(epochs=5, mode=mode, batch_size=32, verbose=False)
    whole = SOM((4, 4), 3, seed=0).fit(x, **kw)
    path = tmp_path / "ck.pt"

    def stop(model, epoch):
        if epoch == 3:
            raise _Stop
    with pytest.raises(_Stop):
        SOM((4, 4), 3, seed=0).fit(x, checkpoint=str(path), callback=stop, **kw)
    resumed = SOM((4, 4), 3, seed=0).fit(x, checkpoint=str(path), resume=True, **kw)
    assert torch.equal(resumed.codebook, whole.codebook)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    # a seed of None draws another seed: it only shaped the initial map, so resume works
    again = SOM((4, 4), 3).fit(x, checkpoint=str(path), resume=True, **kw)
    assert torch.equal(again.codebook, whole.codebook)


# --------------------------------------------------------- 9. no silent Python fallback
@pytest.mark.parametrize("mode, kwargs", [("batch", dict(rule="wtm")), ("minibatch", dict(rule="wtm")),
                                          ("online", dict(neighborhood=lambda d0, d1, s: (d0 + d1 == 0) * 1.0))])
def test_python_only_paths_refuse_an_explicit_compiled_backend(mode, kwargs):
    if "cpu" not in genkernels.available_backends("cpu"):
        pytest.skip("needs the cpu backend")
    x = blobs()
    with pytest.raises(genkernels.backends.BackendUnavailableError, match="has no cpu kernel"):
        SOM((3, 3), 3, seed=0, **kwargs).fit(x, epochs=1, mode=mode, verbose=False, backend="cpu")
    with genkernels.use_backend("cpu"), pytest.raises(genkernels.backends.BackendUnavailableError):
        SOM((3, 3), 3, seed=0, **kwargs).fit(x, epochs=1, mode=mode, verbose=False)
    som = SOM((3, 3), 3, seed=0, **kwargs).fit(x, epochs=1, mode=mode, verbose=False, backend="reference")
    assert torch.isfinite(som.codebook).all()


@pytest.mark.parametrize("mode, kwargs", [("batch", dict(rule="wtm")), ("minibatch", dict(rule="wtm")),
                                          ("online", dict(neighborhood=lambda d0, d1, s: (d0 + d1 == 0) * 1.0))])
def test_python_only_paths_say_so_under_the_automatic_choice(monkeypatch, mode, kwargs):
    import genkernels.som.som as som_module
    monkeypatch.setattr(som_module, "_REFERENCE_ONLY_WARNED", set())
    with pytest.warns(RuntimeWarning, match="runs the pure-PyTorch reference"):
        SOM((3, 3), 3, seed=0, **kwargs).fit(blobs(), epochs=1, mode=mode, verbose=False)


@pytest.mark.parametrize("bad", [lambda d0, d1, s: 1.0, lambda d0, d1, s: torch.tensor(1.0),
                                 lambda d0, d1, s: (d0 + d1).sum(), lambda d0, d1, s: (d0 == d1).long()])
def test_callable_neighbourhood_must_return_one_value_per_offset(bad):
    with pytest.raises(ValueError, match=r"neighborhood \(a callable\) must return a float tensor shaped like"):
        SOM((3, 3), 3, seed=0, neighborhood=bad).fit(blobs(), epochs=1, mode="online", verbose=False)


def test_float64_data_beyond_float32_is_named_not_called_nan():
    x = blobs().astype(np.float64)
    x[3, 1] = 1e39
    with pytest.raises(ValueError, match=r"x holds values up to 1e\+39 in magnitude, beyond the range of float32"):
        SOM((3, 3), 3, seed=0).fit(x, epochs=1, verbose=False)
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        SOM((3, 3), 3, seed=0).fit(torch.full((4, 3), float("inf"), dtype=torch.float64), epochs=1, verbose=False)


def test_wtm_batch_sums_are_tiled(monkeypatch):
    import genkernels.som.som as som_module
    x = blobs()
    whole = SOM((3, 3), 3, seed=0, rule="wtm").fit(x, epochs=2, verbose=False)
    monkeypatch.setattr(som_module, "WTM_TILE_ELEMENTS", 9 * 3 * 7)
    tiled = SOM((3, 3), 3, seed=0, rule="wtm").fit(x, epochs=2, verbose=False)
    torch.testing.assert_close(tiled.codebook, whole.codebook, rtol=1e-5, atol=1e-5)


# ------------------------------------------- 10. errors a person can read (issue 14 C)
SEED_RANGE = r"\[0, 18446744073709551615\]"


@pytest.mark.parametrize("seed, error, pattern", [
    (2**64, ValueError, rf"^seed must be in {SEED_RANGE}; got 18446744073709551616$"),
    (-1, ValueError, rf"^seed must be in {SEED_RANGE}; got -1$"),
    (True, TypeError, r"^seed must be an integer; got bool True$"),
    (1.0, TypeError, r"^seed must be an integer; got float 1.0$"),
    ("7", TypeError, r"^seed must be an integer; got str '7'$"),
])
def test_seed_outside_its_range_is_named(seed, error, pattern):
    with pytest.raises(error, match=pattern):
        SOM((2, 2), 3, seed=seed)
    assert SOM((2, 2), 3, seed=2**64 - 1).seed == 2**64 - 1


def test_load_names_a_seed_outside_its_range(tmp_path):
    path = tmp_path / "ck.pt"
    SOM((2, 2), 3, seed=0).save(path)
    _tamper(path, lambda p: p["config"].__setitem__("seed", 2**64))
    with pytest.raises(ValueError, match=rf"the field 'config.seed' must lie in {SEED_RANGE}; got 18446744073709551616$"):
        SOM.load(path)


@pytest.mark.parametrize("x, got", [(None, "NoneType"), ("abc", "str"), (3.5, "float")])
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_fit_names_x_and_what_it_accepts(x, got, method):
    som = SOM((2, 2), 3, seed=0)
    fit = som.fit if method == "fit" else som.partial_fit
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor or a numpy array of shape \(n_samples, 3\), or a "
                                        rf"re-iterable of \(n, 3\) batches \(a list of tensors or arrays, a DataLoader\); "
                                        rf"got {got}$"):
        fit(x, **({"verbose": False} if method == "fit" else {}))


@pytest.mark.parametrize("make, kind", [(lambda x: (row for row in x), "generator"),
                                        (lambda x: (x[i:i + 8] for i in range(0, len(x), 8)), "generator"),
                                        (lambda x: iter([x[:20], x[20:]]), "list_iterator")])
@pytest.mark.parametrize("mode", ["batch", "online"])
def test_fit_refuses_one_shot_iterators(make, kind, mode):
    """fit reads x more than once (initialisation, every epoch): a generator would be
    empty on the second pass ("x is empty" before), so it is refused up front."""
    x = torch.from_numpy(blobs(40))
    som = SOM((2, 2), 3, seed=0)
    pattern = (rf"^x is a one-shot iterator \({kind}\), but training reads x more than once \(to initialise "
               r"the map, then every epoch\); pass a torch.Tensor or a numpy array")
    with pytest.raises(TypeError, match=pattern):
        som.fit(make(x), mode=mode, verbose=False)
    with pytest.raises(TypeError, match=pattern):
        som.partial_fit(make(x), mode=mode)
    assert not bool(som.initialized)


def test_fit_trains_on_a_reiterable_of_batches_and_names_a_bad_batch():
    x = torch.from_numpy(blobs(40))
    som = SOM((2, 2), 3, seed=0).fit([x[:20], x[20:]], epochs=2, verbose=False)
    assert int(som.epochs_done) == 2
    with pytest.raises(TypeError, match=r"^batch 1 of x must be a torch.Tensor or a numpy array; got list$"):
        SOM((2, 2), 3, seed=0).fit([x[:20], [[1.0, 2.0, 3.0]]], verbose=False)


@pytest.mark.parametrize("method", ["agglomerative", "kmeans"])
def test_cluster_into_one_group_and_on_a_1x1_map(method):
    one = SOM((1, 1), 2, seed=0)
    one.weights = torch.tensor([[0.5, -1.0]])
    assert torch.equal(one.cluster(1, method), torch.zeros((1, 1), dtype=torch.int64))
    som = SOM((3, 3), 2, seed=0)
    som.weights = torch.from_numpy(blobs(9, 2))
    assert torch.equal(som.cluster(1, method), torch.zeros((3, 3), dtype=torch.int64))
    assert sorted(som.cluster(9, method).flatten().tolist()) == list(range(9))


@pytest.mark.parametrize("n, error, pattern", [
    (0, ValueError, r"^n_clusters must be in \[1, 9\]; got 0$"),
    (10, ValueError, r"^n_clusters must be in \[1, 9\]; got 10$"),
    (-2, ValueError, r"^n_clusters must be in \[1, 9\]; got -2$"),
    (2.0, TypeError, r"^n_clusters must be an integer; got float 2.0$"),
    (True, TypeError, r"^n_clusters must be an integer; got bool True$"),
])
def test_cluster_names_n_clusters_and_its_range(n, error, pattern):
    som = SOM((3, 3), 2, seed=0)
    som.weights = torch.from_numpy(blobs(9, 2))
    with pytest.raises(error, match=pattern):
        som.cluster(n)
    with pytest.raises(ValueError, match=r"^n_clusters must be in \[1, 1\]; got 2$"):
        SOM((1, 1), 2, seed=0).cluster(2)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(names=["a"]), ValueError, r"^names must hold one name per feature \(3\); got 1$"),
    (dict(names=["a", "b", "c", "d"]), ValueError, r"^names must hold one name per feature \(3\); got 4$"),
    (dict(names=["a", "b", 3]), TypeError, r"^names must hold strings; got int 3 at index 2$"),
    (dict(names="abc"), TypeError, r"^names must be None or a list of 3 strings \(one per feature\); got str$"),
    (dict(max_planes=0), ValueError, r"^max_planes must be in \[1, inf\]; got 0$"),
    (dict(max_planes=-2), ValueError, r"^max_planes must be in \[1, inf\]; got -2$"),
    (dict(max_planes=1.5), TypeError, r"^max_planes must be an integer; got float 1.5$"),
])
def test_component_planes_arguments_are_checked_before_drawing(tmp_path, kwargs, error, pattern):
    from genkernels import plot
    plt = plot._plt()
    som = SOM((2, 2), 3, seed=0)
    som.weights = torch.from_numpy(blobs(4))
    figures = plt.get_fignums()
    with pytest.raises(error, match=pattern):
        som.plot_component_planes(str(tmp_path / "out" / "planes.png"), **kwargs)
    assert plt.get_fignums() == figures and not (tmp_path / "out").exists()


def test_component_planes_with_names_and_fewer_planes(tmp_path):
    som = SOM((2, 2), 3, seed=0)
    som.weights = torch.from_numpy(blobs(4))
    path = tmp_path / "planes.png"
    assert som.plot_component_planes(str(path), names=("a", "b", "c"), max_planes=2) == str(path)
    assert path.stat().st_size > 0


@pytest.mark.parametrize("n_maps, value, error, pattern", [
    (1, torch.zeros(3, 3), ValueError, r"^weights must have shape \(4, 3\) \(nodes, features\); got \(3, 3\)$"),
    (1, torch.zeros(12), ValueError, r"^weights must have shape \(4, 3\) \(nodes, features\); got \(12,\)$"),
    (2, torch.zeros(4, 3), ValueError,
     r"^weights must have shape \(2, 4, 3\) \(n_maps, nodes, features\); got \(4, 3\)$"),
    (1, torch.zeros(4, 3, dtype=torch.int64), TypeError, r"^weights must be a floating-point tensor; got dtype torch.int64$"),
    (1, np.zeros((4, 3), dtype=np.int32), TypeError, r"^weights must hold floating-point values; got numpy dtype int32$"),
    (1, torch.zeros(4, 3, device="meta"), ValueError, r"^weights is on meta but the model is on cpu"),
    (1, torch.full((4, 3), float("nan")), ValueError, r"^weights holds NaN or Inf"),
    (1, torch.full((4, 3), 1e300, dtype=torch.float64), ValueError,
     r"^weights holds values beyond the range of the model's dtype torch.float32$"),
    (1, [[0.0] * 3] * 4, TypeError,
     r"^weights must be a floating-point torch.Tensor or numpy array of shape \(4, 3\) \(nodes, features\); got list$"),
])
def test_assigning_wrong_weights_names_weights(n_maps, value, error, pattern):
    som = SOM((2, 2), 3, n_maps=n_maps, seed=0)
    with pytest.raises(error, match=pattern):
        som.weights = value
    assert not bool(som.initialized) and not som.codebook.any()


def test_assigning_weights_converts_a_float_dtype():
    som = SOM((2, 2), 3, seed=0)
    w = blobs(4).astype(np.float64)
    som.weights = w
    assert bool(som.initialized) and som.weights.dtype == torch.float32
    assert torch.equal(som.weights, torch.from_numpy(w).float())


@pytest.mark.parametrize("key", ["config", "state", "generator", "history", "node_labels", "config.seed",
                                 "config.grid", "fit.mode"])
def test_load_names_a_missing_field(tmp_path, key):
    path = tmp_path / "ck.pt"
    SOM((2, 2), 3, seed=0).fit(blobs(40), epochs=1, verbose=False, checkpoint=str(path))

    def drop(payload):
        *parent, name = key.split(".")
        (payload[parent[0]] if parent else payload).pop(name)
    _tamper(path, drop)
    with pytest.raises(ValueError, match=rf"^checkpoint '.*': the field '{re.escape(key)}' is missing$"):
        SOM.load(path)
