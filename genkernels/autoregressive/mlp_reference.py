"""Pure-PyTorch specification of the fused masked MLP (op ``masked_mlp``): MADE's whole
network in one op.

With x (B, D0), L layers of weights W_l (D_l, D_{l-1}), biases b_l (D_l,) and prefixes p_l
(D_l,) int64 in [0, D_{l-1}] (masks M_l[j, i] = 1 for i < p_l[j], linear_reference's), and an
optional masked skip connection S (D_L, D0) with prefix p_S:

    h_0 = x
    h_l = relu(h_{l-1} (W_l * M_l)^T + b_l)           l = 1 .. L - 1
    out = h_{L-1} (W_L * M_L)^T + b_L  [+ x (S * M_S)^T]

Returns out (B, D_L) and the hidden activations [h_1, ..., h_{L-1}] (after their ReLU; the
backward needs them). A full prefix (p_l = D_{l-1} everywhere) is a plain dense layer.
"""

from __future__ import annotations

import torch

from .linear_reference import masked_linear


def masked_mlp(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor], prefixes: list[torch.Tensor],
               skip_weight: torch.Tensor | None = None,
               skip_prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The definition (differentiable): -> (out (B, D_L), [h_1, ..., h_{L-1}])."""
    h, hidden = x, []
    for i, (w, b, p) in enumerate(zip(weights, biases, prefixes)):
        h = masked_linear(h, w, b, p)
        if i < len(weights) - 1:
            h = torch.relu(h)
            hidden.append(h)
    if skip_weight is not None:
        h = h + masked_linear(x, skip_weight, None, skip_prefix)
    return h, hidden
