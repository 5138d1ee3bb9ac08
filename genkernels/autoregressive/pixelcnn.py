"""Gated PixelCNN (van den Oord et al., 2016, "Conditional Image Generation with PixelCNN
Decoders") on this family's masked convolutions.

The network has two stacks. The *vertical* stack sees the rows above the current pixel
(every column of them): its first layer's k x k kernel keeps the rows strictly above the
centre, its later layers the rows up to and including the centre row of their input --
which itself holds only information from above -- so no vertical feature at row y ever
depends on row y of the image. The *horizontal* stack sees the current row to the left:
1 x k kernels keeping the taps left of the centre, and the centre itself through the
channel-group rule (strict in the first layer, inclusive after it). Each layer adds the
vertical stack's pre-activation (through a 1 x 1 convolution: it holds nothing of the
current row, so every channel may see every channel) to the horizontal one's; together the
stacks cover every pixel before the current one in raster order -- the original PixelCNN's
blind spot is gone -- and the gated activation tanh(a) * sigmoid(b) follows every
convolution. The horizontal stack is residual from its second layer on.

Every convolution is a masked_conv2d (the vertical and horizontal stacks are grids of tap
rules, conv_reference's), so every backend of the op runs the whole network, and a channel
group g of the output (colour g of a multi-channel image) sees the input's groups < g at
the current pixel in the first layer and <= g after it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint as ckpt
from .. import registry
from .._checks import check_choice, check_int, check_positive
from ..model import DivergedError, Model, Progress, adam
from . import mixture_reference
from .conv_reference import FULL, INCLUSIVE, OFF, STRICT
from .gate_reference import gate
from .layers import MaskedConv2d
from .mixture_ops import logistic_mixture_log_prob

HEADS = ("bernoulli", "categorical", "logistic_mixture")


def vertical_rules(kernel_size: int, first: bool) -> list[int]:
    """k x k rules of the vertical stack: the rows above the centre (first layer) or up to
    and including it (later layers), every column."""
    c = kernel_size // 2
    last = c - 1 if first else c
    return [FULL if ky <= last else OFF for ky in range(kernel_size) for _ in range(kernel_size)]


def horizontal_rules(kernel_size: int, first: bool) -> list[int]:
    """1 x k rules of the horizontal stack: the taps left of the centre, and the centre
    through the channel groups (strict in the first layer, inclusive after it)."""
    c = kernel_size // 2
    centre = STRICT if first else INCLUSIVE
    return [FULL if kx < c else centre if kx == c else OFF for kx in range(kernel_size)]


class GatedLayer(nn.Module):
    """One layer of both stacks: (v, h) -> (v', h'). ``first``: the layer reading the image
    (type-A rules, no residual)."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, groups: int, first: bool,
                 condition_size: int | None, backend: str | None):
        super().__init__()
        self.groups, self.first = groups, first
        k = kernel_size
        self.v_conv = MaskedConv2d(in_channels, 2 * channels, (k, k), channel_groups=groups,
                                   rules=vertical_rules(k, first), backend=backend)
        self.h_conv = MaskedConv2d(in_channels, 2 * channels, (1, k), channel_groups=groups,
                                   rules=horizontal_rules(k, first), backend=backend)
        self.link = MaskedConv2d(2 * channels, 2 * channels, 1, rules=[FULL], bias=False, backend=backend)
        self.h_out = MaskedConv2d(channels, channels, 1, "B", channel_groups=groups, backend=backend)
        self.condition = nn.Linear(condition_size, 4 * channels, bias=False) if condition_size else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, cond: torch.Tensor | None = None):
        # v' = gate(v_conv(v) + cv), h_pre = h_conv(h) + link(v_conv(v)) + ch: each stack's
        # convolution and gate in one op; the vertical op's pre-activation holds cv, which
        # the link (a linear 1 x 1 map) carries over and ch - link(cv) takes back out
        cv = ch = None
        if self.condition is not None and cond is not None:
            cv, ch = self.condition(cond)[:, :, None, None].chunk(2, dim=1)
        v_new, v_pre = self.v_conv.gated(v, cv, return_pre=True)
        link = self.link(v_pre)
        h_new = self.h_out(self.h_conv.gated(h, link if cv is None else link + (ch - self.link(cv))))
        return v_new, h_new if self.first else h + h_new


