"""Pure-PyTorch specification of the masked linear layer (``genkernels.MaskedLinear``, op
``masked_linear``), the building block of MADE.

MADE (Germain et al., 2015) gives every unit a degree: input i has degree d_i (its position
in the autoregressive order, 1..D), hidden unit k a degree m_k in [1, D - 1]. A hidden layer's
unit k sees input (or earlier hidden) unit j when m_k >= d_j; an output unit of degree d sees
hidden unit j when d > m_j. With the inputs of a layer sorted by degree, the units an output
sees are a *prefix* of the inputs: output j sees the inputs [0, prefix_j), and with the
outputs sorted by degree too the mask is block lower-triangular. The layer is

    out = x @ (W * M)^T + b,     M[j, i] = 1 if i < prefix_j else 0

with x (B, Din), W (Dout, Din), b (Dout,) or None, prefix (Dout,) int64 in [0, Din]. The
kernels compute the same without the zero blocks: the outputs with equal prefixes form runs,
and each run is one product with the first prefix columns of x.

:func:`degrees_to_prefix` turns MADE's degrees into prefixes (and the permutations that sort
the units).
"""

from __future__ import annotations

import torch


def prefix_mask(prefix: torch.Tensor, in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(Dout, Din) 0/1 mask: row j is 1 on the first prefix[j] columns."""
    return (torch.arange(in_features, device=prefix.device)[None, :] < prefix[:, None]).to(dtype)


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  prefix: torch.Tensor) -> torch.Tensor:
    """The definition (differentiable): x @ (weight * mask)^T + bias."""
    mask = prefix_mask(prefix, weight.shape[1], weight.dtype)
    return torch.nn.functional.linear(x, weight * mask, bias)


def degrees_to_prefix(in_degrees: torch.Tensor, out_degrees: torch.Tensor, strict: bool) -> torch.Tensor:
    """Prefixes of a layer whose inputs (sorted ascending by degree) have ``in_degrees`` and
    whose outputs have ``out_degrees``: output j sees the inputs of degree < out_degrees[j]
    (``strict``, the output layer) or <= it (hidden layers)."""
    if in_degrees.numel() > 1 and not bool((in_degrees[1:] >= in_degrees[:-1]).all()):
        raise ValueError("in_degrees must be sorted ascending (the layer's inputs ordered by degree)")
    side = "left" if strict else "right"
    return torch.searchsorted(in_degrees.contiguous(), out_degrees.contiguous(), side=side).to(torch.int64)
