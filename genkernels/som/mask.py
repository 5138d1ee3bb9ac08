"""``genkernels.SOMMaskLinear`` and ``genkernels.SOMMaskConv2d``: layers whose outputs are
gated by a self-organizing map trained on the layer's input.

The layer holds a SOM with one node per output (neuron, or channel) on a lattice, with its
own weight vectors (the synaptic vectors, a buffer: not the layer's weights, not trained by
gradients). On every forward the SOM's winner w for the input selects a mask over the
outputs, m_j = exp(-|pos_w - pos_j|^2 / (2 sigma_forward^2)), the Gaussian neighbourhood
of the winner on the lattice:

* ``mode="dense"`` multiplies every output by its m (an ordinary layer computes them all);
* ``mode="threshold"`` keeps only the outputs whose m >= ``threshold`` (in (0, 1]) or the
  ``top_k`` largest, scaled by their m, the others 0 -- and computes only those: the kernels
  gather the kept outputs' weight rows (genkernels.ops.som_mask_linear / som_mask_conv2d), so
  keeping 5 of 100 channels costs about 5% of the dense product, forward and backward.

The ReLU is part of the layer; ``order`` writes the mask before ("mask_relu") or after
("relu_mask") it -- m >= 0, so both give the same values and gradients. The mask is a
constant for autograd: gradients reach the input, the weight and the bias through the kept
outputs only (genkernels/som/mask_reference.py).

In training mode every forward also trains the SOM on the batch with width
``sigma_organize``: ``rule="batch"`` (default) moves the synaptic vectors by
``learning_rate`` towards Kohonen's batch-rule update of the batch (winners from
genkernels.ops.som_bmu, the update from genkernels.ops.som_smooth; learning_rate = 1 is the
batch rule itself); ``rule="online"`` runs Kohonen's sequential rule over the batch's rows in
order (genkernels.ops.som_online). In eval mode the SOM is left as it is. The first
training forward initialises the synaptic vectors with rows of its SOM inputs drawn by
``seed`` (before that they are seeded N(0, 1) draws).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_int, check_model_dtype, check_positive
from ..model import model_seed
from .lattice import TOPOLOGIES, Lattice
from .mask_ops import _pair, mask_conv2d, mask_linear
from .mask_reference import ORDERS, mask_tables, neighborhood_table
from .ops import som_bmu, som_online, som_smooth

MODES = ("threshold", "dense")
RULES = ("batch", "online")
WINNERS = ("image", "patch")


def _default_grid(n: int) -> tuple[int, int]:
    """The squarest (rows, cols) with rows * cols = n, rows <= cols."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


