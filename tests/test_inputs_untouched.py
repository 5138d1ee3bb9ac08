"""Every CPU op (csrc/cpu/*.cpp) leaves the arguments its schema does not declare mutable as it
found them, and returns no output that shares memory with an input. Called on the shapes where
a kernel's .contiguous(), .to(dtype), .expand(...), .reshape(...) or .narrow(...) of an input is
that input itself -- a batch of one, one row or column, contiguous inputs already in the
kernel's accumulation dtype -- so that a write into such a tensor would reach the caller's (as
masked_linear's one-row bias once did). Each case also passes torch.library.opcheck (its
test_schema catches an output aliasing an input and a write into a non-mutable argument)."""

import math

import pytest
import torch
from helpers import needs

import genkernels  # noqa: F401  (registers the fake kernels and autograd opcheck needs)
from genkernels import ops
from genkernels.autoregressive import conv_reference as CR
from genkernels.autoregressive import mixture_reference as MR
from genkernels.som import mask_reference as SR
from genkernels.som.lattice import Lattice

DTYPES = [torch.float32, torch.float64]


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.untyped_storage().nbytes() == 0 or b.untyped_storage().nbytes() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (tuple, list)):
            yield from _tensors(v)


def _check(name, *args, mutable=(), opcheck=True):
    """genkernels::name on args: the non-mutable tensor arguments bit for bit unchanged, no
    output in an input's memory, and opcheck. Returns the op's result."""
    op = getattr(torch.ops.genkernels, name).default
    before = {i: a.clone() for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i not in mutable}
    result = op(*args)
    for i, kept in before.items():
        assert torch.equal(args[i], kept), f"{name} wrote into its argument {i}"
    outputs = list(_tensors(result if isinstance(result, (tuple, list)) else (result,)))
    for j, out in enumerate(outputs):
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                assert not _shares_memory(out, a), f"{name}: output {j} shares memory with argument {i}"
    if opcheck:
        torch.library.opcheck(op, args)
    return result


def _randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------ random
@needs("cpu")
def test_philox():
    offsets = torch.tensor([7])
    _check("philox_randint4x", 123, offsets)
    _check("philox_rand", -1, offsets)


# -------------------------------------------------------------------------------- soms
@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gemm", ["0", "1"])
def test_som_bmu_and_node_sums(dtype, gemm, monkeypatch):
    monkeypatch.setenv("GENKERNELS_CPU_GEMM", gemm)
    x, w = _randn(1, 5, dtype=dtype), _randn(4, 5, dtype=dtype, seed=1)
    _check("som_bmu", x, w, 2, "euclidean", False)
    _check("som_bmu", x, w, 1, "cosine", True, opcheck=False)
    _check("som_node_sums", x, w, "euclidean", False)
    _check("som_node_sums", x, w, "manhattan", True, opcheck=False)
    # out of range: the kernels run on scaled copies (som_scale.h)
    big = 1e25 if dtype == torch.float32 else 1e200
    _check("som_bmu", x * big, w * big, 1, "euclidean", False, opcheck=False)
    _check("som_node_sums", x * big, w * big, "euclidean", False, opcheck=False)


@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
def test_som_online(dtype):
    w, x = _randn(1, 6, 3, dtype=dtype), _randn(1, 3, dtype=dtype, seed=1)
    order = torch.zeros(1, 4, dtype=torch.int64)
    lr = torch.linspace(0.5, 0.1, 4, dtype=dtype)[None]
    sigma = torch.linspace(1.5, 0.5, 4, dtype=dtype)[None]
    coords = Lattice(2, 3).coords().to(dtype)
    _check("som_online", w, x, order, lr, sigma, coords, 0.0, 0.0, "gaussian", "som", "euclidean")
    # winner-takes-most on out-of-range data: sigma is scaled (and clamped) on a copy
    big = 1e25 if dtype == torch.float32 else 1e200
    for rule in ("wtm", "wta"):
        _check("som_online", w * big, x * big, order, lr, sigma, coords, 0.0, 0.0, "bubble", rule, "euclidean",
               opcheck=False)


@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
def test_som_patch_bmu(dtype):
    images = torch.rand(1, 1, 4, 4, dtype=dtype, generator=torch.Generator().manual_seed(0))
    codebook = torch.rand(3, 4, dtype=dtype, generator=torch.Generator().manual_seed(1))
    _check("som_patch_bmu", images, codebook, 2, 2, 1, 1)


@needs("cpu")
@pytest.mark.parametrize("squared", [False, True])
def test_som_soft(squared):
    x, nodes, values = _randn(1, 3), _randn(4, 3, seed=1), _randn(4, 1, seed=2)
    beta = torch.tensor(1.3, dtype=torch.float64)
    out, m, z = _check("som_soft", x, nodes, values, beta, squared)
    _check("som_soft_backward", torch.ones_like(out), x, nodes, values, beta, out, m, z, squared)


