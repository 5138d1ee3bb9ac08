"""MiniSom 2.3.6's API running on genkernels' ops: ``from genkernels.compat import MiniSom``.

The facade keeps MiniSom's state as MiniSom does -- ``_weights`` a float64 numpy array
of shape (x, y, input_len), the same ``numpy.random.RandomState`` for initialisation
and shuffling -- so a seeded facade starts from MiniSom's exact weights and trains to
MiniSom's weights up to float64 rounding. What differs is where the work runs:

* ``train`` / ``train_random`` / ``train_batch``: one :func:`genkernels.ops.som_online`
  launch with M=1 over the whole run. The sample order is built exactly as MiniSom's
  ``_build_iteration_indexes`` builds it and the learning-rate and sigma schedules are
  evaluated once into per-step vectors (MiniSom's ``t``, epoch index with
  ``use_epochs``). Steps whose sample is a fixed point run MiniSom's own update between
  launches of the op.
* ``train_batch_offline``: :func:`genkernels.ops.som_node_sums` and
  :func:`genkernels.ops.som_smooth` per iteration, then MiniSom's blend.
* winners of many samples (``win_map``, ``labels_map``, ``activation_response``,
  ``quantization``, ``quantization_error``, ``topographic_error``): one
  :func:`genkernels.ops.som_bmu` call (k=2 for the topographic error).

Neighbourhood positions follow MiniSom: gaussian and mexican_hat measure euclidean
node coordinates (``get_euclidean_coordinates``, hexagonal offsets included), bubble
and triangle the integer grid indices (MiniSom's ``_neigx``/``_neigy``). The kernels'
triangle is 1 at the winner, MiniSom's is sigma^2 there, so the per-step rate given
to the op for triangle is ``eta * sigma^2``.

Where the kernels cannot express MiniSom's arithmetic, the facade runs MiniSom's own
numpy code instead (same results, MiniSom's speed): a callable
``activation_distance``, ``'chebyshev'`` (MiniSom 2.3.6 computes the signed
``max(x - w)``, not ``max |x - w|``), a neighbourhood function replaced by the user,
and a radius that is not a positive finite number.

``backend`` (a constructor argument MiniSom does not have; None means the automatic
choice of :mod:`genkernels.backends`) names the backend of every op the facade runs
(``som_online``, ``som_node_sums``, ``som_bmu``; the facade's tensors are CPU tensors:
"reference", "cpu", or "triton" under TRITON_INTERPRET=1). Where MiniSom's own numpy code
runs instead (above), no op runs; the training methods still check the backend first.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from datetime import timedelta
from warnings import warn

import numpy as np
import torch

from .. import backends, ops
from .._checks import from_numpy

# The topographic error's adjacency threshold on rectangular grids (MiniSom's `t`):
# the 8 surrounding nodes are within sqrt(2) < 1.42.
_RECT_ADJACENT = 1.42
# Progress lines of verbose training: at most this many launches of the online op.
_VERBOSE_CHUNKS = 100
# Steps per som_online launch: bounds the per-step vectors (order, rate, sigma) in memory.
_MAX_LAUNCH_STEPS = 1 << 20
# MiniSom's neighbourhoods that measure grid indices, not euclidean coordinates.
_INDEX_NEIGHBORHOODS = ("bubble", "triangle")
# Elements of one (samples x nodes x features) tile in distortion_measure.
_TILE_ELEMENTS = 1 << 22


def _build_iteration_indexes(data_len, num_iterations, verbose=False, random_generator=None,
                             use_epochs=False):
    """The sample index of every training step, as MiniSom builds it: sequential
    (cyclic) or shuffled with ``random_generator`` (a RandomState); with ``use_epochs``
    one permutation of the data repeated ``num_iterations`` times."""
    if use_epochs:
        iterations_per_epoch = np.arange(data_len)
        if random_generator:
            random_generator.shuffle(iterations_per_epoch)
        iterations = np.tile(iterations_per_epoch, num_iterations)
    else:
        iterations = np.arange(num_iterations) % data_len
        if random_generator:
            random_generator.shuffle(iterations)
    if verbose:
        return _wrap_index__in_verbose(iterations)
    return iterations


class _Progress:
    """MiniSom's verbose progress line on stdout: ``[ i / m ] p% - time left``."""

    def __init__(self, total):
        self.total = total
        self.digits = len(str(total))
        self.beginning = time.time()
        sys.stdout.write('\r [ {s:{d}} / {m} ] {s:3.0f}% - ? it/s'.format(m=total, d=self.digits, s=0))

    def update(self, done):
        """Report ``done`` steps finished (1 <= done <= total)."""
        m, i = self.total, done - 1
        sec_left = ((m - i + 1) * (time.time() - self.beginning)) / (i + 1)
        time_left = str(timedelta(seconds=sec_left))[:7]
        line = '\r [ {i:{d}} / {m} ]'.format(i=done, d=self.digits, m=m)
        line += ' {p:3.0f}%'.format(p=100 * done / m)
        line += ' - {time_left} left '.format(time_left=time_left)
        sys.stdout.write(line)


