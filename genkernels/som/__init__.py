"""Self-organizing maps: kernels (ops), lattices and the SOM model."""
from .lattice import Lattice
from .ops import neighborhood_matmul, som_bmu, som_node_sums, som_online, som_smooth
from .soft import SoftSOM
from .soft_ops import som_soft

__all__ = ["Lattice", "SoftSOM", "neighborhood_matmul", "som_bmu", "som_node_sums", "som_online", "som_smooth",
           "som_soft"]
