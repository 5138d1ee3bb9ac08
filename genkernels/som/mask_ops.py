"""Public ops of the SOM-masked layers: validation, declaration, dispatch.

Re-exported flat in ``genkernels.ops``. ``som_mask_linear`` and ``som_mask_conv2d`` compute
only the outputs a SOM's mask keeps (spec, shapes and gradients: mask_reference's
docstring) on ``reference`` (genkernels/som/mask_reference.py: the dense definition,
differentiated by autograd -- saves nothing, it is the oracle), ``cpu``
(csrc/cpu/som_mask.cpp: gathered weight rows per row / image / group of positions, forward
and backward, the autograd in C++) and ``triton`` (genkernels/som/mask_triton.py: a
gathered-filter kernel over rows of patches, its backward kernels and autograd).
"""

from __future__ import annotations

import torch

from .. import registry
from .._checks import acc_dtype, check_float_tensor, check_index_tensor, check_same_device, check_same_dtype, compiling
from . import mask_reference


# ------------------------------------------------------------------ declared ops
def _linear_reference(x, weight, bias, winners, kept, values, relu):
    return mask_reference.som_mask_linear(x, weight, bias, winners, kept, values, relu)


def _conv_reference(x, weight, bias, winners, kept, values, stride, padding, dilation, relu):
    return mask_reference.som_mask_conv2d(x, weight, bias, winners, kept, values, stride, padding, dilation, relu)


def _in_acc(x, weight, bias, values):
    """The inputs in the accumulation dtype (half and bfloat16 run in fp32)."""
    dt = acc_dtype(x.dtype)
    if x.dtype == dt and values.dtype == dt:
        return x, weight, bias, values
    return x.to(dt), weight.to(dt), None if bias is None else bias.to(dt), values.to(dt)


def _linear_cpu(x, weight, bias, winners, kept, values, relu):
    x, weight, bias, values = _in_acc(x, weight, bias, values)
    return torch.ops.genkernels.som_mask_linear(x, weight, bias, winners, kept, values, relu)


def _conv_cpu(x, weight, bias, winners, kept, values, stride, padding, dilation, relu):
    x, weight, bias, values = _in_acc(x, weight, bias, values)
    return torch.ops.genkernels.som_mask_conv2d(x, weight, bias, winners, kept, values, stride, padding, dilation,
                                                relu)


