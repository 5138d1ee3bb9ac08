"""The fused masked MLP (genkernels.ops.masked_mlp: MADE's whole network in one op) against its
definition (genkernels/autoregressive/mlp_reference.py) over odd and edge shapes, forward and
every gradient, on every backend (triton through the interpreter on CPU tensors); gradcheck,
gradgradcheck (the double backward), opcheck, torch.compile; one and two threads; inputs
untouched; weights the mask removes never read; bf16; MADE's fused path against its
layer-by-layer path; bad input."""

import os

import pytest
import torch
from helpers import DEVICE, needs, num_threads

import genkernels
from genkernels import MADE
from genkernels.autoregressive import mlp_reference as R
from genkernels.ops import masked_mlp


@pytest.fixture(autouse=True)
def _one_thread():
    """Small networks: one thread (beside the other test worker a second thread waits a time
    slice per small call); the thread-count test sets its own."""
    with num_threads(1):
        yield


def _net(batch, sizes, skip=True, prefixes="random", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sizes[0], generator=g, dtype=torch.float64).to(dtype)
    ws = [torch.randn(b, a, generator=g, dtype=torch.float64).to(dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [torch.randn(b, generator=g, dtype=torch.float64).to(dtype) for b in sizes[1:]]

    def prefix(a, b):
        if prefixes == "full":
            return torch.full((b,), a)
        if prefixes == "zero":
            return torch.zeros(b, dtype=torch.int64)
        p = torch.randint(0, a + 1, (b,), generator=g)
        return torch.sort(p).values if prefixes == "sorted" else p
    ps = [prefix(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    sw = torch.randn(sizes[-1], sizes[0], generator=g, dtype=torch.float64).to(dtype) if skip else None
    sp = prefix(sizes[0], sizes[-1]) if skip else None
    return x, ws, bs, ps, sw, sp


# (batch, sizes, skip, prefixes): MADE on 2-D data, wide and odd layers, one layer, a layer of
# one unit, no rows, one row, rows past a chunk, all-masked and unmasked layers
CASES = [(1024, [2, 64, 64, 4], True, "sorted"), (300, [3, 17, 9, 6], True, "random"), (7, [5, 3], False, "random"),
         (0, [4, 8, 4], True, "sorted"), (1, [1, 1], True, "full"), (1, [6, 20, 12], True, "sorted"),
         (513, [64, 128, 128, 128], True, "sorted"), (70, [33, 1, 17], False, "random"),
         (40, [16, 32, 16], True, "zero"), (2100, [20, 48, 40], True, "full"), (90, [40, 64, 48], True, "random")]


# the triton kernels (through the interpreter here) on the cases up to 300 rows: the larger
# ones are the cpu kernel's chunking cases
BACKEND_CASES = [pytest.param(backend, case, marks=mark, id=f"{case[0]}x{'-'.join(map(str, case[1]))}-{case[3]}"
                              f"{'-skip' * case[2]}-{backend}")
                 for backend, mark in (("reference", ()), ("cpu", needs("cpu")), ("triton", needs("triton")))
                 for case in CASES if backend != "triton" or case[0] <= 300]


@pytest.mark.parametrize("backend, case", BACKEND_CASES)
def test_masked_mlp_equals_its_definition(backend, case):
    batch, sizes, skip, kind = case
    x, ws, bs, ps, sw, sp = _net(batch, sizes, skip, kind)
    leaves = [t.clone().requires_grad_() for t in [x, *ws, *bs] + ([sw] if skip else [])]
    n = len(ws)

    def split(v):
        return v[0], v[1:1 + n], v[1 + n:1 + 2 * n], (v[1 + 2 * n] if skip else None)
    x0, w0, b0, s0 = split(leaves)
    want, hidden = R.masked_mlp(x0, w0, b0, ps, s0, sp)
    assert len(hidden) == n - 1
    got_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    x1, w1, b1, s1 = split(got_leaves)
    got = masked_mlp(x1, w1, b1, ps, s1, sp, backend=backend)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    for kept, given in zip(leaves, got_leaves):
        assert torch.equal(kept.detach(), given.detach())
    grad = torch.linspace(-1, 2, want.numel(), dtype=want.dtype).view_as(want)
    for a, e in zip(torch.autograd.grad(got, got_leaves, grad), torch.autograd.grad(want, leaves, grad)):
        torch.testing.assert_close(a, e, rtol=1e-11, atol=1e-11)
    for w, p, gw in zip(w1, ps, torch.autograd.grad(masked_mlp(x1, w1, b1, ps, s1, sp, backend=backend).sum(), w1)):
        masked_out = torch.arange(w.shape[1])[None, :] >= p[:, None]
        assert not bool(gw[masked_out].any())   # the masked weights never act: zero gradients


@needs("cpu")
@pytest.mark.parametrize("sizes", [[37, 5, 3, 21], [2, 64, 64, 4], [3, 13, 70, 7], [1, 9, 1]],
                         ids=lambda s: "-".join(map(str, s)))
def test_float32_narrow_products(sizes):
    """float32 (8 lanes a register) through the narrow products' loops: short inputs (k < 16),
    short outputs (n < 16, n not a multiple of 4), odd tails along both, every gradient."""
    x, ws, bs, ps, sw, sp = _net(133, sizes, True, "random", dtype=torch.float32, seed=3)
    leaves = [t.clone().requires_grad_() for t in [x, *ws, *bs, sw]]
    got = masked_mlp(leaves[0], leaves[1:1 + len(ws)], leaves[1 + len(ws):1 + 2 * len(ws)], ps, leaves[-1], sp,
                     backend="cpu")
    ref_leaves = [t.double().clone().requires_grad_() for t in [x, *ws, *bs, sw]]
    want, _ = R.masked_mlp(ref_leaves[0], ref_leaves[1:1 + len(ws)], ref_leaves[1 + len(ws):1 + 2 * len(ws)], ps,
                           ref_leaves[-1], sp)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    grad = torch.linspace(-1, 2, want.numel(), dtype=torch.float64).view_as(want)
    for a, e in zip(torch.autograd.grad(got, leaves, grad.float()), torch.autograd.grad(want, ref_leaves, grad)):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-3)


@needs("cpu")
def test_float32_strided_input_and_only_some_gradients():
    x, ws, bs, ps, sw, sp = _net(257, [9, 40, 30, 18], True, "sorted", dtype=torch.float32)
    wide = torch.randn(257, 20)
    wide[:, ::2] = x.repeat(1, 2)[:, :10]
    strided = wide[:, ::2][:, :9]
    assert not strided.is_contiguous()
    want, _ = R.masked_mlp(strided.double(), [w.double() for w in ws], [b.double() for b in bs], ps, sw.double(), sp)
    got = masked_mlp(strided, ws, bs, ps, sw, sp, backend="cpu")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    w_leaf = ws[1].clone().requires_grad_()   # only one weight wants a gradient
    out = masked_mlp(x, [ws[0], w_leaf, ws[2]], bs, ps, sw, sp, backend="cpu")
    (gw,) = torch.autograd.grad(out.square().sum(), [w_leaf])
    w_ref = ws[1].double().clone().requires_grad_()
    ref, _ = R.masked_mlp(x.double(), [ws[0].double(), w_ref, ws[2].double()], [b.double() for b in bs], ps,
                          sw.double(), sp)
    torch.testing.assert_close(gw.double(), torch.autograd.grad(ref.square().sum(), [w_ref])[0], rtol=1e-4, atol=1e-3)


@needs("cpu")
def test_gradcheck_gradgradcheck_opcheck_and_compile():
    x, ws, bs, ps, sw, sp = _net(6, [4, 7, 5, 8], True, "sorted", seed=3)
    leaves = [t.clone().requires_grad_() for t in [x, *ws, *bs, sw]]

    def f(*v):
        return masked_mlp(v[0], v[1:4], v[4:7], ps, v[7], sp, backend="cpu")
    assert torch.autograd.gradcheck(f, leaves)
    assert torch.autograd.gradgradcheck(f, leaves)   # the double backward runs through the definition
    op = torch.ops.genkernels.masked_mlp.default
    torch.library.opcheck(op, (x, ws, bs, ps, sw, sp))
    torch.library.opcheck(op, (x[:1], ws, bs, ps, None, None))
    out, hidden = op(x, ws, bs, ps, sw, sp)
    torch.library.opcheck(torch.ops.genkernels.masked_mlp_backward.default,
                          (torch.ones_like(out), x, hidden, ws, ps, sw, sp, True))
    compiled = torch.compile(lambda *v: f(*v).square().sum(), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*leaves), f(*leaves).square().sum())
    before = [t.clone() for t in (x, *ws, *bs, sw)]
    op(x, ws, bs, ps, sw, sp)
    for t, kept in zip((x, *ws, *bs, sw), before):
        assert torch.equal(t, kept)


@needs("cpu")
def test_one_and_two_threads_agree_bit_for_bit():
    x, ws, bs, ps, sw, sp = _net(3000, [10, 96, 96, 20], True, "sorted", dtype=torch.float32)
    leaves = [t.clone().requires_grad_() for t in [x, *ws, *bs, sw]]
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            out = masked_mlp(leaves[0], leaves[1:4], leaves[4:7], ps, leaves[7], sp, backend="cpu")
            results.append([out.detach(), *torch.autograd.grad(out.square().sum(), leaves)])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs("cpu")
@pytest.mark.parametrize("kwargs", [dict(), dict(order_agnostic=True, num_masks=2), dict(output="gaussian"),
                                    dict(direct=False, hidden=(30,))])
def test_made_fused_path_equals_its_layers(kwargs):
    """MADE on the CPU runs mask 0's network as the fused op; the layer-by-layer path (the
    reference backend) gives the same log-likelihood and gradients."""
    args = dict(hidden=(24, 24), seed=5) | kwargs
    fused, layers = MADE(6, **args).double(), MADE(6, backend="reference", **args).double()
    layers.load_state_dict(fused.state_dict())
    assert fused._fused(torch.zeros(1, 6, dtype=torch.float64)) and not layers._fused(torch.zeros(1, 6))
    x = torch.randint(0, 2, (50, 6)).double() if fused.output == "bernoulli" else torch.randn(50, 6).double()
    a, b = fused.log_prob(x, mask=0), layers.log_prob(x, mask=0)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for ga, gb in zip(torch.autograd.grad(a.sum(), list(fused.parameters()), allow_unused=True),
                      torch.autograd.grad(b.sum(), list(layers.parameters()), allow_unused=True)):
        if ga is None or gb is None:
            assert ga is None and gb is None
        else:
            torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-10)
    report = genkernels.check_autoregressive(lambda v: fused._params(v, 0), (6,),
                                             order=torch.argsort(fused._perm(0, 0)))
    assert report.ok, str(report)


@needs("cpu")
@pytest.mark.parametrize("call, error, match", [
    (lambda x, ws, bs, ps: masked_mlp(x, [], [], []), ValueError, "at least one layer"),
    (lambda x, ws, bs, ps: masked_mlp(x, ws, bs[:1], ps), ValueError, "one bias and one prefix per layer"),
    (lambda x, ws, bs, ps: masked_mlp(x, ws[1:], bs[1:], ps[1:]), ValueError, "input features"),
    (lambda x, ws, bs, ps: masked_mlp(x, ws, [bs[1], bs[0]], ps), ValueError, r"biases\[0\] must be"),
    (lambda x, ws, bs, ps: masked_mlp(x, ws, bs, [ps[0] + 9, ps[1]]), ValueError, "prefix must lie in"),
    (lambda x, ws, bs, ps: masked_mlp(x, ws, bs, [ps[0].float(), ps[1]]), TypeError, "prefix must hold integers"),
    (lambda x, ws, bs, ps: masked_mlp(x, ws, bs, ps, torch.zeros(3, 4)), ValueError, "come together"),
    (lambda x, ws, bs, ps: masked_mlp(x, ws, bs, ps, torch.zeros(2, 4), torch.zeros(3, dtype=torch.long)),
     ValueError, "skip_weight must be"),
    (lambda x, ws, bs, ps: masked_mlp(x.float(), ws, bs, ps), TypeError, "dtype"),
    (lambda x, ws, bs, ps: masked_mlp(x[0], ws, bs, ps), ValueError, "x must be"),
    (lambda x, ws, bs, ps: masked_mlp(x, ws, bs, ps, backend="cuda"), Exception, "cuda"),
])
def test_bad_input(call, error, match):
    x, ws, bs, ps, _, _ = _net(5, [4, 6, 3], False, "sorted")
    with pytest.raises(error, match=match):
        call(x, ws, bs, ps)


@needs("cpu")
def test_a_crafted_prefix_reaching_the_kernel_is_refused():
    """The kernel checks the prefixes' range itself (``checked=True`` skips the Python
    check): a RuntimeError-free ValueError, never a write past the weight."""
    x, ws, bs, ps, _, _ = _net(5, [4, 6, 3], False, "sorted")
    with pytest.raises(ValueError, match=r"prefixes must lie in \[0, 4\]"):
        masked_mlp(x, ws, bs, [torch.full((6,), 5), ps[1]], checked=True, backend="cpu")
    with pytest.raises(ValueError, match=r"prefixes must lie in \[0, 4\]"):
        masked_mlp(x, ws, bs, [torch.full((6,), -1), ps[1]], checked=True, backend="cpu")
    # checked=True skips the Python checks: the kernel's own refuse wrong shapes and dtypes
    with pytest.raises(ValueError, match=r"weights\[0\] must be"):
        masked_mlp(x, ws[1:], bs[1:], ps[1:], checked=True, backend="cpu")
    with pytest.raises(ValueError, match=r"biases\[0\] must be"):
        masked_mlp(x, ws, [bs[1], bs[0]], ps, checked=True, backend="cpu")
    with pytest.raises(TypeError, match="dtype"):
        masked_mlp(x, [ws[0].float(), ws[1]], bs, ps, checked=True, backend="cpu")


@needs("cpu")
def test_the_aten_product_path_equals_the_definition():
    """Where torch exports no Fortran BLAS the kernel's products go through ATen
    (GENKERNELS_NO_FORTRAN_BLAS forces that path): the same results, forward and backward,
    over the loops, whole BLAS products and runs of a triangle, in float and double."""
    import subprocess
    import sys
    code = """
import torch
from genkernels.ops import masked_mlp
from genkernels.autoregressive import mlp_reference as R
from test_masked_mlp import _net
for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
    for batch, sizes, kind in ((300, [40, 64, 48], "sorted"), (70, [3, 32, 20], "random"), (9, [20, 17], "full")):
        x, ws, bs, ps, sw, sp = _net(batch, sizes, True, kind, dtype=dtype)
        leaves = [t.clone().requires_grad_() for t in [x, *ws, *bs, sw]]
        n = len(ws)
        got = masked_mlp(leaves[0], leaves[1:1 + n], leaves[1 + n:1 + 2 * n], ps, leaves[-1], sp, backend="cpu")
        want, _ = R.masked_mlp(leaves[0], leaves[1:1 + n], leaves[1 + n:1 + 2 * n], ps, leaves[-1], sp)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        for a, e in zip(torch.autograd.grad(got.square().sum(), leaves),
                        torch.autograd.grad(want.square().sum(), leaves)):
            torch.testing.assert_close(a, e, rtol=tol, atol=tol * 100)
print("ok")
"""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, GENKERNELS_NO_FORTRAN_BLAS="1",
               PYTHONPATH=tests + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@needs("cpu")
def test_coupling_mlp_runs_fused_and_equals_its_layers():
    """The vector couplings' MLP (genkernels.flows.MLP) runs as masked_mlp with full prefixes
    on the CPU: the same outputs and gradients as its linear layers and ReLUs."""
    from genkernels.flows import MLP
    torch.manual_seed(0)
    net = MLP(5, 8, hidden=20, layers=3, context_features=2).double()
    for p in net.parameters():   # the last layer starts at zero: give it values
        torch.nn.init.normal_(p)
    x, ctx = torch.randn(33, 5, dtype=torch.float64), torch.randn(33, 2, dtype=torch.float64)
    assert net._fused(torch.cat([x, ctx], 1))
    fused = net(x, ctx)
    layers = net.out(net.body(torch.cat([x, ctx], 1)))
    torch.testing.assert_close(fused, layers, rtol=1e-12, atol=1e-12)
    params = list(net.parameters())
    for a, b in zip(torch.autograd.grad(fused.square().sum(), params),
                    torch.autograd.grad(layers.square().sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    assert set(net.state_dict()) == {n for n, _ in net.named_parameters()}   # the prefixes are not state


@needs("cpu")
def test_made_fuses_only_networks_where_it_pays():
    """Wide networks (an input or hidden layer past 256 units: MNIST's 784 -> 512 -> 512) run
    layer by layer, where masked_linear is faster; a flow's MADE with many outputs per
    dimension stays fused."""
    assert not MADE(784, (512, 512))._fused(torch.zeros(1, 784))
    assert not MADE(64, (300, 300))._fused(torch.zeros(1, 64))
    assert MADE(64, (128, 128), "params", 23)._fused(torch.zeros(1, 64))
    # a conditional MADE runs layer by layer (the context enters the first hidden layer): the
    # same parameters as the reference backend's
    auto, ref = MADE(8, (16,), context_features=3, seed=1), MADE(8, (16,), context_features=3, backend="reference")
    ref.load_state_dict(auto.state_dict())
    x, ctx = torch.randn(5, 8), torch.randn(5, 3)
    torch.testing.assert_close(auto._params(x, 0, ctx), ref._params(x, 0, ctx), rtol=1e-6, atol=1e-6)


def _on(device, *tensors):
    return [t.to(device) if isinstance(t, torch.Tensor) else [u.to(device) for u in t] if isinstance(t, list) else t
            for t in tensors]


@needs("triton")
def test_triton_gradcheck_opcheck_compile_and_determinism():
    x, ws, bs, ps, sw, sp = _on(DEVICE, *_net(3, [3, 5, 4, 3], True, "sorted", seed=3))
    leaves = [t.clone().requires_grad_() for t in [x, *ws, *bs, sw]]

    def f(*v):
        return masked_mlp(v[0], v[1:4], v[4:7], ps, v[7], sp, backend="triton")
    assert torch.autograd.gradcheck(f, leaves)
    op = torch.ops.genkernels.masked_mlp_triton.default
    torch.library.opcheck(op, (x, ws, bs, ps, sw, sp))
    torch.library.opcheck(op, (*[leaves[0]], leaves[1:4], leaves[4:7], ps, leaves[7], sp))
    torch.library.opcheck(op, (x[:1], ws, bs, ps, None, None))
    out, hidden = op(x, ws, bs, ps, sw, sp)
    backward = torch.ops.genkernels.masked_mlp_backward_triton.default
    for need_x in (True, False):
        torch.library.opcheck(backward, (torch.ones_like(out), x, hidden, ws, ps, sw, sp, need_x))
    torch._dynamo.reset()
    compiled = torch.compile(lambda *v: f(*v).square().sum(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*leaves), f(*leaves).square().sum())
    first = torch.autograd.grad(f(*leaves).square().sum(), leaves)
    again = torch.autograd.grad(f(*leaves).square().sum(), leaves)
    for a, b in zip(first, again):   # fixed sums: the same bits run to run
        assert torch.equal(a, b)


@needs("triton")
def test_triton_bf16_accumulates_in_fp32():
    """bf16 tiles (upcast under the interpreter, tensor cores on a GPU) with fp32 sums and the
    hidden layers stored in bf16, as a chain of bf16 layers: within bf16 roundings of the
    definition run in fp64 on the same inputs."""
    x, ws, bs, ps, sw, sp = _net(40, [12, 40, 24, 10], True, "sorted", seed=2)
    ws = [w / w.shape[1] ** 0.5 for w in ws]
    x, ws, bs, sw = x.to(torch.bfloat16), [w.to(torch.bfloat16) for w in ws], [b.to(torch.bfloat16) for b in bs], \
        sw.to(torch.bfloat16)
    x, ws, bs, ps, sw, sp = _on(DEVICE, x, ws, bs, ps, sw, sp)
    leaves = [t.clone().requires_grad_() for t in [x, *ws, *bs, sw]]
    got = masked_mlp(leaves[0], leaves[1:4], leaves[4:7], ps, leaves[7], sp, backend="triton")
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    want, _ = R.masked_mlp(ref_leaves[0], ref_leaves[1:4], ref_leaves[4:7], ps, ref_leaves[7], sp)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=2 ** -6, atol=2e-2)
    grad = torch.linspace(-1, 1, want.numel(), dtype=torch.float64, device=DEVICE).view_as(want)
    got_grads = torch.autograd.grad(got, leaves, grad.to(torch.bfloat16))
    for a, e in zip(got_grads, torch.autograd.grad(want, ref_leaves, grad)):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), e, rtol=2 ** -5, atol=5e-2)


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs("cpu")),
                                     pytest.param("triton", marks=needs("triton"))])
