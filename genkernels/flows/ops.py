"""The flows family's public ops: one face over its op stacks (docs/design.md, "Names and
places"): the affine coupling's elementwise part (``coupling_ops.py`` /
``coupling_reference.py`` / ``coupling_triton.py``) and the rational-quadratic spline
transform (``spline_ops.py`` / ``spline_reference.py`` / ``spline_triton.py``). Importing this
module declares every op of the family (what ``registry.load_families`` relies on)."""
from .coupling_ops import affine_coupling
from .spline_ops import rq_spline

__all__ = ["affine_coupling", "rq_spline"]
