"""Drop-in facades for other libraries' APIs, running on genkernels' ops.

``genkernels.compat.MiniSom`` has MiniSom 2.3.6's public API (``from minisom import
MiniSom`` becomes ``from genkernels.compat import MiniSom``).
``genkernels.compat.BernoulliRBM`` is scikit-learn's ``sklearn.neural_network.BernoulliRBM``
(estimator API, fitted attributes, update rule) trained by genkernels' RBM kernels.
``genkernels.compat.SOMEstimator`` is the self-organizing map as a scikit-learn estimator
(fit / transform / predict / score, Pipeline and GridSearchCV);
``genkernels.compat.SOMGridSearchCV`` (a GridSearchCV) and ``som_grid_search`` evaluate a grid
of its sigma and learning-rate values as one ``n_maps`` launch per fold, with GridSearchCV's
results.
"""
from .bernoulli_rbm import BernoulliRBM
from .minisom import MiniSom
from .som_estimator import SOMEstimator
from .som_search import SOMGridSearchCV, som_grid_search

__all__ = ["BernoulliRBM", "MiniSom", "SOMEstimator", "SOMGridSearchCV", "som_grid_search"]
