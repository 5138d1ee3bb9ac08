"""The masked convolution's Triton kernels (genkernels/autoregressive/conv_triton.py, ops
genkernels::masked_conv2d_triton and its backward) against the definition,
conv_reference.masked_conv2d differentiated by autograd: odd and edge shapes (batch 1, 3
and 0, images 1 x 5 to 8 x 5, one to 96 channels in one or three groups, kernels 1x1 to
7x7, 1x3 and 3x1, dilation 2), type A and B masks and a vertical-stack grid, bias or none,
fp64, fp32 and bf16; weights the mask removes are never read (NaN there changes nothing)
and get an exact zero gradient; grad_weight's pixel splits are deterministic; strided
inputs; opcheck; torch.compile."""

import pytest
import torch
from helpers import DEVICE, needs
from tolerances import TOL

from genkernels.autoregressive import conv_reference as R

pytestmark = needs("triton")


@pytest.fixture(scope="module")
def conv_triton():
    from genkernels.autoregressive import conv_triton  # registers the ops
    return conv_triton


def _vertical_stack(kh: int, kw: int) -> tuple[int, ...]:
    """The Gated PixelCNN's vertical stack: the rows strictly above the centre, FULL."""
    return tuple(R.FULL if t // kw < kh // 2 else R.OFF for t in range(kh * kw))


def _rules(kind, kernel, groups):
    return _vertical_stack(*kernel) if kind == "vertical" else R.tap_rules(kernel, kind, groups)


def _problem(batch, c_in, c_out, size, kernel, groups, kind, bias=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, *size, generator=g, dtype=torch.float64)
    w = torch.randn(c_out, c_in, *kernel, generator=g, dtype=torch.float64) / (c_in * kernel[0] * kernel[1]) ** 0.5
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None
    rules = _rules(kind, kernel, groups)
    return [t.to(DEVICE, dtype) if t is not None else None for t in (x, w, b)], rules


def _reference(x, w, b, rules, groups, dilation, grad):
    """The definition's output and gradients in fp64 on the same (rounded) inputs."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = R.masked_conv2d(*leaves, rules, groups, dilation)
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, present, grad.double()) if out.numel() else [torch.zeros_like(t) for t in present]
    return out.detach(), list(grads) + ([None] if b is None else [])


def _triton(x, w, b, rules, groups, dilation, grad):
    """The op's output and the gradients its autograd (the backward op) gives."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = torch.ops.genkernels.masked_conv2d_triton(*leaves, list(rules), groups, dilation)
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, present, grad) if out.numel() else [torch.zeros_like(t) for t in present]
    return out.detach(), list(grads) + ([None] if b is None else [])


# (batch, Cin, Cout, (H, W), (kh, kw), groups, mask, bias, dilation, dtype)
CASES = [
    (1, 1, 1, (1, 1), (1, 1), 1, "B", True, 1, torch.float32),         # one pixel, one tap
    (1, 6, 6, (5, 5), (1, 1), 3, "A", False, 1, torch.float64),        # the STRICT centre alone
    (3, 3, 6, (5, 8), (3, 3), 3, "A", True, 1, torch.float64),
    (1, 6, 3, (8, 5), (3, 3), 3, "B", False, 2, torch.float32),
    (1, 8, 8, (5, 8), (5, 5), 1, "A", True, 1, torch.float64),
    (1, 6, 6, (8, 5), (7, 7), 3, "A", True, 1, torch.float64),
    (1, 3, 3, (5, 5), (1, 3), 3, "B", True, 2, torch.float64),
    (3, 8, 1, (1, 5), (3, 1), 1, "A", True, 1, torch.float64),         # single-row images
    (1, 6, 8, (5, 8), (3, 3), 1, "vertical", True, 2, torch.float64),
    (1, 96, 48, (4, 4), (3, 3), 3, "A", True, 1, torch.float32),       # several channel blocks,
    (1, 48, 96, (4, 4), (3, 3), 3, "B", False, 1, torch.float64),      # blocks straddling groups
    (0, 3, 6, (5, 5), (3, 3), 3, "B", True, 1, torch.float64),         # no images
]


