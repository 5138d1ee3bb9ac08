"""General Boltzmann machines: sequential Gibbs sweeps, annealing, learning."""
