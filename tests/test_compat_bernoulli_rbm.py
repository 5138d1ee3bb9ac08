"""genkernels.compat.BernoulliRBM against scikit-learn's BernoulliRBM: the estimator
checks scikit-learn's own passes, one update equal to scikit-learn's, the same initial
weights, transform and pseudo-likelihood, sparse input, and a digits pipeline."""

import functools
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import BernoulliRBM as SklearnRBM
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import minmax_scale
from sklearn.utils.estimator_checks import estimator_checks_generator

from genkernels.boltzmann import rbm_reference as reference
from genkernels.compat import BernoulliRBM

SKIP_EXCEPTIONS = (pytest.skip.Exception, __import__("unittest").SkipTest)


def _check_name(check) -> str:
    """check_x(keyword=value, ...) for a (possibly nested) functools.partial of a check."""
    keywords = {}
    while isinstance(check, functools.partial):
        keywords = {**check.keywords, **keywords}
        check = check.func
    args = ", ".join(f"{k}={v}" for k, v in sorted(keywords.items()))
    return f"{check.__name__}({args})" if args else check.__name__


def _checks(estimator) -> dict:
    """{check id: (estimator, check)}; a check yielded more than once gets #2, #3, ..."""
    seen, out = Counter(), {}
    for instance, check in estimator_checks_generator(estimator):
        name = _check_name(check)
        seen[name] += 1
        out[name if seen[name] == 1 else f"{name}#{seen[name]}"] = (instance, check)
    return out


# the checks run with scikit-learn's own testing parameters for BernoulliRBM
SKLEARN_CHECKS = _checks(SklearnRBM(n_iter=5, batch_size=10))
OUR_CHECKS = _checks(BernoulliRBM(n_iter=5, batch_size=10))


def test_the_same_checks_are_generated():
    assert list(OUR_CHECKS) == list(SKLEARN_CHECKS)


@pytest.mark.parametrize("name", list(SKLEARN_CHECKS))
def test_estimator_check_that_sklearn_passes(name):
    """Each check scikit-learn's BernoulliRBM passes, ours passes with the same parameters
    (a check may swap in its own, e.g. n_components=1 for check_dict_unchanged)."""
    theirs, check = SKLEARN_CHECKS[name]
    try:
        check(clone(theirs))
    except SKIP_EXCEPTIONS:
        raise
    except Exception as exc:  # noqa: BLE001 -- any failure of scikit-learn's own estimator
        first_line = (str(exc).strip().splitlines() or [""])[0]
        pytest.skip(f"scikit-learn's BernoulliRBM fails {name}: {type(exc).__name__} {first_line}")
    ours, our_check = OUR_CHECKS[name]
    ours = clone(ours).set_params(**theirs.get_params())
    our_check(ours)


def _binary(n=40, d=9, seed=0):
    return (np.random.RandomState(seed).rand(n, d) < 0.4).astype(np.float64)


def _copy_parameters(src, dst):
    for attr in ("components_", "intercept_hidden_", "intercept_visible_", "h_samples_"):
        setattr(dst, attr, getattr(src, attr).copy())


