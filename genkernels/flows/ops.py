"""The flows family's public ops: one face over its op stacks (docs/design.md, "Names and
places"): the affine coupling's elementwise part (``coupling_ops.py`` /
``coupling_reference.py`` / ``coupling_triton.py``). Importing this module declares every op
of the family (what ``registry.load_families`` relies on)."""
from .coupling_ops import affine_coupling

__all__ = ["affine_coupling"]
