"""ActNorm's map as a fused op (genkernels.ops.actnorm, flows.ActNorm): every backend against the
spec (actnorm_reference) over odd and edge shapes, forward and inverse, values and the three
gradients; gradcheck, gradgradcheck, opcheck, torch.compile, threads, autocast and low
precision, bad input."""

import math

import pytest
import torch
from helpers import HAS_TRITON, needs, num_threads
from tolerances import TOL

import genkernels
from genkernels.flows import ActNorm
from genkernels.flows import actnorm_reference as R

BACKENDS = ["cpu"] + (["triton"] if HAS_TRITON else [])

# (B, C, *spatial): vectors, images, a channel or a row alone, empty batches and positions,
# a row longer than the cpu kernel's chunk (its channels in groups), positions not a multiple
# of the float blocks (64) or of a vector, many channels
CASES = [(5, 3), (1, 1), (0, 4), (7, 300), (4, 6, 7), (2, 3, 0), (3, 1, 1, 1), (2, 5, 3, 3), (2, 4, 33, 33),
         (3, 2, 130), (1, 40, 500), (65, 17)]


def _problem(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    log_scale = torch.randn(c, generator=g, dtype=torch.float64) * 0.5
    return x.to(dtype), bias.to(dtype), log_scale.to(dtype)


def _grads(fn, x, bias, log_scale, gy, gl):
    leaves = [v.clone().requires_grad_() for v in (x, bias, log_scale)]
    y, logdet = fn(*leaves)
    return (y, logdet, *torch.autograd.grad((y, logdet), leaves, (gy, gl)))


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_backends_equal_the_reference(backend, shape, dtype, inverse):
    if backend == "triton" and math.prod(shape) > 20000:
        pytest.skip("interpreted Triton: the large cases are the cpu kernel's")
    x, bias, log_scale = _problem(shape, dtype)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    gl = torch.randn(shape[0], generator=g, dtype=torch.float64).to(dtype)
    got = _grads(lambda a, b, s: genkernels.ops.actnorm(a, b, s, inverse=inverse, backend=backend),
                 x, bias, log_scale, gy, gl)
    p = math.prod(shape[2:])
    want = _grads(lambda a, b, s: [v.reshape(a.shape) if i == 0 else v for i, v in enumerate(
        R.actnorm(a.reshape(a.shape[0], a.shape[1], p), b, s, inverse))], x, bias, log_scale, gy, gl)
    for name, a, b in zip(("y", "logdet", "grad_x", "grad_bias", "grad_log_scale"), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        # the parameters' gradients are sums over B x P terms: relative to their size
        scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
        torch.testing.assert_close(a / scale, b / scale, **TOL[dtype], msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inverse_undoes_forward_and_the_layer_uses_the_op(backend):
    layer = ActNorm(4, backend=backend).double()
    x = torch.randn(6, 4, 3, 5, dtype=torch.float64) * 3 + 1
    y, ld = layer(x)                               # initialises on this batch: zero mean, unit variance
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
    back, ld_inv = layer.inverse(y)
    torch.testing.assert_close(back, x, **TOL[torch.float64])
    torch.testing.assert_close(ld + ld_inv, torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)
    assert float(ld[0].detach()) == pytest.approx(15 * float(layer.log_scale.detach().sum()), rel=1e-12)
    # the Jacobian's log-determinant, vectors
    vec = ActNorm(3, backend=backend).double()
    vec(torch.randn(8, 3, dtype=torch.float64))
    v = torch.randn(3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda u: vec(u[None])[0][0], v)
    assert float(vec(v[None])[1][0].detach()) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-12)


@needs("cpu")
def test_cpu_gradcheck_opcheck_compile_threads_and_unused_outputs():
    op = torch.ops.genkernels.actnorm
    for shape in ((4, 3, 1), (2, 3, 5)):
        x, bias, log_scale = _problem(shape, torch.float64)
        for inverse in (False, True):
            leaves = [v.clone().requires_grad_() for v in (x, bias, log_scale)]
            assert torch.autograd.gradcheck(lambda a, b, s: op(a, b, s, inverse), leaves)
            assert torch.autograd.gradgradcheck(lambda a, b, s: op(a, b, s, inverse), leaves)
            torch.library.opcheck(op.default, (x, bias, log_scale, inverse))
            torch.library.opcheck(torch.ops.genkernels.actnorm_backward.default,
                                  (torch.randn(shape, dtype=torch.float64), torch.randn(shape[0], dtype=torch.float64),
                                   x, bias, log_scale, inverse))
    # only y, or only the log-determinant, used: the other's gradient is never formed
    x, bias, log_scale = _problem((5, 4, 3), torch.float64)
    for pick in (0, 1):
        grads = []
        for backend in ("cpu", "reference"):
            leaves = [v.clone().requires_grad_() for v in (x, bias, log_scale)]
            out = genkernels.ops.actnorm(*leaves, backend=backend)[pick]
            grads.append(torch.autograd.grad(out.sum(), leaves, allow_unused=True, materialize_grads=True))
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, **TOL[torch.float64])
    torch._dynamo.reset()
    layer = ActNorm(4).double()
    layer(torch.randn(8, 4, dtype=torch.float64))

    def step(v):
        y, ld = layer(v)
        return y.sum() + ld.sum()

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    v = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(compiled(v), step(v))
    # many chunks (rows in groups; a row's channels in groups): the same bits on 1 and 2 threads
    # (the last: rows over the chunk size, at most 256 row chunks, channels in groups)
    for shape in ((20000, 7), (3, 9, 3000), (260, 16500)):
        x, bias, log_scale = _problem(shape, torch.float32)
        gy = torch.randn(shape)
        results = []
        for threads in (1, 2):
            with num_threads(threads):
                y, ld = genkernels.ops.actnorm(x, bias, log_scale)
                p = math.prod(shape[2:])
                grads = torch.ops.genkernels.actnorm_backward(gy.reshape(shape[0], shape[1], p), torch.ones(shape[0]),
                                                             x.reshape(shape[0], shape[1], p), bias, log_scale, False)
                results.append((y, ld, *grads))
        for a, b in zip(*results):
            assert torch.equal(a, b)


@needs("cpu")
def test_row_strided_input_and_expanded_gradients():
    big = torch.randn(6, 9, dtype=torch.float64)
    x = big[:, 2:7]                                  # rows with a stride of their own
    _, bias, log_scale = _problem((6, 5), torch.float64)
    got = _grads(lambda a, b, s: genkernels.ops.actnorm(a, b, s, backend="cpu"), x, bias, log_scale,
                 torch.ones(6, 5, dtype=torch.float64).expand(6, 5), torch.ones(1, dtype=torch.float64).expand(6))
    want = _grads(lambda a, b, s: genkernels.ops.actnorm(a, b, s, backend="reference"), x.contiguous(), bias,
                  log_scale, torch.ones(6, 5, dtype=torch.float64), torch.ones(6, dtype=torch.float64))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_and_autocast(backend):
    x, bias, log_scale = _problem((4, 3, 5, 5), torch.float32)
    xb = x.to(torch.bfloat16)
    y, ld = genkernels.ops.actnorm(xb, bias, log_scale, backend=backend)
    assert y.dtype == torch.bfloat16 and ld.dtype == torch.float32
    exact_y, exact_ld = R.actnorm(xb.double().reshape(4, 3, 25), bias.double(), log_scale.double(), False)
    ref_y, _ = R.actnorm(xb.reshape(4, 3, 25), bias.to(torch.bfloat16), log_scale.to(torch.bfloat16), False)
    # no further from the exact value than PyTorch's own bf16 computation (twice, the table's rule)
    assert (y.double().reshape(4, 3, 25) - exact_y).abs().max() <= 2 * (ref_y.double() - exact_y).abs().max() + 1e-12
    torch.testing.assert_close(ld.double(), exact_ld, **TOL[torch.float32])
    layer = ActNorm(3, backend=backend)
    layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, lda = layer(x)
    assert ya.dtype == torch.float32
    torch.testing.assert_close(ya, layer(x)[0])


@pytest.mark.parametrize("call, error, match", [
    (lambda: genkernels.ops.actnorm(torch.randn(3), torch.zeros(3), torch.zeros(3)), ValueError,
     r"x must be \(B, C\)"),
    (lambda: genkernels.ops.actnorm(torch.randn(2, 3), torch.zeros(4), torch.zeros(3)), ValueError,
     r"bias must be \(3,\)"),
    (lambda: genkernels.ops.actnorm(torch.randn(2, 3), torch.zeros(3), torch.zeros(3, 1)), ValueError,
     "log_scale must be"),
    (lambda: genkernels.ops.actnorm(torch.randn(2, 3).int(), torch.zeros(3), torch.zeros(3)), TypeError,
     "x must be a floating-point tensor"),
    (lambda: genkernels.ops.actnorm(torch.randn(2, 3), torch.zeros(3).long(), torch.zeros(3)), TypeError,
     "bias must be a floating-point tensor"),
    (lambda: genkernels.ops.actnorm(torch.randn(2, 3), torch.zeros(3), torch.zeros(3), backend="nope"), ValueError,
     "backend"),
    (lambda: genkernels.ops.actnorm(torch.randn(2, 3), torch.zeros(3), torch.zeros(3), inverse="no"), TypeError,
     "inverse must be a bool"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@needs("cpu")
def test_cpu_kernel_rejects_bad_arguments_without_crashing():
    op = torch.ops.genkernels.actnorm
    with pytest.raises(ValueError, match=r"x must be \(B, C, P\)"):
        op(torch.randn(2, 3), torch.zeros(3), torch.zeros(3), False)
    with pytest.raises(ValueError, match=r"bias must be \(3,\)"):
        op(torch.randn(2, 3, 1), torch.zeros(2), torch.zeros(3), False)
    with pytest.raises(TypeError, match="log_scale must have x's dtype"):
        op(torch.randn(2, 3, 1), torch.zeros(3), torch.zeros(3, dtype=torch.float64), False)
    with pytest.raises(TypeError, match="float32 or float64"):
        op(torch.randn(2, 3, 1).half(), torch.zeros(3).half(), torch.zeros(3).half(), False)
    with pytest.raises(ValueError, match="grad_logdet must be"):
        torch.ops.genkernels.actnorm_backward(torch.randn(2, 3, 1), torch.zeros(3), torch.randn(2, 3, 1),
                                              torch.zeros(3), torch.zeros(3), False)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")   # torch.func's own
def test_torch_func_transforms_run_on_the_reference():
    """Under torch.func (jacrev, jvp) the automatic backend is the reference (the cpu op's C++
    autograd is refused there): the Jacobian is diagonal, exp(log_scale) per channel."""
    layer = ActNorm(3).double()
    layer(torch.randn(8, 3, dtype=torch.float64))
    v = torch.randn(3, dtype=torch.float64)
    jac = torch.func.jacrev(lambda u: layer(u[None])[0][0])(v)
    torch.testing.assert_close(jac, torch.diag(layer.log_scale.detach().exp()))
    _, tangent = torch.func.jvp(lambda u: layer(u[None])[0][0], (v,), (torch.ones(3, dtype=torch.float64),))
    torch.testing.assert_close(tangent, layer.log_scale.detach().exp())
