"""``genkernels.SoftSOM``: the differentiable soft SOM as a layer of a neural network.

A SOM maps an input to its winning node's grid position, a piecewise-constant function
through which nothing flows back. The soft SOM lets every node win a little
(genkernels.ops.som_soft): for an input x,

    out(x) = sum_k g_k exp(-beta d(x, l_k)) / sum_k exp(-beta d(x, l_k))

with l_k the nodes' embeddings in input space (a parameter), g_k their values -- the grid
coordinates by default (a fixed buffer), or any per-node vectors (a parameter) -- and beta
the inverse temperature (fixed, or learned through its logarithm). The output is
differentiable in the input, the embeddings, the values and beta, so the layer trains by
gradient descent inside a network, before or between other layers.

With ``train_embedding="som"`` the embeddings are not learned by gradient but organised as
a SOM: each training-mode forward first applies Kohonen's batch rule to its batch
(genkernels.ops.som_node_sums + som_smooth: the nodes move towards the Gaussian-smoothed
means of the rows they win), damped by a learning rate, with sigma and the learning rate
on a schedule over ``som_steps`` forwards, then computes the soft output with the updated
map. Gradients still flow to the input (and to the values and beta), so the layers before
it train as usual. Nothing is updated in eval mode, nor after ``som_steps`` updates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_choice, check_int
from ..model import model_seed
from . import schedules
from .lattice import TOPOLOGIES, Lattice
from .ops import som_node_sums, som_smooth
from .soft_ops import som_soft
from .soft_reference import DISTANCES
from .som import _rate as _som_rate

TRAIN_EMBEDDINGS = ("gradient", "som")


def _schedule(name: str, value, default_end) -> tuple[float, float]:
    """One map's (start, end) of a rate, read as genkernels.SOM reads it (a number decaying to
    default_end(number), or a (start, end) tuple; finite and > 0)."""
    if callable(value):
        raise TypeError(f"{name} must be a number or a (start, end) tuple; got a callable")
    start, end = _som_rate(name, value, default_end, 1)
    return float(start[0]), float(end[0])


class SoftSOM(nn.Module):
    """A soft SOM layer: (..., n_features) -> (..., C).

    Args:
        grid: (rows, cols) of the lattice (or an int n: a (1, n) chain); K = rows * cols nodes.
        n_features: D, the width of the input.
        values: None (each node's (row, col) grid coordinate, C = 2, fixed) or a (K, C)
            float tensor of per-node values, learned as a parameter.
        beta: the inverse temperature, a finite number > 0; learnable_beta learns it (as
            log beta, so it stays positive).
        distance: "euclidean" (||x - l||; gradient 0 at x = l) or "squared".
        topology: "rectangular" or "hexagonal" (the coordinates of the default values).
        seed: the embeddings' initialisation (N(0, 1) draws from torch's generator seeded by
            it), an int in [0, 2^64); None draws one.
        train_embedding: "gradient" (the embeddings are a parameter) or "som" (a buffer
            organised by the SOM batch rule on each training-mode forward; see the module
            docstring).
        som_steps: with "som": the number of training forwards the SOM schedule runs over
            (the map is fixed after them).
        sigma: with "som": the neighbourhood width in grid units, a number (decaying to
            min(1, sigma)) or a (start, end) pair; None: max(rows, cols) / 2 (at least 1).
        learning_rate: with "som": the step towards the batch rule's map (1 = the plain
            batch rule), a number in (0, 1] (constant) or a (start, end) pair.
        schedule: with "som": how sigma and the learning rate go from start to end over
            som_steps: "exponential" (default), "linear", "inverse", "asymptotic" or
            "constant".
        backend: None (auto), "reference", "cpu" or "triton" for every forward.
        dtype, device: of the parameters.

    Example::

        layer = genkernels.SoftSOM((10, 10), 2, beta=4.0)
        net = nn.Sequential(layer, nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
    """

    def __init__(self, grid, n_features: int, values: torch.Tensor | None = None, beta: float = 1.0,
                 learnable_beta: bool = False, distance: str = "euclidean", train_embedding: str = "gradient",
                 *, som_steps: int | None = None, sigma=None, learning_rate=0.5, schedule: str = "exponential",
                 topology: str = "rectangular", seed: int | None = None, backend: str | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if isinstance(grid, int) and not isinstance(grid, bool):
            grid = (1, grid)
        if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
            raise TypeError(f"grid must be (rows, cols) or an int; got {grid!r}")
        rows, cols = (check_int(f"grid[{i}]", g, 1) for i, g in enumerate(grid))
        self.grid = (rows, cols)
        self.n_features = check_int("n_features", n_features, 1)
        self.distance = check_choice("distance", distance, DISTANCES)
        self.lattice = Lattice(rows, cols, check_choice("topology", topology, TOPOLOGIES))
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta must be a finite number > 0; got {beta!r}")
        if not isinstance(learnable_beta, bool):
            raise TypeError(f"learnable_beta must be a bool; got {type(learnable_beta).__name__}")
        self.train_embedding = check_choice("train_embedding", train_embedding, TRAIN_EMBEDDINGS)
        if self.train_embedding == "som":
            if som_steps is None:
                raise ValueError('som_steps is required with train_embedding="som" (the number of training '
                                 "forwards the SOM schedule runs over)")
            self.som_steps = check_int("som_steps", som_steps, 1)
            self.sigma = _schedule("sigma", max(max(rows, cols) / 2.0, 1.0) if sigma is None else sigma,
                               lambda v: min(1.0, v))
            self.learning_rate = _schedule("learning_rate", learning_rate, lambda v: v)
            if max(self.learning_rate) > 1:
                raise ValueError(f"learning_rate must be <= 1 (1 = the plain batch rule); got {learning_rate!r}")
            self.schedule = check_choice("schedule", schedule, schedules.SCHEDULES)
        elif som_steps is not None:
            raise ValueError('som_steps applies to train_embedding="som" only; got train_embedding="gradient"')
        self.backend = backend
        self.seed = model_seed(seed)
        k_nodes = rows * cols
        g = torch.Generator().manual_seed(self.seed)
        opts = {"dtype": dtype, "device": device}
        nodes = torch.randn(k_nodes, self.n_features, generator=g, dtype=torch.float64).to(**opts)
        if self.train_embedding == "som":
            self.register_buffer("nodes", nodes)
            self.register_buffer("som_step", torch.zeros((), dtype=torch.int64, device=device))
            self.register_buffer("coords", self.lattice.coords(dtype, device), persistent=False)
        else:
            self.nodes = nn.Parameter(nodes)
        if values is None:
            self.register_buffer("values", self.lattice.coords(dtype, device))
        else:
            if not isinstance(values, torch.Tensor) or not values.is_floating_point() or values.dim() != 2 \
                    or values.shape[0] != k_nodes:
                raise ValueError(f"values must be a ({k_nodes}, C) float tensor (one row per node); got "
                                 f"{getattr(values, 'shape', type(values).__name__)}")
            if not bool(torch.isfinite(values).all()):
                raise ValueError("values contains NaN or Inf")
            self.values = nn.Parameter(values.detach().to(**opts).clone())
        log_beta = torch.tensor(math.log(beta), **opts)
        if learnable_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)

    @property
    def beta(self) -> torch.Tensor:
        """The inverse temperature (0-d; differentiable when learnable)."""
        return self.log_beta.exp()

    @property
    def n_nodes(self) -> int:
        return self.lattice.n_nodes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., n_features) -> (..., C) in the parameters' dtype."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.n_features:
            raise ValueError(f"x must be (..., {self.n_features}) (n_features = {self.n_features}); got shape "
                             f"{tuple(x.shape)}")
        flat = x.reshape(-1, self.n_features).to(self.nodes.dtype)
        if self.train_embedding == "som" and self.training:
            self.som_update(flat)
        out = som_soft(flat, self.nodes, self.values, self.beta, self.distance, backend=self.backend)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def som_rates(self, step: int) -> tuple[float, float]:
        """(learning_rate, sigma) of SOM update ``step`` (0-based) of som_steps."""
        out = []
        for start, end in (self.learning_rate, self.sigma):
            v = schedules.evaluate(self.schedule, torch.tensor([start], dtype=torch.float64),
                                   torch.tensor([end], dtype=torch.float64), step, 1, self.som_steps)
            out.append(float(v[0, 0]))
        return out[0], out[1]

    @torch.no_grad()
    def som_update(self, x: torch.Tensor) -> bool:
        """One step of the SOM batch rule on the rows of x (B, n_features), damped by the
        scheduled learning rate: nodes <- nodes + lr (batch_rule(nodes, x) - nodes). A new
        tensor replaces the nodes (an earlier forward's autograd graph keeps the map it
        used). Returns False, changing nothing, once som_steps updates are done."""
        if self.train_embedding != "som":
            raise RuntimeError('som_update needs train_embedding="som"')
        step = int(self.som_step)
        if step >= self.som_steps or x.shape[0] == 0:
            return False
        lr, sigma = self.som_rates(step)
        x = x.detach().to(self.nodes.dtype)
        sums, counts, _ = som_node_sums(x, self.nodes, backend=self.backend)
        batch = som_smooth(sums, counts, self.nodes, self.coords, self.lattice.periods, "gaussian", sigma,
                           self.lattice.shape if self.lattice.separable else None)
        self.nodes = torch.lerp(self.nodes, batch.to(self.nodes.dtype), lr)
        self.som_step += 1
        return True

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, n_features={self.n_features}, values={tuple(self.values.shape)}, "
                f"distance={self.distance!r}, learnable_beta={isinstance(self.log_beta, nn.Parameter)}, "
                f"train_embedding={self.train_embedding!r}")
