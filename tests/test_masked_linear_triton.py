"""The masked linear layer's Triton kernels (genkernels/autoregressive/linear_triton.py, ops
genkernels::masked_linear_triton and its backward) against the definition,
linear_reference.masked_linear differentiated by autograd: odd and edge shapes (batch 0, 1, 2,
3 and 5; 0 to 300 features, several blocks each way), prefixes sorted ascending (MADE's
layers), descending, unsorted, all zero and all Din; bias or none; fp64, fp32 and bf16;
weights the mask removes are never read (NaN there changes nothing) and get an exact zero
gradient; grad_weight's batch splits are deterministic; strided inputs; opcheck;
torch.compile."""

import pytest
import torch
from helpers import DEVICE, needs
from tolerances import TOL

from genkernels.autoregressive import linear_reference as R

pytestmark = needs("triton")


@pytest.fixture(scope="module")
def linear_triton():
    from genkernels.autoregressive import linear_triton  # registers the ops
    return linear_triton


def _prefix(kind: str, d_in: int, d_out: int, g: torch.Generator) -> torch.Tensor:
    """(Dout,) int64 prefixes in [0, Din]: sorted ascending (MADE's layers, the units ordered
    by degree), descending, unsorted, all 0 (no output sees anything) or all Din (dense)."""
    if kind == "zero":
        return torch.zeros(d_out, dtype=torch.int64)
    if kind == "full":
        return torch.full((d_out,), d_in, dtype=torch.int64)
    prefix = torch.randint(0, d_in + 1, (d_out,), generator=g)
    if kind == "ascending":
        return prefix.sort().values
    if kind == "descending":
        return prefix.sort(descending=True).values
    return prefix


def _problem(batch, d_in, d_out, kind, bias=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d_in, generator=g, dtype=torch.float64)
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) / max(d_in, 1) ** 0.5
    b = torch.randn(d_out, generator=g, dtype=torch.float64) if bias else None
    prefix = _prefix(kind, d_in, d_out, g).to(DEVICE)
    return [t.to(DEVICE, dtype) if t is not None else None for t in (x, w, b)], prefix


def _grads(out, leaves, grad):
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, present, grad) if out.numel() else [torch.zeros_like(t) for t in present]
    return list(grads) + ([None] if leaves[2] is None else [])


def _reference(x, w, b, prefix, grad):
    """The definition's output and gradients in fp64 on the same (rounded) inputs."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = R.masked_linear(*leaves, prefix)
    return out.detach(), _grads(out, leaves, grad.double())


def _triton(x, w, b, prefix, grad):
    """The op's output and the gradients its autograd (the backward op) gives."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = torch.ops.genkernels.masked_linear_triton(*leaves, prefix)
    return out.detach(), _grads(out, leaves, grad)


# (batch, Din, Dout, prefixes, bias, dtype); blocks: 16-64 rows, 64 features, 16 a step
CASES = [
    (1, 1, 1, "full", True, torch.float32),            # one of everything
    (5, 17, 100, "ascending", True, torch.float64),    # MADE: two output blocks
    (5, 100, 17, "ascending", False, torch.float64),   # two input blocks for grad_x
    (3, 100, 100, "descending", True, torch.float64),
    (1, 64, 100, "unsorted", True, torch.float64),
    (5, 100, 64, "unsorted", False, torch.float32),
    (2, 17, 300, "ascending", True, torch.float32),    # grad_x scans the prefixes in two steps
    (5, 3, 17, "zero", True, torch.float64),           # only the bias
    (5, 64, 3, "full", False, torch.float64),          # dense
    (0, 17, 3, "ascending", True, torch.float64),      # no rows
    (3, 0, 5, "full", True, torch.float64),            # no inputs: the bias
    (3, 5, 0, "full", True, torch.float64),            # no outputs
]


