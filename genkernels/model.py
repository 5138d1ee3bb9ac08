"""The base every genkernels model builds on (docs/design.md, "Models").

:class:`Model` gives a model, in one place:

* its **random stream**: a :class:`genkernels.random.PhiloxStream` keyed by the model's
  ``seed`` (checked once, here); ``offset`` is the stream's next counter. Every draw takes
  its counters from the stream (:meth:`Model._advance`), so a sequence of calls reproduces
  from the seed, and a call given its own ``seed=`` draws from ``(seed, 0)`` and leaves the
  model's stream where it was (:meth:`Model._call_stream`);
* the **backend** argument: a public method's ``backend=`` holds for every op the method
  runs (:meth:`Model._ops_backend`);
* **checkpoints**: :meth:`Model.save` writes :meth:`_payload` atomically
  (genkernels.checkpoint); :meth:`Model.load` reads the file and builds the model from it
  with :meth:`_from_checkpoint`, which validates every field through one validator
  (:class:`genkernels.checkpoint.Fields`) before anything is loaded;
* ``dtype`` and ``device``: those of the tensor the model names in ``_dtype_source``
  (its weights unless it says otherwise).

The training rule every ``fit`` follows (docs/design.md, "Models"): after every epoch the
model is checked finite (:func:`check_finite_model`; a NaN or Inf raises
:class:`DivergedError` and the epoch is not saved), a checkpoint is written only after that
check, ``resume=True`` finishes the call the checkpoint records, and progress is shown by
:class:`Progress`.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from torch import nn

from . import backends
from . import checkpoint as ckpt
from ._checks import check_int, compiling
from .random import SEED_RANGE, PhiloxStream

__all__ = ["DivergedError", "Model", "Progress", "adam", "check_finite_model", "model_seed"]


class DivergedError(ValueError):
    """Training made a parameter NaN or Inf (a ValueError, as scikit-learn's
    "Solver produced non-finite parameter weights")."""


def model_seed(seed: int | None) -> int:
    """A model's Philox seed: the given int in [0, 2^64), or one drawn from torch's RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return check_int("seed", seed, *SEED_RANGE)


def check_finite_model(model: str, tensors: dict[str, torch.Tensor], epoch: int, call_epoch: int,
                       call_epochs: int, hint: str) -> None:
    """Raise DivergedError when a floating tensor of ``tensors`` (a model's parameters and
    training state after an epoch) holds NaN or Inf: training diverged. Names the epoch and
    the first such tensor; ``hint`` names the likely cause (e.g. the learning rate).
    Skipped while compiling."""
    if compiling():
        return
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise DivergedError(
                f"{model}.fit diverged in epoch {epoch} (epoch {call_epoch} of the {call_epochs} of this "
                f"call): {name} holds NaN or Inf, and the model after this epoch was not saved to the "
                f"checkpoint. {hint}")


