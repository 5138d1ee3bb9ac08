"""genkernels.compat.SOMEstimator and its grid search: scikit-learn's estimator checks, the
verbs' meaning (transform, predict, score against the SOM's own answers), Pipeline and
GridSearchCV, bad input, and som_grid_search's n_maps launches giving GridSearchCV's
results -- the same maps bit for bit, hence the same scores."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from genkernels.compat import SOMEstimator, SOMGridSearchCV, som_grid_search
from genkernels.data import load_digits
from genkernels.som import schedules
from genkernels.som.reference import pairwise_distances


@pytest.fixture(scope="module")
def digits():
    """The first 300 digits: x (300, 64) float32 in [0, 1], labels."""
    x, y = load_digits()
    return x[:300], y[:300]


# Every check that applies runs; none is expected to fail (the array-API check skips itself
# unless SCIPY_ARRAY_API is set).
@parametrize_with_checks([SOMEstimator(grid=(3, 3), epochs=2)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- the verbs
def test_fit_is_seeded_and_verbs_answer_from_the_map(digits):
    """Two fits with one random_state are the same map bit for bit; transform, predict and
    score are the SOM's BMU answers: distances to every node (argmin = the BMU), lattice
    coordinates, the node labels SOM.label_nodes gives, minus SOM.quantization_error."""
    x, y = digits
    est = SOMEstimator((5, 6), epochs=3, sigma=1.5, learning_rate=0.3, random_state=7).fit(x, y)
    again = SOMEstimator((5, 6), epochs=3, sigma=1.5, learning_rate=0.3, random_state=7).fit(x)
    other = SOMEstimator((5, 6), epochs=3, sigma=1.5, learning_rate=0.3, random_state=8).fit(x)
    assert np.array_equal(est.weights_, again.weights_) and not np.array_equal(est.weights_, other.weights_)
    assert est.weights_.shape == (30, 64) and est.weights_.dtype == np.float32 and est.n_features_in_ == 64

    distances = est.transform(x)
    expected = pairwise_distances(torch.from_numpy(x), torch.from_numpy(est.weights_), "euclidean").numpy()
    assert distances.shape == (300, 30) and distances.dtype == np.float32
    np.testing.assert_allclose(distances, expected, rtol=1e-5, atol=1e-5)
    winners = est.som_.bmu(x)[0][:, 0].numpy()
    assert np.array_equal(distances.argmin(1), winners)
    assert np.array_equal(est.set_params(transform_to="coordinates").transform(x), est.som_.transform(x).numpy())
    assert list(est.get_feature_names_out()) == ["somestimator0", "somestimator1"]

    reference = est.som_.__class__((5, 6), 64, seed=0)
    reference.weights = est.weights_
    reference.label_nodes(x, y)
    assert est.node_labels_.tolist() == reference.node_labels and est.node_labels_.dtype == y.dtype
    assert np.array_equal(est.predict(x), est.node_labels_[winners])
    assert (est.predict(x) == y).mean() > 0.8
    assert est.score(x) == -float(est.som_.quantization_error(x)) < 0


def test_float64_input_trains_in_float64_and_labels_keep_their_type(digits):
    x, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]
    est = SOMEstimator((4, 4), epochs=2, init="random", random_state=0).fit(x.astype(np.float64), names)
    assert est.weights_.dtype == np.float64 and est.transform(x).dtype == np.float32
    assert set(est.predict(x)) <= set(names) and est.node_labels_.shape == (16,)


def test_pipeline_features_and_labels_on_digits():
    """In a Pipeline: the map's distances as features for a logistic regression, and the map
    itself as the classifier (majority labels of the nodes), on held-out digits."""
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x[:900], y[:900], test_size=0.3, random_state=0)
    som = SOMEstimator((8, 8), epochs=5, sigma=2.0, learning_rate=0.3, random_state=0)
    features = Pipeline([("scale", MinMaxScaler()), ("som", som), ("standardize", StandardScaler()),
                         ("logistic", LogisticRegression(max_iter=500))])
    assert features.fit(x_train, y_train).score(x_test, y_test) > 0.85
    labels = Pipeline([("scale", MinMaxScaler()), ("som", clone(som))]).fit(x_train, y_train)
    assert (labels.predict(x_test) == y_test).mean() > 0.8
    assert labels.score(x_test) == labels["som"].score(labels["scale"].transform(x_test))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("params, name", [({"sigma": 0}, "sigma"), ({"sigma": -1.0}, "sigma"),
                                          ({"learning_rate": 0.0}, "learning_rate"), ({"epochs": 0}, "epochs"),
                                          ({"mode": "sequential"}, "mode"), ({"grid": "10x10"}, "grid"),
                                          ({"transform_to": "umatrix"}, "transform_to"),
                                          ({"backend": "gpu"}, "backend")])
def test_bad_parameters_raise_naming_them(digits, params, name):
    with pytest.raises(ValueError, match=f"'{name}' parameter of SOMEstimator"):
        SOMEstimator(**params).fit(digits[0])


@pytest.mark.parametrize("grid", [(0, 4), (2, 3, 4)])
def test_bad_grid_shapes_raise_naming_grid(digits, grid):
    with pytest.raises(ValueError, match="grid"):
        SOMEstimator(grid).fit(digits[0])


def test_bad_data_raises_clear_errors(digits):
    x, y = digits
    with pytest.raises(NotFittedError):
        SOMEstimator().predict(x)
    with pytest.raises(NotFittedError):
        SOMEstimator().transform(x)
    with pytest.raises(ValueError, match="Expected 2D array"):
        SOMEstimator().fit(x[0])
    nan = x.copy()
    nan[3, 5] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        SOMEstimator().fit(nan)
    est = SOMEstimator((3, 3), epochs=1, random_state=0).fit(x)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        est.transform(nan)
    with pytest.raises(ValueError, match="X has 63 features, but SOMEstimator is expecting 64"):
        est.score(x[:, 1:])
    with pytest.raises(NotFittedError, match=r"fitted without labels \(y=None\).*fit\(X, y\)"):
        est.predict(x)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        SOMEstimator().fit(x, y[:-1])
    with pytest.raises(TypeError, match="estimator must be a genkernels.compat.SOMEstimator"):
        SOMGridSearchCV(LogisticRegression(), {"C": [1.0]}).fit(x, y)


# ------------------------------------------------------------ the grid search
@pytest.mark.parametrize("data, params", [
    (np.float32, {}),
    (np.float64, {"init": "random"}),
    (np.float32, {"mode": "batch"}),
    (np.float32, {"mode": "minibatch", "batch_size": 32, "init": "random"}),
    (np.float32, {"topology": "hexagonal", "neighborhood": "bubble", "schedule": "linear", "periodic": True}),
    (np.float32, {"grid": (16, 16), "metric": "cosine"}),
], ids=["online", "online-float64-random", "batch", "minibatch-random", "hexagonal-bubble-linear", "16x16-cosine"])
def test_each_map_of_a_launch_is_the_single_fit(digits, data, params):
    """Map m of one n_maps launch is bit for bit what SOMEstimator.fit trains with map m's
    sigma and learning rate (sigma None: the grid's default, mixed with numbers). A 16x16
    map alone may train on a team of threads splitting its nodes, in a launch each map has
    one thread: the same arithmetic per node."""
    x = digits[0].astype(data)
    base = SOMEstimator(**{"grid": (4, 6), **params}, epochs=2, random_state=5)
    values = list(itertools.product([None, 0.5, 2.5], [0.05, 0.9]))
    som = base._train(base._validate_training_data(x, None)[0], [s for s, _ in values], [lr for _, lr in values])
    for m, (sigma, learning_rate) in enumerate(values):
        single = clone(base).set_params(sigma=sigma, learning_rate=learning_rate).fit(x)
        assert np.array_equal(single.weights_, som.codebook[m].numpy()), (sigma, learning_rate)


def test_schedules_per_map_equal_a_single_maps():
    """The per-step rates of map m among 25 equal those of one map with its values, also
    past the size where torch splits the evaluation over threads (a launch's schedules)."""
    starts = torch.tensor([0.05 + 0.37 * m for m in range(25)], dtype=torch.float64)
    for kind in schedules.SCHEDULES:
        every = schedules.evaluate(kind, starts, 0.02 * starts, 7, 50_000, 500_000)
        for m in (0, 11, 24):
            one = schedules.evaluate(kind, starts[m:m + 1], 0.02 * starts[m:m + 1], 7, 50_000, 500_000)
            assert torch.equal(one[0], every[m]), (kind, m)


def _same_results(ours, theirs):
    """cv_results_ equal key for key (times aside), and the same choice and refit."""
    a, b = ours.cv_results_, theirs.cv_results_
    assert list(a) == list(b)
    for key in a:
        if key.endswith("_time"):
            assert a[key].shape == b[key].shape and np.all(a[key] >= 0)
        elif key == "params":
            assert a[key] == b[key]
        elif key.startswith("param_"):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key].mask, b[key].mask)
            assert list(a[key].compressed()) == list(b[key].compressed())
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert ours.best_index_ == theirs.best_index_ and ours.best_params_ == theirs.best_params_
    assert ours.best_score_ == theirs.best_score_ and ours.n_splits_ == theirs.n_splits_


