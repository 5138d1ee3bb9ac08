"""genkernels.SOM from the public API: training quality, modes, rules, metrics,
persistence, many maps, missing data and streaming input."""
import os

import numpy as np
import pytest
import torch

import genkernels
from genkernels import SOM
from genkernels.data import load_digits
from helpers import cpu_backoff, needs_ext, num_threads


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    return x[:600], y[:600]


def blobs(n=400, d=3, seed=0):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(4, d)) * 4
    return (centres[g.integers(0, 4, n)] + g.normal(size=(n, d)) * 0.3).astype(np.float32)


@pytest.mark.parametrize("mode", ["batch", "online", "minibatch"])
def test_training_lowers_quantization_error(mode, digits):
    x, _ = digits
    som = SOM((8, 8), 64, seed=1, init="uniform")
    qe0 = float(som.fit(x, epochs=1, mode=mode, verbose=False, batch_size=64).quantization_error(x))
    som2 = SOM((8, 8), 64, seed=1, init="uniform").fit(x, epochs=6, mode=mode, verbose=False, batch_size=64)
    assert float(som2.quantization_error(x)) < qe0
    assert float(som2.topographic_error(x)) < 0.3


def test_batch_map_is_ordered_and_classifies():
    x, y = load_digits()
    som = SOM((10, 10), 64, topology="hexagonal", seed=0).fit(x, epochs=10, verbose=False)
    som.label_nodes(x[::2], y[::2])
    assert (som.predict(x[1::2]) == y[1::2]).mean() > 0.85
    assert float(som.topographic_error(x)) < 0.1


def test_fixed_seed_reproduces_bit_for_bit(digits):
    x, _ = digits
    a = SOM((6, 7), 64, seed=3).fit(x, epochs=3, verbose=False)
    b = SOM((6, 7), 64, seed=3).fit(x, epochs=3, verbose=False)
    assert torch.equal(a.weights, b.weights)
    c = SOM((6, 7), 64, seed=3).fit(x, epochs=1, mode="online", verbose=False)
    d = SOM((6, 7), 64, seed=3).fit(x, epochs=1, mode="online", verbose=False)
    assert torch.equal(c.weights, d.weights)


@needs_ext
@pytest.mark.parametrize("mode", ["batch", "online", "minibatch"])
def test_fixed_seed_reproduces_under_the_busy_machine_backoff(mode):
    # on a busy machine the cpu kernels back off to one thread (csrc/cpu/parallel_region.h):
    # a fit must not depend on it, nor on the thread setting
    x, _ = load_digits()

    def fit():
        return SOM((6, 7), 64, seed=3).fit(x, epochs=3, mode=mode, verbose=False).weights

    with cpu_backoff(-1):
        quiet = fit()
    with cpu_backoff():
        busy = fit()
    with num_threads(1):
        single = fit()
    assert torch.equal(quiet, busy) and torch.equal(quiet, single)


def test_float64_numpy_input_and_memmap_and_iterable_agree(tmp_path):
    x = blobs().astype(np.float64)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    a = SOM((5, 5), 3, seed=0).fit(x, epochs=3, verbose=False)
    b = SOM((5, 5), 3, seed=0).fit(mm, epochs=3, verbose=False)
    batches = [torch.from_numpy(x[i:i + 64]) for i in range(0, len(x), 64)]
    c = SOM((5, 5), 3, seed=0).fit(batches, epochs=3, verbose=False)
    assert a.weights.dtype == torch.float32
    assert torch.equal(a.weights, b.weights)
    assert torch.allclose(a.weights, c.weights, atol=1e-5)


@pytest.mark.parametrize("topology,periodic,grid", [("rectangular", True, (6, 6)), ("hexagonal", False, (5, 6)),
                                                    ("hexagonal", True, (4, 6)), ("rectangular", False, (12,))])
@pytest.mark.parametrize("neighborhood", ["gaussian", "bubble", "triangle"])
def test_lattices_and_neighborhoods_train(topology, periodic, grid, neighborhood):
    x = blobs()
    som = SOM(grid, 3, topology=topology, periodic=periodic, neighborhood=neighborhood, seed=0, sigma=2.0)
    som.fit(x, epochs=4, verbose=False)
    assert torch.isfinite(som.weights).all()
    assert float(som.quantization_error(x)) < 2.0
    assert som.umatrix().shape == som.lattice.shape


