"""The autoregressive family's public ops: one face over its op stacks (docs/design.md,
"Names and places"): the masked convolution (``conv_ops.py`` / ``conv_reference.py`` /
``conv_triton.py``), its gated form (``gate_ops.py`` / ``gate_reference.py`` /
``gate_triton.py``), the masked linear layer (``linear_ops.py`` / ``linear_reference.py`` /
``linear_triton.py``), MADE's network fused (``mlp_ops.py`` / ``mlp_reference.py``) and the
discretised logistic mixture's log-likelihood (``mixture_ops.py`` / ``mixture_reference.py``).
Importing this module declares every op of the family (what ``registry.load_families``
relies on)."""
from .conv_ops import masked_conv2d
from .gate_ops import masked_conv2d_gated
from .linear_ops import masked_linear
from .mixture_ops import logistic_mixture_log_prob
from .mlp_ops import masked_mlp

__all__ = ["logistic_mixture_log_prob", "masked_conv2d", "masked_conv2d_gated", "masked_linear", "masked_mlp"]
