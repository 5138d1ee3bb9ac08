"""rbm_half_step and rbm_half_step_binary with inputs that require grad: never an abort,
and the probabilities differentiate like the reference's sigmoid(s @ w + bias)."""

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import COMPILED, needs_cpu  # noqa: E402

from genkernels import ops

OPS = {"dense": ops.rbm_half_step, "binary": ops.rbm_half_step_binary}


def _problem(b, n_vis, n_hid, transpose, dtype=torch.float64, binary=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_vis, n_hid, generator=g, dtype=dtype) * 0.7
    n_in, n_out = (n_hid, n_vis) if transpose else (n_vis, n_hid)
    bias = torch.randn(n_out, generator=g, dtype=dtype) * 0.5
    s = (torch.rand(b, n_in, generator=g, dtype=dtype) < 0.4).to(dtype) if binary else \
        torch.rand(b, n_in, generator=g, dtype=dtype)
    return s, w, bias


def test_parameter_inputs_do_not_abort():
    # an escaped C++ exception inside an OpenMP region used to abort the interpreter: both
    # backends in one new process (most of its time is importing torch), each on fresh leaves
    code = textwrap.dedent("""
        import torch, genkernels
        for backend in ("cpu", "reference"):
            w = torch.nn.Parameter(torch.randn(300, 200))
            b = torch.nn.Parameter(torch.zeros(200))
            s = torch.rand(257, 300, requires_grad=True)
            samples, probs = genkernels.ops.rbm_half_step(s, w, b, 1, return_probs=True, backend=backend)
            probs.sum().backward()
            print(backend, samples.dtype, probs.requires_grad, w.grad.shape, b.grad.shape, s.grad.shape, flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    expected = ["torch.uint8", "True", "torch.Size([300,", "200])", "torch.Size([200])", "torch.Size([257,", "300])"]
    assert proc.stdout.split() == ["cpu", *expected, "reference", *expected]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("kind", ["dense", "binary"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (33, 17, 65)])
def test_gradients_match_reference(backend, kind, transpose, shape):
    s, w, bias = _problem(*shape, transpose, binary=kind == "binary")
    grads = {}
    for name in ("reference", backend):
        leaves = [t.clone().requires_grad_() for t in (s, w, bias)]
        samples, probs = OPS[kind](*leaves, 3, 11, transpose, True, backend=name)
        assert not samples.requires_grad
        (probs * torch.linspace(-1, 2, probs.numel(), dtype=probs.dtype).reshape(probs.shape)).sum().backward()
        grads[name] = [t.grad for t in leaves]
    if kind == "binary":  # 0/1 states are discrete: no gradient in s on any backend
        assert grads["reference"][0] is None and grads[backend][0] is None
    for ref, got in zip(grads["reference"][kind == "binary":], grads[backend][kind == "binary":]):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("transpose", [False, True])
def test_gradcheck(backend, transpose):
    s, w, bias = _problem(4, 6, 5, transpose)
    leaves = [t.requires_grad_() for t in (s, w, bias)]

    def probs(s, w, bias):
        return ops.rbm_half_step(s, w, bias, 0, 0, transpose, True, backend=backend)[1]

    assert torch.autograd.gradcheck(probs, leaves)


@pytest.mark.parametrize("backend", COMPILED)
def test_uint8_states_and_no_probs(backend):
    s, w, bias = _problem(6, 5, 4, False, binary=True)
    w.requires_grad_()
    _, probs = ops.rbm_half_step(s.to(torch.uint8), w, bias, 0, return_probs=True, backend=backend)
    probs.sum().backward()
    ref_w = w.detach().clone().requires_grad_()
    torch.sigmoid(s @ ref_w + bias).sum().backward()
    torch.testing.assert_close(w.grad, ref_w.grad)
    samples = ops.rbm_half_step(s, w, bias, 0, backend=backend)  # samples only: nothing to differentiate
    assert samples.dtype == torch.uint8 and not samples.requires_grad


@needs_cpu
def test_opcheck_with_grad():
    s, w, bias = _problem(9, 7, 5, False)
    for transpose, (ss, ww, bb) in ((False, (s, w, bias)), (True, (torch.rand(9, 5, dtype=torch.float64), w,
                                                                    torch.zeros(7, dtype=torch.float64)))):
        args = (ss.requires_grad_(), ww.clone().requires_grad_(), bb.requires_grad_(), 5, 3, transpose, True)
        # opcheck's AOT test sums every output into one accumulator starting from the first,
        # our uint8 samples, and then fails adding the float probabilities to an int64 sum;
        # the compiled backward is covered by test_compiles_fullgraph_with_grad instead
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        torch.library.opcheck(torch.ops.genkernels.rbm_half_step.default, args, test_utils=utils)
        torch.library.opcheck(torch.ops.genkernels.rbm_half_step_binary.default,
                              ((ss.detach() > 0.5).to(ss.dtype), *args[1:]), test_utils=utils)


@needs_cpu
def test_compiles_fullgraph_with_grad():
    s, w, bias = _problem(8, 6, 5, False, dtype=torch.float32)
    w.requires_grad_()

    @torch.compile(fullgraph=True)
    def loss(s, w, bias):
        return ops.rbm_half_step(s, w, bias, 1, 2, False, True, backend="cpu")[1].square().sum()

    loss(s, w, bias).backward()
    ref_w = w.detach().clone().requires_grad_()
    torch.sigmoid(s @ ref_w + bias).square().sum().backward()
    torch.testing.assert_close(w.grad, ref_w.grad)