@pytest.mark.parametrize("mode", ["batch", "online"])
def test_mexican_hat_trains_at_a_small_radius(mode):
    # its negative ring pushes nodes apart: stable at radius 1 and a modest rate
    x = blobs()
    som = SOM((6, 6), 3, neighborhood="mexican_hat", seed=0, sigma=1.0, learning_rate=0.1,
              schedule="constant")
    som.fit(x, epochs=1, mode=mode, verbose=False)
    init = SOM((6, 6), 3, seed=0)
    init._initialize(x, False)
    assert float(som.quantization_error(x)) < 0.5 * float(init.quantization_error(x))


def test_callable_neighborhood_and_schedules_match_builtin():
    x = blobs(200)

    def gauss(d0, d1, s):
        return torch.exp(-(d0 * d0 + d1 * d1) / (2 * s * s))

    for mode in ("batch", "online"):
        a = SOM((4, 5), 3, seed=0, neighborhood=gauss).fit(x, epochs=2, mode=mode, verbose=False)
        b = SOM((4, 5), 3, seed=0).fit(x, epochs=2, mode=mode, verbose=False)
        assert torch.allclose(a.weights, b.weights, atol=1e-5)
    lr = SOM((4, 5), 3, seed=0, learning_rate=lambda t: 0.3 / (1 + 0.01 * t), sigma=lambda t: 1.5 + 0 * t)
    lr.fit(x, epochs=1, mode="online", verbose=False)
    assert torch.isfinite(lr.weights).all()


@pytest.mark.parametrize("rule", ["wta", "wtm"])
def test_wta_and_wtm_rules(rule):
    x = blobs()
    # four clusters of radius ~0.5, nine nodes started on samples: every cluster is
    # covered (WTM nodes are mean-shift modes, so fewer nodes may merge)
    som = SOM((3, 3), 3, rule=rule, seed=0, init="random", sigma=0.5).fit(x, epochs=5, verbose=False)
    assert float(som.quantization_error(x)) < 0.6
    online = SOM((3, 3), 3, rule=rule, seed=0, init="random", sigma=0.5).fit(x, epochs=2, mode="online",
                                                                              verbose=False)
    assert float(online.quantization_error(x)) < 0.6


def test_many_maps_equal_separate_maps():
    x = blobs(300)
    sweep = SOM((5, 5), 3, n_maps=3, seed=0, sigma=[2.5, 1.5, 1.0], learning_rate=[0.5, 0.3, 0.1])
    sweep.fit(x, epochs=2, mode="online", sampling="sequential", verbose=False)
    assert sweep.weights.shape == (3, 25, 3)
    for m, (s, lr) in enumerate([(2.5, 0.5), (1.5, 0.3), (1.0, 0.1)]):
        one = SOM((5, 5), 3, seed=0, sigma=s, learning_rate=lr)
        one.fit(x, epochs=2, mode="online", sampling="sequential", verbose=False)
        assert torch.allclose(sweep.weights[m], one.weights, atol=1e-5)
    assert sweep.quantization_error(x).shape == (3,)
    assert sweep.topographic_error(x).shape == (3,)


def test_missing_values_ignore_and_raise():
    x = blobs()
    x_nan = x.copy()
    x_nan[5, 1] = np.nan
    with pytest.raises(ValueError, match="row 5"):
        SOM((4, 4), 3, seed=0).fit(x_nan, epochs=1, verbose=False)
    som = SOM((4, 4), 3, seed=0, missing="ignore").fit(x_nan, epochs=3, verbose=False)
    assert torch.isfinite(som.weights).all()
    clean = SOM((4, 4), 3, seed=0).fit(x, epochs=3, verbose=False)
    assert torch.allclose(som.weights, clean.weights, atol=0.05)


def test_queries_shapes_and_consistency(digits):
    x, y = digits
    som = SOM((6, 5), 64, seed=0).fit(x, epochs=3, verbose=False)
    idx, dist = som.bmu(x, k=2)
    assert idx.shape == (600, 2) and (dist[:, 0] <= dist[:, 1]).all()
    cells = som.winner(x)
    assert torch.equal(cells[:, 0] * 5 + cells[:, 1], idx[:, 0])
    assert torch.equal(som.transform(x), som.coords()[idx[:, 0]])
    assert int(som.hit_map(x).sum()) == 600
    assert som.component_planes().shape == (64, 6, 5)
    wm = som.win_map(x, return_indices=True)
    assert sum(len(v) for v in wm.values()) == 600
    lm = som.labels_map(x, y)
    assert sum(sum(c.values()) for c in lm.values()) == 600
    clusters = som.cluster(4)
    assert clusters.shape == (6, 5) and set(clusters.flatten().tolist()) == {0, 1, 2, 3}
    assert float(som.distortion(x)) > 0


