"""Data-parallel RBM training (``RBM.fit(distributed=True)``): each process's share of the
rows of a half-step or an update (:class:`_Rows`), the all-reduced statistics of an update,
and the scatter and gather of the persistent chains. The layout is the one
genkernels/boltzmann/rbm.py's module docstring states under "Data-parallel training"."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import distributed as gkdist


class _Rows(NamedTuple):
    """This process's rows [first, stop) of a half-step or update over ``total`` rows."""
    first: int
    stop: int
    total: int


def _rank_rows(total: int) -> _Rows:
    """The contiguous share of this process (rank r of N) of ``total`` rows:
    [total r // N, total (r + 1) // N)."""
    r, n = gkdist.rank(), gkdist.world_size()
    return _Rows(total * r // n, total * (r + 1) // n, total)


class DistributedChains:
    """The RBM's data-parallel pieces (a base of :class:`genkernels.RBM`)."""

    def _all_reduced_means(self, v_pos, x_pos, h_pos, v_neg, x_neg, h_neg, n_pos: int, n_neg: int,
                           sparsity: bool) -> dict[str, torch.Tensor]:
        """Distributed: the update's mean statistics over the global batch (n_pos rows) and
        negative phase (n_neg rows) from this process's rows: each process sums its rows,
        divides by the global count, and one all-reduce of one flat buffer adds the shares.
        Returns "weights" (n_visible, n_hidden) positive - negative, "hidden" and "visible"
        (and "log_sigma" when learned) the bias gradients; with sparsity also
        "hidden_positive" (the batch's mean hidden probabilities) and "input_positive"."""
        parts = {"weights": torch.mm(x_pos.T, h_pos).div_(n_pos).sub_(torch.mm(x_neg.T, h_neg).div_(n_neg)),
                 "hidden": h_pos.sum(0) / n_pos - h_neg.sum(0) / n_neg}
        if self.visible == "gaussian":
            var = self.sigma ** 2
            parts["visible"] = ((v_pos - self.visible_bias) / var).sum(0) / n_pos \
                - ((v_neg - self.visible_bias) / var).sum(0) / n_neg
            if self.learn_variance:
                parts["log_sigma"] = self._log_sigma_statistic(v_pos, x_pos, h_pos, var).sum(0) / n_pos \
                    - self._log_sigma_statistic(v_neg, x_neg, h_neg, var).sum(0) / n_neg
        else:
            parts["visible"] = v_pos.sum(0) / n_pos - v_neg.sum(0) / n_neg
        if sparsity:
            parts["hidden_positive"] = h_pos.sum(0) / n_pos
            parts["input_positive"] = x_pos.sum(0) / n_pos
        flat = torch.cat([t.reshape(-1).to(self.dtype) for t in parts.values()])
        gkdist.all_reduce_sum(flat)
        means, at = {}, 0
        for name, t in parts.items():
            means[name] = flat[at:at + t.numel()].view(t.shape)
            at += t.numel()
        return means

    def _scatter_chains(self, n_chains: int, groups: int = 1) -> None:
        """Distributed PCD / PT: keep this process's share of the n_chains persistent chains
        of each of ``groups`` temperatures (zeros when the model holds none of that count
        yet). Chains are (groups * n_chains, n_hidden), temperature-major."""
        mine = _rank_rows(n_chains)
        share = mine.stop - mine.first
        if self.chains.shape[0] == groups * n_chains:
            self.chains = self.chains.reshape(groups, n_chains, self.n_hidden)[:, mine.first:mine.stop] \
                .reshape(groups * share, self.n_hidden).clone()
        else:
            self.chains = torch.zeros(groups * share, self.n_hidden, dtype=torch.uint8, device=self.device)

    def _gather_chains(self, n_chains: int, groups: int = 1) -> None:
        """Distributed PCD / PT: every process's share of the chains -> the whole
        (groups * n_chains, n_hidden) chains on every process (one all-gather, shares padded
        to the largest)."""
        world = gkdist.world_size()
        shares = [n_chains * (r + 1) // world - n_chains * r // world for r in range(world)]
        mine = self.chains.reshape(groups, -1, self.n_hidden)
        padded = torch.zeros(groups, max(shares), self.n_hidden, dtype=torch.uint8, device=self.device)
        padded[:, :mine.shape[1]] = mine
        out = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(out, padded)
        self.chains = torch.cat([t[:, :count] for t, count in zip(out, shares)], dim=1) \
            .reshape(groups * n_chains, self.n_hidden)
