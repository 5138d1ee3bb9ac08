"""genkernels: fast kernels and ready models for classic unsupervised and generative
models in PyTorch. Models and layers live here; functional ops in ``genkernels.ops``."""
from . import backends, ops
from .backends import available_backends, use_backend

__version__ = "0.1.0"
__all__ = ["available_backends", "backends", "ops", "use_backend"]
