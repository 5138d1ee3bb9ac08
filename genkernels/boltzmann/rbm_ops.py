"""Public ops of restricted Boltzmann machines: validation, backend choice, fake kernels.

Re-exported flat in ``genkernels.ops``. Backends (see ``genkernels.backends``):
``reference`` (genkernels/boltzmann/rbm_reference.py), ``cpu`` (csrc/cpu/rbm.cpp via
``torch.ops.genkernels.rbm_half_step``) and ``triton`` (genkernels/boltzmann/rbm_triton.py).
Samples are bit-identical across backends wherever the probabilities are (the Bernoulli
identity of docs/design.md, "Randomness"); computed probabilities agree within the dtype
tolerance, so a sample may differ where |u - P| is within that rounding.

``rbm_half_step_binary`` is the same half-step for 0/1 states (the product as a sum of
gathered weight rows, the same counters; ``torch.ops.genkernels.rbm_half_step_binary`` and
``rbm_half_step_binary_triton``); ``binary_outer_add_`` and ``pack_binary`` are the RBM's
binary-state weight statistics and data test (``RBM.fit(state_path=...)``).
"""

from __future__ import annotations

import torch

from .. import random as gk_random
from .. import registry
from .._checks import (
    acc_dtype,
    all_finite,
    check_float_tensor,
    check_int,
    check_same_device,
    compiling,
    kernel_input,
    value_range,
)
from . import rbm_reference as reference


# ------------------------------------------------------------------ declared ops
def _half_step_fake(s, w, bias, seed, offset, transpose, return_probs):
    n_out = w.shape[0] if transpose else w.shape[1]
    return (s.new_empty((s.shape[0], n_out), dtype=torch.uint8),
            w.new_empty((s.shape[0] if return_probs else 0, n_out)))


def _half_step_reference(s, w, bias, seed, offset, transpose, return_probs):
    return reference.rbm_half_step(s, w, bias, gk_random.key_of(seed), offset, transpose, return_probs)


def _half_step_at_reference(s, w, bias, seed, offset_base, offset, transpose, return_probs):
    start = gk_random.wrap_int64(int(offset_base.reshape(())) + offset)
    return reference.rbm_half_step(s, w, bias, gk_random.key_of(seed), start, transpose, return_probs)


def _half_step_binary_reference(s, w, bias, seed, offset, transpose, return_probs):
    return reference.rbm_half_step_binary(s, w, bias, gk_random.key_of(seed), offset, transpose, return_probs)


def _binary_outer_add_fake(out, x, h, alpha, column_sums, sums_alpha):
    return None


def _pack_binary_fake(x):
    # all rows when x is binary, none otherwise: a data-dependent row count
    return x.new_empty((torch.library.get_ctx().new_dynamic_size(), x.shape[1]), dtype=torch.uint8)


def _pcd_step_fake(v_pos, w, visible_bias, hidden_bias, chains, seed, offset_v, offset_h, lr):
    return torch.empty_like(chains)


def _pcd_step_reference(v_pos, w, visible_bias, hidden_bias, chains, seed, offset_v, offset_h, lr):
    return reference.rbm_pcd_step_(v_pos, w, visible_bias, hidden_bias, chains, gk_random.key_of(seed), offset_v,
                                   offset_h, lr)


# rbm_half_step(s (B, n_in) uint8 or in w's dtype, w (n_visible, n_hidden), bias (n_out,),
# seed (int64 bit pattern), offset, transpose, return_probs) -> (samples (B, n_out) uint8,
# probs (B | 0, n_out)); rbm_half_step_binary the same for 0/1 states. The C++ ops carry
# their backward in C++ (csrc/cpu/rbm_autograd.cpp), the Triton ops register the
# reference's (genkernels/boltzmann/rbm_triton.py).
HALF_STEP = registry.declare(
    "rbm_half_step",
    reference=_half_step_reference,
    cpu=registry.extension("rbm_half_step"),
    triton=registry.lazy(__package__ + ".rbm_triton", "rbm_half_step_triton"),
    fake=_half_step_fake)
# rbm_half_step_at(s, w, bias, seed, offset_base (1,) int64 on s's device, offset, transpose,
# return_probs): rbm_half_step with its counters at offset_base + offset, offset_base read
# when the kernel runs -- the launch RBM.fit(cuda_graph=True) captures, so that every replay
# draws new numbers. Triton (the reference reads offset_base on the host: the spec).
HALF_STEP_AT = registry.declare(
    "rbm_half_step_at",
    reference=_half_step_at_reference,
    triton=registry.lazy(__package__ + ".rbm_triton", "rbm_half_step_at_triton"))
HALF_STEP_BINARY = registry.declare(
    "rbm_half_step_binary",
    reference=_half_step_binary_reference,
    cpu=registry.extension("rbm_half_step_binary"),
    triton=registry.lazy(__package__ + ".rbm_triton", "rbm_half_step_binary_triton"),
    fake=_half_step_fake)
