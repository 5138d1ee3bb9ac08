"""The CPU kernels of the soft SOM (csrc/cpu/som_soft.cpp), called directly as
torch.ops.genkernels.som_soft / som_soft_backward: forward (out, m, Z) and VJP against the
fused specification (genkernels/som/soft_reference.py) over odd and edge shapes, both
distances, fp64 and fp32; a row exactly at a node; beta 1e30; non-contiguous inputs;
results bit for bit the same on 1 and 2 threads; opcheck."""

import itertools

import pytest
import torch

import genkernels  # noqa: F401  (loads the extension's ops)
from genkernels.som import soft_reference as R

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.genkernels, "som_soft"),
                                reason="the C++ extension with som_soft is not built")

B_SIZES, D_SIZES, K_SIZES, C_SIZES = (0, 1, 7, 100), (1, 3, 64), (1, 5, 300), (1, 2, 5)
# (rtol, atol) of the forward and of the gradients
TOL = {torch.float64: ((1e-12, 1e-12), (1e-12, 1e-10)), torch.float32: ((1e-5, 1e-5), (1e-5, 1e-5))}


def _distance(squared: bool) -> str:
    return "squared" if squared else "euclidean"


def _problem(b, d, k, c, dtype=torch.float64, seed=0, beta=1.3, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(b, d, generator=g, dtype=dtype)
    nodes = scale * torch.randn(k, d, generator=g, dtype=dtype)
    values = torch.randn(k, c, generator=g, dtype=dtype)
    if b and k > 1:
        nodes[k // 2] = x[b // 2]  # a row exactly at a node: distance 0
    return x, nodes, values, torch.tensor(beta, dtype=dtype)


def _check(x, nodes, values, beta, squared, dtype, grad=None):
    """Forward and backward of the kernels against soft_som_forward / soft_som_backward."""
    (f_rtol, f_atol), (g_rtol, g_atol) = TOL[dtype]
    distance = _distance(squared)
    out, m, z = torch.ops.genkernels.som_soft(x, nodes, values, beta, squared)
    want_out, want_m, want_z = R.soft_som_forward(x, nodes, values, beta, distance)
    for name, got, want in (("out", out, want_out), ("m", m, want_m), ("Z", z, want_z)):
        assert got.dtype == dtype and got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=f_rtol, atol=f_atol, msg=name)
    if grad is None:
        grad = torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    got = torch.ops.genkernels.som_soft_backward(grad, x, nodes, values, beta, out, m, z, squared)
    want = R.soft_som_backward(grad, x, nodes, values, beta, want_out, want_m, want_z, distance)
    for name, a, b in zip(("grad_x", "grad_nodes", "grad_values", "grad_beta"), got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=g_rtol, atol=g_atol, msg=name)
    return out, got


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("b,d,k,c", list(itertools.product(B_SIZES, D_SIZES, K_SIZES, C_SIZES)))
def test_fp64_equals_the_specification(b, d, k, c, squared):
    _check(*_problem(b, d, k, c), squared, torch.float64)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("b,d,k,c", [(0, 3, 5, 2), (1, 1, 1, 1), (7, 3, 5, 2), (100, 64, 300, 5),
                                     (100, 3, 300, 1), (7, 64, 1, 2)])
def test_fp32_equals_the_specification(b, d, k, c, squared):
    # features scaled by 1 / sqrt(D): scores of order 1 at every D (at D = 64 unscaled,
    # squared scores near -170 carry an absolute fp32 rounding of 1e-5 in every
    # implementation: see the next test)
    _check(*_problem(b, d, k, c, dtype=torch.float32, scale=d ** -0.5), squared, torch.float32)


@pytest.mark.parametrize("squared", [False, True])
def test_fp32_error_is_within_twice_pytorchs_own(squared):
    """Large scores (D = 64 unscaled): the fp32 kernel's error against fp64 is bounded by
    twice the error of the definition computed by PyTorch in fp32."""
    x, nodes, values, beta = _problem(100, 64, 300, 5, dtype=torch.float32)
    distance = _distance(squared)
    truth = R.soft_som(x.double(), nodes.double(), values.double(), beta.double(), distance)
    torch_error = (R.soft_som(x, nodes, values, beta, distance).double() - truth).abs().max()
    out = torch.ops.genkernels.som_soft(x, nodes, values, beta, squared)[0]
    assert (out.double() - truth).abs().max() <= 2 * torch_error + 1e-6


@pytest.mark.parametrize("squared", [False, True])
def test_row_at_a_node_has_zero_distance_and_finite_gradients(squared):
    x, nodes, values, beta = _problem(6, 4, 9, 3)
    nodes[2] = x[0]
    nodes[5] = x[3]
    out, (gx, gl, gv, gb) = _check(x, nodes, values, beta, squared, torch.float64)
    _, m, _ = torch.ops.genkernels.som_soft(x, nodes, values, beta, squared)
    assert m[0] == 0 and m[3] == 0  # the max score of a row at a node is -beta * 0
    for t in (out, gx, gl, gv, gb):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_beta_gives_the_nearest_nodes_value_without_nan(squared, dtype):
    x, nodes, values, _ = _problem(20, 3, 50, 2, dtype=dtype)
    beta = torch.tensor(1e30, dtype=dtype)
    out, m, z = torch.ops.genkernels.som_soft(x, nodes, values, beta, squared)
    nearest = torch.cdist(x.double(), nodes.double()).argmin(1)
    torch.testing.assert_close(out, values[nearest], rtol=0, atol=0)
    assert torch.isfinite(m).all() and (z == 1).all()
    grad = torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    grads = torch.ops.genkernels.som_soft_backward(grad, x, nodes, values, beta, out, m, z, squared)
    for name, a in zip(("grad_x", "grad_nodes", "grad_values", "grad_beta"), grads):
        assert torch.isfinite(a).all(), name
    # the weights are one-hot: grad_values is the sum of the grad rows each node wins (the
    # x and node gradients are beta = 1e30 times a rounding of grad . (g_k - out) = 0, so
    # they are finite but not comparable across implementations)
    want_values = torch.zeros_like(values).index_add_(0, nearest, grad)
    torch.testing.assert_close(grads[2], want_values)


@pytest.mark.parametrize("squared", [False, True])
def test_non_contiguous_inputs(squared):
    x, nodes, values, beta = _problem(33, 10, 70, 6)
    x_nc, nodes_nc, values_nc = x[::3, ::2], nodes.t().contiguous().t()[::2, ::2], values[::2, ::2]
    assert not (x_nc.is_contiguous() or nodes_nc.is_contiguous() or values_nc.is_contiguous())
    grad = torch.randn(11, 3, dtype=torch.float64).t().contiguous().t()
    _check(x_nc, nodes_nc, values_nc, beta, squared, torch.float64, grad=grad)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,d,k,c", [(1000, 16, 300, 2), (517, 64, 130, 5), (5, 3, 1000, 1)])
def test_results_do_not_depend_on_the_thread_count(b, d, k, c, squared, dtype):
    x, nodes, values, beta = _problem(b, d, k, c, dtype=dtype)
    grad = torch.randn(b, c, dtype=dtype)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, m, z = torch.ops.genkernels.som_soft(x, nodes, values, beta, squared)
            grads = torch.ops.genkernels.som_soft_backward(grad, x, nodes, values, beta, out, m, z, squared)
            results.append((out, m, z, *grads))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(squared, dtype):
    """Both ops with the fake kernels and the autograd genkernels/som/soft_ops.py registers,
    the forward also with inputs that require grad."""
    x, nodes, values, beta = _problem(9, 3, 70, 2, dtype=dtype)
    out, m, z = torch.ops.genkernels.som_soft(x, nodes, values, beta, squared)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.genkernels.som_soft.default, (x, nodes, values, beta, squared))
    leaves = tuple(t.clone().requires_grad_() for t in (x, nodes, values, beta))
    torch.library.opcheck(torch.ops.genkernels.som_soft.default, (*leaves, squared))
    torch.library.opcheck(torch.ops.genkernels.som_soft_backward.default,
                          (grad, x, nodes, values, beta, out, m, z, squared))
