"""The masked convolution (genkernels.ops.masked_conv2d, genkernels.MaskedConv2d): every
backend against conv2d of the masked weight over odd and edge shapes, forward and both
gradients; the masks themselves; gradcheck, opcheck and torch.compile; the layer; bad input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, needs

import genkernels
from genkernels.autoregressive import conv_reference as R

BACKENDS = [pytest.param("reference"), pytest.param("cpu", marks=needs("cpu")),
            pytest.param("triton", marks=needs("triton"))]
# the shape sweep of the Triton kernels (interpreted: slow) is tests/test_masked_conv_triton.py's
SWEEP_BACKENDS = BACKENDS[:2]

# (B, Cin, Cout, H, W, kernel, mask type, channel groups, dilation, bias)
CASES = [
    (1, 1, 1, 1, 1, (3, 3), "A", 1, 1, True),
    (2, 3, 6, 5, 7, (3, 3), "A", 3, 1, True),
    (3, 6, 6, 8, 5, (5, 5), "B", 3, 2, False),
    (2, 4, 8, 6, 6, (1, 3), "B", 1, 1, True),
    (2, 2, 3, 4, 9, (3, 1), "A", 1, 1, False),
    (1, 3, 3, 7, 7, (7, 7), "A", 3, 1, True),
    (4, 16, 8, 12, 12, (5, 5), "A", 1, 1, True),
    (2, 5, 7, 3, 11, (1, 1), "B", 1, 1, True),
    (2, 6, 9, 4, 5, (1, 1), "A", 3, 1, True),      # 1 x 1: the pointwise path, channel groups
    (9, 6, 6, 3, 3, (1, 1), "B", 3, 1, False),     # more images than grad W's lanes
    (1, 4, 4, 2, 2, (7, 7), "B", 1, 3, True),
    (0, 3, 3, 4, 4, (3, 3), "B", 1, 1, True),
]


def _problem(case, dtype=torch.float64, seed=0):
    b, ci, co, h, w, ks, _, _, _, bias = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, ci, h, w, generator=g, dtype=dtype)
    weight = torch.randn(co, ci, *ks, generator=g, dtype=dtype)
    return x.to(DEVICE), weight.to(DEVICE), (torch.randn(co, generator=g, dtype=dtype).to(DEVICE) if bias else None)


def test_type_a_and_b_masks():
    # 7 x 7 type A keeps the 24 taps before the centre; B adds the centre
    assert R.kept_taps(R.tap_rules((7, 7), "A")) == 24 and R.kept_taps(R.tap_rules((7, 7), "B")) == 25
    a = R.dense_mask(R.tap_rules((3, 3), "A", 3), 3, 3, (3, 3), 3)
    b = R.dense_mask(R.tap_rules((3, 3), "B", 3), 3, 3, (3, 3), 3)
    # rows above and the pixel to the left: every channel; the centre: R sees nothing (A)
    # or R (B), G sees R (A) or R, G (B), B sees R, G (A) or all (B)
    assert torch.equal(a[:, :, 0], torch.ones(3, 3, 3)) and torch.equal(a[:, :, 1, 0], torch.ones(3, 3))
    assert torch.equal(a[:, :, 1, 1], torch.tensor([[0., 0, 0], [1, 0, 0], [1, 1, 0]]))
    assert torch.equal(b[:, :, 1, 1], torch.tensor([[1., 0, 0], [1, 1, 0], [1, 1, 1]]))
    assert not a[:, :, 1, 2].any() and not a[:, :, 2].any() and not b[:, :, 2].any()


@pytest.mark.parametrize("backend", SWEEP_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-k{c[5][0]}{c[5][1]}{c[6]}"
                         f"g{c[7]}d{c[8]}")
def test_forward_and_gradients_equal_conv2d_of_the_masked_weight(backend, case):
    x, weight, bias = _problem(case)
    mask_type, groups, dilation = case[6], case[7], case[8]
    leaves = [t.clone().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    kh, kw = weight.shape[2:]
    mask = R.dense_mask(R.tap_rules((kh, kw), mask_type, groups), *weight.shape[:2], (kh, kw), groups,
                        weight.dtype, weight.device)
    want = F.conv2d(leaves[0], leaves[1] * mask, leaves[2] if bias is not None else None,
                    padding=(dilation * (kh // 2), dilation * (kw // 2)), dilation=dilation)
    grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, grad) if want.numel() else [torch.zeros_like(t) for t in leaves]
    got_leaves = [t.clone().requires_grad_() for t in leaves]
    out = genkernels.ops.masked_conv2d(got_leaves[0], got_leaves[1], got_leaves[2] if bias is not None else None,
                                       mask_type, groups, dilation, backend=backend)
    torch.testing.assert_close(out, want.detach(), rtol=1e-12, atol=1e-12)
    got_grads = torch.autograd.grad(out, got_leaves, grad) if out.numel() else \
        [torch.zeros_like(t) for t in leaves]
    for name, a, b in zip(("x", "weight", "bias"), got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=name)
    # the masked weights get exactly zero gradient
    assert not got_grads[1][mask == 0].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_rules_and_float32(backend):
    """A vertical-stack grid (the rows above the centre, every column) and a 1 x 5 horizontal
    one with a grouped centre, in float32 against the fp64 definition."""
    vertical = [R.FULL] * 6 + [R.OFF] * 9                                   # 3 x 5: row 0 only
    horizontal = [R.FULL, R.FULL, R.INCLUSIVE, R.OFF, R.OFF]               # 1 x 5
    g = torch.Generator().manual_seed(3)
    for rules, ks, groups in ((vertical, (3, 5), 1), (horizontal, (1, 5), 2)):
        x = torch.randn(3, 4, 6, 9, generator=g)
        weight = torch.randn(6, 4, *ks, generator=g)
        bias = torch.randn(6, generator=g)
        want = R.masked_conv2d(x.double(), weight.double(), bias.double(), rules, groups)
        got = genkernels.ops.masked_conv2d(x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), channel_groups=groups,
                                           rules=rules, backend=backend)
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)


@needs("cpu")
@pytest.mark.parametrize("k, first, dilation, batch", [(3, False, 1, 2), (5, True, 1, 3), (5, False, 2, 9),
                                                       (7, False, 1, 1), (3, True, 2, 4)])
def test_vertical_stack_grids_on_the_cropped_route(k, first, dilation, batch):
    """The cpu backend's cropped-kernel route takes a Gated PixelCNN's vertical grids too (the
    rows above the centre, or up to and including it, every column): values and the three
    gradients equal conv2d of the masked weight, the masked weights' gradient exactly zero,
    and the same bits on 1 and 2 threads (9 images: more than the weight gradient's groups)."""
    from genkernels.autoregressive.pixelcnn import vertical_rules
    rules = vertical_rules(k, first)
    g = torch.Generator().manual_seed(k)
    x = torch.randn(batch, 4, 7, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 4, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    mask = R.dense_mask(rules, 6, 4, (k, k), 1, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    pad = dilation * (k // 2)
    want = F.conv2d(leaves[0], leaves[1] * mask, leaves[2], padding=(pad, pad), dilation=dilation)
    grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, grad)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got_leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
            out = genkernels.ops.masked_conv2d(*got_leaves, rules=rules, dilation=dilation, backend="cpu")
            results.append((out.detach(), *torch.autograd.grad(out, got_leaves, grad)))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(results[0][0], want.detach(), rtol=1e-12, atol=1e-12)
    for name, a, b in zip(("x", "weight", "bias"), results[0][1:], want_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=name)
    assert not results[0][2][mask == 0].any()
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs("cpu")
def test_cpu_gradcheck_and_opcheck():
    x, weight, bias = (t.cpu() for t in _problem((2, 3, 3, 4, 5, (3, 3), "A", 3, 1, True)))
    rules = list(R.tap_rules((3, 3), "A", 3))
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda a, w, b: torch.ops.genkernels.masked_conv2d(a, w, b, rules, 3, 1), leaves)
    torch.library.opcheck(torch.ops.genkernels.masked_conv2d.default, (x, weight, bias, rules, 3, 1))
    torch.library.opcheck(torch.ops.genkernels.masked_conv2d.default, (x, weight, None, rules, 3, 2))
    grad = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.genkernels.masked_conv2d_backward.default,
                          (grad, x, weight, rules, 3, 1, [True, True, True]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    layer = genkernels.MaskedConv2d(3, 6, 5, "A", channel_groups=3, backend=backend).to(DEVICE)
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    compiled = torch.compile(lambda t: layer(t).square().sum(), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), layer(x).square().sum())


@needs("cpu")
def test_cpu_result_does_not_depend_on_threads():
    x, weight, bias = (t.cpu().float() for t in _problem((6, 16, 16, 20, 20, (5, 5), "B", 1, 1, True)))
    grad = torch.randn(6, 16, 20, 20)
    rules = list(R.tap_rules((5, 5), "B"))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torch.ops.genkernels.masked_conv2d(x, weight, bias, rules, 1, 1)
            results.append((out,) + torch.ops.genkernels.masked_conv2d_backward(grad, x, weight, rules, 1, 1,
                                                                                 [True, True, True]))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_layer_output_depends_only_on_earlier_pixels():
    """From gradients: output (c, y, x) of a type-A layer over 3 channel groups depends on
    input pixels before (y, x) in raster order and, at (y, x), on earlier channel groups only."""
    layer = genkernels.MaskedConv2d(3, 6, 5, "A", channel_groups=3, dilation=1).double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    for c, y, xx in ((0, 2, 3), (3, 2, 3), (5, 0, 0), (1, 5, 5)):
        (g,) = torch.autograd.grad(out[0, c, y, xx], x, retain_graph=True)
        seen = g[0].abs() > 0
        order = torch.arange(36).reshape(6, 6)
        later = order[None] > y * 6 + xx
        assert not seen[later.expand(3, 6, 6)].any()
        group = c // 2
        assert not seen[group:, y, xx].any()


def test_layer_init_mask_and_autocast():
    torch.manual_seed(0)
    layer = genkernels.MaskedConv2d(8, 8, 7, "A")
    assert not layer.weight[layer.mask() == 0].any()           # the masked weights start at 0
    assert "taps=24/49" in repr(layer)
    x = torch.randn(4, 8, 10, 10)
    exact = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), exact, rtol=3e-2, atol=3e-2 * float(exact.detach().abs().max()))
    low.float().sum().backward()
    assert layer.weight.grad is not None and not layer.weight.grad[layer.mask() == 0].any()


