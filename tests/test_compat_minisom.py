"""genkernels.compat.MiniSom against MiniSom 2.3.6: MiniSom's own unit tests run on the
facade, then the facade and minisom.MiniSom are compared on the same seed.

Steps and maps are small: on a machine without the C++ extension the online rule runs
the reference backend's Python loop (the same tests run on the cpu backend once built).
"""

import os
import pickle
import tempfile
import warnings
from unittest import mock

import numpy as np
import pytest

minisom = pytest.importorskip("minisom")

from genkernels.compat import MiniSom  # noqa: E402
from genkernels.compat import minisom as facade_module  # noqa: E402


# ----------------------------------------------------------- MiniSom's own tests
class TestMiniSomSuiteOnFacade(minisom.TestMinisom):
    """Every test of minisom.TestMinisom, with the facade standing in for MiniSom.

    The tests build maps through the module global ``minisom.MiniSom`` (and use
    ``minisom.fast_norm`` and ``minisom._build_iteration_indexes``), so those names are
    patched to the facade's for each test; nothing is left out. Each test runs in a
    temporary directory because test_pickling writes ``som.p`` into the current one.
    """

    def setUp(self):
        for name, value in (("MiniSom", MiniSom), ("fast_norm", facade_module.fast_norm),
                            ("_build_iteration_indexes", facade_module._build_iteration_indexes)):
            patcher = mock.patch.object(minisom, name, value)
            patcher.start()
            self.addCleanup(patcher.stop)
        workdir = tempfile.TemporaryDirectory()
        self.addCleanup(workdir.cleanup)
        cwd = os.getcwd()
        os.chdir(workdir.name)
        self.addCleanup(os.chdir, cwd)
        super().setUp()

    def test_setup_builds_the_facade(self):
        assert type(self.som) is MiniSom and type(self.hex_som) is MiniSom


# ------------------------------------------------------------ equivalence tests
NEIGHBORHOODS = ("gaussian", "mexican_hat", "bubble", "triangle")
TOPOLOGIES = ("rectangular", "hexagonal")
# (x, y) map shape: odd rows, even columns, so the hexagonal offset of both parities shows
SHAPE = (6, 5)


@pytest.fixture(autouse=True)
def _quiet_minisom_warnings():
    # triangle on hexagonal grids, and the reference backend's once-only slowness notice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def data():
    return np.random.RandomState(0).rand(40, 3)


def _pair(neighborhood="gaussian", topology="rectangular", **kwargs):
    """(minisom.MiniSom, facade) built alike; mexican_hat gets a small rate so the map
    stays bounded (its negative ring pushes nodes away)."""
    params = dict(sigma=1.5, learning_rate=0.5, random_seed=7,
                  neighborhood_function=neighborhood, topology=topology)
    if neighborhood in ("bubble", "triangle"):
        params["sigma"] = 2
    if neighborhood == "mexican_hat":
        params.update(sigma=1.0, learning_rate=0.1)
    params.update(kwargs)
    return minisom.MiniSom(*SHAPE, 3, **params), MiniSom(*SHAPE, 3, **params)