# rbm_binary_outer_add_(out, x, h, alpha, column_sums, sums_alpha): in place; its cpu
# backend also owns rbm_pack_binary (the data test of the binary-state path).
BINARY_OUTER_ADD = registry.declare(
    "rbm_binary_outer_add",
    reference=reference.binary_outer_add_,
    cpu=registry.extension("rbm_binary_outer_add_"))
registry.register_schema_kernels("rbm_binary_outer_add_", fake=_binary_outer_add_fake)
registry.register_schema_kernels("rbm_pack_binary", fake=_pack_binary_fake)
# rbm_pcd_step_(v_pos, w, visible_bias, hidden_bias, chains, seed (int64 bit pattern),
# offset_v, offset_h, lr) -> new chains; w and the biases updated in place. A composition of
# half-steps and products: its reference runs on any device.
PCD_STEP = registry.declare(
    "rbm_pcd_step",
    reference=_pcd_step_reference,
    cpu=registry.extension("rbm_pcd_step_"))
registry.register_schema_kernels("rbm_pcd_step_", fake=_pcd_step_fake)
registry.static_kernels("boltzmann.rbm", registry.lazy(__package__ + ".rbm_triton", "static_kernels"))


def _check_half_step(s, w, bias, seed, offset, transpose, return_probs):
    """The arguments every half-step op shares -> (transpose, return_probs, seed, offset)."""
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
    offset = check_int("offset", offset, *gk_random.INT64_RANGE)
    return transpose, return_probs, seed, offset


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
        s: (B, n_in) states: uint8 samples (every value 0 or 1, checked eagerly) or floats
            (probabilities, or real-valued inputs such as v / sigma for Gaussian visible
            units).
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

    Differentiable: P carries gradients to float s, w and bias (those of sigmoid(s @ w +
    bias)) on every backend, so w may be an ``nn.Parameter``; the samples are not.
    """
    transpose, return_probs, seed, offset = _check_half_step(s, w, bias, seed, offset, transpose, return_probs)
    if s.dtype == torch.uint8:
        _check_binary("s", s)  # uint8 states are samples: 0 or 1, as rbm_half_step_binary requires
    elif not compiling() and s.device.type != "meta" and not all_finite(s):
        raise ValueError("s contains NaN or Inf")

    dt = acc_dtype(w.dtype)
    samples, probs = half_step(kernel_input(s, torch.uint8 if s.dtype == torch.uint8 else dt),
                               kernel_input(w, w.dtype), kernel_input(bias, dt), seed, offset,
                               transpose, return_probs, backend)
    return (samples, probs) if return_probs else samples


def half_step(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
              transpose: bool, return_probs: bool, backend: str | None = None,
              offset_base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rbm_half_step` on validated arguments (the models' hot path): s contiguous
    uint8 or in w's dtype, w contiguous float32/float64, bias contiguous in w's dtype, seed
    in [0, 2^64), offset an int64. Always returns (samples, probs or an empty (0, n_out)).

    offset_base: None, or a one-element int64 tensor on s's device: the counters start at
    its value + offset, read by the kernel at run time (the op ``rbm_half_step_at`` on the
    triton backend: the RBM's CUDA-graph training)."""
    name = HALF_STEP.resolve(s.device, backend)
    if offset_base is not None:
        if name != "triton":
            raise ValueError(f"offset_base (a counter base in device memory) needs the triton backend of "
                             f"rbm_half_step; got backend {name!r}")
        HALF_STEP_AT.prepare("triton")
        return HALF_STEP_AT.kernels["triton"](s, w, bias, gk_random._schema_seed(seed), offset_base, offset,
                                              transpose, return_probs)
    return HALF_STEP.kernels[name](s, w, bias, gk_random._schema_seed(seed), offset, transpose, return_probs)


def _check_binary(name: str, s: torch.Tensor) -> None:
    """Eager data check of 0/1 states (skipped while compiling, docs/design.md, "Validation")."""
    if compiling() or s.numel() == 0 or s.device.type == "meta":
        return
    # uint8: 0 or 1 <=> at most 1 (one min/max pass instead of four elementwise ops)
    binary = value_range(s)[1] <= 1 if s.dtype == torch.uint8 else bool(((s == 0) | (s == 1)).all())
    if not binary:
        bad = s[(s != 0) & (s != 1)][0].item()
        raise ValueError(f"{name} must hold binary states (0 or 1); got the value {bad!r}")


