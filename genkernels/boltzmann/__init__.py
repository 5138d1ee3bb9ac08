"""Boltzmann machines: restricted Boltzmann machines (``RBM``) and their half-step op."""
