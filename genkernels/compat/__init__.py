"""Drop-in facades for other libraries' APIs, running on genkernels' ops.

``genkernels.compat.MiniSom`` has MiniSom 2.3.6's public API (``from minisom import
MiniSom`` becomes ``from genkernels.compat import MiniSom``).
"""
from .minisom import MiniSom

__all__ = ["MiniSom"]
