"""``genkernels.RBM``: a restricted Boltzmann machine trained by CD-k or persistent CD.

Energy (binary hidden units h, visible units v, weights W (n_visible, n_hidden), visible
bias b, hidden bias c):

* Bernoulli visible units: E(v, h) = -b.v - c.h - v^T W h;
* Gaussian visible units with standard deviations sigma (1 unless learn_variance):
  E(v, h) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - c.h - (v / sigma)^T W h,
  so p(h_j = 1 | v) = sigmoid(c_j + ((v / sigma) W)_j) and
  v_i | h ~ N(b_i + sigma_i (W h)_i, sigma_i^2).

Free energy F(v) = -log sum_h exp(-E(v, h)): Bernoulli -b.v - sum_j softplus(c + v W)_j;
Gaussian sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_j softplus(c + (v / sigma) W)_j.

Training follows scikit-learn's BernoulliRBM convention (its ``_fit``): the positive
statistics use the hidden probabilities of the data, the negative ones the *sampled*
visible states of the chain and their hidden probabilities; every parameter moves by
learning_rate * (mean positive statistic - mean negative statistic) (plus momentum,
weight decay and a sparsity term). CD-k starts each batch's chains from the hidden
samples of the data; PCD keeps ``batch_size`` persistent chains (hidden states, zeros at
first as in scikit-learn) across batches and epochs.

Random stream: the model owns a Philox stream (genkernels.model.Model: ``seed`` and the
counter ``offset``). Every sampling
half-step over B rows of n_out units takes the next B * ceil(n_out / 4) counters, laid out
as genkernels.ops.rbm_half_step documents (row b, unit j: word j % 4 of counter
offset + b * ceil(n_out / 4) + j // 4), so a step's draws are keyed by (step, sample index,
unit). Gaussian visible samples take words 0 and 1 of randint4x(seed, offset + b * n_visible
+ i) (Box-Muller), B * n_visible counters. The stream position
is part of every checkpoint, so a resumed run draws exactly what an uninterrupted one does.

Data-parallel training (``fit(..., distributed=True)``, torch.distributed: NCCL on GPU, gloo
on CPU, launched with torchrun): every process holds the whole training set and shuffles it
with the same keyed permutation, so the global batches are the rows of the single-process
run in the same order; process r of N takes rows [B r // N, B (r + 1) // N) of every batch
of B rows (and of the batch_size persistent chains). A half-step still advances the stream
by the global B * ceil(n_out / 4) counters and each process draws with the counters of its
own global rows, so every sample is the single process's draw. Each process sums its
positive and negative statistics, divides them by the global row counts and one all-reduce
of one flat buffer per update adds them up; every process then applies the same update, so
the parameters stay identical everywhere and equal the single-process ones up to float
summation order (step for step over the first updates; later a probability within rounding
of its uniform can flip a draw, and runs are compared by their reconstruction error).

The model's code lives by concern: this module (the model, its half-steps, CD-k and PCD
training, the binary-state path, checkpoints); rbm_tempering.py (parallel tempering),
rbm_partition.py (exact and AIS partition functions), rbm_distributed.py (data-parallel
statistics and chains) and rbm_graphs.py (CUDA-graph capture), each a base class of RBM.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from .. import backends
from .. import checkpoint as ckpt
from .. import distributed as gkdist
from .. import random as gk_random
from .._checks import check_choice, check_fits_dtype, check_int, compiling, from_numpy
from ..model import DivergedError, Model, Progress, check_finite_model
from ..random import SEED_RANGE
from ._train import check_real as _check_real
from .rbm_distributed import DistributedChains, _rank_rows, _Rows
from .rbm_graphs import CudaGraphs, _GraphedUpdate
from .rbm_ops import binary_outer_add_, half_step, half_step_binary, pack_binary
from .rbm_partition import PartitionEstimators
from .rbm_reference import counters_per_row, half_step_uniforms
from .rbm_tempering import PT_DEFAULT_TEMPERATURES, ParallelTempering

VISIBLE_UNITS = ("bernoulli", "gaussian")
METHODS = ("cd", "pcd", "pt")
BINARIZE = (None, "threshold", "stochastic")
MONITORS = (None, "reconstruction_error", "pseudo_likelihood")
STATE_PATHS = ("auto", "dense", "binary")
# rows of the training data the monitored metric is computed on after each epoch
MONITOR_ROWS = 1000
# batches whose rows fit() gathers in one copy
GATHER_BATCHES = 64


class RBM(PartitionEstimators, ParallelTempering, DistributedChains, CudaGraphs, Model):
    """A restricted Boltzmann machine with binary hidden units.

    Args:
        n_visible, n_hidden: layer sizes (>= 1).
        visible: "bernoulli" -- visible data binary or probabilities in [0, 1] (as
            scikit-learn's BernoulliRBM); "gaussian" -- real-valued visible units with
            standard deviation 1 (standardise the data first), or learned per unit with
            ``learn_variance=True``.
        seed: int in [0, 2^64) keying every random draw (initial weights, samples, shuffles);
            None draws one from torch's RNG.
        dtype: float32 or float64. device: where the parameters live (training data and
            the chains follow it).

    Buffers (all in the state_dict and checkpoints): ``weights`` (n_visible, n_hidden),
    ``visible_bias`` (n_visible,), ``hidden_bias`` (n_hidden,), ``log_sigma`` (n_visible,)
    (zeros unless learned), the momentum buffers, the persistent chains (n_chains, n_hidden)
    uint8 and the running hidden activity of the sparsity term.

    Example::

        rbm = genkernels.RBM(784, 256, seed=0)
        rbm.fit(x, epochs=10, batch_size=100, method="pcd", learning_rate=0.05)
        h = rbm.transform(x)                  # (N, 256) hidden probabilities
        v = rbm.sample(16, n_steps=1000)      # (16, 784) samples from the model
    """

    weights: torch.Tensor
    visible_bias: torch.Tensor
    hidden_bias: torch.Tensor
    log_sigma: torch.Tensor
    chains: torch.Tensor
    # fit(cuda_graph=True) only, while an update runs: the (1,) int64 counter base in device
    # memory -- the half-steps draw with counters base + offset, self.offset counting from 0
    # within the update -- and the persistent buffers (chains, hidden activity) are updated
    # in place, as a captured CUDA graph needs (see _GraphedUpdate)
    _offset_base: torch.Tensor | None = None
    kind = "RBM"
    # the op a method's backend= is checked against (Model._ops_backend)
    _main_op = "rbm_half_step"

    def __init__(self, n_visible: int, n_hidden: int, visible: str = "bernoulli",
                 learn_variance: bool = False, *, seed: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.n_visible = check_int("n_visible", n_visible, 1)
        self.n_hidden = check_int("n_hidden", n_hidden, 1)
        self.visible = check_choice("visible", visible, VISIBLE_UNITS)
        if not isinstance(learn_variance, bool):
            raise TypeError(f"learn_variance must be a bool; got {type(learn_variance).__name__}")
        if learn_variance and visible != "gaussian":
            raise ValueError("learn_variance=True needs visible='gaussian'; Bernoulli units have no variance")
        self.learn_variance = learn_variance
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
        self._init_stream(seed)
        self.epochs_done = 0
        self.history: list[dict] = []
        # the latest fit call (saved in checkpoints, so resume=True can finish it): the
        # epochs it asked for, the epochs it has done, and the stream position it started at
        self._call_epochs = 0
        self._call_epochs_done = 0
        self._call_offset = 0
        # training on binary visible states (fit's state_path): None, or the backend of the
        # weight statistics while fit runs on the binary-state path
        self._binary_states: str | None = None
        g = torch.Generator().manual_seed(self.seed % 2**63)
        weights = torch.randn(self.n_visible, self.n_hidden, generator=g, dtype=torch.float64) * 0.01
        opts = {"dtype": dtype, "device": device}
        self.register_buffer("weights", weights.to(**opts))
        self.register_buffer("visible_bias", torch.zeros(self.n_visible, **opts))
        self.register_buffer("hidden_bias", torch.zeros(self.n_hidden, **opts))
        self.register_buffer("log_sigma", torch.zeros(self.n_visible, **opts))
        self._reset_training_state()

    def _reset_training_state(self) -> None:
        opts = {"dtype": self.dtype, "device": self.device}
        self.register_buffer("weights_velocity", torch.zeros(self.n_visible, self.n_hidden, **opts))
        self.register_buffer("visible_bias_velocity", torch.zeros(self.n_visible, **opts))
        self.register_buffer("hidden_bias_velocity", torch.zeros(self.n_hidden, **opts))
        self.register_buffer("log_sigma_velocity", torch.zeros(self.n_visible, **opts))
        self.register_buffer("chains", torch.zeros(0, self.n_hidden, dtype=torch.uint8, device=self.device))
        self.register_buffer("hidden_activity", torch.zeros(0, **opts))

    @property
    def sigma(self) -> torch.Tensor:
        """(n_visible,) standard deviations of Gaussian visible units (ones for Bernoulli)."""
        return self.log_sigma.exp()

    # ------------------------------------------------------------------ validation
    def _data(self, x, name: str = "x", binarize: str | None = None) -> torch.Tensor:
        """x (N, n_visible) tensor or array -> contiguous tensor in the model's dtype/device."""
        if binarize is not None:
            check_choice("binarize", binarize, BINARIZE[1:])
        if isinstance(x, np.ndarray):
            x = from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or numpy array; got {type(x).__name__}")
        x = x.detach()  # data, never part of an autograd graph (training records no history)
        if x.is_complex():
            raise TypeError(f"{name} must hold real numbers; got dtype {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.n_visible:
            raise ValueError(f"{name} must be (N, {self.n_visible}) (n_visible = {self.n_visible}); "
                             f"got shape {tuple(x.shape)}")
        if not compiling() and x.numel() and x.is_floating_point() and \
                torch.finfo(x.dtype).max > torch.finfo(self.dtype).max:
            check_fits_dtype(name, *(float(t) for t in torch.aminmax(x)), self.dtype)
        x = x.to(device=self.device, dtype=self.dtype)
        if compiling() or x.numel() == 0:
            return x.contiguous()
        # one pass: min and max propagate NaN, so finite bounds mean finite data
        lo, hi = (float(t) for t in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            row = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
            raise ValueError(f"{name} contains NaN or Inf (first at row {row})")
        if self.visible == "gaussian":
            if binarize is not None:
                raise ValueError("binarize applies to Bernoulli visible units; the model has gaussian ones")
            return x.contiguous()
        if binarize == "threshold":
            return (x > 0.5).to(self.dtype)
        if binarize == "stochastic":
            offsets = torch.arange(x.numel(), dtype=torch.int64, device=self.device).reshape(x.shape)
            u = gk_random.rand(self.seed, offsets + self._advance(x.numel()), backend=self._backend)
            return (u < x.clamp(0, 1)).to(self.dtype)
        if lo < 0 or hi > 1:
            raise ValueError(f"{name} must hold values in [0, 1] for Bernoulli visible units (binary "
                             f"data, or probabilities as scikit-learn takes them); got values in "
                             f"[{lo:g}, {hi:g}]. Scale the data, or pass binarize='threshold' "
                             "(x > 0.5) or binarize='stochastic' (Bernoulli(clip(x, 0, 1))) to fit")
        return x.contiguous()

    # ----------------------------------------------------------------- random stream
    def _advance_rows(self, rows: int, per_row: int, span: _Rows | None) -> int:
        """First counter of this process's ``rows`` rows of a draw taking ``per_row`` counters
        per row. span None: the rows are the whole draw; else they are rows [span.first,
        span.stop) of a draw over span.total rows, which moves the stream by all of them."""
        if span is None:
            return self._advance(rows * per_row)
        return gk_random.wrap_int64(self._advance(span.total * per_row) + span.first * per_row)

    # -------------------------------------------------------------------- half-steps
    def _hidden_input(self, v: torch.Tensor) -> torch.Tensor:
        return v / self.sigma if self.visible == "gaussian" else v

    def _sample_hidden(self, v: torch.Tensor, rows: _Rows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """v (B, n_visible) floats or uint8 -> (samples (B, n_hidden) uint8, probabilities).
        rows: v's global rows when v is this process's share (see :meth:`_advance_rows`).
        On the binary-state path (uint8 visible states while fit trains on binary data) the
        product is a sum of gathered weight rows (ops.rbm_half_step_binary)."""
        s = self._hidden_input(v) if v.dtype != torch.uint8 else v
        offset = self._advance_rows(v.shape[0], counters_per_row(self.n_hidden), rows)
        if self._offset_base is not None:
            return half_step(s.contiguous(), self.weights, self.hidden_bias, self.seed, offset, False, True,
                             self._backend, offset_base=self._offset_base)
        step = half_step_binary if self._binary_states is not None and v.dtype == torch.uint8 else half_step
        return step(s.contiguous(), self.weights, self.hidden_bias, self.seed, offset, False, True, self._backend)

    def _sample_visible(self, h: torch.Tensor, rows: _Rows | None = None) -> torch.Tensor:
        """h (B, n_hidden) uint8 or floats -> visible samples (B, n_visible) in the model's dtype
        (uint8 on the binary-state path, which keeps the chain's states binary). rows: h's
        global rows when h is this process's share (see :meth:`_advance_rows`)."""
        if self.visible == "bernoulli":
            offset = self._advance_rows(h.shape[0], counters_per_row(self.n_visible), rows)
            samples = half_step(h.contiguous(), self.weights, self.visible_bias, self.seed, offset, True,
                                False, self._backend, offset_base=self._offset_base)[0]
            return samples if self._binary_states is not None else samples.to(self.dtype)
        sigma = self.sigma
        mean = self.visible_bias + sigma * torch.mm(h.to(self.dtype), self.weights.T)
        return mean + sigma * self._normal(h.shape[0], self._advance_rows(h.shape[0], self.n_visible, rows))

    def _normal(self, rows: int, offset: int) -> torch.Tensor:
        """(rows, n_visible) standard normals: genkernels.random.randn (Box-Muller from
        randint4x words 0 and 1) of counters offset + b * n_visible + i."""
        counters = torch.arange(rows * self.n_visible, dtype=torch.int64, device=self.device) + offset
        return gk_random.randn(self.seed, counters.reshape(rows, self.n_visible), dtype=self.dtype,
                               backend=self._backend)

    # ------------------------------------------------------------------ evaluation
    def _hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.addmm(self.hidden_bias, self._hidden_input(v), self.weights))

    def _visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        act = torch.mm(h, self.weights.T)
        if self.visible == "bernoulli":
            return torch.sigmoid(act + self.visible_bias)
        return self.visible_bias + self.sigma * act

    @torch.no_grad()
    def transform(self, x) -> torch.Tensor:
        """Hidden probabilities p(h = 1 | x): x (N, n_visible) -> (N, n_hidden)."""
        return self._hidden_probs(self._data(x))

    @torch.no_grad()
    def free_energy(self, x) -> torch.Tensor:
        """F(x) (N,) such that p(x) = exp(-F(x)) / Z (module docstring)."""
        return self._free_energy(self._data(x))

    def _free_energy(self, v: torch.Tensor) -> torch.Tensor:
        softplus = F.softplus(torch.addmm(self.hidden_bias, self._hidden_input(v), self.weights)).sum(1)
        if self.visible == "bernoulli":
            return -(v @ self.visible_bias) - softplus
        return ((v - self.visible_bias) ** 2 / (2 * self.sigma ** 2)).sum(1) - softplus

    @torch.no_grad()
    def reconstruction_error(self, x) -> float:
        """Mean squared error between x and its mean-field reconstruction
        E[v | h = p(h | x)], over all N * n_visible entries."""
        v = self._data(x)
        if v.shape[0] == 0:
            raise ValueError("x must hold at least one row")
        return float(((v - self._visible_mean(self._hidden_probs(v))) ** 2).mean())

    @torch.no_grad()
    def score(self, x, *, backend: str | None = None) -> torch.Tensor:
        """Pseudo-log-likelihood of every row, (N,), as scikit-learn's
        BernoulliRBM.score_samples but deterministic: row r flips visible unit
        randint(seed, r) mod n_visible (the model's seed, counter = the row index) and scores
        n_visible * log sigmoid(F(x~) - F(x)). Bernoulli visible units only. backend: None
        (auto) or a backend name for the draw of the flipped units (genkernels.random's
        philox_randint4x; the same bits on every backend)."""
        if self.visible != "bernoulli":
            raise ValueError("score (pseudo-likelihood) is defined for Bernoulli visible units; "
                             "use log_likelihood_exact or free_energy for gaussian ones")
        with self._ops_backend(backend, "philox_randint4x"):
            v = self._data(x)
            rows = torch.arange(v.shape[0], dtype=torch.int64, device=self.device)
            unit = gk_random.randint(self.seed, rows, backend=self._backend).to(torch.int64) % self.n_visible
        flipped = v.clone()
        flipped[rows, unit] = 1 - flipped[rows, unit]
        return -self.n_visible * F.softplus(-(self._free_energy(flipped) - self._free_energy(v)))

    @torch.no_grad()
    def sample(self, n_samples: int, n_steps: int = 1000, seed: int | None = None,
               pt_betas=None, *, backend: str | None = None) -> torch.Tensor:
        """Visible samples (n_samples, n_visible) after n_steps Gibbs steps (v -> h -> v)
        from noise (Bernoulli(0.5) visible states, or N(b, sigma^2)). seed: None draws from
        the model's stream and advances it; an int uses (seed, offset 0) and leaves the
        model's stream alone. pt_betas: None, or the temperatures of parallel tempering (as
        :meth:`fit` takes them): n_samples chains per temperature start from Bernoulli(0.5)
        hidden states, every step is a Gibbs step at each temperature followed by the replica
        exchange, and the beta = 1 chains' visible states are returned -- chains that cross
        between the modes of a multimodal model, where plain Gibbs chains stay in one.
        backend: None (auto) or "reference", "cpu", "triton": the backend of every op the
        sampling runs (half-steps, random draws); checked first (a bad name raises
        ValueError, one that cannot run here BackendUnavailableError)."""
        n_samples = check_int("n_samples", n_samples, 0)
        n_steps = check_int("n_steps", n_steps, 0)
        betas = None if pt_betas is None else self._pt_betas(pt_betas)
        if seed is not None:
            seed = check_int("seed", seed, *SEED_RANGE)
        with self._ops_backend(backend), self._call_stream(seed):
            if betas is not None and n_steps > 0:
                rows = len(betas) * n_samples
                u = half_step_uniforms(self.seed, self._advance(rows * counters_per_row(self.n_hidden)), rows,
                                       self.n_hidden, self.device)
                chains = (u < 0.5).to(torch.uint8)
                self._swap_counts = None
                for _ in range(n_steps):
                    v, _, chains = self._pt_step(chains, betas, 1, n_samples, probs=False)
                return v
            if self.visible == "bernoulli":
                offset = self._advance(n_samples * counters_per_row(self.n_visible))
                u = half_step_uniforms(self.seed, offset, n_samples, self.n_visible, self.device)
                v = (u < 0.5).to(self.dtype)
            else:
                offset = self._advance(n_samples * self.n_visible)
                v = self.visible_bias + self.sigma * self._normal(n_samples, offset)
            for _ in range(n_steps):
                h, _ = self._sample_hidden(v)
                v = self._sample_visible(h)
        return v

    # -------------------------------------------------------------------- training
    def fit(self, x, epochs: int = 10, batch_size: int = 100, method: str = "cd", k: int = 1,
            learning_rate: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0,
            sparsity_target: float | None = None, sparsity_cost: float = 0.1,
            binarize: str | None = None, verbose: bool = True,
            monitor: str | None = "reconstruction_error", checkpoint: str | None = None,
            resume: bool = False, pt_betas=PT_DEFAULT_TEMPERATURES, distributed: bool = False,
            state_path: str = "auto", cuda_graph: bool = False, *, backend: str | None = None) -> RBM:
        """Train on x (N, n_visible) for ``epochs`` more epochs, from the model's current state.

        Args:
            x: training data (tensor or numpy array). Bernoulli units: values in [0, 1]
                (binary or probabilities), anything else raises unless ``binarize`` is
                "threshold" (x > 0.5) or "stochastic" (one Bernoulli(clip(x, 0, 1)) draw per
                entry from the model's stream, once before training).
            epochs: the epochs this call trains (an epoch visits every row once, in a fresh
                random order keyed by (seed, the model's epoch count ``epochs_done``)): a
                second ``fit(x, epochs=E)`` trains E more epochs, as Keras's ``fit`` and
                scikit-learn's ``partial_fit`` continue from the current weights, and two calls
                of E and F epochs give exactly one call of E + F. With ``resume`` they count the
                interrupted call's epochs, done and remaining (see ``checkpoint``).
            batch_size: rows per update (the last batch may be smaller); also the number of
                persistent chains for method="pcd".
            method: "cd" (CD-k), "pcd" (persistent contrastive divergence) or "pt"
                (parallel tempering: ``batch_size`` persistent chains at each inverse
                temperature of ``pt_betas``; after the k Gibbs steps of every update,
                neighbouring temperatures swap states (even pairs, then odd pairs) with the
                Metropolis probability; the negative statistics come from the beta = 1 chains).
            k: Gibbs steps per update (>= 1).
            learning_rate (> 0), momentum ([0, 1)), weight_decay (>= 0, L2 on the weights).
            sparsity_target: target mean activation of the hidden units in (0, 1), or None;
                the penalty's gradient sparsity_cost * (target - q), q a running average of
                the hidden probabilities (decay 0.9), moves the hidden biases and weights.
            verbose: a tqdm bar (plain prints without tqdm) showing the monitored metric.
            monitor: "reconstruction_error", "pseudo_likelihood" (Bernoulli) or None; computed
                after each epoch on the first 1,000 rows and appended to ``history``.
            checkpoint: a path written atomically after every epoch (and validated before
                training starts); it records the model (weights, chains, momentum, random-
                stream position) and how far this call got: ``epochs`` and the epochs done in
                it. resume: when True and that file exists, the model is loaded from it and
                finishes the call it records -- the remaining ``epochs`` minus the epochs
                that call has done -- so the result equals one uninterrupted call with the same
                arguments, bit for bit (binarize="stochastic" draws from the stream position
                the call started at). When the file does not exist, the call trains
                ``epochs`` epochs from the current state and writes it. A checkpoint whose
                call has done more epochs than ``epochs`` raises ValueError.
            pt_betas: method="pt" only: the number M >= 1 of temperatures (inverse
                temperatures 1, 1 - 1/M, ..., 1/M) or the decreasing inverse temperatures
                themselves, the first 1, all in (0, 1]. The chance of each swap is in
                ``history`` (``swap_acceptance``, one mean per neighbouring pair and epoch).
            distributed: data-parallel over the default torch.distributed process group
                (initialised from torchrun's environment when none is): x is the WHOLE
                training set on every process (the same rows in the same order; checked),
                each process trains on its share of every batch and of the persistent
                chains (of every temperature with method="pt"), with one all-reduce per
                update (module docstring). Parameters, momentum, history and random stream
                are identical on every process; the persistent chains are gathered after
                every epoch, so the model and its checkpoint (written by rank 0 alone, then
                a barrier) are complete and resume
                on any number of processes. The progress bar shows on rank 0 only.
            state_path: how the visible states enter the products. "binary": the data (after
                binarize) must be exactly 0/1 with Bernoulli visible units; they are kept as
                uint8, the visible -> hidden half-steps sum the weight rows of the active
                units (ops.rbm_half_step_binary) and the weight statistics add the rows of h
                into the weight rows of the active units -- work proportional to the ones,
                the same samples and, up to float summation order, the same parameters as
                "dense" (matrix products). "auto" (default): "binary" where it was measured
                faster -- exactly binary data on the cpu backend
                (bench/results/intel-xeon-processor-2c-energy.md) -- else "dense".
            cuda_graph: replay each full batch's update as one CUDA graph instead of launching
                its ~16 kernels one by one from Python (small batches are launch-bound on a
                GPU). Needs a CUDA model whose rbm_half_step backend is triton, method "cd" or
                "pcd", Bernoulli visible units, the dense state path and distributed=False;
                anything else raises ValueError. The first full batch's update runs eagerly
                on a side stream (compiling the kernels), then one update is captured:
                the batch is copied into a static input buffer before each replay, the
                half-steps read the random stream's position from an int64 scalar in device
                memory that the graph advances by the update's counters (the host advances
                ``offset`` alike), and the chains, momentum, hidden activity and parameters
                are updated in place. A smaller last batch runs eagerly on the same path. The
                same kernels, counters and float operations in the same order as
                cuda_graph=False: the result is the same bit for bit.
            backend: None (auto: genkernels.backends' choice, ``use_backend`` and
                GENKERNELS_BACKEND included) or "reference", "cpu", "triton": the backend of
                every op the training runs -- the half-steps, the binary-state path's
                statistics (state_path "auto" takes it where that backend is "cpu"), the
                random draws -- as ``with genkernels.use_backend(backend):`` around the call
                would make it, for this call alone. Checked before the model changes: a
                bad name raises ValueError, a backend that cannot run here (e.g. "cuda": no
                rbm_half_step kernel) BackendUnavailableError, and cuda_graph=True with a
                backend other than "triton" ValueError.
        Returns: self.
        Raises: ValueError (DivergedError) naming the epoch when training makes a parameter
            NaN or Inf, or the monitored metric is (the model is checked after every epoch,
            before the checkpoint is written): lower learning_rate, or scale the data.
        """
        epochs = check_int("epochs", epochs, 0)
        batch_size = check_int("batch_size", batch_size, 1)
        check_choice("method", method, METHODS)
        k = check_int("k", k, 1)
        betas = self._pt_betas(pt_betas) if method == "pt" else None
        lr = _check_real("learning_rate", learning_rate, 0, low_open=True)
        momentum = _check_real("momentum", momentum, 0, 1)
        weight_decay = _check_real("weight_decay", weight_decay, 0)
        if sparsity_target is not None:
            sparsity_target = _check_real("sparsity_target", sparsity_target, 0, 1, low_open=True)
            sparsity_cost = _check_real("sparsity_cost", sparsity_cost, 0)
        if monitor is not None:
            check_choice("monitor", monitor, MONITORS[1:])
        if monitor == "pseudo_likelihood" and self.visible != "bernoulli":
            raise ValueError("monitor='pseudo_likelihood' needs Bernoulli visible units")
        if resume and checkpoint is None:
            raise ValueError("resume=True needs the checkpoint path to resume from")
        check_choice("state_path", state_path, STATE_PATHS)
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be a bool; got {type(distributed).__name__} {distributed!r}")
        self._check_cuda_graph(cuda_graph, method, distributed, state_path, backend)
        with self._ops_backend(backend):
            return self._fit(x, epochs, batch_size, method, k, betas, lr, momentum, weight_decay, sparsity_target,
                             sparsity_cost, binarize, verbose, monitor, checkpoint, resume, distributed, state_path,
                             cuda_graph)

    def _fit(self, x, epochs, batch_size, method, k, betas, lr, momentum, weight_decay, sparsity_target,
             sparsity_cost, binarize, verbose, monitor, checkpoint, resume, distributed, state_path,
             cuda_graph) -> RBM:
        """:meth:`fit` on validated arguments (inside its backend's block)."""
        if distributed:
            gkdist.ensure_process_group(self.device)
        if checkpoint is not None:
            ckpt.check_output_path(checkpoint, "checkpoint")
        if resume and os.path.isfile(checkpoint):
            self._restore(self._read(checkpoint), resume_epochs=epochs)
            # the stochastic binarisation of the call being resumed: drawn again at the
            # stream position that call started at, without moving the stream
            call_done, call_offset, resumed_at = self._call_epochs_done, self._call_offset, self.offset
            self.offset = call_offset
            try:
                v_all = self._data(x, binarize=binarize)
            finally:
                self.offset = resumed_at
        else:
            call_done, call_offset = 0, self.offset
            v_all = self._data(x, binarize=binarize)
        if v_all.shape[0] == 0:
            raise ValueError("x must hold at least one row to train on; got 0 rows")
        n = v_all.shape[0]
        if distributed:
            _check_same_data(v_all)
        verbose = verbose and gkdist.rank() == 0
        v_all = self._training_states(v_all, state_path)
        update_args = (method, k, lr, momentum, weight_decay, sparsity_target, sparsity_cost, batch_size)
        graphed = _GraphedUpdate(self, update_args, batch_size) if cuda_graph else None
        self._call_epochs, self._call_epochs_done, self._call_offset = epochs, call_done, call_offset
        progress = Progress(epochs, self._call_epochs_done, verbose and self._call_epochs_done < epochs, "RBM",
                            monitor)
        # loops of small products run their BLAS calls on this thread (backends.sequential_blas)
        small = v_all.device.type == "cpu" and backends.small_products(batch_size, self.n_visible, self.n_hidden)
        try:
            with torch.no_grad(), backends.sequential_blas(small):
                while self._call_epochs_done < epochs:
                    g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epochs_done) % 2**63)
                    order = torch.randperm(n, generator=g).to(self.device)
                    groups = len(betas) if method == "pt" else 1
                    if distributed and method != "cd":
                        self._scatter_chains(batch_size, groups)
                    self._swap_counts = None
                    for v_pos, rows in _batches(v_all, order, batch_size, distributed):
                        if graphed is not None:
                            graphed(v_pos)
                        else:
                            self._update(v_pos, *update_args, betas, rows)
                    if distributed and method != "cd":
                        self._gather_chains(batch_size, groups)
                    self.epochs_done += 1
                    self._call_epochs_done += 1
                    hint = f"Lower learning_rate (now {lr:g})" + (" or momentum" if momentum else "") \
                        + (", and standardise the data (Gaussian visible units expect zero mean and unit "
                           "variance)" if self.visible == "gaussian" else "") + "."
                    check_finite_model("RBM", self.state_dict(), self.epochs_done, self._call_epochs_done, epochs,
                                       hint)
                    record = {"epoch": self.epochs_done}
                    if self._swap_counts is not None:
                        accepted, tried = self._swap_counts
                        if distributed:
                            gkdist.all_reduce_sum(accepted, tried)
                        record["swap_acceptance"] = (accepted / tried.clamp(min=1)).tolist()
                    if monitor is not None:
                        head = v_all[:MONITOR_ROWS]
                        record[monitor] = self.reconstruction_error(head) if monitor == "reconstruction_error" \
                            else float(self.score(head).mean())
                        if not math.isfinite(record[monitor]):
                            # finite parameters that cannot model the data (its scale overflows)
                            raise DivergedError(
                                f"RBM.fit diverged in epoch {self.epochs_done} (epoch {self._call_epochs_done} of "
                                f"the {epochs} of this call): the monitored {monitor} is {record[monitor]}, and "
                                f"the model after this epoch was not saved to the checkpoint. {hint}")
                    self.history.append(record)
                    if checkpoint is not None and gkdist.rank() == 0:
                        self.save(checkpoint)
                    if checkpoint is not None and distributed:
                        torch.distributed.barrier()  # the checkpoint is complete before anyone goes on
                    progress.update(record.get(monitor))
        finally:
            progress.close()
            self._binary_states = None
        return self

    def _training_states(self, v_all: torch.Tensor, state_path: str) -> torch.Tensor:
        """The training data as fit uses them: uint8 on the binary-state path (which this
        sets up, see fit's state_path), else v_all unchanged."""
        half_step_backend = backends.resolve("rbm_half_step", v_all.device, self._backend)
        if state_path == "dense" or self.visible != "bernoulli" or \
                (state_path == "auto" and half_step_backend != "cpu"):
            if state_path == "binary":
                raise ValueError("state_path='binary' needs Bernoulli visible units; the model has gaussian ones")
            return v_all
        outer_backend = "cpu" if half_step_backend == "cpu" else "reference"
        packed = pack_binary(v_all, outer_backend)
        if packed is None:
            if state_path == "binary":
                raise ValueError("state_path='binary' needs exactly binary training data (every value 0 or 1); "
                                 "got other values: pass binarize='threshold' or 'stochastic', or "
                                 "state_path='dense'")
            return v_all
        self._binary_states = outer_backend
        return packed

    def _update(self, v_pos, method, k, lr, momentum, weight_decay, sparsity_target, sparsity_cost,
                n_chains, betas=None, rows: _Rows | None = None) -> torch.Tensor:
        """One CD-k / PCD / PT update on the batch v_pos (B, n_visible); returns the negative
        visible samples of the last Gibbs step (scikit-learn's v_neg). rows: distributed,
        v_pos is this process's share of a global batch (and self.chains its share of the
        n_chains persistent chains)."""
        h_pos_samples, h_pos = self._sample_hidden(v_pos, rows)
        if method == "pt":
            neg_rows = None if rows is None else _rank_rows(n_chains)
            v_neg, h_neg = self._pt_negative_phase(betas, n_chains, k, neg_rows)
            self._apply_gradient(v_pos, h_pos, v_neg, h_neg, lr, momentum, weight_decay, sparsity_target,
                                 sparsity_cost, rows, neg_rows)
            return v_neg
        neg_rows = rows
        if method == "pcd":
            if rows is not None:
                neg_rows = _rank_rows(n_chains)
                n_chains = neg_rows.stop - neg_rows.first
            if self.chains.shape[0] != n_chains:
                self.chains = torch.zeros(n_chains, self.n_hidden, dtype=torch.uint8, device=self.device)
            chain = self.chains
        else:
            chain = h_pos_samples
        for _ in range(k):
            v_neg = self._sample_visible(chain, neg_rows)
            chain, h_neg = self._sample_hidden(v_neg, neg_rows)
        if method == "pcd":
            if self._offset_base is not None:
                self.chains.copy_(chain)  # CUDA graph: the persistent buffer, updated in place
            else:
                self.chains = chain
        self._apply_gradient(v_pos, h_pos, v_neg, h_neg, lr, momentum, weight_decay, sparsity_target,
                             sparsity_cost, rows, neg_rows)
        return v_neg

    def _apply_gradient(self, v_pos, h_pos, v_neg, h_neg, lr, momentum, weight_decay, sparsity_target,
                        sparsity_cost, rows: _Rows | None = None, neg_rows: _Rows | None = None) -> None:
        """Every parameter += lr * (mean positive - mean negative statistic) (through the
        velocity with momentum). The weights' statistics go straight into the weights (or
        the velocity) as two accumulating products: no gradient temporary, no extra pass.
        rows / neg_rows: distributed, this process's shares of the positive and negative rows;
        the means are then :meth:`_all_reduced_means`."""
        if v_pos.dtype == torch.uint8 and rows is not None:
            # distributed: the statistics are summed per process and all-reduced as floats
            v_pos, v_neg = v_pos.to(self.dtype), v_neg.to(self.dtype)
        n_pos, n_neg = v_pos.shape[0], v_neg.shape[0]
        if v_pos.dtype == torch.uint8:
            self._apply_binary_gradient(v_pos, h_pos, v_neg, h_neg, lr, momentum, weight_decay, sparsity_target,
                                        sparsity_cost)
            return
        gaussian = self.visible == "gaussian"
        x_pos, x_neg = (self._hidden_input(v_pos), self._hidden_input(v_neg)) if gaussian else (v_pos, v_neg)
        means = None
        if rows is not None:
            means = self._all_reduced_means(v_pos, x_pos, h_pos, v_neg, x_neg, h_neg, rows.total, neg_rows.total,
                                            sparsity_target is not None)
            grad_c, grad_b, grad_log_sigma = means["hidden"], means["visible"], means.get("log_sigma")
        else:
            grad_c = h_pos.mean(0) - h_neg.mean(0)
            if gaussian:
                var = self.sigma ** 2
                grad_b = ((v_pos - self.visible_bias) / var).mean(0) - ((v_neg - self.visible_bias) / var).mean(0)
            else:
                grad_b = v_pos.mean(0) - v_neg.mean(0)
            grad_log_sigma = None
            if gaussian and self.learn_variance:
                def stat(v, x, h):
                    return self._log_sigma_statistic(v, x, h, var).mean(0)
                grad_log_sigma = stat(v_pos, x_pos, h_pos) - stat(v_neg, x_neg, h_neg)
        penalty = None
        if sparsity_target is not None:
            q_batch = h_pos.mean(0) if means is None else means["hidden_positive"]
            penalty = self._sparsity_penalty(q_batch, sparsity_target, sparsity_cost)
            grad_c = grad_c + penalty

        step_w = self._weight_step(lr, momentum, weight_decay)
        if penalty is not None:
            x_pos_mean = x_pos.mean(0) if means is None else means["input_positive"]
            step_w.add_(torch.outer(x_pos_mean, penalty), alpha=lr)
        if means is None:
            step_w.addmm_(x_pos.T, h_pos, alpha=lr / n_pos)
            step_w.addmm_(x_neg.T, h_neg, alpha=-lr / n_neg)
        else:
            step_w.add_(means["weights"], alpha=lr)
        if momentum:
            self.weights.add_(step_w)
        grads = [(self.hidden_bias, self.hidden_bias_velocity, grad_c),
                 (self.visible_bias, self.visible_bias_velocity, grad_b)]
        if grad_log_sigma is not None:
            grads.append((self.log_sigma, self.log_sigma_velocity, grad_log_sigma))
        for param, velocity, grad in grads:
            if momentum:
                velocity.mul_(momentum).add_(grad, alpha=lr)
                param.add_(velocity)
            else:
                param.add_(grad, alpha=lr)

    def _log_sigma_statistic(self, v, x, h, var) -> torch.Tensor:
        """-dF/dlog(sigma_i) per row, (B, n_visible): (v_i - b_i)^2 / sigma_i^2 - (v_i / sigma_i) (W p)_i."""
        return (v - self.visible_bias) ** 2 / var - x * torch.mm(h, self.weights.T)

    def _sparsity_penalty(self, q_batch, sparsity_target: float, sparsity_cost: float) -> torch.Tensor:
        """Update the running hidden activity q (decay 0.9) with the batch's mean hidden
        probabilities and return the penalty's gradient sparsity_cost * (target - q)."""
        if self.hidden_activity.shape[0] != self.n_hidden:
            self.hidden_activity = torch.full_like(q_batch, sparsity_target)
        if self._offset_base is not None:  # CUDA graph: the persistent buffer, updated in place
            self.hidden_activity.copy_(0.9 * self.hidden_activity + 0.1 * q_batch)
        else:
            self.hidden_activity = 0.9 * self.hidden_activity + 0.1 * q_batch
        return sparsity_cost * (sparsity_target - self.hidden_activity)

    def _weight_step(self, lr: float, momentum: float, weight_decay: float) -> torch.Tensor:
        """The tensor the weight statistics are added into: the velocity scaled by momentum
        (then added to the weights), or the weights themselves; weight decay already in."""
        step_w = self.weights_velocity.mul_(momentum) if momentum else self.weights
        if weight_decay:
            step_w.add_(self.weights, alpha=-lr * weight_decay)
        return step_w

    def _apply_binary_gradient(self, v_pos, h_pos, v_neg, h_neg, lr, momentum, weight_decay, sparsity_target,
                               sparsity_cost) -> None:
        """_apply_gradient for uint8 (binary) visible states of Bernoulli units: the weight
        statistics v^T h become sums of h's rows scattered into the weight rows of the
        active visible units (ops' binary_outer_add_), the means of v counts of ones."""
        n_pos, n_neg = v_pos.shape[0], v_neg.shape[0]
        # grad_b = mean(v_pos) - mean(v_neg), counted by the weight-statistics kernel below;
        # the sparsity penalty needs mean(v_pos) before it
        grad_b = torch.zeros(self.n_visible, dtype=self.dtype, device=self.device)
        grad_c = h_pos.mean(0) - h_neg.mean(0)
        penalty = None
        if sparsity_target is not None:
            penalty = self._sparsity_penalty(h_pos.mean(0), sparsity_target, sparsity_cost)
            grad_c = grad_c + penalty
        step_w = self._weight_step(lr, momentum, weight_decay)
        if penalty is not None:
            step_w.add_(torch.outer(v_pos.sum(0, dtype=self.dtype) / n_pos, penalty), alpha=lr)
        binary_outer_add_(step_w, v_pos, h_pos.contiguous(), lr / n_pos, grad_b, 1.0 / n_pos, self._binary_states)
        binary_outer_add_(step_w, v_neg, h_neg.contiguous(), -lr / n_neg, grad_b, -1.0 / n_neg,
                          self._binary_states)
        if momentum:
            self.weights.add_(step_w)
        for param, velocity, grad in ((self.hidden_bias, self.hidden_bias_velocity, grad_c),
                                      (self.visible_bias, self.visible_bias_velocity, grad_b)):
            if momentum:
                velocity.mul_(momentum).add_(grad, alpha=lr)
                param.add_(velocity)
            else:
                param.add_(grad, alpha=lr)

    # ----------------------------------------------------------------- persistence
    def _config(self) -> dict:
        return {"n_visible": self.n_visible, "n_hidden": self.n_hidden, "visible": self.visible,
                "learn_variance": self.learn_variance, "seed": self.seed,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def _payload(self) -> dict:
        """The checkpoint fields of this model (also one layer of a DBN's checkpoint)."""
        return {"config": self._config(),
                "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                "offset": self.offset, "epochs_done": self.epochs_done, "history": list(self.history),
                "call_epochs": self._call_epochs, "call_epochs_done": self._call_epochs_done,
                "call_offset": self._call_offset}

    def _state_spec(self, state: dict) -> dict[str, tuple[tuple, torch.dtype]]:
        """name -> (shape, dtype) of every buffer a checkpoint's state must hold: the
        model's own, except the row counts that training sets (the persistent chains: any
        number of rows; the running hidden activity: none before the sparsity term runs)."""
        spec = {name: (tuple(t.shape), t.dtype) for name, t in self.state_dict().items()}
        spec["chains"] = ((ckpt.leading_rows(state.get("chains")), self.n_hidden), torch.uint8)
        activity = state.get("hidden_activity")
        empty = isinstance(activity, torch.Tensor) and tuple(activity.shape) == (0,)
        spec["hidden_activity"] = ((0 if empty else self.n_hidden,), self.dtype)
        return spec

    def _restore(self, fields: ckpt.Fields, resume_epochs: int | None = None) -> None:
        """Validate every field of a checkpoint (errors name the field, with the prefix of a
        DBN's layer in front) and only then load it into this model. resume_epochs: fit's
        epochs when it resumes the call the checkpoint records (which must not have done more)."""
        cfg = fields.get("config", dict)
        if cfg != self._config():
            raise ValueError(f"checkpoint: it holds an RBM with {cfg}, this model is {self._config()}")
        state = fields.get("state", dict, "a dict of tensors")
        fields.tensors("state", self._state_spec(state), values={"chains": (0, 1)})
        offset = fields.offset()
        epochs_done = fields.int("epochs_done", 0)
        history = fields.records("history")
        if "call_epochs_done" in fields or "call_epochs" in fields:
            call_done = fields.int("call_epochs_done", 0, epochs_done)
            call_epochs = fields.int("call_epochs", call_done)
            call_offset = fields.offset("call_offset")
        else:
            # written before checkpoints recorded the call: read as one call from scratch
            # (epochs counted the total then), so resume=True trains up to ``epochs`` in all
            call_done = call_epochs = epochs_done
            call_offset = offset
        if resume_epochs is not None and call_done > resume_epochs:
            raise ValueError(f"epochs: the checkpoint {str(fields.path)!r} records a call that has done {call_done} "
                             f"epochs; resume=True finishes that call, and epochs counts its epochs (done and "
                             f"remaining), so it must be >= {call_done}; got {resume_epochs}")
        for name, value in state.items():
            self._buffers[name] = value.to(self.device)
        self.offset, self.epochs_done, self.history = offset, epochs_done, history
        self._call_epochs, self._call_epochs_done, self._call_offset = call_epochs, call_done, call_offset

    @classmethod
    def _from_config(cls, fields: ckpt.Fields, device=None) -> RBM:
        """A new model of the validated ``config`` field of a checkpoint."""
        cfg = fields.sub("config")
        return cls(cfg.int("n_visible", 1), cfg.int("n_hidden", 1), cfg.choice("visible", VISIBLE_UNITS),
                   cfg.get("learn_variance", bool), seed=cfg.seed(), dtype=cfg.dtype(), device=device)

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> RBM:
        """Every field validated (shapes, dtypes, finite values, binary chains, ranges)."""
        model = cls._from_config(fields, device)
        model._restore(fields)
        return model

    def forward(self, x) -> torch.Tensor:
        """Hidden probabilities (:meth:`transform`)."""
        return self.transform(x)

    def extra_repr(self) -> str:
        return (f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, visible={self.visible!r}"
                + (", learn_variance=True" if self.learn_variance else ""))


def _batches(v_all: torch.Tensor, order: torch.Tensor, batch_size: int, distributed: bool):
    """Yield (batch, rows) for one epoch: the batches of batch_size rows of v_all in the
    shuffled ``order``; distributed, this process's share of each batch and its _Rows.
    Rows are gathered GATHER_BATCHES batches at a time: one large copy instead of a small
    gather per batch (each batch is then a view)."""
    n = order.shape[0]
    span = batch_size * GATHER_BATCHES
    for chunk_start in range(0, n, span):
        starts = range(chunk_start, min(n, chunk_start + span), batch_size)
        if not distributed:
            chunk = v_all.index_select(0, order[chunk_start:chunk_start + span])
            for start in starts:
                yield chunk[start - chunk_start:start - chunk_start + batch_size], None
            continue
        shares = [_rank_rows(min(batch_size, n - start)) for start in starts]
        chunk = v_all.index_select(0, torch.cat([order[start + r.first:start + r.stop]
                                                 for start, r in zip(starts, shares)]))
        at = 0
        for r in shares:
            yield chunk[at:at + r.stop - r.first], r
            at += r.stop - r.first


def _check_same_data(v: torch.Tensor) -> None:
    """Distributed fit takes the whole data set on every process: compare the row count, the
    sum and a row-order-weighted sum (float64) across processes (one all-reduce of [t, -t]
    with MAX)."""
    n = v.shape[0]
    row_sums = v.sum(1, dtype=torch.float64)
    weights = torch.arange(1, n + 1, dtype=torch.float64, device=v.device)
    mine = torch.stack([torch.tensor(float(n), dtype=torch.float64, device=v.device), row_sums.sum(),
                        (row_sums * weights).sum()])
    both = torch.cat([mine, -mine])
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
    if not torch.equal(both[:3], -both[3:]):
        raise ValueError(f"x: distributed=True trains on the whole data set given to every process (the "
                         f"same rows in the same order); the processes hold different data (row counts "
                         f"from {int(-both[3])} to {int(both[0])}, or different values)")

