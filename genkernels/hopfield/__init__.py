"""Hopfield networks: classical (binary states, Hebbian/Storkey/pseudo-inverse storage,
asynchronous and synchronous recall) and modern continuous retrieval; kernels (ops) and
the Hopfield and HopfieldRetrieval models."""
from .hopfield import Hopfield
from .ops import hopfield_energy, hopfield_recall, hopfield_retrieval, hopfield_store
from .retrieval import HopfieldRetrieval

__all__ = ["Hopfield", "HopfieldRetrieval", "hopfield_energy", "hopfield_recall", "hopfield_retrieval",
           "hopfield_store"]
