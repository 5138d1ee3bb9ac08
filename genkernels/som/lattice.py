"""SOM lattices: node positions, torus periods and the neighbours of each node.

Nodes are numbered row-major over ``grid = (rows, cols)``: node ``r * cols + c``.
Positions (the space neighbourhoods and the topographic error measure in):

* rectangular: ``(r, c)``;
* hexagonal: ``(r + 0.5 * (c % 2), c * sqrt(3) / 2)`` -- odd columns shifted half a
  row, so each of the six adjacent nodes is exactly at distance 1;
* 1-D (``grid = (n,)``): ``(0, c)``.

A toroidal (``periodic=True``) lattice wraps each axis: periods ``(rows, cols)`` on
rectangles and ``(rows, cols * sqrt(3) / 2)`` on hexagons (which needs an even number
of columns so the offset pattern closes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TOPOLOGIES = ("rectangular", "hexagonal")
HEX_ROW_STEP = math.sqrt(3.0) / 2.0


@dataclass(frozen=True)
class Lattice:
    rows: int
    cols: int
    topology: str = "rectangular"
    periodic: bool = False

    @property
    def n_nodes(self) -> int:
        return self.rows * self.cols

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def periods(self) -> tuple[float, float]:
        if not self.periodic:
            return (0.0, 0.0)
        if self.topology == "hexagonal":
            return (float(self.rows), self.cols * HEX_ROW_STEP)
        return (float(self.rows), float(self.cols))

    @property
    def separable(self) -> bool:
        """Positions form a Cartesian product (rows x cols): smoothing factorises per axis."""
        return self.topology == "rectangular"

    def coords(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """(K, 2) node positions."""
        r = torch.arange(self.rows, dtype=torch.float64).repeat_interleave(self.cols)
        c = torch.arange(self.cols, dtype=torch.float64).repeat(self.rows)
        if self.topology == "hexagonal":
            r = r + 0.5 * (c % 2)
            c = c * HEX_ROW_STEP
        return torch.stack([r, c], dim=1).to(dtype=dtype, device=device)

    def axis_coords(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions along each axis of a separable lattice: (rows,), (cols,)."""
        return (torch.arange(self.rows, dtype=dtype, device=device),
                torch.arange(self.cols, dtype=dtype, device=device))

    def deltas(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-axis lattice offsets |a - b| (torus-aware) between position tensors (..., 2)."""
        p0, p1 = self.periods
        d0 = (a[..., 0] - b[..., 0]).abs()
        d1 = (a[..., 1] - b[..., 1]).abs()
        if p0 > 0:
            d0 = torch.minimum(d0, p0 - d0)
        if p1 > 0:
            d1 = torch.minimum(d1, p1 - d1)
        return d0, d1

    def distances(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d0, d1 = self.deltas(a, b)
        return torch.sqrt(d0 * d0 + d1 * d1)

    def neighbor_pairs(self) -> torch.Tensor:
        """(P, 2) int64 pairs (i, j), i < j, of adjacent nodes (lattice distance 1):
        4-neighbourhood on rectangles, 6 on hexagons, wrapping on a torus. Candidates
        are the 8 surrounding grid cells, kept when their distance is 1: O(K), no K x K."""
        rows, cols = self.rows, self.cols
        r = torch.arange(rows).repeat_interleave(cols)
        c = torch.arange(cols).repeat(rows)
        coords = self.coords()
        pairs = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr == 0 and dc == 0:
                    continue
                r2, c2 = r + dr, c + dc
                if self.periodic:
                    r2, c2 = r2 % rows, c2 % cols
                ok = (r2 >= 0) & (r2 < rows) & (c2 >= 0) & (c2 < cols)
                i, j = (r * cols + c)[ok], (r2 * cols + c2)[ok]
                d = self.distances(coords[i], coords[j])
                near = torch.isclose(d, torch.ones((), dtype=d.dtype)) & (i != j)
                pairs.append(torch.stack([i[near], j[near]], dim=1))
        allp = torch.cat(pairs)
        allp = torch.stack([allp.min(dim=1).values, allp.max(dim=1).values], dim=1)
        return torch.unique(allp, dim=0)

    def adjacent(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Bool tensor: nodes i and j (int64 tensors of equal shape) are adjacent.

        Rectangular grids count the 8 surrounding nodes (MiniSom's topographic error:
        distance < 1.42); hexagonal grids the 6 at distance 1."""
        coords = self.coords()
        d = self.distances(coords[i.cpu()], coords[j.cpu()])
        if self.topology == "hexagonal":
            out = torch.isclose(d, torch.ones((), dtype=d.dtype))
        else:
            out = d <= 1.42
        return out.to(i.device)
