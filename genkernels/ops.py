"""The functional API: every family's ops, flat (``genkernels.ops.som_bmu``, ...)."""
from .autoregressive.ops import (
    logistic_mixture_log_prob,
    masked_conv2d,
    masked_conv2d_gated,
    masked_linear,
    masked_mlp,
)
from .boltzmann.ops import bm_energy, bm_gibbs, rbm_half_step, rbm_half_step_binary
from .flows.ops import actnorm, affine_coupling, rq_spline
from .hopfield.ops import (
    hopfield_energy,
    hopfield_recall,
    hopfield_retrieval,
    hopfield_store,
)
from .ising.ops import (
    ising_counters_per_sweep,
    ising_observables,
    ising_sample,
    ising_sweep,
    ising_thresholds,
)
from .som.mask_ops import som_mask_conv2d, som_mask_linear
from .som.ops import neighborhood_matmul, som_bmu, som_node_sums, som_online, som_smooth
from .som.patch_ops import som_patch_bmu
from .som.soft_ops import som_soft

__all__ = ["actnorm", "affine_coupling", "bm_energy", "bm_gibbs", "hopfield_energy", "hopfield_recall",
           "hopfield_retrieval", "hopfield_store", "ising_counters_per_sweep", "ising_observables", "ising_sample",
           "ising_sweep", "ising_thresholds", "logistic_mixture_log_prob", "masked_conv2d", "masked_conv2d_gated",
           "masked_linear", "masked_mlp", "neighborhood_matmul", "rbm_half_step", "rbm_half_step_binary", "rq_spline",
           "som_bmu", "som_mask_conv2d", "som_mask_linear", "som_node_sums", "som_online", "som_patch_bmu",
           "som_smooth", "som_soft"]
