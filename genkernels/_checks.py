"""Argument validation shared by every public entry point.

Messages name the argument, what was expected and what came. Data-dependent checks
(finiteness, ranges of values) are skipped while torch.compile traces, so compiled
graphs do not break; shape, dtype and device checks always run.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of every kernel: fp64 for fp64 input, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def compiling() -> bool:
    return torch.compiler.is_compiling()


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_float_tensor(name: str, value, ndim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or "
                        f"float64); got dtype {value.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if value.dim() not in allowed:
            shapes = " or ".join(f"{n}-D" for n in allowed)
            raise ValueError(f"{name} must be {shapes}; got shape {tuple(value.shape)}")
    return value


def check_index_tensor(name: str, value, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor; got dtype {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {tuple(value.shape)}")
    return value


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    values = iter(tensors.values())
    first = next(values).device
    if all(t.device == first for t in values):
        return first
    first_name = next(iter(tensors))
    for name, t in tensors.items():
        if t.device != first:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first}; "
                             "all tensors must be on one device")
    return first


def kernel_input(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in ``dtype``, contiguous: t itself when it already is (no dispatcher call, the
    common case of the ops' hot paths), else a converted copy."""
    if t.dtype == dtype and t.is_contiguous():
        return t
    return t.to(dtype).contiguous()


def check_same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                            "they must match")
    return first.dtype


def _int_error(name: str, value, low: int | None, high: int | None) -> tuple[str, str] | None:
    """(exception name, message) of what is wrong with an integer argument, or None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return "TypeError", f"{name} must be an integer; got {type(value).__name__} {value!r}"
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        return "ValueError", f"{name} must be in [{lo}, {hi}]; got {value}"
    return None


_ERRORS = {"TypeError": TypeError, "ValueError": ValueError}


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    error = _int_error(name, value, low, high)
    if error is not None:
        raise _ERRORS[error[0]](error[1])
    return int(value)


@torch.library.custom_op("genkernels::argument_error", mutates_args=())
def _argument_error(x: torch.Tensor, error: str, message: str) -> torch.Tensor:
    """Raises ``error`` (TypeError or ValueError) with ``message`` when it runs: the
    failed check of a compiled op (see :func:`check_int_arg`)."""
    raise _ERRORS[error](message)


@_argument_error.register_fake
def _argument_error_fake(x, error, message):
    return x.new_zeros(())


# never dead-code eliminated, even where the op's result feeds no output (empty input)
torch.fx.node.has_side_effect(torch.ops.genkernels.argument_error.default)


def check_int_arg(name: str, value, low: int | None, high: int | None,
                  x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """:func:`check_int` for an argument of an op that ``torch.compile`` may trace; ``x``
    is the op's input tensor. Returns (value, x).

    Eager, it raises as check_int does. While Dynamo traces, an exception leaving the
    traced function is a graph break ("Observed exception"; torch._check_value on a
    constant condition raises the same way), which ``fullgraph=True`` turns into Dynamo's
    own error, so the user would never see the ValueError. There the failed check becomes
    an op in the graph, on x's path into the kernels, that raises the same TypeError /
    ValueError when the compiled function runs; tracing goes on with the value clamped
    into [low, high] (those kernels never run)."""
    error = _int_error(name, value, low, high)
    if error is None:
        return int(value), x
    if not compiling():
        raise _ERRORS[error[0]](error[1])
    x = x + _argument_error(x.detach(), error[0], error[1])
    safe = int(value) if error[0] == "ValueError" else (low if low is not None else 0)
    safe = max(safe, low) if low is not None else safe
    return (min(safe, high) if high is not None else safe), x


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number; got {type(value).__name__} {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    return float(value)


def real_values(name: str, value) -> torch.Tensor:
    """A number, a sequence of numbers or a real tensor as a 1-D float64 tensor (on the
    tensor's device); TypeError naming ``name`` for anything else (a string, a complex
    number, a bool)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers; got a {value.dtype} tensor")
        return value.detach().to(torch.float64).reshape(-1)
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise TypeError(f"{name} must be a real number or a sequence of them; got "
                            f"{type(item).__name__} {item!r}")
    return torch.tensor([float(v) for v in items], dtype=torch.float64)


