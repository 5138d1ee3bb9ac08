"""Public op of the soft SOM layer: validation, declaration, dispatch.

Re-exported flat in ``genkernels.ops`` (through ``som/ops.py``). ``som_soft`` runs on
``reference`` (genkernels/som/soft_reference.py: the fused online-softmax algorithm in
PyTorch, differentiated by autograd), ``cpu`` (csrc/cpu/som_soft.cpp: fused forward and
backward kernels, the backward recomputing each node tile's weights; its autograd is in
C++ and it checks its inputs are finite in its own pass) and ``triton``
(genkernels/som/soft_triton.py: a fused forward kernel and fused backward kernels -- one
over blocks of rows for grad_x, one over blocks of nodes for the other gradients -- that
recompute each tile's weights from the saved row statistics; the op registers its own
backward op and autograd). Spec and gradients: soft_reference's docstring (its explicit VJP,
soft_som_backward, is the oracle of both compiled backwards).
"""

from __future__ import annotations

import torch

from .. import registry
from .._checks import (
    acc_dtype,
    all_finite,
    check_beta,
    check_choice,
    check_float_tensor,
    check_same_device,
    check_same_dtype,
    compiling,
)
from . import soft_reference
from .soft_reference import DISTANCES


def _soft_reference(x, nodes, values, beta, squared):
    return soft_reference.soft_som_forward(x, nodes, values, beta, "squared" if squared else "euclidean")


def _soft_cpu(x, nodes, values, beta, squared):
    # the kernel checks its inputs are finite (ValueError naming the input) in its pass
    dt = acc_dtype(x.dtype)
    if x.dtype != dt:
        x, nodes, values = x.to(dt), nodes.to(dt), values.to(dt)
    return torch.ops.genkernels.som_soft(x, nodes, values, beta, squared)


def _soft_fake(x, nodes, values, beta, squared):
    rows = x.shape[0]
    return x.new_empty((rows, values.shape[1])), x.new_empty((rows,)), x.new_empty((rows,))


def _soft_backward_fake(grad, x, nodes, values, beta, out, m, z, squared):
    return torch.empty_like(x), torch.empty_like(nodes), torch.empty_like(values), x.new_empty(())


# som_soft(x (B, D), nodes (K, D), values (K, C), beta 0-d in the accumulation dtype, squared)
# -> (out (B, C), m (B,), Z (B,)) in the accumulation dtype: the soft SOM's output and the
# row statistics of its softmax (the running max of the scores and the sum of their
# exponentials below it), which the backward recomputes the weights from.
SOFT = registry.declare(
    "som_soft",
    reference=_soft_reference,
    cpu=_soft_cpu,
    triton=registry.lazy(__package__ + ".soft_triton", "som_soft_triton"),
    fake=_soft_fake)
registry.register_schema_kernels("som_soft_backward", fake=_soft_backward_fake)
registry.static_kernels("som.soft", registry.lazy(__package__ + ".soft_triton", "static_kernels"))


def som_soft(x: torch.Tensor, nodes: torch.Tensor, values: torch.Tensor, beta=1.0, distance: str = "euclidean",
             *, backend: str | None = None) -> torch.Tensor:
    """The soft SOM: out_b = sum_k g_k exp(-beta d(x_b, l_k)) / sum_k exp(-beta d(x_b, l_k)).

    Args:
        x: (B, D) float inputs. nodes: (K, D) the node embeddings l_k, K >= 1. values:
            (K, C) the nodes' values g_k (their grid coordinates in genkernels.SoftSOM).
            Same dtype and device.
        beta: inverse temperature > 0: a number or a one-element float tensor (an
            nn.Parameter for a learned one; the result is differentiable in it).
        distance: "euclidean" (||x - l||, gradient 0 at x = l) or "squared" (||x - l||^2).
        backend: None (auto), "reference", "cpu" or "triton".
    Returns:
        (B, C) in x's dtype, differentiable in x, nodes, values and beta. Arithmetic in fp32
        (fp64 for fp64 input); the B x K weights are never held in memory at once.
    """
    check_float_tensor("x", x, 2)
    check_float_tensor("nodes", nodes, 2)
    check_float_tensor("values", values, 2)
    check_same_device(x=x, nodes=nodes, values=values)
    check_same_dtype(x=x, nodes=nodes, values=values)
    check_choice("distance", distance, DISTANCES)
    if nodes.shape[1] != x.shape[1]:
        raise ValueError(f"nodes has {nodes.shape[1]} features but x has {x.shape[1]}; they must match")
    if nodes.shape[0] == 0:
        raise ValueError(f"nodes must hold at least one node; got shape {tuple(nodes.shape)}")
    if values.shape[0] != nodes.shape[0]:
        raise ValueError(f"values must have one row per node ({nodes.shape[0]}); got shape {tuple(values.shape)}")
    beta_t = check_beta(beta, x.device, acc_dtype(x.dtype))
    name = SOFT.resolve(x.device, backend)
    if name != "cpu" and not compiling() and x.device.type != "meta":
        for arg, t in (("x", x), ("nodes", nodes), ("values", values)):
            if not all_finite(t):
                raise ValueError(f"{arg} contains NaN or Inf")
    out, _, _ = SOFT.kernels[name](x, nodes, values, beta_t, distance == "squared")
    return out if out.dtype == x.dtype else out.to(x.dtype)