@pytest.mark.parametrize("batch", [16, 11])
def test_one_partial_fit_step_equals_sklearn(batch):
    """From the same parameters and chains, with scikit-learn given the visible samples our
    kernel draws, one partial_fit gives scikit-learn's components_ and intercepts (also for
    a batch smaller than the chains: both scale by the batch's size); our new chains are
    the Philox Bernoulli samples of h_neg computed before the update."""
    x = _binary(batch + 7, 12)
    x[:3] = np.random.RandomState(1).rand(3, 12)  # probabilities as data
    ours = BernoulliRBM(n_components=7, learning_rate=0.3, batch_size=16, random_state=0)
    ours.partial_fit(x[batch:])  # initialise and move the chains away from zeros
    theirs = SklearnRBM(n_components=7, learning_rate=0.3, batch_size=16)
    _copy_parameters(ours, theirs)
    weights = torch.from_numpy(ours.components_.T.copy())
    chains = torch.from_numpy(ours.h_samples_).to(torch.uint8)
    seed, offset = ours._philox_seed, ours._philox_offset
    v_neg = reference.rbm_half_step(chains, weights, torch.from_numpy(ours.intercept_visible_), seed, offset,
                                    True, False)[0]
    h_samples = reference.rbm_half_step(v_neg.double(), weights, torch.from_numpy(ours.intercept_hidden_), seed,
                                        offset + 16 * reference.counters_per_row(12), False, False)[0]
    seen = {}

    def sample_visibles(h, rng):
        seen["h"] = h.copy()
        return v_neg.numpy().astype(np.float64)

    theirs._sample_visibles = sample_visibles
    ours.partial_fit(x[:batch])
    theirs._fit(x[:batch], np.random.RandomState(0))
    np.testing.assert_array_equal(seen["h"], chains.numpy())
    np.testing.assert_allclose(ours.components_, theirs.components_, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ours.intercept_hidden_, theirs.intercept_hidden_, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ours.intercept_visible_, theirs.intercept_visible_, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(ours.h_samples_, h_samples.numpy().astype(np.float64))
    assert ours.components_.flags.f_contiguous and ours.h_samples_.shape == (16, 7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_starts_from_sklearn_weights_and_evaluates_like_sklearn(dtype):
    """random_state draws scikit-learn's initial weights; on the same parameters transform
    and score_samples (the same flipped features) return scikit-learn's values."""
    x = _binary(30, 8).astype(dtype)
    ours = BernoulliRBM(n_components=5, n_iter=0, random_state=3).fit(x)
    theirs = SklearnRBM(n_components=5, n_iter=0, random_state=3).fit(x)
    np.testing.assert_array_equal(ours.components_, theirs.components_)
    assert ours.components_.dtype == dtype and ours.h_samples_.dtype == dtype
    ours = BernoulliRBM(n_components=5, n_iter=3, random_state=3).fit(x)
    _copy_parameters(ours, theirs)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    assert ours.transform(x).dtype == dtype
    np.testing.assert_allclose(ours.transform(x), theirs.transform(x), **tol)
    np.testing.assert_allclose(ours.score_samples(x), theirs.score_samples(x), **tol)


def test_sparse_input_trains_like_dense_and_training_is_seeded():
    x = _binary(57, 10, seed=4)
    dense = BernoulliRBM(n_components=6, n_iter=4, batch_size=8, random_state=1).fit(x)
    for matrix in (sp.csr_matrix(x), sp.csc_array(x)):
        model = BernoulliRBM(n_components=6, n_iter=4, batch_size=8, random_state=1).fit(matrix)
        np.testing.assert_allclose(model.components_, dense.components_, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(model.h_samples_, dense.h_samples_)
        np.testing.assert_allclose(model.transform(matrix), dense.transform(x), rtol=1e-12, atol=1e-14)
    other = BernoulliRBM(n_components=6, n_iter=4, batch_size=8, random_state=2).fit(x)
    assert not np.allclose(other.components_, dense.components_)


def test_gibbs_samples_the_conditionals():
    """gibbs returns bool samples; averaged over many rows they approach E[v' | v] computed
    exactly from the two conditionals (the stream advances, so calls differ)."""
    model = BernoulliRBM(n_components=3, n_iter=0, random_state=0).fit(_binary(10, 4))
    rng = np.random.RandomState(0)
    model.components_ = rng.randn(3, 4)
    model.intercept_hidden_, model.intercept_visible_ = rng.randn(3), rng.randn(4)
    v = np.tile([[1.0, 0.0, 1.0, 1.0]], (20000, 1))
    first, second = model.gibbs(v), model.gibbs(v)
    assert first.dtype == bool and first.shape == v.shape and not np.array_equal(first, second)
    p_h = 1 / (1 + np.exp(-(v[0] @ model.components_.T + model.intercept_hidden_)))
    hs = np.array([[(k >> j) & 1 for j in range(3)] for k in range(8)], dtype=float)
    weights = np.prod(np.where(hs == 1, p_h, 1 - p_h), axis=1)
    expected = weights @ (1 / (1 + np.exp(-(hs @ model.components_ + model.intercept_visible_))))
    np.testing.assert_allclose(np.concatenate([first, second]).mean(0), expected, atol=0.015)


def test_pipeline_on_digits_matches_sklearn_accuracy():
    """scikit-learn's RBM + logistic regression example (without the nudged copies): our
    RBM's features classify as well as scikit-learn's with the same hyper-parameters."""
    x, y = load_digits(return_X_y=True)
    x = minmax_scale(x)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)

    def accuracy(rbm):
        model = Pipeline([("rbm", rbm), ("logistic", LogisticRegression(C=100, max_iter=2000))])
        return model.fit(x_train, y_train).score(x_test, y_test)

    params = {"n_components": 64, "learning_rate": 0.06, "n_iter": 10, "random_state": 0}
    ours, theirs = accuracy(BernoulliRBM(**params)), accuracy(SklearnRBM(**params))
    assert ours > 0.85
    assert ours > theirs - 0.03, (ours, theirs)
