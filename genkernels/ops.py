"""The functional API: every family's ops, flat (``genkernels.ops.som_bmu``, ...)."""
from .som.ops import som_bmu, som_node_sums, som_online, som_smooth

__all__ = ["som_bmu", "som_node_sums", "som_online", "som_smooth"]