@pytest.mark.parametrize("batch, c_in, c_out, size, kernel, groups, kind, bias, dilation, dtype", CASES)
def test_forward_and_gradients_equal_the_definition(conv_triton, batch, c_in, c_out, size, kernel, groups, kind, bias,
                                                    dilation, dtype):
    """Output, grad_x, grad_weight and grad_bias against autograd through the reference; the
    weights the mask removes hold NaN, which the kernels never read, and their gradient is
    exactly 0."""
    (x, w, b), rules = _problem(batch, c_in, c_out, size, kernel, groups, kind, bias, dtype)
    grad = torch.randn((batch, c_out, *size), generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64).to(DEVICE, dtype)
    removed = R.dense_mask(rules, c_out, c_in, kernel, groups, device=DEVICE) == 0
    poisoned = w.masked_fill(removed, float("nan"))
    want, want_grads = _reference(x, w, b, rules, groups, dilation, grad)
    got, got_grads = _triton(x, poisoned, b, rules, groups, dilation, grad)
    tol = TOL[dtype]
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, **tol)
    for name, a, e in zip(("x", "weight", "bias"), got_grads, want_grads):
        if e is not None:
            assert a.dtype == dtype, name
            torch.testing.assert_close(a.double(), e, **tol, msg=name)
    assert torch.equal(got_grads[1][removed], torch.zeros_like(got_grads[1][removed]))


def test_bf16_accumulates_in_fp32(conv_triton):
    """bf16 tiles (upcast under the interpreter, tensor cores on a GPU) with fp32 sums: each
    result within a bf16 rounding of the definition on the same inputs."""
    (x, w, b), rules = _problem(3, 6, 6, (5, 8), (3, 3), 3, "B", dtype=torch.bfloat16)
    grad = torch.randn((3, 6, 5, 8), generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.bfloat16)
    want, want_grads = _reference(x, w, b, rules, 3, 1, grad)
    got, got_grads = _triton(x, w, b, rules, 3, 1, grad)
    for name, a, e in zip(("out", "x", "weight", "bias"), [got, *got_grads], [want, *want_grads]):
        assert a.dtype == torch.bfloat16, name
        torch.testing.assert_close(a.double(), e, rtol=2 ** -7, atol=1e-4, msg=name)


def test_weight_gradient_splits_strides_and_determinism(conv_triton):
    """grad_weight's image tiles split in parts (min_split_pixels lowered: 5 splits of two
    8 x 2 tiles here) add up to the definition's sums, bit for bit from run to run;
    channels-last x, a strided weight and an expanded gradient (stride 0, as from out.sum())
    read right."""
    (x, w, b), rules = _problem(3, 6, 6, (5, 8), (3, 3), 3, "A")
    ones = torch.ones((1, 1, 1, 1), dtype=torch.float64, device=DEVICE).expand(3, 6, 5, 8)
    want_out, want = _reference(x, w, b, rules, 3, 1, ones)
    split = conv_triton.masked_conv2d_bwd(ones, x, w, rules, 3, 1, [False, True, False], min_split_pixels=32)
    again = conv_triton.masked_conv2d_bwd(ones, x, w, rules, 3, 1, [False, True, False], min_split_pixels=32)
    assert split[0].shape == split[2].shape == (0,)
    assert torch.equal(split[1], again[1])
    tol = TOL[torch.float64]
    torch.testing.assert_close(split[1], want[1], **tol)
    x_last = x.to(memory_format=torch.channels_last)
    w_strided = w.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(conv_triton.masked_conv2d_fwd(x_last, w_strided, b, rules, 3, 1), want_out, **tol)
    got = conv_triton.masked_conv2d_bwd(ones, x_last, w_strided, rules, 3, 1, [True, True, True])
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        torch.testing.assert_close(a, e, **tol, msg=name)


def test_ops_pass_opcheck(conv_triton):
    (x, w, b), rules = _problem(2, 3, 6, (4, 5), (1, 3), 3, "A", dtype=torch.float32)
    args = (x, w, b, list(rules), 3, 1)
    torch.library.opcheck(torch.ops.genkernels.masked_conv2d_triton.default, args)
    leaves = tuple(t.clone().requires_grad_() for t in (x, w, b))
    torch.library.opcheck(torch.ops.genkernels.masked_conv2d_triton.default, (*leaves, *args[3:]))
    torch.library.opcheck(torch.ops.genkernels.masked_conv2d_triton.default, (x, w, None, *args[3:]))
    grad = torch.randn((2, 6, 4, 5), device=DEVICE)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(torch.ops.genkernels.masked_conv2d_backward_triton.default,
                              (grad, x, w, list(rules), 3, 1, mask))


def test_compiles_fullgraph(conv_triton):
    (x, w, b), rules = _problem(2, 3, 6, (4, 5), (3, 3), 3, "B", dtype=torch.float32)
    w.requires_grad_()

    def loss(x, w):
        return torch.ops.genkernels.masked_conv2d_triton(x, w, b, list(rules), 3, 2).square().sum()

    torch._dynamo.reset()
    got = torch.compile(loss, fullgraph=True, backend="aot_eager")(x, w)
    got.backward()
    grad = w.grad.clone()
    w.grad = None
    want = loss(x, w)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, w.grad)
