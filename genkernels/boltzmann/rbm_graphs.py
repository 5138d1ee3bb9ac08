"""``RBM.fit(cuda_graph=True)``: the training update captured once as a CUDA graph and
replayed per batch, with the random stream's counter base in device memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import backends
from .. import random as gk_random

if TYPE_CHECKING:
    from .rbm import RBM


class CudaGraphs:
    """fit's check of ``cuda_graph`` (a base of :class:`genkernels.RBM`)."""

    def _check_cuda_graph(self, cuda_graph, method: str, distributed: bool, state_path: str,
                          backend: str | None = None) -> None:
        """fit's cuda_graph argument: a bool, and True only where the update can be captured
        (backend: fit's, None or "triton")."""
        if not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph must be a bool; got {type(cuda_graph).__name__} {cuda_graph!r}")
        if not cuda_graph:
            return
        if method not in ("cd", "pcd"):
            raise ValueError(f"cuda_graph=True captures CD-k and PCD updates (method 'cd' or 'pcd'); got "
                             f"method {method!r}")
        if distributed:
            raise ValueError("cuda_graph=True trains in one process: the all-reduce of distributed=True is "
                             "not captured; pass distributed=False or cuda_graph=False")
        if self.visible != "bernoulli":
            raise ValueError("cuda_graph=True needs Bernoulli visible units (the Gaussian samples are drawn "
                             "with host-side counters); the model has gaussian ones")
        if state_path == "binary":
            raise ValueError("cuda_graph=True captures the dense state path; got state_path='binary'")
        if backend is not None and backend != "triton":
            raise ValueError(f"cuda_graph=True needs the triton backend of rbm_half_step (its kernel reads the "
                             f"random offset from device memory); got backend={backend!r}: pass backend='triton' "
                             "or None, or cuda_graph=False")
        if self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a model on a CUDA device (CUDA graphs); the model is on "
                             f"{self.device}")
        backend = backends.resolve("rbm_half_step", self.device, backend)
        if backend != "triton":
            raise ValueError(f"cuda_graph=True needs the triton backend of rbm_half_step (its kernel reads "
                             f"the random offset from device memory); the selected backend is {backend!r}")


class _GraphedUpdate:
    """fit(cuda_graph=True): the model's training update on full batches, captured once as a
    CUDA graph and replayed per batch (a copy of the batch + one replay instead of ~16
    kernel launches from Python).

    Every update of such a fit -- eager or replayed -- runs with ``model._offset_base`` set
    to :attr:`offset_base`, a (1,) int64 tensor on the device holding the stream position
    ``model.offset``: the update's half-steps draw with counters offset_base + (the offsets
    the update takes counting from 0), i.e. exactly the counters of an eager update, and
    the update then moves offset_base by the counters it took (inside the graph when
    replayed), while the host moves ``model.offset`` by the same count. The persistent
    buffers are updated in place (RBM._offset_base), so the graph's reads and writes stay
    valid across replays. The graph reads the batch from :attr:`static_batch`.

    Capture follows torch's recipe (torch.cuda.graphs): the first full batch's update runs
    eagerly on a side stream (it compiles the Triton kernels for the same arguments and
    sets up cuBLAS and the buffers), then one update on static_batch is captured on that
    stream. Batches of other sizes (the last one of an epoch) run eagerly.
    """

    def __init__(self, model: RBM, update_args: tuple, batch_size: int):
        self.model = model
        self.update_args = update_args
        self.batch_size = batch_size
        self.offset_base = torch.tensor([model.offset], dtype=torch.int64, device=model.device)
        self.static_batch: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.counters = 0  # counters one full-batch update takes

    def _counted_update(self, v_pos: torch.Tensor) -> int:
        """model._update(v_pos) drawing from offset_base + 0, 1, ...; returns the number of
        counters it took and leaves model.offset as it was."""
        model = self.model
        saved = model._stream
        model._stream, model._offset_base = gk_random.PhiloxStream(saved.seed), self.offset_base
        try:
            model._update(v_pos, *self.update_args)
            return model.offset
        finally:
            model._stream, model._offset_base = saved, None

    def _eager(self, v_pos: torch.Tensor) -> None:
        counters = self._counted_update(v_pos)
        self.offset_base.add_(counters)
        self.model._advance(counters)

    def _capture(self, v_pos: torch.Tensor) -> None:
        """Run v_pos's update (the warm-up, on a side stream) and capture the graph of one
        update on the same stream (whose cuBLAS handle and workspace the warm-up created)."""
        self.static_batch = v_pos.clone()
        current = torch.cuda.current_stream(v_pos.device)
        side = torch.cuda.Stream(v_pos.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            self._eager(self.static_batch)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            self.counters = self._counted_update(self.static_batch)
            self.offset_base.add_(self.counters)
        self.graph = graph

    def __call__(self, v_pos: torch.Tensor) -> None:
        """One training update on the batch v_pos (B, n_visible)."""
        if v_pos.shape[0] != self.batch_size:
            self._eager(v_pos)
        elif self.graph is None:
            self._capture(v_pos)
        else:
            self.static_batch.copy_(v_pos)
            self.graph.replay()
            self.model._advance(self.counters)
