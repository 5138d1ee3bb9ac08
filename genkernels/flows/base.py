"""What every flow model shares (RealNVP, Glow, MAF, IAF, NSF): the flat latent's
bookkeeping, ``log_prob`` / ``bits_per_dim`` / ``sample`` / ``rsample``, a
``torch.distributions`` view, training (``fit``, with the invertibility monitor), checkpoints,
the layer-by-layer finiteness check and the optional logit preprocessing.

A flow maps data x (B, *shape) to a flat latent z (B, D) with a standard normal base:
log p(x) = log N(z; 0, I) + log |det dz/dx|. Its layers are either a flat list
(``self.steps``) or multi-scale blocks (``self.blocks``, each with ``out_shape`` and
``z_shape``: what it passes on and what it factors out, None for nothing).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import distributions, nn

from .. import checkpoint as ckpt
from .._checks import check_int, check_positive
from ..model import DivergedError, Model, Progress, adam, check_finite_model
from .autoregressive import MaskedAffineAutoregressive
from .coupling import KeptMLP
from .layers import LogitTransform, dequantize

# How a flow checkpoint's parameters are arranged: 2 since MAF's and IAF's MADE emits its
# outputs parameter by parameter (MADE(param_major=True)) and a vector coupling's default
# conditioner is KeptMLP; a checkpoint without the field is 1 (refused where it matters).
LAYOUT = 2


class InvertibilityWarning(UserWarning):
    """A flow's inverse no longer undoes its forward map to the tolerance (fit's monitor)."""


def run_steps(steps, x, context, inverse: bool, check: bool = False, checkpoint: bool = False):
    """x through ``steps`` (each ``(out, logdet) = step(x[, context])``; in reverse order and
    through their inverses when ``inverse``) -> (out, summed logdet). ``check``: every step's
    output and log-determinant checked finite, a NaN or Inf raising FloatingPointError that
    names the step. ``checkpoint``: the forward direction keeps only its output for the
    backward, which recomputes each step's input from its output (``_InvertibleSteps``)."""
    if checkpoint and not inverse and torch.is_grad_enabled() and len(steps):
        params = [p for step in steps for p in step.parameters() if p.requires_grad]
        ctx_in = context if isinstance(context, torch.Tensor) else None
        return _InvertibleSteps.apply(list(steps), check, x, ctx_in, *params)
    total = None
    order = list(enumerate(steps))
    for i, step in (reversed(order) if inverse else order):
        args = (x, context) if getattr(step, "takes_context", False) else (x,)
        x, ld = step.inverse(*args) if inverse else step(*args)
        if check and not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(ld).all())):
            raise FloatingPointError(
                f"{type(step).__name__} (step {i} of its block, {'inverse' if inverse else 'forward'}) produced "
                "NaN or Inf: its input was finite. Lower the learning rate or the coupling's scale_bound, or "
                "check the data's scale")
        total = ld if total is None else total + ld
    return x, total


def _step(step, x, context, inverse: bool):
    args = (x, context) if getattr(step, "takes_context", False) else (x,)
    return step.inverse(*args) if inverse else step(*args)


class _InvertibleSteps(torch.autograd.Function):
    """Memory-saving backpropagation through invertible steps (RevNet's and i-RevNet's idea):
    the forward runs without a graph and saves only its output; the backward walks the
    steps in reverse, recomputing each step's input with its inverse, rerunning the step
    with a graph on that input and backpropagating through it alone. Activations saved for
    the backward: one output per call, whatever the number of steps. The recomputed inputs
    differ from the originals by the inverse's rounding (~1e-7 relative in fp32), so the
    gradients equal the stored-activation path's to that order."""

    @staticmethod
    def forward(ctx, steps, check, x, context, *params):
        with torch.no_grad():
            y, logdet = run_steps(steps, x, context, False, check)
        ctx.steps = steps
        ctx.save_for_backward(y, context)
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y, grad_logdet):
        y, context = ctx.saved_tensors
        steps = ctx.steps
        grads: dict[int, torch.Tensor] = {}
        grad_context = None
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        for step in reversed(steps):
            with torch.no_grad():
                x_in, _ = _step(step, y, context, True)
            with torch.enable_grad():
                x_in = x_in.detach().requires_grad_()
                out, ld = _step(step, x_in, context, False)
                own = [p for p in step.parameters() if p.requires_grad]
                wants_ctx = context is not None and context.requires_grad and getattr(step, "takes_context", False)
                inputs = [x_in] + own + ([context] if wants_ctx else [])
                outs, gouts = [out], [grad_y]
                if grad_logdet is not None:
                    outs.append(ld)
                    gouts.append(grad_logdet.to(ld.dtype))
                got = torch.autograd.grad(outs, inputs, gouts, allow_unused=True)
            grad_y = got[0]
            for p, g in zip(own, got[1:1 + len(own)]):
                if g is not None:
                    grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g
            if wants_ctx and got[-1] is not None:
                grad_context = got[-1] if grad_context is None else grad_context + got[-1]
            y = x_in.detach()
        params = [p for step in steps for p in step.parameters() if p.requires_grad]
        return (None, None, grad_y, grad_context, *(grads.get(id(p)) for p in params))


