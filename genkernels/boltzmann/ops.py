"""The Boltzmann family's public ops: one face over its two op stacks (docs/design.md,
"Names and places"). The general machines' sequential Gibbs sweep is ``bm_ops.py`` /
``bm_reference.py`` / ``bm_triton.py``; the RBM's fused half-steps are ``rbm_ops.py`` /
``rbm_reference.py`` / ``rbm_triton.py``. Importing this module declares every op of the
family (what ``registry.load_families`` relies on)."""
from .bm_ops import bm_energy, bm_gibbs
from .rbm_ops import rbm_half_step, rbm_half_step_binary

__all__ = ["bm_energy", "bm_gibbs", "rbm_half_step", "rbm_half_step_binary"]
