"""Grid search over a :class:`SOMEstimator` with the grid trained as ``n_maps`` launches:
``from genkernels.compat import SOMGridSearchCV, som_grid_search``.

``GridSearchCV(SOMEstimator(...), {"sigma": [...], "learning_rate": [...]}, cv=3)`` fits one
map per candidate and fold. :class:`genkernels.SOM` trains ``n_maps`` independent maps with
per-map sigma and learning-rate values in one fit (the online rule: one kernel launch per
epoch for all of them, the maps spread over the CPU's threads), so
:class:`SOMGridSearchCV` -- a ``GridSearchCV`` -- gathers the candidates that differ only in
``sigma`` and ``learning_rate`` and trains them, per fold, as ONE such fit. Candidates that
differ in anything else (the grid shape, the mode, the topology, ...) cannot share a map
array: they form groups, one launch per group and fold.

What comes out is GridSearchCV's: the same splits (``check_cv``), the same ``cv_results_``
(formatted by GridSearchCV's own code: ``params``, ``param_<name>``,
``split<i>_test_score``, ``mean_test_score``, ``std_test_score``, ``rank_test_score``,
``mean_fit_time``, ...), ``best_index_``, ``best_params_``, ``best_score_``,
``best_estimator_`` (refit on all of X as GridSearchCV refits it), ``scorer_``,
``n_splits_``, and the delegating ``predict`` / ``transform`` / ``score``. The scores are
equal too: map m of a launch is bit for bit the map ``SOMEstimator.fit`` trains with
candidate m's values (``SOMEstimator._train``: the seed and the initial codebook depend on
``random_state`` alone, every map sees the same sample order, and the kernels treat each
map on its own), and each candidate is scored as GridSearchCV scores it, by the scorer on
a fitted ``SOMEstimator`` holding its map. This needs a fixed ``random_state`` (an int or a
RandomState): with None every GridSearchCV fit draws its own seed.

Times in ``cv_results_``: a launch's fit time is shared equally by its maps; score times
are each candidate's own. A launch that fails (e.g. a learning rate that makes one map
diverge) is retried candidate by candidate as GridSearchCV would run them, so a failing
candidate gets ``error_score`` and the others their scores; so does a candidate whose
parameters are invalid. ``n_jobs`` and ``pre_dispatch`` are accepted and unused: a launch
already runs its maps on every thread torch uses.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from sklearn.base import _fit_context, clone, is_classifier
from sklearn.metrics._scorer import _MultimetricScorer
from sklearn.model_selection import GridSearchCV, ParameterGrid, check_cv
from sklearn.model_selection._validation import (
    _fit_and_score,
    _insert_error_scores,
    _score,
    _warn_or_raise_about_fit_failures,
)
from sklearn.utils import indexable
from sklearn.utils.metaestimators import _safe_split

from .som_estimator import SOMEstimator

# the parameters that vary between the maps of one launch
MAP_PARAMS = ("sigma", "learning_rate")


class SOMGridSearchCV(GridSearchCV):
    """``sklearn.model_selection.GridSearchCV`` over a :class:`SOMEstimator`, whose
    candidates differing only in sigma and learning_rate train as one ``n_maps`` launch per
    fold (module docstring). Same constructor and attributes as GridSearchCV; ``estimator``
    must be a SOMEstimator.

    Example::

        from genkernels.compat import SOMEstimator, SOMGridSearchCV
        search = SOMGridSearchCV(SOMEstimator((10, 10), random_state=0),
                                 {"sigma": [1, 2, 3], "learning_rate": [0.1, 0.5]}, cv=3).fit(x)
        search.best_params_, search.cv_results_["mean_test_score"]
    """

    def _fit_candidate(self, base, X, y, train, test, parameters, scorers, split, candidate):
        """One candidate on one split exactly as GridSearchCV runs it (its own fit)."""
        return _fit_and_score(clone(base), X, y, scorer=scorers, train=train, test=test, verbose=self.verbose,
                              parameters=parameters, fit_params={}, score_params={},
                              return_train_score=self.return_train_score, return_n_test_samples=True,
                              return_times=True, error_score=self.error_score, split_progress=split,
                              candidate_progress=candidate)

    def _launch(self, base, shared: dict, members: list, X, y, train, test, scorers) -> list[dict]:
        """The candidates ``members`` [(index, params)] (equal ``shared`` parameters, valid)
        on one split as one n_maps fit: one _fit_and_score-style result per member."""
        template = clone(base).set_params(**shared)
        X_train, y_train = _safe_split(template, X, y, train)
        X_test, y_test = _safe_split(template, X, y, test, train)
        start = time.time()
        X_valid, y_valid = template._validate_training_data(X_train, y_train)
        fitted = [clone(template).set_params(**params) for _, params in members]
        som = template._train(X_valid, [e.sigma for e in fitted], [e.learning_rate for e in fitted])
        fit_time = (time.time() - start) / len(members)
        out = []
        for m, estimator in enumerate(fitted):
            for name in ("n_features_in_", "feature_names_in_"):
                if hasattr(template, name):
                    setattr(estimator, name, getattr(template, name))
            start = time.time()
            estimator._adopt(som, m, X_valid, y_valid)
            adopt_time = time.time() - start
            start = time.time()
            result = {"fit_error": None,
                      "test_scores": _score(estimator, X_test, y_test, scorers, {}, self.error_score)}
            score_time = time.time() - start
            if self.return_train_score:
                result["train_scores"] = _score(estimator, X_train, y_train, scorers, {}, self.error_score)
            result.update(n_test_samples=len(test), fit_time=fit_time + adopt_time, score_time=score_time)
            out.append(result)
        return out

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, groups=None):
        """Evaluate every candidate of ``param_grid`` on every split of ``cv`` (candidates
        equal but for sigma and learning_rate: one launch per fold), then refit the best
        on all of X (``refit``). X (n_samples, n_features); y None or labels (``predict``,
        scorers that need them); groups for group-aware splitters. Returns self."""
        if not isinstance(self.estimator, SOMEstimator):
            raise TypeError(f"estimator must be a genkernels.compat.SOMEstimator; got "
                            f"{type(self.estimator).__name__} (use sklearn's GridSearchCV for other estimators)")
        scorers, refit_metric = self._get_scorers()
        X, y, groups = indexable(X, y, groups)
        cv = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        splits = list(cv.split(X, y, groups))
        self.n_splits_ = len(splits)
        base = clone(self.estimator)
        candidates = list(ParameterGrid(self.param_grid))
        if not candidates or not splits:
            raise ValueError("No fits were performed. Was the CV iterator empty? Were there no candidates?")

        # candidates with the same non-map parameters share a launch; invalid ones run alone
        launches, alone = defaultdict(list), []
        for index, params in enumerate(candidates):
            try:
                clone(base).set_params(**params)._validate_params()
            except (TypeError, ValueError):
                alone.append(index)
                continue
            shared = {k: v for k, v in params.items() if k not in MAP_PARAMS}
            launches[repr(sorted(shared.items()))].append((index, params))
        if self.verbose > 0:
            print(f"Fitting {self.n_splits_} folds for each of {len(candidates)} candidates, totalling "
                  f"{len(candidates) * self.n_splits_} fits, as {len(launches) * self.n_splits_} launches of "
                  f"{self.estimator.__class__.__name__} maps")

        out = [[None] * self.n_splits_ for _ in candidates]
        for members in launches.values():
            shared = {k: v for k, v in members[0][1].items() if k not in MAP_PARAMS}
            for split, (train, test) in enumerate(splits):
                try:
                    results = self._launch(base, shared, members, X, y, train, test, scorers)
                except Exception:  # noqa: BLE001 -- retried per candidate, which records or raises it
                    results = [self._fit_candidate(base, X, y, train, test, params, scorers,
                                                   (split, self.n_splits_), (index, len(candidates)))
                               for index, params in members]
                for (index, _), result in zip(members, results):
                    out[index][split] = result
        for index in alone:
            for split, (train, test) in enumerate(splits):
                out[index][split] = self._fit_candidate(base, X, y, train, test, candidates[index], scorers,
                                                        (split, self.n_splits_), (index, len(candidates)))
        out = [result for row in out for result in row]  # candidate-major, as GridSearchCV
        _warn_or_raise_about_fit_failures(out, self.error_score)
        if callable(self.scoring):
            _insert_error_scores(out, self.error_score)
        results = self._format_results(candidates, self.n_splits_, out)
        self.multimetric_ = isinstance(out[0]["test_scores"], dict)
        if callable(self.scoring) and self.multimetric_:
            self._check_refit_for_multimetric(out[0]["test_scores"])
            refit_metric = self.refit

        # from here on as GridSearchCV.fit
        if self.refit or not self.multimetric_:
            self.best_index_ = self._select_best_index(self.refit, refit_metric, results)
            if not callable(self.refit):
                self.best_score_ = results[f"mean_test_{refit_metric}"][self.best_index_]
            self.best_params_ = results["params"][self.best_index_]
        if self.refit:
            self.best_estimator_ = clone(base).set_params(**clone(self.best_params_, safe=False))
            start = time.time()
            self.best_estimator_.fit(X, y)
            self.refit_time_ = time.time() - start
            if hasattr(self.best_estimator_, "feature_names_in_"):
                self.feature_names_in_ = self.best_estimator_.feature_names_in_
        self.scorer_ = scorers._scorers if isinstance(scorers, _MultimetricScorer) else scorers
        self.cv_results_ = results
        return self


def som_grid_search(X, y=None, *, param_grid, estimator: SOMEstimator | None = None, cv=None, scoring=None,
                    refit=True, return_train_score: bool = False, error_score=np.nan, groups=None,
                    verbose: int = 0) -> SOMGridSearchCV:
    """Evaluate ``param_grid`` (e.g. ``{"sigma": [...], "learning_rate": [...]}``) over
    ``estimator`` (default ``SOMEstimator()``) on the ``cv`` splits of X (n_samples,
    n_features) [and y], each fold's sigma x learning-rate grid as ONE ``n_maps`` launch of
    :class:`genkernels.SOM` (one launch per grid shape or other differing parameter).

    Returns the fitted :class:`SOMGridSearchCV`: ``cv_results_`` is the table GridSearchCV
    gives on the same arguments (same keys and scores), with ``best_params_``,
    ``best_score_`` and (``refit``) ``best_estimator_``."""
    search = SOMGridSearchCV(SOMEstimator() if estimator is None else estimator, param_grid, scoring=scoring,
                             refit=refit, cv=cv, verbose=verbose, return_train_score=return_train_score,
                             error_score=error_score)
    return search.fit(X, y, groups=groups)
