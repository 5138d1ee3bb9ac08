"""Boltzmann machines: general (fully connected) machines (``BoltzmannMachine``:
sequential Gibbs sweeps, annealing, learning), restricted Boltzmann machines (``RBM``) with
their fused half-step ops, and deep belief nets (``DBN``)."""
from .ops import bm_energy, bm_gibbs, rbm_half_step, rbm_half_step_binary  # noqa: I001 (declares the ops first)
from .dbn import DBN
from .machine import BoltzmannMachine
from .rbm import RBM

__all__ = ["DBN", "RBM", "BoltzmannMachine", "bm_energy", "bm_gibbs", "rbm_half_step", "rbm_half_step_binary"]
