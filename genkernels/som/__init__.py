"""Self-organizing maps: kernels (ops), lattices and the SOM model."""
from .lattice import Lattice
from .ops import som_bmu, som_node_sums, som_online, som_smooth

__all__ = ["Lattice", "som_bmu", "som_node_sums", "som_online", "som_smooth"]
