"""The functional API: every family's ops, flat (``genkernels.ops.som_bmu``, ...)."""
from .boltzmann.ops import rbm_half_step
from .hopfield.ops import hopfield_energy, hopfield_recall, hopfield_store
from .som.ops import neighborhood_matmul, som_bmu, som_node_sums, som_online, som_smooth

__all__ = ["hopfield_energy", "hopfield_recall", "hopfield_store", "neighborhood_matmul", "som_bmu",
           "som_node_sums", "som_online", "som_smooth"]
__all__ += ["rbm_half_step"]
