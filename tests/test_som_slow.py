"""Large shapes on the cpu backend (marked slow: run with `pytest -m slow`)."""
import pytest
import torch

import genkernels
from genkernels import ops

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif("cpu" not in genkernels.available_backends("cpu"), reason="needs the cpu backend")]


def test_bmu_beyond_2_to_the_31_elements():
    # 2^27 + 3 rows x 16 features = 2^31 + 48 elements: every index must be 64-bit
    n, d = (1 << 27) + 3, 16
    x = torch.zeros(n, d)
    w = torch.stack([torch.full((d,), float(v)) for v in (-1.0, 0.0, 1.0, 2.0)])
    x[-1] = 2.0
    x[-2] = -1.0
    x[-3] = 1.0
    idx, dist = ops.som_bmu(x, w, backend="cpu")
    assert idx.shape == (n, 1)
    assert idx[-3:, 0].tolist() == [2, 0, 3]
    assert int(idx[: n - 3, 0].max()) == 1 and float(dist[: n - 3].max()) == 0.0
    sums, counts, _ = ops.som_node_sums(x, w, backend="cpu")
    assert counts.tolist() == [1.0, float(n - 3), 1.0, 1.0]
    assert torch.equal(sums[3], torch.full((d,), 2.0))


def test_ten_million_samples_against_a_100x100_map_in_bounded_memory():
    import resource
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000_000, 8, generator=g)
    w = torch.randn(10_000, 8, generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    idx, dist = ops.som_bmu(x, w, k=2, backend="cpu")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    # outputs are 10M x 2 x (8 + 4) bytes = 229 MiB; a distance matrix would be 373 GiB
    assert grown_mib < 400
    sample = torch.randint(0, x.shape[0], (2000,), generator=g)
    want = genkernels.som.reference.som_bmu(x[sample], w, k=2)
    assert torch.equal(idx[sample], want[0])
