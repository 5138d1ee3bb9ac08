"""Partition-function estimators of an RBM: exact enumeration over the smaller layer
(:meth:`log_partition_exact`, up to 2^20 states) and annealed importance sampling
(:meth:`log_partition_ais`, Salakhutdinov and Murray 2008), and the log-likelihoods they
give."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import check_choice, check_int
from ..random import SEED_RANGE
from .rbm_ops import half_step
from .rbm_reference import counters_per_row, half_step_uniforms

AIS_SCHEDULES = ("linear", "piecewise")
# exact enumeration over the smaller layer: 2^n states, n at most this
MAX_ENUMERATED_UNITS = 20
ENUMERATION_CHUNK = 1 << 14


class PartitionEstimators:
    """The RBM's partition-function estimators (a base of :class:`genkernels.RBM`)."""

    @torch.no_grad()
    def log_partition_exact(self, enumerate_layer: str | None = None) -> float:
        """log Z by enumerating the 2^n states of the smaller layer (n <= 20; the hidden
        layer for Gaussian visible units), summed in chunks with logsumexp in float64.
        enumerate_layer: "visible" or "hidden" to choose the layer (None: the smaller one)."""
        if enumerate_layer is None:
            enumerate_layer = "visible" if self.visible == "bernoulli" and self.n_visible < self.n_hidden \
                else "hidden"
        check_choice("enumerate_layer", enumerate_layer, ("visible", "hidden"))
        if enumerate_layer == "visible" and self.visible != "bernoulli":
            raise ValueError("gaussian visible units are continuous: enumerate_layer must be 'hidden'")
        n = self.n_visible if enumerate_layer == "visible" else self.n_hidden
        if n > MAX_ENUMERATED_UNITS:
            raise ValueError(f"log_partition_exact enumerates 2^{n} states of the {enumerate_layer} layer; "
                             f"at most {MAX_ENUMERATED_UNITS} units are allowed")
        w = self.weights.to(torch.float64)
        b = self.visible_bias.to(torch.float64)
        c = self.hidden_bias.to(torch.float64)
        sigma = self.sigma.to(torch.float64)
        bits = torch.arange(n, device=self.device)
        parts = []
        for start in range(0, 2 ** n, ENUMERATION_CHUNK):
            idx = torch.arange(start, min(2 ** n, start + ENUMERATION_CHUNK), device=self.device)
            states = ((idx[:, None] >> bits) & 1).to(torch.float64)
            if enumerate_layer == "visible":
                parts.append(states @ b + F.softplus(torch.addmm(c, states, w)).sum(1))
            elif self.visible == "bernoulli":
                parts.append(states @ c + F.softplus(torch.addmm(b, states, w.T)).sum(1))
            else:
                a = states @ w.T  # (S, n_visible)
                parts.append(states @ c + (b * a / sigma + a ** 2 / 2).sum(1))
        log_z = torch.logsumexp(torch.cat(parts), 0)
        if self.visible == "gaussian":
            log_z = log_z + (torch.log(sigma) + 0.5 * math.log(2 * math.pi)).sum()
        return float(log_z)

    @torch.no_grad()
    def log_likelihood_exact(self, x) -> torch.Tensor:
        """log p(x) = -F(x) - log Z per row, (N,) float64 (log Z by enumeration: see
        :meth:`log_partition_exact`)."""
        v = self._data(x)
        return -self._free_energy(v).to(torch.float64) - self.log_partition_exact()

    # ---------------------------------------------------- annealed importance sampling
    @torch.no_grad()
    def log_partition_ais(self, n_chains: int = 100, n_betas: int = 10000, *, betas=None,
                          schedule: str = "linear", base_visible_bias=None,
                          seed: int | None = None, backend: str | None = None) -> tuple[float, float]:
        """log Z estimated by annealed importance sampling (Salakhutdinov & Murray, 2008):
        (estimate, standard error) in nats. Bernoulli visible units only.

        The base model A has zero weights, zero hidden biases and visible biases b_A
        (``base_visible_bias``, (n_visible,); default zeros: uniform visible units; the
        base-rate model of the paper takes b_A = log(p / (1 - p)) of the data's mean p),
        so log Z_A = n_hidden log 2 + sum_i softplus(b_A,i) and it is sampled exactly. The
        intermediate distributions p_beta(v) ∝ exp(-F_beta(v)),

            -F_beta(v) = ((1 - beta) b_A + beta b).v + sum_j softplus(beta (c + v W)_j),

        run from beta_0 = 0 (the base) to beta_K = 1 (the model). Each of ``n_chains``
        independent chains (vectorised: one batch) starts from v_0 ~ p_A; for k = 1..K it
        adds F_{beta_{k-1}}(v) - F_{beta_k}(v) to its log weight and then (k < K) makes one
        Gibbs step v -> h -> v at beta_k: the fused rbm_half_step with weights beta_k W and
        hidden bias beta_k c, then visible bias (1 - beta_k) b_A + beta_k b. Log weights are
        accumulated in float64. The estimate is log mean exp(log w) + log Z_A (logsumexp);
        its standard error by the delta method is sd(w) / (sqrt(n) mean(w)), computed from
        the normalised weights w / mean(w) = exp(log w - log mean exp(log w)) (sd with
        n - 1), so nothing overflows. The estimate of Z is unbiased; log of it is biased
        low by about half the squared standard error.

        Args:
            n_chains: independent AIS runs (>= 2, for the standard error).
            n_betas: K, the number of transitions (>= 1): K + 1 inverse temperatures
                from 0 to 1. K = 1 is plain importance sampling from the base model.
            betas: the schedule itself instead (1-D, non-decreasing, from exactly 0 to
                exactly 1, at least 2 entries); overrides n_betas and schedule. A tensor,
                array, list or tuple given as n_betas is taken as this schedule.
            schedule: "linear" (evenly spaced) or "piecewise" (the paper's spacing: 1/15 of
                the steps over [0, 0.5], 4/15 over [0.5, 0.9], 10/15 over [0.9, 1]).
            seed: None draws from the model's stream and advances it; an int uses
                (seed, offset 0) and leaves the model's stream alone. Draws: the base
                samples take n_chains * ceil(n_visible / 4) counters, each half-step the
                counters of genkernels.ops.rbm_half_step.
            backend: None (auto) or "reference", "cpu", "triton": the backend of the
                half-steps (checked first: a bad name raises ValueError, one that cannot run
                here BackendUnavailableError).
        """
        if self.visible != "bernoulli":
            raise NotImplementedError("log_partition_ais supports Bernoulli visible units; the model has "
                                      "gaussian ones (log_partition_exact enumerates the hidden layer)")
        n_chains = check_int("n_chains", n_chains, 2)
        beta = self._ais_betas(n_betas, betas, schedule)
        b_a = self._ais_base_bias(base_visible_bias)
        if seed is not None:
            seed = check_int("seed", seed, *SEED_RANGE)
        with self._ops_backend(backend), self._call_stream(seed):
            log_w = self._ais_log_weights(n_chains, beta, b_a)
        log_z_a = self.n_hidden * math.log(2.0) + float(F.softplus(b_a.to(torch.float64)).sum())
        log_mean = torch.logsumexp(log_w, 0) - math.log(n_chains)
        ratio = torch.exp(log_w - log_mean)  # w / mean(w), mean 1
        std_err = float(torch.sqrt(((ratio - 1.0) ** 2).sum() / (n_chains - 1) / n_chains))
        return float(log_mean) + log_z_a, std_err

    @torch.no_grad()
    def log_likelihood_ais(self, x, **ais_kwargs) -> tuple[float, float]:
        """(mean log p(x) per row, error bar) in nats with log Z from :meth:`log_partition_ais`
        (``ais_kwargs`` are passed on, ``backend`` included): -mean(F(x)) - log Z. The free
        energies are exact, so the error bar is the standard error of the log Z estimate."""
        v = self._data(x)
        if v.shape[0] == 0:
            raise ValueError("x must hold at least one row")
        if self.visible != "bernoulli":
            raise NotImplementedError("log_likelihood_ais supports Bernoulli visible units; the model has "
                                      "gaussian ones")
        log_z, std_err = self.log_partition_ais(**ais_kwargs)
        return -float(self._free_energy(v).to(torch.float64).mean()) - log_z, std_err

    def _ais_betas(self, n_betas, betas, schedule: str) -> torch.Tensor:
        """The inverse temperatures beta_0 = 0 <= ... <= beta_K = 1, float64 on the CPU."""
        if betas is None and isinstance(n_betas, (torch.Tensor, np.ndarray, list, tuple)):
            betas = n_betas  # the schedule passed in n_betas's place
        if betas is not None:
            if isinstance(betas, np.ndarray):
                betas = torch.from_numpy(betas)
            if not isinstance(betas, torch.Tensor):
                try:
                    betas = torch.tensor(betas, dtype=torch.float64)
                except (TypeError, ValueError, RuntimeError):
                    raise TypeError(f"betas must be a 1-D tensor, array or sequence of reals; got "
                                    f"{type(betas).__name__}") from None
            if betas.is_complex() or betas.dtype == torch.bool:
                raise TypeError(f"betas must hold real numbers; got dtype {betas.dtype}")
            beta = betas.detach().to("cpu", torch.float64)
            if beta.dim() != 1 or beta.shape[0] < 2:
                raise ValueError(f"betas must be 1-D with at least 2 entries (0 and 1); got shape "
                                 f"{tuple(beta.shape)}")
            if not bool(torch.isfinite(beta).all()):
                raise ValueError("betas contains NaN or Inf")
            if float(beta[0]) != 0.0 or float(beta[-1]) != 1.0:
                raise ValueError(f"betas must start at 0 and end at 1; got {float(beta[0])!r} ... "
                                 f"{float(beta[-1])!r}")
            if bool((beta[1:] < beta[:-1]).any()):
                k = int((beta[1:] < beta[:-1]).nonzero()[0, 0])
                raise ValueError(f"betas must be non-decreasing; got betas[{k}] = {float(beta[k])!r} > "
                                 f"betas[{k + 1}] = {float(beta[k + 1])!r}")
            return beta
        n = check_int("n_betas", n_betas, 1)
        check_choice("schedule", schedule, AIS_SCHEDULES)
        if schedule == "linear":
            return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
        # the paper's 1000 / 4000 / 10000 spacing over [0, .5] / [.5, .9] / [.9, 1], scaled to n
        n1 = round(n / 15)
        n2 = round(n * 5 / 15) - n1
        n3 = n - n1 - n2
        parts = [torch.zeros(1, dtype=torch.float64)]
        for count, lo, hi in ((n1, 0.0, 0.5), (n2, 0.5, 0.9), (n3, 0.9, 1.0)):
            if count:
                parts.append(torch.linspace(lo, hi, count + 1, dtype=torch.float64)[1:])
        beta = torch.cat(parts)
        beta[-1] = 1.0
        return beta

    def _ais_base_bias(self, base_visible_bias) -> torch.Tensor:
        if base_visible_bias is None:
            return torch.zeros(self.n_visible, dtype=self.dtype, device=self.device)
        if isinstance(base_visible_bias, np.ndarray):
            base_visible_bias = torch.from_numpy(base_visible_bias)
        if not isinstance(base_visible_bias, torch.Tensor):
            raise TypeError(f"base_visible_bias must be a torch.Tensor or numpy array of shape "
                            f"({self.n_visible},); got {type(base_visible_bias).__name__}")
        if base_visible_bias.is_complex() or base_visible_bias.dtype == torch.bool:
            raise TypeError(f"base_visible_bias must hold real numbers; got dtype {base_visible_bias.dtype}")
        if tuple(base_visible_bias.shape) != (self.n_visible,):
            raise ValueError(f"base_visible_bias must be ({self.n_visible},) (n_visible = {self.n_visible}); "
                             f"got shape {tuple(base_visible_bias.shape)}")
        b_a = base_visible_bias.detach().to(device=self.device, dtype=self.dtype).contiguous()
        if not bool(torch.isfinite(b_a).all()):
            raise ValueError("base_visible_bias contains NaN or Inf")
        return b_a

    def _ais_log_weights(self, n_chains: int, beta: torch.Tensor, b_a: torch.Tensor) -> torch.Tensor:
        """(n_chains,) float64 log importance weights of the schedule beta (module stream)."""
        w64 = self.weights.to(torch.float64)
        c64 = self.hidden_bias.to(torch.float64)
        db64 = (self.visible_bias - b_a).to(torch.float64)
        offset = self._advance(n_chains * counters_per_row(self.n_visible))
        u = half_step_uniforms(self.seed, offset, n_chains, self.n_visible, self.device)
        v = (u < torch.sigmoid(b_a)).to(torch.uint8)
        a = torch.addmm(c64, v.to(torch.float64), w64)  # (n_chains, n_hidden): c + v W
        log_w = torch.zeros(n_chains, dtype=torch.float64, device=self.device)
        betas = beta.tolist()
        last = len(betas) - 1
        for k in range(1, last + 1):
            prev, cur = betas[k - 1], betas[k]
            if cur != prev:
                log_w += (cur - prev) * (v.to(torch.float64) @ db64) \
                    + (F.softplus(cur * a) - F.softplus(prev * a)).sum(1)
            if k == last:
                break
            w_k = (self.weights * cur).contiguous()
            h, _ = half_step(v, w_k, (self.hidden_bias * cur).contiguous(), self.seed,
                             self._advance(n_chains * counters_per_row(self.n_hidden)), False, False,
                             self._backend)
            bias_k = ((1.0 - cur) * b_a + cur * self.visible_bias).contiguous()
            v, _ = half_step(h, w_k, bias_k, self.seed,
                             self._advance(n_chains * counters_per_row(self.n_visible)), True, False,
                             self._backend)
            a = torch.addmm(c64, v.to(torch.float64), w64)
        return log_w
