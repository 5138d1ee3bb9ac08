"""Triton kernels of the fused masked MLP and their ops ``genkernels::masked_mlp_triton`` and
``genkernels::masked_mlp_backward_triton``.

Three layers (STYLE.md): ``_masked_mlp_fwd_kernel`` -> ``masked_mlp_fwd()`` (allocation, grid,
fixed meta-parameters) -> ``torch.ops.genkernels.masked_mlp_triton``, and
``_masked_mlp_signal_kernel`` (+ masked_linear's grad_weight kernel per layer) ->
``masked_mlp_bwd()`` -> ``torch.ops.genkernels.masked_mlp_backward_triton``
(``torch.library.custom_op``s with fake kernels; the forward op's autograd calls the backward
op). The oracle is mlp_reference.masked_mlp:

    h_0 = x,  h_l = relu(h_{l-1} (W_l * M_l)^T + b_l)  (l < L),
    out = h_{L-1} (W_L * M_L)^T + b_L  [+ x (S * M_S)^T],   M[j, i] = 1 iff i < prefix[j].

* ``_masked_mlp_fwd_kernel``: a program owns BLOCK_M rows and takes them through every layer
  in one launch: per layer, BLOCK_N output units at a time, the product over the input
  columns [0, max prefix of the block) BLOCK_K at a time through ``tl.dot`` (weights the mask
  removes are never read, as in linear_triton), then the bias and the ReLU; the layer's
  activations are stored (the hidden ones are outputs: the backward needs them) and read
  back by the next layer after a barrier of the program's threads (they stay in L1/L2). The
  skip connection is added into the last layer's tiles. No ReLU pass, bias pass or launch
  per layer.
* ``_masked_mlp_signal_kernel``: the backward's gradients of the layers' inputs, top down, in
  one launch: a program owns BLOCK_M rows; per layer, grad @ (W * M) by BLOCK_N input columns
  at a time over the output units BLOCK_K at a time (a block of units none of which sees the
  columns is skipped: with MADE's units sorted by degree, about half), gated by the ReLU of
  the layer below (h > 0) in the tile's epilogue, stored as the next layer's gradient; the
  last step is grad_x (with the skip connection's grad @ (S * M_S)), run only when asked for.
* The weight gradients (g_l^T h_{l-1}, exact zeros where the mask is 0) and bias gradients
  are per layer masked_linear's kernel (``linear_triton.masked_linear_bwd``): fixed batch
  splits summed in split order, no atomics -- the same bits on every run.

Layers: at most MAX_LAYERS (the kernels take one pointer per layer; the layer count and
where the skip connection lands are compile-time constants, so the unrolled layers cost
nothing when absent). Widths are run-time arguments: one binary serves every width.

Numerics: fp32 accumulation (fp64 for fp64 inputs); fp32/fp64 tiles through
``tl.dot(input_precision="ieee")``, fp16/bf16 on the tensor cores (upcast under the
interpreter, conv_triton._mma); the hidden activations and the layers' gradients are stored
in x's dtype between layers, as a chain of layers would. The ReLU keeps NaN (torch.relu's).
Meta-parameters fixed per dtype (``_mlp_config``), checked in the static report.

Indexing: row offsets are int64 (B x width may pass 2^31); column offsets int32.

Memory: the output and the hidden activations (forward); grad_x, one gradient per hidden
layer (B x D_l, scratch) and masked_linear's partial sums (backward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import acc_dtype
from ..triton_common import TL_ACC, device_of, next_pow2
from .conv_triton import _mma, _products, _upcast
from .linear_triton import _prefix, masked_linear_bwd

# layers one launch takes (the kernels take a pointer argument per layer); masked_mlp's
# automatic backend runs deeper networks on the reference
MAX_LAYERS = 6
# the forward and signal kernels aim at this many programs (rows blocks) before they use
# the largest row block
TARGET_PROGRAMS = 128


# --------------------------------------------------------------------------- forward
@triton.jit
def _fwd_layer(SRC, DST, W, BIAS, PREFIX, K, N, rows, row_mask, X, D0, SKIP_W, SKIP_P,
               RELU: tl.constexpr, SKIP: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """DST (B, N) rows = relu?(SRC (B, K) rows @ (W * M)^T + bias [+ X @ (S * M_S)^T]);
    SRC, DST, X contiguous, W (N, K) and SKIP_W (N, D0) contiguous; rows int64."""
    lanes_n = tl.arange(0, BLOCK_N)
    lanes_k = tl.arange(0, BLOCK_K)
    for n0 in range(0, N, BLOCK_N):
        j = n0 + lanes_n
        j_mask = j < N
        hi = _prefix(PREFIX, j, N, K)
        w_rows = W + j.to(tl.int64) * K
        acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        for k0 in range(0, tl.max(hi, 0), BLOCK_K):   # the columns some unit of the block sees
            i = k0 + lanes_k
            a = tl.load(SRC + rows[:, None] * K + i[None, :], mask=row_mask[:, None] & (i < K)[None, :], other=0.0)
            w = tl.load(w_rows[None, :] + i[:, None], mask=i[:, None] < hi[None, :], other=0.0)
            acc = _mma(a, w, acc, UPCAST)
        if SKIP:
            hs = _prefix(SKIP_P, j, N, D0)
            s_rows = SKIP_W + j.to(tl.int64) * D0
            for k0 in range(0, tl.max(hs, 0), BLOCK_K):
                i = k0 + lanes_k
                a = tl.load(X + rows[:, None] * D0 + i[None, :], mask=row_mask[:, None] & (i < D0)[None, :],
                            other=0.0)
                w = tl.load(s_rows[None, :] + i[:, None], mask=i[:, None] < hs[None, :], other=0.0)
                acc = _mma(a, w, acc, UPCAST)
        acc += tl.load(BIAS + j, mask=j_mask, other=0.0).to(ACC)[None, :]
        if RELU:
            acc = tl.where(acc < 0, 0.0, acc)   # NaN stays NaN, as torch.relu
        tl.store(DST + rows[:, None] * N + j[None, :], acc, mask=row_mask[:, None] & j_mask[None, :])


@triton.jit
def _masked_mlp_fwd_kernel(
    X,                                   # *x (B, D0) contiguous
    DST0, DST1, DST2, DST3, DST4, DST5,  # layer l's output (B, D_{l+1}) contiguous: hidden, the last the output
    W0, W1, W2, W3, W4, W5,              # layer l's weight (D_{l+1}, D_l) contiguous
    B0, B1, B2, B3, B4, B5,              # layer l's bias (D_{l+1},)
    P0, P1, P2, P3, P4, P5,              # layer l's prefixes (D_{l+1},) int64
    SKIP_W, SKIP_P,                      # skip weight (D_L, D0) contiguous and prefixes (read when SKIP_LAYER >= 0)
    B, D0, D1, D2, D3, D4, D5, D6,       # rows, widths (past D_L unused)
    LAYERS: tl.constexpr,                # L, 1..MAX_LAYERS
    SKIP_LAYER: tl.constexpr,            # L - 1 with a skip connection, else -1
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,               # rows per program
    BLOCK_N: tl.constexpr,               # output units a tile
    BLOCK_K: tl.constexpr,               # input columns a step
    ACC: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < B
    rows = rows.to(tl.int64)
    _fwd_layer(X, DST0, W0, B0, P0, D0, D1, rows, row_mask, X, D0, SKIP_W, SKIP_P, LAYERS > 1, SKIP_LAYER == 0,
               UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if LAYERS > 1:   # each layer reads what every thread of the program stored for the one below
        tl.debug_barrier()
        _fwd_layer(DST0, DST1, W1, B1, P1, D1, D2, rows, row_mask, X, D0, SKIP_W, SKIP_P, LAYERS > 2,
                   SKIP_LAYER == 1, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if LAYERS > 2:
        tl.debug_barrier()
        _fwd_layer(DST1, DST2, W2, B2, P2, D2, D3, rows, row_mask, X, D0, SKIP_W, SKIP_P, LAYERS > 3,
                   SKIP_LAYER == 2, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if LAYERS > 3:
        tl.debug_barrier()
        _fwd_layer(DST2, DST3, W3, B3, P3, D3, D4, rows, row_mask, X, D0, SKIP_W, SKIP_P, LAYERS > 4,
                   SKIP_LAYER == 3, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if LAYERS > 4:
        tl.debug_barrier()
        _fwd_layer(DST3, DST4, W4, B4, P4, D4, D5, rows, row_mask, X, D0, SKIP_W, SKIP_P, LAYERS > 5,
                   SKIP_LAYER == 4, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if LAYERS > 5:
        tl.debug_barrier()
        _fwd_layer(DST4, DST5, W5, B5, P5, D5, D6, rows, row_mask, X, D0, SKIP_W, SKIP_P, False,
                   SKIP_LAYER == 5, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)


# -------------------------------------------------------------------------- backward
@triton.jit
def _signal_step(G, DST, W, PREFIX, GATE, N, K, rows, row_mask, GRAD, DL, SKIP_W, SKIP_P,
                 GATED: tl.constexpr, SKIP: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """DST (B, K) rows = G (B, N) rows @ (W * M) [+ GRAD (B, DL) @ (S * M_S)] [* (GATE > 0)]:
    the gradient of a layer's input from its output's; W (N, K), SKIP_W (DL, K) contiguous."""
    lanes_n = tl.arange(0, BLOCK_N)
    lanes_k = tl.arange(0, BLOCK_K)
    for c0 in range(0, K, BLOCK_N):
        i = c0 + lanes_n
        i_mask = i < K
        acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        for n0 in range(0, N, BLOCK_K):
            j = n0 + lanes_k
            p = _prefix(PREFIX, j, N, K)
            if tl.max(p, 0) > c0:   # some unit of the block sees the tile's first column
                g = tl.load(G + rows[:, None] * N + j[None, :], mask=row_mask[:, None] & (j < N)[None, :], other=0.0)
                w = tl.load(W + j.to(tl.int64)[:, None] * K + i[None, :], mask=i[None, :] < p[:, None], other=0.0)
                acc = _mma(g, w, acc, UPCAST)
        if SKIP:
            for n0 in range(0, DL, BLOCK_K):
                j = n0 + lanes_k
                p = _prefix(SKIP_P, j, DL, K)
                if tl.max(p, 0) > c0:
                    g = tl.load(GRAD + rows[:, None] * DL + j[None, :], mask=row_mask[:, None] & (j < DL)[None, :],
                                other=0.0)
                    w = tl.load(SKIP_W + j.to(tl.int64)[:, None] * K + i[None, :], mask=i[None, :] < p[:, None],
                                other=0.0)
                    acc = _mma(g, w, acc, UPCAST)
        tile = rows[:, None] * K + i[None, :]
        live = row_mask[:, None] & i_mask[None, :]
        if GATED:   # the ReLU below: gradient where its output was positive
            h = tl.load(GATE + tile, mask=live, other=0.0)
            acc = tl.where(h > 0, acc, 0.0)
        tl.store(DST + tile, acc, mask=live)


@triton.jit
def _masked_mlp_signal_kernel(
    GRAD,                                # *grad of the output (B, D_L) contiguous
    DST0, DST1, DST2, DST3, DST4, DST5,  # step t's result: the gradient of layer L-1-t's input (B, E_{t+1})
    W0, W1, W2, W3, W4, W5,              # step t's weight: layer L-1-t's (E_t, E_{t+1}) contiguous
    P0, P1, P2, P3, P4, P5,              # its prefixes (E_t,) int64
    H0, H1, H2, H3, H4, H5,              # step t's gate: the hidden activations of its input (B, E_{t+1})
    SKIP_W, SKIP_P,                      # skip weight (D_L, D0) contiguous and prefixes
    B, E0, E1, E2, E3, E4, E5, E6,       # rows, widths top down: E_t = D_{L-t}
    STEPS: tl.constexpr,                 # L (grad_x asked for) or L - 1
    GATES: tl.constexpr,                 # L - 1: steps t < GATES are gated
    SKIP_STEP: tl.constexpr,             # L - 1 when grad_x takes the skip connection, else -1
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,               # input columns a tile
    BLOCK_K: tl.constexpr,               # output units a step
    ACC: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < B
    rows = rows.to(tl.int64)
    if STEPS > 0:
        _signal_step(GRAD, DST0, W0, P0, H0, E0, E1, rows, row_mask, GRAD, E0, SKIP_W, SKIP_P, GATES > 0,
                     SKIP_STEP == 0, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if STEPS > 1:
        tl.debug_barrier()
        _signal_step(DST0, DST1, W1, P1, H1, E1, E2, rows, row_mask, GRAD, E0, SKIP_W, SKIP_P, GATES > 1,
                     SKIP_STEP == 1, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if STEPS > 2:
        tl.debug_barrier()
        _signal_step(DST1, DST2, W2, P2, H2, E2, E3, rows, row_mask, GRAD, E0, SKIP_W, SKIP_P, GATES > 2,
                     SKIP_STEP == 2, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if STEPS > 3:
        tl.debug_barrier()
        _signal_step(DST2, DST3, W3, P3, H3, E3, E4, rows, row_mask, GRAD, E0, SKIP_W, SKIP_P, GATES > 3,
                     SKIP_STEP == 3, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if STEPS > 4:
        tl.debug_barrier()
        _signal_step(DST3, DST4, W4, P4, H4, E4, E5, rows, row_mask, GRAD, E0, SKIP_W, SKIP_P, GATES > 4,
                     SKIP_STEP == 4, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)
    if STEPS > 5:
        tl.debug_barrier()
        _signal_step(DST4, DST5, W5, P5, H5, E5, E6, rows, row_mask, GRAD, E0, SKIP_W, SKIP_P, GATES > 5,
                     SKIP_STEP == 5, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, ACC)


# ------------------------------------------------------------------------- launchers
def _mlp_config(batch: int, dtype: torch.dtype) -> dict:
    """Fixed meta-parameters of both kernels (also compiled by genkernels/_static.py): BLOCK_M
    rows a program (16 or 32: small enough for about TARGET_PROGRAMS programs), 32 units a
    tile, the dtype's reduction step (conv_triton._products). A program's tile runs through
    several inlined layers: 64 x 32 and 32 x 64 tiles took 230-255 registers (fp32 and bf16,
    sm_80 / sm_90) and 64 x 64 spilled; 32 x 32 takes 96-168, no spills (static report)."""
    products = _products(dtype)
    return {"BLOCK_M": min(32, max(16, next_pow2(triton.cdiv(max(batch, 1), TARGET_PROGRAMS)))), "BLOCK_N": 32,
            "BLOCK_K": products["step"], "num_warps": 4, "num_stages": products["num_stages"]}


def _padded(items: list, filler) -> list:
    return list(items) + [filler] * (MAX_LAYERS - len(items))


def _check_layers(weights) -> None:
    if not 1 <= len(weights) <= MAX_LAYERS:
        raise ValueError(f"masked_mlp's triton kernels take 1 to {MAX_LAYERS} layers; got {len(weights)}")


def masked_mlp_fwd(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                   prefixes: list[torch.Tensor], skip_weight: torch.Tensor | None,
                   skip_prefix: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x (B, D0) -> (out (B, D_L), hidden [(B, D_l)] after the ReLU) in x's dtype; see
    mlp_reference.masked_mlp."""
    _check_layers(weights)
    batch = x.shape[0]
    widths = [x.shape[1]] + [w.shape[0] for w in weights]
    outs = [torch.empty((batch, d), dtype=x.dtype, device=x.device) for d in widths[1:]]
    if batch == 0:
        return outs[-1], outs[:-1]
    x = x.contiguous()
    weights = [w.contiguous() for w in weights]
    has_skip = skip_weight is not None
    cfg = _mlp_config(batch, x.dtype)
    layers = len(weights)
    with device_of(x):
        _masked_mlp_fwd_kernel[(triton.cdiv(batch, cfg["BLOCK_M"]),)](
            x, *_padded(outs, x), *_padded(weights, x), *_padded([b.contiguous() for b in biases], x),
            *_padded([p.contiguous() for p in prefixes], prefixes[0]),
            skip_weight.contiguous() if has_skip else x, skip_prefix.contiguous() if has_skip else prefixes[0],
            batch, *(widths + [0] * (MAX_LAYERS + 1 - len(widths))),
            LAYERS=layers, SKIP_LAYER=layers - 1 if has_skip else -1, UPCAST=_upcast(x),
            ACC=TL_ACC[acc_dtype(x.dtype)], **cfg)
    return outs[-1], outs[:-1]


