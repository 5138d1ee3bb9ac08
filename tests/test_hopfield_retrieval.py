"""Continuous modern Hopfield retrieval: the cpu (csrc/cpu/hopfield_retrieval.cpp) and
triton (genkernels/hopfield/retrieval_triton.py, interpreted here) backends against the reference
(genkernels/hopfield/retrieval_reference.py) over odd and edge shapes; per-row stopping;
stability at large beta; the retrieval property; gradients (gradcheck, and each
backend's backward against autograd through the reference); opcheck; torch.compile;
the HopfieldRetrieval layer."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import CPU_BACKENDS as _AVAILABLE  # noqa: E402
from helpers import HAS_CPU, needs_cpu  # noqa: E402
from tolerances import TOL
from torch import nn

import genkernels
from genkernels import HopfieldRetrieval, backends, ops
from genkernels.hopfield import retrieval_reference as reference

# the cpu backend twice: a shared pattern set runs in tiles of rows through at::mm
# (GENKERNELS_CPU_GEMM=1, the default from 8 rows on) or row by row (=0)
BACKENDS = (["cpu-rows", "cpu-tiles"] if HAS_CPU else []) + (["triton"] if "triton" in _AVAILABLE else [])
ALL_BACKENDS = ["reference", *BACKENDS]


@pytest.fixture
def backend(request, monkeypatch):
    """The backend name an op takes, with the cpu path of the parameter forced."""
    name = request.param
    if name.startswith("cpu-"):
        monkeypatch.setenv("GENKERNELS_CPU_GEMM", "1" if name == "cpu-tiles" else "0")
        return "cpu"
    return name


def _inputs(b, p, d, shared, dtype=torch.float64, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(b, d, generator=g, dtype=torch.float64) * scale
    stored = torch.randn(1 if shared else b, p, d, generator=g, dtype=torch.float64) * scale
    return queries.to(dtype), stored.to(dtype)


def _run(queries, stored, beta, max_steps, tol, backend):
    return ops.hopfield_retrieval(queries, stored, beta, max_steps, tol, backend, return_steps=True)


# ------------------------------------------------------------ backends vs reference
# (B, P, D): single row / pattern / feature, P not a multiple of any tile (Triton tiles
# P by 16..128), D not a power of two
SHAPES = [(1, 1, 1), (1, 5, 3), (7, 1, 4), (6, 37, 19), (3, 130, 33), (2, 17, 70)]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("b,p,d", SHAPES)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("max_steps", [1, 4])
def test_fp64_equals_reference(backend, b, p, d, shared, max_steps):
    queries, stored = _inputs(b, p, d, shared)
    want, want_steps = _run(queries, stored, 1.5, max_steps, 1e-3, "reference")
    got, steps = _run(queries, stored, 1.5, max_steps, 1e-3, backend)
    assert got.dtype == torch.float64 and got.shape == (b, d)
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    assert torch.equal(steps, want_steps)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("b,p,d", SHAPES)
@pytest.mark.parametrize("shared", [True, False])
def test_fp32_error_is_bounded_by_pytorchs_own(backend, b, p, d, shared):
    """fp32 against the exact (fp64) result: at most twice the reference's own fp32 error,
    plus the table's atol (flash-attention's rule, STYLE.md)."""
    queries, stored = _inputs(b, p, d, shared)
    exact, exact_steps = _run(queries, stored, 2.0, 3, 0.0, "reference")
    ref32, _ = _run(queries.float(), stored.float(), 2.0, 3, 0.0, "reference")
    got, steps = _run(queries.float(), stored.float(), 2.0, 3, 0.0, backend)
    assert torch.equal(steps, exact_steps)
    assert got.dtype == torch.float32
    ref_err = (ref32.double() - exact).abs().max()
    err = (got.double() - exact).abs().max()
    assert err <= 2 * ref_err + TOL[torch.float32]["atol"], (err, ref_err)
    torch.testing.assert_close(got, ref32, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_non_contiguous_inputs(backend):
    queries, stored = _inputs(5, 23, 9, shared=False)
    q_t = queries.T.contiguous().T                      # column-major
    x_t = stored.transpose(0, 1).contiguous().transpose(0, 1)
    assert not q_t.is_contiguous() and not x_t.is_contiguous()
    want, _ = _run(queries, stored, 1.0, 3, 0.0, "reference")
    got, _ = _run(q_t, x_t, 1.0, 3, 0.0, backend)
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_one_step_is_softmax_attention(backend):
    """max_steps=1 is one attention read: softmax(beta q X^T) X, here through PyTorch's
    scaled_dot_product_attention (an implementation independent of the reference)."""
    queries, stored = _inputs(6, 41, 12, shared=False)
    got = ops.hopfield_retrieval(queries, stored, 3.0, 1, 0.0, backend)
    want = F.scaled_dot_product_attention(queries[:, None, :], stored, stored, scale=3.0)[:, 0]
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_shared_patterns_equal_repeated_patterns(backend):
    queries, stored = _inputs(4, 19, 7, shared=True)
    shared = ops.hopfield_retrieval(queries, stored, 2.0, 5, 0.0, backend)
    repeated = ops.hopfield_retrieval(queries, stored.expand(4, -1, -1), 2.0, 5, 0.0, backend)
    torch.testing.assert_close(shared, repeated, **TOL[torch.float64])


# ----------------------------------------------------------------- per-row stopping
def _stopping_case(dtype=torch.float64):
    """Two stored patterns e0, e1 (shared), beta = 4. Row 0 sits on the symmetric fixed
    point (0.5, 0.5): its first step changes nothing. Rows 1-3 start off it and need
    different numbers of steps to settle."""
    stored = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=dtype)
    queries = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.6, 0.4], [0.52, 0.48]], dtype=dtype)
    return queries, stored, 4.0


def _iterate_each_row_alone(queries, stored, beta, max_steps, tol):
    """Expected result and steps, one row at a time, from the update written out."""
    rows, steps = [], []
    for xi in queries.double():
        t = 0
        while t < max_steps:
            a = torch.softmax(beta * (stored[0].double() @ xi), dim=0)
            new = a @ stored[0].double()
            delta = (new - xi).abs().max()
            xi, t = new, t + 1
            if not delta > tol:
                break
        rows.append(xi)
        steps.append(t)
    return torch.stack(rows), torch.tensor(steps)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_stop_independently(backend, dtype):
    queries, stored, beta = _stopping_case(dtype)
    want, want_steps = _iterate_each_row_alone(queries, stored, beta, 50, 1e-4)
    # the case does what it says: one row stops at once, the others later and apart
    assert want_steps[0] == 1 and want_steps[1:].min() > 2 and len(set(want_steps[1:].tolist())) == 3
    got, steps = _run(queries, stored, beta, 50, 1e-4, backend)
    assert steps.dtype == torch.int64 and torch.equal(steps, want_steps)
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_max_steps_caps_every_row(backend):
    queries, stored, beta = _stopping_case()
    want, want_steps = _iterate_each_row_alone(queries, stored, beta, 3, 1e-4)
    got, steps = _run(queries, stored, beta, 3, 1e-4, backend)
    assert steps.tolist() == [1, 3, 3, 3] and torch.equal(steps, want_steps)
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_tol_zero_runs_until_an_exact_fixed_point_or_max_steps(backend):
    queries, stored, beta = _stopping_case()
    _, steps = _run(queries, stored, beta, 7, 0.0, backend)
    assert steps.tolist() == [1, 7, 7, 7]


# ---------------------------------------------------------------- numerics, retrieval
@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_beta_does_not_overflow(backend, dtype):
    """beta = 1e3 with scores of order 10: exp(beta * score) would overflow fp64, let
    alone fp32; the max-subtracted softmax picks the best-scoring pattern."""
    queries, stored = _inputs(5, 33, 16, shared=True, dtype=dtype, scale=1.0, seed=3)
    got, steps = _run(queries, stored, 1e3, 1, 0.0, backend)
    assert bool(torch.isfinite(got).all()) and steps.tolist() == [1] * 5
    best = (stored[0].double() @ queries.double().T).argmax(dim=0)
    torch.testing.assert_close(got, stored[0, best], **TOL[dtype])
    got3, _ = _run(queries, stored, 1e3, 3, 1e-4, backend)
    assert bool(torch.isfinite(got3).all())


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_one_step_retrieves_the_nearest_stored_pattern(backend):
    """The classic property: patterns far apart (random +-1 / sqrt(D)), queries = a stored
    pattern plus noise, large beta -> one step returns that stored pattern."""
    g = torch.Generator().manual_seed(11)
    p, d = 40, 64
    patterns = (torch.randint(0, 2, (p, d), generator=g) * 2 - 1).float() / math.sqrt(d)
    which = torch.randint(0, p, (25,), generator=g)
    noisy = patterns[which] + 0.1 * torch.randn(25, d, generator=g) / math.sqrt(d)
    nearest = torch.cdist(noisy, patterns).argmin(dim=1)
    assert torch.equal(nearest, which)
    got = ops.hopfield_retrieval(noisy, patterns[None], 40.0, 1, 0.0, backend)
    torch.testing.assert_close(got, patterns[which], rtol=0, atol=1e-3)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_empty_and_featureless(backend):
    queries, stored = _inputs(0, 4, 3, shared=True)
    got, steps = _run(queries, stored, 1.0, 3, 0.0, backend)
    assert got.shape == (0, 3) and steps.shape == (0,)
    queries, stored = _inputs(3, 4, 0, shared=False)
    got, steps = _run(queries, stored, 1.0, 3, 0.0, backend)
    assert got.shape == (3, 0) and steps.tolist() == [1, 1, 1]


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_half_precision_input_returns_its_dtype(backend):
    queries, stored = _inputs(3, 9, 8, shared=True)
    got = ops.hopfield_retrieval(queries.bfloat16(), stored.bfloat16(), 1.0, 2, 0.0, backend)
    want = ops.hopfield_retrieval(queries.bfloat16().float(), stored.bfloat16().float(), 1.0, 2,
                                  0.0, "reference")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0, atol=2 ** -8)


def test_finite_values_whose_sum_overflows_are_accepted():
    """The finiteness check sums first; an overflowing sum of finite values must not be
    mistaken for an Inf."""
    queries = torch.zeros(2, 3)  # uniform weights: the mean of the patterns, 3e38
    stored = torch.full((1, 4, 3), 3e38)
    assert not bool(torch.isfinite(stored.sum()))
    got = ops.hopfield_retrieval(queries, stored, 1.0, 1, 0.0, "reference")
    torch.testing.assert_close(got, torch.full((2, 3), 3e38))


# ------------------------------------------------------------------------ gradients
def _grad_inputs(shared):
    # two rows (each with its own patterns when not shared), 4 patterns of 3 features: small,
    # as gradcheck runs the interpreted kernel twice per input element
    queries, stored = _inputs(2, 4, 3, shared=shared, scale=0.7, seed=5)
    return (queries.requires_grad_(), stored.requires_grad_(),
            torch.tensor(1.7, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck(backend, shared):
    def fn(q, x, beta):
        return ops.hopfield_retrieval(q, x, beta, 3, 0.0, backend)

    assert torch.autograd.gradcheck(fn, _grad_inputs(shared))


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_gradcheck_through_rows_that_stop_at_different_steps(backend):
    """Row 0 stops after its first step (a fixed point: a perturbation of 1e-6 keeps its
    change far below tol), the others run all three steps."""
    queries, stored, _ = _stopping_case()
    queries = torch.cat([queries[:1], queries[2:]]).requires_grad_()
    stored = stored.clone().requires_grad_()
    beta = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    _, steps = _run(queries, stored, beta, 3, 1e-3, backend)
    assert steps.tolist() == [1, 3, 3]

    def fn(q, x, b):
        return ops.hopfield_retrieval(q, x, b, 3, 1e-3, backend)

    assert torch.autograd.gradcheck(fn, (queries, stored, beta))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("shared", [True, False])
def test_backward_equals_autograd_through_the_reference(backend, shared):
    queries, stored = _inputs(6, 29, 11, shared=shared, scale=0.8, seed=7)
    queries[0] = stored[0].mean(dim=0)  # some rows stop early, others do not
    grad = torch.randn(6, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = {}
    for name in ("reference", backend):
        q, x = queries.clone().requires_grad_(), stored.clone().requires_grad_()
        beta = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
        out, steps = _run(q, x, beta, 6, 1e-3, name)
        results[name] = (steps, *torch.autograd.grad(out, (q, x, beta), grad))
    assert len(set(results["reference"][0].tolist())) > 1
    for want, got in zip(results["reference"], results[backend]):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


def test_explicit_vjp_equals_autograd():
    """The written-out VJP (used by the triton backward, followed by the cpu kernel)."""
    queries, stored = _inputs(5, 13, 6, shared=True, scale=0.9, seed=4)
    beta = torch.tensor(3.0, dtype=torch.float64)
    q, x, b = (t.clone().requires_grad_() for t in (queries, stored, beta))
    out, steps = reference.hopfield_retrieval(q, x, b, 5, 1e-2)
    assert len(set(steps.tolist())) > 1
    grad = torch.randn_like(out)
    want = torch.autograd.grad(out, (q, x, b), grad)
    got = reference.hopfield_retrieval_backward(grad, queries, stored, beta, steps, 5)
    for w, gt in zip(want, got):
        torch.testing.assert_close(gt, w, **TOL[torch.float64])


def test_gradient_only_where_asked():
    queries, stored = _inputs(3, 5, 4, shared=True)
    q = queries.clone().requires_grad_()
    out = ops.hopfield_retrieval(q, stored, 1.0, 2, 0.0)
    (gq,) = torch.autograd.grad(out.sum(), (q,))
    assert gq.shape == q.shape and stored.grad is None


# ------------------------------------------------------------------- opcheck, compile
@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_cpu_ops(dtype):
    for shared in (True, False):
        queries, stored = _inputs(4, 9, 5, shared=shared, dtype=dtype)
        beta = torch.tensor(1.5, dtype=dtype)
        torch.library.opcheck(torch.ops.genkernels.hopfield_retrieval.default,
                              (queries, stored, beta, 3, 1e-3))
        torch.library.opcheck(torch.ops.genkernels.hopfield_retrieval.default,
                              (queries.requires_grad_(), stored.requires_grad_(),
                               beta.requires_grad_(), 3, 1e-3))
        steps = torch.tensor([3, 1, 2, 3])
        torch.library.opcheck(torch.ops.genkernels.hopfield_retrieval_backward.default,
                              (torch.randn(4, 5, dtype=dtype), queries.detach(), stored.detach(),
                               beta.detach(), steps))


@pytest.mark.skipif("triton" not in _AVAILABLE, reason="triton backend unavailable")
def test_opcheck_triton_op():
    ops.hopfield_retrieval(*_inputs(1, 2, 2, shared=True), 1.0, 1, 0.0, "triton")  # registers
    queries, stored = _inputs(3, 7, 5, shared=True)
    beta = torch.tensor(1.5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.genkernels.hopfield_retrieval_triton.default,
                          (queries, stored, beta, 2, 1e-3))
    torch.library.opcheck(torch.ops.genkernels.hopfield_retrieval_triton.default,
                          (queries.requires_grad_(), stored.requires_grad_(),
                           beta.requires_grad_(), 2, 1e-3))


@needs_cpu
def test_compile_fullgraph_op_and_layer():
    torch._dynamo.reset()
    queries, stored = _inputs(5, 17, 8, shared=True, dtype=torch.float32)
    layer = HopfieldRetrieval(beta=2.0, learnable_beta=True, max_steps=3, tol=0.0)

    @torch.compile(fullgraph=True)
    def retrieve(q, x):
        return ops.hopfield_retrieval(q, x, 2.0, 3, 1e-4, return_steps=True)

    got, steps = retrieve(queries, stored)
    want, want_steps = _run(queries, stored, 2.0, 3, 1e-4, "cpu")
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    assert torch.equal(steps, want_steps)

    compiled = torch.compile(layer, fullgraph=True)
    q = queries.clone().requires_grad_()
    out = compiled(q, stored)
    out.square().sum().backward()
    q_eager = queries.clone().requires_grad_()
    grad_beta = layer.log_beta.grad.clone()
    layer.log_beta.grad = None
    layer(q_eager, stored).square().sum().backward()
    torch.testing.assert_close(out, layer(queries, stored), **TOL[torch.float32])
    torch.testing.assert_close(q.grad, q_eager.grad, **TOL[torch.float32])
    torch.testing.assert_close(grad_beta, layer.log_beta.grad, **TOL[torch.float32])


# ---------------------------------------------------------------------------- layer
class _Memory(nn.Module):
    """Projects inputs to queries and returns them with a learnable shared memory."""

    def __init__(self, d_in, p, d):
        super().__init__()
        self.proj = nn.Linear(d_in, d)
        self.patterns = nn.Parameter(torch.randn(1, p, d) * 0.5)

    def forward(self, x):
        return self.proj(x), self.patterns


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
def test_layer_trains_in_sequential(backend):
    # 16 rows, 15 Adam steps: the loss falls to about a fifth (the interpreted Triton kernels
    # run one program per row)
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(_Memory(6, 8, 4),
                          HopfieldRetrieval(beta=1.0, learnable_beta=True, max_steps=2,
                                            backend=backend),
                          nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    beta_before = float(model[1].beta.detach())
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    beta_after = float(model[1].beta.detach())
    assert beta_after != beta_before and beta_after > 0


def test_layer_parameters_buffers_and_state_dict():
    fixed = HopfieldRetrieval(beta=3.0, max_steps=2)
    assert list(fixed.parameters()) == [] and "log_beta" in dict(fixed.named_buffers())
    learn = HopfieldRetrieval(beta=3.0, learnable_beta=True)
    assert [n for n, _ in learn.named_parameters()] == ["log_beta"]
    torch.testing.assert_close(learn.beta, torch.tensor(3.0))
    other = HopfieldRetrieval(beta=0.5, learnable_beta=True)
    other.load_state_dict(learn.state_dict())
    torch.testing.assert_close(other.beta, torch.tensor(3.0))
    assert "beta=3" in repr(learn) and "max_steps=2" in repr(fixed)
    queries, stored = _inputs(4, 6, 5, shared=False, dtype=torch.float32)
    torch.testing.assert_close(fixed(queries, stored), fixed((queries, stored)))
    torch.testing.assert_close(fixed(queries, stored),
                               ops.hopfield_retrieval(queries, stored, 3.0, 2, 1e-4, "reference"))


def test_layer_is_exported():
    assert genkernels.HopfieldRetrieval is HopfieldRetrieval
    assert "HopfieldRetrieval" in genkernels.__all__
    assert "hopfield_retrieval" in genkernels.ops.__all__


def test_cuda_tensors_resolve_to_the_fused_kernel():
    assert backends.resolve("hopfield_retrieval", torch.device("cuda")) == "triton"


# ------------------------------------------------------------------------ bad input
Q, X = _inputs(3, 4, 5, shared=False, dtype=torch.float32)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: ops.hopfield_retrieval(Q[0], X), ValueError, r"queries must be 2-D; got shape \(5,\)"),
    (lambda: ops.hopfield_retrieval(Q, X[0]), ValueError, r"stored must be 3-D; got shape \(4, 5\)"),
    (lambda: ops.hopfield_retrieval(Q, X[:, :, :4]), ValueError,
     "stored has 4 features but queries has 5"),
    (lambda: ops.hopfield_retrieval(Q, X[:2]), ValueError,
     r"stored must have a leading dimension of 3 .* or 1 .*; got shape \(2, 4, 5\)"),
    (lambda: ops.hopfield_retrieval(Q, X[:, :0]), ValueError, "stored must hold at least one pattern"),
    (lambda: ops.hopfield_retrieval(Q.int(), X), TypeError, "queries must be a floating-point"),
    (lambda: ops.hopfield_retrieval(Q, X.double()), TypeError,
     "stored has dtype torch.float64 but queries has torch.float32"),
    (lambda: ops.hopfield_retrieval(Q, X.to("meta")), ValueError, "stored is on meta"),
    (lambda: ops.hopfield_retrieval(Q, X, 0.0), ValueError, "beta must be > 0; got 0.0"),
    (lambda: ops.hopfield_retrieval(Q, X, -1), ValueError, "beta must be > 0"),
    (lambda: ops.hopfield_retrieval(Q, X, float("inf")), ValueError, "beta must be > 0 and finite"),
    (lambda: ops.hopfield_retrieval(Q, X, torch.tensor(-2.0)), ValueError, "beta must be > 0"),
    (lambda: ops.hopfield_retrieval(Q, X, torch.tensor([1.0, 2.0])), ValueError,
     "beta must hold one number"),
    (lambda: ops.hopfield_retrieval(Q, X, torch.tensor(2)), TypeError, "beta must be a float"),
    (lambda: ops.hopfield_retrieval(Q, X, "2"), TypeError, "beta must be a positive number"),
    (lambda: ops.hopfield_retrieval(Q, X, 1.0, 0), ValueError, r"max_steps must be in \[1, inf\]"),
    (lambda: ops.hopfield_retrieval(Q, X, 1.0, 2.5), TypeError, "max_steps must be an integer"),
    (lambda: ops.hopfield_retrieval(Q, X, 1.0, 2, -1e-3), ValueError, "tol must be >= 0"),
    (lambda: ops.hopfield_retrieval(Q, X, 1.0, 2, float("nan")), ValueError, "tol must be >= 0"),
    (lambda: ops.hopfield_retrieval(Q, X, 1.0, 2, None), TypeError, "tol must be a number"),
    (lambda: ops.hopfield_retrieval(Q * float("nan"), X), ValueError, "queries contains NaN or Inf"),
    (lambda: ops.hopfield_retrieval(Q, X * float("inf")), ValueError, "stored contains NaN or Inf"),
    (lambda: ops.hopfield_retrieval(Q, X, backend="cuda"), backends.BackendUnavailableError,
     "hopfield_retrieval has no cuda backend"),
    (lambda: HopfieldRetrieval(beta=0.0), ValueError, "beta must be > 0"),
    (lambda: HopfieldRetrieval(max_steps=0), ValueError, "max_steps must be in"),
    (lambda: HopfieldRetrieval(tol=-1.0), ValueError, "tol must be >= 0"),
    (lambda: HopfieldRetrieval()(Q), TypeError, r"takes \(queries, stored\)"),
])
def test_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,p,d,shared", [(1, 1, 1, True), (7, 37, 19, True), (6, 130, 70, False),
                                          (300, 1000, 64, True), (64, 257, 256, False)])
def test_gpu_triton_equals_reference(dtype, b, p, d, shared):
    queries, stored = _inputs(b, p, d, shared, dtype=dtype)
    want, want_steps = _run(queries, stored, 1.5, 4, 1e-3, "reference")
    got, steps = _run(queries.cuda(), stored.cuda(), 1.5, 4, 1e-3, "triton")
    torch.testing.assert_close(got.cpu(), want, **TOL[dtype])
    assert torch.equal(steps.cpu(), want_steps)


@pytest.mark.gpu
def test_gpu_rows_stop_independently_and_gradients_match():
    queries, stored, beta = _stopping_case()
    want, want_steps = _iterate_each_row_alone(queries, stored, beta, 50, 1e-4)
    got, steps = _run(queries.cuda(), stored.cuda(), beta, 50, 1e-4, "triton")
    assert torch.equal(steps.cpu(), want_steps)
    torch.testing.assert_close(got.cpu(), want, **TOL[torch.float64])
    queries, stored = _inputs(6, 29, 11, shared=True, scale=0.8, seed=7)
    grad = torch.randn(6, 11, dtype=torch.float64)
    results = []
    for device, name in (("cpu", "reference"), ("cuda", "triton")):
        q = queries.to(device).requires_grad_()
        x = stored.to(device).requires_grad_()
        b = torch.tensor(2.5, dtype=torch.float64, device=device, requires_grad=True)
        out = ops.hopfield_retrieval(q, x, b, 6, 1e-3, name)
        results.append([t.cpu() for t in torch.autograd.grad(out, (q, x, b), grad.to(device))])
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.gpu
def test_gpu_large_beta_and_half_precision():
    queries, stored = _inputs(50, 300, 32, shared=True, dtype=torch.float32, scale=1.0, seed=3)
    got = ops.hopfield_retrieval(queries.cuda(), stored.cuda(), 1e3, 1, 0.0, "triton").cpu()
    best = (stored[0] @ queries.T).argmax(dim=0)
    torch.testing.assert_close(got, stored[0, best])
    half = ops.hopfield_retrieval(queries.cuda().half(), stored.cuda().half(), 0.5, 3, 0.0, "triton")
    want = ops.hopfield_retrieval(queries.half().float(), stored.half().float(), 0.5, 3, 0.0, "reference")
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.cpu().float(), want, rtol=0, atol=2 ** -9)