class _Flow(Model):
    """The flow models' base (module docstring). A subclass calls ``_init_flow(config)``
    right after ``nn.Module.__init__`` with its constructor's arguments (what a checkpoint
    rebuilds it from), sets ``shape``, ``features`` and ``steps`` or ``blocks``."""

    shape: tuple
    features: int
    _dtype_source = "_dtype_ref"
    _main_op = "affine_coupling"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.kind = cls.__name__

    def _init_flow(self, config: dict, seed: int | None, logit_alpha: float | None = None) -> None:
        self._config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()
                        if k not in ("self", "__class__")}
        self._init_stream(seed)
        self.history: list[dict] = []
        self.preprocess = None if logit_alpha is None else LogitTransform(logit_alpha)

    @property
    def _dtype_ref(self) -> torch.Tensor:
        return next(self.parameters())

    # ------------------------------------------------------------------ finiteness
    @property
    def check_finite(self) -> bool:
        """When True, every layer's output and log-determinant are checked finite as they
        are made (a device sync per layer): a NaN or Inf raises FloatingPointError naming
        the layer that produced it, instead of surfacing as a NaN loss later."""
        return bool(getattr(self, "_check_finite", False))

    @check_finite.setter
    def check_finite(self, flag: bool) -> None:
        object.__setattr__(self, "_check_finite", bool(flag))
        for block in self.modules():
            if block is not self and "check_finite" in type(block).__dict__:
                block.check_finite = bool(flag)

    @property
    def checkpoint(self) -> str | None:
        """None (the default: backpropagation stores every layer's activations) or
        "invertible": each run of layers keeps only its output, and the backward recomputes
        every layer's input from its output with the layer's inverse -- the activations saved
        for the backward no longer grow with the depth (a flat flow saves one output; a
        multi-scale one one per block), at the price of one inverse and one more forward per
        layer. For MAF the inverse is the sequential direction (D passes a layer)."""
        return "invertible" if getattr(self, "_checkpoint", False) else None

    @checkpoint.setter
    def checkpoint(self, mode: str | None) -> None:
        if mode not in (None, "invertible"):
            raise ValueError(f"checkpoint must be None or 'invertible'; got {mode!r}")
        object.__setattr__(self, "_checkpoint", mode == "invertible")
        for block in self.modules():
            if block is not self and "invertible_checkpoint" in type(block).__dict__:
                block.invertible_checkpoint = mode == "invertible"

    # ------------------------------------------------------------------- the map
    def _check(self, x, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        want = self.shape if name == "x" else (self.features,)
        if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{name} must be (B, {', '.join(map(str, want))}); got shape {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
        return x

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Data (B, *shape) -> latent (B, D) and log |det| of the map (B,)."""
        self._check(x, "x")
        pre = None
        if self.preprocess is not None:
            x, pre = self.preprocess(x)
        if len(self.shape) == 1:
            z, logdet = run_steps(self.steps, x, context, False, self.check_finite, self.checkpoint is not None)
        else:
            parts, logdet = [], None
            h = x
            for block in self.blocks:
                h, zi, ld = block(h, context)
                logdet = ld if logdet is None else logdet + ld
                if zi is not None:
                    parts.append(zi.flatten(1))
            parts.append(h.flatten(1))
            z = torch.cat(parts, dim=1)
        return z, logdet if pre is None else logdet + pre

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent (B, D) -> data (B, *shape) and log |det| of the inverse map (B,)."""
        self._check(z, "z")
        if len(self.shape) == 1:
            x, logdet = run_steps(self.steps, z, context, True, self.check_finite)
        else:
            shapes = [b.z_shape for b in self.blocks if b.z_shape is not None] + [self.blocks[-1].out_shape]
            chunks = list(torch.split(z, [math.prod(s) for s in shapes], dim=1))
            x = chunks[-1].reshape(z.shape[0], *shapes[-1])
            logdet = None
            for i in reversed(range(len(self.blocks))):
                zi = None if self.blocks[i].z_shape is None else chunks[i].reshape(z.shape[0], *shapes[i])
                x, ld = self.blocks[i].inverse(x, zi, context)
                logdet = ld if logdet is None else logdet + ld
        if self.preprocess is not None:
            x, pre = self.preprocess.inverse(x)
            logdet = logdet + pre
        return x, logdet

    # ------------------------------------------------------------------- density
    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) in nats (B,): the standard normal's log-density of z plus log |det|."""
        z, logdet = self(x, context)
        base = -0.5 * z.to(logdet.dtype).pow(2).sum(1) - 0.5 * self.features * math.log(2 * math.pi)
        return base + logdet

    def bits_per_dim(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                     levels: int | None = None) -> torch.Tensor:
        """-log2 p(x) / D, averaged over the batch. For data dequantised from ``levels``
        discrete levels to [0, 1] (``dequantize``), the discrete data's: + log2(levels)."""
        bpd = -self.log_prob(x, context).mean() / (self.features * math.log(2))
        return bpd if levels is None else bpd + math.log2(check_int("levels", levels, 2))

    def rsample(self, n: int, seed: int | None = None, temperature: float = 1.0,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """n samples (n, *shape), differentiable in the flow's parameters (the
        reparameterisation z ~ N(0, temperature^2 I), x = inverse(z)); z from the model's
        Philox stream (``seed``: a stream of its own, (seed, 0); None: the model's, advanced)."""
        check_int("n", n, 1)
        if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0; got {temperature!r}")
        with self._call_stream(seed) as stream:
            z = stream.randn(n, self.features, dtype=self.dtype, device=self.device)
        return self.inverse(z * temperature, context)[0]

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0,
               context: torch.Tensor | None = None) -> torch.Tensor:
        """n samples (n, *shape): ``rsample`` without gradients (Glow's reduced-temperature
        sampling with temperature < 1)."""
        return self.rsample(n, seed, temperature, context)

    def distribution(self, context: torch.Tensor | None = None, temperature: float = 1.0) -> "FlowDistribution":
        """The flow as a ``torch.distributions.Distribution`` (``log_prob``, ``sample``,
        ``rsample``); a context (B, K) makes a batch of B conditional distributions."""
        return FlowDistribution(self, context, temperature)

    # ---------------------------------------------------------------- monitoring
    @torch.no_grad()
    def invertibility_error(self, x: torch.Tensor, context: torch.Tensor | None = None) -> float:
        """max |inverse(forward(x)) - x| / max(1, max |x|): how far the inverse is from undoing
        the forward map on x (fp rounding: ~1e-6 in fp32; growing with ill-conditioned layers)."""
        z, _ = self(x, context)
        back, _ = self.inverse(z, context)
        scale = max(1.0, float(x.abs().max())) if x.numel() else 1.0
        return float((back - x).abs().max()) / scale if x.numel() else 0.0

    # ------------------------------------------------------------------ training
    def fit(self, data, epochs: int = 10, batch_size: int = 128, learning_rate: float = 1e-3, *,
            context=None, validation=None, validation_context=None, dequantize_levels: int | None = None,
            max_grad_norm: float | None = None, inverse_check: int = 16, inverse_tolerance: float = 1e-3,
            verbose: bool = True, callback=None) -> "_Flow":
        """Maximum likelihood with Adam.

        Args:
            data: (N, *shape) float (tensor or array). context: (N, K) for a conditional flow.
            validation, validation_context: held-out rows, their bits/dim after each epoch.
            dequantize_levels: the data holds k / (levels - 1) in [0, 1] (e.g. pixels / 255,
                levels 256): every batch is dequantised afresh from the model's stream and
                bits/dim are the discrete data's (+ log2 levels).
            max_grad_norm: clip the gradients' norm (None: no clipping).
            inverse_check: rows of ``data`` the invertibility monitor maps forward and back
                after each epoch (0: off); inverse_tolerance: the relative error past which it
                warns (InvertibilityWarning).
        ``history`` gets each epoch's training bits/dim, the validation's, and the inverse's
        error. A NaN or Inf loss or parameter raises DivergedError.
        """
        epochs = check_int("epochs", epochs, 1)
        batch_size = check_int("batch_size", batch_size, 2)
        learning_rate = check_positive("learning_rate", learning_rate)
        inverse_check = check_int("inverse_check", inverse_check, 0)
        inverse_tolerance = check_positive("inverse_tolerance", inverse_tolerance)
        if max_grad_norm is not None:
            max_grad_norm = check_positive("max_grad_norm", max_grad_norm)
        levels = None if dequantize_levels is None else check_int("dequantize_levels", dequantize_levels, 2)
        data = self._check(torch.as_tensor(data).to(device=self.device, dtype=self.dtype), "x")
        if data.shape[0] < 2:
            raise ValueError(f"data must hold at least 2 rows to train on; got {data.shape[0]}")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data contains NaN or Inf")
        context = self._fit_context(context, data.shape[0], "context")
        if validation is not None:
            validation = self._check(torch.as_tensor(validation).to(device=self.device, dtype=self.dtype), "x")
        validation_context = self._fit_context(validation_context, 0 if validation is None else validation.shape[0],
                                               "validation_context")
        optimizer = adam(self.parameters(), learning_rate)
        hint = f"try a smaller learning_rate than {learning_rate}, max_grad_norm, or a smaller scale bound"
        self.train()
        with Progress(epochs, 0, verbose, type(self).__name__, "bits/dim") as bar:
            for epoch in range(epochs):
                order = torch.argsort(self.stream.rand(data.shape[0])).to(self.device)
                total, rows = 0.0, 0
                for start in range(0, data.shape[0], batch_size):
                    idx = order[start:start + batch_size]
                    if idx.numel() < 2:   # a last batch of one row (ActNorm's init needs two)
                        continue
                    xb = data[idx]
                    if levels is not None:
                        xb = dequantize(xb, levels, seed=self.seed, offset=self._advance(xb.numel()))
                    loss = self.bits_per_dim(xb, None if context is None else context[idx], levels=levels)
                    if not bool(torch.isfinite(loss.detach())):
                        raise DivergedError(f"{type(self).__name__}.fit diverged in epoch {len(self.history) + 1}: "
                                            f"the loss is {float(loss.detach())} ({hint})")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if max_grad_norm is not None:
                        nn.utils.clip_grad_norm_(self.parameters(), max_grad_norm)
                    optimizer.step()
                    total += float(loss.detach()) * idx.numel()
                    rows += idx.numel()
                check_finite_model(type(self).__name__, dict(self.named_parameters()), len(self.history) + 1,
                                   epoch + 1, epochs, hint)
                record = {"epoch": len(self.history) + 1, "bits_per_dim": total / max(rows, 1)}
                self.eval()
                if validation is not None:
                    record["validation_bits_per_dim"] = self.evaluate(validation, validation_context, levels=levels)
                if inverse_check:
                    rows_c = data[:inverse_check]
                    err = self.invertibility_error(rows_c, None if context is None else context[:inverse_check])
                    record["inverse_error"] = err
                    if not err <= inverse_tolerance:
                        warnings.warn(f"{type(self).__name__}: after epoch {record['epoch']} inverse(forward(x)) is "
                                      f"{err:.3g} (relative) from x, past inverse_tolerance={inverse_tolerance}: the "
                                      "flow is becoming ill-conditioned (lower the learning rate or the scale bound)",
                                      InvertibilityWarning, stacklevel=2)
                self.train()
                self.history.append(record)
                bar.update(record.get("validation_bits_per_dim", record["bits_per_dim"]))
                if callback is not None:
                    callback(self, epoch)
        self.eval()
        return self

    @torch.no_grad()
    def evaluate(self, data, context=None, *, batch_size: int = 500, levels: int | None = None) -> float:
        """Mean bits/dim of ``data`` (in batches; ``levels``: dequantised from that many
        levels with the model's stream, bits/dim of the discrete data)."""
        data = self._check(torch.as_tensor(data).to(device=self.device, dtype=self.dtype), "x")
        context = self._fit_context(context, data.shape[0], "context")
        total = 0.0
        for start in range(0, data.shape[0], batch_size):
            xb = data[start:start + batch_size]
            if levels is not None:
                xb = dequantize(xb, levels, seed=self.seed, offset=self._advance(xb.numel()))
            ctx = None if context is None else context[start:start + batch_size]
            total += float(self.bits_per_dim(xb, ctx, levels=levels)) * xb.shape[0]
        return total / max(data.shape[0], 1)

    def _fit_context(self, context, rows: int, name: str):
        if context is None:
            return None
        context = torch.as_tensor(context).to(device=self.device, dtype=self.dtype)
        if context.dim() != 2 or context.shape[0] != rows:
            raise ValueError(f"{name} must be ({rows}, K), a row per data row; got shape {tuple(context.shape)}")
        return context

    # --------------------------------------------------------------- checkpoints
    def _payload(self) -> dict:
        return {"config": dict(self._config), "state": self._state_payload(), "seed": self.seed,
                "offset": self.offset, "history": self.history, "dtype": str(self.dtype).removeprefix("torch."),
                "layout": LAYOUT}

    def _layout_dependent(self) -> list[str]:
        """The layers whose stored state means something else under an earlier LAYOUT: MAF's
        and IAF's affine transforms (their MADE's output units were dimension by dimension)
        and vector couplings with the default conditioner (it read the masked full vector)."""
        return [name for name, m in self.named_modules()
                if isinstance(m, MaskedAffineAutoregressive) or isinstance(getattr(m, "conditioner", None), KeptMLP)]

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> "_Flow":
        config = fields.get("config", dict, "a dict of the constructor's arguments")
        plain = (type(None), bool, int, float, str)
        for key, value in config.items():
            ok = isinstance(key, str) and (isinstance(value, plain) or (
                isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in value)))
            if not ok:
                raise fields.error("config", f"must map argument names to numbers, strings, None or lists of "
                                             f"numbers; got {key!r}: {value!r}")
        try:
            model = cls(**config)
        except (TypeError, ValueError) as exc:
            raise fields.error("config", f"does not describe a {cls.__name__}: {exc}") from None
        layout = fields.int("layout", 1) if "layout" in fields else 1
        if layout > LAYOUT:
            raise fields.error("layout", f"is {layout}: written by a newer genkernels (this one reads up to {LAYOUT})")
        dependent = model._layout_dependent() if layout < LAYOUT else []
        if dependent:   # same keys and shapes (MAF), or a misleading shape error (couplings): refused
            raise fields.error("layout", f"is {layout}: this checkpoint was written by an earlier genkernels, whose "
                                         f"{', '.join(dependent[:3])}{' ...' if len(dependent) > 3 else ''} stored "
                                         "their parameters in another arrangement (MAF/IAF: the MADE's outputs "
                                         "dimension by dimension; vector couplings: a conditioner of the masked "
                                         "full vector); load it with that version, or train the flow again")
        model.to(dtype=fields.dtype(), device=device)
        model.load_state_dict(fields.state(model))
        model.seed = fields.seed()
        model.offset = fields.offset()
        model.history = fields.records("history")
        return model


