"""Self-organizing maps: kernels (ops), lattices and the SOM model."""
from .lattice import Lattice
from .mask import SOMMaskConv2d, SOMMaskLinear
from .mask_ops import som_mask_conv2d, som_mask_linear
from .ops import neighborhood_matmul, som_bmu, som_node_sums, som_online, som_smooth
from .soft import SoftSOM
from .soft_ops import som_soft

__all__ = ["Lattice", "SOMMaskConv2d", "SOMMaskLinear", "SoftSOM", "neighborhood_matmul", "som_bmu",
           "som_mask_conv2d", "som_mask_linear", "som_node_sums", "som_online", "som_smooth", "som_soft"]
