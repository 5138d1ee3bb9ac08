"""What the Boltzmann-family trainers (RBM, DBN, BoltzmannMachine) share: hyperparameter
checks, the finiteness check of a model after every epoch, and the field checks of their
checkpoints (on top of genkernels.checkpoint's validator)."""

from __future__ import annotations

import math
import numbers

import torch

from .. import checkpoint as ckpt
from .._checks import compiling

# dtypes a model's checkpoint may name in its config
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# a model's stream position: the counter of its next draw. It starts at 0 and grows by the
# draws made (2^63 counters are out of reach), so a negative one is a crafted checkpoint
OFFSET_RANGE = (0, 2**63 - 1)


class DivergedError(ValueError):
    """Training made a parameter NaN or Inf (a ValueError, as scikit-learn's
    "Solver produced non-finite parameter weights")."""


def check_real(name: str, value, low: float, high: float = math.inf, *, low_open: bool = False,
               high_open: bool = True) -> float:
    """A finite real number in the interval; TypeError for anything not a real number
    (bools and strings included), ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    value = float(value)
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high and math.isfinite(value)):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}{low:g}, {high:g}{hi} and finite; got {value!r}")
    return value


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


def _where(path) -> str:
    return f"checkpoint {str(path)!r}" if path is not None else "checkpoint"


def prefixed(payload, prefix: str):
    """payload's keys with ``prefix`` in front (a dict), so that the validator's errors name
    nested fields such as 'layers[1].state.weights'; anything else is returned as is."""
    if not isinstance(payload, dict) or not prefix:
        return payload
    return {f"{prefix}{k}": v for k, v in payload.items()}


def dtype_field(cfg: dict, key: str, path=None) -> torch.dtype:
    name = ckpt.field(cfg, key, str, path)
    if name not in DTYPES:
        raise ValueError(f"{_where(path)}: the field {key!r} must be one of {sorted(DTYPES)}; got {name!r}")
    return DTYPES[name]


def choice_field(cfg: dict, key: str, choices, path=None) -> str:
    value = ckpt.field(cfg, key, str, path)
    if value not in choices:
        raise ValueError(f"{_where(path)}: the field {key!r} must be one of {list(choices)}; got {value!r}")
    return value


def seed_field(cfg: dict, key: str, path=None) -> int:
    return ckpt.int_field(cfg, key, 0, 2**64 - 1, path)


def offset_field(payload: dict, key: str, path=None) -> int:
    return ckpt.int_field(payload, key, *OFFSET_RANGE, path=path)


def check_tensors(payload: dict, key: str, expected: dict[str, tuple[tuple, torch.dtype]], path=None,
                  values: dict[str, tuple] | None = None) -> dict[str, torch.Tensor]:
    """payload[key]: a dict holding exactly the entries of ``expected`` (name -> (shape,
    dtype)), each checked by genkernels.checkpoint.check_tensor (finite; ``values``: name ->
    allowed values). Errors name the field, e.g. 'state.chains'."""
    state = ckpt.field(payload, key, dict, path, "a dict of tensors")
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"{_where(path)}: the field {key!r} must hold the entries {sorted(expected)}"
                         + (f"; missing {missing}" if missing else "")
                         + (f"; unexpected {extra}" if extra else ""))
    for name, (shape, dtype) in expected.items():
        ckpt.check_tensor(f"{key}.{name}", state[name], shape, dtype, path, values=(values or {}).get(name))
    return state


def leading_rows(value, default: int = 0) -> int:
    """The row count of a stored (rows, ...) tensor whose row count is free (persistent
    chains); ``default`` when it is no tensor with dimensions (check_tensor reports it)."""
    return int(value.shape[0]) if isinstance(value, torch.Tensor) and value.dim() >= 1 else default