def masked_mlp_bwd(grad: torch.Tensor, x: torch.Tensor, hidden: list[torch.Tensor], weights: list[torch.Tensor],
                   prefixes: list[torch.Tensor], skip_weight: torch.Tensor | None, skip_prefix: torch.Tensor | None,
                   need_x: bool) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The VJP of masked_mlp_fwd: grad (B, D_L) -> (grad_x (B, D0) in x's dtype or an empty (0,)
    tensor, grad_weights, grad_biases, grad_skip (an empty (0,) tensor without a skip
    connection)) in the weights' dtype; masked entries of the weight gradients are exact zeros."""
    _check_layers(weights)
    batch = x.shape[0]
    layers = len(weights)
    has_skip = skip_weight is not None
    x, grad = x.contiguous(), grad.to(x.dtype).contiguous()
    weights = [w.contiguous() for w in weights]
    hidden = [h.contiguous() for h in hidden]
    prefixes = [p.contiguous() for p in prefixes]
    # the gradients of the hidden layers' outputs (top down), then grad_x
    signals = [torch.empty_like(h) for h in reversed(hidden)]
    grad_x = torch.empty_like(x) if need_x else x.new_empty((0,))
    steps = layers if need_x else layers - 1
    if batch > 0 and steps > 0:
        widths = [x.shape[1]] + [w.shape[0] for w in weights]
        cfg = _mlp_config(batch, x.dtype)
        dst = signals + ([grad_x] if need_x else [])
        with device_of(x):
            _masked_mlp_signal_kernel[(triton.cdiv(batch, cfg["BLOCK_M"]),)](
                grad, *_padded(dst, x), *_padded(weights[::-1], x), *_padded(prefixes[::-1], prefixes[0]),
                *_padded(hidden[::-1], x),
                skip_weight.contiguous() if has_skip else x, skip_prefix.contiguous() if has_skip else prefixes[0],
                batch, *(widths[::-1] + [0] * (MAX_LAYERS + 1 - len(widths))),
                STEPS=steps, GATES=layers - 1, SKIP_STEP=layers - 1 if has_skip and need_x else -1,
                UPCAST=_upcast(x), ACC=TL_ACC[acc_dtype(x.dtype)], **cfg)
    # layer l's output gradient and input: grad and h_{L-2} at the top, ..., signals[-1] and x
    outputs_grad = [grad] + signals
    inputs = hidden[::-1] + [x]
    grad_w, grad_b = [], []
    for t in range(layers):
        layer = layers - 1 - t
        _, gw, gb = masked_linear_bwd(outputs_grad[t], inputs[t], weights[layer], prefixes[layer], [False, True, True])
        grad_w.append(gw)
        grad_b.append(gb)
    grad_s = x.new_empty((0,))
    if has_skip:
        _, grad_s, _ = masked_linear_bwd(grad, x, skip_weight, skip_prefix.contiguous(), [False, True, False])
    return grad_x, grad_w[::-1], grad_b[::-1], grad_s


