"""The discretised logistic mixture's log-likelihood (genkernels.ops.logistic_mixture_log_prob,
PixelCNN++'s output distribution): every backend against mixture_reference over odd and edge
shapes (no images, one pixel, one component, binary levels, three coupled channels), forward
and gradient; extreme parameters; gradcheck, opcheck, torch.compile; threads; bad input."""

import pytest
import torch
from helpers import needs, num_threads
from tolerances import TOL

import genkernels
from genkernels.autoregressive import mixture_reference as M

BACKENDS = [pytest.param("reference"), pytest.param("cpu", marks=needs("cpu"))]

# (B, C, K, H, W, levels, parameter scale)
CASES = [(2, 3, 5, 4, 5, 256, 1.0), (1, 1, 1, 1, 1, 2, 1.0), (3, 2, 3, 3, 2, 7, 3.0), (0, 1, 2, 3, 3, 256, 1.0),
         (2, 1, 10, 7, 3, 256, 5.0), (1, 4, 2, 2, 9, 16, 2.0)]


def _problem(case, dtype=torch.float64, seed=0):
    b, c, k, h, w, levels, scale = case
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(b, M.param_count(c, k), h, w, generator=g, dtype=torch.float64) * scale
    v = torch.randint(levels, (b, c, h, w), generator=g).double()
    return params.to(dtype), v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}C{}K{}-{}x{}-L{}-s{}".format(*c))
def test_forward_and_gradient_equal_the_definition(backend, case):
    params, v = _problem(case)
    k, levels = case[2], case[5]
    leaf = params.clone().requires_grad_()
    want = M.log_prob(leaf, v, k, levels)
    got_leaf = params.clone().requires_grad_()
    got = genkernels.ops.logistic_mixture_log_prob(got_leaf, v, k, levels, backend=backend)
    assert got.shape == (case[0], case[3], case[4])
    torch.testing.assert_close(got, want.detach(), **TOL[torch.float64])
    if want.numel():
        grad = torch.randn_like(want)
        (a,), (e,) = torch.autograd.grad(got, got_leaf, grad), torch.autograd.grad(want, leaf, grad)
        torch.testing.assert_close(a, e, **TOL[torch.float64])


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_parameters_give_finite_values_and_gradients(backend):
    for dtype in (torch.float32, torch.float64):
        params = torch.zeros(1, M.param_count(1, 2), 1, 4, dtype=dtype)
        params[:, 2:4] = torch.tensor([30.0, -30.0], dtype=dtype)[:, None, None]   # means far outside [-1, 1]
        params[:, 4:6] = torch.tensor([-12.0, 6.0], dtype=dtype)[:, None, None]    # a clamped and a huge scale
        params.requires_grad_()
        v = torch.tensor([[[[0.0, 1.0, 128.0, 255.0]]]])
        lp = genkernels.ops.logistic_mixture_log_prob(params, v, 2, 256, backend=backend)
        lp.sum().backward()
        assert bool(torch.isfinite(lp).all()) and bool(torch.isfinite(params.grad).all())
        assert float(params.grad[0, 4].abs().max()) == 0.0     # below the clamp: no gradient


@needs("cpu")
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}C{}K{}-{}x{}-L{}-s{}".format(*c))
def test_cpu_float32_lanes_equal_the_definition(case, layout):
    """float runs 8 pixels per vector (the last block's spare lanes repeat a pixel, the
    transcendentals are the kernel's own polynomials): forward and gradient against the fp64
    definition of the same fp32 inputs, over every odd shape, contiguous and as a strided view
    (channels-last storage, every other column) -- no further from it than twice the fp32
    reference is (the loss's own conditioning: steep logistics at scale 5 cost both ~1e-2)."""
    params, v = _problem(case, torch.float32, seed=1)
    k, levels = case[2], case[5]
    if layout == "strided":
        wide = torch.cat([params, params.flip(3)], dim=3).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        params = wide[..., ::2]
        v = torch.cat([v, v], dim=3)[..., ::2]
        assert not params.is_contiguous() or params.numel() == 0 or params.shape[3] == 1
    if params.numel() == 0:
        return
    leaf = params.clone().double().requires_grad_()
    want = M.log_prob(leaf, v, k, levels)
    grad = torch.randn_like(want)
    (exact,) = torch.autograd.grad(want, leaf, grad)
    errors = {}
    for name in ("cpu", "reference"):
        x = params.detach().clone().requires_grad_()
        got = genkernels.ops.logistic_mixture_log_prob(x, v, k, levels, backend=name)
        (g,) = torch.autograd.grad(got, x, grad.float())
        assert got.dtype == g.dtype == torch.float32
        errors[name] = (float((got.double() - want.detach()).abs().max()), float((g.double() - exact).abs().max()))
    for ours, fp32_reference in zip(errors["cpu"], errors["reference"]):
        assert ours <= 2 * fp32_reference + 1e-6, errors


