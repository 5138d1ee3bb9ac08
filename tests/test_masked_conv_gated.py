"""The gated masked convolution (genkernels.ops.masked_conv2d_gated: tanh(a) * sigmoid(b) of
masked_conv2d + addend): every backend against gate_reference.masked_conv2d_gated over odd
and edge shapes -- channel groups, a full addend, a broadcast condition (B, C, 1, 1), none,
dilation, no images, one pixel --, forward and the gradients of x, weight, bias and addend;
the gate's backward op; gradcheck, opcheck and torch.compile; threads; bad input."""

import pytest
import torch
from helpers import DEVICE, needs, num_threads
from tolerances import TOL

import genkernels
from genkernels.autoregressive import conv_reference as R
from genkernels.autoregressive import gate_reference as G

BACKENDS = [pytest.param("reference"), pytest.param("cpu", marks=needs("cpu")),
            pytest.param("triton", marks=needs("triton"))]

# (B, Cin, Cout, H, W, kernel, mask type, channel groups, dilation, bias, addend)
CASES = [
    (1, 1, 2, 1, 1, (3, 3), "A", 1, 1, True, None),
    (2, 3, 6, 5, 7, (3, 3), "A", 3, 1, True, "full"),
    (3, 6, 12, 8, 5, (5, 5), "B", 3, 2, False, "condition"),
    (2, 4, 8, 6, 6, (1, 3), "B", 1, 1, True, "condition"),
    (1, 3, 6, 7, 7, (7, 7), "A", 3, 1, True, "full"),
    (0, 3, 6, 4, 4, (3, 3), "B", 1, 1, True, "full"),
]


def _problem(case, dtype=torch.float64, seed=0):
    b, ci, co, h, w, ks, _, _, _, bias, addend = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, ci, h, w, generator=g, dtype=dtype)
    weight = torch.randn(co, ci, *ks, generator=g, dtype=dtype) / (ci * ks[0] * ks[1]) ** 0.5
    bias = torch.randn(co, generator=g, dtype=dtype) if bias else None
    shape = {"full": (b, co, h, w), "condition": (b, co, 1, 1)}.get(addend)
    add = torch.randn(*shape, generator=g, dtype=dtype) if shape else None
    return [t.to(DEVICE) if t is not None else None for t in (x, weight, bias, add)]


def _run(fn, tensors, grad):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    out = fn(*leaves)
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, present, grad) if out.numel() else [torch.zeros_like(t) for t in present]
    return out.detach(), grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}x{c[3]}x{c[4]}-{c[5]}{c[6]}-g{c[7]}-{c[10]}")
def test_forward_and_gradients_equal_the_definition(backend, case):
    _, _, _, _, _, ks, kind, groups, dilation, _, _ = case
    tensors = _problem(case)
    rules = R.tap_rules(ks, kind, groups)
    want_out = G.masked_conv2d_gated(*tensors, rules, groups, dilation)
    grad = torch.randn_like(want_out)
    want, want_grads = _run(lambda x, w, b, a: G.masked_conv2d_gated(x, w, b, a, rules, groups, dilation),
                            tensors, grad)
    got, got_grads = _run(lambda x, w, b, a: genkernels.ops.masked_conv2d_gated(
        x, w, b, a, kind, groups, dilation, backend=backend), tensors, grad)
    assert got.shape == (case[0], case[2] // 2, case[3], case[4])
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, **TOL[torch.float64])


@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_within_the_tolerance_table(backend, dtype):
    """fp32 within TOL; bf16 at most twice as far from the exact value as PyTorch's own
    computation of the definition in bf16 (tests/tolerances.py)."""
    case = (2, 6, 12, 6, 5, (5, 5), "B", 3, 1, True, "full")
    rules = R.tap_rules((5, 5), "B", 3)
    low = [t.to(dtype) for t in _problem(case)]
    exact = G.masked_conv2d_gated(*[t.double() for t in low], rules, 3, 1)   # the same rounded inputs
    got = genkernels.ops.masked_conv2d_gated(*low, "B", 3, backend=backend)
    assert got.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), exact, **TOL[dtype])
    else:
        torch_error = (G.masked_conv2d_gated(*low, rules, 3, 1).double() - exact).abs().max()
        assert (got.double() - exact).abs().max() <= 2 * torch_error