class FlowDistribution(distributions.Distribution):
    """A flow as a ``torch.distributions.Distribution``: ``log_prob``, ``sample`` and
    ``rsample`` (reparameterised) over the flow's event shape; a context (B, K) gives a
    batch of B conditional distributions (batch_shape (B,)). Draws come from the flow's
    Philox stream."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, flow: _Flow, context: torch.Tensor | None = None, temperature: float = 1.0):
        if context is not None and (not isinstance(context, torch.Tensor) or context.dim() != 2):
            raise ValueError(f"context must be None or a (B, K) tensor; got {getattr(context, 'shape', context)}")
        self.flow, self.context, self.temperature = flow, context, temperature
        batch = torch.Size(()) if context is None else torch.Size((context.shape[0],))
        super().__init__(batch, torch.Size(flow.shape), validate_args=False)

    @property
    def support(self):
        return distributions.constraints.independent(distributions.constraints.real, len(self.event_shape))

    def _context(self, copies: int):
        if self.context is None:
            return None
        return self.context.expand(copies, *self.context.shape).reshape(-1, self.context.shape[1])

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        copies = math.prod(sample_shape)
        n = copies * math.prod(self.batch_shape)
        if n == 0:
            return torch.empty(*sample_shape, *self.batch_shape, *self.event_shape, dtype=self.flow.dtype,
                               device=self.flow.device)
        x = self.flow.rsample(n, None, self.temperature, self._context(copies))
        return x.reshape(*sample_shape, *self.batch_shape, *self.event_shape)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        event = len(self.event_shape)
        lead = value.shape[:value.dim() - event]
        if tuple(value.shape[value.dim() - event:]) != tuple(self.event_shape):
            raise ValueError(f"value must end in the event shape {tuple(self.event_shape)}; got {tuple(value.shape)}")
        flat = value.reshape(-1, *self.event_shape)
        ctx = None
        if self.context is not None:
            b = self.context.shape[0]
            if len(lead) == 0 or lead[-1] != b:
                raise ValueError(f"value's batch dimension (just before the event) must be {b}, the context's rows; "
                                 f"got shape {tuple(value.shape)}")
            ctx = self._context(flat.shape[0] // b)
        return self.flow.log_prob(flat, ctx).reshape(lead)


__all__ = ["FlowDistribution", "InvertibilityWarning", "run_steps"]
