"""A Triton probe of the Ising sweep kernel's index helpers (tests/test_energy_hardening.py):
it runs genkernels.ising.triton's own _geometry and _site on a lattice side passed as a
scalar kernel argument, exactly as the sweep kernel receives L."""

import triton
import triton.language as tl

from genkernels.ising.triton import _geometry, _site


@triton.jit
def index_probe(OUT, L, colour):
    L64, H, sites = _geometry(L)
    i, j, at = _site(sites - 1, colour, L64, H)
    _, _, first_at = _site(sites * 0, colour, L64, H)
    tl.store(OUT, sites)
    tl.store(OUT + 1, i)
    tl.store(OUT + 2, j)
    tl.store(OUT + 3, at)
    tl.store(OUT + 4, first_at)