class _SOMMask(nn.Module):
    """The SOM, its mask tables and its training rule, shared by both layers."""

    def __init__(self, n_outputs: int, som_features: int, grid, sigma_organize: float, sigma_forward: float,
                 threshold: float | None, top_k: int | None, mode: str, order: str, rule: str,
                 learning_rate: float, topology: str, seed: int | None, backend: str | None, dtype, device):
        super().__init__()
        grid = _default_grid(n_outputs) if grid is None else grid
        if isinstance(grid, int) and not isinstance(grid, bool):
            grid = (1, grid)
        if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
            raise TypeError(f"grid must be (rows, cols), an int or None; got {grid!r}")
        rows, cols = (check_int(f"grid[{i}]", g, 1) for i, g in enumerate(grid))
        if rows * cols != n_outputs:
            raise ValueError(f"grid must hold one node per output: rows * cols = {n_outputs}; got {tuple(grid)}")
        self.lattice = Lattice(rows, cols, check_choice("topology", topology, TOPOLOGIES))
        self.mode = check_choice("mode", mode, MODES)
        self.order = check_choice("order", order, ORDERS)
        self.rule = check_choice("rule", rule, RULES)
        if mode == "threshold":
            if (threshold is None) == (top_k is None):
                raise ValueError("mode='threshold' needs exactly one of threshold and top_k; got "
                                 f"threshold={threshold!r}, top_k={top_k!r}")
        elif threshold is not None or top_k is not None:
            raise ValueError(f"mode='dense' multiplies by the whole mask: threshold and top_k must be None; got "
                             f"threshold={threshold!r}, top_k={top_k!r}")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
                raise ValueError(f"threshold must be a number in (0, 1]; got {threshold!r}")
            threshold = float(threshold)
        if top_k is not None:
            top_k = check_int("top_k", top_k, 1, n_outputs)
        self.threshold, self.top_k = threshold, top_k
        self._sigma_forward = check_positive("sigma_forward", sigma_forward)
        self.sigma_organize = sigma_organize
        self.learning_rate = learning_rate
        self.backend = backend
        self.seed = model_seed(seed)
        self.n_outputs, self.som_features = n_outputs, som_features
        dtype = check_model_dtype(dtype)
        g = torch.Generator().manual_seed(self.seed)
        self.register_buffer("synaptic", torch.randn(n_outputs, som_features, generator=g, dtype=torch.float64)
                             .to(dtype=dtype, device=device))
        self.register_buffer("som_initialized", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("coords", self.lattice.coords(torch.float64, device), persistent=False)
        self.register_buffer("kept", torch.empty(0, dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("mask_values", torch.empty(0, dtype=dtype, device=device), persistent=False)
        self._build_tables()

    # ------------------------------------------------------------------ settings
    @property
    def sigma_forward(self) -> float:
        """The width of the mask (lattice units); setting it rebuilds the mask tables."""
        return self._sigma_forward

    @sigma_forward.setter
    def sigma_forward(self, value: float) -> None:
        self._sigma_forward = check_positive("sigma_forward", value)
        self._build_tables()

    @property
    def sigma_organize(self) -> float:
        """The width of the SOM's training neighbourhood (lattice units)."""
        return self._sigma_organize

    @sigma_organize.setter
    def sigma_organize(self, value: float) -> None:
        self._sigma_organize = check_positive("sigma_organize", value)

    @property
    def learning_rate(self) -> float:
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"learning_rate must be a number in (0, 1]; got {value!r}")
        self._learning_rate = float(value)

    def _build_tables(self) -> None:
        dtype, device = self.synaptic.dtype, self.synaptic.device
        if self.mode == "dense":
            self.mask_values = neighborhood_table(self.coords, self._sigma_forward, self.lattice.periods).to(dtype)
            self.kept = torch.empty(0, dtype=torch.int64, device=device)
            return
        self.kept, self.mask_values = mask_tables(self.coords, self._sigma_forward, self.threshold, self.top_k,
                                                  self.lattice.periods, dtype)

    def _apply(self, fn, recurse=True):
        # the tables follow the buffers' device and dtype, rebuilt rather than converted
        # (kept stays int64, the thresholds compare float64 values)
        out = super()._apply(fn, recurse)
        self._build_tables()
        return out

    @property
    def kept_outputs(self) -> int:
        """S: the most outputs one winner keeps (all of them in dense mode)."""
        return self.n_outputs if self.mode == "dense" else self.kept.shape[1]

    # ---------------------------------------------------------------------- SOM
    def winners(self, som_x: torch.Tensor) -> torch.Tensor:
        """(N, som_features) -> (N,) int64 winning nodes; in training mode the SOM is then
        trained on the rows (module docstring)."""
        som_x = som_x.detach().to(self.synaptic.dtype)
        if self.training and not bool(self.som_initialized) and som_x.shape[0]:
            self._initialize(som_x)
        idx = som_bmu(som_x, self.synaptic, 1, backend=self.backend)[0][:, 0]
        if self.training and som_x.shape[0]:
            self._organize(som_x, idx)
        return idx

    def _initialize(self, som_x: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(self.seed)
        n = som_x.shape[0]
        rows = torch.randperm(n, generator=g)[:self.n_outputs] if n >= self.n_outputs else \
            torch.randint(n, (self.n_outputs,), generator=g)
        self.synaptic.copy_(som_x[rows.to(som_x.device)])
        self.som_initialized.fill_(True)

    @torch.no_grad()
    def _organize(self, som_x: torch.Tensor, idx: torch.Tensor) -> None:
        w = self.synaptic
        periods = self.lattice.periods
        coords = self.coords.to(w.dtype)
        if self.rule == "online":
            n = som_x.shape[0]
            order = torch.arange(n, device=w.device)[None]
            lr = torch.full((1, n), self._learning_rate, dtype=w.dtype, device=w.device)
            sigma = torch.full((1, n), self._sigma_organize, dtype=w.dtype, device=w.device)
            w.copy_(som_online(w[None], som_x, order, lr, sigma, coords, periods, "gaussian", backend=self.backend)[0])
            return
        sums = torch.zeros_like(w).index_add_(0, idx, som_x)
        counts = torch.bincount(idx, minlength=self.n_outputs).to(w.dtype)
        grid_shape = self.lattice.shape if self.lattice.separable else None
        target = som_smooth(sums, counts, w, coords, periods, "gaussian", self._sigma_organize, grid_shape)
        w.add_(target - w, alpha=self._learning_rate)

    def _som_repr(self) -> str:
        keep = f"threshold={self.threshold}" if self.threshold is not None else \
            f"top_k={self.top_k}" if self.top_k is not None else "dense"
        return (f"grid={self.lattice.shape}, {keep}, sigma_organize={self._sigma_organize}, "
                f"sigma_forward={self._sigma_forward}, order={self.order!r}, rule={self.rule!r}")

    def _mask_dense(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The dense mode's output from the pre-activation z and the mask (z's shape)."""
        if self.order == "mask_relu":
            return torch.relu(mask * z)
        return mask * torch.relu(z)


def _check_input(x, ndim: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; got dtype {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"x must be {what}; got shape {tuple(x.shape)}")


class SOMMaskLinear(_SOMMask):
    """A linear layer + ReLU whose outputs a SOM on its input masks: (..., in_features) ->
    (..., out_features).

    Args:
        in_features, out_features: D and C; the SOM has C nodes of D features.
        bias: learn an additive bias.
        grid: (rows, cols) of the SOM lattice, rows * cols = out_features (None: the squarest).
        sigma_organize: the SOM's training neighbourhood width (lattice units), > 0.
        sigma_forward: the mask's width, > 0.
        threshold, top_k: mode="threshold" keeps the outputs whose mask is >= threshold
            (in (0, 1]; 1 keeps the winner alone) or the top_k largest (in [1, C]).
        mode: "threshold" (compute the kept outputs only) or "dense" (multiply all by the mask).
        order: "relu_mask" or "mask_relu" (equal, module docstring).
        rule: "batch" or "online", with learning_rate in (0, 1] (module docstring).
        topology: "rectangular" or "hexagonal" lattice.
        seed: the SOM's initialisation, an int in [0, 2^64); None draws one. The layer's
            weight and bias are initialised as torch.nn.Linear's (torch's generator).
        backend: None (auto), "reference", "cpu" or "triton": the masked product and the SOM ops.
        dtype, device: of the weights and the SOM (float32 or float64).

    Example::

        layer = genkernels.SOMMaskLinear(784, 100, sigma_organize=2.0, sigma_forward=1.0, top_k=5)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, grid=None,
                 sigma_organize: float = 1.0, sigma_forward: float = 1.0, threshold: float | None = None,
                 top_k: int | None = None, mode: str = "threshold", order: str = "relu_mask", rule: str = "batch",
                 learning_rate: float = 0.5, topology: str = "rectangular", seed: int | None = None,
                 backend: str | None = None, dtype: torch.dtype = torch.float32, device=None):
        in_features = check_int("in_features", in_features, 1)
        out_features = check_int("out_features", out_features, 1)
        super().__init__(out_features, in_features, grid, sigma_organize, sigma_forward, threshold, top_k, mode,
                         order, rule, learning_rate, topology, seed, backend, dtype, device)
        self.in_features, self.out_features = in_features, out_features
        ref = nn.Linear(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.weight = ref.weight
        self.bias = ref.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features) in the weight's dtype."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be (..., {self.in_features}) (in_features = {self.in_features}); got shape "
                             f"{tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; got dtype {x.dtype}")
        if x.device != self.weight.device:
            raise ValueError(f"x is on {x.device} but the layer is on {self.weight.device}")
        flat = x.reshape(-1, self.in_features).to(self.weight.dtype)
        idx = self.winners(flat)
        if self.mode == "dense":
            out = self._mask_dense(F.linear(flat, self.weight, self.bias), self.mask_values[idx])
        else:
            out = mask_linear(flat, self.weight, self.bias, idx, self.kept, self.mask_values, True, self.backend)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._som_repr())


