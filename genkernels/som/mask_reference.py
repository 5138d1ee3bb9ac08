"""Pure-PyTorch specification of the SOM-masked layers (``genkernels.SOMMaskLinear``,
``genkernels.SOMMaskConv2d``; ops ``som_mask_linear`` and ``som_mask_conv2d``).

A SOM with as many nodes as the layer has outputs (neurons, or channels) lies on a lattice
and is trained on the layer's input with its own weight vectors (the synaptic vectors; not
the layer's weights). For an input whose winning node is w, output j is scaled by

    m_wj = h(|pos_w - pos_j|) = exp(-|pos_w - pos_j|^2 / (2 sigma^2))      (sigma_forward)

the Gaussian neighbourhood of the winner on the lattice. Dense mode multiplies every
output by its m; threshold mode keeps only the outputs whose m is at least ``threshold``
(in (0, 1]; threshold = 1 keeps the winner alone) or the ``top_k`` largest (ties to the
lowest index), scales those by their m and sets the others to 0. Whatever the input, which
outputs an input keeps and their m depend on its winner only, so the layer holds them as two
tables (:func:`mask_tables`):

    kept   (K, S) int64  the outputs node w keeps, ascending, then -1 padding
    values (K, S) float  their m_wj (0 on padding)

S, the widest kept set, is about the number of kept outputs (5 of 100, ...): the kernels
compute only those outputs -- gathered filter rows -- and write 0 to the others.

The ops (C outputs; winners int64 in [0, K), K the tables' rows; ``relu``: the ReLU is part
of the layer):

    som_mask_linear(x (B, D), weight (C, D), bias (C,) | None, winners (B,), kept, values, relu)
        out[b, c] = act(m_bc (x_b . W_c + bias_c)),   m_bc = values[w_b, s] where
        kept[w_b, s] = c, and out[b, c] = 0 where c is not kept.
    som_mask_conv2d(x (B, Cin, H, W), weight (C, Cin, kh, kw), bias, winners (B, P), kept,
                    values, stride, padding, dilation, relu) -> (B, C, Ho, Wo)
        the same per output position, with conv2d's pre-activation; P = 1 (winner="image":
        one winner per image, one mask over the channels) or P = Ho * Wo (winner="patch":
        a winner per position, positions row-major).

act is the ReLU (relu=True) or the identity. The layer's ``order`` puts the mask before
("mask_relu": relu(m z)) or after ("relu_mask": m relu(z)) the ReLU; m >= 0, so both give
the same values and the same gradients (relu(m z) = m relu(z), and the ReLU passes gradient
where m z > 0, i.e. where m > 0 and z > 0): the kernels compute one expression for both.

Gradients: the winner is piecewise constant in the input and in the synaptic vectors, and
the lattice distances and sigma_forward are constants, so the mask has no gradient almost
everywhere; it is treated as a constant (no gradient to the SOM, which learns by its own
rule, nor to sigma_forward). With g = grad_out * m * [out > 0 if relu] (0 where not kept):

    grad_x = g @ W (conv: the transposed convolution of g),   grad_W = g^T x (conv: the
    correlation of g with x's patches),   grad_bias = sum of g over rows (and positions).

Everything here is written with the dense (B, C) / (B, C, Ho, Wo) mask: the definition,
differentiated by autograd (the oracle of every backend), and its explicit VJP.
Arithmetic in the accumulation dtype (fp32, fp64 for fp64 input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import acc_dtype
from .reference import lattice_deltas, neighborhood

ORDERS = ("mask_relu", "relu_mask")


def neighborhood_table(coords: torch.Tensor, sigma: float, periods: tuple[float, float] = (0.0, 0.0)
                       ) -> torch.Tensor:
    """(K, K) float64 Gaussian neighbourhood h[w, j] of node positions coords (K, 2)."""
    c = coords.to(torch.float64)
    d0, d1 = lattice_deltas(c[:, None, :], c[None, :, :], *periods)
    return neighborhood("gaussian", d0, d1, sigma)


def mask_tables(coords: torch.Tensor, sigma: float, threshold: float | None = None, top_k: int | None = None,
                periods: tuple[float, float] = (0.0, 0.0), dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept outputs of every winner and their mask values (module docstring).

    coords (K, 2) node positions; one of ``threshold`` (keep h >= threshold) and ``top_k``
    (the k largest h, ties to the lowest index), or neither (every output, the dense mask).
    Returns kept (K, S) int64 (ascending, -1 padding) and values (K, S) in ``dtype`` (0 on
    padding), on coords' device. The threshold compares float64 values."""
    h = neighborhood_table(coords, sigma, periods)
    k_nodes = h.shape[0]
    if top_k is not None:
        order = torch.argsort(-h, dim=1, stable=True)[:, :top_k]
        keep = torch.zeros_like(h, dtype=torch.bool).scatter_(1, order, True)
    elif threshold is not None:
        keep = h >= threshold
    else:
        keep = torch.ones_like(h, dtype=torch.bool)
    width = int(keep.sum(1).max()) if k_nodes else 0
    # ascending kept indices first, then the padding: sort the positions with kept ones first
    cols = torch.arange(k_nodes, dtype=torch.int64, device=h.device).expand(k_nodes, k_nodes)
    rank = torch.where(keep, cols, cols + k_nodes)
    idx = torch.sort(rank, dim=1).values[:, :width]
    valid = idx < k_nodes
    kept = torch.where(valid, idx, torch.full_like(idx, -1))
    values = torch.where(valid, h.gather(1, idx.clamp(max=max(k_nodes - 1, 0))), torch.zeros((), dtype=h.dtype))
    return kept, values.to(dtype)


