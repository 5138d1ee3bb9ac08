"""Public op of the fused masked MLP (MADE's whole network): validation, declaration,
dispatch, autograd.

Re-exported flat in ``genkernels.ops`` (through ``autoregressive/ops.py``). ``masked_mlp``
runs on ``reference`` (genkernels/autoregressive/mlp_reference.py: masked_linear layers and
ReLUs, differentiated by autograd), ``cpu`` (csrc/cpu/masked_mlp.cpp: the batch through
every layer in cache-sized chunks, forward and backward; its autograd is registered in C++,
with a double backward through the definition's ATen ops) and ``triton``
(genkernels/autoregressive/mlp_triton.py: every layer in one launch each way, up to
mlp_triton.MAX_LAYERS layers; the automatic backend runs deeper networks on the reference;
no double backward). Models take the fused op where ``runs_fused`` says: on the CPU, where
it was measured against the layer-by-layer path; on a GPU MADE runs its layers through
``masked_linear``'s Triton kernels until a GPU run compares the two.
"""

from __future__ import annotations

import torch

from .. import registry
from .._checks import acc_dtype, check_float_tensor, check_same_device, check_same_dtype
from . import mlp_reference
from .linear_ops import check_prefix


def _reference(x, weights, biases, prefixes, skip_weight, skip_prefix):
    return mlp_reference.masked_mlp(x, list(weights), list(biases), list(prefixes), skip_weight, skip_prefix)


def _cpu(x, weights, biases, prefixes, skip_weight, skip_prefix):
    dt = acc_dtype(x.dtype)
    if x.dtype != dt:
        x = x.to(dt)
        weights, biases = [w.to(dt) for w in weights], [b.to(dt) for b in biases]
        skip_weight = None if skip_weight is None else skip_weight.to(dt)
    return torch.ops.genkernels.masked_mlp(x, weights, biases, prefixes, skip_weight, skip_prefix)


def _fake(x, weights, biases, prefixes, skip_weight, skip_prefix):
    return (x.new_empty((x.shape[0], weights[-1].shape[0])),
            [x.new_empty((x.shape[0], w.shape[0])) for w in weights[:-1]])


def _backward_fake(grad, x, hidden, weights, prefixes, skip_weight, skip_prefix, need_x):
    return (torch.empty_like(x) if need_x else x.new_empty((0,)), [torch.empty_like(w) for w in weights],
            [w.new_empty((w.shape[0],)) for w in weights],
            torch.empty_like(skip_weight) if skip_weight is not None else x.new_empty((0,)))


# masked_mlp(x (B, D0), weights [(D_l, D_l-1)], biases [(D_l,)], prefixes [(D_l,) int64], skip_weight (D_L, D0) |
# None, skip_prefix (D_L,) | None) -> (out (B, D_L), hidden [(B, D_l)] after the ReLU); the cpu kernel takes
# float32 / float64 (the Python side converts the others).
MLP = registry.declare(
    "masked_mlp",
    reference=_reference,
    cpu=_cpu,
    triton=registry.lazy(__package__ + ".mlp_triton", "masked_mlp_triton"),
    fake=_fake)   # its autograd is C++ (csrc/cpu/masked_mlp.cpp: MlpFunction, double backward included)
registry.register_schema_kernels("masked_mlp_backward", fake=_backward_fake)
registry.static_kernels("autoregressive.mlp", registry.lazy(__package__ + ".mlp_triton", "static_kernels"))


# The widest input or hidden layer for which the fused op beats the layer-by-layer path
# (bench/bench_made.py, 1 thread: 1.6-1.8x faster for MADE's 2 -> 64 -> 64 and 64 -> 128 ->
# 128 networks, 0.58x for 784 -> 512 -> 512, where masked_linear's finer block skipping and
# its copy-free weights win). The output layer's width does not count: a flow's MADE has
# many outputs per dimension (NSF: 3K - 1) and stays fused.
FUSE_MAX_WIDTH = 256


