"""MADE (Germain et al., 2015, "MADE: Masked Autoencoder for Distribution Estimation") and its
masked linear layer.

Every unit has a degree. Input dimension i has degree r_i + 1, r_i its rank in the
autoregressive order; a hidden unit k has a degree m_k in [1, D - 1]; a hidden unit sees the
units of the layer below whose degree is <= its own, an output of degree d the hidden units
of degree < d (and, with ``direct=True``, the inputs of degree < d). So output d depends on
the inputs before it only. With each layer's units sorted by degree the masks are block
lower-triangular, each output seeing a prefix of the layer below -- the form the
``masked_linear`` kernels take (they skip the zero blocks).

Masks: ``num_masks`` connectivity patterns, each an ordering of the inputs (the natural one,
or random ones with ``order_agnostic=True``) and hidden degrees (evenly spread for the first
natural-order mask, drawn from the model's stream otherwise). Training cycles through them
(order- and connectivity-agnostic training); ``log_prob(x, mask=None)`` averages the
likelihood over all of them (the ensemble), or uses one. A mask other than the first runs
the layers on weights gathered into its degree order (the same parameters, permuted), so
every mask trains the same weights.
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
from .layers import _autocast_dtype
from .linear_ops import check_prefix, masked_linear
from .linear_reference import degrees_to_prefix
from .mlp_ops import masked_mlp, runs_fused

OUTPUTS = ("bernoulli", "gaussian", "mixture", "params")


class MaskedLinear(nn.Module):
    """A linear layer whose output j sees only the first ``prefix[j]`` inputs.

    Args:
        in_features, out_features: sizes.
        prefix: (out_features,) ints in [0, in_features] (a buffer; ``set_prefix`` changes it).
        bias: learn a bias.
        backend: None (auto), "reference" or "cpu".

    ``forward(x (B, in))`` -> (B, out) = x @ (W * M)^T + b; the masked weights never act and
    get zero gradients. Under ``torch.autocast`` the layer runs in the autocast dtype
    (arithmetic in fp32).
    """

    def __init__(self, in_features: int, out_features: int, prefix, bias: bool = True, *,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.register_buffer("prefix", check_prefix(torch.as_tensor(prefix), out_features, in_features, device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation, with each output's fan-in its prefix."""
        with torch.no_grad():
            bound = 1 / torch.sqrt(self.prefix.clamp_min(1).to(self.weight.dtype))
            self.weight.uniform_(-1, 1).mul_(bound[:, None])
            if self.bias is not None:
                self.bias.uniform_(-1, 1).mul_(bound)

    def set_prefix(self, prefix) -> None:
        self.prefix = check_prefix(torch.as_tensor(prefix), self.out_features, self.in_features, self.prefix.device)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        dt = _autocast_dtype(x.device) if isinstance(x, torch.Tensor) else None
        if dt is not None:   # autocast: the layer runs in its dtype (fp32 arithmetic in the kernels)
            x, weight = x.to(dt), weight.to(dt)
            bias = None if bias is None else bias.to(dt)
        elif isinstance(x, torch.Tensor) and x.dtype != weight.dtype:
            x = x.to(weight.dtype)
        return masked_linear(x, weight, bias, self.prefix if prefix is None else prefix, backend=self.backend)

    def extra_repr(self) -> str:
        kept = int(self.prefix.sum())
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"kept={kept}/{self.in_features * self.out_features}")