# ------------------------------------------------------------------------------- ops
@torch.library.custom_op("genkernels::masked_mlp_triton", mutates_args=())
def masked_mlp_triton(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                      prefixes: list[torch.Tensor], skip_weight: torch.Tensor | None,
                      skip_prefix: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return masked_mlp_fwd(x, weights, biases, prefixes, skip_weight, skip_prefix)


@masked_mlp_triton.register_fake
def _masked_mlp_triton_fake(x, weights, biases, prefixes, skip_weight, skip_prefix):
    return (x.new_empty((x.shape[0], weights[-1].shape[0])),
            [x.new_empty((x.shape[0], w.shape[0])) for w in weights[:-1]])


@torch.library.custom_op("genkernels::masked_mlp_backward_triton", mutates_args=())
def masked_mlp_backward_triton(grad: torch.Tensor, x: torch.Tensor, hidden: list[torch.Tensor],
                               weights: list[torch.Tensor], prefixes: list[torch.Tensor],
                               skip_weight: torch.Tensor | None, skip_prefix: torch.Tensor | None,
                               need_x: bool
                               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    return masked_mlp_bwd(grad, x, hidden, weights, prefixes, skip_weight, skip_prefix, need_x)


@masked_mlp_backward_triton.register_fake
def _masked_mlp_backward_triton_fake(grad, x, hidden, weights, prefixes, skip_weight, skip_prefix, need_x):
    return (torch.empty_like(x) if need_x else x.new_empty((0,)), [torch.empty_like(w) for w in weights],
            [w.new_empty((w.shape[0],)) for w in weights],
            torch.empty_like(skip_weight) if skip_weight is not None else x.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    x, weights, biases, prefixes, skip_weight, skip_prefix = inputs
    _, hidden = output
    ctx.layers = len(weights)
    ctx.skip = skip_weight is not None
    ctx.save_for_backward(x, *hidden, *weights, *prefixes, *((skip_weight, skip_prefix) if ctx.skip else ()))
    ctx.bias_dtypes = [b.dtype for b in biases]


def _masked_mlp_triton_backward(ctx, grad, _grad_hidden):
    """Autograd of masked_mlp_triton: the backward op; the hidden outputs are saved for the
    backward, not results (their gradients are ignored), and the prefixes get none."""
    n = ctx.layers
    saved = ctx.saved_tensors
    x, hidden, weights, prefixes = saved[0], list(saved[1:n]), list(saved[n:2 * n]), list(saved[2 * n:3 * n])
    skip_weight, skip_prefix = (saved[3 * n], saved[3 * n + 1]) if ctx.skip else (None, None)
    if grad is None:
        return None, [None] * n, [None] * n, [None] * n, None, None
    grad_x, grad_w, grad_b, grad_s = torch.ops.genkernels.masked_mlp_backward_triton(
        grad, x, hidden, weights, prefixes, skip_weight, skip_prefix, bool(ctx.needs_input_grad[0]))
    return (grad_x if ctx.needs_input_grad[0] else None, grad_w, [g.to(d) for g, d in zip(grad_b, ctx.bias_dtypes)],
            [None] * n, grad_s if ctx.skip else None, None)


masked_mlp_triton.register_autograd(_masked_mlp_triton_backward, setup_context=_setup_context)


# ------------------------------------------------------------------ static GPU report
def static_kernels() -> list:
    """The kernel specialisations the static GPU report compiles (python -m genkernels._static)."""
    from .._static import TritonKernel, ptr

    def entry(kernel, dtype: str, batch: int, layers: int, label: str) -> TritonKernel:
        torch_dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}[dtype]
        cfg = _mlp_config(batch, torch_dtype)
        per_layer = [f"{name}{i}" for name in ("DST", "W", "B", "P") for i in range(MAX_LAYERS)]
        if kernel is _masked_mlp_signal_kernel:
            per_layer = [f"{name}{i}" for name in ("DST", "W", "P", "H") for i in range(MAX_LAYERS)]
        first = "X" if kernel is _masked_mlp_fwd_kernel else "GRAD"
        sig = {first: ptr(dtype)} | {name: ptr("i64" if name.startswith("P") else dtype) for name in per_layer}
        sig |= {"SKIP_W": ptr(dtype), "SKIP_P": ptr("i64"), "B": "i32"}
        sig |= {f"{'D' if kernel is _masked_mlp_fwd_kernel else 'E'}{i}": "i32" for i in range(MAX_LAYERS + 1)}
        meta = {"UPCAST": dtype in ("fp32", "fp64"), "ACC": TL_ACC[acc_dtype(torch_dtype)]}
        if kernel is _masked_mlp_fwd_kernel:
            meta |= {"LAYERS": layers, "SKIP_LAYER": layers - 1}
        else:
            meta |= {"STEPS": layers, "GATES": layers - 1, "SKIP_STEP": layers - 1}
        meta |= {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
        name = f"{kernel.__name__}[{dtype},B={batch},L={layers},{label}]"
        return TritonKernel("autoregressive", name, lambda: kernel, sig, meta, cfg["num_warps"], cfg["num_stages"])

    # MADE's network (3 layers: two hidden, with the skip connection) trained in batches of
    # 1024 (BLOCK_M 16) and 8192 (32), fp64 (gradcheck), bf16; the deepest network a launch takes
    shapes = [("fp32", 1024, 3, "train"), ("fp32", 8192, 3, "train"), ("fp32", 8192, MAX_LAYERS, "deepest"),
              ("fp64", 32, 3, "gradcheck"), ("bf16", 8192, 3, "train")]
    return [entry(kernel, *shape) for kernel in (_masked_mlp_fwd_kernel, _masked_mlp_signal_kernel)
            for shape in shapes]
