"""Triton kernel of the RBM Gibbs half-step and the ``genkernels::rbm_half_step_triton`` op.

Three layers (STYLE.md): ``_rbm_half_step_kernel`` -> ``rbm_half_step_fwd()`` (output
allocation, grid, fixed meta-parameters) -> ``torch.ops.genkernels.rbm_half_step_triton``
(a ``torch.library.custom_op`` with a fake kernel), which ``genkernels.boltzmann.rbm_ops``
calls for ``backend="triton"``. The signature is the C++ schema of csrc/genkernels.cpp
with a ``_triton`` suffix; the oracle is genkernels/boltzmann/rbm_reference.py.

One program owns a (BLOCK_B, BLOCK_N) tile of the output: it accumulates s @ W over
BLOCK_K-wide slices with ``tl.dot``, adds the bias,
applies the sigmoid and, in the same registers, draws word j % 4 of ``tl.rand4x(seed,
offset + b * Q + j // 4)`` (Q = ceil(n_out / 4)) per element and stores the uint8 sample
(and the probability when asked). States
arrive as uint8 samples or floats and are widened on load.

Precision of the product: fp32 IEEE (``input_precision="ieee"``) by default -- the
probabilities are compared with uniforms, so tf32's 10-bit operands move the samples whose
uniform lies within about 1e-3 of their probability. Where the caller has allowed TF32 for
fp32 matrix products on CUDA (``torch.backends.cuda.matmul.allow_tf32 = True``, or
``torch.set_float32_matmul_precision("high")``), the kernel follows torch and multiplies
on the tensor cores in tf32, as torch.mm then does for the rest of the update; fp64 is
always IEEE. The flag is read at each call.

With ``USE_OFFSET_PTR`` the kernel reads the counter base from an int64 scalar in device
memory and adds ``offset`` to it (int64, wrapping): the variant that ``RBM.fit(cuda_graph=True)``
launches through :func:`rbm_half_step_fwd`'s ``offset_base``, so that a replayed CUDA graph
draws new numbers; the op's schema is unchanged.

Seeds travel through the op schema as int64 (the bit pattern of a seed in [0, 2^64)) and
reach the kernel as the Python int in [0, 2^64), as in genkernels/triton_random.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..random import key_of
from .rbm_reference import half_step_backward, half_step_binary_backward, half_step_setup_context

# Fixed configurations (the interpreter cannot autotune, docs/design.md, "Testing"). fp32: 8 warps
# (16 outputs per thread) because the Philox epilogue of 32 outputs per thread with 4 warps
# took 255 registers and spilled (40-byte stack, sm_90, hidden->visible); see
# bench/results/static/boltzmann.md.
CONFIG = {torch.float32: {"BLOCK_B": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3},
          torch.float64: {"BLOCK_B": 32, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}}


@triton.jit
def _rbm_half_step_kernel(
    S,                 # *u8|fp (B, N_IN) states, row stride stride_sb, unit stride 1
    W,                 # *fp (N_IN, N_OUT) as W[k, n] = W + k * stride_wk + n * stride_wn
    BIAS,              # *fp (N_OUT,)
    SAMPLES,           # *u8 (B, N_OUT) contiguous: the Bernoulli samples
    PROBS,             # *fp (B, N_OUT) contiguous: the probabilities (RETURN_PROBS only)
    seed,              # Philox key, [0, 2^64)
    offset,            # Philox counter of row 0; element (b, j) uses word j % 4 of offset + b * Q + j // 4
    B, N_IN, N_OUT,
    stride_sb, stride_wk, stride_wn,
    RETURN_PROBS: tl.constexpr,
    ACC: tl.constexpr,         # tl.float32, or tl.float64 for fp64 weights
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr = "ieee",  # tl.dot input precision: "ieee", or "tf32" (fp32, TF32 allowed)
    OFFSET_PTR=None,   # *i64 scalar (USE_OFFSET_PTR only): the counter base, read on the device
    USE_OFFSET_PTR: tl.constexpr = False,  # counters start at *OFFSET_PTR + offset (int64, wrapping)
):
    # the counter base from device memory: a replayed CUDA graph draws new numbers when
    # the base moves between replays (genkernels.RBM.fit(cuda_graph=True))
    if USE_OFFSET_PTR:
        offset = tl.load(OFFSET_PTR) + offset
    # program (pb, pn) owns rows [pb * BLOCK_B, ...) and output units [pn * BLOCK_N, ...);
    # 64-bit row indices: B * N_OUT may exceed 2^31
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < B
    col_ok = cols < N_OUT
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
    for k0 in range(0, N_IN, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < N_IN
        s = tl.load(S + rows[:, None] * stride_sb + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0).to(ACC)
        w = tl.load(W + ks[:, None].to(tl.int64) * stride_wk + cols[None, :].to(tl.int64) * stride_wn,
                    mask=k_ok[:, None] & col_ok[None, :], other=0).to(ACC)
        acc = tl.dot(s, w, acc, input_precision=PRECISION)
    bias = tl.load(BIAS + cols, mask=col_ok, other=0).to(ACC)
    p = tl.sigmoid(acc + bias[None, :])
    out = rows[:, None] * N_OUT + cols[None, :]
    q = (N_OUT + 3) // 4
    u0, u1, u2, u3 = tl.rand4x(seed, offset + rows[:, None] * q + (cols // 4)[None, :])
    word = (cols % 4)[None, :]
    u = tl.where(word == 0, u0, tl.where(word == 1, u1, tl.where(word == 2, u2, u3)))
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(SAMPLES + out, (u < p).to(tl.uint8), mask=mask)
    if RETURN_PROBS:
        tl.store(PROBS + out, p, mask=mask)


def rbm_half_step_fwd(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
                      transpose: bool, return_probs: bool, offset_base: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """s (B, n_in) uint8|float, w (n_visible, n_hidden), bias (n_out,) -> samples (B, n_out)
    uint8, probs (B, n_out) (or (0, n_out) without return_probs); see the reference.

    offset_base: None, or a one-element int64 tensor on s's device holding the counter
    base: the kernel then reads it at run time and draws with counters offset_base + offset
    (int64, wrapping) where the op draws with offset -- the same numbers as
    ``offset=offset_base + offset``, but a CUDA graph that captured the launch draws new
    ones each time the base moves. Not part of the op's schema: the RBM's CUDA-graph
    training calls this function directly (``RBM.fit(cuda_graph=True)``)."""
    dt = acc_dtype(w.dtype)
    w = w.to(dt).contiguous()
    bias = bias.to(dt).contiguous()
    s = s.contiguous()
    n_in, n_out = (w.shape[1], w.shape[0]) if transpose else (w.shape[0], w.shape[1])
    stride_wk, stride_wn = (1, w.shape[1]) if transpose else (w.shape[1], 1)
    rows = s.shape[0]
    samples = torch.empty((rows, n_out), dtype=torch.uint8, device=s.device)
    probs = torch.empty((rows if return_probs else 0, n_out), dtype=dt, device=s.device)
    if rows == 0 or n_out == 0:
        return samples, probs
    cfg = CONFIG[dt]
    grid = (triton.cdiv(rows, cfg["BLOCK_B"]), triton.cdiv(n_out, cfg["BLOCK_N"]))
    precision = "tf32" if dt == torch.float32 and tf32_allowed(s.device) else "ieee"
    _rbm_half_step_kernel[grid](
        s, w, bias, samples, probs if return_probs else samples, key_of(seed), offset,
        rows, n_in, n_out, max(s.stride(0), 1), stride_wk, stride_wn,
        RETURN_PROBS=return_probs, ACC=tl.float64 if dt == torch.float64 else tl.float32,
        BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], PRECISION=precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        **({} if offset_base is None else {"OFFSET_PTR": offset_base, "USE_OFFSET_PTR": True}))
    return samples, probs


def tf32_allowed(device: torch.device) -> bool:
    """Whether torch lets fp32 matrix products on ``device`` use TF32: CUDA devices with
    ``torch.backends.cuda.matmul.allow_tf32`` (set directly or by
    ``torch.set_float32_matmul_precision("high" | "medium")``). Never under the interpreter."""
    return device.type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)


@torch.library.custom_op("genkernels::rbm_half_step_triton", mutates_args=())
def rbm_half_step_triton(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
                         transpose: bool, return_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return rbm_half_step_fwd(s, w, bias, seed, offset, transpose, return_probs)


@rbm_half_step_triton.register_fake
def _rbm_half_step_triton_fake(s, w, bias, seed, offset, transpose, return_probs):
    n_out = w.shape[0] if transpose else w.shape[1]
    dt = acc_dtype(w.dtype)
    return (s.new_empty((s.shape[0], n_out), dtype=torch.uint8),
            w.new_empty((s.shape[0] if return_probs else 0, n_out), dtype=dt))


@torch.library.custom_op("genkernels::rbm_half_step_at_triton", mutates_args=())
def rbm_half_step_at_triton(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int,
                            offset_base: torch.Tensor, offset: int, transpose: bool,
                            return_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """rbm_half_step_triton with its counters at offset_base + offset, offset_base (1,) int64
    read by the kernel at run time (the launch a CUDA graph captures and replays)."""
    return rbm_half_step_fwd(s, w, bias, key_of(seed), offset, transpose, return_probs, offset_base)


@rbm_half_step_at_triton.register_fake
def _rbm_half_step_at_triton_fake(s, w, bias, seed, offset_base, offset, transpose, return_probs):
    return _rbm_half_step_triton_fake(s, w, bias, seed, offset, transpose, return_probs)


# ------------------------------------------------------------------ binary states
# One row and BINARY_BLOCK_N output units per program; BINARY_BLOCK_K inputs per step.
BINARY_CONFIG = {torch.float32: {"BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2},
                 torch.float64: {"BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}}


@triton.jit
def _rbm_half_step_binary_kernel(
    S,                 # *u8|fp (B, N_IN) 0/1 states (nonzero = 1), row stride stride_sb, unit stride 1
    W_ROWS,            # *fp (N_IN, N_OUT) contiguous: the rows the sums gather (W, or a copy of W^T)
    BIAS,              # *fp (N_OUT,)
    SAMPLES,           # *u8 (B, N_OUT) contiguous: the Bernoulli samples
    PROBS,             # *fp (B, N_OUT) contiguous: the probabilities (RETURN_PROBS only)
    seed,              # Philox key, [0, 2^64)
    offset,            # Philox counter of row 0 (rbm_half_step's layout)
    N_IN, N_OUT,
    stride_sb,
    RETURN_PROBS: tl.constexpr,
    ACC: tl.constexpr,         # tl.float32, or tl.float64 for fp64 weights
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # program (b, pn) owns row b and output units [pn * BLOCK_N, ...): it walks the row's
    # states BLOCK_K at a time and loads only the weight rows of active inputs (the mask
    # keeps inactive rows' bytes off the memory bus), summing them into acc
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N_OUT
    acc = tl.zeros((BLOCK_N,), dtype=ACC)
    for k0 in range(0, N_IN, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        active = tl.load(S + row * stride_sb + ks, mask=ks < N_IN, other=0) != 0
        w = tl.load(W_ROWS + ks[:, None].to(tl.int64) * N_OUT + cols[None, :],
                    mask=active[:, None] & col_ok[None, :], other=0).to(ACC)
        acc += tl.sum(w, axis=0)
    bias = tl.load(BIAS + cols, mask=col_ok, other=0).to(ACC)
    p = tl.sigmoid(acc + bias)
    u0, u1, u2, u3 = tl.rand4x(seed, offset + row * ((N_OUT + 3) // 4) + cols // 4)
    word = cols % 4
    u = tl.where(word == 0, u0, tl.where(word == 1, u1, tl.where(word == 2, u2, u3)))
    tl.store(SAMPLES + row * N_OUT + cols, (u < p).to(tl.uint8), mask=col_ok)
    if RETURN_PROBS:
        tl.store(PROBS + row * N_OUT + cols, p, mask=col_ok)


def rbm_half_step_binary_fwd(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
                             transpose: bool, return_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """s (B, n_in) 0/1 uint8|float, w (n_visible, n_hidden), bias (n_out,) -> samples (B, n_out)
    uint8, probs (B, n_out) (or (0, n_out)); see reference.rbm_half_step_binary."""
    dt = acc_dtype(w.dtype)
    # the rows the sums gather, contiguous: W, or one transposed copy for hidden -> visible
    w_rows = w.to(dt).T.contiguous() if transpose else w.to(dt).contiguous()
    bias = bias.to(dt).contiguous()
    s = s.contiguous()
    n_in, n_out = w_rows.shape
    rows = s.shape[0]
    samples = torch.empty((rows, n_out), dtype=torch.uint8, device=s.device)
    probs = torch.empty((rows if return_probs else 0, n_out), dtype=dt, device=s.device)
    if rows == 0 or n_out == 0:
        return samples, probs
    cfg = BINARY_CONFIG[dt]
    grid = (rows, triton.cdiv(n_out, cfg["BLOCK_N"]))
    _rbm_half_step_binary_kernel[grid](
        s, w_rows, bias, samples, probs if return_probs else samples, key_of(seed), offset,
        n_in, n_out, max(s.stride(0), 1),
        RETURN_PROBS=return_probs, ACC=tl.float64 if dt == torch.float64 else tl.float32,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return samples, probs


@torch.library.custom_op("genkernels::rbm_half_step_binary_triton", mutates_args=())
def rbm_half_step_binary_triton(s: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, seed: int, offset: int,
                                transpose: bool, return_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return rbm_half_step_binary_fwd(s, w, bias, seed, offset, transpose, return_probs)


@rbm_half_step_binary_triton.register_fake
def _rbm_half_step_binary_triton_fake(s, w, bias, seed, offset, transpose, return_probs):
    return _rbm_half_step_triton_fake(s, w, bias, seed, offset, transpose, return_probs)


rbm_half_step_triton.register_autograd(half_step_backward, setup_context=half_step_setup_context)
rbm_half_step_binary_triton.register_autograd(half_step_binary_backward, setup_context=half_step_setup_context)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def half_step(states, dtype, transpose, return_probs, precision="ieee", offset_ptr=False):
        cfg = CONFIG[torch.float64 if dtype == "fp64" else torch.float32]
        sig = {"S": ptr(states), "W": ptr(dtype), "BIAS": ptr(dtype), "SAMPLES": "*u8",
               "PROBS": ptr(dtype), "seed": "i64", "offset": "i64", "B": "i32", "N_IN": "i32",
               "N_OUT": "i32", "stride_sb": "i32"}
        if offset_ptr:  # the counter base read from device memory (RBM.fit(cuda_graph=True))
            sig["OFFSET_PTR"] = "*i64"
        # contiguous weights: the unit stride of the direction is specialised to a constexpr 1
        if transpose:
            sig["stride_wn"] = "i32"
            strides = {"stride_wk": 1}
        else:
            sig["stride_wk"] = "i32"
            strides = {"stride_wn": 1}
        meta = {"RETURN_PROBS": return_probs, "ACC": tl.float64 if dtype == "fp64" else tl.float32,
                "BLOCK_B": cfg["BLOCK_B"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"],
                "PRECISION": precision, "USE_OFFSET_PTR": offset_ptr, **strides,
                **({} if offset_ptr else {"OFFSET_PTR": None})}
        tag = f"{states} states,{dtype},{'hidden->visible' if transpose else 'visible->hidden'}" + \
            (",probs" if return_probs else "") + (f",{precision}" if precision != "ieee" else "") + \
            (",offset_ptr" if offset_ptr else "")
        return TritonKernel("boltzmann", f"_rbm_half_step_kernel[{tag}]", lambda: _rbm_half_step_kernel,
                            sig, meta, cfg["num_warps"], cfg["num_stages"])

    def half_step_binary(states, dtype, return_probs):
        cfg = BINARY_CONFIG[torch.float64 if dtype == "fp64" else torch.float32]
        sig = {"S": ptr(states), "W_ROWS": ptr(dtype), "BIAS": ptr(dtype), "SAMPLES": "*u8",
               "PROBS": ptr(dtype), "seed": "i64", "offset": "i64", "N_IN": "i32", "N_OUT": "i32",
               "stride_sb": "i32"}
        meta = {"RETURN_PROBS": return_probs, "ACC": tl.float64 if dtype == "fp64" else tl.float32,
                "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"]}
        tag = f"{states} states,{dtype}" + (",probs" if return_probs else "")
        return TritonKernel("boltzmann", f"_rbm_half_step_binary_kernel[{tag}]",
                            lambda: _rbm_half_step_binary_kernel, sig, meta, cfg["num_warps"],
                            cfg["num_stages"])

    return [half_step("fp32", "fp32", False, True), half_step("u8", "fp32", False, True),
            half_step("u8", "fp32", True, False), half_step("fp32", "fp32", False, False),
            half_step("fp64", "fp64", False, True), half_step("u8", "fp32", False, True, "tf32"),
            half_step("u8", "fp32", True, False, "tf32"),
            half_step("fp32", "fp32", False, True, offset_ptr=True),
            half_step("u8", "fp32", True, False, offset_ptr=True),
            half_step_binary("u8", "fp32", True), half_step_binary("u8", "fp32", False),
            half_step_binary("fp32", "fp32", True), half_step_binary("u8", "fp64", True)]
