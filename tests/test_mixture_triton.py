"""The discretised logistic mixture's Triton kernels (genkernels/autoregressive/mixture_triton.py,
ops genkernels::logistic_mixture_log_prob_triton and its backward) against the definition,
mixture_reference.log_prob differentiated by autograd: no images, one pixel, one channel and
one component, three channels and five components, binary levels (every value an end bin),
256 levels, log-scales at and below the clamp (the bound passes the gradient, below it none
flows), extreme means and scales, strided and expanded inputs; fp64, fp32 and bf16; the
kernels' log expm1, e / expm1(e) and softplus to a few ulps; opcheck; torch.compile.

fp64 is compared at 1e-10, not TOL's 1e-12: the reference's autograd differentiates log
expm1(u - d) through 1 / (1 - exp(-(u - d))), large for wide components, and loses about
1e-12 to the cancellation with the sigmoids (4.5e-13 off an mpmath derivative where the
kernel, which never forms that term, is within 2e-18)."""

import pytest
import torch
from helpers import DEVICE, needs
from tolerances import TOL

from genkernels.autoregressive import mixture_reference as R

pytestmark = needs("triton")
triton = pytest.importorskip("triton")
tl = triton.language

from genkernels.autoregressive import mixture_triton  # noqa: E402  (registers the ops)

FP64_TOL = dict(rtol=1e-10, atol=1e-10)


def _log_scales(params: torch.Tensor, channels: int, mixtures: int) -> torch.Tensor:
    """The raw log-scale block l (B, K C, H, W) of params (a view)."""
    k, c = mixtures, channels
    return params[:, k + k * c:k + 2 * k * c]


def _problem(batch, channels, size, mixtures, levels, dtype=torch.float64, seed=0):
    """params (B, P, H, W) with a log-scale at the clamp (-7) and one below it in every
    pixel, v (B, C, H, W) random levels with both end bins present, grad (B, H, W)."""
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(batch, R.param_count(channels, mixtures), *size, generator=g, dtype=torch.float64)
    log_scales = _log_scales(params, channels, mixtures)
    log_scales[:, 0] = R.LOG_SCALE_MIN
    log_scales[:, -1] = R.LOG_SCALE_MIN - 2.0
    v = torch.randint(0, levels, (batch, channels, *size), generator=g).double()
    if v.numel():
        v[:, :, 0, 0] = 0
        v[:, :, -1, -1] = levels - 1
    grad = torch.randn(batch, *size, generator=g, dtype=torch.float64)
    return params.to(DEVICE, dtype), v.to(DEVICE), grad.to(DEVICE, dtype)


def _reference(params, v, mixtures, levels, grad):
    """The definition's log-likelihood and grad_params in fp64 on the same (rounded) inputs."""
    leaf = params.detach().double().requires_grad_()
    out = R.log_prob(leaf, v.double(), mixtures, levels)
    (grad_params,) = torch.autograd.grad(out, leaf, grad.double()) if out.numel() else (torch.zeros_like(leaf),)
    return out.detach(), grad_params


def _triton(params, v, mixtures, levels, grad):
    """The op's log-likelihood and the gradient its autograd (the backward op) gives."""
    leaf = params.detach().clone().requires_grad_()
    out = torch.ops.genkernels.logistic_mixture_log_prob_triton(leaf, v, mixtures, levels)
    (grad_params,) = torch.autograd.grad(out, leaf, grad) if out.numel() else (torch.zeros_like(leaf),)
    return out.detach(), grad_params