def _wrap_index__in_verbose(iterations):
    """Yields the values in iterations printing the status on the stdout."""
    progress = _Progress(len(iterations))
    for i, it in enumerate(iterations):
        yield it
        progress.update(i + 1)


def fast_norm(x):
    """Returns norm-2 of a 1-D numpy array."""
    return np.sqrt(np.dot(x, x.T))


def _float_rows(data) -> np.ndarray:
    """data (N, D) as given (list, integer array, ...) -> C-contiguous float64 (N, D)."""
    rows = np.asarray(data, dtype=np.float64)
    if rows.ndim != 2:
        rows = rows.reshape(len(rows), -1)
    return np.ascontiguousarray(rows)


class MiniSom:
    """Self-organizing map with MiniSom 2.3.6's constructor, methods and attributes.

    See the module docstring for what runs on genkernels' kernels. ``_weights`` is a
    settable float64 array (x, y, input_len); assigning an (x, y) array to a map with
    one feature is accepted as (x, y, 1).

    backend (keyword, an addition to MiniSom's arguments): None (auto) or "reference",
    "cpu", "triton" -- the backend of every op the facade runs, kept as ``self.backend``.
    A bad name raises ValueError here; a backend that cannot run raises
    genkernels.backends.BackendUnavailableError when a method first needs it (the training
    methods check it before changing any weight).
    """

    Y_HEX_CONV_FACTOR = (3.0 / 2.0) / np.sqrt(3)

    def __init__(self, x, y, input_len, sigma=1, learning_rate=0.5,
                 decay_function='asymptotic_decay',
                 neighborhood_function='gaussian', topology='rectangular',
                 activation_distance='euclidean', random_seed=None,
                 sigma_decay_function='asymptotic_decay', *, backend=None):
        if backend is not None and backend not in backends.BACKENDS:
            raise ValueError(f"backend must be None or one of {', '.join(backends.BACKENDS)}; got {backend!r}")
        self.backend = backend
        if sigma > np.sqrt(x * x + y * y):
            warn('Warning: sigma might be too high ' +
                 'for the dimension of the map.')

        self._random_generator = np.random.RandomState(random_seed)

        self._learning_rate = learning_rate
        self._sigma = sigma
        self._input_len = input_len
        # random initialization: MiniSom's draw order, so seeded weights are MiniSom's
        weights = self._random_generator.rand(x, y, input_len) * 2 - 1
        weights /= np.linalg.norm(weights, axis=-1, keepdims=True)
        self._weights = weights

        self._activation_map = np.zeros((x, y))
        self._neigx = np.arange(x)
        self._neigy = np.arange(y)  # used to evaluate the neighborhood function

        if topology not in ['hexagonal', 'rectangular']:
            msg = '%s not supported only hexagonal and rectangular available'
            raise ValueError(msg % topology)
        self.topology = topology
        self._xx, self._yy = np.meshgrid(self._neigx, self._neigy)
        self._xx = self._xx.astype(float)
        self._yy = self._yy.astype(float)
        if topology == 'hexagonal':
            self._xx[::-2] -= 0.5
            self._yy *= self.Y_HEX_CONV_FACTOR
            if neighborhood_function in ['triangle']:
                warn('triangle neighborhood function does not ' +
                     'take in account hexagonal topology')

        lr_decay_functions = {
            'inverse_decay_to_zero': self._inverse_decay_to_zero,
            'linear_decay_to_zero': self._linear_decay_to_zero,
            'asymptotic_decay': self._asymptotic_decay}

        if isinstance(decay_function, str):
            if decay_function not in lr_decay_functions:
                msg = '%s not supported. Functions available: %s'
                raise ValueError(msg % (decay_function,
                                        ', '.join(lr_decay_functions.keys())))
            self._learning_rate_decay_function = lr_decay_functions[decay_function]
        elif callable(decay_function):
            self._learning_rate_decay_function = decay_function

        sig_decay_functions = {
            'inverse_decay_to_one': self._inverse_decay_to_one,
            'linear_decay_to_one': self._linear_decay_to_one,
            'asymptotic_decay': self._asymptotic_decay}

        if sigma_decay_function not in sig_decay_functions:
            msg = '%s not supported. Functions available: %s'
            raise ValueError(msg % (sigma_decay_function,
                                    ', '.join(sig_decay_functions.keys())))
        self._sigma_decay_function = sig_decay_functions[sigma_decay_function]

        neig_functions = {'gaussian': self._gaussian,
                          'mexican_hat': self._mexican_hat,
                          'bubble': self._bubble,
                          'triangle': self._triangle}

        if neighborhood_function not in neig_functions:
            msg = '%s not supported. Functions available: %s'
            raise ValueError(msg % (neighborhood_function,
                                    ', '.join(neig_functions.keys())))

        if neighborhood_function in ['triangle', 'bubble'] and (divmod(sigma, 1)[1] != 0
                                                                or sigma < 1):
            warn('sigma should be an integer >=1 when triangle or bubble' +
                 'are used as neighborhood function')

        self.neighborhood = neig_functions[neighborhood_function]

        distance_functions = {'euclidean': self._euclidean_distance,
                              'cosine': self._cosine_distance,
                              'manhattan': self._manhattan_distance,
                              'chebyshev': self._chebyshev_distance}

        if isinstance(activation_distance, str):
            if activation_distance not in distance_functions:
                msg = '%s not supported. Distances available: %s'
                raise ValueError(msg % (activation_distance,
                                        ', '.join(distance_functions.keys())))
            self._activation_distance = distance_functions[activation_distance]
        elif callable(activation_distance):
            self._activation_distance = activation_distance

    # ------------------------------------------------------------------ state
    @property
    def _weights(self) -> np.ndarray:
        return self._weight_array

    @_weights.setter
    def _weights(self, value):
        weights = np.asarray(value, dtype=np.float64)
        if weights.ndim == 2:
            weights = weights[:, :, None]
        if weights.ndim != 3:
            raise ValueError("_weights must have shape (x, y, input_len); got shape "
                             f"{weights.shape}")
        self._weight_array = weights

    def get_weights(self):
        """Returns the weights of the neural network."""
        return self._weights

    def get_euclidean_coordinates(self):
        """Returns the position of the neurons on an euclidean plane that reflects the
        chosen topology in two meshgrids xx and yy. Neuron with map coordinates (1, 4)
        has coordinate (xx[1, 4], yy[1, 4]) in the euclidean plane."""
        return self._xx.T, self._yy.T

    def convert_map_to_euclidean(self, xy):
        """Converts map coordinates into euclidean coordinates that reflects the
        chosen topology."""
        return self._xx.T[xy], self._yy.T[xy]

    # ------------------------------------------------------ activation (numpy)
    def _activate(self, x):
        """Updates matrix activation_map, in this matrix the element i,j is the
        response of the neuron i,j to x."""
        self._activation_map = self._activation_distance(x, self._weights)

    def activate(self, x):
        """Returns the activation map to x."""
        self._activate(x)
        return self._activation_map

    # -------------------------------------------------------- decay functions
    def _inverse_decay_to_zero(self, learning_rate, t, max_iter):
        """Decay function of the learning process that asymptotically approaches zero."""
        C = max_iter / 100.0
        return learning_rate * C / (C + t)

    def _linear_decay_to_zero(self, learning_rate, t, max_iter):
        """Decay function of the learning process that linearly decreases to zero."""
        return learning_rate * (1 - t / max_iter)

    def _inverse_decay_to_one(self, sigma, t, max_iter):
        """Decay function of sigma that asymptotically approaches one."""
        C = (sigma - 1) / max_iter
        return sigma / (1 + (t * C))

    def _linear_decay_to_one(self, sigma, t, max_iter):
        """Decay function of sigma that linearly decreases to one."""
        return sigma + (t * (1 - sigma) / max_iter)

    def _asymptotic_decay(self, dynamic_parameter, t, max_iter):
        """Decay function of the learning process and sigma that decays these values
        asymptotically to 1/3 of their original values."""
        return dynamic_parameter / (1 + t / (max_iter / 2))

    # --------------------------------------------------- neighborhood functions
    def _gaussian(self, c, sigma):
        """Returns a Gaussian centered in c."""
        d = 2 * sigma * sigma
        ax = np.exp(-np.power(self._xx - self._xx.T[c], 2) / d)
        ay = np.exp(-np.power(self._yy - self._yy.T[c], 2) / d)
        return (ax * ay).T  # the external product gives a matrix

    def _mexican_hat(self, c, sigma):
        """Mexican hat centered in c."""
        p = np.power(self._xx - self._xx.T[c], 2) + np.power(self._yy - self._yy.T[c], 2)
        d = 2 * sigma * sigma
        return (np.exp(-p / d) * (1 - 2 / d * p)).T

    def _bubble(self, c, sigma):
        """Constant function centered in c with spread sigma."""
        ax = np.logical_and(self._neigx > c[0] - sigma, self._neigx < c[0] + sigma)
        ay = np.logical_and(self._neigy > c[1] - sigma, self._neigy < c[1] + sigma)
        return np.outer(ax, ay) * 1.

    def _triangle(self, c, sigma):
        """Triangular function centered in c with spread sigma."""
        triangle_x = (-abs(c[0] - self._neigx)) + sigma
        triangle_y = (-abs(c[1] - self._neigy)) + sigma
        triangle_x[triangle_x < 0] = 0.
        triangle_y[triangle_y < 0] = 0.
        return np.outer(triangle_x, triangle_y)

    # ------------------------------------------------------ distance functions
    def _cosine_distance(self, x, w):
        num = (w * x).sum(axis=2)
        denum = np.multiply(np.linalg.norm(w, axis=2), np.linalg.norm(x))
        return 1 - num / (denum + 1e-8)

    def _euclidean_distance(self, x, w):
        return np.linalg.norm(np.subtract(x, w), axis=-1)

    def _manhattan_distance(self, x, w):
        return np.linalg.norm(np.subtract(x, w), ord=1, axis=-1)

    def _chebyshev_distance(self, x, w):
        # MiniSom 2.3.6's definition, kept as is: the signed max(x - w).
        return np.max(np.subtract(x, w), axis=-1)

    # ------------------------------------------------------------------ checks
    def _check_backend(self, op: str) -> None:
        """An explicit ``backend`` must run ``op`` on the facade's CPU tensors: raises
        BackendUnavailableError (naming what is missing) before a training method starts."""
        if self.backend is not None:
            backends.resolve(op, torch.device("cpu"), self.backend)

    def _check_iteration_number(self, num_iteration):
        if num_iteration < 1:
            raise ValueError('num_iteration must be > 1')

    def _check_input_len(self, data):
        """Checks that the data in input is of the correct shape."""
        data_len = len(data[0])
        if self._input_len != data_len:
            msg = 'Received %d features, expected %d.' % (data_len, self._input_len)
            raise ValueError(msg)

    def _check_fixed_points(self, fixed_points, data):
        for k in fixed_points.keys():
            if not isinstance(k, int):
                raise TypeError('fixed points indexes must be integers.')
            if k >= len(data) or k < 0:
                raise ValueError('an index of a fixed point cannot be grater than '
                                 'len(data) or less than 0.')
            if fixed_points[k][0] >= self._weights.shape[0] or \
               fixed_points[k][1] >= self._weights.shape[1]:
                raise ValueError('coordinates for fixed point are out of boundaries.')
            if fixed_points[k][0] < 0 or fixed_points[k][1] < 0:
                raise ValueError('coordinates cannot be negative.')

    # --------------------------------------------- what the kernels can run
    def _builtin(self, function, table):
        """table's name for ``function`` when it is one of this object's own
        MiniSom methods (not replaced, not overridden), else None."""
        if getattr(function, "__self__", None) is not self:
            return None
        return table.get(getattr(function, "__func__", None))

    def _kernel_neighborhood(self):
        """The kernels' name of self.neighborhood, or None for a user's function."""
        return self._builtin(self.neighborhood, _NEIGHBORHOODS)

    def _kernel_metric(self):
        """The kernels' name of the activation distance, or None where MiniSom's
        arithmetic differs (a callable, the signed 'chebyshev')."""
        return self._builtin(self._activation_distance, _METRICS)

    def _flat_weights(self) -> np.ndarray:
        """(K, D) C-contiguous float64 copy or view of the weights, node i*y + j."""
        weights = self._weights
        return np.ascontiguousarray(weights.reshape(-1, weights.shape[2]))

    def _node_positions(self, grid_indices: bool) -> np.ndarray:
        """(K, 2) float64 node positions, node i*y + j: the grid indices (i, j) that
        MiniSom's bubble and triangle measure, or the euclidean coordinates of
        get_euclidean_coordinates (hexagonal offsets included) that gaussian,
        mexican_hat and the hexagonal topographic error measure."""
        if grid_indices:
            first, second = np.meshgrid(self._neigx, self._neigy, indexing="ij")
        else:
            first, second = self.get_euclidean_coordinates()
        return np.ascontiguousarray(np.stack([first.ravel(), second.ravel()], axis=1),
                                    dtype=np.float64)

    def _schedule(self, decay_function, initial, decay_index, max_iter) -> np.ndarray:
        """decay_function(initial, t, max_iter) at every step's t (decay_index, int64)."""
        if self._builtin(decay_function, _DECAY_FUNCTIONS):
            # elementwise on the int64 vector: the same IEEE operations as per scalar
            values = np.asarray(decay_function(initial, decay_index, max_iter), dtype=np.float64)
            return np.ascontiguousarray(np.broadcast_to(values, decay_index.shape))
        unique, inverse = np.unique(decay_index, return_inverse=True)
        values = np.array([decay_function(initial, int(t), max_iter) for t in unique],
                          dtype=np.float64)
        return np.ascontiguousarray(values[inverse.reshape(-1)])

    def _winner_indices(self, rows: np.ndarray) -> np.ndarray:
        """(N,) int64 flat index i*y + j of each row's winner under the activation
        distance (lowest index on ties, as argmin)."""
        metric = self._kernel_metric()
        if metric is not None:
            indices, _ = ops.som_bmu(from_numpy(rows), torch.from_numpy(self._flat_weights()),
                                     1, metric, backend=self.backend)
            return indices[:, 0].numpy()
        return np.array([self._activation_distance(x, self._weights).argmin() for x in rows],
                        dtype=np.int64).reshape(-1)

    def _euclidean_bmus(self, rows: np.ndarray, k: int) -> np.ndarray:
        """(N, k) int64 flat indices of the k nearest nodes in euclidean distance, as
        MiniSom's quantization and topographic error rank them."""
        indices, _ = ops.som_bmu(from_numpy(rows), torch.from_numpy(self._flat_weights()),
                                 k, "euclidean", backend=self.backend)
        return indices.numpy()

    # ------------------------------------------------------------------ winner
    def winner(self, x):
        """Computes the coordinates of the winning neuron for the sample x."""
        self._activate(x)
        return np.unravel_index(self._activation_map.argmin(), self._activation_map.shape)

    def update(self, x, win, t, max_iteration):
        """Updates the weights of the neurons (one step of MiniSom's rule).

        x: current pattern; win: position of the winning neuron; t: decay index of
        sigma and the learning rate; max_iteration: the run's num_iteration.
        """
        eta = self._learning_rate_decay_function(self._learning_rate, t, max_iteration)
        sig = self._sigma_decay_function(self._sigma, t, max_iteration)
        g = self.neighborhood(win, sig) * eta
        self._weights += np.einsum('ij, ijk->ijk', g, x - self._weights)

    # ---------------------------------------------------------- initialisation
    def random_weights_init(self, data):
        """Initializes the weights of the SOM picking random samples from data."""
        self._check_input_len(data)
        for position in np.ndindex(*self._weights.shape[:2]):
            rand_i = self._random_generator.randint(len(data))
            self._weights[position] = data[rand_i]

    def pca_weights_init(self, data):
        """Initializes the weights to span the first two principal components."""
        if self._input_len == 1:
            msg = 'The data needs at least 2 features for pca initialization'
            raise ValueError(msg)
        self._check_input_len(data)
        if len(self._neigx) == 1 or len(self._neigy) == 1:
            msg = 'PCA initialization inappropriate:' + \
                  'One of the dimensions of the map is 1.'
            warn(msg)
        cov_mat = np.cov(data, rowvar=False)
        eigvals, eigvecs = np.linalg.eigh(cov_mat)
        order = np.argsort(eigvals)[::-1]
        pc1 = eigvecs[:, order[0]]
        pc2 = eigvecs[:, order[1]]
        data_mean = np.mean(data, axis=0)
        c1 = np.linspace(-1, 1, len(self._neigx))[:, None, None]
        c2 = np.linspace(-1, 1, len(self._neigy))[None, :, None]
        # the plane spanned by the first two principal components, at the data mean
        self._weights[:len(self._neigx), :len(self._neigy)] = data_mean + c1 * pc1 + c2 * pc2

    # ---------------------------------------------------------------- training
    def train(self, data, num_iteration, random_order=False, verbose=False,
              use_epochs=False, fixed_points=None):
        """Trains the SOM with MiniSom's sequential rule.

        data: (N, input_len) array or list; num_iteration: steps, or epochs with
        use_epochs (then N * num_iteration steps with the decay index constant
        within an epoch); random_order: shuffle with the SOM's RandomState;
        fixed_points: {sample index: (i, j)} forcing that sample's winner.
        """
        self._check_iteration_number(num_iteration)
        self._check_input_len(data)
        self._check_backend("som_online")
        random_generator = self._random_generator if random_order else None
        iterations = np.asarray(_build_iteration_indexes(len(data), num_iteration, False,
                                                         random_generator, use_epochs),
                                dtype=np.int64)
        if fixed_points:
            self._check_fixed_points(fixed_points, data)
        else:
            fixed_points = {}
        rows = _float_rows(data)
        total = len(iterations)
        progress = _Progress(total) if verbose else None
        chunk = max(1, -(-total // _VERBOSE_CHUNKS)) if verbose else _MAX_LAUNCH_STEPS
        for start in range(0, total, chunk):
            steps = np.arange(start, min(total, start + chunk))
            # MiniSom's t: the step, or int(step / N) with use_epochs
            decay_index = (steps / len(data)).astype(np.int64) if use_epochs else steps
            self._train_steps(rows, iterations[steps], decay_index, num_iteration, fixed_points)
            if progress is not None:
                progress.update(int(steps[-1]) + 1)
        if verbose:
            print('\n quantization error:', self.quantization_error(data))

    def _train_steps(self, rows, samples, decay_index, num_iteration, fixed_points):
        """One stretch of a run: som_online launches between the steps whose sample is
        a fixed point (those take MiniSom's update with the forced winner); MiniSom's
        own loop where the kernels cannot reproduce its arithmetic."""
        eta = self._schedule(self._learning_rate_decay_function, self._learning_rate,
                             decay_index, num_iteration)
        sig = self._schedule(self._sigma_decay_function, self._sigma, decay_index, num_iteration)
        kind, metric = self._kernel_neighborhood(), self._kernel_metric()
        if kind is None or metric is None or not (np.isfinite(eta).all() and np.isfinite(sig).all()
                                                  and (sig > 0).all()):
            for sample, t in zip(samples, decay_index):
                self.update(rows[sample], fixed_points.get(sample, self.winner(rows[sample])),
                            int(t), num_iteration)
            return
        # the kernels' triangle is 1 at the winner, MiniSom's sigma^2
        rate = eta * sig * sig if kind == "triangle" else eta
        positions = torch.from_numpy(self._node_positions(grid_indices=kind in _INDEX_NEIGHBORHOODS))
        is_fixed = np.isin(samples, np.fromiter(fixed_points, dtype=np.int64, count=len(fixed_points)))
        fixed_steps = np.flatnonzero(is_fixed)
        start = 0
        for stop in (*fixed_steps, len(samples)):
            if stop > start:
                step = slice(start, stop)
                trained = ops.som_online(
                    torch.from_numpy(self._flat_weights())[None], from_numpy(rows),
                    from_numpy(samples[step])[None], from_numpy(rate[step])[None],
                    from_numpy(sig[step])[None], positions, neighborhood=kind, metric=metric,
                    backend=self.backend)
                self._weights[...] = trained[0].numpy().reshape(self._weights.shape)
            if stop < len(samples):
                sample = int(samples[stop])
                self.update(rows[sample], fixed_points[sample], int(decay_index[stop]), num_iteration)
            start = stop + 1

    def train_random(self, data, num_iteration, verbose=False):
        """Trains the SOM picking samples at random from data."""
        self.train(data, num_iteration, random_order=True, verbose=verbose)

    def train_batch(self, data, num_iteration, verbose=False):
        """Trains the SOM using all the vectors in data sequentially."""
        self.train(data, num_iteration, random_order=False, verbose=verbose)

    def train_batch_offline(self, data, num_iteration, verbose=False):
        """Kohonen's batch rule (Essentials of the Self-Organizing Map, 2013), once per
        iteration over all of data: new = (H S) / (H n) from the winners' sums S and
        counts n, then w = (1 - lr) w + lr new on the nodes with H n > 0."""
        self._check_iteration_number(num_iteration)
        self._check_input_len(data)
        self._check_backend("som_node_sums")
        iterations = range(num_iteration)
        if verbose:
            iterations = _wrap_index__in_verbose(iterations)
        rows = _float_rows(data)
        kind = self._kernel_neighborhood()
        for iteration in iterations:
            learning_rate = self._learning_rate_decay_function(self._learning_rate, iteration,
                                                               num_iteration)
            sigma = self._sigma_decay_function(self._sigma, iteration, num_iteration)
            if kind is not None and np.isfinite(sigma) and sigma > 0:
                new_weights, mask = self._batch_targets_on_kernels(rows, kind, float(sigma))
            else:
                new_weights, mask = self._batch_targets_numpy(rows, sigma)
            self._weights[mask] = (1 - learning_rate) * self._weights[mask] + \
                learning_rate * new_weights[mask]
        if verbose:
            print(f'Quantization Error: {self.quantization_error(data):.4f}')

    def _batch_targets_on_kernels(self, rows, kind, sigma):
        """The batch rule's targets (x, y, D) and the mask (x, y) of nodes with a
        positive smoothed count, from som_node_sums and som_smooth."""
        shape = self._weights.shape
        flat = self._flat_weights()
        n_nodes = flat.shape[0]
        metric = self._kernel_metric()
        if metric is not None:
            sums, counts, _ = ops.som_node_sums(from_numpy(rows), torch.from_numpy(flat), metric,
                                                backend=self.backend)
        else:
            winners = self._winner_indices(rows)
            counts = torch.from_numpy(np.bincount(winners, minlength=n_nodes).astype(np.float64))
            sums_np = np.zeros_like(flat)
            np.add.at(sums_np, winners, rows)
            sums = torch.from_numpy(sums_np)
        # The counts ride along as one more feature whose current "weight" is 0: its
        # smoothed value is (H n) / (H n) = 1 where H n > 0 and stays 0 elsewhere, which
        # gives MiniSom's mask from the op's own denominator.
        values = torch.cat([sums, counts[:, None]], dim=1)
        current = torch.cat([torch.from_numpy(flat), torch.zeros((n_nodes, 1), dtype=torch.float64)], dim=1)
        grid_indices = kind in _INDEX_NEIGHBORHOODS
        positions = torch.from_numpy(self._node_positions(grid_indices))
        # positions (i, j) on a full grid: the op's separable path (one product per axis)
        on_grid = (grid_indices or self.topology == "rectangular") and kind != "mexican_hat"
        smoothed = ops.som_smooth(values, counts, current, positions, (0.0, 0.0), kind, sigma,
                                  (shape[0], shape[1]) if on_grid else None).numpy()
        targets = smoothed[:, :shape[2]].reshape(shape)
        mask = (smoothed[:, shape[2]] > 0.5).reshape(shape[:2])
        return targets, mask

    def _batch_targets_numpy(self, rows, sigma):
        """MiniSom's own accumulation of the batch rule, sample by sample."""
        numerator = np.zeros_like(self._weights)
        denominator = np.zeros(self._weights.shape[:2])
        for sample in rows:
            g = self.neighborhood(self.winner(sample), sigma)
            numerator += g[:, :, np.newaxis] * sample
            denominator += g
        safe = np.where(denominator[:, :, np.newaxis] > 0, denominator[:, :, np.newaxis], 1.0)
        return numerator / safe, denominator > 0

    # ----------------------------------------------------------------- metrics
    def distance_map(self, scaling='sum'):
        """Returns the distance map (U-matrix) of the weights, normalised to max 1:
        each cell the sum ('sum') or mean ('mean') of the euclidean distances between
        a neuron and its neighbours (8 on rectangular grids, 6 on hexagonal ones)."""
        if scaling not in ['sum', 'mean']:
            raise ValueError(f'scaling should be either "sum" or "mean" ('
                             f'"{scaling}" not valid)')
        weights = self._weights
        n_x, n_y = weights.shape[:2]
        um = np.full((n_x, n_y, 8), np.nan)  # 2 spots more for hexagonal topology
        ii = [[0, -1, -1, -1, 0, 1, 1, 1]] * 2
        jj = [[-1, -1, 0, 1, 1, 1, 0, -1]] * 2
        if self.topology == 'hexagonal':
            ii = [[1, 1, 1, 0, -1, 0], [0, 1, 0, -1, -1, -1]]
            jj = [[1, 0, -1, -1, 0, 1], [1, 0, -1, -1, 0, 1]]
        xs, ys = np.arange(n_x), np.arange(n_y)
        for even in (False, True):  # the offsets of column y depend on y % 2 == 0
            for k, (i, j) in enumerate(zip(ii[even], jj[even])):
                x_ok = xs[(xs + i >= 0) & (xs + i < n_x)]
                y_ok = ys[((ys % 2 == 0) == even) & (ys + j >= 0) & (ys + j < n_y)]
                if x_ok.size == 0 or y_ok.size == 0:
                    continue
                diff = weights[np.ix_(x_ok, y_ok)] - weights[np.ix_(x_ok + i, y_ok + j)]
                um[np.ix_(x_ok, y_ok, [k])] = np.sqrt(np.einsum('...d,...d->...', diff, diff))[..., None]
        if scaling == 'mean':
            um = np.nanmean(um, axis=2)
        if scaling == 'sum':
            um = np.nansum(um, axis=2)
        return um / um.max()

    def activation_response(self, data):
        """Returns a matrix where the element i,j is the number of times that the
        neuron i,j have been winner."""
        self._check_input_len(data)
        shape = self._weights.shape[:2]
        winners = self._winner_indices(_float_rows(data))
        return np.bincount(winners, minlength=shape[0] * shape[1]).reshape(shape).astype(float)

    def _distance_from_weights(self, data):
        """Returns a matrix d where d[i,j] is the euclidean distance between data[i]
        and the j-th weight."""
        input_data = np.array(data)
        weights_flat = self._weights.reshape(-1, self._weights.shape[2])
        input_data_sq = np.power(input_data, 2).sum(axis=1, keepdims=True)
        weights_flat_sq = np.power(weights_flat, 2).sum(axis=1, keepdims=True)
        cross_term = np.dot(input_data, weights_flat.T)
        # clipping at 0: the expansion subtracts nearly equal terms
        return np.sqrt(np.maximum(0, -2 * cross_term + input_data_sq + weights_flat_sq.T))

    def quantization(self, data):
        """Assigns a code book (weights vector of the winning neuron) to each sample
        in data: (N, input_len)."""
        self._check_input_len(data)
        winners = self._euclidean_bmus(_float_rows(data), 1)[:, 0]
        return self._flat_weights()[winners]

    def quantization_error(self, data):
        """Returns the quantization error computed as the average distance between
        each input sample and its best matching unit."""
        self._check_input_len(data)
        return np.linalg.norm(_float_rows(data) - self.quantization(data), axis=1).mean()

    def _n_nodes(self) -> int:
        return int(np.prod(self._weights.shape[:2]))

    def distortion_measure(self, data):
        """Returns the distortion measure computed as
           sum_i, sum_c (neighborhood(c, sigma) * || d_i - w_c ||^2"""
        rows = _float_rows(data)
        weights = self._weights
        winners = self._winner_indices(rows)
        tile = max(1, _TILE_ELEMENTS // max(1, weights.size))
        distortion = 0
        for node in np.unique(winners):
            h = self.neighborhood(np.unravel_index(node, weights.shape[:2]), self._sigma)
            members = rows[winners == node]
            for start in range(0, len(members), tile):
                block = members[start:start + tile, None, None, :]
                distortion += np.multiply(h, np.linalg.norm(block - weights, axis=3)).sum()
        return distortion

    def topographic_error(self, data):
        """Returns the topographic error: the fraction of samples whose best and
        second-best matching units are not adjacent (rectangular: grid distance above
        1.42; hexagonal: euclidean distance not 1)."""
        self._check_input_len(data)
        if self._n_nodes() == 1:
            warn('The topographic error is not defined for a 1-by-1 map.')
            return np.nan
        if self.topology == 'hexagonal':
            return self._topographic_error_hexagonal(data)
        return self._topographic_error_rectangular(data)

    def _topographic_error_hexagonal(self, data):
        """Return the topographic error for hexagonal grid: best and second-best
        matching units not at euclidean distance 1."""
        best_two = self._euclidean_bmus(_float_rows(data), 2)
        positions = self._node_positions(grid_indices=False)
        distance = np.linalg.norm(positions[best_two[:, 0]] - positions[best_two[:, 1]], axis=1)
        return 1 - np.mean(np.isclose(1, distance))

    def _topographic_error_rectangular(self, data):
        """Return the topographic error for rectangular grid: best and second-best
        matching units farther apart than 1.42 on the grid."""
        best_two = self._euclidean_bmus(_float_rows(data), 2)
        b2mu_x, b2mu_y = np.unravel_index(best_two, self._weights.shape[:2])
        dxdy = np.hstack([np.diff(b2mu_x), np.diff(b2mu_y)])
        distance = np.linalg.norm(dxdy, axis=1)
        return (distance > _RECT_ADJACENT).mean()

    def _get_euclidean_coordinates_from_index(self, index):
        """Returns the Euclidean coordinated of a neuron using its index as the input"""
        if index < 0:
            return (-1, -1)
        y = self._weights.shape[1]
        return self.convert_map_to_euclidean((int(index / y), index % y))

    # ------------------------------------------------------------------- maps
    def win_map(self, data, return_indices=False):
        """Returns a dictionary wm where wm[(i,j)] is a list with all the patterns
        (or their indices with return_indices=True) that have been mapped to (i,j)."""
        self._check_input_len(data)
        winners = self._winner_indices(_float_rows(data))
        positions = zip(*np.unravel_index(winners, self._weights.shape[:2]))
        winmap = defaultdict(list)
        for i, (x, position) in enumerate(zip(data, positions)):
            winmap[position].append(i if return_indices else x)
        return winmap

    def labels_map(self, data, labels):
        """Returns a dictionary wm where wm[(i,j)] is a Counter of the labels of the
        samples that have been mapped in position i,j."""
        self._check_input_len(data)
        if not len(data) == len(labels):
            raise ValueError('data and labels must have the same length.')
        winners = self._winner_indices(_float_rows(data))
        positions = zip(*np.unravel_index(winners, self._weights.shape[:2]))
        winmap = defaultdict(list)
        for position, label in zip(positions, labels):
            winmap[position].append(label)
        for position in winmap:
            winmap[position] = Counter(winmap[position])
        return winmap


# MiniSom's own methods that the kernels reproduce, by the kernels' names.
_NEIGHBORHOODS = {MiniSom._gaussian: "gaussian", MiniSom._mexican_hat: "mexican_hat",
                  MiniSom._bubble: "bubble", MiniSom._triangle: "triangle"}
_METRICS = {MiniSom._euclidean_distance: "euclidean", MiniSom._cosine_distance: "cosine",
            MiniSom._manhattan_distance: "manhattan"}
_DECAY_FUNCTIONS = {f: f.__name__ for f in (MiniSom._inverse_decay_to_zero, MiniSom._linear_decay_to_zero,
                                            MiniSom._inverse_decay_to_one, MiniSom._linear_decay_to_one,
                                            MiniSom._asymptotic_decay)}
