"""Parallel tempering for RBM training (``RBM.fit(method="pt")``): M replicas at inverse
temperatures 1 = beta_0 > ... > beta_{M-1} > 0, each a Gibbs chain of the tempered model
(the energy times beta), and swaps of neighbouring replicas accepted with the Metropolis
probability min(1, exp((beta_i - beta_j) (E_i - E_j))), drawn from the model's stream."""

from __future__ import annotations

import itertools
import math
import numbers

import torch

from .. import random as gk_random
from .._checks import check_int
from ._train import check_real as _check_real
from .rbm_distributed import _Rows
from .rbm_ops import half_step
from .rbm_reference import counters_per_row

# default number of inverse temperatures 1, 1 - 1/M, ..., 1/M
PT_DEFAULT_TEMPERATURES = 10


class ParallelTempering:
    """The RBM's parallel-tempering negative phase (a base of :class:`genkernels.RBM`)."""

    def _pt_betas(self, pt_betas) -> list[float]:
        """pt_betas (an int M or a sequence) -> the inverse temperatures [1, ..., > 0]."""
        if isinstance(pt_betas, numbers.Integral) and not isinstance(pt_betas, bool):
            m = check_int("pt_betas", pt_betas, 1)
            return [1.0 - i / m for i in range(m)]
        if isinstance(pt_betas, torch.Tensor):
            pt_betas = pt_betas.tolist()
        if isinstance(pt_betas, (str, bytes)) or not hasattr(pt_betas, "__len__"):
            raise TypeError("pt_betas must be an int (the number of temperatures) or a sequence of "
                            f"inverse temperatures; got {type(pt_betas).__name__}")
        betas = [_check_real("pt_betas", b, 0, 1, low_open=True, high_open=False) for b in pt_betas]
        if not betas or betas[0] != 1.0:
            raise ValueError(f"pt_betas must start at inverse temperature 1 (the model itself); got {betas}")
        if any(b >= a for a, b in itertools.pairwise(betas)):
            raise ValueError(f"pt_betas must be strictly decreasing; got {betas}")
        return betas

    def _tempered_visible(self, h: torch.Tensor, beta: float, rows: _Rows | None = None) -> torch.Tensor:
        """Visible samples of p_beta(v | h), p_beta(v, h) proportional to exp(-beta E(v, h))."""
        if beta == 1.0:
            return self._sample_visible(h, rows)
        if self.visible == "bernoulli":
            offset = self._advance_rows(h.shape[0], counters_per_row(self.n_visible), rows)
            return half_step((h.to(self.dtype) * beta).contiguous(), self.weights,
                             (self.visible_bias * beta).contiguous(), self.seed, offset, True,
                             False, self._backend)[0].to(self.dtype)
        sigma = self.sigma
        mean = self.visible_bias + sigma * torch.mm(h.to(self.dtype), self.weights.T)
        noise = self._normal(h.shape[0], self._advance_rows(h.shape[0], self.n_visible, rows))
        return mean + (sigma / math.sqrt(beta)) * noise

    def _tempered_hidden(self, v: torch.Tensor, beta: float, probs: bool, rows: _Rows | None = None):
        """(hidden samples uint8, probabilities or None) of p_beta(h | v)."""
        if beta == 1.0:
            return self._sample_hidden(v, rows)
        s = (self._hidden_input(v) * beta).contiguous()
        samples, p = half_step(s, self.weights, (self.hidden_bias * beta).contiguous(), self.seed,
                               self._advance_rows(v.shape[0], counters_per_row(self.n_hidden), rows), False,
                               probs, self._backend)
        return samples, p

    def _energy(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B,) float64 joint energies E(v, h) of visible v (B, n_visible), hidden h (B, n_hidden)."""
        w = self.weights.to(torch.float64)
        v64, h64 = v.to(torch.float64), h.to(torch.float64)
        x = v64 / self.sigma.to(torch.float64) if self.visible == "gaussian" else v64
        inter = ((x @ w) * h64).sum(1) + h64 @ self.hidden_bias.to(torch.float64)
        b = self.visible_bias.to(torch.float64)
        if self.visible == "gaussian":
            return ((v64 - b) ** 2 / (2 * self.sigma.to(torch.float64) ** 2)).sum(1) - inter
        return -(v64 @ b) - inter

    def _pt_step(self, chains: torch.Tensor, betas: list[float], k: int, n_chains: int,
                 probs: bool = True, rows: _Rows | None = None):
        """k Gibbs steps of every temperature's chains (hidden states (M * n_chains,
        n_hidden) uint8, temperature m in rows m*n_chains...), then replica exchange.
        Returns (v, h probabilities or None) of the beta = 1 chains before the exchange and
        the new chains. Random stream: temperature m's k steps in turn (beta = 1 exactly as
        PCD), then (M - 1) * C counters of swap uniforms, pair p (temperatures p and p + 1)
        and chain c at counter p * C + c, C the number of chains per temperature. rows:
        distributed, these n_chains are chains [rows.first, rows.stop) of rows.total, and
        every draw is keyed by the global chain index (a swap only involves one chain index,
        so processes exchange nothing)."""
        m = len(betas)
        vs, hs = [], []
        v1 = p1 = None
        for t, beta in enumerate(betas):
            h = chains[t * n_chains:(t + 1) * n_chains]
            for _ in range(k):
                v = self._tempered_visible(h, beta, rows)
                h, p = self._tempered_hidden(v, beta, probs and t == 0, rows)
            if t == 0:
                v1, p1 = v, p
            vs.append(v)
            hs.append(h)
        if m > 1:
            energy = torch.stack([self._energy(v, h) for v, h in zip(vs, hs)])  # (M, n_chains)
            total, first = (n_chains, 0) if rows is None else (rows.total, rows.first)
            base = self._advance((m - 1) * total)
            counters = torch.arange(m - 1, dtype=torch.int64, device=self.device)[:, None] * total \
                + torch.arange(first, first + n_chains, dtype=torch.int64, device=self.device)[None, :]
            log_u = torch.log(gk_random.rand(self.seed, counters + base, backend=self._backend)
                              .to(torch.float64))  # (M - 1, n_chains)
            beta_t = torch.tensor(betas, dtype=torch.float64, device=self.device)
            h_all = torch.stack(hs)
            accepted = torch.zeros(m - 1, dtype=torch.float64, device=self.device)
            for parity in (0, 1):  # even pairs (0, 1), (2, 3), ... then odd pairs (1, 2), ...
                lo = torch.arange(parity, m - 1, 2, device=self.device)
                if lo.numel() == 0:
                    continue
                hi = lo + 1
                # accept with min(1, exp((beta_lo - beta_hi) (E_lo - E_hi)))
                delta = (beta_t[lo] - beta_t[hi])[:, None] * (energy[lo] - energy[hi])
                swap = log_u[lo] < delta  # (pairs, n_chains)
                accepted[lo] = swap.to(torch.float64).sum(1)
                e_lo, e_hi = energy[lo], energy[hi]
                energy[lo], energy[hi] = torch.where(swap, e_hi, e_lo), torch.where(swap, e_lo, e_hi)
                s3 = swap[:, :, None]
                h_lo, h_hi = h_all[lo], h_all[hi]
                h_all[lo], h_all[hi] = torch.where(s3, h_hi, h_lo), torch.where(s3, h_lo, h_hi)
            if self._swap_counts is None:
                self._swap_counts = (torch.zeros_like(accepted), torch.zeros_like(accepted))
            self._swap_counts[0].add_(accepted)
            self._swap_counts[1].add_(n_chains)
            chains = h_all.reshape(m * n_chains, self.n_hidden)
        else:
            chains = hs[0]
        return v1, p1, chains

    _swap_counts = None

    def _pt_negative_phase(self, betas: list[float], n_chains: int, k: int, rows: _Rows | None = None):
        """The beta = 1 chains' (v, h probabilities) after one PT step of the persistent
        chains (n_chains per temperature, or this process's share ``rows`` of them)."""
        if rows is not None:
            n_chains = rows.stop - rows.first
        if self.chains.shape[0] != len(betas) * n_chains:
            self.chains = torch.zeros(len(betas) * n_chains, self.n_hidden, dtype=torch.uint8,
                                      device=self.device)
        v_neg, h_neg, self.chains = self._pt_step(self.chains, betas, k, n_chains, rows=rows)
        return v_neg, h_neg
