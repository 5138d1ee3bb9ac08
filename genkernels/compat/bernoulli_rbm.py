"""scikit-learn's BernoulliRBM running on genkernels' RBM kernels:
``from genkernels.compat import BernoulliRBM``.

Same constructor arguments, methods and fitted attributes as
``sklearn.neural_network.BernoulliRBM`` (numpy arrays: ``components_`` (n_components,
n_features), ``intercept_hidden_``, ``intercept_visible_``, ``h_samples_`` (batch_size,
n_components), ``n_features_in_``, ``feature_names_in_`` for DataFrames), the same input
validation (``validate_data``) and the same training rule, scikit-learn's ``_fit``: for
each batch (scikit-learn's even slices, in order, no shuffling)

* h_pos = p(h | v_pos) (probabilities),
* v_neg ~ p(v | h_samples_) sampled from the persistent chains,
* h_neg = p(h | v_neg), and the chains become h_samples_ ~ Bernoulli(h_neg),
* every parameter moves by learning_rate / len(v_pos) times the summed positive minus
  negative statistics (components_ += lr (h_pos^T v_pos - h_neg^T v_neg), ...).

What differs is where the work runs and where the random bits come from. Each batch
is one :func:`genkernels.ops.rbm_half_step` from the chains to v_neg, one from v_neg to
(h_neg, the new chains) -- the fused matmul + sigmoid + Philox Bernoulli kernel -- and
two accumulating matrix products on torch tensors, all in one C++ call per batch on the
cpu backend (``rbm_pcd_step_``: at batch 1 the same sequence issued from Python cost more
in dispatch than in arithmetic). The ``random_state`` draws the
initial weights exactly as scikit-learn does (``normal(0, 0.01)``, so a seeded model
starts from scikit-learn's weights), then one 64-bit Philox key; every Gibbs sample
(training, :meth:`gibbs`) comes from that key's counter stream, laid out as
``rbm_half_step`` documents. The samples therefore differ from scikit-learn's
RandomState stream, while their distribution and the update rule are the same. The
pseudo-likelihood of :meth:`score_samples` corrupts the same feature per row as
scikit-learn (``check_random_state(random_state).randint``), so on the same parameters
it returns scikit-learn's values.

Sparse input (scipy CSR/CSC matrices or arrays) is accepted as scikit-learn accepts it
and densified one batch (``fit``, ``partial_fit``) or one block of rows (``transform``)
at a time, so memory stays bounded by a batch; :meth:`score_samples` and :meth:`gibbs`
densify their whole input.

``device`` (an addition; None means cpu) picks where the tensors live; the fitted
attributes are numpy arrays whatever the device. ``backend`` (an addition; None means the
automatic choice of :mod:`genkernels.backends`) names the backend of every op the
estimator runs -- the training step ``rbm_pcd_step_`` (for "triton", which has no fused
step, its reference composed of the triton half-steps) and :meth:`gibbs`'s half-steps.
"""

from __future__ import annotations

import time
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state, gen_even_slices
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .. import backends
from .. import random as gk_random
from ..boltzmann.rbm_ops import half_step, pcd_step_
from ..boltzmann.rbm_reference import counters_per_row

# rows of one densified block of a sparse input in transform
_SPARSE_BLOCK_ROWS = 4096


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else x


