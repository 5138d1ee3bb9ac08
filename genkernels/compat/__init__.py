"""Drop-in facades for other libraries' APIs, running on genkernels' ops.

``genkernels.compat.MiniSom`` has MiniSom 2.3.6's public API (``from minisom import
MiniSom`` becomes ``from genkernels.compat import MiniSom``).
``genkernels.compat.BernoulliRBM`` is scikit-learn's ``sklearn.neural_network.BernoulliRBM``
(estimator API, fitted attributes, update rule) trained by genkernels' RBM kernels.
"""
from .bernoulli_rbm import BernoulliRBM
from .minisom import MiniSom

__all__ = ["BernoulliRBM", "MiniSom"]