def test_grid_search_gives_gridsearchcvs_results(digits):
    """A 3 x 3 sigma x learning-rate grid on 3 folds: cv_results_, best_params_,
    best_score_ and the refit estimator are GridSearchCV's (fits differ only in time)."""
    x, y = digits
    grid = {"sigma": [0.7, 1.5, 3.0], "learning_rate": [0.05, 0.3, 0.9]}
    est = SOMEstimator((5, 5), epochs=2, random_state=0)
    ours = som_grid_search(x, y, param_grid=grid, estimator=est, cv=3)
    theirs = GridSearchCV(est, grid, cv=3).fit(x, y)
    _same_results(ours, theirs)
    assert np.array_equal(ours.best_estimator_.weights_, theirs.best_estimator_.weights_)
    assert np.array_equal(ours.predict(x), theirs.predict(x)) and ours.score(x) == theirs.score(x)


def test_grid_search_with_map_sizes_scoring_and_train_scores(digits):
    """Candidates of two grid shapes and of another mode (three launches per fold), a
    labelled scorer, train scores, a RandomState and a shuffled KFold: still GridSearchCV's
    table."""
    x, y = digits
    grid = [{"grid": [(4, 4), (3, 6)], "sigma": [None, 1.0], "learning_rate": [0.2, 0.6]},
            {"grid": [(5, 5)], "mode": ["batch"], "sigma": [1.0, 2.0]}]
    est = SOMEstimator(epochs=2, random_state=np.random.RandomState(3))
    kwargs = {"cv": KFold(3, shuffle=True, random_state=1), "scoring": "accuracy", "return_train_score": True}
    ours = SOMGridSearchCV(est, grid, **kwargs).fit(x, y)
    theirs = GridSearchCV(est, grid, **kwargs).fit(x, y)
    _same_results(ours, theirs)
    assert ours.best_score_ > 0.5