@needs("cpu")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_within_the_tolerance_table(dtype):
    params, v = _problem((2, 3, 4, 5, 6, 256, 1.0))
    low = params.to(dtype)
    exact = M.log_prob(low.double(), v, 4, 256)
    got = genkernels.ops.logistic_mixture_log_prob(low, v, 4, 256, backend="cpu")
    assert got.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), exact, **TOL[dtype])
    else:
        assert (got.double() - exact).abs().max() <= 2 * (M.log_prob(low, v, 4, 256).double() - exact).abs().max()


@needs("cpu")
def test_cpu_gradcheck_opcheck_compile_and_threads():
    params, v = _problem((2, 3, 2, 3, 4, 8, 1.0))
    op = torch.ops.genkernels.logistic_mixture_log_prob
    assert torch.autograd.gradcheck(lambda p: op(p, v, 2, 8), [params.clone().requires_grad_()])
    torch.library.opcheck(op.default, (params, v, 2, 8))
    torch.library.opcheck(op.default, (params[:, :, 1:, ::2], v[:, :, 1:, ::2], 2, 8))   # strided views
    torch.library.opcheck(torch.ops.genkernels.logistic_mixture_log_prob_backward.default,
                          (torch.randn(2, 3, 4, dtype=torch.float64), params, v, 2, 8))
    torch._dynamo.reset()
    f = torch.compile(lambda p: genkernels.ops.logistic_mixture_log_prob(p, v, 2, 8).sum(), fullgraph=True,
                      backend="eager")
    torch.testing.assert_close(f(params), op(params, v, 2, 8).sum())
    big, vb = _problem((8, 3, 5, 16, 16, 256, 1.0), torch.float32)
    vb = vb.float()
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            results.append((op(big, vb, 5, 256), torch.ops.genkernels.logistic_mixture_log_prob_backward(
                torch.ones(8, 16, 16), big, vb, 5, 256)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("call, error, match", [
    (lambda: genkernels.ops.logistic_mixture_log_prob(torch.randn(1, 9, 2, 2), torch.zeros(1, 1, 2, 2), 2),
     ValueError, r"params must be \(1, 6, 2, 2\)"),
    (lambda: genkernels.ops.logistic_mixture_log_prob(torch.randn(1, 6, 2, 2), torch.full((1, 1, 2, 2), 256.0), 2),
     ValueError, r"integer levels in \[0, 255\]"),
    (lambda: genkernels.ops.logistic_mixture_log_prob(torch.randn(1, 6, 2, 2), torch.full((1, 1, 2, 2), 0.5), 2),
     ValueError, "integer levels"),
    (lambda: genkernels.ops.logistic_mixture_log_prob(torch.randn(1, 6, 2, 2), torch.zeros(1, 1, 2, 2), 0),
     ValueError, "mixtures"),
    (lambda: genkernels.ops.logistic_mixture_log_prob(torch.randn(1, 6, 2, 2), torch.zeros(1, 1, 2, 2), 2, 1),
     ValueError, "levels"),
    (lambda: genkernels.ops.logistic_mixture_log_prob(torch.ones(1, 6, 2, 2, dtype=torch.int64),
                                                      torch.zeros(1, 1, 2, 2), 2), TypeError, "params"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@needs("cpu")
def test_cpu_kernel_rejects_bad_arguments_without_crashing():
    op = torch.ops.genkernels.logistic_mixture_log_prob
    with pytest.raises(ValueError, match="must hold K"):
        op(torch.randn(1, 7, 2, 2), torch.zeros(1, 1, 2, 2), 2, 256)
    with pytest.raises(ValueError, match="share B, H and W"):
        op(torch.randn(1, 6, 2, 3), torch.zeros(1, 1, 2, 2), 2, 256)
    with pytest.raises(TypeError, match="v must have params' dtype"):
        op(torch.randn(1, 6, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.float64), 2, 256)
    with pytest.raises(ValueError, match="grad must be"):
        torch.ops.genkernels.logistic_mixture_log_prob_backward(torch.randn(1, 2), torch.randn(1, 6, 2, 2),
                                                                torch.zeros(1, 1, 2, 2), 2, 256)