@pytest.mark.parametrize("call, error, match", [
    (lambda: genkernels.MaskedConv2d(3, 3, 4), ValueError, "kernel_size must be odd"),
    (lambda: genkernels.MaskedConv2d(3, 3, (3, 2)), ValueError, "kernel_size must be odd"),
    (lambda: genkernels.MaskedConv2d(3, 3, 3, "C"), ValueError, "mask_type"),
    (lambda: genkernels.MaskedConv2d(4, 6, 3, channel_groups=3), ValueError, r"in_channels \(4\) must split"),
    (lambda: genkernels.MaskedConv2d(3, 4, 3, channel_groups=3), ValueError, r"out_channels \(4\) must split"),
    (lambda: genkernels.MaskedConv2d(3, 3, 3, dilation=0), ValueError, "dilation"),
    (lambda: genkernels.MaskedConv2d(3, 3, 3, rules=[1, 1, 1]), ValueError, "one rule per tap"),
    (lambda: genkernels.MaskedConv2d(3, 3, 3, rules=[1] * 8 + [5]), ValueError, r"rules\[8\]"),
    (lambda: genkernels.ops.masked_conv2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3)), ValueError,
     "input channels"),
    (lambda: genkernels.ops.masked_conv2d(torch.randn(3, 4, 4), torch.randn(3, 3, 3, 3)), ValueError, "x must be 4-D"),
    (lambda: genkernels.ops.masked_conv2d(torch.randn(1, 3, 4, 4), torch.randn(3, 3, 3, 3).double()), TypeError,
     "dtype"),
    (lambda: genkernels.ops.masked_conv2d(torch.randn(1, 3, 4, 4).int(), torch.randn(3, 3, 3, 3)), TypeError,
     "x must be a floating-point tensor"),
    (lambda: genkernels.ops.masked_conv2d(torch.randn(1, 3, 4, 4), torch.randn(3, 3, 3, 3), torch.randn(2)),
     ValueError, "bias must be"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@needs("cpu")
def test_cpu_kernel_rejects_bad_arguments_without_crashing():
    x, weight = torch.randn(1, 3, 4, 4), torch.randn(3, 3, 3, 3)
    with pytest.raises(ValueError, match="odd"):
        torch.ops.genkernels.masked_conv2d(x, torch.randn(3, 3, 2, 2), None, [1] * 4, 1, 1)
    with pytest.raises(ValueError, match="rule 7"):
        torch.ops.genkernels.masked_conv2d(x, weight, None, [7] * 9, 1, 1)
    with pytest.raises(ValueError, match="channel groups must divide"):
        torch.ops.genkernels.masked_conv2d(x, weight, None, [2] * 9, 2, 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.genkernels.masked_conv2d(x.half(), weight.half(), None, [1] * 9, 1, 1)