class BernoulliRBM(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Bernoulli restricted Boltzmann machine trained by persistent contrastive divergence
    (scikit-learn's BernoulliRBM API; module docstring for what runs where).

    Parameters: n_components (hidden units), learning_rate, batch_size, n_iter, verbose,
    random_state -- as scikit-learn's; device: torch device of the computation (None: cpu);
    backend: None (auto) or "reference", "cpu", "triton", the backend of every op it runs
    (checked, as every parameter, when fitting: a bad name raises ValueError, a backend that
    cannot run on ``device`` BackendUnavailableError before anything is trained).

    Example::

        from sklearn.pipeline import Pipeline
        from sklearn.linear_model import LogisticRegression
        from genkernels.compat import BernoulliRBM
        model = Pipeline([("rbm", BernoulliRBM(n_components=100, learning_rate=0.06,
                                               n_iter=10, random_state=0)),
                          ("logistic", LogisticRegression(C=6000))]).fit(x, y)
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_iter": [Interval(Integral, 0, None, closed="left")],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
        "device": [None, str, torch.device],
        "backend": [None, StrOptions(set(backends.BACKENDS))],
    }

    def __init__(self, n_components=256, *, learning_rate=0.1, batch_size=10, n_iter=10, verbose=0,
                 random_state=None, device=None, backend=None):
        self.n_components = n_components
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.verbose = verbose
        self.random_state = random_state
        self.device = device
        self.backend = backend

    # ------------------------------------------------------------------ tensors
    def _torch_device(self) -> torch.device:
        return torch.device("cpu" if self.device is None else self.device)

    def _check_backend(self) -> None:
        """An explicit ``backend`` must run the half-steps on ``device`` (every op the
        estimator runs is one, or composed of them): raises before anything changes."""
        if self.backend is not None:
            backends.resolve("rbm_half_step", self._torch_device(), self.backend)

    def _tensor(self, array, dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``array`` (sharing its memory where dtype and device allow; the
        callers never write to it). A read-only array (a memmap) is copied: torch has no
        read-only tensors."""
        array = np.asarray(array)
        if not array.flags.writeable:
            array = array.copy()
        return torch.as_tensor(array, dtype=dtype, device=self._torch_device())

    def _parameters(self, dtype: torch.dtype):
        """(weights (n_features, n_components), visible bias, hidden bias): contiguous
        copies in ``dtype``, trained in place and written back to the numpy attributes."""
        def copy(array):
            return torch.tensor(np.asarray(array), dtype=dtype, device=self._torch_device())
        return copy(self.components_.T).contiguous(), copy(self.intercept_visible_), copy(self.intercept_hidden_)

    def _store(self, weights, visible_bias, hidden_bias, chains, np_dtype) -> None:
        # weights are (n_features, n_components) C-order: their transpose is scikit-learn's
        # Fortran-ordered components_
        self.components_ = weights.cpu().numpy().astype(np_dtype, copy=False).T
        self.intercept_visible_ = visible_bias.cpu().numpy().astype(np_dtype, copy=False)
        self.intercept_hidden_ = hidden_bias.cpu().numpy().astype(np_dtype, copy=False)
        self.h_samples_ = chains.cpu().numpy().astype(np_dtype)

    # ------------------------------------------------------------- random stream
    def _draw_seed(self, rng: np.random.RandomState) -> None:
        """The Philox key of every Gibbs sample: 64 bits from the estimator's RandomState,
        drawn right after the initial weights; the counter stream starts at 0."""
        high, low = (int(x) for x in rng.randint(0, 2**32, size=2, dtype=np.uint64))
        self._stream = gk_random.PhiloxStream((high << 32) | low)

    @property
    def _philox_seed(self) -> int:
        return self._stream.seed

    @property
    def _philox_offset(self) -> int:
        return self._stream.offset

    def _advance(self, rows: int, units: int) -> int:
        """The first counter of a half-step sampling rows x units; moves the stream past it."""
        if not hasattr(self, "_stream"):
            if not hasattr(self, "random_state_"):
                self.random_state_ = check_random_state(self.random_state)
            self._draw_seed(self.random_state_)
        return self._stream.take(rows * counters_per_row(units))

    # ------------------------------------------------------------------ training
    def _fit_batch(self, v_pos, weights, visible_bias, hidden_bias, chains) -> torch.Tensor:
        """scikit-learn's ``_fit`` on one batch v_pos (B, n_features): updates the parameter
        tensors in place and returns the new chains (batch_size, n_components) uint8."""
        offset_v = self._advance(chains.shape[0], weights.shape[0])
        offset_h = self._advance(chains.shape[0], weights.shape[1])
        return pcd_step_(v_pos, weights, visible_bias, hidden_bias, chains, self._philox_seed,
                         offset_v, offset_h, float(self.learning_rate) / v_pos.shape[0], self.backend)

    def _batch(self, x, rows, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x[rows]
        return self._tensor(_dense(x[rows]), dtype)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the model to X (n_samples, n_features), array-like or sparse: n_iter sweeps
        of scikit-learn's even batches. Returns self."""
        self._check_backend()
        X = validate_data(self, X, accept_sparse="csr", dtype=(np.float64, np.float32))
        rng = check_random_state(self.random_state)
        components = np.asarray(rng.normal(0, 0.01, (self.n_components, X.shape[1])), order="F",
                                dtype=X.dtype)
        self._draw_seed(rng)
        dtype = torch.float64 if X.dtype == np.float64 else torch.float32
        weights = self._tensor(components.T, dtype).contiguous()
        visible_bias = torch.zeros(X.shape[1], dtype=dtype, device=weights.device)
        hidden_bias = torch.zeros(self.n_components, dtype=dtype, device=weights.device)
        chains = torch.zeros(self.batch_size, self.n_components, dtype=torch.uint8, device=weights.device)
        self._n_features_out = self.n_components
        data = X if sp.issparse(X) else self._tensor(X, dtype)
        n_batches = int(np.ceil(X.shape[0] / self.batch_size))
        slices = list(gen_even_slices(n_batches * self.batch_size, n_batches, n_samples=X.shape[0]))
        begin = time.time()
        small = backends.small_products(self.batch_size, X.shape[1], self.n_components)
        with torch.no_grad(), backends.sequential_blas(small):
            for iteration in range(1, self.n_iter + 1):
                for rows in slices:
                    chains = self._fit_batch(self._batch(data, rows, dtype), weights, visible_bias,
                                             hidden_bias, chains)
                if self.verbose:
                    self._store(weights, visible_bias, hidden_bias, chains, X.dtype)
                    end = time.time()
                    print(f"[{type(self).__name__}] Iteration {iteration}, pseudo-likelihood = "
                          f"{self.score_samples(X).mean():.2f}, time = {end - begin:.2f}s")
                    begin = end
        self._store(weights, visible_bias, hidden_bias, chains, X.dtype)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """One update on the batch X (n_samples, n_features); the first call initialises
        the model from ``random_state`` as scikit-learn does. Returns self."""
        self._check_backend()
        first_pass = not hasattr(self, "components_")
        X = validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=first_pass)
        if not hasattr(self, "random_state_"):
            self.random_state_ = check_random_state(self.random_state)
        if first_pass:
            self.components_ = np.asarray(self.random_state_.normal(0, 0.01, (self.n_components, X.shape[1])),
                                          order="F")
            self._n_features_out = self.components_.shape[0]
            self._draw_seed(self.random_state_)
        if not hasattr(self, "intercept_hidden_"):
            self.intercept_hidden_ = np.zeros(self.n_components)
        if not hasattr(self, "intercept_visible_"):
            self.intercept_visible_ = np.zeros(X.shape[1])
        if not hasattr(self, "h_samples_"):
            self.h_samples_ = np.zeros((self.batch_size, self.n_components))
        np_dtype = self.components_.dtype
        small = backends.small_products(X.shape[0], X.shape[1], self.n_components)
        with torch.no_grad(), backends.sequential_blas(small):
            weights, visible_bias, hidden_bias = self._parameters(torch.float64)
            chains = self._tensor(self.h_samples_, torch.float64).to(torch.uint8)
            chains = self._fit_batch(self._tensor(_dense(X), torch.float64), weights, visible_bias,
                                     hidden_bias, chains)
        self._store(weights, visible_bias, hidden_bias, chains, np_dtype)
        return self

    # ---------------------------------------------------------------- inference
    def transform(self, X):
        """Hidden probabilities P(h = 1 | v = X): (n_samples, n_components) in X's dtype
        (float32 or float64)."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", reset=False, dtype=(np.float64, np.float32))
        dtype = torch.float64 if X.dtype == np.float64 else torch.float32
        with torch.no_grad():
            weights = self._tensor(self.components_.T, dtype)
            hidden_bias = self._tensor(self.intercept_hidden_, dtype)
            if not sp.issparse(X):
                return torch.sigmoid(torch.addmm(hidden_bias, self._tensor(X, dtype), weights)).cpu().numpy()
            out = np.empty((X.shape[0], self.n_components), dtype=X.dtype)
            for start in range(0, X.shape[0], _SPARSE_BLOCK_ROWS):
                block = self._tensor(X[start:start + _SPARSE_BLOCK_ROWS].toarray(), dtype)
                out[start:start + block.shape[0]] = torch.sigmoid(torch.addmm(hidden_bias, block, weights)).cpu()
            return out

    def gibbs(self, v):
        """One Gibbs step from v (n_samples, n_features): h ~ p(h | v), then v' ~ p(v | h).
        Returns v' (n_samples, n_features) bool, as scikit-learn's."""
        check_is_fitted(self)
        self._check_backend()
        v = _dense(check_array(v, accept_sparse="csr", dtype=(np.float64, np.float32)))
        if v.shape[1] != self.components_.shape[1]:
            raise ValueError(f"v has {v.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.components_.shape[1]} features as input")
        dtype = torch.float64 if v.dtype == np.float64 else torch.float32
        with torch.no_grad():
            weights = self._tensor(self.components_.T, dtype).contiguous()
            hidden = half_step(self._tensor(v, dtype).contiguous(), weights,
                               self._tensor(self.intercept_hidden_, dtype).contiguous(),
                               *self._seed_and_offset(v.shape[0], weights.shape[1]), False, False,
                               self.backend)[0]
            visible = half_step(hidden, weights, self._tensor(self.intercept_visible_, dtype).contiguous(),
                                *self._seed_and_offset(v.shape[0], weights.shape[0]), True, False,
                                self.backend)[0]
        return visible.cpu().numpy().astype(bool)

    def _seed_and_offset(self, rows: int, units: int) -> tuple[int, int]:
        offset = self._advance(rows, units)
        return self._philox_seed, offset

    def _free_energy(self, v: torch.Tensor, weights, visible_bias, hidden_bias) -> torch.Tensor:
        """F(v) = -b.v - sum_j log(1 + exp(c + v W)_j): v (N, n_features) -> (N,)."""
        act = torch.addmm(hidden_bias, v, weights)
        return -(v @ visible_bias) - torch.logaddexp(torch.zeros_like(act), act).sum(1)

    def score_samples(self, X):
        """Pseudo-likelihood of every row of X (n_samples,): n_features * log sigmoid of
        the free-energy change when one feature per row (drawn from ``random_state`` as
        scikit-learn draws it) is flipped. X must be binary (not checked)."""
        check_is_fitted(self)
        v = validate_data(self, X, accept_sparse="csr", reset=False)
        rng = check_random_state(self.random_state)
        flipped = rng.randint(0, v.shape[1], v.shape[0])
        with torch.no_grad():
            weights = self._tensor(self.components_.T, torch.float64)
            visible_bias = self._tensor(self.intercept_visible_, torch.float64)
            hidden_bias = self._tensor(self.intercept_hidden_, torch.float64)
            v = self._tensor(_dense(v), torch.float64)
            rows = torch.arange(v.shape[0], device=v.device)
            cols = torch.as_tensor(flipped, device=v.device)
            corrupted = v.clone()
            corrupted[rows, cols] = 1 - corrupted[rows, cols]
            gap = self._free_energy(corrupted, weights, visible_bias, hidden_bias) \
                - self._free_energy(v, weights, visible_bias, hidden_bias)
            return (-v.shape[1] * torch.logaddexp(torch.zeros_like(gap), -gap)).cpu().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