@triton.jit
def _scalar_functions_kernel(E, LOG_EXPM1, E_OVER_EXPM1, SOFTPLUS, N, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    e = tl.load(E + i, mask=i < N, other=1.0)
    tl.store(LOG_EXPM1 + i, mixture_triton._log_expm1(e), mask=i < N)
    tl.store(E_OVER_EXPM1 + i, mixture_triton._e_over_expm1(e), mask=i < N)
    tl.store(SOFTPLUS + i, mixture_triton._softplus(e - 30.0), mask=i < N)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scalar_functions_to_a_few_ulps(dtype):
    """The kernels' log expm1(e), e / expm1(e) (series below 0.5, closed forms above) and
    softplus (Goldberg's log1p) against torch's fp64 log(expm1), expm1 and logaddexp from
    e = 1e-12 (the bin of a component far wider than the range) to 2000 (far narrower)."""
    e = torch.cat([torch.logspace(-12, 3.3, 200, dtype=torch.float64), torch.linspace(0.49, 0.51, 9).double()])
    e = e.to(dtype).double()
    got = [torch.empty(e.shape, dtype=dtype, device=DEVICE) for _ in range(3)]
    _scalar_functions_kernel[(1,)](e.to(DEVICE, dtype), *got, e.numel(), BLOCK=256)
    want = [torch.log(torch.expm1(e)).where(e < 700, e), e / torch.expm1(e),
            torch.logaddexp(e - 30.0, torch.zeros_like(e))]
    tol = dict(rtol=1e-15, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    for name, a, b in zip(("log_expm1", "e_over_expm1", "softplus"), got, want):
        torch.testing.assert_close(a.double().cpu(), b, **tol, msg=name)


# (batch, C, (H, W), K, L, dtype)
CASES = [
    (0, 3, (2, 3), 2, 256, torch.float64),        # no images
    (1, 1, (1, 1), 1, 256, torch.float64),        # one pixel, one channel, one component
    (2, 3, (3, 4), 5, 256, torch.float64),
    (2, 2, (3, 3), 3, 2, torch.float64),          # binary: every value an end bin
    (1, 3, (2, 5), 3, 256, torch.float32),
    (3, 1, (1, 4), 2, 16, torch.float32),
]


@pytest.mark.parametrize("batch, channels, size, mixtures, levels, dtype", CASES)
def test_forward_and_gradients_equal_the_definition(batch, channels, size, mixtures, levels, dtype):
    """Log-likelihood and grad_params against autograd through the reference (fp32 against
    the fp64 reference at TOL); a log-scale below the clamp gets exactly no gradient."""
    params, v, grad = _problem(batch, channels, size, mixtures, levels, dtype)
    want, want_grad = _reference(params, v, mixtures, levels, grad)
    got, got_grad = _triton(params, v, mixtures, levels, grad)
    tol = FP64_TOL if dtype == torch.float64 else TOL[dtype]
    assert got.dtype == got_grad.dtype == dtype
    assert got.shape == (batch, *size) and got_grad.shape == params.shape
    torch.testing.assert_close(got.double(), want, **tol)
    torch.testing.assert_close(got_grad.double(), want_grad, **tol)
    below = _log_scales(got_grad, channels, mixtures)[:, -1]
    assert torch.equal(below, torch.zeros_like(below))


def test_extreme_parameters():
    """Means at +-30 (every bin deep in a tail), log-scales -12 (clamped to -7: a component
    far narrower than a bin) and +6 (far wider than the range): finite values and gradients,
    equal to the definition's in fp64. In fp32 the log-likelihoods reach -3e4 and the
    responsibilities exp(z_k - out) inherit their rounding (about 5e-4 relative in grad_params):
    the kernel's error against the fp64 definition at most twice PyTorch's own evaluation of
    the reference in fp32 (tests/tolerances.py's rule for low precision)."""
    channels, mixtures, levels = 3, 4, 256
    params, v, grad = _problem(2, channels, (3, 4), mixtures, levels)
    k, c = mixtures, channels
    means = params[:, k:k + k * c]
    means[:, 0::3] = 30.0
    means[:, 1::3] = -30.0
    log_scales = _log_scales(params, channels, mixtures)
    log_scales[:, 0::2] = -12.0
    log_scales[:, 1::2] = 6.0
    for dtype in (torch.float64, torch.float32):
        params, grad = params.to(dtype), grad.to(dtype)
        want, want_grad = _reference(params, v, mixtures, levels, grad)
        got, got_grad = _triton(params, v, mixtures, levels, grad)
        assert bool(torch.isfinite(got).all()) and bool(torch.isfinite(got_grad).all()), dtype
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, **FP64_TOL)
            torch.testing.assert_close(got_grad, want_grad, **FP64_TOL)
            continue
        leaf = params.detach().clone().requires_grad_()
        torch_out = R.log_prob(leaf, v, mixtures, levels)
        (torch_grad,) = torch.autograd.grad(torch_out, leaf, grad)
        for name, a, b, e in (("out", got, torch_out, want), ("grad", got_grad, torch_grad, want_grad)):
            assert (a.double() - e).abs().max() <= 2 * (b.detach().double() - e).abs().max(), name


def test_strided_and_expanded_inputs():
    """A channels-last, sliced view of params, v with its rows and columns swapped and the
    expanded gradient of out.sum() (stride 0) are read in place; grad_params is contiguous."""
    channels, mixtures, levels = 2, 3, 256
    batch, h, w = 2, 3, 4
    count = R.param_count(channels, mixtures)
    g = torch.Generator().manual_seed(2)
    storage = torch.randn(batch, h, w + 1, count + 2, generator=g, dtype=torch.float64)
    params = storage[:, :, 1:, 1:-1].permute(0, 3, 1, 2)
    v = torch.randint(0, levels, (batch, w, h, channels), generator=g).double().permute(0, 3, 2, 1)
    assert not params.is_contiguous() and not v.is_contiguous()
    params, v = params.to(DEVICE), v.to(DEVICE)
    ones = torch.ones((1, 1, 1), dtype=torch.float64, device=DEVICE).expand(batch, h, w)
    want, want_grad = _reference(params, v, mixtures, levels, ones)
    leaf = params.detach().requires_grad_()
    got = torch.ops.genkernels.logistic_mixture_log_prob_triton(leaf, v, mixtures, levels)
    got.sum().backward()
    torch.testing.assert_close(got.detach(), want, **FP64_TOL)
    torch.testing.assert_close(leaf.grad, want_grad, **FP64_TOL)
    assert leaf.grad.is_contiguous()


def test_bf16_within_one_rounding():
    """bf16 params (fp32 arithmetic, one rounding of each result): the log-likelihood and
    grad_params within a bf16 ulp of the exact (fp64) values on the same rounded inputs (the
    interpreter truncates to bf16, a GPU rounds to nearest),
    and at most twice as far from them as PyTorch's own evaluation of the reference in bf16
    (tests/tolerances.py) -- which, with log-scales at the clamp, is far off (infinite
    log-likelihoods, NaN gradients: counted as infinitely far)."""
    channels, mixtures, levels = 3, 3, 256
    params, v, grad = _problem(2, channels, (3, 4), mixtures, levels, torch.bfloat16)
    exact, exact_grad = _reference(params, v, mixtures, levels, grad)
    leaf = params.detach().clone().requires_grad_()
    torch_out = R.log_prob(leaf, v, mixtures, levels)
    (torch_grad,) = torch.autograd.grad(torch_out, leaf, grad)
    got, got_grad = _triton(params, v, mixtures, levels, grad)
    assert got.dtype == got_grad.dtype == torch.bfloat16
    for name, a, b, e in (("out", got, torch_out, exact), ("grad", got_grad, torch_grad, exact_grad)):
        torch.testing.assert_close(a.double(), e, rtol=2 ** -7, atol=1e-5, msg=name)
        torch_err = (b.detach().double() - e).abs().nan_to_num(nan=float("inf")).max()
        assert (a.double() - e).abs().max() <= 2 * torch_err, name


def test_ops_pass_opcheck():
    params, v, grad = _problem(2, 2, (2, 3), 2, 256, torch.float32)
    torch.library.opcheck(torch.ops.genkernels.logistic_mixture_log_prob_triton.default, (params, v, 2, 256))
    torch.library.opcheck(torch.ops.genkernels.logistic_mixture_log_prob_triton.default,
                          (params.clone().requires_grad_(), v, 2, 256))
    torch.library.opcheck(torch.ops.genkernels.logistic_mixture_log_prob_backward_triton.default,
                          (grad, params, v, 2, 256))


def test_compiles_fullgraph():
    params, v, _ = _problem(2, 3, (2, 3), 2, 256, torch.float32)
    params.requires_grad_()

    def loss(params):
        return -torch.ops.genkernels.logistic_mixture_log_prob_triton(params, v, 2, 256).sum()

    torch._dynamo.reset()
    got = torch.compile(loss, fullgraph=True, backend="eager")(params)
    got.backward()
    grad = params.grad.clone()
    params.grad = None
    want = loss(params)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, params.grad)