def conv_output_size(size: tuple[int, int], kernel: tuple[int, int], stride, padding, dilation) -> tuple[int, int]:
    """(Ho, Wo) of a convolution of an (H, W) input."""
    return tuple((size[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(2))


def _linear_fake(x, weight, bias, winners, kept, values, relu):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _conv_fake(x, weight, bias, winners, kept, values, stride, padding, dilation, relu):
    ho, wo = conv_output_size(tuple(x.shape[2:]), tuple(weight.shape[2:]), stride, padding, dilation)
    return x.new_empty((x.shape[0], weight.shape[0], ho, wo))


def _grads_fake(x, weight, output_mask):
    shapes = (x.shape, weight.shape, (weight.shape[0],))
    return tuple(x.new_empty(shape if want else (0,)) for shape, want in zip(shapes, output_mask))


def _linear_backward_fake(grad, x, weight, winners, kept, values, out, relu, output_mask):
    return _grads_fake(x, weight, output_mask)


def _conv_backward_fake(grad, x, weight, winners, kept, values, out, stride, padding, dilation, relu, output_mask):
    return _grads_fake(x, weight, output_mask)


# som_mask_linear(x (B, D), weight (C, D), bias (C,) | None, winners (B,) int64, kept (K, S)
# int64, values (K, S), relu) -> out (B, C) in the accumulation dtype
LINEAR = registry.declare(
    "som_mask_linear",
    reference=_linear_reference,
    cpu=_linear_cpu,
    triton=registry.lazy(__package__ + ".mask_triton", "som_mask_linear_triton"),
    fake=_linear_fake)
# som_mask_conv2d(x (B, Cin, H, W), weight (C, Cin, kh, kw), bias, winners (B, 1 | Ho * Wo),
# kept, values, stride, padding, dilation, relu) -> out (B, C, Ho, Wo)
CONV = registry.declare(
    "som_mask_conv2d",
    reference=_conv_reference,
    cpu=_conv_cpu,
    triton=registry.lazy(__package__ + ".mask_triton", "som_mask_conv2d_triton"),
    fake=_conv_fake)
registry.register_schema_kernels("som_mask_linear_backward", fake=_linear_backward_fake)
registry.register_schema_kernels("som_mask_conv2d_backward", fake=_conv_backward_fake)
registry.static_kernels("som.mask", registry.lazy(__package__ + ".mask_triton", "static_kernels"))


# ------------------------------------------------------------------------ validation
def _pair(name: str, value, low: int) -> tuple[int, int]:
    items = (value, value) if isinstance(value, int) else value
    if not isinstance(items, (tuple, list)) or len(items) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints; got {value!r}")
    if any(v < low for v in items):
        raise ValueError(f"{name} must be >= {low}; got {value!r}")
    return int(items[0]), int(items[1])


def check_tables(kept, values, n_outputs: int, dtype: torch.dtype, device: torch.device, data: bool = True) -> None:
    """kept (K, S) int64: each row's outputs in [0, n_outputs) ascending, then -1 padding;
    values (K, S) finite and >= 0, in ``dtype`` on ``device``. The data checks run eagerly
    and with ``data`` (the cpu kernels make them in their own pass over the tables)."""
    check_index_tensor("kept", kept, 2)
    check_float_tensor("values", values, 2)
    if kept.shape[0] == 0:
        raise ValueError(f"kept must hold at least one row (one per SOM node); got shape {tuple(kept.shape)}")
    if tuple(values.shape) != tuple(kept.shape):
        raise ValueError(f"values must have kept's shape {tuple(kept.shape)}; got {tuple(values.shape)}")
    if values.dtype != dtype:
        raise TypeError(f"values has dtype {values.dtype} but x has {dtype}; they must match")
    if kept.device != device or values.device != device:
        raise ValueError(f"kept and values must be on x's device {device}; got {kept.device} and {values.device}")
    if not data or compiling() or kept.device.type == "meta" or kept.numel() == 0:
        return
    valid = kept >= 0
    if bool((kept < -1).any()) or bool((kept >= n_outputs).any()):
        raise ValueError(f"kept must hold output indices in [0, {n_outputs}) or -1 (padding); got values in "
                         f"[{int(kept.min())}, {int(kept.max())}]")
    if bool((valid[:, 1:] & ~valid[:, :-1]).any()) or bool((valid[:, 1:] & (kept[:, 1:] <= kept[:, :-1])).any()):
        raise ValueError("every row of kept must list its outputs in ascending order, then the -1 padding")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError("values must be finite and >= 0 (mask values)")


def _check_winners(winners, n_nodes: int) -> None:
    if compiling() or winners.device.type == "meta" or winners.numel() == 0:
        return
    lo, hi = int(winners.min()), int(winners.max())
    if lo < 0 or hi >= n_nodes:
        raise ValueError(f"winners must lie in [0, {n_nodes}) (rows of kept); got values in [{lo}, {hi}]")


def _check_layer_args(x, weight, bias, winners, kept, values, x_ndim: int, data: bool):
    check_float_tensor("x", x, x_ndim)
    check_float_tensor("weight", weight, x_ndim)
    tensors = {"x": x, "weight": weight, "winners": winners}
    if bias is not None:
        check_float_tensor("bias", bias, 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have one value per output ({weight.shape[0]}); got shape {tuple(bias.shape)}")
        tensors["bias"] = bias
    if not isinstance(winners, torch.Tensor):
        raise TypeError(f"winners must be a torch.Tensor; got {type(winners).__name__}")
    if winners.dtype != torch.int64:
        raise TypeError(f"winners must be an int64 tensor; got dtype {winners.dtype}")
    check_same_device(**tensors)
    check_same_dtype(x=x, weight=weight, **({"bias": bias} if bias is not None else {}))
    check_tables(kept, values, weight.shape[0], x.dtype, x.device, data)
    if data:
        _check_winners(winners, kept.shape[0])


# ------------------------------------------------------------------------ public ops
def som_mask_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, winners: torch.Tensor,
                    kept: torch.Tensor, values: torch.Tensor, relu: bool = True, *,
                    backend: str | None = None) -> torch.Tensor:
    """A linear layer computing only the outputs a SOM's mask keeps.

    Args:
        x: (B, D) float inputs. weight: (C, D), bias: (C,) or None, x's dtype and device.
        winners: (B,) int64, each row's winning SOM node, in [0, K).
        kept: (K, S) int64, node w's kept outputs (ascending, then -1 padding); values:
            (K, S) their mask values (finite, >= 0, x's dtype): mask_reference.mask_tables.
        relu: apply the ReLU (the layer's; mask and ReLU commute since values >= 0).
        backend: None (auto), "reference", "cpu" or "triton".
    Returns:
        (B, C) in x's dtype: act(m (x W_c^T + b_c)) on each row's kept outputs, 0 elsewhere;
        differentiable in x, weight and bias (the mask is a constant). Arithmetic in fp32
        (fp64 for fp64 input).
    """
    name = LINEAR.resolve(x.device, backend)
    _check_layer_args(x, weight, bias, winners, kept, values, 2, name != "cpu")  # cpu: data checks in C++
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} features but x has {x.shape[1]}; they must match")
    if winners.dim() != 1 or winners.shape[0] != x.shape[0]:
        raise ValueError(f"winners must be ({x.shape[0]},) (one per row of x); got shape {tuple(winners.shape)}")
    return mask_linear(x, weight, bias, winners, kept, values, bool(relu), name)


def mask_linear(x, weight, bias, winners, kept, values, relu: bool, backend: str | None) -> torch.Tensor:
    """som_mask_linear without the argument checks (the layers' own path)."""
    name = LINEAR.resolve(x.device, backend)
    out = LINEAR.kernels[name](x, weight, bias, winners, kept, values, relu)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def som_mask_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, winners: torch.Tensor,
                    kept: torch.Tensor, values: torch.Tensor, stride=1, padding=0, dilation=1, relu: bool = True,
                    *, backend: str | None = None) -> torch.Tensor:
    """A 2-D convolution computing only the output channels a SOM's mask keeps.

    Args:
        x: (B, Cin, H, W) float. weight: (C, Cin, kh, kw), bias: (C,) or None.
        winners: int64, (B,) or (B, 1) -- one winner per image, one mask over the channels --
            or (B, Ho, Wo) / (B, Ho * Wo) -- one winner per output position.
        kept, values: the mask tables, as in :func:`som_mask_linear`.
        stride, padding, dilation: ints or pairs (zero padding), as torch.nn.Conv2d.
        relu, backend: as in :func:`som_mask_linear`.
    Returns:
        (B, C, Ho, Wo) in x's dtype, differentiable in x, weight and bias.
    """
    name = CONV.resolve(x.device, backend)
    _check_layer_args(x, weight, bias, winners, kept, values, 4, name != "cpu")  # cpu: data checks in C++
    stride, padding, dilation = _pair("stride", stride, 1), _pair("padding", padding, 0), _pair("dilation", dilation, 1)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input channels but x has {x.shape[1]}; they must match")
    ho, wo = conv_output_size(tuple(x.shape[2:]), tuple(weight.shape[2:]), stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"the kernel {tuple(weight.shape[2:])} (dilation {dilation}) does not fit the input "
                         f"{tuple(x.shape[2:])} padded by {padding}")
    b = x.shape[0]
    if tuple(winners.shape) in ((b,), (b, 1)):
        winners = winners.reshape(b, 1)
    elif tuple(winners.shape) in ((b, ho, wo), (b, ho * wo)):
        winners = winners.reshape(b, ho * wo)
    else:
        raise ValueError(f"winners must be ({b},) or ({b}, 1) (one per image) or ({b}, {ho}, {wo}) / ({b}, {ho * wo}) "
                         f"(one per output position); got shape {tuple(winners.shape)}")
    return mask_conv2d(x, weight, bias, winners, kept, values, stride, padding, dilation, bool(relu), name)


def mask_conv2d(x, weight, bias, winners, kept, values, stride, padding, dilation, relu: bool,
                backend: str | None) -> torch.Tensor:
    """som_mask_conv2d without the argument checks; winners (B, 1) or (B, Ho * Wo), the
    geometry as lists of two ints."""
    name = CONV.resolve(x.device, backend)
    out = CONV.kernels[name](x, weight, bias, winners, kept, values, list(stride), list(padding), list(dilation),
                             relu)
    return out if out.dtype == x.dtype else out.to(x.dtype)