def test_weights_the_mask_removes_are_never_read(backend):
    """NaN in every masked-out weight (and skip weight) changes no output and no gradient."""
    device = "cpu" if backend == "cpu" else DEVICE
    x, ws, bs, ps, sw, sp = _on(device, *_net(19, [5, 20, 12, 10], True, "sorted", seed=4))
    poisoned = []
    for w, p in zip(ws + [sw], ps + [sp]):
        removed = torch.arange(w.shape[1], device=device)[None, :] >= p[:, None]
        poisoned.append(w.masked_fill(removed, float("nan")))
    clean = [t.clone().requires_grad_() for t in [x, *ws, *bs, sw]]
    dirty = [t.clone().requires_grad_() for t in [x, *poisoned[:3], *bs, poisoned[3]]]
    outs = [masked_mlp(v[0], v[1:4], v[4:7], ps, v[7], sp, backend=backend) for v in (clean, dirty)]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for v, p in zip(torch.autograd.grad(outs[1].sum(), dirty), torch.autograd.grad(outs[0].sum(), clean)):
        assert not bool(v.isnan().any())
        torch.testing.assert_close(v, p, rtol=0, atol=0)


@needs("triton")
def test_triton_takes_at_most_its_layers():
    x = torch.randn(3, 4, dtype=torch.float64, device=DEVICE)
    deep = [torch.randn(4, 4, dtype=torch.float64, device=DEVICE) for _ in range(7)]
    biases = [torch.zeros(4, dtype=torch.float64, device=DEVICE) for _ in range(7)]
    prefixes = [torch.full((4,), 4, device=DEVICE) for _ in range(7)]
    with pytest.raises(ValueError, match="1 to 6 layers; got 7"):
        masked_mlp(x, deep, biases, prefixes, backend="triton")
    want, _ = R.masked_mlp(x, deep[:6], biases[:6], prefixes[:6], None, None)
    torch.testing.assert_close(masked_mlp(x, deep[:6], biases[:6], prefixes[:6], backend="triton"), want)