class GatedPixelCNN(Model):
    """A Gated PixelCNN density model of images.

    Args:
        in_channels: the image's channels C (1 for binary or grey images, 3 for RGB).
        channels: hidden channels per stack (divisible by the channel groups).
        layers: gated layers (the first reads the image).
        kernel_size: odd k of the k x k vertical and 1 x k horizontal kernels.
        head: "bernoulli" (binary images: one logit per channel), "categorical"
            (``levels``-way softmax per channel, e.g. 256 for 8-bit images) or
            "logistic_mixture" (PixelCNN++'s discretised logistic mixture of ``mixtures``
            components over ``levels`` values, the channels of a pixel coupled through the
            mixture's coefficients: genkernels.autoregressive.mixture_reference).
        levels: the categorical and mixture heads' values per channel.
        mixtures: the logistic mixture's components.
        condition_size: the size of an optional conditioning vector (e.g. a one-hot class).
        seed: the key of the model's random stream (sampling draws from it), an int in
            [0, 2^64); None draws one from torch's RNG.
        backend: the masked convolutions' backend (None: automatic).

    With the Bernoulli and categorical heads a channel group per image channel: colour c of a
    pixel is predicted from every earlier pixel and the colours before it in the same pixel.
    The mixture head predicts all of a pixel's channels from the earlier pixels (one channel
    group: the network never sees the pixel itself) and couples them in the mixture.
    ``forward(x, cond)`` returns the head's outputs: logits (B, C, H, W) (Bernoulli) or (B,
    C, levels, H, W) (categorical), or the mixture's parameters (B, P, H, W); x holds the data
    (0/1, or integer levels in [0, levels)) as floats.
    """

    _dtype_source = "_dtype_ref"
    kind = "GatedPixelCNN"

    @property
    def _dtype_ref(self) -> torch.Tensor:
        return self.out2.weight

    def __init__(self, in_channels: int = 1, channels: int = 64, layers: int = 8, kernel_size: int = 5,
                 head: str = "bernoulli", levels: int = 256, condition_size: int | None = None,
                 seed: int | None = None, backend: str | None = None, mixtures: int = 5):
        super().__init__()
        self._init_stream(seed)
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.channels = check_int("channels", channels, 1)
        self.head = check_choice("head", head, HEADS)
        self.levels = 2 if head == "bernoulli" else check_int("levels", levels, 2)
        self.mixtures = check_int("mixtures", mixtures, 1) if head == "logistic_mixture" else None
        self.condition_size = None if condition_size is None else check_int("condition_size", condition_size, 1)
        layers = check_int("layers", layers, 1)
        kernel_size = check_int("kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the masks are centred on the pixel); got {kernel_size}")
        groups = 1 if head == "logistic_mixture" else self.in_channels
        self.kernel_size = kernel_size
        self.n_layers = layers
        self.backend = backend
        self.history: list[dict] = []
        if channels % groups:
            raise ValueError(f"channels ({channels}) must split into one group per image channel "
                             f"({groups}); {channels} is not divisible by {groups}")
        self.groups = groups
        self.layers = nn.ModuleList(
            GatedLayer(in_channels if i == 0 else channels, channels, kernel_size, groups, i == 0, self.condition_size,
                       backend) for i in range(layers))
        outputs = in_channels * (1 if head == "bernoulli" else self.levels) if self.mixtures is None else \
            mixture_reference.param_count(in_channels, self.mixtures)
        self.out1 = MaskedConv2d(channels, channels, 1, "B", channel_groups=groups, backend=backend)
        self.out2 = MaskedConv2d(channels, outputs, 1, "B", channel_groups=groups, backend=backend)

    # ------------------------------------------------------------------- network
    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        """The data mapped to [-1, 1], the network's input."""
        return x * (2.0 / (self.levels - 1)) - 1.0

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.check_data(x)
        return self.network_logits(self._scaled(x), cond)

    def network_logits(self, inputs: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The network on any real-valued input (B, C, H, W) -- the data already mapped to
        [-1, 1] in ``forward`` -- without the data checks (what check_autoregressive
        differentiates)."""
        cond = self._condition(cond, inputs.shape[0])
        v = h = inputs
        for layer in self.layers:
            v, h = layer(v, h, cond)
        logits = self.out2(F.relu(self.out1(F.relu(h))))
        if self.head != "categorical":
            return logits
        b, _, height, width = logits.shape
        return logits.view(b, self.in_channels, self.levels, height, width)

    def _condition(self, cond, batch: int):
        if self.condition_size is None:
            if cond is not None:
                raise ValueError("cond was given but the model has no condition_size")
            return None
        if cond is None:
            raise ValueError(f"the model is conditional (condition_size={self.condition_size}); give cond")
        if not isinstance(cond, torch.Tensor):
            raise TypeError(f"cond must be a torch.Tensor; got {type(cond).__name__}")
        if not cond.is_floating_point():   # class labels -> one-hot
            if cond.dim() != 1 or cond.shape[0] != batch:
                raise ValueError(f"integer cond must be ({batch},) class labels; got shape {tuple(cond.shape)}")
            if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.condition_size):
                raise ValueError(f"class labels must lie in [0, {self.condition_size}); got "
                                 f"[{int(cond.min())}, {int(cond.max())}]")
            cond = F.one_hot(cond.long(), self.condition_size)
        if cond.shape != (batch, self.condition_size):
            raise ValueError(f"cond must be ({batch}, {self.condition_size}); got shape {tuple(cond.shape)}")
        return cond.to(self.dtype)

    def check_data(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) as the parameters' float dtype, checked to hold the head's values:
        0 or 1 (Bernoulli) or integers in [0, levels) (categorical, logistic mixture)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W); got shape {tuple(x.shape)}")
        if x.dtype == torch.bool:
            x = x.to(torch.uint8)
        if x.numel() and not (torch.compiler.is_compiling()):
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if self.head == "bernoulli" and not bool(((x == 0) | (x == 1)).all()):
                raise ValueError(f"the Bernoulli head models binary images: x must hold 0 and 1 only; got values "
                                 f"in [{lo}, {hi}] (binarise the data first)")
            if self.head != "bernoulli" and (lo < 0 or hi > self.levels - 1 or
                                               not bool((x == torch.round(x)).all())):
                raise ValueError(f"the {self.head} head models integer levels in [0, {self.levels - 1}]; got "
                                 f"values in [{lo}, {hi}]" + ("" if bool((x == torch.round(x)).all()) else
                                                             ", not all integers"))
        return x.to(self.dtype)

    # ------------------------------------------------------------------ density
    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) log-likelihood of each image in nats."""
        x = self.check_data(x)
        logits = self(x, cond)
        if self.head == "bernoulli":
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        if self.mixtures is not None:
            return logistic_mixture_log_prob(logits, x, self.mixtures, self.levels,
                                             backend=self.backend).sum((1, 2))
        logp = torch.log_softmax(logits, dim=2)
        return logp.gather(2, x.long().unsqueeze(2)).squeeze(2).sum((1, 2, 3))

    def bits_per_dim(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood in bits per dimension (C H W values an image)."""
        return -self.log_prob(x, cond).mean() / (math.log(2) * x[0].numel())

    # ----------------------------------------------------------------- sampling
    def _value(self, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The data value whose CDF interval holds u: logits (n,) Bernoulli or (n, levels)."""
        if self.head == "bernoulli":
            return (u < torch.sigmoid(logits)).to(logits.dtype)
        cdf = torch.softmax(logits.double(), dim=-1).cumsum(-1)
        return (cdf[..., :-1] <= u.double()[..., None]).sum(-1).to(logits.dtype)

    def _sampling_inputs(self, n, image_size, cond, given, mask):
        n = check_int("n", n, 1)
        if given is None:
            if image_size is None:
                raise ValueError("give image_size=(H, W), or the partly observed images (given, mask)")
            h, w = (check_int("image_size", s, 1) for s in image_size)
            given = torch.zeros(n, self.in_channels, h, w, dtype=self.dtype, device=self.device)
            mask = torch.zeros(n, self.in_channels, h, w, dtype=torch.bool, device=self.device)
        else:
            given = self.check_data(given.to(self.device))
            if given.shape[0] != n:
                raise ValueError(f"given must hold n={n} images; got {given.shape[0]}")
            if mask is None:
                raise ValueError("given needs mask: True where a value is observed (kept), False where sampled")
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"mask must be a bool tensor; got {getattr(mask, 'dtype', type(mask).__name__)}")
            mask = torch.broadcast_to(mask.to(self.device), given.shape)
        return given, mask, self._condition(cond, n)

    @torch.no_grad()
    def sample(self, n: int, image_size=None, *, cond=None, given=None, mask=None, seed: int | None = None,
               method: str = "cached") -> torch.Tensor:
        """Draw n images in raster order (and colour order inside a pixel).

        image_size: (H, W) of new images; or ``given`` (n, C, H, W) data with ``mask`` (bool,
        broadcastable to it; True = observed): the observed values are kept and the others
        sampled in order, each conditioned on everything before it (image completion).
        seed: draw from (seed, 0) instead of the model's stream. Every value takes one
        uniform (counter per (image, channel, row, column)) and inverts its CDF.
        method: "cached" (default; Ramachandran et al., 2017) keeps every layer's activations
            and computes, for each new value, only what it changes: a row of the vertical
            stack once per image row, one position of the horizontal stack and the head per
            value -- the same logits as "naive" within the dtype's rounding; "naive" runs the
            whole network once per value.
        """
        check_choice("method", method, ("cached", "naive"))
        x, mask, cond = self._sampling_inputs(n, image_size, cond, given, mask)
        x = x.clone()
        with self._call_stream(seed) as stream:
            u = stream.rand(*x.shape, device=x.device)
        was_training = self.training
        self.eval()
        try:
            (self._sample_cached if method == "cached" else self._sample_naive)(x, mask, u, cond)
        finally:
            self.train(was_training)
        return x

    def _draw_pixel(self, x, mask, u, y, col, params) -> None:
        """The mixture head: sample the channels of pixel (y, col) of every image in order,
        each from its level's distribution given the earlier ones, unless observed."""
        for c in range(x.shape[1]):
            probs = mixture_reference.level_probabilities(params, x[:, :, y, col], c, self.mixtures, self.levels)
            cdf = probs.cumsum(-1)
            value = (cdf[:, :-1] <= u[:, c, y, col].double()[:, None]).sum(-1).to(x.dtype)
            x[:, c, y, col] = torch.where(mask[:, c, y, col], x[:, c, y, col], value)

    def _draw(self, x, mask, u, c, y, col, logits) -> None:
        """Sample value (c, y, col) of every image from its logits, unless observed."""
        free = ~mask[:, c, y, col]
        value = self._value(logits, u[:, c, y, col])
        x[:, c, y, col] = torch.where(free, value, x[:, c, y, col])

    def _sample_naive(self, x, mask, u, cond) -> None:
        _, c_count, h, w = x.shape
        for y in range(h):
            for col in range(w):
                if self.mixtures is not None:
                    if not bool(mask[:, :, y, col].all()):
                        self._draw_pixel(x, mask, u, y, col, self(x, cond)[:, :, y, col])
                    continue
                for c in range(c_count):
                    if bool(mask[:, c, y, col].all()):
                        continue
                    self._draw(x, mask, u, c, y, col, self(x, cond)[:, c, ..., y, col])

    def _step_weights(self) -> list:
        """The one-position products of the cached sampler as matrices (the masks applied
        once): per layer the horizontal kernel over its c + 1 kept columns (2p, (c + 1) Cin)
        -- columns tap-major, then channel --, its bias, the link (2p, 2p), h_out (p, p) and
        its bias; then the head's two 1 x 1 layers."""
        c = self.kernel_size // 2

        def dense(conv):
            w = conv.weight * conv.mask().to(conv.weight.dtype)
            bias = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
            return w, bias

        layers = []
        for layer in self.layers:
            wh, bh = dense(layer.h_conv)
            wh = wh[:, :, 0, :c + 1].permute(0, 2, 1).reshape(wh.shape[0], -1)
            wo, bo = dense(layer.h_out)
            layers.append((wh.t().contiguous(), bh, layer.link.weight[:, :, 0, 0].t().contiguous(),
                           wo[:, :, 0, 0].t().contiguous(), bo))
        w1, b1 = dense(self.out1)
        w2, b2 = dense(self.out2)
        return layers, (w1[:, :, 0, 0].t().contiguous(), b1, w2[:, :, 0, 0].t().contiguous(), b2)

    def _sample_cached(self, x, mask, u, cond, record: torch.Tensor | None = None) -> None:
        """Cached generation: the vertical stack's row y at every layer once row y - 1 is
        done (its k x k kernels read rows y - c .. y of their input), and the link of that
        row; then, value by value, the horizontal stack at (y, col) -- a product of the
        cached columns col - c .. col of each layer's input with the kernel's kept columns,
        the gate and h_out's product -- and the head."""
        b, c_count, h, w = x.shape
        c = self.kernel_size // 2
        g = self.groups
        scaled = self._scaled(x)
        step, (w1, b1, w2, b2) = self._step_weights()
        cond_terms = [layer.condition(cond)[:, :, None, None].chunk(2, dim=1)
                      if layer.condition is not None and cond is not None else (0, 0) for layer in self.layers]
        # each layer's vertical output (its next layer's input)
        v_out = [scaled.new_zeros(b, layer.v_conv.out_channels // 2, h, w) for layer in self.layers]
        # each layer's horizontal output in the current row, pixel-major: (B, c + W, p), c zero
        # columns first; the image row the same way (B, c + W, C)
        h_out = [scaled.new_zeros(b, w + c, self.channels) for _ in self.layers]
        h_in0 = scaled.new_zeros(b, w + c, c_count)

        def rows(t, y):   # rows y - c .. y of t (B, C, H, W), zero rows above the image
            window = t[:, :, max(0, y - c):y + 1]
            return F.pad(window, (0, 0, c + 1 - window.shape[2], 0))

        def gate_flat(t):   # (B, 2p): groups blocks of [a | b] -> (B, p)
            t = t.view(b, g, 2, -1)
            return (torch.tanh(t[:, :, 0]) * torch.sigmoid(t[:, :, 1])).reshape(b, -1)

        for y in range(h):
            # the horizontal pre-activation's terms that do not depend on the row: the link of
            # the vertical stack's row, the horizontal kernel's bias, the condition -- (B, W, 2p)
            fixed = []
            for i, layer in enumerate(self.layers):
                v_pre = layer.v_conv(rows(scaled if i == 0 else v_out[i - 1], y))[:, :, -1:]
                v_out[i][:, :, y:y + 1] = gate(v_pre + cond_terms[i][0], g)
                wh_t, bh, wl_t, _, _ = step[i]
                term = torch.addmm(bh, v_pre[:, :, 0].transpose(1, 2).reshape(b * w, -1), wl_t).view(b, w, -1)
                ch_term = cond_terms[i][1]
                fixed.append(term + ch_term[:, None, :, 0, 0] if isinstance(ch_term, torch.Tensor) else term)
            for t in h_out:
                t.zero_()
            h_in0.zero_()
            for col in range(w):
                # a pass per channel: the horizontal stack at (y, col) sees the pixel's earlier
                # channels; an observed channel needs no pass of its own (the last pass, which
                # leaves the stack's values there final, always runs)
                # (the mixture head: one pass, the network never sees the pixel itself)
                passes = 1 if self.mixtures is not None else c_count
                for ch in range(passes):
                    if ch < passes - 1 and bool(mask[:, ch, y, col].all()):
                        continue
                    h_in0[:, c + col] = scaled[:, :, y, col]
                    for i, layer in enumerate(self.layers):
                        wh_t, _, _, wo_t, bo = step[i]
                        src = h_in0 if i == 0 else h_out[i - 1]
                        h_pre = torch.addmm(fixed[i][:, col], src[:, col:col + c + 1].reshape(b, -1), wh_t)
                        new = torch.addmm(bo, gate_flat(h_pre), wo_t)
                        h_out[i][:, c + col] = new if layer.first else src[:, c + col] + new
                    logits = torch.addmm(b2, torch.addmm(b1, h_out[-1][:, c + col].relu(), w1).relu(), w2)
                    if self.head == "categorical":
                        logits = logits.view(b, c_count, self.levels)
                    if record is not None and ch == passes - 1:   # teacher forced: every channel
                        record[..., y, col] = logits
                    if self.mixtures is not None:
                        self._draw_pixel(x, mask, u, y, col, logits)
                        scaled[:, :, y, col] = self._scaled(x[:, :, y, col])
                    else:
                        self._draw(x, mask, u, ch, y, col, logits[:, ch])
                        scaled[:, ch, y, col] = self._scaled(x[:, ch, y, col])
                h_in0[:, c + col] = scaled[:, :, y, col]

    @torch.no_grad()
    def cached_logits(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The logits the cached sampler computes at every value of the images x, teacher
        forced (each value's logits from the true values before it): equal to ``self(x)``
        within the dtype's rounding -- the check that the cache is exact."""
        x = self.check_data(x).clone()
        mask = torch.ones_like(x, dtype=torch.bool)
        b, c, h, w = x.shape
        out = x.new_empty((b, c, h, w) if self.head == "bernoulli" else (b, c, self.levels, h, w)
                          if self.head == "categorical" else (b, self.out2.out_channels, h, w))
        was_training = self.training
        self.eval()
        try:
            self._sample_cached(x, mask, torch.zeros_like(x), self._condition(cond, x.shape[0]), record=out)
        finally:
            self.train(was_training)
        return out

    # ----------------------------------------------------------------- training
    def fit(self, data, epochs: int = 10, batch_size: int = 64, learning_rate: float = 1e-3, *, cond=None,
            verbose: bool = True, callback=None) -> "GatedPixelCNN":
        """Maximum likelihood with Adam: ``epochs`` passes over data (N, C, H, W) (and its
        cond (N, ...) rows) in batches, shuffled by the model's stream. ``history`` gets the
        mean training loss (bits per dimension) of each epoch; a NaN or Inf loss or
        parameter raises DivergedError. callback(model, epoch) after every epoch."""
        epochs = check_int("epochs", epochs, 1)
        batch_size = check_int("batch_size", batch_size, 1)
        learning_rate = check_positive("learning_rate", learning_rate)
        data = self.check_data(torch.as_tensor(data).to(self.device))
        if data.shape[0] == 0:
            raise ValueError("data is empty; the model needs images to train")
        if cond is not None:
            cond = torch.as_tensor(cond).to(self.device)
            if cond.shape[0] != data.shape[0]:
                raise ValueError(f"cond must have one row per image ({data.shape[0]}); got {cond.shape[0]}")
        optimizer = adam(self.parameters(), learning_rate)
        dims = math.log(2) * data[0].numel()
        self.train()
        with Progress(epochs, 0, verbose, "GatedPixelCNN", "bits/dim") as bar:
            for epoch in range(epochs):
                order = torch.argsort(self.stream.rand(data.shape[0]))
                total = 0.0
                for start in range(0, data.shape[0], batch_size):
                    idx = order[start:start + batch_size].to(self.device)
                    loss = -self.log_prob(data[idx], None if cond is None else cond[idx]).mean() / dims
                    if not bool(torch.isfinite(loss)):
                        raise DivergedError(f"GatedPixelCNN.fit diverged in epoch {epoch + 1}: the loss is "
                                            f"{float(loss)} (try a smaller learning_rate than {learning_rate})")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * idx.numel()
                self.history.append({"epoch": len(self.history) + 1, "bits_per_dim": total / data.shape[0]})
                bar.update(self.history[-1]["bits_per_dim"])
                if callback is not None:
                    callback(self, epoch)
        self.eval()
        return self

    # -------------------------------------------------------------- persistence
    def _config(self) -> dict:
        return {"in_channels": self.in_channels, "channels": self.channels, "layers": self.n_layers,
                "kernel_size": self.kernel_size, "head": self.head, "levels": self.levels, "mixtures": self.mixtures,
                "condition_size": self.condition_size, "backend": self.backend,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def _payload(self) -> dict:
        return {"config": self._config(), "state": self._state_payload(), "seed": self.seed, "offset": self.offset,
                "history": self.history}

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> "GatedPixelCNN":
        cfg = fields.sub("config")
        condition_size = cfg.get("condition_size", (type(None), int), "None or an int")
        backend = cfg.get("backend", (type(None), str), "None or a backend name")
        mixtures = cfg.get("mixtures", (type(None), int), "None or an int") if "mixtures" in cfg else None
        if backend is not None and backend not in registry.BACKENDS:
            raise cfg.error("backend", f"must be None or one of {list(registry.BACKENDS)}; got {backend!r}")
        try:
            model = cls(cfg.int("in_channels", 1), cfg.int("channels", 1), cfg.int("layers", 1),
                        cfg.int("kernel_size", 1), cfg.choice("head", HEADS), cfg.int("levels", 2), condition_size,
                        seed=fields.seed(), backend=backend, mixtures=mixtures or 5)
        except (TypeError, ValueError) as exc:
            raise fields.error("config", f"does not describe a model: {exc}") from None
        model.to(dtype=cfg.dtype(), device=device)
        model.load_state_dict(fields.state(model))
        model.offset = fields.offset()
        model.history = fields.records("history")
        return model