@needs("cpu")
def test_cpu_gradcheck_and_opcheck():
    x, weight, bias, addend = (t.cpu() for t in _problem((2, 3, 6, 4, 5, (3, 3), "A", 3, 1, True, "full")))
    rules = list(R.tap_rules((3, 3), "A", 3))
    condition = torch.randn(2, 6, 1, 1, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias, condition)]
    assert torch.autograd.gradcheck(lambda a, w, b, c: torch.ops.genkernels.masked_conv2d_gated(
        a, w, b, c.expand(2, 6, 4, 5), rules, 3, 1)[0], leaves)
    op = torch.ops.genkernels.masked_conv2d_gated.default
    torch.library.opcheck(op, (x, weight, bias, addend, rules, 3, 1))
    torch.library.opcheck(op, (x, weight, None, None, rules, 3, 2))
    grad = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    pre = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.genkernels.gate_backward.default, (grad, pre, 3))
    p = pre.clone().requires_grad_()
    want = torch.autograd.grad(G.gate(p, 3), p, grad)[0]
    torch.testing.assert_close(torch.ops.genkernels.gate_backward(grad, pre, 3), want, rtol=1e-12, atol=1e-12)


@needs("triton")
def test_triton_ops_pass_opcheck():
    from genkernels.autoregressive import gate_triton
    x, weight, bias, addend = _problem((2, 3, 6, 4, 5, (3, 3), "A", 3, 1, True, "full"))
    rules = list(R.tap_rules((3, 3), "A", 3))
    torch.library.opcheck(gate_triton.masked_conv2d_gated_triton, (x, weight, bias, addend, rules, 3, 1))
    torch.library.opcheck(gate_triton.masked_conv2d_gated_triton, (x, weight, None, None, rules, 3, 1))
    grad, pre = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=DEVICE), torch.randn(2, 6, 4, 5,
                                                                                         dtype=torch.float64,
                                                                                         device=DEVICE)
    torch.library.opcheck(gate_triton.gate_backward_triton, (grad, pre, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    x, weight, bias, addend = _problem((2, 3, 6, 6, 6, (5, 5), "A", 3, 1, True, "condition"), torch.float32)

    def f(t):
        return genkernels.ops.masked_conv2d_gated(t, weight, bias, addend, "A", 3, backend=backend).square().sum()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), f(x))


@needs("cpu")
def test_cpu_result_does_not_depend_on_threads():
    x, weight, bias, addend = (t.cpu().float() for t in _problem((6, 16, 32, 20, 20, (5, 5), "B", 1, 1, True,
                                                                   "full")))
    rules = list(R.tap_rules((5, 5), "B"))
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            out, pre = torch.ops.genkernels.masked_conv2d_gated(x, weight, bias, addend, rules, 1, 1)
            results.append((out, pre, torch.ops.genkernels.gate_backward(torch.ones_like(out), pre, 1)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("call, error, match", [
    (lambda: genkernels.ops.masked_conv2d_gated(torch.randn(1, 3, 4, 4), torch.randn(9, 3, 3, 3), None, None, "B", 3),
     ValueError, r"multiple of 6"),
    (lambda: genkernels.ops.masked_conv2d_gated(torch.randn(1, 2, 4, 4), torch.randn(4, 2, 3, 3), None,
                                                torch.randn(1, 4, 3, 4)), ValueError, r"addend must broadcast"),
    (lambda: genkernels.ops.masked_conv2d_gated(torch.randn(1, 2, 4, 4), torch.randn(4, 2, 3, 3), None,
                                                torch.ones(1, 4, 4, 4, dtype=torch.int64)), TypeError, r"addend"),
    (lambda: genkernels.ops.masked_conv2d_gated(torch.randn(1, 2, 4, 4), torch.randn(4, 2, 2, 2)), ValueError,
     r"odd"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@needs("cpu")
def test_cpu_kernels_reject_bad_arguments_without_crashing():
    x, w = torch.randn(1, 2, 4, 4), torch.randn(6, 2, 3, 3)
    rules = list(R.tap_rules((3, 3), "B"))
    with pytest.raises(ValueError, match="blocks of"):
        torch.ops.genkernels.masked_conv2d_gated(x, torch.randn(5, 2, 3, 3), None, None, rules, 1, 1)
    with pytest.raises(ValueError, match="addend must be"):
        torch.ops.genkernels.masked_conv2d_gated(x, w, None, torch.randn(1, 6, 4, 3), rules, 1, 1)
    with pytest.raises(ValueError, match="grad must be"):
        torch.ops.genkernels.gate_backward(torch.randn(1, 2, 4, 4), torch.randn(1, 6, 4, 4), 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.genkernels.gate_backward(torch.randn(1, 3, 4, 4), torch.ones(1, 6, 4, 4, dtype=torch.int32), 1)