class SOMMaskConv2d(_SOMMask):
    """A 2-D convolution + ReLU whose output channels a SOM masks: (B, in_channels, H, W) ->
    (B, out_channels, Ho, Wo).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as
            torch.nn.Conv2d (zero padding, groups = 1).
        winner: "image" -- the SOM sees the whole input image, flattened (in_channels * H * W
            features, so ``input_size=(H, W)`` is required): one mask over the channels per
            image -- or "patch" -- the convolutional SOM: it sees the in_channels x kh x kw
            patch at each output position: one mask over the channels per position.
        input_size: (H, W) of the inputs, for winner="image".
        the rest: as :class:`SOMMaskLinear`, over the channels.

    Example::

        conv = genkernels.SOMMaskConv2d(1, 100, 3, padding=1, winner="image", input_size=(28, 28),
                                        sigma_organize=2.0, sigma_forward=1.0, top_k=5)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, *, winner: str = "image", input_size=None, grid=None,
                 sigma_organize: float = 1.0, sigma_forward: float = 1.0, threshold: float | None = None,
                 top_k: int | None = None, mode: str = "threshold", order: str = "relu_mask", rule: str = "batch",
                 learning_rate: float = 0.5, topology: str = "rectangular", seed: int | None = None,
                 backend: str | None = None, dtype: torch.dtype = torch.float32, device=None):
        in_channels = check_int("in_channels", in_channels, 1)
        out_channels = check_int("out_channels", out_channels, 1)
        self_kernel = _pair("kernel_size", kernel_size, 1)
        self_stride, self_padding = _pair("stride", stride, 1), _pair("padding", padding, 0)
        self_dilation = _pair("dilation", dilation, 1)
        winner = check_choice("winner", winner, WINNERS)
        if winner == "image":
            if input_size is None:
                raise ValueError("winner='image' needs input_size=(H, W): the SOM sees the whole image")
            input_size = _pair("input_size", input_size, 1)
            som_features = in_channels * input_size[0] * input_size[1]
        else:
            if input_size is not None:
                input_size = _pair("input_size", input_size, 1)
            som_features = in_channels * self_kernel[0] * self_kernel[1]
        super().__init__(out_channels, som_features, grid, sigma_organize, sigma_forward, threshold, top_k, mode,
                         order, rule, learning_rate, topology, seed, backend, dtype, device)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = self_kernel, self_stride, self_padding, \
            self_dilation
        self.winner, self.input_size = winner, input_size
        ref = nn.Conv2d(in_channels, out_channels, self_kernel, self_stride, self_padding, self_dilation, bias=bias,
                        dtype=dtype, device=device)
        self.weight = ref.weight
        self.bias = ref.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> (B, out_channels, Ho, Wo) in the weight's dtype."""
        _check_input(x, 4, f"(B, {self.in_channels}, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (in_channels); got shape {tuple(x.shape)}")
        if self.winner == "image" and tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"x must be (B, {self.in_channels}, {self.input_size[0]}, {self.input_size[1]}) "
                             f"(input_size, winner='image'); got shape {tuple(x.shape)}")
        if x.device != self.weight.device:
            raise ValueError(f"x is on {x.device} but the layer is on {self.weight.device}")
        x = x.to(self.weight.dtype)
        b = x.shape[0]
        if self.winner == "image":
            idx = self.winners(x.reshape(b, -1)).reshape(b, 1)
        else:
            patches = F.unfold(x.detach(), self.kernel_size, self.dilation, self.padding, self.stride)  # (B, Dp, L)
            idx = self.winners(patches.transpose(1, 2).reshape(-1, self.som_features)).reshape(b, -1)
        if self.mode == "dense":
            z = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
            mask = self.mask_values[idx]                                      # (B, P, C)
            mask = mask.transpose(1, 2).reshape(b, self.out_channels, *z.shape[2:]) if idx.shape[1] > 1 \
                else mask.reshape(b, self.out_channels, 1, 1)
            return self._mask_dense(z, mask)
        return mask_conv2d(x, self.weight, self.bias, idx, self.kept, self.mask_values, self.stride, self.padding,
                           self.dilation, True, self.backend)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, winner={self.winner!r}, " + self._som_repr())
