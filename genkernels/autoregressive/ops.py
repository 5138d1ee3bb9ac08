"""The autoregressive family's public ops: one face over its op stacks (docs/design.md,
"Names and places"). The masked convolution is ``conv_ops.py`` / ``conv_reference.py`` /
``conv_triton.py``. Importing this module declares every op of the family (what
``registry.load_families`` relies on)."""
from .conv_ops import masked_conv2d

__all__ = ["masked_conv2d"]