def _mask_tables(dtype):
    kept, values = SR.mask_tables(Lattice(2, 3).coords(), 0.7, top_k=3, dtype=dtype)
    return kept, values


@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
def test_som_mask_linear(dtype):
    kept, values = _mask_tables(dtype)
    x, w, bias = _randn(1, 4, dtype=dtype), _randn(6, 4, dtype=dtype, seed=1), _randn(6, dtype=dtype, seed=2)
    winners = torch.tensor([2])
    out = _check("som_mask_linear", x, w, bias, winners, kept, values, True)
    _check("som_mask_linear_backward", torch.ones_like(out), x, w, winners, kept, values, out, True,
           [True, True, True])


@needs("cpu")
@pytest.mark.parametrize("per_position", [False, True])
def test_som_mask_conv2d(per_position):
    dtype = torch.float64
    kept, values = _mask_tables(dtype)
    x, w, bias = _randn(1, 1, 3, 3, dtype=dtype), _randn(6, 1, 2, 2, dtype=dtype, seed=1), _randn(6, dtype=dtype)
    winners = torch.tensor([[0, 5, 3, 1]]) if per_position else torch.tensor([[4]])
    geo = ([1, 1], [0, 0], [1, 1])
    out = _check("som_mask_conv2d", x, w, bias, winners, kept, values, *geo, True)
    _check("som_mask_conv2d_backward", torch.ones_like(out), x, w, winners, kept, values, out, *geo, True,
           [True, True, True])


# ------------------------------------------------------------------- autoregressive
@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_linear(dtype):
    x, w, bias = _randn(1, 3, dtype=dtype), _randn(4, 3, dtype=dtype, seed=1), _randn(4, dtype=dtype, seed=2)
    prefix = torch.tensor([0, 1, 3, 2])
    _check("masked_linear", x, w, bias, prefix)
    _check("masked_linear", x, w, None, prefix, opcheck=False)
    _check("masked_linear", x[:, :1].contiguous(), w[:1, :1].contiguous(), bias[:1], torch.tensor([1]),
           opcheck=False)   # one column in, one out
    _check("masked_linear_backward", _randn(1, 4, dtype=dtype, seed=3), x, w, prefix, [True, True, True])


@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_mlp(dtype):
    x, w0, w1 = _randn(1, 3, dtype=dtype), _randn(4, 3, dtype=dtype, seed=1), _randn(2, 4, dtype=dtype, seed=2)
    b0, b1, skip = _randn(4, dtype=dtype, seed=3), _randn(2, dtype=dtype, seed=4), _randn(2, 3, dtype=dtype, seed=5)
    prefixes, skip_prefix = [torch.tensor([3, 3, 3, 3]), torch.tensor([4, 4])], torch.tensor([3, 3])
    out, hidden = _check("masked_mlp", x, [w0, w1], [b0, b1], prefixes, skip, skip_prefix)
    _check("masked_mlp", x, [w0], [b0], prefixes[:1], None, None)   # one layer, full prefixes: W itself
    _check("masked_mlp_backward", _randn(1, 2, dtype=dtype, seed=6), x, hidden, [w0, w1], prefixes, skip,
           skip_prefix, True)


@needs("cpu")
@pytest.mark.parametrize("kernel,mask_type", [((3, 3), "A"), ((1, 1), "B")], ids=["3x3", "pointwise"])
def test_masked_conv2d(kernel, mask_type):
    rules = list(CR.tap_rules(kernel, mask_type, 1))
    x, w, bias = _randn(1, 2, 3, 3), _randn(2, 2, *kernel, seed=1), _randn(2, seed=2)
    _check("masked_conv2d", x, w, bias, rules, 1, 1)
    _check("masked_conv2d_backward", _randn(1, 2, 3, 3, seed=3), x, w, rules, 1, 1, [True, True, True])


@needs("cpu")
def test_masked_conv2d_gated_and_gate_backward():
    rules = list(CR.tap_rules((3, 3), "B", 1))
    x, w, bias, addend = _randn(1, 2, 3, 3), _randn(2, 2, 3, 3, seed=1), _randn(2, seed=2), _randn(1, 2, 3, 3, seed=3)
    out, pre = _check("masked_conv2d_gated", x, w, bias, addend, rules, 1, 1)
    _check("gate_backward", torch.ones_like(out), pre, 1)


@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_mixture(dtype):
    params = _randn(1, MR.param_count(1, 2), 1, 1, dtype=dtype)
    v = torch.tensor([[[[3.0]]]], dtype=dtype)
    _check("logistic_mixture_log_prob", params, v, 2, 8)
    _check("logistic_mixture_log_prob_backward", torch.ones(1, 1, 1, dtype=dtype), params, v, 2, 8)


