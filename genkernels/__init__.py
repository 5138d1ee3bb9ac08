"""genkernels: fast kernels and ready models for classic unsupervised and generative
models in PyTorch. Models and layers live here; functional ops in ``genkernels.ops``."""
from . import backends, ops, random
from .autoregressive.causality import check_autoregressive
from .autoregressive.layers import MaskedConv2d
from .autoregressive.made import MADE, MaskedLinear
from .autoregressive.pixelcnn import GatedPixelCNN
from .backends import available_backends, use_backend
from .boltzmann.dbn import DBN
from .boltzmann.machine import BoltzmannMachine
from .boltzmann.rbm import RBM
from .flows.coupling import AdditiveCoupling, AffineCoupling, SplineCoupling
from .flows.models import IAF, MAF, NSF, Glow, RealNVP
from .hopfield.hopfield import Hopfield
from .hopfield.retrieval import HopfieldRetrieval
from .ising.ising import Ising2D
from .model import DivergedError, Model
from .som.mask import SOMMaskConv2d, SOMMaskLinear
from .som.patch import PatchSOM, StackedPatchSOM
from .som.soft import SoftSOM
from .som.som import SOM

__version__ = "0.1.0"
__all__ = ["AdditiveCoupling", "AffineCoupling", "BoltzmannMachine", "DBN", "DivergedError", "GatedPixelCNN", "Glow",
           "Hopfield", "HopfieldRetrieval", "IAF", "Ising2D", "MADE", "MAF", "MaskedConv2d", "MaskedLinear", "Model",
           "NSF", "PatchSOM", "RBM", "RealNVP", "SOM", "SOMMaskConv2d", "SOMMaskLinear", "SoftSOM", "SplineCoupling",
           "StackedPatchSOM", "available_backends", "backends", "check_autoregressive", "ops", "random",
           "use_backend"]