def rbm_half_step_binary(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int = 0,
                         transpose: bool = False, return_probs: bool = False, *,
                         backend: str | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`rbm_half_step` for binary states: the product is a sum of gathered weight rows.

    P[b] = sigmoid(bias + sum of the rows i of W (transpose=False) or of W^T (transpose=True)
    with s[b, i] = 1), which equals rbm_half_step's P up to float summation order; the
    Bernoulli draws use exactly rbm_half_step's counters, so both ops draw the same samples
    wherever their probabilities are equal. Worth it when s is sparse (the work is
    proportional to the ones in s); the RBM picks it by itself (``RBM.fit(state_path=...)``).

    Args:
        s: (B, n_in) binary states, uint8 or float, every value 0 or 1 (checked eagerly).
        w, bias, seed, offset, transpose, return_probs, backend: as :func:`rbm_half_step`
            (backends "reference", "cpu", "triton").
    Returns:
        samples (B, n_out) uint8 and, with return_probs, P (B, n_out) float32 (float64 for
        float64 weights). P carries gradients to w and bias, as :func:`rbm_half_step`'s; the
        0/1 states are discrete and get none.
    """
    transpose, return_probs, seed, offset = _check_half_step(s, w, bias, seed, offset, transpose, return_probs)
    _check_binary("s", s)
    dt = acc_dtype(w.dtype)
    s = s if s.dtype == torch.uint8 else s.to(dt)
    samples, probs = half_step_binary(s.contiguous(), w.contiguous(), bias.to(dt).contiguous(), seed, offset,
                                      transpose, return_probs, backend)
    return (samples, probs) if return_probs else samples


def half_step_binary(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
                     transpose: bool, return_probs: bool, backend: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rbm_half_step_binary` on validated arguments (as :func:`half_step`)."""
    step = HALF_STEP_BINARY.kernels[HALF_STEP_BINARY.resolve(s.device, backend)]
    return step(s, w, bias, gk_random._schema_seed(seed), offset, transpose, return_probs)


def binary_outer_add_(out: torch.Tensor, x: torch.Tensor, h: torch.Tensor, alpha: float,
                      column_sums: torch.Tensor, sums_alpha: float, backend: str | None = None) -> None:
    """out (n_in, n_out) += alpha * x^T h and column_sums (n_in,) += sums_alpha * x.sum(0), in
    place, for 0/1 states x (B, n_in) (uint8 or out's dtype) and h (B, n_out) in out's dtype,
    all contiguous (validated by the caller): the RBM's weight and visible-bias statistics of
    binary visible states, as scatters of h's rows (backends "reference" and "cpu")."""
    outer_add = BINARY_OUTER_ADD.kernels[BINARY_OUTER_ADD.resolve(out.device, backend)]
    outer_add(out, x, h, float(alpha), column_sums, float(sums_alpha))


def pcd_step_(v_pos: torch.Tensor, w: torch.Tensor, visible_bias: torch.Tensor, hidden_bias: torch.Tensor,
              chains: torch.Tensor, seed: int, offset_v: int, offset_h: int, lr: float,
              backend: str | None = None) -> torch.Tensor:
    """One persistent-CD batch of scikit-learn's BernoulliRBM rule in place
    (reference.rbm_pcd_step_ is the spec) on validated arguments: v_pos (B, n_visible) in
    w's dtype, w contiguous float32/float64, the biases contiguous in w's dtype, chains
    (C, n_hidden) uint8, seed in [0, 2^64), offsets int64. Returns the new chains. The cpu
    backend does the whole batch in one C++ call (the same ATen kernels in the same order,
    so bit for bit the reference run on the cpu half-steps); elsewhere the reference runs
    on the device's half-step backend. backend: None (auto), "reference" (the reference on
    the reference half-steps), "cpu", or a half-step backend without a fused step
    ("triton"): the reference composed of that backend's half-steps."""
    if backend is not None and backend not in PCD_STEP.backends:
        name = HALF_STEP.resolve(v_pos.device, backend)  # a bad name or one that cannot run: raises
        return reference.rbm_pcd_step_(v_pos, w, visible_bias, hidden_bias, chains, seed, offset_v, offset_h, lr,
                                       half_step=lambda *args: half_step(*args, name))
    name = PCD_STEP.resolve(v_pos.device, backend)
    if name == "reference" and backend != "reference":
        # no fused step for this device: the spec composed of the device's half-steps
        return reference.rbm_pcd_step_(v_pos, w, visible_bias, hidden_bias, chains, seed, offset_v, offset_h,
                                       lr, half_step=half_step)
    return PCD_STEP.kernels[name](v_pos, w, visible_bias, hidden_bias, chains, gk_random._schema_seed(seed),
                                  offset_v, offset_h, float(lr))


def pack_binary(x: torch.Tensor, backend: str | None = None) -> torch.Tensor | None:
    """x (N, D) float -> its (N, D) uint8 copy if every value is exactly 0 or 1, else None
    (one read of x with the cpu backend; the RBM's test for binary training data)."""
    if BINARY_OUTER_ADD.resolve(x.device, backend) == "cpu":
        packed = torch.ops.genkernels.rbm_pack_binary(x)
        return packed if packed.shape[0] == x.shape[0] else None
    return x.to(torch.uint8) if bool(((x == 0) | (x == 1)).all()) else None
