"""The hyperparameter check the Boltzmann-family trainers (RBM, DBN, BoltzmannMachine)
share. The rest of their training rules (the finiteness check after every epoch, the
checkpoint validator, the progress bar) are the core's: genkernels.model and
genkernels.checkpoint."""

from __future__ import annotations

import math
import numbers


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