@pytest.mark.parametrize("batch, d_in, d_out, kind, bias, dtype", CASES)
def test_forward_and_gradients_equal_the_definition(linear_triton, batch, d_in, d_out, kind, bias, dtype):
    """Output, grad_x, grad_weight and grad_bias against autograd through the reference; the
    weights the mask removes hold NaN, which the kernels never read, and their gradient is
    exactly 0."""
    (x, w, b), prefix = _problem(batch, d_in, d_out, kind, bias, dtype)
    grad = torch.randn((batch, d_out), generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64).to(DEVICE, dtype)
    removed = R.prefix_mask(prefix, d_in) == 0
    poisoned = w.masked_fill(removed, float("nan"))
    want, want_grads = _reference(x, w, b, prefix, grad)
    got, got_grads = _triton(x, poisoned, b, prefix, grad)
    tol = TOL[dtype]
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, **tol)
    for name, a, e in zip(("x", "weight", "bias"), got_grads, want_grads):
        if e is not None:
            assert a.dtype == dtype and a.shape == e.shape, name
            torch.testing.assert_close(a.double(), e, **tol, msg=name)
    assert torch.equal(got_grads[1][removed], torch.zeros_like(got_grads[1][removed]))


def test_bf16_accumulates_in_fp32(linear_triton):
    """bf16 tiles (upcast under the interpreter, tensor cores on a GPU) with fp32 sums: each
    result within a bf16 rounding of the definition on the same inputs."""
    (x, w, b), prefix = _problem(5, 100, 64, "ascending", dtype=torch.bfloat16)
    grad = torch.randn((5, 64), generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.bfloat16)
    want, want_grads = _reference(x, w, b, prefix, grad)
    got, got_grads = _triton(x, w, b, prefix, grad)
    for name, a, e in zip(("out", "x", "weight", "bias"), [got, *got_grads], [want, *want_grads]):
        assert a.dtype == torch.bfloat16, name
        torch.testing.assert_close(a.double(), e, rtol=2 ** -7, atol=1e-4, msg=name)


def test_weight_gradient_splits_strides_and_determinism(linear_triton):
    """grad_weight's batch split in parts (min_split_rows lowered: 3 splits of 16 rows here)
    adds up to the definition's sums, bit for bit from run to run; a column-major x, a
    strided weight and an expanded gradient (stride 0, as from out.sum()) read right."""
    (x, w, b), prefix = _problem(37, 40, 70, "unsorted")
    ones = torch.ones((1, 1), dtype=torch.float64, device=DEVICE).expand(37, 70)
    want_out, want = _reference(x, w, b, prefix, ones)
    split = linear_triton.masked_linear_bwd(ones, x, w, prefix, [False, True, False], min_split_rows=16)
    again = linear_triton.masked_linear_bwd(ones, x, w, prefix, [False, True, False], min_split_rows=16)
    assert split[0].shape == split[2].shape == (0,)
    assert torch.equal(split[1], again[1])
    tol = TOL[torch.float64]
    torch.testing.assert_close(split[1], want[1], **tol)
    x_cols = x.t().contiguous().t()
    w_strided = torch.zeros((70, 80), dtype=w.dtype, device=DEVICE)[:, ::2]
    w_strided.copy_(w)
    torch.testing.assert_close(linear_triton.masked_linear_fwd(x_cols, w_strided, b, prefix), want_out, **tol)
    got = linear_triton.masked_linear_bwd(ones, x_cols, w_strided, prefix, [True, True, True])
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        torch.testing.assert_close(a, e, **tol, msg=name)


def test_ops_pass_opcheck(linear_triton):
    (x, w, b), prefix = _problem(3, 20, 24, "ascending", dtype=torch.float32)
    op = torch.ops.genkernels.masked_linear_triton.default
    torch.library.opcheck(op, (x, w, b, prefix))
    leaves = tuple(t.clone().requires_grad_() for t in (x, w, b))
    torch.library.opcheck(op, (*leaves, prefix))
    torch.library.opcheck(op, (x, w, None, prefix))
    grad = torch.randn((3, 24), device=DEVICE)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(torch.ops.genkernels.masked_linear_backward_triton.default, (grad, x, w, prefix, mask))


def test_compiles_fullgraph(linear_triton):
    (x, w, b), prefix = _problem(3, 20, 24, "ascending", dtype=torch.float32)
    w.requires_grad_()

    def loss(x, w):
        return torch.ops.genkernels.masked_linear_triton(x, w, b, prefix).square().sum()

    torch._dynamo.reset()
    got = torch.compile(loss, fullgraph=True, backend="aot_eager")(x, w)
    got.backward()
    grad = w.grad.clone()
    w.grad = None
    want = loss(x, w)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, w.grad)
