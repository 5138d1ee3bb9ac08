"""The self-organizing map model, ``genkernels.SOM``."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from .. import backends
from .. import checkpoint as ckpt
from .. import distributed as gkdist
from .._checks import all_finite, check_choice, check_fits_dtype, check_int, check_positive
from ..model import DivergedError, Model, Progress
from . import ops, reference, schedules
from .lattice import TOPOLOGIES, Lattice
from .reference import METRICS, NEIGHBORHOODS, RULES, acc_dtype

MODES = ("batch", "online", "minibatch")
INITS = ("pca", "random", "uniform")
SAMPLINGS = ("permutation", "sequential", "replacement")
MISSING = ("raise", "ignore")
# Rows per chunk when streaming numpy arrays, memmaps and big tensors in batch mode.
CHUNK_ROWS = 1 << 16
# Distances per row tile of the winner-takes-most batch sums (the reference's tile size).
WTM_TILE_ELEMENTS = 1 << 22
# what ran on the reference by automatic choice and has been said (once per process)
_REFERENCE_ONLY_WARNED: set[str] = set()


def _finite_positive(name: str, value) -> float:
    """A rate value: a finite number > 0 (inf passes ``> 0`` but destroys the codebook)."""
    v = check_positive(name, value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return v


def _rate(name: str, value, default_end: Callable[[float], float], n_maps: int):
    """A rate argument -> callable, or (start (M,), end (M,)) float64 tensors.

    One reading whatever n_maps is: a number; a tuple = one (start, end) schedule for
    every map; a list, 1-D array or tensor = per-map values (length n_maps), each
    decaying to its default end; an (n_maps, 2) array / list of pairs = per-map
    (start, end); a callable of the step. Anything else -- e.g. a list of 2 values
    with n_maps != 2, once read as (start, end) -- is rejected.
    """
    if callable(value):
        return value
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = _finite_positive(name, value)
        return torch.full((n_maps,), v, dtype=torch.float64), torch.full((n_maps,), default_end(v),
                                                                          dtype=torch.float64)
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{name} must be a (start, end) tuple when given as a tuple; got {len(value)} "
                             f"values (per-map values go in a list or a 1-D tensor of n_maps={n_maps})")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"{name} must be a (start, end) tuple of numbers; got {value!r}")
        start, end = (_finite_positive(name, v) for v in value)
        return (torch.full((n_maps,), start, dtype=torch.float64),
                torch.full((n_maps,), end, dtype=torch.float64))
    if not isinstance(value, (list, np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a number, a (start, end) tuple, a list or 1-D tensor of per-map "
                        f"values or a callable of the step; got {type(value).__name__}")
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number, a (start, end) tuple, a list or 1-D tensor of per-map "
                        f"values or a callable of the step; got {type(value).__name__}") from None
    if t.dim() == 1 and t.shape[0] == n_maps:
        start, end = t, torch.tensor([default_end(float(v)) for v in t], dtype=torch.float64)
    elif t.dim() == 2 and tuple(t.shape) == (n_maps, 2):
        start, end = t[:, 0], t[:, 1]
    elif t.dim() == 1:
        raise ValueError(f"{name} must be a list / 1-D tensor of n_maps={n_maps} per-map values; got "
                         f"{t.shape[0]} values" + (" (for a (start, end) schedule pass a tuple)"
                                                   if t.shape[0] == 2 else ""))
    else:
        raise ValueError(f"{name} must be a number, a (start, end) tuple, ({n_maps},) per-map values "
                         f"or ({n_maps}, 2) per-map (start, end) pairs; got shape {tuple(t.shape)}")
    if not bool((start > 0).all() and (end > 0).all()):
        raise ValueError(f"{name} must be > 0; got {t.tolist()}")
    if not bool(torch.isfinite(start).all() and torch.isfinite(end).all()):
        raise ValueError(f"{name} must be finite; got {t.tolist()}")
    return start.clone(), end.clone()


class SOMDivergedError(FloatingPointError, DivergedError):
    """Training left the codebook non-finite (NaN or Inf): the model keeps the codebook of
    its last finite epoch and nothing of the diverged epoch is saved. A FloatingPointError
    and a genkernels.model.DivergedError (what every model's fit raises when it diverges)."""


class SOM(Model):
    """A self-organizing map (or ``n_maps`` independent ones trained in one launch).

    Args:
        grid: ``(rows, cols)`` or ``(n,)`` for a 1-D map; nodes are numbered row-major.
        n_features: D, the dimension of the data.
        n_maps: M independent maps (a hyperparameter sweep or an ensemble): weights
            are then (M, K, D) and sigma / learning_rate may be per-map vectors.
        topology: "rectangular" or "hexagonal" (adjacent nodes exactly at distance 1).
        periodic: wrap the lattice into a torus.
        neighborhood: "gaussian", "bubble", "mexican_hat", "triangle" or a callable
            ``h(d0, d1, sigma)`` of the per-axis lattice offsets (runs on the reference
            backend; the built-ins run in the kernels).
        sigma: neighbourhood radius: None (max(grid)/2 down to 1), a number (down to
            1), a ``(start, end)`` tuple, per-map values, or a callable of the step.
        learning_rate: a number (down to 2% of it: 0.5 -> 0.01), a ``(start, end)``
            tuple, per-map values, or a callable of the step. Used by the online and
            mini-batch modes (the batch rule has no learning rate).

            Both read the same way whatever ``n_maps`` is: a tuple is always one
            (start, end) schedule shared by every map; per-map values are a list, a
            1-D array or a 1-D tensor of exactly ``n_maps`` starts (each decaying to
            its default end), or ``(n_maps, 2)`` per-map (start, end) pairs. A list
            of another length is rejected (a list of 2 with ``n_maps != 2`` is not
            read as (start, end)). Values must be finite and > 0; a callable's values
            are checked at every use (the error names the step and epoch).
        schedule: how sigma and learning_rate decay over the whole fit: "constant",
            "linear", "exponential", "inverse" or "asymptotic".
        init: "pca" (the plane of the first two principal components), "random"
            (samples of the data) or "uniform" (U(-1/sqrt(D), 1/sqrt(D))).
        metric: "euclidean", "cosine", "manhattan" or "chebyshev".
        rule: "som" (lattice neighbourhood), "wta" (winner takes all: k-means) or
            "wtm" (winner takes most: a kernel of the data-space distance).
        missing: "raise" (NaN/Inf input is an error) or "ignore" (NaN features are
            skipped by the NaN-aware kernels; batch mode and queries).
        seed: seed of initialisation and sample order: an int in [0, 2**64) (not a bool
            or a float); None draws one from torch's RNG.
    """

    kind = "SOM"
    _dtype_source = "codebook"

    def __init__(self, grid, n_features: int, *, n_maps: int = 1, topology: str = "rectangular",
                 periodic: bool = False, neighborhood: str | Callable = "gaussian", sigma=None,
                 learning_rate=0.5, schedule: str | Callable = "exponential", init: str = "pca",
                 metric: str = "euclidean", rule: str = "som", missing: str = "raise",
                 seed: int | None = None, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if isinstance(grid, numbers.Integral):
            grid = (grid,)
        if not isinstance(grid, (tuple, list)) or len(grid) not in (1, 2):
            raise ValueError(f"grid must be (rows, cols) or (n,); got {grid!r}")
        for g in grid:
            check_int("grid", g, 1)
        rows, cols = (1, int(grid[0])) if len(grid) == 1 else (int(grid[0]), int(grid[1]))
        self.grid = tuple(int(g) for g in grid)
        self.n_features = check_int("n_features", n_features, 1)
        self.n_maps = check_int("n_maps", n_maps, 1)
        self.topology = check_choice("topology", topology, TOPOLOGIES)
        if periodic and topology == "hexagonal" and cols % 2:
            raise ValueError(f"grid: a periodic hexagonal lattice needs an even number of columns; got {cols}")
        self.lattice = Lattice(rows, cols, topology, bool(periodic))
        if not callable(neighborhood):
            check_choice("neighborhood", neighborhood, NEIGHBORHOODS)
        self.neighborhood = neighborhood
        self.metric = check_choice("metric", metric, METRICS)
        self.rule = check_choice("rule", rule, RULES)
        if rule == "wtm" and neighborhood == "mexican_hat":
            raise ValueError("rule='wtm' needs a non-increasing kernel; neighborhood='mexican_hat' is not")
        self.init = check_choice("init", init, INITS)
        self.missing = check_choice("missing", missing, MISSING)
        if not callable(schedule):
            check_choice("schedule", schedule, schedules.SCHEDULES)
        self.schedule = schedule
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"dtype must be a floating-point torch dtype; got {dtype}")
        self.sigma_spec = sigma
        self.learning_rate_spec = learning_rate
        self._sigma = _rate("sigma", max(max(rows, cols) / 2.0, 1.0) if sigma is None else sigma,
                            lambda v: min(1.0, v), self.n_maps)
        self._learning_rate = _rate("learning_rate", learning_rate, lambda v: 0.02 * v, self.n_maps)
        self._init_stream(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        k_nodes = rows * cols
        self.register_buffer("codebook", torch.zeros((self.n_maps, k_nodes, self.n_features),
                                                     dtype=dtype, device=device))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.int64, device=device))
        self.node_labels: list | None = None
        self.history: list[dict] = []
        # the arguments of the last fit (stored in checkpoints: resume must match them)
        self._fit_args: dict | None = None

    # ------------------------------------------------------------------ properties
    @property
    def weights(self) -> torch.Tensor:
        """(K, D) codebook, or (M, K, D) with n_maps > 1.

        Assigning sets the codebook (and the map counts as initialised): a finite
        floating-point tensor of exactly this shape on the model's device, or a
        floating-point numpy array of this shape (copied to the model's device); any
        float dtype, converted to the model's. Anything else raises a TypeError /
        ValueError naming ``weights`` (no reshaping, no moving between devices)."""
        return self.codebook[0] if self.n_maps == 1 else self.codebook

    @weights.setter
    def weights(self, value) -> None:
        shape = tuple(self.weights.shape)
        layout = "(nodes, features)" if self.n_maps == 1 else "(n_maps, nodes, features)"
        if isinstance(value, np.ndarray):
            if not np.issubdtype(value.dtype, np.floating):
                raise TypeError(f"weights must hold floating-point values; got numpy dtype {value.dtype}")
            value = torch.from_numpy(np.array(value)).to(self.device)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"weights must be a floating-point torch.Tensor or numpy array of shape {shape} "
                            f"{layout}; got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"weights must be a floating-point tensor; got dtype {value.dtype}")
        if tuple(value.shape) != shape:
            raise ValueError(f"weights must have shape {shape} {layout}; got {tuple(value.shape)}")
        if value.device != self.device:
            raise ValueError(f"weights is on {value.device} but the model is on {self.device}; move it "
                             "with .to(model.device)")
        value = value.detach()
        if not bool(torch.isfinite(value).all()):
            raise ValueError("weights holds NaN or Inf; a codebook must be finite")
        converted = value.to(self.dtype)
        if not bool(torch.isfinite(converted).all()):
            raise ValueError(f"weights holds values beyond the range of the model's dtype {self.dtype}")
        self.codebook.copy_(converted.reshape(self.codebook.shape))
        self.initialized.fill_(True)

    @property
    def n_nodes(self) -> int:
        return self.lattice.n_nodes

    def coords(self) -> torch.Tensor:
        """(K, 2) node positions on the lattice (see genkernels.som.lattice)."""
        return self.lattice.coords(acc_dtype(self.dtype), self.device)

    # ------------------------------------------------------------------- input
    def _as_tensor(self, x, name: str = "x", allow_nan: bool | None = None) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            if not np.issubdtype(x.dtype, np.floating):
                raise TypeError(f"{name} must hold floating-point values; got numpy dtype {x.dtype}")
            x = torch.from_numpy(np.array(x, copy=not x.flags.writeable or not x.flags.c_contiguous))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or a numpy array; got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
        if x.dim() == 1 and x.shape[0] == self.n_features:
            x = x[None, :]
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, {self.n_features}); got shape {tuple(x.shape)}")
        if x.shape[1] != self.n_features:
            raise ValueError(f"{name} has {x.shape[1]} features but the map has {self.n_features}")
        x = x.detach()
        if not torch.compiler.is_compiling() and x.numel() and \
                torch.finfo(x.dtype).max > torch.finfo(self.dtype).max:
            # finite float64 data beyond the map's float32 range: say so, not "NaN or Inf"
            finite = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            check_fits_dtype(name, *(float(t) for t in torch.aminmax(finite)), self.dtype)
        x = x.to(device=self.device, dtype=self.dtype)
        allow_nan = self.missing == "ignore" if allow_nan is None else allow_nan
        # the common case, finite data, costs one sum (all_finite); only data holding NaN or
        # Inf (or missing='ignore', whose NaN fail the sum) take the pass that finds the row
        if not torch.compiler.is_compiling() and x.numel() and (allow_nan or not all_finite(x)):
            bad = torch.isinf(x) if allow_nan else ~torch.isfinite(x)
            if bad.any():
                row = int(bad.any(dim=1).nonzero()[0, 0])
                what = "Inf" if allow_nan else "NaN or Inf"
                raise ValueError(f"{name} contains {what} (first at row {row}); clean the data"
                                 + ("" if allow_nan else " or pass missing='ignore' to skip NaN features"))
        return x

    def _chunks(self, x) -> Iterable[torch.Tensor]:
        """Stream x as validated tensors of at most CHUNK_ROWS rows: a tensor, a numpy
        array (np.memmap included: read chunk by chunk) or a re-iterable of batches."""
        if isinstance(x, (torch.Tensor, np.ndarray)):
            n = x.shape[0]
            if n == 0:
                return
            for start in range(0, n, CHUNK_ROWS):
                yield self._as_tensor(x[start:start + CHUNK_ROWS])
        else:
            for i, batch in enumerate(x):
                yield self._as_tensor(batch, f"batch {i} of x")

    @staticmethod
    def _is_stream(x) -> bool:
        return not isinstance(x, (torch.Tensor, np.ndarray))

    def _check_data(self, x) -> None:
        """Training data: a tensor, a numpy array or a re-iterable of batches. Training
        reads x more than once (initialisation, then every epoch), so a generator or other
        one-shot iterator, which a second pass would find empty, is refused."""
        accepted = (f"a torch.Tensor or a numpy array of shape (n_samples, {self.n_features}), or a "
                    f"re-iterable of (n, {self.n_features}) batches (a list of tensors or arrays, a DataLoader)")
        if isinstance(x, (torch.Tensor, np.ndarray)):
            return
        if isinstance(x, Iterator):
            raise TypeError(f"x is a one-shot iterator ({type(x).__name__}), but training reads x more than "
                            f"once (to initialise the map, then every epoch); pass {accepted}")
        if x is None or isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
            raise TypeError(f"x must be {accepted}; got {type(x).__name__}")

    # ------------------------------------------------------------------ init
    def _initialize(self, x, distributed: bool) -> None:
        k_nodes, d = self.n_nodes, self.n_features
        dt = torch.float64
        gen = self._generator
        if self.init == "uniform":
            bound = 1.0 / math.sqrt(d)
            w = (torch.rand((self.n_maps, k_nodes, d), generator=gen, dtype=dt) * 2 - 1) * bound
        elif self.init == "random":
            counts = []
            for chunk in self._chunks(x):
                counts.append(chunk.shape[0])
            n_local = sum(counts)
            shards = gkdist.all_gather_counts(n_local, self.device) if distributed else [n_local]
            n_total = sum(shards)
            if n_total == 0:
                raise ValueError("x is empty; the SOM needs data to train")
            offset = sum(shards[:gkdist.rank()]) if distributed else 0
            picks = torch.randint(0, n_total, (self.n_maps, k_nodes), generator=gen)
            w = torch.zeros((self.n_maps, k_nodes, d), dtype=dt, device=self.device)
            start = offset
            for chunk in self._chunks(x):
                local = picks.to(self.device) - start
                mine = (local >= 0) & (local < chunk.shape[0])
                w[mine] = chunk.to(dt)[local[mine]]
                start += chunk.shape[0]
            if distributed:
                gkdist.all_reduce_sum(w)
            if self.missing == "ignore" and bool(torch.isnan(w).any()):
                # a picked sample's missing features take the feature's mean
                s1 = torch.zeros(d, dtype=dt, device=self.device)
                n1 = torch.zeros(d, dtype=dt, device=self.device)
                for chunk in self._chunks(x):
                    c = chunk.to(dt)
                    s1 += torch.nan_to_num(c).sum(0)
                    n1 += (~torch.isnan(c)).sum(0).to(dt)
                if distributed:
                    gkdist.all_reduce_sum(s1, n1)
                w = torch.where(torch.isnan(w), (s1 / n1.clamp(min=1)).expand_as(w), w)
            w = torch.nan_to_num(w)
        else:
            total = torch.zeros((), dtype=dt, device=self.device)
            s1 = torch.zeros(d, dtype=dt, device=self.device)
            s2 = torch.zeros((d, d), dtype=dt, device=self.device)
            # missing='ignore': pairwise-complete moments (pandas' DataFrame.cov): the mean
            # of each feature over the rows where it is present, the second moment of each
            # pair over the rows where both are -- not NaN read as 0
            n1 = torch.zeros(d, dtype=dt, device=self.device) if self.missing == "ignore" else None
            n2 = torch.zeros((d, d), dtype=dt, device=self.device) if self.missing == "ignore" else None
            for chunk in self._chunks(x):
                c = chunk.to(dt)
                if n1 is not None:
                    present = (~torch.isnan(c)).to(dt)
                    n1 += present.sum(0)
                    n2 += present.T @ present
                c = torch.nan_to_num(c)
                total += c.shape[0]
                s1 += c.sum(0)
                s2 += c.T @ c
            if distributed:
                gkdist.all_reduce_sum(total, s1, s2, *([n1, n2] if n1 is not None else []))
            if float(total) == 0:
                raise ValueError("x is empty; the SOM needs data to train")
            if n1 is not None:
                mean = s1 / n1.clamp(min=1)
                cov = torch.where(n2 > 0, s2 / n2.clamp(min=1) - torch.outer(mean, mean), 0)
            else:
                mean = s1 / total
                cov = s2 / total - torch.outer(mean, mean)
            evals, evecs = torch.linalg.eigh(cov.cpu())
            order = torch.argsort(evals, descending=True)
            evals, evecs = evals[order].clamp(min=0), evecs[:, order]
            # a deterministic sign per component, so every rank and run agrees
            signs = torch.sign(evecs[evecs.abs().argmax(dim=0), torch.arange(evecs.shape[1])])
            evecs = (evecs * torch.where(signs == 0, 1.0, signs)).to(self.device)
            rows, cols = self.lattice.shape
            a = torch.linspace(-1, 1, rows, dtype=dt) if rows > 1 else torch.zeros(1, dtype=dt)
            b = torch.linspace(-1, 1, cols, dtype=dt) if cols > 1 else torch.zeros(1, dtype=dt)
            # the longer grid axis follows the first principal component
            first, second = (b, a) if cols >= rows else (a, b)
            ga = a.repeat_interleave(cols) if first is a else b.repeat(rows)
            gb = b.repeat(rows) if first is a else a.repeat_interleave(cols)
            std = evals.sqrt().to(self.device)
            w = mean[None, :] + ga.to(self.device)[:, None] * (std[0] * evecs[:, 0])[None, :]
            if d > 1:
                w = w + gb.to(self.device)[:, None] * (std[1] * evecs[:, 1])[None, :]
            w = w[None].expand(self.n_maps, -1, -1)
        self.codebook.copy_(w.to(self.codebook.device, self.dtype))
        self.initialized.fill_(True)

    # ----------------------------------------------------------------- schedule
    def _rates(self, first: int, count: int, total: int, epoch: int | None = None,
               epochs: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, count) learning rates and sigmas for global steps first .. first+count-1,
        each checked finite and > 0 (a callable's values at every use)."""
        out = []
        for name, spec in (("learning_rate", self._learning_rate), ("sigma", self._sigma)):
            if callable(spec):
                values = schedules.evaluate(spec, torch.ones(self.n_maps), torch.ones(self.n_maps),
                                            first, count, total)
                source = f"{name} (a callable)"
            else:
                values = schedules.evaluate(self.schedule, spec[0], spec[1], first, count, total)
                source = name if not callable(self.schedule) else f"{name} (from the callable schedule)"
            values = torch.as_tensor(values, dtype=torch.float64)
            if tuple(values.shape) != (self.n_maps, count):
                raise ValueError(f"{source} must give {count} values per step range (shape "
                                 f"({self.n_maps}, {count}) or ({count},)); got shape {tuple(values.shape)}")
            bad = ~torch.isfinite(values) | (values <= 0)
            if bool(bad.any()):
                m, j = (int(i) for i in bad.nonzero()[0])
                where = f"step {first + j}" + (f" (epoch {epoch + 1} of {epochs})" if epoch is not None else "")
                raise ValueError(f"{source} must be > 0 and finite at every step; got {float(values[m, j])!r} "
                                 f"at {where}" + (f", map {m}" if self.n_maps > 1 else ""))
            out.append(values)
        return out[0], out[1]

    # --------------------------------------------------------------------- fit
    def fit(self, x, epochs: int = 10, mode: str = "batch", batch_size: int = 256, *,
            sampling: str = "permutation", verbose: bool = True, checkpoint: str | None = None,
            resume: bool = False, distributed: bool = False, backend: str | None = None,
            callback: Callable[["SOM", int], None] | None = None) -> "SOM":
        """Train the map(s) on x for ``epochs`` passes; sigma and the learning rate follow
        the schedule over the whole fit.

        Args:
            x: (N, D) tensor or numpy array (float64 accepted, computed in the model's
                dtype; np.memmap streamed in chunks in batch mode), or a re-iterable of
                (n, D) batches (batch mode: data larger than memory), e.g. a list of
                tensors or a DataLoader. Training reads x more than once, so a generator
                or another one-shot iterator is refused (TypeError), as is anything else
                (None, a string).
            mode: "batch" (Kohonen's batch rule, one update per epoch), "online" (the
                sequential rule, one update per sample) or "minibatch" (updates
                averaged over batches of ``batch_size``).
            sampling: online / mini-batch sample order: "permutation" (a seeded
                shuffle per epoch), "sequential" (as given) or "replacement" (seeded
                draws with replacement).
            checkpoint: save the model atomically to this path after every epoch;
                with ``resume=True`` training continues from it when it exists.
            distributed: x is this rank's shard of the data; statistics are
                all-reduced over the default process group (see genkernels.distributed).
            callback: called as callback(model, epoch) after every epoch (e.g. to log
                more metrics into model.history[-1]).

        ``model.history`` gets one entry per epoch with the quantization error shown
        on the progress bar: in batch mode that of the map the epoch started from (a
        by-product of the fused pass), in the other modes that of the map after it.

        Every call trains ``epochs`` more epochs from the model's current state (a new
        model is initialised first), with sigma and the learning rate running their
        schedules over those ``epochs`` exactly as in a fresh call; ``history`` restarts.
        With ``resume=True`` an existing ``checkpoint`` written by an interrupted call
        is loaded and that call finished: the result equals one uninterrupted call with
        the same arguments. The checkpoint must come from a model with the same
        configuration (grid, metric, neighborhood, rule, schedules, dtype, ...) and a
        call with the same ``mode``, ``batch_size`` (minibatch) and ``sampling``
        (online, minibatch); a ValueError names the field that differs. A larger
        ``epochs`` than the interrupted call's extends the run: training continues to
        the new total, the schedules then running over it. A ``checkpoint`` that does
        not exist yet starts the call afresh (and is written after every epoch). Training records no autograd history (x may require grad).
        After every epoch the codebook must be finite: a diverged map (e.g. too large a
        learning rate) raises :class:`SOMDivergedError` naming the epoch and the rates,
        the model keeps the codebook of its last finite epoch and nothing is saved.
        """
        self._check_data(x)
        check_choice("mode", mode, MODES)
        check_choice("sampling", sampling, SAMPLINGS)
        epochs = check_int("epochs", epochs, 1)
        batch_size = check_int("batch_size", batch_size, 1)
        if distributed:
            if mode == "online":
                raise ValueError("mode='online' is sequential and cannot be distributed; "
                                 "use mode='batch' or 'minibatch'")
            gkdist.ensure_process_group(self.device)
        if mode != "batch" and self._is_stream(x):
            raise TypeError(f"mode={mode!r} needs x as one tensor or array; iterables of batches "
                            "train in mode='batch'")
        if resume and checkpoint is None:
            raise ValueError("resume=True needs checkpoint=PATH")
        if checkpoint is not None:
            ckpt.check_output_path(checkpoint, "checkpoint")
        fit_args = {"epochs": epochs, "mode": mode, "batch_size": batch_size, "sampling": sampling}
        with torch.no_grad():
            if resume and os.path.exists(checkpoint):
                self._load_into(checkpoint, fit_args)
            else:
                self.epochs_done.zero_()
                self.history = []
            self._fit_args = fit_args
            if mode != "batch":
                x = self._as_tensor(x, allow_nan=False)
                if x.shape[0] == 0 and not distributed:
                    raise ValueError("x is empty; the SOM needs data to train")
            elif self.missing == "ignore":
                self._check_present(x, distributed)
            if not bool(self.initialized):
                self._initialize(x, distributed)
            bar = Progress(epochs, int(self.epochs_done), verbose and gkdist.rank() == 0, f"SOM ({mode})", "qe", "{:.4f}")
            for epoch in range(int(self.epochs_done), epochs):
                before = self.codebook.clone()
                if mode == "batch":
                    qe = self._batch_epoch(x, epoch, epochs, distributed, backend)
                elif mode == "online":
                    qe = self._online_epoch(x, epoch, epochs, sampling, backend)
                else:
                    qe = self._minibatch_epoch(x, epoch, epochs, batch_size, sampling, distributed, backend)
                self._check_finite(before, epoch, epochs, mode, qe)
                self.epochs_done.fill_(epoch + 1)
                self.history.append({"epoch": epoch + 1, "quantization_error": qe})
                if callback is not None:
                    callback(self, epoch + 1)
                if checkpoint is not None and gkdist.rank() == 0:
                    self.save(checkpoint)
                bar.update(qe)
            bar.close()
        return self

    def _check_finite(self, before: torch.Tensor, epoch: int, epochs: int, mode: str, qe: float) -> None:
        """After an epoch: a non-finite codebook is restored to ``before`` and reported."""
        if bool(torch.isfinite(self.codebook).all()) and math.isfinite(qe):
            return
        if not bool(torch.isfinite(self.codebook).all()):
            what = "the codebook holds NaN or Inf"
        else:
            what = f"the distances to the codebook overflow {self.dtype}"
        self.codebook.copy_(before)
        rates = f"sigma={self.sigma_spec!r}" if mode == "batch" else \
            f"learning_rate={self.learning_rate_spec!r} and sigma={self.sigma_spec!r}"
        hint = ("" if mode == "batch" else
                "; a learning_rate above 1 overshoots the sample and can grow without bound: keep it in (0, 1]")
        raise SOMDivergedError(f"SOM training diverged in epoch {epoch + 1} of {epochs} (mode={mode!r}): {what} "
                               f"with {rates}{hint}. The model keeps the codebook of its last finite epoch and "
                               "nothing of this epoch was saved")

    def _check_present(self, x, distributed: bool) -> None:
        """missing='ignore': every feature must be present (not NaN) in some row, or
        neither the initialisation nor any node ever sees a value for it."""
        counts = torch.zeros(self.n_features, dtype=torch.float64, device=self.device)
        for chunk in self._chunks(x):
            counts += (~torch.isnan(chunk)).sum(0).to(torch.float64)
        if distributed:
            gkdist.all_reduce_sum(counts)
        if not bool((counts > 0).any()):
            raise ValueError("x holds no value: every entry is NaN (or x is empty); missing='ignore' skips "
                             "NaN features, but the SOM needs data to train")
        empty = (counts == 0).nonzero()
        if empty.numel():
            j = int(empty[0, 0])
            raise ValueError(f"x: feature {j} is NaN in every row ({empty.numel()} such feature(s)); "
                             "missing='ignore' cannot train weights for a feature it never sees -- drop it")

    def partial_fit(self, x, mode: str = "online", *, sampling: str = "sequential",
                    backend: str | None = None) -> "SOM":
        """One more pass over x at the current end-of-schedule rates (the rates of the
        last step of a fit), without resetting the map. x as in :meth:`fit`."""
        self._check_data(x)
        check_choice("mode", mode, MODES)
        with torch.no_grad():
            if mode != "batch":
                x = self._as_tensor(x, allow_nan=False)
            elif self.missing == "ignore":
                self._check_present(x, False)
            if not bool(self.initialized):
                self._initialize(x, False)
            before = self.codebook.clone()
            if mode == "batch":
                qe = self._batch_epoch(x, 0, 1, False, backend, sigma_index=-1)
            elif mode == "online":
                qe = self._online_epoch(x, 0, 1, sampling, backend, fixed_end=True)
            else:
                qe = self._minibatch_epoch(x, 0, 1, 256, sampling, False, backend, fixed_end=True)
            self._check_finite(before, 0, 1, mode, qe)
        return self

    def _end_rates(self, count: int):
        lr, sig = self._rates(0, 2, 2)
        return lr[:, -1:].expand(-1, count).contiguous(), sig[:, -1:].expand(-1, count).contiguous()

    def _batch_epoch(self, x, epoch, epochs, distributed, backend, sigma_index=None) -> float:
        _, sig = self._rates(epoch, 1, epochs, epoch, epochs) if sigma_index is None else self._end_rates(1)
        ignore_nan = self.missing == "ignore"
        if self.rule == "wtm":
            self._reference_only("rule='wtm' in mode='batch'", backend)
        coords = self.coords()
        dt = acc_dtype(self.dtype)
        qe_total = 0.0
        n_total = 0
        new = torch.empty_like(self.codebook)
        for m in range(self.n_maps):
            w = self.codebook[m]
            sums = counts = None
            dsum = torch.zeros((), dtype=torch.float64, device=self.device)
            n = torch.zeros((), dtype=torch.float64, device=self.device)
            for chunk in self._chunks(x):
                if self.rule == "wtm":
                    s, c, ds = self._wtm_sums(chunk, w, float(sig[m, 0]))
                else:
                    s, c, ds = ops.som_node_sums(chunk, w, self.metric, ignore_nan=ignore_nan, backend=backend)
                sums = s if sums is None else sums + s
                counts = c if counts is None else counts + c
                dsum += ds
                n += chunk.shape[0]
            if sums is None:
                sums = torch.zeros((self.n_nodes, self.n_features), dtype=dt, device=self.device)
                counts = torch.zeros(sums.shape if ignore_nan else sums.shape[:1], dtype=dt, device=self.device)
            if distributed:
                gkdist.all_reduce_sum(sums, counts, dsum, n)
            if float(n) == 0:
                raise ValueError("x is empty; the SOM needs data to train")
            if self.rule == "som":
                new[m] = ops.som_smooth(sums, counts, w, coords, self.lattice.periods, self.neighborhood,
                                        float(sig[m, 0]), self.lattice.shape if self.lattice.separable else None)
            else:
                den = counts if counts.dim() == 2 else counts[:, None]
                new[m] = torch.where(den > 0, sums / den.clamp(min=torch.finfo(dt).tiny), w.to(dt)).to(self.dtype)
            qe_total += float(dsum)
            n_total = float(n)
        self.codebook.copy_(new)
        return qe_total / (n_total * self.n_maps)

    def _wtm_sums(self, chunk, w, sigma):
        """Winner-takes-most batch sums: every node gathers every sample with weight
        K(rho) of the data-space distance; computed from the definition on row tiles of
        at most WTM_TILE_ELEMENTS distances (no chunk x nodes matrix)."""
        dt = acc_dtype(self.dtype)
        rows = max(1, WTM_TILE_ELEMENTS // max(1, self.n_nodes * max(1, self.n_features)))
        sums = torch.zeros((self.n_nodes, self.n_features), dtype=dt, device=self.device)
        counts = torch.zeros(self.n_nodes, dtype=dt, device=self.device)
        dsum = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, chunk.shape[0], rows):
            part = chunk[start:start + rows]
            rho = reference.pairwise_distances(part, w, self.metric, self.missing == "ignore")
            h = reference.neighborhood(self.neighborhood, rho, torch.zeros_like(rho), sigma)
            sums += h.T @ torch.nan_to_num(part.to(dt))
            counts += h.sum(0)
            dmin = rho.min(dim=1).values
            dsum += dmin[torch.isfinite(dmin)].to(torch.float64).sum()
        return sums, counts, dsum

    @staticmethod
    def _reference_only(what: str, backend: str | None) -> None:
        """``what`` runs in PyTorch (no kernel of any backend serves it): an explicitly
        requested compiled backend (backend=, use_backend, GENKERNELS_BACKEND) is an error,
        never a silent fallback."""
        requested = backend if backend is not None else backends.forced_backend()
        if requested is not None and requested != "reference":
            raise backends.BackendUnavailableError(
                f"{what} has no {requested} kernel: it runs the pure-PyTorch reference; pass "
                "backend='reference' (or None) to run it")
        if requested is None and what not in _REFERENCE_ONLY_WARNED:
            # the automatic choice: said once per process, never silent
            _REFERENCE_ONLY_WARNED.add(what)
            warnings.warn(f"{what} runs the pure-PyTorch reference (no backend has a kernel for it); "
                          "pass backend='reference' to choose it explicitly", RuntimeWarning, stacklevel=4)

    def _order(self, n: int, sampling: str) -> torch.Tensor:
        if sampling == "sequential":
            order = torch.arange(n)
        elif sampling == "permutation":
            order = torch.randperm(n, generator=self._generator)
        else:
            order = torch.randint(0, n, (n,), generator=self._generator)
        return order

    def _online_epoch(self, x, epoch, epochs, sampling, backend, fixed_end=False) -> float:
        n = x.shape[0]
        order = self._order(n, sampling)
        if fixed_end:
            lr, sig = self._end_rates(n)
        else:
            lr, sig = self._rates(epoch * n, n, epochs * n, epoch, epochs)
        dev = self.device
        order_m = order[None, :].expand(self.n_maps, -1).contiguous().to(dev)
        dt = acc_dtype(self.dtype)
        lr, sig = lr.to(dev, dt), sig.to(dev, dt)
        if callable(self.neighborhood):
            self._reference_only("a callable neighborhood in mode='online'", backend)
            new = reference.som_online(self.codebook, x, order_m, lr, sig, self.coords(), *self.lattice.periods,
                                       self.neighborhood, self.rule, self.metric)
        else:
            new = ops.som_online(self.codebook, x, order_m, lr, sig, self.coords(), self.lattice.periods,
                                 self.neighborhood, self.rule, self.metric, backend=backend)
        self.codebook.copy_(new)
        return self._epoch_qe(x, backend)

    def _minibatch_epoch(self, x, epoch, epochs, batch_size, sampling, distributed, backend,
                         fixed_end=False) -> float:
        n = x.shape[0]
        steps = max(1, math.ceil(n / batch_size))
        if distributed:
            # every rank takes the same number of steps: the largest shard sets it
            n_steps = torch.tensor([steps], dtype=torch.int64, device=self.device)
            torch.distributed.all_reduce(n_steps, op=torch.distributed.ReduceOp.MAX)
            steps = int(n_steps)
        order = self._order(n, sampling)
        lr, sig = (self._end_rates(steps) if fixed_end
                    else self._rates(epoch * steps, steps, epochs * steps, epoch, epochs))
        if self.rule == "wtm":
            self._reference_only("rule='wtm' in mode='minibatch'", backend)
        dt = acc_dtype(self.dtype)
        coords = self.coords()
        periods = self.lattice.periods
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size].to(self.device) if n else order[:0]
            xb = x[idx]
            for m in range(self.n_maps):
                w = self.codebook[m].to(dt)
                num = torch.zeros_like(w)
                den = torch.zeros(self.n_nodes, dtype=dt, device=self.device)
                count = torch.tensor(float(xb.shape[0]), dtype=dt, device=self.device)
                if xb.shape[0]:
                    h = self._sample_neighborhood(xb, self.codebook[m], float(sig[m, step]), coords, periods, backend)
                    num = h.T @ xb.to(dt)
                    den = h.sum(0)
                if distributed:
                    gkdist.all_reduce_sum(num, den, count)
                if float(count) > 0:
                    w = w + float(lr[m, step]) / count * (num - den[:, None] * w)
                self.codebook[m] = w.to(self.dtype)
        return self._epoch_qe(x, backend) if n else 0.0

    def _epoch_qe(self, x, backend) -> float:
        """The quantization error after an epoch; inf where the distances overflow (the
        epoch is then reported as diverged by _check_finite)."""
        if not bool(torch.isfinite(self.codebook).all()):
            return float("inf")
        try:
            return float(self.quantization_error(x, backend=backend).mean())
        except OverflowError:
            return float("inf")

    def _sample_neighborhood(self, xb, w, sigma, coords, periods, backend) -> torch.Tensor:
        """(B, K) update weights of a batch under the model's rule."""
        if self.rule == "wtm":
            rho = reference.pairwise_distances(xb, w, self.metric)
            return reference.neighborhood(self.neighborhood, rho, torch.zeros_like(rho), sigma)
        bmu = ops.som_bmu(xb, w, 1, self.metric, backend=backend)[0][:, 0]
        if self.rule == "wta":
            return torch.nn.functional.one_hot(bmu, self.n_nodes).to(coords.dtype)
        d0, d1 = reference.lattice_deltas(coords[bmu][:, None, :], coords[None, :, :], *periods)
        return reference.neighborhood(self.neighborhood, d0, d1, sigma)

    # ----------------------------------------------------------------- queries
    def _per_map(self, fn, x):
        out = [fn(self.codebook[m], x) for m in range(self.n_maps)]
        return out[0] if self.n_maps == 1 else out

    def bmu(self, x, k: int = 1, backend: str | None = None):
        """Indices (N, k) int64 and distances (N, k) of the k best-matching nodes (per
        map: lists with n_maps > 1)."""
        x = self._as_tensor(x)
        res = [ops.som_bmu(x, self.codebook[m], k, self.metric, ignore_nan=self.missing == "ignore",
                           backend=backend) for m in range(self.n_maps)]
        if self.n_maps == 1:
            return res[0]
        return torch.stack([r[0] for r in res]), torch.stack([r[1] for r in res])

    def winner(self, x, backend: str | None = None) -> torch.Tensor:
        """(N, 2) int64 grid position (row, col) of each sample's best-matching node."""
        idx = self.bmu(x, backend=backend)[0][..., 0]
        return torch.stack([idx // self.lattice.cols, idx % self.lattice.cols], dim=-1)

    def transform(self, x, backend: str | None = None) -> torch.Tensor:
        """(N, 2) lattice coordinates of each sample's best-matching node (hexagonal
        positions on hexagonal maps): the SOM's 2-D projection of the data."""
        idx = self.bmu(x, backend=backend)[0][..., 0]
        return self.coords()[idx]

    def quantization_error(self, x, backend: str | None = None) -> torch.Tensor:
        """Mean distance of each sample to its best-matching node (0-d; (M,) per map).

        With missing='ignore' a row with no present feature has no distance and is left
        out (as in the training history). Raises ValueError when no row has one,
        FloatingPointError when the weights hold NaN or Inf, and OverflowError when a
        distance overflows the model's dtype (far beyond data near
        its largest value / sqrt(D): train in float64) -- never returns inf."""
        d = self.bmu(x, backend=backend)[1][..., 0].to(torch.float64)
        if d.shape[-1] == 0:
            return d.mean(dim=-1)
        xt = self._as_tensor(x)
        if self.missing == "ignore":
            has = ~torch.isnan(xt).all(dim=1)
            if not bool(has.any()):
                raise ValueError("x has no row with a present feature: the quantization error is undefined")
            d = d[..., has]
        if not bool(torch.isfinite(self.weights).all()):
            raise FloatingPointError("the map holds NaN or Inf weights (training diverged): its quantization "
                                     "error is undefined")
        if not bool(torch.isfinite(d).all()):
            raise OverflowError(f"the distances to the best-matching nodes overflow {self.dtype} (data or "
                                "weights too close to its largest value); use dtype=torch.float64")
        return d.mean(dim=-1)

    def topographic_error(self, x, backend: str | None = None) -> torch.Tensor:
        """Fraction of samples whose best and second-best nodes are not adjacent
        (MiniSom's definition: the 8 surrounding nodes on rectangular grids, the 6 at
        distance 1 on hexagonal grids; across the wrap on a torus)."""
        if self.n_nodes == 1:
            raise ValueError("the topographic error is not defined for a map with one node")
        idx = self.bmu(x, 2, backend=backend)[0]
        adj = self.lattice.adjacent(idx[..., 0], idx[..., 1])
        return (~adj).to(torch.float64).mean(dim=-1)

    def distortion(self, x, sigma: float | None = None, backend: str | None = None) -> torch.Tensor:
        """The SOM energy (1/N) sum_i sum_j h(b_i, j) |x_i - w_j|^2 at radius sigma
        (default: the end of the schedule), from per-node statistics: O(N D + K^2 D)."""
        x = self._as_tensor(x, allow_nan=False)
        sigma = float(self._end_rates(1)[1][0, 0]) if sigma is None else check_positive("sigma", sigma)
        dt = torch.float64
        out = []
        for m in range(self.n_maps):
            w = self.codebook[m]
            sums, counts, _ = ops.som_node_sums(x, w, self.metric, backend=backend)
            idx = ops.som_bmu(x, w, 1, self.metric, backend=backend)[0][:, 0]
            sq = torch.zeros(self.n_nodes, dtype=dt, device=self.device).index_add_(
                0, idx, (x.to(dt) ** 2).sum(1))
            stats = torch.cat([sums.to(dt), counts.to(dt)[:, None], sq[:, None]], dim=1)
            hs = ops.neighborhood_matmul(stats, self.coords().to(dt), self.lattice.periods,
                                         self.neighborhood, sigma,
                                         self.lattice.shape if self.lattice.separable else None)
            wd = w.to(dt)
            d = self.n_features
            total = hs[:, d + 1].sum() - 2 * (hs[:, :d] * wd).sum() + (hs[:, d] * (wd * wd).sum(1)).sum()
            out.append(total / max(x.shape[0], 1))
        return out[0] if self.n_maps == 1 else torch.stack(out)

    def umatrix(self) -> torch.Tensor:
        """(rows, cols) mean distance of each node's weights to its adjacent nodes'
        (4 on rectangles, 6 on hexagons, across the wrap on a torus); (M, rows, cols)."""
        pairs = self.lattice.neighbor_pairs().to(self.device)
        out = []
        for m in range(self.n_maps):
            w = self.codebook[m].to(torch.float64)
            d = torch.linalg.vector_norm(w[pairs[:, 0]] - w[pairs[:, 1]], dim=1)
            total = torch.zeros(self.n_nodes, dtype=torch.float64, device=self.device)
            total.index_add_(0, pairs[:, 0], d).index_add_(0, pairs[:, 1], d)
            deg = torch.zeros_like(total).index_add_(0, pairs[:, 0], torch.ones_like(d)).index_add_(
                0, pairs[:, 1], torch.ones_like(d))
            out.append((total / deg.clamp(min=1)).reshape(self.lattice.shape))
        return out[0] if self.n_maps == 1 else torch.stack(out)

    def hit_map(self, x, backend: str | None = None) -> torch.Tensor:
        """(rows, cols) int64 number of samples each node wins."""
        idx = self.bmu(x, backend=backend)[0][..., 0]

        def hits(i):
            return torch.bincount(i, minlength=self.n_nodes).reshape(self.lattice.shape)
        return hits(idx) if self.n_maps == 1 else torch.stack([hits(i) for i in idx])

    def component_planes(self) -> torch.Tensor:
        """(D, rows, cols) weights of each feature over the grid ((M, D, rows, cols))."""
        planes = self.codebook.permute(0, 2, 1).reshape(self.n_maps, self.n_features, *self.lattice.shape)
        return planes[0] if self.n_maps == 1 else planes

    def win_map(self, x, return_indices: bool = False) -> dict:
        """{(row, col): samples (or their indices) won by that node} (first map)."""
        xt = self._as_tensor(x)
        cells = self.winner(xt)
        cells = cells[0] if self.n_maps > 1 else cells
        out = defaultdict(list)
        for i, (r, c) in enumerate(cells.tolist()):
            out[(r, c)].append(i if return_indices else xt[i])
        return dict(out)

    def labels_map(self, x, labels) -> dict:
        """{(row, col): Counter of the labels of the samples that node wins} (first map)."""
        labels = list(np.asarray(labels).tolist())
        xt = self._as_tensor(x)
        if len(labels) != xt.shape[0]:
            raise ValueError(f"labels has {len(labels)} entries but x has {xt.shape[0]} rows")
        cells = self.winner(xt)
        cells = cells[0] if self.n_maps > 1 else cells
        out = defaultdict(Counter)
        for (r, c), lab in zip(cells.tolist(), labels):
            out[(r, c)][lab] += 1
        return dict(out)

    def label_nodes(self, x, labels) -> "SOM":
        """Give every node the majority label of the samples it wins (ties: the
        smallest label); nodes that win nothing take the label of the nearest
        labelled node in weight space. Used by :meth:`predict`."""
        labels = np.asarray(labels)
        xt = self._as_tensor(x)
        if labels.shape[0] != xt.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries but x has {xt.shape[0]} rows")
        classes, y = np.unique(labels, return_inverse=True)
        idx = self.bmu(xt)[0]
        idx = (idx[0] if self.n_maps > 1 else idx)[:, 0].cpu().numpy()
        votes = np.zeros((self.n_nodes, classes.shape[0]), dtype=np.int64)
        np.add.at(votes, (idx, y), 1)
        node_class = votes.argmax(1)
        labelled = votes.sum(1) > 0
        if not labelled.all():
            w = self.codebook[0]
            src = torch.from_numpy(np.nonzero(labelled)[0]).to(self.device)
            dst = torch.from_numpy(np.nonzero(~labelled)[0]).to(self.device)
            nearest = ops.som_bmu(w[dst], w[src], 1, self.metric)[0][:, 0].cpu().numpy()
            node_class[~labelled] = node_class[np.nonzero(labelled)[0][nearest]]
        self.node_labels = classes[node_class].tolist()
        return self

    def predict(self, x) -> np.ndarray:
        """(N,) label of each sample's best-matching node (call label_nodes first)."""
        if self.node_labels is None:
            raise RuntimeError("predict needs node labels: call label_nodes(x, labels) first")
        idx = self.bmu(x)[0]
        idx = (idx[0] if self.n_maps > 1 else idx)[:, 0].cpu().numpy()
        return np.asarray(self.node_labels)[idx]

    def cluster(self, n_clusters: int, method: str = "agglomerative") -> torch.Tensor:
        """(rows, cols) int64 cluster of each node: the codebook grouped into
        n_clusters, "agglomerative" (Ward linkage restricted to lattice neighbours, so
        clusters are contiguous on the map) or "kmeans".

        n_clusters: an int in [1, number of nodes] (TypeError / ValueError otherwise).
        n_clusters=1 puts every node in cluster 0 by either method -- the one partition
        into one group, so a 1x1 map has the single label 0; n_clusters = number of
        nodes gives every node its own cluster.
        """
        check_int("n_clusters", n_clusters, 1, self.n_nodes)
        check_choice("method", method, ("agglomerative", "kmeans"))
        if n_clusters == 1:
            return torch.zeros(self.lattice.shape, dtype=torch.int64)
        from sklearn.cluster import AgglomerativeClustering, KMeans
        w = self.codebook[0].to(torch.float64).cpu().numpy()
        if method == "kmeans":
            lab = KMeans(n_clusters, n_init=10, random_state=self.seed % (2**32)).fit_predict(w)
        else:
            from scipy.sparse import coo_matrix
            pairs = self.lattice.neighbor_pairs().numpy()
            conn = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                              shape=(self.n_nodes, self.n_nodes))
            lab = AgglomerativeClustering(n_clusters, connectivity=conn + conn.T).fit_predict(w)
        return torch.from_numpy(lab.astype(np.int64)).reshape(self.lattice.shape)

    # ------------------------------------------------------------ persistence
    def _config(self) -> dict:
        for name, value in (("neighborhood", self.neighborhood), ("schedule", self.schedule),
                            ("sigma", self.sigma_spec), ("learning_rate", self.learning_rate_spec)):
            if callable(value):
                raise ValueError(f"{name} is a callable, which a checkpoint cannot store; "
                                 "use a built-in name or numbers to save the model")

        def plain(v):
            # tensors and arrays are per-map values: lists; a tuple stays a (start, end) tuple
            if isinstance(v, (torch.Tensor, np.ndarray)):
                return plain(v.tolist())
            if isinstance(v, tuple):
                return tuple(plain(u) for u in v)
            if isinstance(v, list):
                return [plain(u) for u in v]
            if isinstance(v, numbers.Real) and not isinstance(v, (bool, int)):
                return float(v)
            return v
        return {"grid": list(self.grid), "n_features": self.n_features, "n_maps": self.n_maps,
                "topology": self.topology, "periodic": self.lattice.periodic,
                "neighborhood": self.neighborhood, "sigma": plain(self.sigma_spec),
                "learning_rate": plain(self.learning_rate_spec), "schedule": self.schedule,
                "init": self.init, "metric": self.metric, "rule": self.rule, "missing": self.missing,
                "seed": self.seed, "dtype": str(self.dtype).removeprefix("torch.")}

    def _payload(self) -> dict:
        return {"config": self._config(), "state": self._state_payload(),
                "generator": self._generator.get_state(), "history": self.history,
                "node_labels": self.node_labels, "fit": self._fit_args}

    # Config fields: their types in a checkpoint. Those in _RESULT_FIELDS change what the
    # remaining epochs compute, so resume=True requires them equal (seed and init only
    # shape the initial map, which the checkpoint holds).
    _CONFIG_TYPES = {"grid": list, "n_features": int, "n_maps": int, "topology": str, "periodic": bool,
                     "neighborhood": str, "sigma": (type(None), int, float, tuple, list),
                     "learning_rate": (int, float, tuple, list), "schedule": str, "init": str,
                     "metric": str, "rule": str, "missing": str, "seed": int, "dtype": str}
    _RESULT_FIELDS = ("grid", "n_features", "n_maps", "topology", "periodic", "neighborhood", "sigma",
                      "learning_rate", "schedule", "metric", "rule", "missing", "dtype")
    _DTYPES = ("float16", "bfloat16", "float32", "float64")

    @classmethod
    def _read_payload(cls, path: str) -> dict:
        """The checkpoint at path with its envelope and config fields validated (errors
        name the field); the state is checked against a model by _check_payload."""
        payload = ckpt.read(path, cls.kind)
        cfg = payload["config"]
        named = {f"config.{k}": v for k, v in cfg.items()}
        for key, types in cls._CONFIG_TYPES.items():
            ckpt.field(named, f"config.{key}", types, path)
        for key, low, high in (("n_features", 1, None), ("n_maps", 1, None), ("seed", 0, 2**64 - 1)):
            ckpt.int_field(named, f"config.{key}", low, high, path)
        grid = cfg["grid"]
        if len(grid) not in (1, 2) or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1
                                              for g in grid):
            raise ValueError(f"checkpoint {os.fspath(path)!r}: the field 'config.grid' must be [rows, cols] or "
                             f"[n] of ints >= 1; got {grid!r}")
        if cfg["dtype"] not in cls._DTYPES:
            raise ValueError(f"checkpoint {os.fspath(path)!r}: the field 'config.dtype' must be one of "
                             f"{cls._DTYPES}; got {cfg['dtype']!r}")
        return payload

    @classmethod
    def _from_config(cls, cfg: dict, path, device=None) -> "SOM":
        cfg = dict(cfg)
        cfg["dtype"] = getattr(torch, cfg["dtype"])
        grid = tuple(cfg.pop("grid"))
        n_features = cfg.pop("n_features")
        try:
            return cls(grid, n_features, device=device, **cfg)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint {os.fspath(path)!r}: the field 'config' holds an invalid "
                             f"model configuration ({exc})") from exc

    def _check_payload(self, payload: dict, path) -> None:
        """Every non-config field against this model: state (shapes, dtypes, finite),
        generator, history, node_labels and the fit arguments."""
        state = ckpt.check_state(payload, self, path, values={"initialized": (False, True)})
        if int(state["epochs_done"]) < 0:
            raise ValueError(f"checkpoint {os.fspath(path)!r}: the field 'state.epochs_done' must be >= 0; "
                             f"got {int(state['epochs_done'])}")
        ckpt.check_tensor("generator", ckpt.field(payload, "generator", torch.Tensor, path, "a tensor"),
                          tuple(self._generator.get_state().shape), torch.uint8, path)
        history = ckpt.field(payload, "history", list, path, "a list")
        if not all(isinstance(h, dict) for h in history):
            raise ValueError(f"checkpoint {os.fspath(path)!r}: the field 'history' must be a list of dicts")
        labels = ckpt.field(payload, "node_labels", (type(None), list), path, "None or a list")
        if labels is not None and len(labels) != self.n_nodes:
            raise ValueError(f"checkpoint {os.fspath(path)!r}: the field 'node_labels' must hold "
                             f"{self.n_nodes} labels; got {len(labels)}")
        fit = payload.get("fit")  # absent in checkpoints written before it was stored
        if fit is not None:
            ckpt.field(payload, "fit", dict, path, "None or a dict")
            named = {f"fit.{k}": v for k, v in fit.items()}
            epochs = ckpt.int_field(named, "fit.epochs", 1, None, path)
            ckpt.int_field(named, "fit.batch_size", 1, None, path)
            for key, choices in (("mode", MODES), ("sampling", SAMPLINGS)):
                if ckpt.field(named, f"fit.{key}", str, path) not in choices:
                    raise ValueError(f"checkpoint {os.fspath(path)!r}: the field 'fit.{key}' must be one of "
                                     f"{choices}; got {fit[key]!r}")
            if int(state["epochs_done"]) > epochs:
                raise ValueError(f"checkpoint {os.fspath(path)!r}: the field 'state.epochs_done' "
                                 f"({int(state['epochs_done'])}) exceeds 'fit.epochs' ({epochs})")

    def _restore(self, payload: dict) -> None:
        self.load_state_dict({k: v.to(self.device) for k, v in payload["state"].items()})
        self._generator.set_state(payload["generator"])
        self.history = list(payload["history"])
        self.node_labels = payload["node_labels"]
        self._fit_args = dict(payload["fit"]) if payload.get("fit") is not None else None

    def _load_into(self, path: str, fit_args: dict | None = None) -> None:
        """Resume: load the checkpoint into this model, which must have the same result
        fields (and, with fit_args, the checkpoint the same fit arguments)."""
        payload = self._read_payload(path)
        cfg = payload["config"]
        mine = self._config()
        where = f"checkpoint {os.fspath(path)!r}"
        for key in self._RESULT_FIELDS:
            theirs = cfg[key]
            if key in ("sigma", "learning_rate"):
                same = self._same_rate(key, theirs, path)
            else:
                same = theirs == mine[key]
            if not same:
                raise ValueError(f"{where} has {key}={theirs!r} but this model has {mine[key]!r}; resume=True "
                                 f"continues only a run with the same {key}")
        self._check_payload(payload, path)
        fit = payload.get("fit")
        if fit_args is not None and fit is not None:
            keys = ["mode"]
            if fit_args["mode"] == "minibatch":
                keys.append("batch_size")
            if fit_args["mode"] != "batch":
                keys.append("sampling")
            for key in keys:
                if fit[key] != fit_args[key]:
                    raise ValueError(f"{where} was written by fit({key}={fit[key]!r}) but this call has "
                                     f"{key}={fit_args[key]!r}; resume=True finishes the interrupted call, "
                                     "so its arguments must be the same")
        self._restore(payload)

    def _same_rate(self, key: str, theirs, path) -> bool:
        rows, cols = self.lattice.shape
        default = max(max(rows, cols) / 2.0, 1.0)
        end = (lambda v: min(1.0, v)) if key == "sigma" else (lambda v: 0.02 * v)
        try:
            a = _rate(key, default if theirs is None else theirs, end, self.n_maps)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint {os.fspath(path)!r}: the field 'config.{key}' is invalid ({exc})") from exc
        b = self._sigma if key == "sigma" else self._learning_rate
        return all(torch.equal(u, v) for u, v in zip(a, b))

    @classmethod
    def _read(cls, path) -> ckpt.Fields:
        return ckpt.Fields(cls._read_payload(path), path)

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> "SOM":
        model = cls._from_config(fields.payload["config"], fields.path, device)
        model._check_payload(fields.payload, fields.path)
        model._restore(fields.payload)
        return model

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, n_features={self.n_features}, n_maps={self.n_maps}, "
                f"topology={self.topology!r}, periodic={self.lattice.periodic}, "
                f"neighborhood={getattr(self.neighborhood, '__name__', self.neighborhood)!r}, "
                f"metric={self.metric!r}, rule={self.rule!r}")

    # -------------------------------------------------------------------- plots
    def plot_umatrix(self, path: str, **kwargs) -> str:
        from .. import plot
        return plot.plot_lattice(self.lattice, self.umatrix() if self.n_maps == 1 else self.umatrix()[0],
                                 path, title="U-matrix", cmap="bone_r", **kwargs)

    def plot_hit_map(self, x, path: str, **kwargs) -> str:
        from .. import plot
        hits = self.hit_map(x)
        return plot.plot_lattice(self.lattice, hits if self.n_maps == 1 else hits[0], path,
                                 title="hit map", cmap="viridis", **kwargs)

    def plot_component_planes(self, path: str, names=None, max_planes: int = 16, **kwargs) -> str:
        """One panel per feature (at most ``max_planes``, an int >= 1), titled by ``names``:
        None or a list of n_features strings. Both are checked (TypeError / ValueError
        naming them) before a figure is made or a file written."""
        from .. import plot
        planes = self.component_planes()
        planes = planes if self.n_maps == 1 else planes[0]
        return plot.plot_planes(self.lattice, planes, path, names=names, max_planes=max_planes, **kwargs)

    def plot_labels_map(self, x, labels, path: str, **kwargs) -> str:
        from .. import plot
        return plot.plot_labels(self.lattice, self.labels_map(x, labels), path, **kwargs)

    def plot_training_curve(self, path: str, metrics: dict | None = None) -> str:
        from .. import plot
        return plot.plot_curves(metrics or {"quantization error": [h["quantization_error"] for h in self.history]},
                                path)
