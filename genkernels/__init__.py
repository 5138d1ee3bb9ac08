"""genkernels: fast kernels and ready models for classic unsupervised and generative
models in PyTorch. Models and layers live here; functional ops in ``genkernels.ops``."""
from . import backends, ops, random
from .backends import available_backends, use_backend
from .boltzmann.rbm import RBM
from .hopfield.hopfield import Hopfield
from .som.som import SOM

__version__ = "0.1.0"
__all__ = ["SOM", "Hopfield", "available_backends", "backends", "ops", "random", "use_backend"]
__all__ += ["RBM"]
