"""Boltzmann machines: general (fully connected) machines (``BoltzmannMachine``:
sequential Gibbs sweeps, annealing, learning) and restricted Boltzmann machines (``RBM``)
with their fused half-step op."""
