"""Causality you can check: does every output of an autoregressive model depend only on the
inputs before it in the stated order, and on all of them?

A wrong mask is the most common bug in autoregressive code -- a type-B mask in the first
layer leaks the value being predicted, a PixelCNN without the gated stacks has a blind spot
(pixels above and to the right that no layer sees), colour groups in the wrong order. Both
show in the model's Jacobian: output i depends on input j exactly where d out_i / d x_j is not
zero. :func:`check_autoregressive` computes the Jacobian row of every output by backward
passes (float64, at a few random inputs, the union of their nonzero entries -- a nonzero
derivative proves a dependency; a derivative that vanishes at one input by accident, a dead
ReLU, rarely does at all of them) and compares it with the order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import check_choice, check_int

ORDERS = ("raster", "natural")


@dataclass
class AutoregressiveReport:
    """What :func:`check_autoregressive` found.

    ``depends`` (n, n) bool: output i depends on input j (n values, flattened row-major over
    the input shape); ``rank`` (n,): each value's position in the order (0 first);
    ``violations``: (output, input) index pairs where an output depends on an input at or
    after its own position; ``blind``: per output, the earlier inputs it does not depend on
    (only outputs that miss some); ``receptive_field`` (n,): how many inputs each output
    depends on. ``ok``: no violation (a blind spot is reported, not a violation: models with
    a limited receptive field are valid, if weaker)."""

    shape: tuple[int, ...]
    order: str
    rank: torch.Tensor
    depends: torch.Tensor
    violations: list[tuple[int, int]] = field(default_factory=list)
    blind: dict[int, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def receptive_field(self) -> torch.Tensor:
        return self.depends.sum(1)

    def position(self, index: int) -> tuple[int, ...]:
        """The multi-index of flat value ``index`` in the input shape."""
        return tuple(int(i) for i in torch.unravel_index(torch.tensor(index), self.shape))

    def __str__(self) -> str:
        n = self.rank.numel()
        lines = [f"autoregressive check over {n} values of shape {self.shape}, order {self.order!r}: "
                 + ("OK" if self.ok else f"{len(self.violations)} VIOLATIONS")]
        for out, inp in self.violations[:10]:
            lines.append(f"  output {self.position(out)} depends on input {self.position(inp)}, which is not before it")
        if self.blind:
            worst = max(self.blind, key=lambda i: len(self.blind[i]))
            lines.append(f"  blind spots: {len(self.blind)} outputs miss earlier inputs; output {self.position(worst)} "
                         f"misses {len(self.blind[worst])} of its {int(self.rank[worst])}, e.g. "
                         + ", ".join(str(self.position(j)) for j in self.blind[worst][:5]))
        else:
            lines.append("  no blind spot: every output depends on every input before it")
        return "\n".join(lines)


def _ranks(shape: tuple[int, ...], order) -> tuple[torch.Tensor, str]:
    n = 1
    for s in shape:
        n *= s
    if isinstance(order, torch.Tensor):
        rank = order.flatten().to(torch.int64)
        if rank.numel() != n or not torch.equal(torch.sort(rank).values, torch.arange(n)):
            raise ValueError(f"order must hold a rank per value: a permutation of 0..{n - 1}; got shape "
                             f"{tuple(order.shape)}")
        return rank, "custom"
    check_choice("order", order, ORDERS)
    if order == "natural":
        return torch.arange(n), order
    if len(shape) != 3:
        raise ValueError(f"order='raster' takes an image shape (C, H, W); got {shape}")
    c, h, w = shape
    # raster over pixels, then the channels inside a pixel (R before G before B)
    ch, y, x = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
    return ((y * w + x) * c + ch).flatten(), order


def _outputs_of(model, x: torch.Tensor) -> torch.Tensor:
    """(B, n, P): the model's outputs of each value (P per value)."""
    from .pixelcnn import GatedPixelCNN

    if isinstance(model, GatedPixelCNN):
        out = model.network_logits(x)
        if out.dim() == 5:  # (B, C, L, H, W) -> (B, C, H, W, L)
            out = out.permute(0, 1, 3, 4, 2)
        elif model.mixtures is not None:   # a pixel's mixture parameters predict each of its channels
            out = out.permute(0, 2, 3, 1)[:, None].expand(-1, x.shape[1], -1, -1, -1)
        return out.reshape(x.shape[0], x[0].numel(), -1)
    out = model(x)
    return out.reshape(x.shape[0], x[0].numel(), -1)


def check_autoregressive(model, shape, order="raster", *, trials: int = 3, seed: int = 0,
                         inputs=None) -> AutoregressiveReport:
    """Check from the Jacobian that each output of ``model`` depends only on the inputs before
    it in ``order``, and report its receptive field and blind spots.

    Args:
        model: a genkernels.GatedPixelCNN, or a callable taking x (B, *shape) and returning
            (B, *shape) or (B, *shape, P): P outputs per input value (logits, mixture
            parameters), the outputs of value i predicting value i.
        shape: one input's shape, e.g. (C, H, W) for images or (D,) for vectors.
        order: "raster" (images: pixels row by row, then the channels in a pixel), "natural"
            (flat index order), or a tensor of ranks (0 first) of that shape.
        trials: random inputs (float64, N(0, 1), or ``inputs``' rows) whose dependencies are
            united.
    Returns:
        an AutoregressiveReport; ``report.ok`` is False on any violation.
    """
    shape = tuple(check_int("shape", s, 1) for s in shape)
    trials = check_int("trials", trials, 1)
    rank, name = _ranks(shape, order)
    n = rank.numel()
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    dtype = params[0].dtype if params else torch.float64
    device = params[0].device if params else None
    if inputs is None:
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.randn(trials, *shape, generator=gen, dtype=torch.float64)
    inputs = inputs.to(device=device, dtype=dtype)
    depends = torch.zeros(n, n, dtype=torch.bool)
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    try:
        for t in range(inputs.shape[0]):
            x = inputs[t:t + 1].clone().requires_grad_()
            out = _outputs_of(model, x)
            for i in range(n):
                (g,) = torch.autograd.grad(out[0, i].sum(), x, retain_graph=True, allow_unused=True)
                if g is not None:
                    depends[i] |= (g[0].flatten() != 0).cpu()
    finally:
        if was_training:
            model.train()
    before = rank[None, :] < rank[:, None]           # before[i, j]: input j comes before output i
    bad = depends & ~before
    violations = [(int(i), int(j)) for i, j in bad.nonzero().tolist()]
    missing = before & ~depends
    blind = {int(i): [int(j) for j in missing[i].nonzero().flatten().tolist()]
             for i in range(n) if bool(missing[i].any())}
    return AutoregressiveReport(shape, name, rank, depends, violations, blind)
