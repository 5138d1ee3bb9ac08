"""Checkerboard Ising lattices: kernels (ops) and the Ising2D model."""
from .ops import (
                  ising_counters_per_sweep,
                  ising_observables,
                  ising_sample,
                  ising_sweep,
                  ising_thresholds,
)

__all__ = ["ising_counters_per_sweep", "ising_observables", "ising_sample", "ising_sweep", "ising_thresholds"]