def runs_fused(h: torch.Tensor, weights) -> bool:
    """Whether a model's network of these weights on input h runs as the fused op: on the CPU
    with the compiled backend (nothing forcing another), h in the weights' float32/float64
    dtype, outside autocast (the layers handle that), and the fusion paying (input and hidden
    layers at most FUSE_MAX_WIDTH units)."""
    return (h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64)
            and all(w.dtype == h.dtype for w in weights) and not torch.is_autocast_enabled(h.device.type)
            and max(w.shape[1] for w in weights) <= FUSE_MAX_WIDTH and MLP.resolve(h.device) == "cpu")


def _checked_arguments(x, weights, biases, prefixes, skip_weight, skip_prefix):
    """masked_mlp's argument checks -> the prefixes (and the skip's) as int64 on x's device."""
    check_float_tensor("x", x, 2)
    if not weights:
        raise ValueError("weights must hold at least one layer; got none")
    if not len(biases) == len(prefixes) == len(weights):
        raise ValueError(f"one bias and one prefix per layer: got {len(weights)} weights, {len(biases)} biases and "
                         f"{len(prefixes)} prefixes")
    width = x.shape[1]
    tensors = {"x": x}
    for i, (w, b) in enumerate(zip(weights, biases)):
        check_float_tensor(f"weights[{i}]", w, 2)
        check_float_tensor(f"biases[{i}]", b, 1)
        if w.shape[1] != width:
            raise ValueError(f"weights[{i}] has {w.shape[1]} input features; the layer below gives {width}")
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"biases[{i}] must be ({w.shape[0]},); got shape {tuple(b.shape)}")
        tensors |= {f"weights[{i}]": w, f"biases[{i}]": b}
        width = w.shape[0]
    if (skip_weight is None) != (skip_prefix is None):
        raise ValueError("skip_weight and skip_prefix come together (both or neither)")
    if skip_weight is not None:
        check_float_tensor("skip_weight", skip_weight, 2)
        if skip_weight.shape != (width, x.shape[1]):
            raise ValueError(f"skip_weight must be ({width}, {x.shape[1]}); got shape {tuple(skip_weight.shape)}")
        tensors["skip_weight"] = skip_weight
    check_same_device(**tensors)
    check_same_dtype(**tensors)
    prefixes = [check_prefix(p, w.shape[0], w.shape[1], x.device) for p, w in zip(prefixes, weights)]
    if skip_weight is not None:
        skip_prefix = check_prefix(skip_prefix, width, x.shape[1], x.device)
    return prefixes, skip_prefix


def masked_mlp(x: torch.Tensor, weights, biases, prefixes, skip_weight: torch.Tensor | None = None,
               skip_prefix: torch.Tensor | None = None, *, backend: str | None = None,
               checked: bool = False) -> torch.Tensor:
    """MADE's network fused: masked linear layers with ReLU between, and an optional masked
    skip connection from the input to the output.

    Args:
        x: (B, D0) float.
        weights: L >= 1 tensors (D_l, D_{l-1}); biases: L tensors (D_l,); prefixes: L int
            tensors (D_l,) in [0, D_{l-1}] (``masked_linear``'s: output j of layer l sees its
            first prefix[j] inputs; a full prefix is a dense layer). Same dtype and device.
        skip_weight: (D_L, D0) or None, with skip_prefix (D_L,): added x (S * M_S)^T.
        backend: None (auto), "reference", "cpu" or "triton".
        checked: the arguments are the caller's own, already valid (MADE's and the coupling
            MLP's layers, their prefixes checked when set): no Python checks per call. The
            cpu kernel checks shapes, dtypes and the prefixes' range either way (ValueError /
            TypeError).
    Returns:
        (B, D_L) in x's dtype, differentiable in x, the weights, the biases and skip_weight
        (fp32 arithmetic for half and bfloat16 inputs).
    """
    weights, biases, prefixes = list(weights), list(biases), list(prefixes)
    if not checked:
        prefixes, skip_prefix = _checked_arguments(x, weights, biases, prefixes, skip_weight, skip_prefix)
    name = MLP.resolve(x.device, backend)
    if name == "triton" and backend is None:   # deeper than one launch takes: the reference
        from .mlp_triton import MAX_LAYERS
        name = name if len(weights) <= MAX_LAYERS else "reference"
    out, _ = MLP.kernels[name](x, weights, biases, prefixes, skip_weight, skip_prefix)
    return out if out.dtype == x.dtype else out.to(x.dtype)


__all__ = ["masked_mlp", "runs_fused"]