class MADE(Model):
    """A masked autoencoder density model of D-dimensional vectors.

    Args:
        n_inputs: D.
        hidden: sizes of the hidden layers (each >= 1).
        output: "bernoulli" (binary data), "gaussian" (a mean and log-scale per dimension)
            or "mixture" (``components`` Gaussians per dimension); "params": ``components``
            raw outputs per dimension and no likelihood of its own -- MADE as the
            autoregressive conditioner of another model (a flow's transform parameters).
        components: the mixture's components (the outputs per dimension for "params").
        direct: direct (masked) connections from the inputs to the outputs.
        num_masks: connectivity patterns cycled in training and averaged at test time.
        order_agnostic: random input orderings (else the natural order for every mask).
        seed: the key of the model's random stream (masks, sampling, shuffling).
        backend: None (auto), "reference" or "cpu" for the masked linear layers; on the CPU
            (auto or "cpu") the network runs as one fused op, ``masked_mlp``, when it has no
            context and its input and hidden layers are at most 256 units (a conditional MADE,
            autocast and wider layers run layer by layer).
        param_major: the output units parameter by parameter (every dimension's first
            parameter, then every dimension's second, ...) rather than dimension by dimension:
            ``forward`` still returns (B, D, P), then a view of a contiguous (B, P, D) tensor --
            for a consumer reading the parameters as (B, P, D) (MAF's affine transform: the
            log-scales, then the shifts), which then needs no copy. Same function, same masks.
        context_features: K for a conditional model p(x | c): the context (B, K) enters the
            first hidden layer and the outputs through unmasked linear maps (every unit may
            see all of it: the context is not part of the autoregressive order; the map into
            the outputs lets the first dimension, which sees no hidden unit, depend on it);
            None: unconditional.
    """

    _dtype_source = "_dtype_ref"
    kind = "MADE"

    @property
    def _dtype_ref(self) -> torch.Tensor:
        return self.layers[0].weight

    def __init__(self, n_inputs: int, hidden=(500,), output: str = "bernoulli", components: int = 5, *,
                 direct: bool = True, num_masks: int = 1, order_agnostic: bool = False, seed: int | None = None,
                 backend: str | None = None, context_features: int | None = None, param_major: bool = False):
        super().__init__()
        self._init_stream(seed)
        self.context_features = None if context_features is None else check_int("context_features",
                                                                                 context_features, 1)
        self.n_inputs = check_int("n_inputs", n_inputs, 1)
        self.hidden = tuple(check_int("hidden", h, 1) for h in hidden)
        if not self.hidden:
            raise ValueError("hidden must hold at least one layer size")
        self.output = check_choice("output", output, OUTPUTS)
        self.components = check_int("components", components, 1) if output in ("mixture", "params") else 1
        self.direct = bool(direct)
        self.num_masks = check_int("num_masks", num_masks, 1)
        self.order_agnostic = bool(order_agnostic)
        self.param_major = bool(param_major)
        self.backend = backend
        self.history: list[dict] = []
        d = self.n_inputs
        self.params_per_dim = {"bernoulli": 1, "gaussian": 2, "mixture": 3 * self.components,
                               "params": self.components}[output]
        sizes = (d,) + self.hidden
        masks = [self._make_mask(k) for k in range(self.num_masks)]
        # each mask: the input order (rank per dimension), the permutation of every layer's
        # units into degree order, and every layer's prefixes
        for k, (perms, prefixes) in enumerate(masks):
            for i, p in enumerate(perms):
                self.register_buffer(f"perm_{k}_{i}", p)
            for i, p in enumerate(prefixes):
                self.register_buffer(f"prefix_{k}_{i}", p)
        out_units = d * self.params_per_dim
        self.layers = nn.ModuleList(
            MaskedLinear(sizes[i], sizes[i + 1], self._prefix(0, i), backend=backend) for i in range(len(self.hidden)))
        self.layers.append(MaskedLinear(sizes[-1], out_units, self._prefix(0, len(self.hidden)), backend=backend))
        self.skip = MaskedLinear(d, out_units, self._prefix(0, len(self.hidden) + 1), bias=False,
                                 backend=backend) if self.direct else None
        # the context's maps into the first hidden layer and the outputs, their rows in mask 0's
        # unit order like the layers they add to
        self.context = self.context_out = None
        if self.context_features is not None:
            self.context = nn.Linear(self.context_features, self.hidden[0])
            self.context_out = nn.Linear(self.context_features, out_units, bias=False)
        self._next_mask = 0

    # -------------------------------------------------------------------- masks
    def _make_mask(self, k: int):
        """Mask k: (perms, prefixes). perms[0]: the inputs in order (argsort of the ranks),
        perms[1..L]: each hidden layer's units sorted by degree; prefixes per masked layer
        (the hidden layers, the output layer, then the direct connections)."""
        d = self.n_inputs
        if self.order_agnostic and k > 0:
            order = torch.argsort(self.stream.rand(d))          # the dimensions in the order they come
        else:
            order = torch.arange(d)
        in_deg = torch.arange(1, d + 1)                          # degrees of the inputs, in order
        perms, prefixes, prev = [order], [], in_deg
        low = 1 if d > 1 else 0
        for i, h in enumerate(self.hidden):
            if k == 0 and not self.order_agnostic:
                deg = (torch.arange(h) * max(d - 1, 1)) // h + 1 if d > 1 else torch.zeros(h, dtype=torch.int64)
            else:
                u = self.stream.rand(h)
                lo = int(prev.min()) if i > 0 else low
                deg = (lo + torch.floor(u * (max(d - 1, 1) - lo + 1))).to(torch.int64) if d > 1 else \
                    torch.zeros(h, dtype=torch.int64)
            deg, perm = torch.sort(deg, stable=True)
            perms.append(perm)
            prefixes.append(degrees_to_prefix(prev, deg, strict=False))
            prev = deg
        # each dimension's parameters together, or each parameter's dimensions (param_major)
        per = self.params_per_dim
        out_deg = in_deg.repeat(per) if self.param_major else in_deg.repeat_interleave(per)
        prefixes.append(degrees_to_prefix(prev, out_deg, strict=True))
        prefixes.append(degrees_to_prefix(in_deg, out_deg, strict=True))
        return perms, prefixes

    def _perm(self, k: int, i: int) -> torch.Tensor:
        return getattr(self, f"perm_{k}_{i}")

    def _prefix(self, k: int, i: int) -> torch.Tensor:
        return getattr(self, f"prefix_{k}_{i}")

    # ------------------------------------------------------------------ network
    def _params(self, x: torch.Tensor, k: int, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, P): each dimension's output parameters under mask k, dimensions in their
        natural index (the network sees them in mask k's order). The stored weights are in
        mask 0's unit order; another mask gathers them into its own (the same parameters)."""
        order = self._perm(k, 0)
        # mask 0 of a model that is not order-agnostic keeps the natural order: no gathers
        # (an index and its backward's index_put_ cost as much as a small layer's product)
        natural = k == 0 and not self.order_agnostic
        h = x if natural else x.index_select(1, order)
        if k == 0 and context is None and self._fused(h):
            # the whole network in one op (its chunks of rows stay in cache across the layers)
            skip = self.skip
            out = masked_mlp(h, [layer.weight for layer in self.layers], [layer.bias for layer in self.layers],
                             [layer.prefix for layer in self.layers], None if skip is None else skip.weight,
                             None if skip is None else skip.prefix, backend="cpu", checked=True)
            return self._per_dimension(out, None if natural else torch.argsort(order))
        inp = h
        n_hidden = len(self.hidden)
        for i, layer in enumerate(self.layers[:-1]):
            if k == 0:
                h = layer(h)
            else:
                rows = self._stored(i + 1, self._perm(k, i + 1))
                w = layer.weight.index_select(0, rows).index_select(1, self._stored(i, self._perm(k, i)))
                h = layer(h, w, layer.bias.index_select(0, rows), self._prefix(k, i))
            if i == 0 and self.context is not None:
                cw, cb = self.context.weight, self.context.bias
                if k != 0:
                    cw, cb = cw.index_select(0, rows), cb.index_select(0, rows)
                h = h + F.linear(context.to(h.dtype), cw.to(h.dtype), cb.to(h.dtype))
            h = F.relu(h)
        last = self.layers[-1]
        if k == 0:
            out = last(h)
        else:
            p = torch.arange(self.params_per_dim, device=order.device)
            rows = (p[:, None] * self.n_inputs + order[None, :]) if self.param_major else \
                (order[:, None] * self.params_per_dim + p)
            rows = rows.flatten()
            w = last.weight.index_select(0, rows).index_select(1, self._stored(n_hidden, self._perm(k, n_hidden)))
            out = last(h, w, last.bias.index_select(0, rows), self._prefix(k, n_hidden))
        if self.context_out is not None:
            cw = self.context_out.weight if k == 0 else self.context_out.weight.index_select(0, rows)
            out = out + F.linear(context.to(out.dtype), cw.to(out.dtype))
        if self.skip is not None:
            if k == 0:
                out = out + self.skip(inp)
            else:
                w = self.skip.weight.index_select(0, rows).index_select(1, order)
                out = out + self.skip(inp, w, None, self._prefix(k, n_hidden + 1))
        return self._per_dimension(out, None if natural else torch.argsort(order))

    def _per_dimension(self, out: torch.Tensor, unorder: torch.Tensor | None) -> torch.Tensor:
        """The output units (B, D P), in a mask's order, as (B, D, P) in the natural one (the
        gather ``unorder``; None: already natural): a (B, P, D) tensor's transposed view for
        param_major, a view of the units for the dimension-major layout."""
        b = out.shape[0]
        if self.param_major:
            pd = out.view(b, self.params_per_dim, self.n_inputs)
            return (pd if unorder is None else pd.index_select(2, unorder)).transpose(1, 2)
        out = out.view(b, self.n_inputs, self.params_per_dim)
        return out if unorder is None else out.index_select(1, unorder)

    def _fused(self, h: torch.Tensor) -> bool:
        """Whether mask 0's network runs as the fused masked_mlp op: the layers' backend None
        or "cpu", every layer biased, and mlp_ops.runs_fused (CPU, dtype, autocast, width)."""
        return (self.backend in (None, "cpu") and all(layer.bias is not None for layer in self.layers)
                and runs_fused(h, [layer.weight for layer in self.layers]))

    def _stored(self, i: int, units: torch.Tensor) -> torch.Tensor:
        """Indices into the stored weight of units of layer i (0: the inputs, by dimension;
        1..L: hidden layer i-1) given as mask-independent unit ids: the stored order is mask
        0's."""
        return units if i == 0 else torch.argsort(self._perm(0, i))[units]

    def forward(self, x: torch.Tensor, mask: int = 0, context: torch.Tensor | None = None, *,
                check: bool = True) -> torch.Tensor:
        """(B, D, P) output parameters of x (B, D) under connectivity ``mask`` (given the
        context (B, K) in a conditional model). ``check=False``: x's values are not read (no
        finiteness or binary check, no device sync; its shape still is) -- for a caller that
        owns its input, such as a flow's transform, where a NaN shows in the loss."""
        if not check:
            if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.n_inputs:
                self.check_data(x)   # the shape's error
            x = x.to(self.dtype)
        else:
            x = self.check_data(x)
        return self._params(x, check_int("mask", mask, 0, self.num_masks - 1), self.check_context(context, x.shape[0]))

    def check_context(self, context, batch: int) -> torch.Tensor | None:
        """The context (batch, K) of a conditional model (None for an unconditional one)."""
        if self.context_features is None:
            if context is not None:
                raise ValueError("this MADE is unconditional (context_features=None); got a context")
            return None
        if not isinstance(context, torch.Tensor):
            raise TypeError(f"context must be a ({batch}, {self.context_features}) tensor (the model is conditional); "
                            f"got {type(context).__name__}")
        if not context.dtype.is_floating_point:
            raise TypeError(f"context must be a floating-point tensor; got dtype {context.dtype}")
        if tuple(context.shape) != (batch, self.context_features):
            raise ValueError(f"context must be ({batch}, {self.context_features}); got shape {tuple(context.shape)}")
        if context.numel() and not torch.compiler.is_compiling() and not bool(torch.isfinite(context).all()):
            raise ValueError("context contains NaN or Inf")
        return context

    def check_data(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"x must be (B, {self.n_inputs}); got shape {tuple(x.shape)}")
        if self.output == "bernoulli" and x.numel() and not torch.compiler.is_compiling():
            if not bool(((x == 0) | (x == 1)).all()):
                raise ValueError("the Bernoulli output models binary data: x must hold 0 and 1 only; got values in "
                                 f"[{float(x.min())}, {float(x.max())}] (binarise the data first)")
        if x.is_floating_point() and x.numel() and not torch.compiler.is_compiling() \
                and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or Inf")
        return x.to(self.dtype)

    # ------------------------------------------------------------------ density
    def _log_prob_of(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        self._has_likelihood()
        if self.output == "bernoulli":
            return -F.binary_cross_entropy_with_logits(params[..., 0], x, reduction="none").sum(1)
        if self.output == "gaussian":
            mean, log_scale = params[..., 0], params[..., 1].clamp(-7, 7)
            z = (x - mean) * torch.exp(-log_scale)
            return (-0.5 * z * z - log_scale - 0.5 * math.log(2 * math.pi)).sum(1)
        k = self.components
        logits, mean, log_scale = params[..., :k], params[..., k:2 * k], params[..., 2 * k:].clamp(-7, 7)
        z = (x[..., None] - mean) * torch.exp(-log_scale)
        comp = -0.5 * z * z - log_scale - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1).sum(1)

    def _has_likelihood(self) -> None:
        if self.output == "params":
            raise ValueError("this MADE has output='params' (raw outputs for another model): it has no likelihood "
                             "to evaluate, sample or fit; call it for its outputs")

    def log_prob(self, x: torch.Tensor, mask: int | None = None, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) log-likelihood in nats: under one connectivity ``mask``, or (None) the
        ensemble's, log mean_k p_k(x) over the model's masks (given the context (B, K) in a
        conditional model)."""
        x = self.check_data(x)
        context = self.check_context(context, x.shape[0])
        if mask is not None:
            return self._log_prob_of(x, self._params(x, check_int("mask", mask, 0, self.num_masks - 1), context))
        each = torch.stack([self._log_prob_of(x, self._params(x, k, context)) for k in range(self.num_masks)])
        return torch.logsumexp(each, 0) - math.log(self.num_masks)

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, n: int, *, mask: int = 0, seed: int | None = None,
               context: torch.Tensor | None = None) -> torch.Tensor:
        """n samples (n, D), one dimension at a time in mask ``mask``'s order (D passes);
        a conditional model samples p(x | context[i]) for row i (context (n, K))."""
        n = check_int("n", n, 1)
        self._has_likelihood()
        mask = check_int("mask", mask, 0, self.num_masks - 1)
        context = self.check_context(context, n)
        x = torch.zeros(n, self.n_inputs, dtype=self.dtype, device=self.device)
        order = self._perm(mask, 0)
        with self._call_stream(seed) as stream:
            u = stream.rand(n, self.n_inputs, 2, device=self.device).to(self.dtype)
        for i in order.tolist():
            p = self._params(x, mask, context)[:, i]
            if self.output == "bernoulli":
                x[:, i] = (u[:, i, 0] < torch.sigmoid(p[:, 0])).to(x.dtype)
                continue
            if self.output == "gaussian":
                mean, log_scale = p[:, 0], p[:, 1].clamp(-7, 7)
            else:
                k = self.components
                cdf = torch.softmax(p[:, :k].double(), -1).cumsum(-1)
                c = (cdf[:, :-1] <= u[:, i, 0:1].double()).sum(-1, keepdim=True)
                mean, log_scale = p[:, k:2 * k].gather(1, c)[:, 0], p[:, 2 * k:].gather(1, c)[:, 0].clamp(-7, 7)
            # a normal from the second uniform by the inverse CDF
            z = math.sqrt(2) * torch.erfinv(2 * u[:, i, 1].clamp(1e-7, 1 - 1e-7) - 1)
            x[:, i] = mean + torch.exp(log_scale) * z
        return x

    # ----------------------------------------------------------------- training
    def fit(self, data, epochs: int = 10, batch_size: int = 100, learning_rate: float = 1e-3, *,
            verbose: bool = True, callback=None, context=None) -> "MADE":
        """Maximum likelihood with Adam, each batch under the next connectivity mask in turn;
        ``history`` gets each epoch's mean negative log-likelihood (nats); a NaN or Inf loss
        raises DivergedError. A conditional model takes ``context`` (N, K), a row per
        data row."""
        self._has_likelihood()
        epochs = check_int("epochs", epochs, 1)
        batch_size = check_int("batch_size", batch_size, 1)
        learning_rate = check_positive("learning_rate", learning_rate)
        data = self.check_data(torch.as_tensor(data).to(self.device))
        if data.shape[0] == 0:
            raise ValueError("data is empty; the model needs rows to train")
        if context is not None:
            context = torch.as_tensor(context).to(self.device)
        context = self.check_context(context, data.shape[0])
        optimizer = adam(self.parameters(), learning_rate)
        self.train()
        with Progress(epochs, 0, verbose, "MADE", "nll") as bar:
            for epoch in range(epochs):
                order = torch.argsort(self.stream.rand(data.shape[0])).to(self.device)
                total = 0.0
                for start in range(0, data.shape[0], batch_size):
                    idx = order[start:start + batch_size]
                    mask, self._next_mask = self._next_mask, (self._next_mask + 1) % self.num_masks
                    ctx = None if context is None else context[idx]
                    loss = -self._log_prob_of(data[idx], self._params(data[idx], mask, ctx)).mean()
                    if not bool(torch.isfinite(loss.detach())):
                        raise DivergedError(f"MADE.fit diverged in epoch {epoch + 1}: the loss is {float(loss)} "
                                            f"(try a smaller learning_rate than {learning_rate})")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * idx.numel()
                self.history.append({"epoch": len(self.history) + 1, "nll": total / data.shape[0]})
                bar.update(self.history[-1]["nll"])
                if callback is not None:
                    callback(self, epoch)
        self.eval()
        return self

    # -------------------------------------------------------------- persistence
    def _config(self) -> dict:
        return {"n_inputs": self.n_inputs, "hidden": list(self.hidden), "output": self.output,
                "components": self.components, "direct": self.direct, "num_masks": self.num_masks,
                "order_agnostic": self.order_agnostic, "backend": self.backend,
                "context_features": self.context_features, "param_major": self.param_major,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def _payload(self) -> dict:
        return {"config": self._config(), "state": self._state_payload(), "seed": self.seed, "offset": self.offset,
                "history": self.history}

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> "MADE":
        cfg = fields.sub("config")
        backend = cfg.get("backend", (type(None), str), "None or a backend name")
        if backend is not None and backend not in registry.BACKENDS:
            raise cfg.error("backend", f"must be None or one of {list(registry.BACKENDS)}; got {backend!r}")
        hidden = cfg.get("hidden", list, "a list of ints")
        context = cfg.get("context_features", (type(None), int), "None or an int") if "context_features" in cfg \
            else None
        param_major = cfg.get("param_major", bool) if "param_major" in cfg else False
        try:
            model = cls(cfg.int("n_inputs", 1), hidden, cfg.choice("output", OUTPUTS), cfg.int("components", 1),
                        direct=cfg.get("direct", bool), num_masks=cfg.int("num_masks", 1),
                        order_agnostic=cfg.get("order_agnostic", bool), seed=fields.seed(), backend=backend,
                        context_features=context, param_major=param_major)
        except (TypeError, ValueError) as exc:
            raise fields.error("config", f"does not describe a model: {exc}") from None
        model.to(dtype=cfg.dtype(), device=device)
        model.load_state_dict(fields.state(model))
        model.offset = fields.offset()
        model.history = fields.records("history")
        return model
