"""Classical Hopfield networks: kernels (ops) and the Hopfield model."""
from .ops import hopfield_energy, hopfield_recall, hopfield_store

__all__ = ["hopfield_energy", "hopfield_recall", "hopfield_store"]
from .ops import hopfield_retrieval

__all__ += ["hopfield_retrieval"]