def test_grid_search_with_several_metrics(digits):
    """Multi-metric scoring (refit by one of them), as GridSearchCV reports it."""
    x, y = digits
    grid = {"sigma": [0.8, 2.0], "learning_rate": [0.1, 0.5]}
    scoring = {"accuracy": "accuracy", "qe": lambda estimator, X, y=None: estimator.score(X)}
    est = SOMEstimator((4, 4), epochs=1, random_state=2)
    ours = som_grid_search(x, y, param_grid=grid, estimator=est, cv=2, scoring=scoring, refit="qe")
    theirs = GridSearchCV(est, grid, cv=2, scoring=scoring, refit="qe").fit(x, y)
    _same_results(ours, theirs)
    assert "mean_test_accuracy" in ours.cv_results_ and ours.multimetric_ and set(ours.scorer_) == set(scoring)


def test_grid_search_on_a_dataframe_keeps_feature_names(digits):
    pd = pytest.importorskip("pandas")
    x, y = digits
    frame = pd.DataFrame(x, columns=[f"pixel{i}" for i in range(64)])
    grid = {"sigma": [1.0, 2.0], "learning_rate": [0.3]}
    est = SOMEstimator((3, 3), epochs=1, random_state=0)
    ours, theirs = som_grid_search(frame, y, param_grid=grid, estimator=est, cv=2), GridSearchCV(est, grid, cv=2)
    _same_results(ours, theirs.fit(frame, y))
    assert list(ours.feature_names_in_) == list(frame.columns) == list(ours.best_estimator_.feature_names_in_)


def test_failing_candidates_get_error_score_as_in_gridsearchcv(digits):
    """An invalid sigma and a diverging learning rate fail their own candidates only (NaN
    scores and GridSearchCV's warning); the rest of their launch is scored as before."""
    x, y = digits
    grid = {"sigma": [-1.0, 1.0], "learning_rate": [0.3, 1e10]}
    est = SOMEstimator((3, 3), epochs=1, random_state=0)
    with warnings.catch_warnings(record=True) as ours_warnings:
        warnings.simplefilter("always")
        ours = som_grid_search(x, y, param_grid=grid, estimator=est, cv=2)
    with warnings.catch_warnings(record=True) as their_warnings:
        warnings.simplefilter("always")
        theirs = GridSearchCV(est, grid, cv=2).fit(x, y)
    _same_results(ours, theirs)
    assert np.isnan(ours.cv_results_["mean_test_score"]).sum() == 3
    fit_failed = [str(w.message).splitlines()[0] for w in ours_warnings if "fits failed" in str(w.message)]
    assert fit_failed == [str(w.message).splitlines()[0] for w in their_warnings if "fits failed" in str(w.message)]
    with pytest.raises(ValueError, match="sigma"):
        som_grid_search(x, param_grid=grid, estimator=est, cv=2, error_score="raise")
