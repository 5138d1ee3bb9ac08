"""The functional API: every family's ops, flat (``genkernels.ops.som_bmu``, ...)."""
from .som.ops import neighborhood_matmul, som_bmu, som_node_sums, som_online, som_smooth

__all__ = ["neighborhood_matmul", "som_bmu", "som_node_sums", "som_online", "som_smooth"]