def _assert_same_weights(theirs, ours):
    assert ours._weights.dtype == np.float64
    assert ours._weights.shape == theirs._weights.shape
    np.testing.assert_allclose(ours._weights, theirs._weights, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("seed", [None, 0, 123])
def test_initial_weights_are_minisoms(topology, seed):
    if seed is None:
        np.testing.assert_allclose(np.linalg.norm(MiniSom(4, 3, 5)._weights, axis=-1), 1.0)
        return
    theirs = minisom.MiniSom(4, 3, 5, topology=topology, random_seed=seed)
    ours = MiniSom(4, 3, 5, topology=topology, random_seed=seed)
    np.testing.assert_array_equal(ours._weights, theirs._weights)
    for a, b in zip(ours.get_euclidean_coordinates(), theirs.get_euclidean_coordinates()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("neighborhood", NEIGHBORHOODS)
@pytest.mark.parametrize("mode, steps", [("sequential", 300), ("random", 300), ("epochs", 5)])
def test_train_matches_minisom(data, neighborhood, topology, mode, steps):
    theirs, ours = _pair(neighborhood, topology)
    options = {"sequential": {}, "random": {"random_order": True},
               "epochs": {"random_order": True, "use_epochs": True}}[mode]
    theirs.train(data, steps, **options)
    ours.train(data, steps, **options)
    _assert_same_weights(theirs, ours)
    # the shared RandomState advanced alike: the next shuffle agrees too
    assert theirs._random_generator.randint(1 << 30) == ours._random_generator.randint(1 << 30)


@pytest.mark.parametrize("method", ["train_random", "train_batch"])
def test_train_shortcuts_match_minisom(data, method):
    theirs, ours = _pair(decay_function="linear_decay_to_zero",
                         sigma_decay_function="inverse_decay_to_one", sigma=2.5)
    getattr(theirs, method)(data, 200)
    getattr(ours, method)(data, 200)
    _assert_same_weights(theirs, ours)


@pytest.mark.parametrize("decay", ["inverse_decay_to_zero", "linear_decay_to_zero", "asymptotic_decay"])
@pytest.mark.parametrize("sigma_decay", ["inverse_decay_to_one", "linear_decay_to_one", "asymptotic_decay"])
def test_decay_schedules_match_minisom(data, decay, sigma_decay):
    theirs, ours = _pair(decay_function=decay, sigma_decay_function=sigma_decay, sigma=3.0)
    theirs.train(data, 120, random_order=True)
    ours.train(data, 120, random_order=True)
    _assert_same_weights(theirs, ours)


@pytest.mark.parametrize("metric", ["cosine", "manhattan", "chebyshev"])
def test_activation_distances_match_minisom(data, metric):
    theirs, ours = _pair(activation_distance=metric)
    theirs.train(data, 150)
    ours.train(data, 150)
    _assert_same_weights(theirs, ours)
    theirs.train_batch_offline(data, 3)
    ours.train_batch_offline(data, 3)
    _assert_same_weights(theirs, ours)
    assert ours.win_map(data, return_indices=True) == theirs.win_map(data, return_indices=True)


def test_custom_callables_match_minisom(data):
    def euclidean(x, w):
        return np.linalg.norm(np.subtract(x, w), axis=-1)

    def decay(rate, t, max_iter):
        return rate / (1 + t)

    theirs, ours = _pair(activation_distance=euclidean, decay_function=decay)
    theirs.train(data, 100, random_order=True)
    ours.train(data, 100, random_order=True)
    _assert_same_weights(theirs, ours)


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("neighborhood", NEIGHBORHOODS)
def test_fixed_points_match_minisom(data, neighborhood, topology):
    theirs, ours = _pair(neighborhood, topology)
    fixed = {0: (0, 0), 5: (5, 4), 17: (2, 3)}
    theirs.train(data, 150, random_order=True, fixed_points=fixed)
    ours.train(data, 150, random_order=True, fixed_points=fixed)
    _assert_same_weights(theirs, ours)


def test_fixed_points_on_minisoms_own_loop_match_minisom(data):
    """chebyshev (signed in MiniSom 2.3.6) runs MiniSom's loop, fixed points included."""
    theirs, ours = _pair(activation_distance="chebyshev")
    fixed = {3: (1, 1), 8: (4, 0)}
    theirs.train(data, 100, random_order=True, fixed_points=fixed)
    ours.train(data, 100, random_order=True, fixed_points=fixed)
    _assert_same_weights(theirs, ours)


def test_runs_split_into_launches_match_minisom(data):
    """Long runs are cut into launches of _MAX_LAUNCH_STEPS steps: the cuts (here
    inside epochs and next to fixed points) change nothing."""
    theirs, ours = _pair("triangle", "hexagonal")
    fixed = {2: (0, 0), 11: (3, 2)}
    theirs.train(data, 4, random_order=True, use_epochs=True, fixed_points=fixed)
    with mock.patch.object(facade_module, "_MAX_LAUNCH_STEPS", 7):
        ours.train(data, 4, random_order=True, use_epochs=True, fixed_points=fixed)
    _assert_same_weights(theirs, ours)


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("neighborhood", NEIGHBORHOODS)
def test_train_batch_offline_matches_minisom(data, neighborhood, topology):
    theirs, ours = _pair(neighborhood, topology)
    theirs.train_batch_offline(data, 8)
    ours.train_batch_offline(data, 8)
    _assert_same_weights(theirs, ours)


def test_train_batch_offline_keeps_nodes_without_support():
    """bubble with sigma 1 reaches only the winners: the other nodes keep their weights
    bit for bit, as MiniSom's mask leaves them."""
    samples = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
    theirs, ours = _pair("bubble", sigma=1)
    before = ours._weights.copy()
    theirs.train_batch_offline(samples, 2)
    ours.train_batch_offline(samples, 2)
    _assert_same_weights(theirs, ours)
    moved = np.any(ours._weights != before, axis=-1)
    assert 0 < moved.sum() <= 2


def test_verbose_training_matches_minisom(data, capsys):
    theirs, ours = _pair()
    theirs.train(data, 250, random_order=True, verbose=True)
    ours.train(data, 250, random_order=True, verbose=True)
    _assert_same_weights(theirs, ours)
    assert "quantization error:" in capsys.readouterr().out


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_metrics_and_maps_match_minisom(data, topology):
    theirs, ours = _pair(topology=topology)
    theirs.train(data, 200, random_order=True)
    ours.train(data, 200, random_order=True)
    _assert_same_weights(theirs, ours)
    labels = [f"c{i % 3}" for i in range(len(data))]
    assert ours.quantization_error(data) == pytest.approx(theirs.quantization_error(data), rel=1e-12)
    assert ours.topographic_error(data) == theirs.topographic_error(data)
    np.testing.assert_allclose(ours.quantization(data), theirs.quantization(data), rtol=1e-12)
    for scaling in ("sum", "mean"):
        np.testing.assert_allclose(ours.distance_map(scaling), theirs.distance_map(scaling), rtol=1e-12)
    np.testing.assert_array_equal(ours.activation_response(data), theirs.activation_response(data))
    assert ours.win_map(data, return_indices=True) == theirs.win_map(data, return_indices=True)
    ours_rows, theirs_rows = ours.win_map(data), theirs.win_map(data)
    assert list(ours_rows) == list(theirs_rows)
    for position in theirs_rows:
        np.testing.assert_array_equal(ours_rows[position], theirs_rows[position])
    assert ours.labels_map(data, labels) == theirs.labels_map(data, labels)
    assert ours.distortion_measure(data) == pytest.approx(theirs.distortion_measure(data), rel=1e-12)
    np.testing.assert_allclose(ours._distance_from_weights(data), theirs._distance_from_weights(data))
    for sample in data[:5]:
        assert ours.winner(sample) == theirs.winner(sample)
        np.testing.assert_allclose(ours.activate(sample), theirs.activate(sample), rtol=1e-12)


def test_topographic_error_counts_non_adjacent_pairs():
    """A constructed map with known best and second-best units per sample."""
    rect = MiniSom(3, 3, 1, random_seed=0)
    rect._weights = np.arange(9.0).reshape(3, 3) * 10  # node (i, j) holds 10 * (3 i + j)
    # 1 -> (0,0) then (0,1): adjacent; 14 -> (0,1) then (0,2): adjacent;
    # 25 (tie 20 | 30 -> (0,2) then (1,0), distance sqrt(5)): not adjacent
    assert rect.topographic_error([[1.0], [14.0], [25.0]]) == pytest.approx(1 / 3)
    hexa = MiniSom(3, 3, 1, topology="hexagonal", random_seed=0)
    hexa._weights = np.arange(9.0).reshape(3, 3) * 10
    theirs = minisom.MiniSom(3, 3, 1, topology="hexagonal", random_seed=0)
    theirs._weights = np.arange(9.0).reshape(3, 3, 1) * 10
    samples = [[1.0], [14.0], [26.0], [44.0], [61.0]]
    assert hexa.topographic_error(samples) == theirs.topographic_error(samples)


def test_inputs_are_coerced_like_minisom():
    """Lists, integer arrays and scalars are accepted and computed in float64."""
    theirs, ours = _pair()
    int_data = np.random.RandomState(1).randint(0, 3, size=(20, 3))
    theirs.train(int_data, 60)
    ours.train(int_data.tolist(), 60)
    _assert_same_weights(theirs, ours)
    np.testing.assert_allclose(ours.activate(1), theirs.activate(1), rtol=1e-12)
    assert ours.quantization_error(int_data) == pytest.approx(theirs.quantization_error(int_data))
    ours._weights = ours._weights.astype(np.float32)
    assert ours._weights.dtype == np.float64


@pytest.mark.parametrize("call, message", [
    (lambda som: som.train([[1.0, 2.0]], 5), "Received 2 features, expected 3."),
    (lambda som: som.train([[1.0, 2.0, 3.0]], 0), "num_iteration must be > 1"),
    (lambda som: som.train_batch_offline([[1.0, 2.0, 3.0]], 0), "num_iteration must be > 1"),
    (lambda som: som.distance_map("puppies"), 'scaling should be either "sum" or "mean"'),
    (lambda som: som.labels_map([[1.0, 2.0, 3.0]], ["a", "b"]), "same length"),
])
def test_errors_are_minisoms(call, message):
    with pytest.raises(ValueError, match=message):
        call(MiniSom(*SHAPE, 3))


@pytest.mark.parametrize("kwargs", [dict(neighborhood_function="boooom"),
                                    dict(activation_distance="ridethewave"),
                                    dict(decay_function="strawberry"),
                                    dict(sigma_decay_function="strawberry"),
                                    dict(topology="triangular")])
def test_constructor_errors_are_minisoms(kwargs):
    with pytest.raises(ValueError) as ours:
        MiniSom(*SHAPE, 3, **kwargs)
    with pytest.raises(ValueError) as theirs:
        minisom.MiniSom(*SHAPE, 3, **kwargs)
    assert str(ours.value) == str(theirs.value)


def test_random_and_pca_init_match_minisom(data):
    theirs, ours = _pair()
    theirs.random_weights_init(data)
    ours.random_weights_init(data)
    np.testing.assert_array_equal(ours._weights, theirs._weights)
    theirs.pca_weights_init(data)
    ours.pca_weights_init(data)
    np.testing.assert_allclose(ours._weights, theirs._weights, rtol=1e-12)


def test_pickle_round_trip(data):
    _, ours = _pair("triangle", "hexagonal")
    ours.train(data, 50, random_order=True)
    restored = pickle.loads(pickle.dumps(ours))
    np.testing.assert_array_equal(restored._weights, ours._weights)
    assert restored._kernel_neighborhood() == "triangle"
    # the restored RandomState continues the same stream: training stays in lockstep
    restored.train(data, 50, random_order=True)
    ours.train(data, 50, random_order=True)
    np.testing.assert_array_equal(restored._weights, ours._weights)


def test_not_a_minisom_subclass():
    assert not issubclass(MiniSom, minisom.MiniSom)


def test_hot_paths_run_on_genkernels_ops(data):
    """train is one som_online launch (M=1, one column per step); batch training uses
    som_node_sums + som_smooth; many-sample winners one som_bmu call."""
    ops = facade_module.ops
    _, ours = _pair("triangle", "hexagonal")
    with mock.patch.object(ops, "som_online", wraps=ops.som_online) as online, \
            mock.patch.object(ops, "som_node_sums", wraps=ops.som_node_sums) as node_sums, \
            mock.patch.object(ops, "som_smooth", wraps=ops.som_smooth) as smooth, \
            mock.patch.object(ops, "som_bmu", wraps=ops.som_bmu) as bmu:
        ours.train(data, 3, random_order=True, use_epochs=True)
        assert online.call_count == 1
        assert tuple(online.call_args.args[2].shape) == (1, 3 * len(data))
        ours.train_batch_offline(data, 4)
        assert node_sums.call_count == 4 and smooth.call_count == 4
        ours.win_map(data)
        ours.topographic_error(data)
        assert bmu.call_count == 2 and bmu.call_args.args[2] == 2