def check_fits_dtype(name: str, lo: float, hi: float, dtype: torch.dtype) -> None:
    """Finite data whose range [lo, hi] overflows ``dtype`` (float64 data for a float32
    model): a ValueError that says so, instead of the NaN/Inf the conversion would make."""
    limit = torch.finfo(dtype).max
    if math.isfinite(lo) and math.isfinite(hi) and max(-lo, hi) > limit:
        raise ValueError(f"{name} holds values up to {max(-lo, hi):.3g} in magnitude, beyond the range of "
                         f"{str(dtype).removeprefix('torch.')} (+-{limit:.3g}); scale the data or use "
                         "dtype=torch.float64")


def from_numpy(array) -> torch.Tensor:
    """A numpy array as a tensor: shared when writable, else copied (a read-only array or
    np.memmap: torch warns it cannot protect such memory, and an in-place op on it would
    fault), so no warning and no aliasing of read-only pages."""
    import numpy as np

    if not array.flags.writeable:
        array = np.array(array)
    return torch.from_numpy(array)


def value_range(t: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty real tensor as Python floats, NaN if it holds a NaN:
    one aminmax pass. (numpy's min/max of a small CPU array is faster alone, but costs
    about 10 us more inside an op call than alone, measured on 2 cores: torch here.)"""
    t = t.detach()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    lo, hi = torch.aminmax(t)
    if t.device.type == "cpu":
        return float(lo), float(hi)
    return tuple(torch.stack([lo.to(torch.float64), hi.to(torch.float64)]).tolist())  # one sync


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of a real tensor is finite (True when empty). A finite sum
    proves it (an Inf or NaN term makes the sum Inf or NaN) in the cheapest pass; only a
    sum that is not finite -- an Inf, a NaN, or finite values overflowing -- takes the
    exact min/max pass."""
    if t.numel() == 0:
        return True
    if math.isfinite(float(t.detach().sum())):
        return True
    lo, hi = value_range(t)
    return math.isfinite(lo) and math.isfinite(hi)


def check_finite_rows(name: str, x: torch.Tensor) -> None:
    """Raise naming the first row holding NaN or Inf (eager only)."""
    if compiling() or x.numel() == 0:
        return
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.reshape(x.shape[0], -1).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name} contains NaN or Inf (first at row {row}); clean the data or "
                         "pass missing='ignore' to skip missing features")


def check_model_dtype(dtype) -> torch.dtype:
    """A model's parameter dtype: float32 or float64."""
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
    return dtype


def check_beta(beta, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An inverse temperature > 0 and finite -- a number or a one-element float tensor (an
    nn.Parameter stays differentiable) -- as a 0-d tensor in ``dtype`` on ``device``."""
    if isinstance(beta, torch.Tensor):
        if not beta.is_floating_point():
            raise TypeError(f"beta must be a float or a floating-point tensor; got dtype {beta.dtype}")
        if beta.numel() != 1:
            raise ValueError(f"beta must hold one number; got shape {tuple(beta.shape)}")
        if not compiling() and beta.device.type != "meta":
            value = float(beta.detach().reshape(()))
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"beta must be > 0 and finite; got {value!r}")
        return beta.reshape(()).to(device=device, dtype=dtype)
    value = check_positive("beta", beta)
    if not math.isfinite(value):
        raise ValueError(f"beta must be > 0 and finite; got {value!r}")
    if compiling():
        return torch.tensor(value, dtype=dtype, device=device)
    return _constant(value, dtype, device)


@functools.lru_cache(maxsize=64)
def _constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-d tensor holding ``value``, made once per (value, dtype, device): a layer calls
    its op with the same number step after step (torch.tensor costs a few microseconds, as
    much as a small kernel). The ops only read it."""
    return torch.tensor(value, dtype=dtype, device=device)