# ------------------------------------------------------------------------------ flows
@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [3, 9])
@pytest.mark.parametrize("bound", [2.0, math.inf])
def test_affine_coupling(dtype, n, bound):
    x, params = _randn(1, n, dtype=dtype), _randn(1, 2 * n, dtype=dtype, seed=1)
    mask = (torch.arange(n) % 2).to(dtype)
    y, logdet, sigma = _check("affine_coupling", x, params, mask, bound, False)
    _check("affine_coupling_backward", torch.ones_like(y), torch.ones_like(logdet), x, params, sigma, mask, bound,
           False)
    _check("affine_coupling", x, params, mask, bound, True, opcheck=False)


# -------------------------------------------------------- hopfield, boltzmann, ising
@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
def test_hopfield_recall_async(dtype):
    patterns = (torch.randint(0, 2, (2, 6), generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dtype)
    w = ops.hopfield_store(patterns)
    probe = patterns[:1].clone()
    probe[0, 0] = -probe[0, 0]
    _check("hopfield_recall_async", w, probe, 5, True, 3, 0)
    _check("hopfield_recall_async", w, probe, 0, False, 0, 0, opcheck=False)   # no sweep: the states returned


@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
def test_bm_gibbs(dtype):
    a = _randn(4, 4)
    w = (torch.triu(a, 1) + torch.triu(a, 1).T).to(dtype)
    bias, states = _randn(4, dtype=dtype, seed=1), torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=dtype)
    clamp = torch.tensor([False, True, False, False])
    _check("bm_gibbs", w, bias, states, clamp, torch.tensor([1.0, 0.5], dtype=dtype), True, 3, 0)
    _check("bm_gibbs", w, bias, states, clamp, torch.empty(0, dtype=dtype), False, 0, 0, opcheck=False)


@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gemm", ["0", "1"])
def test_hopfield_retrieval(dtype, gemm, monkeypatch):
    monkeypatch.setenv("GENKERNELS_CPU_GEMM", gemm)
    beta = torch.tensor(1.5, dtype=dtype)
    for b in (1, 2):   # two rows of a shared set: the tiled paths when forced
        queries, stored = _randn(b, 3, dtype=dtype), _randn(1, 4, 3, dtype=dtype, seed=1)
        out, steps = _check("hopfield_retrieval", queries, stored, beta, 3, 1e-3, opcheck=b == 1)
        _check("hopfield_retrieval_backward", torch.ones_like(out), queries, stored, beta, steps, opcheck=b == 1)


@needs("cpu")
def test_ising_sweep():
    spins = (torch.randint(0, 2, (1, 4, 4), generator=torch.Generator().manual_seed(0)) * 2 - 1).to(torch.int8)
    table = ops.ising_thresholds(2.2, 1.0, 0.1, "metropolis")
    _check("ising_sweep", spins, table, 2, 3, 4, 1)
    _check("ising_sweep", spins, table, 0, 3, 4, 0, opcheck=False)   # no sweep: the spins returned


# -------------------------------------------------------------------------------- rbms
def _rbm(dtype, transpose, b=1, n_vis=5, n_hid=3):
    w = (_randn(n_vis, n_hid, seed=1) * 0.7).to(dtype)
    n_in, n_out = (n_hid, n_vis) if transpose else (n_vis, n_hid)
    s = (torch.rand(b, n_in, generator=torch.Generator().manual_seed(2)) < 0.5).to(dtype)
    return s, w, _randn(n_out, dtype=dtype, seed=3)


@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
def test_rbm_half_steps(dtype, transpose):
    s, w, bias = _rbm(dtype, transpose)
    for name in ("rbm_half_step", "rbm_half_step_binary"):
        _check(name, s, w, bias, 5, 7, transpose, True)
        _check(name, s.to(torch.uint8), w, bias, 5, 7, transpose, False, opcheck=False)


@needs("cpu")
@pytest.mark.parametrize("dtype", DTYPES)
def test_rbm_binary_outer_add_pack_and_pcd_step(dtype):
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=dtype)
    h = _randn(1, 3, dtype=dtype)
    _check("rbm_binary_outer_add_", _randn(4, 3, dtype=dtype, seed=1), x, h, 0.5, torch.zeros(4, dtype=dtype), -0.25,
           mutable=(0, 4))
    _check("rbm_pack_binary", x)
    _check("rbm_pack_binary", x * 0.5, opcheck=False)
    v_pos, w, vb = x, (_randn(4, 3, seed=2) * 0.3).to(dtype), _randn(4, dtype=dtype, seed=3)
    hb, chains = _randn(3, dtype=dtype, seed=4), torch.tensor([[1, 0, 1]], dtype=torch.uint8)
    _check("rbm_pcd_step_", v_pos, w, vb, hb, chains, 1, 0, 8, 0.1, mutable=(1, 2, 3))
