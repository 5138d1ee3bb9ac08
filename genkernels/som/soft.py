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
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_choice, check_int
from ..model import model_seed
from .lattice import TOPOLOGIES, Lattice
from .soft_ops import som_soft
from .soft_reference import DISTANCES


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
        backend: None (auto), "reference" or "triton" for every forward.
        dtype, device: of the parameters.

    Example::

        layer = genkernels.SoftSOM((10, 10), 2, beta=4.0)
        net = nn.Sequential(layer, nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
    """

    def __init__(self, grid, n_features: int, values: torch.Tensor | None = None, beta: float = 1.0,
                 learnable_beta: bool = False, distance: str = "euclidean", *, topology: str = "rectangular",
                 seed: int | None = None, backend: str | None = None, dtype: torch.dtype = torch.float32,
                 device=None):
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
        self.backend = backend
        self.seed = model_seed(seed)
        k_nodes = rows * cols
        g = torch.Generator().manual_seed(self.seed)
        opts = {"dtype": dtype, "device": device}
        self.nodes = nn.Parameter(torch.randn(k_nodes, self.n_features, generator=g, dtype=torch.float64).to(**opts))
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
        out = som_soft(flat, self.nodes, self.values, self.beta, self.distance, backend=self.backend)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, n_features={self.n_features}, values={tuple(self.values.shape)}, "
                f"distance={self.distance!r}, learnable_beta={isinstance(self.log_beta, nn.Parameter)}")
