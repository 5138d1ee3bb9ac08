"""The specification itself: known values, lattices, schedules and smoothing paths."""
import math

import pytest
import torch

from genkernels.som import Lattice, reference, schedules
from genkernels.som.ops import neighborhood_matmul, som_smooth


def test_distances_match_definitions():
    x = torch.tensor([[0.0, 3.0, 4.0]], dtype=torch.float64)
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(reference.pairwise_distances(x, w, "euclidean"),
                          torch.tensor([[5.0, math.sqrt(1 + 4 + 9)]], dtype=torch.float64))
    assert torch.allclose(reference.pairwise_distances(x, w, "manhattan"),
                          torch.tensor([[7.0, 6.0]], dtype=torch.float64))
    assert torch.allclose(reference.pairwise_distances(x, w, "chebyshev"),
                          torch.tensor([[4.0, 3.0]], dtype=torch.float64))
    cos = 1 - 7 / (5 * math.sqrt(3) + 1e-8)
    assert torch.allclose(reference.pairwise_distances(x, w, "cosine"),
                          torch.tensor([[1.0, cos]], dtype=torch.float64))


def test_nan_aware_rescales_to_present_features():
    x = torch.tensor([[1.0, float("nan"), 3.0, float("nan")]], dtype=torch.float64)
    w = torch.zeros(1, 4, dtype=torch.float64)
    d = reference.pairwise_distances(x, w, "euclidean", ignore_nan=True)
    assert torch.allclose(d, torch.tensor([[math.sqrt((1 + 9) * 4 / 2)]], dtype=torch.float64))
    allnan = torch.full((1, 4), float("nan"), dtype=torch.float64)
    assert torch.isinf(reference.pairwise_distances(allnan, w, "manhattan", ignore_nan=True)).all()


def test_bmu_ties_break_to_lowest_index():
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    x = torch.tensor([[0.0, 0.0], [0.5, 0.0]])
    idx, dist = reference.som_bmu(x, w, k=3)
    assert idx.tolist() == [[1, 2, 0], [0, 1, 2]]
    assert torch.allclose(dist[1], torch.tensor([0.5, 0.5, 0.5]))


@pytest.mark.parametrize("topology", ["rectangular", "hexagonal"])
def test_adjacent_nodes_are_at_distance_one(topology):
    lat = Lattice(6, 8, topology, periodic=True)
    pairs = lat.neighbor_pairs()
    coords = lat.coords()
    d = lat.distances(coords[pairs[:, 0]], coords[pairs[:, 1]])
    assert torch.allclose(d, torch.ones_like(d))
    degree = torch.bincount(pairs.flatten(), minlength=lat.n_nodes)
    assert (degree == (6 if topology == "hexagonal" else 4)).all()


def test_flat_lattice_border_degrees():
    degree = torch.bincount(Lattice(3, 4).neighbor_pairs().flatten(), minlength=12)
    assert degree.reshape(3, 4).tolist() == [[2, 3, 3, 2], [3, 4, 4, 3], [2, 3, 3, 2]]


def test_toroidal_wrap_distance():
    lat = Lattice(5, 7, periodic=True)
    c = lat.coords()
    assert lat.distances(c[0], c[6]).item() == pytest.approx(1.0)      # (0,0)-(0,6) wraps
    assert lat.distances(c[0], c[4 * 7]).item() == pytest.approx(1.0)  # (0,0)-(4,0) wraps


@pytest.mark.parametrize("kind", ["gaussian", "bubble", "mexican_hat", "triangle"])
def test_neighborhoods_are_one_at_the_winner(kind):
    z = torch.zeros(3, dtype=torch.float64)
    assert torch.allclose(reference.neighborhood(kind, z, z, 1.5), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("topology,periodic", [("rectangular", False), ("rectangular", True),
                                               ("hexagonal", False), ("hexagonal", True)])
@pytest.mark.parametrize("kind", ["gaussian", "bubble", "mexican_hat", "triangle"])
def test_separable_and_tiled_smoothing_equal_the_full_matrix(topology, periodic, kind):
    lat = Lattice(6, 8, topology, periodic)
    c = lat.coords()
    sums = torch.randn(48, 5, dtype=torch.float64)
    counts = torch.randint(0, 4, (48,)).double()
    w = torch.randn(48, 5, dtype=torch.float64)
    expected = reference.som_smooth(sums, counts, w, c, *lat.periods, kind, 1.7)
    got = som_smooth(sums, counts, w, c, lat.periods, kind, 1.7, lat.shape if lat.separable else None)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_neighborhood_matmul_tiles(monkeypatch):
    import genkernels.som.ops as som_ops
    monkeypatch.setattr(som_ops, "_SMOOTH_TILE_ELEMENTS", 100)   # several tiles of H
    lat = Lattice(7, 9, "hexagonal")
    v = torch.randn(63, 3, dtype=torch.float64)
    d0, d1 = reference.lattice_deltas(lat.coords()[:, None], lat.coords()[None], 0.0, 0.0)
    expected = reference.neighborhood("gaussian", d0, d1, 2.0) @ v
    assert torch.allclose(neighborhood_matmul(v, lat.coords(), (0.0, 0.0), "gaussian", 2.0), expected)


def test_node_without_hits_keeps_weights():
    lat = Lattice(1, 5)
    w = torch.arange(10.0, dtype=torch.float64).reshape(5, 2)
    sums = torch.zeros(5, 2, dtype=torch.float64)
    counts = torch.zeros(5, dtype=torch.float64)
    sums[0], counts[0] = torch.tensor([4.0, 4.0]), 2.0
    out = som_smooth(sums, counts, w, lat.coords(), (0.0, 0.0), "bubble", 1.0, lat.shape)
    assert torch.equal(out[1:], w[1:])
    assert torch.allclose(out[0], torch.tensor([2.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("kind", schedules.SCHEDULES)
def test_schedules_start_and_end(kind):
    v = schedules.evaluate(kind, torch.tensor([0.5, 2.0], dtype=torch.float64),
                           torch.tensor([0.01, 1.0], dtype=torch.float64), 0, 100, 100)
    assert v.shape == (2, 100)
    assert torch.allclose(v[:, 0], torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert (v[:, 1:] <= v[:, :-1] + 1e-12).all()
    if kind in ("linear", "exponential", "inverse"):
        assert torch.allclose(v[:, -1], torch.tensor([0.01, 1.0], dtype=torch.float64))


def test_online_reference_single_step_rule():
    w = torch.zeros(1, 3, 1, dtype=torch.float64)
    w[0, :, 0] = torch.tensor([0.0, 1.0, 2.0])
    x = torch.tensor([[0.2]], dtype=torch.float64)
    coords = Lattice(1, 3).coords()
    one = torch.ones(1, 1, dtype=torch.float64)
    out = reference.som_online(w, x, torch.zeros(1, 1, dtype=torch.int64), 0.5 * one, one, coords,
                               0.0, 0.0, "gaussian")
    h = torch.exp(-torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64) / 2)
    assert torch.allclose(out[0, :, 0], w[0, :, 0] + 0.5 * h * (0.2 - w[0, :, 0]))
    wta = reference.som_online(w, x, torch.zeros(1, 1, dtype=torch.int64), 0.5 * one, one, coords,
                               0.0, 0.0, "gaussian", rule="wta")
    assert wta[0, :, 0].tolist() == pytest.approx([0.1, 1.0, 2.0])
