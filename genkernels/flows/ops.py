"""The flows family's public ops: one face over its op stacks (docs/design.md, "Names and
places"): the affine coupling's elementwise part (``coupling_ops.py`` /
``coupling_reference.py`` / ``coupling_triton.py``), ActNorm's map (``actnorm_ops.py`` /
``actnorm_reference.py`` / ``actnorm_triton.py``) and the rational-quadratic spline
transform (``spline_ops.py`` / ``spline_reference.py`` / ``spline_triton.py``). Importing this
module declares every op of the family (what ``registry.load_families`` relies on)."""
from .actnorm_ops import actnorm
from .coupling_ops import affine_coupling
from .spline_ops import rq_spline

__all__ = ["actnorm", "affine_coupling", "rq_spline"]
