"""Self-organizing maps: kernels (ops), lattices, the SOM model, the soft SOM layer and the
patch SOMs."""
from .lattice import Lattice
from .mask import SOMMaskConv2d, SOMMaskLinear
from .mask_ops import som_mask_conv2d, som_mask_linear
from .ops import neighborhood_matmul, som_bmu, som_node_sums, som_online, som_smooth
from .patch import PatchSOM, StackedPatchSOM
from .patch_ops import som_patch_bmu
from .soft import SoftSOM
from .soft_ops import som_soft

__all__ = ["Lattice", "PatchSOM", "SOMMaskConv2d", "SOMMaskLinear", "SoftSOM", "StackedPatchSOM",
           "neighborhood_matmul", "som_bmu", "som_mask_conv2d", "som_mask_linear", "som_node_sums", "som_online",
           "som_patch_bmu", "som_smooth", "som_soft"]