def adam(params, learning_rate: float) -> torch.optim.Adam:
    """The models' ``fit`` optimiser: torch's Adam, fused (one kernel per parameter tensor
    rather than a chain of elementwise ops each) where every parameter is a floating-point
    tensor on the CPU or a CUDA device, else the default implementation. The same update
    rule; on a vector flow's training step (40 parameter tensors) the step's Adam took 1.2 ms
    unfused and 0.2 ms fused on one CPU thread."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if fused:
        try:
            return torch.optim.Adam(params, lr=learning_rate, fused=True)
        except (RuntimeError, ValueError):   # a torch or a dtype without the fused kernel
            pass
    return torch.optim.Adam(params, lr=learning_rate)


class Progress:
    """A progress bar over a fit's epochs: tqdm's when it is installed (plain lines on
    stdout otherwise), with the latest value of a monitored metric; silent when
    ``verbose`` is false.

    total: the epochs of the call; initial: those already done (a resumed call); desc: the
    bar's label; monitor: the metric's name shown beside the bar (None: none), formatted
    with ``fmt``."""

    def __init__(self, total: int, initial: int, verbose: bool, desc: str, monitor: str | None = None,
                 fmt: str = "{:.5g}"):
        self.bar, self.verbose, self.desc, self.monitor, self.fmt = None, verbose, desc, monitor, fmt
        self.epoch, self.total = initial, total
        if verbose:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="epoch")

    def update(self, value=None) -> None:
        """One epoch done; ``value``: the monitored metric after it (None: not measured)."""
        self.epoch += 1
        if not self.verbose:
            return
        shown = self.fmt.format(value) if value is not None else "-"
        if self.bar is not None:
            if self.monitor is not None:
                self.bar.set_postfix({self.monitor: shown})
            self.bar.update(1)
        else:
            print(f"{self.desc} epoch {self.epoch}/{self.total}" + (f" {self.monitor} {shown}" if self.monitor else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Model(nn.Module):
    """Base of the models: random stream, ``backend=``, checkpoints, dtype and device.

    A subclass sets :attr:`kind` (the name its checkpoints carry), calls
    :meth:`_init_stream` in ``__init__`` and implements :meth:`_payload` and
    :meth:`_from_checkpoint`."""

    kind: ClassVar[str] = ""
    # the buffer whose dtype and device are the model's
    _dtype_source: ClassVar[str] = "weights"
    # the op a method's ``backend=`` is checked against when the method names none
    _main_op: ClassVar[str] = ""
    # while a public method runs with an explicit ``backend=``: that name, given to every op
    # the method runs; None: each op chooses as genkernels.backends does
    _backend: str | None = None
    _stream: PhiloxStream

    # ------------------------------------------------------------------ random stream
    def _init_stream(self, seed: int | None) -> None:
        """The model's stream: ``seed`` (None: one drawn from torch's RNG), offset 0."""
        self._stream = PhiloxStream(model_seed(seed))

    @property
    def seed(self) -> int:
        """The key of the model's random stream, an int in [0, 2^64)."""
        return self._stream.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._stream = PhiloxStream(check_int("seed", value, *SEED_RANGE), self._stream.offset)

    @property
    def offset(self) -> int:
        """The stream's next counter: where the model's next random draw starts."""
        return self._stream.offset

    @offset.setter
    def offset(self, value: int) -> None:
        self._stream.offset = value

    @property
    def stream(self) -> PhiloxStream:
        """The model's random stream (``seed``, ``offset``)."""
        return self._stream

    def _advance(self, n: int) -> int:
        """The first of the next n counters of the model's stream; moves the stream past them."""
        return self._stream.take(n)

    @contextlib.contextmanager
    def _call_stream(self, seed: int | None):
        """The stream a call draws from: the model's own (seed None: the call advances it),
        or a stream of its own, (seed, offset 0), for the block alone -- the model's stream
        is left where it was."""
        if seed is None:
            yield self._stream
            return
        own = PhiloxStream(check_int("seed", seed, *SEED_RANGE))
        saved, self._stream = self._stream, own
        try:
            yield own
        finally:
            self._stream = saved

    # ------------------------------------------------------------------------ backend
    @contextlib.contextmanager
    def _ops_backend(self, backend: str | None, op: str | None = None):
        """The block's ops run on ``backend`` (a public method's ``backend=``). None changes
        nothing: the automatic choice, or inside another method's block (fit's monitor, a
        DBN's layers) that method's backend. A name is checked first, against ``op`` (the
        method's main op; None: the model's ``_main_op``) on the model's device: a bad name raises ValueError, a backend
        that cannot run here BackendUnavailableError -- before the block changes anything."""
        if backend is None:
            yield
            return
        backends.resolve(op or self._main_op, self.device, backend)
        previous, self._backend = self._backend, backend
        try:
            yield
        finally:
            self._backend = previous

    # ----------------------------------------------------------------- dtype, device
    @property
    def dtype(self) -> torch.dtype:
        return getattr(self, self._dtype_source).dtype

    @property
    def device(self) -> torch.device:
        return getattr(self, self._dtype_source).device

    # -------------------------------------------------------------------- checkpoints
    def _state_payload(self) -> dict[str, torch.Tensor]:
        """The model's buffers and parameters, detached, on the CPU."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    def _payload(self) -> dict:
        """The checkpoint's fields (besides the envelope genkernels.checkpoint adds)."""
        raise NotImplementedError

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> Model:
        """A model of the checkpoint's fields, every one validated before any is loaded."""
        raise NotImplementedError

    def save(self, path) -> None:
        """Write the model to ``path`` atomically (a temp file in the same folder, then
        os.replace): an interrupted or failed save never damages an existing file."""
        ckpt.save_atomic(self._payload(), path, self.kind)

    @classmethod
    def _read(cls, path) -> ckpt.Fields:
        return ckpt.Fields(ckpt.read(path, cls.kind), path)

    @classmethod
    def load(cls, path, device=None):
        """Read a model written by :meth:`save` (``weights_only=True``); every field is
        validated, and a bad or missing one raises ValueError naming it."""
        return cls._from_checkpoint(cls._read(path), device)