def test_distortion_equals_its_definition():
    x = torch.from_numpy(blobs(100))
    som = SOM((3, 4), 3, seed=0, topology="hexagonal").fit(x, epochs=2, verbose=False)
    idx = som.bmu(x)[0][:, 0]
    c = som.coords()
    d0, d1 = genkernels.som.reference.lattice_deltas(c[idx][:, None], c[None], 0.0, 0.0)
    h = genkernels.som.reference.neighborhood("gaussian", d0, d1, 1.3)
    sq = ((x[:, None, :].double() - som.weights[None].double()) ** 2).sum(-1)
    expected = (h.double() * sq).sum() / 100
    assert float(som.distortion(x, sigma=1.3)) == pytest.approx(float(expected), rel=1e-6)


def test_umatrix_known_values():
    som = SOM((1, 3), 1, seed=0)
    som.weights = torch.tensor([[0.0], [1.0], [3.0]])
    assert som.umatrix().tolist() == [[1.0, 1.5, 2.0]]
    torus = SOM((1, 4), 1, seed=0, periodic=True)
    torus.weights = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    # node 0 neighbours node 1 (1) and, across the wrap, node 3 (3)
    assert torus.umatrix()[0, 0].item() == pytest.approx(2.0)


def test_topographic_error_known_values():
    som = SOM((3, 3), 2, seed=0, init="uniform")
    som.weights = torch.tensor([[float(i), 0.0] for i in range(9)])
    x = torch.tensor([[0.4, 0.0], [3.5, 0.0]])   # winners (0, 1): adjacent; (3, 4): (1,0)-(1,1)
    assert float(som.topographic_error(x)) == 0.0
    som.weights = torch.tensor([[0.0, 0.0], [5, 5], [5, 5], [5, 5], [5, 5], [5, 5], [5, 5], [5, 5], [0.1, 0.0]])
    assert float(som.topographic_error(torch.tensor([[0.0, 0.0]]))) == 1.0   # nodes 0 and 8
    torus = SOM((3, 3), 2, seed=0, periodic=True)
    torus.weights = som.weights
    assert float(torus.topographic_error(torch.tensor([[0.0, 0.0]]))) == 0.0  # adjacent across the wrap


def test_save_load_round_trip_and_atomic(tmp_path, digits):
    x, y = digits
    som = SOM((4, 6), 64, topology="hexagonal", seed=2).fit(x, epochs=2, verbose=False)
    som.label_nodes(x, y)
    path = str(tmp_path / "m.pt")
    som.save(path)
    back = SOM.load(path)
    assert torch.equal(back.weights, som.weights)
    assert back.topology == "hexagonal" and back.node_labels == som.node_labels
    assert (back.predict(x) == som.predict(x)).all()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


def test_checkpoint_resume_equals_uninterrupted(tmp_path, monkeypatch):
    x = blobs()
    full = SOM((5, 5), 3, seed=4).fit(x, epochs=4, mode="online", verbose=False)
    path = str(tmp_path / "ck.pt")
    interrupted = SOM((5, 5), 3, seed=4)
    calls = {"n": 0}
    original = SOM._online_epoch

    def crash_after_two(self, *a, **k):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *a, **k)

    monkeypatch.setattr(SOM, "_online_epoch", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(x, epochs=4, mode="online", verbose=False, checkpoint=path)
    monkeypatch.setattr(SOM, "_online_epoch", original)
    resumed = SOM((5, 5), 3, seed=99)
    resumed.fit(x, epochs=4, mode="online", verbose=False, checkpoint=path, resume=True)
    assert torch.equal(resumed.weights, full.weights)
    assert int(resumed.epochs_done) == 4


def test_partial_fit_moves_towards_data():
    x = blobs()
    som = SOM((4, 4), 3, seed=0).fit(x, epochs=2, verbose=False)
    qe = float(som.quantization_error(x))
    som.partial_fit(x)
    assert float(som.quantization_error(x)) <= qe * 1.05


def test_plots_write_pngs(tmp_path, digits):
    x, y = digits
    som = SOM((5, 6), 64, topology="hexagonal", seed=0).fit(x[:200], epochs=2, verbose=False)
    files = [som.plot_umatrix(str(tmp_path / "u.png")), som.plot_hit_map(x, str(tmp_path / "h.png")),
             som.plot_component_planes(str(tmp_path / "c.png")),
             som.plot_labels_map(x, y, str(tmp_path / "l.png")),
             som.plot_training_curve(str(tmp_path / "t.png"))]
    for f in files:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_reference_backend_equals_auto(digits):
    x, _ = digits
    a = SOM((5, 5), 64, seed=0).fit(x, epochs=2, verbose=False, backend="reference")
    b = SOM((5, 5), 64, seed=0).fit(x, epochs=2, verbose=False)
    assert torch.allclose(a.weights, b.weights, atol=1e-4)