def dense_mask(winners: torch.Tensor, kept: torch.Tensor, values: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """winners (...) int64 -> the mask (..., n_outputs): values[w, s] at kept[w, s], else 0."""
    k_nodes, width = kept.shape
    table = torch.zeros(k_nodes, n_outputs + 1, dtype=values.dtype, device=values.device)
    # padding (-1) lands in the extra last column, dropped below
    table.scatter_(1, torch.where(kept >= 0, kept, n_outputs), values)
    return table[:, :n_outputs][winners]


def _act(z: torch.Tensor, relu: bool) -> torch.Tensor:
    return torch.relu(z) if relu else z


def som_mask_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, winners: torch.Tensor,
                    kept: torch.Tensor, values: torch.Tensor, relu: bool = True, order: str = "relu_mask"
                    ) -> torch.Tensor:
    """The definition (autograd differentiates it): x (B, D), weight (C, D), bias (C,) or
    None, winners (B,), kept / values (K, S) -> (B, C) in the accumulation dtype. ``order``
    writes the mask before or after the ReLU (the same values: module docstring)."""
    dt = acc_dtype(x.dtype)
    z = F.linear(x.to(dt), weight.to(dt), None if bias is None else bias.to(dt))
    m = dense_mask(winners, kept, values.to(dt), weight.shape[0])
    return _act(m * z, relu) if order == "mask_relu" else m * _act(z, relu)


def conv_mask(winners: torch.Tensor, kept: torch.Tensor, values: torch.Tensor, n_outputs: int,
              out_hw: tuple[int, int]) -> torch.Tensor:
    """winners (B, P), P = 1 or Ho * Wo -> the mask (B, C, Ho, Wo) (broadcast for P = 1)."""
    m = dense_mask(winners, kept, values, n_outputs)                        # (B, P, C)
    b = winners.shape[0]
    if winners.shape[1] == 1:
        return m.reshape(b, n_outputs, 1, 1)
    return m.transpose(1, 2).reshape(b, n_outputs, *out_hw)


def som_mask_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, winners: torch.Tensor,
                    kept: torch.Tensor, values: torch.Tensor, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                    relu: bool = True, order: str = "relu_mask") -> torch.Tensor:
    """The definition: x (B, Cin, H, W), weight (C, Cin, kh, kw), winners (B, P) with P = 1 or
    Ho * Wo -> (B, C, Ho, Wo) in the accumulation dtype."""
    dt = acc_dtype(x.dtype)
    z = F.conv2d(x.to(dt), weight.to(dt), None if bias is None else bias.to(dt), tuple(stride), tuple(padding),
                 tuple(dilation))
    m = conv_mask(winners, kept, values.to(dt), weight.shape[0], tuple(z.shape[2:]))
    return _act(m * z, relu) if order == "mask_relu" else m * _act(z, relu)


def _masked_grad(grad: torch.Tensor, m: torch.Tensor, out: torch.Tensor, relu: bool) -> torch.Tensor:
    g = grad * m
    return torch.where(out > 0, g, torch.zeros((), dtype=g.dtype)) if relu else g


def som_mask_linear_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, winners: torch.Tensor,
                             kept: torch.Tensor, values: torch.Tensor, out: torch.Tensor, relu: bool
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The explicit VJP (module docstring) from the forward's output: (grad_x (B, D),
    grad_weight (C, D), grad_bias (C,)) in the accumulation dtype."""
    dt = acc_dtype(x.dtype)
    m = dense_mask(winners, kept, values.to(dt), weight.shape[0])
    g = _masked_grad(grad.to(dt), m, out.to(dt), relu)
    return g @ weight.to(dt), g.T @ x.to(dt), g.sum(0)


def som_mask_conv2d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, winners: torch.Tensor,
                             kept: torch.Tensor, values: torch.Tensor, out: torch.Tensor, stride=(1, 1),
                             padding=(0, 0), dilation=(1, 1), relu: bool = True
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The explicit VJP of som_mask_conv2d: (grad_x, grad_weight, grad_bias (C,))."""
    dt = acc_dtype(x.dtype)
    m = conv_mask(winners, kept, values.to(dt), weight.shape[0], tuple(out.shape[2:]))
    g = _masked_grad(grad.to(dt), m, out.to(dt), relu)
    xd, wd = x.to(dt), weight.to(dt)
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    grad_x = torch.nn.grad.conv2d_input(xd.shape, wd, g, stride, padding, dilation)
    grad_w = torch.nn.grad.conv2d_weight(xd, wd.shape, g, stride, padding, dilation)
    return grad_x, grad_w, g.sum((0, 2, 3))
