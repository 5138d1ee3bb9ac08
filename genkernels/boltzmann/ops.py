"""Public ops of restricted Boltzmann machines: validation, backend choice, fake kernels.

Re-exported flat in ``genkernels.ops``. Backends (see ``genkernels.backends``):
``reference`` (genkernels/boltzmann/reference.py), ``cpu`` (csrc/cpu/rbm.cpp via
``torch.ops.genkernels.rbm_half_step``) and ``triton`` (genkernels/boltzmann/triton.py).
Samples are bit-identical across backends wherever the probabilities are (the Bernoulli
identity of DESIGN.md, "Randomness"); computed probabilities agree within the dtype
tolerance, so a sample may differ where |u - P| is within that rounding.
"""

from __future__ import annotations

import torch

from .. import backends
from .. import random as gk_random
from .._checks import (
    acc_dtype,
    check_float_tensor,
    check_int,
    check_same_device,
    compiling,
)
from . import reference

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1

if backends.extension_error() is None:
    @torch.library.register_fake("genkernels::rbm_half_step")
    def _half_step_fake(s, w, bias, seed, offset, transpose, return_probs):
        n_out = w.shape[0] if transpose else w.shape[1]
        return (s.new_empty((s.shape[0], n_out), dtype=torch.uint8),
                w.new_empty((s.shape[0] if return_probs else 0, n_out)))


def _triton_ops():
    from . import triton  # noqa: F401  (registers genkernels::rbm_half_step_triton)
    return torch.ops.genkernels


def _check_states(s, w: torch.Tensor, n_in: int, transpose: bool) -> torch.Tensor:
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"s must be a torch.Tensor; got {type(s).__name__}")
    if s.dtype != torch.uint8:
        check_float_tensor("s", s)
    if s.dim() != 2 or s.shape[1] != n_in:
        layer = "hidden" if transpose else "visible"
        raise ValueError(f"s must be (B, {n_in}): the {layer} layer of w {tuple(w.shape)} with "
                         f"transpose={transpose}; got shape {tuple(s.shape)}")
    return s


def rbm_half_step(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int = 0,
                  transpose: bool = False, return_probs: bool = False, *,
                  backend: str | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One Gibbs half-step of an RBM, fused: probabilities and their Bernoulli samples.

    Args:
        s: (B, n_in) states: uint8 samples (0/1) or floats (probabilities, or real-valued
            inputs such as v / sigma for Gaussian visible units).
        w: (n_visible, n_hidden) float32 or float64 weights.
        bias: (n_out,) bias of the layer being sampled.
        seed: Philox key, an int in [0, 2^64).
        offset: int64 Philox counter of row 0: element (b, j) compares word j % 4 of
            ``genkernels.random.randint4x(seed, offset + b * Q + j // 4)``, Q = ceil(n_out / 4),
            as a uniform (``tl.rand4x``) with P. A caller holding rows r0.. of a larger batch
            passes ``offset + r0 * Q``; a caller sampling again advances offset by B * Q.
        transpose: False -- visible to hidden, P = sigmoid(s @ w + bias), n_in = n_visible,
            n_out = n_hidden; True -- hidden to visible, P = sigmoid(s @ w.T + bias).
        return_probs: also return P.
        backend: "reference", "cpu" or "triton" (None: auto, see genkernels.backends).
    Returns:
        samples: (B, n_out) uint8, 1 where u < P; and, with return_probs, P: (B, n_out)
        float32 (float64 for float64 weights).
    """
    check_float_tensor("w", w, 2)
    if w.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"w must be float32 or float64; got dtype {w.dtype}")
    transpose, return_probs = bool(transpose), bool(return_probs)
    n_in, n_out = (w.shape[1], w.shape[0]) if transpose else (w.shape[0], w.shape[1])
    _check_states(s, w, n_in, transpose)
    check_float_tensor("bias", bias, 1)
    if bias.shape[0] != n_out:
        raise ValueError(f"bias must be ({n_out},) (the output layer of w {tuple(w.shape)} with "
                         f"transpose={transpose}); got shape {tuple(bias.shape)}")
    check_same_device(w=w, s=s, bias=bias)
    seed = gk_random._check_seed(seed)
    offset = check_int("offset", offset, INT64_MIN, INT64_MAX)
    if not compiling() and s.dtype != torch.uint8 and s.numel() and s.device.type != "meta" \
            and not bool(torch.isfinite(s).all()):
        raise ValueError("s contains NaN or Inf")

    dt = acc_dtype(w.dtype)
    s = s if s.dtype == torch.uint8 else s.to(dt)
    samples, probs = half_step(s.contiguous(), w.contiguous(), bias.to(dt).contiguous(), seed, offset,
                               transpose, return_probs, backend)
    return (samples, probs) if return_probs else samples


def half_step(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
              transpose: bool, return_probs: bool, backend: str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rbm_half_step` on validated arguments (the models' hot path): s contiguous
    uint8 or in w's dtype, w contiguous float32/float64, bias contiguous in w's dtype, seed
    in [0, 2^64), offset an int64. Always returns (samples, probs or an empty (0, n_out))."""
    name = backends.resolve("rbm_half_step", s.device, backend)
    if name == "reference":
        return reference.rbm_half_step(s, w, bias, seed, offset, transpose, return_probs)
    if name == "triton":
        return _triton_ops().rbm_half_step_triton(s, w, bias, gk_random._schema_seed(seed), offset,
                                                  transpose, return_probs)
    return torch.ops.genkernels.rbm_half_step(s, w, bias, gk_random._schema_seed(seed), offset, transpose,
                                              return_probs)
