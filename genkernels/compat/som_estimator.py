"""The self-organizing map as a scikit-learn estimator: ``from genkernels.compat import
SOMEstimator``.

``SOMEstimator(grid=(10, 10), sigma=..., learning_rate=..., epochs=..., ...)`` trains one
:class:`genkernels.SOM` in ``fit`` and answers scikit-learn's verbs from it, so it drops into
``Pipeline``, ``GridSearchCV`` and the other model-selection tools:

* ``fit(X, y=None)``: ``epochs`` passes of the SOM rule (``mode``: "online" by default, the
  rule whose ``learning_rate`` matters; "batch" or "minibatch"); with ``y`` every node also
  takes the majority label of the training samples it wins (``SOM.label_nodes``: ties to
  the smallest label, a node that wins nothing takes the label of the nearest labelled node);
* ``transform(X)``: ``transform_to="distances"`` (default) gives the (n_samples, n_nodes)
  distances to every node in the map's ``metric``, as ``KMeans.transform`` does;
  ``"coordinates"`` the (n_samples, 2) lattice position of each sample's best-matching
  node (``SOM.transform``: (row, col) on rectangular maps, hexagonal positions on hexagonal
  ones);
* ``predict(X)``: the label of each sample's best-matching node (needs ``fit(X, y)``);
* ``score(X, y=None)``: minus the quantization error (the mean distance of the samples to
  their best-matching nodes), so that greater is better, as model selection expects.

Fitted attributes: ``som_`` (the trained :class:`genkernels.SOM`, for U-matrices, hit maps
and plots), ``weights_`` (n_nodes, n_features) numpy codebook, ``node_labels_`` (n_nodes,)
or None when fitted without ``y``, ``n_features_in_`` and ``feature_names_in_`` (DataFrames).

The map trains in X's dtype (float32 stays float32, the faster kernels; anything else
becomes float64) on ``device`` (None: cpu); outputs are numpy arrays in X's dtype.
``random_state`` draws the SOM's 64-bit seed (which orders the samples) and, with
``init="random"``, the samples the nodes start from; ``init="pca"`` starts from the plane of
the first two principal components and draws nothing. So two fits with the same int
``random_state`` are the same map, bit for bit on CPU.

:func:`genkernels.compat.som_grid_search` evaluates a whole grid of sigma and learning-rate
values as one ``n_maps`` launch per fold and returns GridSearchCV's results
(genkernels/compat/som_search.py).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import backends
from .._checks import check_fits_dtype
from ..som.lattice import TOPOLOGIES
from ..som.ops import som_bmu
from ..som.reference import METRICS, NEIGHBORHOODS
from ..som.schedules import SCHEDULES
from ..som.som import SOM

MODES = ("online", "batch", "minibatch")
INITS = ("pca", "random")
TRANSFORMS = ("distances", "coordinates")


def _grid_shape(grid) -> tuple[int, int]:
    """(rows, cols) of a ``grid`` parameter (validated by the SOM when it is built)."""
    if isinstance(grid, Integral):
        return 1, int(grid)
    grid = tuple(grid)
    return (1, int(grid[0])) if len(grid) == 1 else (int(grid[0]), int(grid[1]))


def default_sigma(grid) -> float:
    """The SOM's starting radius for ``sigma=None``: max(rows, cols) / 2, at least 1."""
    return max(max(_grid_shape(grid)) / 2.0, 1.0)


class SOMEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A self-organizing map with scikit-learn's estimator API (module docstring for the
    verbs and what they return).

    Parameters:
        grid: ``(rows, cols)`` or ``(n,)``: the map's nodes.
        sigma: starting neighbourhood radius, > 0, decaying to min(1, sigma); None:
            max(rows, cols) / 2.
        learning_rate: starting learning rate, > 0, decaying to 2% of it (online and
            minibatch modes; the batch rule has none).
        epochs: passes over the data.
        mode: "online" (one update per sample), "batch" (Kohonen's batch rule) or
            "minibatch" (updates averaged over ``batch_size`` samples).
        batch_size: samples per update in minibatch mode.
        topology, periodic, neighborhood, schedule, metric: as :class:`genkernels.SOM`'s.
        init: "pca" (the plane of the first two principal components) or "random"
            (samples of X drawn from ``random_state``).
        transform_to: what ``transform`` returns: "distances" (n_samples, n_nodes) or
            "coordinates" (n_samples, 2).
        random_state: None, an int or a ``numpy.random.RandomState``.
        verbose: a progress bar during ``fit``.
        device: torch device of the computation (None: cpu).
        backend: None (auto) or "reference", "cpu", "triton": the backend of every op.

    Every parameter is checked when fitting (``sklearn.utils._param_validation``): a bad
    value raises a ValueError (scikit-learn's InvalidParameterError) naming it.

    Example::

        from sklearn.model_selection import GridSearchCV
        from genkernels.compat import SOMEstimator
        search = GridSearchCV(SOMEstimator((10, 10), random_state=0),
                              {"sigma": [1, 2, 3], "learning_rate": [0.1, 0.5]}, cv=3).fit(x)
    """

    _parameter_constraints: ClassVar[dict] = {
        "grid": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "sigma": [None, Interval(Real, 0, None, closed="neither")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "mode": [StrOptions(set(MODES))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "topology": [StrOptions(set(TOPOLOGIES))],
        "periodic": ["boolean"],
        "neighborhood": [StrOptions(set(NEIGHBORHOODS))],
        "schedule": [StrOptions(set(SCHEDULES))],
        "init": [StrOptions(set(INITS))],
        "metric": [StrOptions(set(METRICS))],
        "transform_to": [StrOptions(set(TRANSFORMS))],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "device": [None, str, torch.device],
        "backend": [None, StrOptions(set(backends.BACKENDS))],
    }

    def __init__(self, grid=(10, 10), *, sigma=None, learning_rate=0.5, epochs=10, mode="online", batch_size=256,
                 topology="rectangular", periodic=False, neighborhood="gaussian", schedule="exponential",
                 init="pca", metric="euclidean", transform_to="distances", random_state=None, verbose=0,
                 device=None, backend=None):
        self.grid = grid
        self.sigma = sigma
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.mode = mode
        self.batch_size = batch_size
        self.topology = topology
        self.periodic = periodic
        self.neighborhood = neighborhood
        self.schedule = schedule
        self.init = init
        self.metric = metric
        self.transform_to = transform_to
        self.random_state = random_state
        self.verbose = verbose
        self.device = device
        self.backend = backend

    # ------------------------------------------------------------------ training
    def _check_backend(self) -> None:
        """An explicit ``backend`` must run the SOM's ops on ``device``: raises before
        anything is trained."""
        if self.backend is not None:
            device = torch.device("cpu" if self.device is None else self.device)
            backends.resolve("som_bmu", device, self.backend)

    def _validate_training_data(self, X, y):
        """(X, y) as ``fit`` takes them: X a finite float32 / float64 array (n_samples >= 1,
        n_features >= 1), y None or 1-D labels of the same length; sets ``n_features_in_``
        and ``feature_names_in_``."""
        self._check_backend()
        if y is None:
            return validate_data(self, X, dtype=(np.float64, np.float32)), None
        return validate_data(self, X, y, dtype=(np.float64, np.float32))

    def _new_som(self, n_features: int, dtype, seed: int, sigma, learning_rate, n_maps: int = 1) -> SOM:
        """An untrained :class:`genkernels.SOM` with this estimator's configuration, the
        given seed and ``sigma`` / ``learning_rate`` as the SOM takes them."""
        return SOM(self.grid, n_features, n_maps=n_maps, topology=self.topology, periodic=bool(self.periodic),
                   neighborhood=self.neighborhood, sigma=sigma, learning_rate=learning_rate, schedule=self.schedule,
                   init=self.init, metric=self.metric, seed=seed,
                   dtype=torch.float32 if dtype == np.float32 else torch.float64, device=self.device)

    def _train(self, X: np.ndarray, sigmas: list, learning_rates: list) -> SOM:
        """Train ``len(sigmas)`` maps on validated X in one :meth:`genkernels.SOM.fit`: map m
        with starting radius ``sigmas[m]`` (None: the grid's default) and learning rate
        ``learning_rates[m]``, every other setting this estimator's.

        Every map gets what a single-map fit of the same values gets: the seed (which
        orders the samples, one order shared by every map) and the initial codebook come
        from ``random_state`` alone, and the kernels treat each map on its own, so map m is
        bit for bit the map ``fit`` trains with ``sigma=sigmas[m]`` and
        ``learning_rate=learning_rates[m]`` (tests/test_compat_som_estimator.py)."""
        rng = check_random_state(self.random_state)
        high, low = (int(v) for v in rng.randint(0, 2**32, size=2, dtype=np.uint64))
        n_maps = len(sigmas)
        if n_maps == 1:
            sigma, learning_rate = sigmas[0], learning_rates[0]
        else:
            # per-map starts: each decays to the same end as a single map's number would
            default = default_sigma(self.grid)
            sigma = [default if s is None else float(s) for s in sigmas]
            learning_rate = [float(v) for v in learning_rates]
        som = self._new_som(X.shape[1], X.dtype, (high << 32) | low, sigma, learning_rate, n_maps)
        if self.init == "random":
            start = X[rng.randint(0, X.shape[0], size=som.n_nodes)]
            som.weights = np.broadcast_to(start, tuple(som.codebook.shape)) if n_maps > 1 else start
        som.fit(X, epochs=self.epochs, mode=self.mode, batch_size=self.batch_size, verbose=bool(self.verbose),
                backend=self.backend)
        return som

    def _adopt(self, som: SOM, index: int, X: np.ndarray, y) -> "SOMEstimator":
        """Become the estimator fitted to map ``index`` of ``som`` (trained on validated X;
        the nodes labelled from y unless it is None). Returns self."""
        if som.n_maps > 1:
            one = self._new_som(som.n_features, X.dtype, som.seed, self.sigma, self.learning_rate)
            one.weights = som.codebook[index]
            som = one
        self.som_ = som
        self.weights_ = som.weights.detach().cpu().numpy()
        self.node_labels_ = None
        if y is not None:
            self._label_nodes(self._bmu(X)[0][:, 0].cpu().numpy(), y)
        return self

    def _label_nodes(self, winners: np.ndarray, y) -> None:
        """``SOM.label_nodes``'s rule from the winners (n_samples,) of the training samples:
        each node takes the majority label of the samples it wins (ties: the smallest
        label), a node that wins nothing the label of the nearest labelled node in weight
        space. Sets ``node_labels_`` (and the SOM's ``node_labels``, for ``som_.predict``)."""
        classes, label_index = np.unique(y, return_inverse=True)
        votes = np.zeros((self.som_.n_nodes, classes.shape[0]), dtype=np.int64)
        np.add.at(votes, (winners, label_index), 1)
        node_class = votes.argmax(1)
        labelled = votes.sum(1) > 0
        if not labelled.all():
            w = self.som_.weights.detach()
            mask = torch.from_numpy(labelled).to(w.device)
            nearest = som_bmu(w[~mask], w[mask], 1, self.som_.metric, backend=self.backend)[0][:, 0]
            node_class[~labelled] = node_class[labelled][nearest.cpu().numpy()]
        self.node_labels_ = classes[node_class]
        self.som_.node_labels = self.node_labels_.tolist()

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the map on X (n_samples, n_features): ``epochs`` passes of the ``mode``
        rule. With y (n_samples,) labels, each node also takes the majority label of the
        samples it wins (for :meth:`predict`). Returns self."""
        X, y = self._validate_training_data(X, y)
        return self._adopt(self._train(X, [self.sigma], [self.learning_rate]), 0, X, y)

    # ---------------------------------------------------------------- inference
    def _validated(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=(np.float64, np.float32))

    def _bmu(self, X: np.ndarray, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices and distances (n_samples, k) of the k best-matching nodes of validated X
        (finite: scikit-learn's check), by the BMU op on the map's codebook: the SOM's own
        queries would check X again, a pass that costs more than the search on small data."""
        som = self.som_
        if X.dtype == np.float64 and som.dtype != torch.float64 and X.size:
            check_fits_dtype("X", float(X.min()), float(X.max()), som.dtype)
        x = torch.from_numpy(X if X.flags.writeable else X.copy()).to(device=som.device, dtype=som.dtype)
        return som_bmu(x, som.weights.detach(), k, som.metric, backend=self.backend)

    def transform(self, X):
        """``transform_to="distances"``: (n_samples, n_nodes) distances of every sample to
        every node (the map's metric); ``"coordinates"``: (n_samples, 2) lattice position of
        each sample's best-matching node. In X's dtype."""
        X = self._validated(X)
        with torch.no_grad():
            if self.transform_to == "coordinates":
                out = self.som_.coords()[self._bmu(X)[0][:, 0]]
            else:
                # all K nearest nodes, sorted, back in node order: the BMU search's own
                # distances, without an (n_samples, n_nodes, n_features) intermediate
                index, distance = self._bmu(X, self.som_.n_nodes)
                out = torch.empty_like(distance).scatter_(1, index, distance)
        return out.cpu().numpy().astype(X.dtype, copy=False)

    def predict(self, X):
        """(n_samples,) label of each sample's best-matching node (the majority label of
        the training samples that node won). Needs ``fit(X, y)``: after ``fit(X)`` raises
        NotFittedError saying so."""
        X = self._validated(X)
        if self.node_labels_ is None:
            raise NotFittedError(f"This {type(self).__name__} was fitted without labels (y=None), so its nodes "
                                 "have none to predict: call fit(X, y) to use predict")
        with torch.no_grad():
            return self.node_labels_[self._bmu(X)[0][:, 0].cpu().numpy()]

    def score(self, X, y=None):
        """Minus the quantization error of X: -(mean distance of each sample to its
        best-matching node), a float (greater is better; ``SOM.quantization_error``'s
        value). y is ignored."""
        X = self._validated(X)
        with torch.no_grad():
            return -float(self._bmu(X)[1][:, 0].to(torch.float64).mean())

    @property
    def _n_features_out(self) -> int:
        """Columns of :meth:`transform` (get_feature_names_out: "somestimator0", ...)."""
        return self.som_.n_nodes if self.transform_to == "distances" else 2

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
