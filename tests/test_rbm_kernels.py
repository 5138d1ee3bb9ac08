"""genkernels.ops.rbm_half_step: every backend against the reference (the spec)."""

import contextlib
import math

import pytest
import torch
from tolerances import TOL

from genkernels import backends, ops
from genkernels import random as gk_random

from helpers import COMPILED, needs, needs_cpu  # noqa: E402

# CPU tensors through the Triton interpreter (a GPU machine runs the cuda-device tests)
needs_interpreted_triton = needs("triton", "cpu")
DTYPES = (torch.float32, torch.float64)
# (B, n_visible, n_hidden): single rows and units, odd sizes straddling the Triton tiles
# (64 rows / 64 units) and the cpu tiles (256 rows, 16-unit column blocks, 32-unit Philox
# groups)
SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 9), (3, 17, 1), (65, 33, 65), (70, 64, 17)]
CPU_SHAPES = SHAPES + [(257, 100, 37), (600, 13, 301), (1, 4096, 301)]  # the last: column blocks
# a sample may differ from the reference only where u is this close to the computed P
# (docs/design.md, "Randomness": fused samplers differ only where |u - p| <= 1e-6)
SAMPLE_MARGIN = 1e-6


def _problem(b, n_vis, n_hid, dtype, transpose, states="float", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n_vis, n_hid, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    n_in, n_out = (n_hid, n_vis) if transpose else (n_vis, n_hid)
    bias = (torch.randn(n_out, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    if states == "uint8":
        s = (torch.rand(b, n_in, generator=g) < 0.4).to(torch.uint8)
    else:
        s = torch.rand(b, n_in, generator=g, dtype=torch.float64).to(dtype)
    return s, w, bias


def _uniforms(seed, offset, b, n_out):
    """The spec's uniforms, from genkernels.random directly: word j % 4 of counter
    offset + b * ceil(n_out / 4) + j // 4."""
    q = (n_out + 3) // 4
    counters = torch.arange(b * q, dtype=torch.int64).reshape(b, q) + offset
    words = gk_random.randint4x(seed, counters, backend="reference").reshape(b, 4 * q)[:, :n_out]
    return gk_random.uint_to_uniform_float(words.contiguous())


def _backend_shapes(backend):
    return CPU_SHAPES if backend == "cpu" else SHAPES


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("states", ["float", "uint8"])
def test_matches_reference(backend, dtype, transpose, states):
    seed, offset = 2**40 + 7, 12345
    for i, (b, n_vis, n_hid) in enumerate(_backend_shapes(backend)):
        s, w, bias = _problem(b, n_vis, n_hid, dtype, transpose, states, seed=i)
        ref_samples, ref_probs = ops.rbm_half_step(s, w, bias, seed, offset, transpose, True,
                                                   backend="reference")
        samples, probs = ops.rbm_half_step(s, w, bias, seed, offset, transpose, True, backend=backend)
        assert samples.dtype == torch.uint8 and probs.dtype == dtype
        assert samples.shape == probs.shape == ref_probs.shape
        torch.testing.assert_close(probs, ref_probs, **TOL[dtype])
        u = _uniforms(seed, offset, *ref_probs.shape).to(dtype)
        decided = (u - ref_probs).abs() > SAMPLE_MARGIN
        assert torch.equal(samples[decided], ref_samples[decided]), (b, n_vis, n_hid)
        assert set(samples.unique().tolist()) <= {0, 1}
        only = ops.rbm_half_step(s, w, bias, seed, offset, transpose, backend=backend)
        assert torch.equal(only, samples)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("offset", [0, 2**32 - 5, -3, 2**62 + 2**32 - 17])
def test_samples_bit_identical_on_exact_probabilities(backend, dtype, transpose, offset):
    """w = 0 and biases 0 / +inf / -inf make P exactly 0.5 / 1 / 0 on every backend, so the
    samples must equal the reference's bit for bit, whatever the offset (incl. counters
    whose low word wraps inside a vector of lanes)."""
    b, n_vis, n_hid = (67, 29, 70) if backend == "triton" else (300, 45, 83)
    n_in, n_out = (n_hid, n_vis) if transpose else (n_vis, n_hid)
    w = torch.zeros(n_vis, n_hid, dtype=dtype)
    bias = torch.tensor([0.0, math.inf, -math.inf], dtype=dtype).repeat(n_out)[:n_out]
    s = torch.rand(b, n_in, dtype=dtype)
    seed = 987654321987
    ref_samples, ref_probs = ops.rbm_half_step(s, w, bias, seed, offset, transpose, True,
                                               backend="reference")
    samples, probs = ops.rbm_half_step(s, w, bias, seed, offset, transpose, True, backend=backend)
    assert torch.equal(probs, ref_probs)
    assert torch.equal(samples, ref_samples)
    # the spec itself: u < 0.5 on the zero-bias units, always 1 / always 0 on the others
    u = _uniforms(seed, offset, b, n_out)
    half = bias == 0
    assert torch.equal(samples[:, half], (u[:, half] < 0.5).to(torch.uint8))
    assert bool((samples[:, bias == math.inf] == 1).all()) and bool((samples[:, bias == -math.inf] == 0).all())


def test_row_shard_reproduces_the_whole_batch():
    """Rows r0.. drawn alone with offset + r0 * ceil(n_out / 4) equal the whole batch's rows."""
    s, w, bias = _problem(40, 11, 13, torch.float32, False)
    seed, offset = 5, 1000
    whole = ops.rbm_half_step(s, w, bias, seed, offset, backend="reference")
    for backend in ["reference", *COMPILED]:
        part = ops.rbm_half_step(s[17:], w, bias, seed, offset + 17 * 4, backend=backend)
        assert torch.equal(part, whole[17:])


def _chi_square_threshold(dof):
    from scipy.stats import chi2
    return chi2.isf(1e-6, dof)


@pytest.mark.parametrize("backend", ["reference", *COMPILED])
def test_sample_frequencies_chi_square(backend):
    """Computed (not exactly representable) probabilities: the frequency of ones per unit
    over 4,000 rows follows Bernoulli(P) (chi-square over 12 units, p-value 1e-6)."""
    b, n = 4000, 12
    logits = torch.linspace(-3.0, 2.5, n, dtype=torch.float64)
    w = torch.zeros(1, n)
    bias = logits.float()
    s = torch.zeros(b, 1)
    samples = ops.rbm_half_step(s, w, bias, 77, 2**33, backend=backend)
    p = torch.sigmoid(logits)
    ones = samples.double().sum(0)
    stat = float((((ones - b * p) ** 2) / (b * p * (1 - p))).sum())
    assert stat < _chi_square_threshold(n), stat


def test_empty_batches_and_layers():
    w = torch.randn(4, 3)
    for backend in ["reference", *COMPILED]:
        samples, probs = ops.rbm_half_step(torch.zeros(0, 4), w, torch.zeros(3), 1, 0,
                                           return_probs=True, backend=backend)
        assert samples.shape == (0, 3) and probs.shape == (0, 3)
        samples = ops.rbm_half_step(torch.zeros(2, 3), torch.zeros(0, 3), torch.zeros(0), 1, 0,
                                    transpose=True, backend=backend)
        assert samples.shape == (2, 0)
        # no inputs (n_in = 0): P = sigmoid(bias)
        samples, probs = ops.rbm_half_step(torch.zeros(2, 0), torch.zeros(0, 3), torch.zeros(3), 1, 0,
                                           return_probs=True, backend=backend)
        assert torch.equal(probs, torch.full((2, 3), 0.5))


def test_bad_arguments_raise_clear_errors():
    w = torch.randn(4, 3)
    s = torch.rand(2, 4)
    with pytest.raises(ValueError, match=r"s must be \(B, 4\)"):
        ops.rbm_half_step(torch.rand(2, 3), w, torch.zeros(3), 0)
    with pytest.raises(ValueError, match=r"s must be \(B, 3\): the hidden layer"):
        ops.rbm_half_step(s, w, torch.zeros(4), 0, transpose=True)
    with pytest.raises(ValueError, match=r"bias must be \(3,\)"):
        ops.rbm_half_step(s, w, torch.zeros(4), 0)
    with pytest.raises(TypeError, match="w must be float32 or float64"):
        ops.rbm_half_step(s, w.half(), torch.zeros(3), 0)
    with pytest.raises(TypeError, match="s must be a floating-point tensor"):
        ops.rbm_half_step(s.long(), w, torch.zeros(3), 0)
    with pytest.raises(ValueError, match="seed must be in"):
        ops.rbm_half_step(s, w, torch.zeros(3), -1)
    with pytest.raises(ValueError, match="s contains NaN or Inf"):
        ops.rbm_half_step(torch.full((2, 4), math.nan), w, torch.zeros(3), 0)
    with pytest.raises(backends.BackendUnavailableError, match="rbm_half_step has no cuda backend"):
        ops.rbm_half_step(s, w, torch.zeros(3), 0, backend="cuda")


@needs_cpu
def test_opcheck():
    for dtype in DTYPES:
        for transpose in (False, True):
            s, w, bias = _problem(9, 13, 6, dtype, transpose)
            for return_probs in (False, True):
                torch.library.opcheck(torch.ops.genkernels.rbm_half_step.default,
                                      (s, w, bias, -5, 77, transpose, return_probs))
            su8 = (s > 0.5).to(torch.uint8)
            torch.library.opcheck(torch.ops.genkernels.rbm_half_step.default,
                                  (su8, w, bias, 3, 0, transpose, True))


@needs_interpreted_triton
def test_opcheck_triton():
    from genkernels.boltzmann import rbm_triton  # noqa: F401
    s, w, bias = _problem(9, 13, 6, torch.float32, False)
    torch.library.opcheck(torch.ops.genkernels.rbm_half_step_triton.default,
                          (s, w, bias, 11, 3, False, True))


@needs_cpu
def test_compiles_fullgraph():
    s, w, bias = _problem(20, 15, 9, torch.float32, False)

    @torch.compile(fullgraph=True)
    def gibbs(s, w, c, b):
        h, p = ops.rbm_half_step(s, w, c, 7, 0, False, True, backend="cpu")
        v = ops.rbm_half_step(h, w, b, 7, 20 * 3, True, backend="cpu")
        return v, p

    b_vis = torch.zeros(15)
    v, p = gibbs(s, w, bias, b_vis)
    h_ref, p_ref = ops.rbm_half_step(s, w, bias, 7, 0, False, True, backend="cpu")
    assert torch.equal(p, p_ref)
    assert torch.equal(v, ops.rbm_half_step(h_ref, w, b_vis, 7, 20 * 3, True, backend="cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
def test_triton_on_cuda_matches_reference(dtype, transpose):
    seed, offset = 2**50 + 3, 2**32 - 9
    for i, (b, n_vis, n_hid) in enumerate([*SHAPES, (1000, 784, 256)]):
        s, w, bias = _problem(b, n_vis, n_hid, dtype, transpose, "uint8" if i % 2 else "float", seed=i)
        ref_samples, ref_probs = ops.rbm_half_step(s, w, bias, seed, offset, transpose, True, backend="reference")
        samples, probs = ops.rbm_half_step(s.cuda(), w.cuda(), bias.cuda(), seed, offset, transpose, True,
                                           backend="triton")
        torch.testing.assert_close(probs.cpu(), ref_probs, **TOL[dtype])
        decided = (_uniforms(seed, offset, *ref_probs.shape).to(dtype) - ref_probs).abs() > SAMPLE_MARGIN
        assert torch.equal(samples.cpu()[decided], ref_samples[decided])


@pytest.mark.gpu
def test_triton_on_cuda_follows_torchs_tf32_flag(monkeypatch):
    """With TF32 allowed for fp32 products the half-step multiplies in tf32 (as torch.mm
    does): probabilities within tf32's rounding of the reference, different from the IEEE
    kernel's, and samples equal wherever the uniform is clear of that rounding."""
    seed, offset = 11, 5
    g = torch.Generator().manual_seed(3)
    # trained-RBM scale: |W| ~ 0.05, so a tf32 operand (relative error <= 2^-11) moves a
    # pre-activation of ~310 active inputs by ~2.5e-4 (one standard deviation)
    w = torch.randn(784, 256, generator=g) * 0.05
    bias = torch.randn(256, generator=g) * 0.5
    s = (torch.rand(1000, 784, generator=g) < 0.4).to(torch.uint8)
    ref_samples, ref_probs = ops.rbm_half_step(s, w, bias, seed, offset, False, True, backend="reference")
    args = (s.cuda(), w.cuda(), bias.cuda(), seed, offset, False, True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    _, ieee = ops.rbm_half_step(*args, backend="triton")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    samples, tf32 = ops.rbm_half_step(*args, backend="triton")
    assert not torch.equal(tf32, ieee)  # the tensor cores ran in tf32
    torch.testing.assert_close(tf32.cpu(), ref_probs, rtol=0, atol=1e-3)
    decided = (_uniforms(seed, offset, *ref_probs.shape) - ref_probs).abs() > 1e-3
    assert torch.equal(samples.cpu()[decided], ref_samples[decided])


@needs_cpu
@pytest.mark.parametrize("isa", ["avx2", "native"])
def test_cpu_vector_paths_draw_the_reference_stream(isa, monkeypatch):
    """The cpu sampler draws 32 (AVX2) or 64 (AVX-512, where the CPU has it) uniforms per
    Philox pass, with scalar tails: both give the reference's samples bit for bit on
    exactly representable probabilities, over widths around those groups and offsets whose
    low word wraps inside a group."""
    if isa == "avx2":
        monkeypatch.setenv("GENKERNELS_CPU_ISA", "avx2")
    for n_out in (1, 31, 32, 33, 63, 64, 65, 130, 257):
        for offset in (0, 2**32 - 7, -40):
            w = torch.zeros(3, n_out)
            bias = torch.tensor([0.0, math.inf, -math.inf, 0.0]).repeat(n_out)[:n_out]
            s = torch.rand(37, 3)
            ref = ops.rbm_half_step(s, w, bias, 99, offset, backend="reference")
            assert torch.equal(ops.rbm_half_step(s, w, bias, 99, offset, backend="cpu"), ref), (n_out, offset)


@needs_interpreted_triton
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("base, delta", [(0, 0), (12345, 678), (2**32 - 3, 5), (2**32 + 9, -20),
                                         (2**63 - 4, 11), (-(2**63) + 2, -7), (-5, 2**40)])
def test_offset_read_from_device_memory_equals_the_scalar_offset(transpose, base, delta):
    """The CUDA-graph path's kernel variant: counters start at *offset_base + offset (int64,
    wrapping), the same samples and probabilities as the op with offset = base + delta --
    past 2^32 (the counter's high word) and across the int64 wrap both ways."""
    from genkernels.boltzmann.rbm_ops import half_step
    s, w, bias = _problem(67, 29, 70, torch.float32, transpose, "uint8", seed=3)
    seed = 2**63 + 12345
    wrapped = (base + delta + 2**63) % 2**64 - 2**63
    want = ops.rbm_half_step(s, w, bias, seed, wrapped, transpose, True, backend="triton")
    offset_base = torch.tensor([base], dtype=torch.int64)
    got = half_step(s, w, bias, seed, delta, transpose, True, backend="triton", offset_base=offset_base)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert int(offset_base) == base  # read, never written
    # the stream really moved: a different base draws different samples
    other = half_step(s, w, bias, seed, delta, transpose, True, backend="triton",
                      offset_base=offset_base + 1000)
    assert not torch.equal(other[0], want[0])


@needs_interpreted_triton
def test_half_step_at_op_matches_its_reference_and_passes_opcheck():
    """rbm_half_step_at, the registered op of the CUDA-graph path: its triton kernel and its
    reference (offset_base read on the host) draw the same samples; opcheck holds."""
    from genkernels import registry
    from genkernels.boltzmann import rbm_triton  # noqa: F401 (registers the custom op)
    op = registry.get("rbm_half_step_at")
    assert op.backends == ("reference", "triton")
    s, w, bias = _problem(33, 21, 18, torch.float32, False, "uint8", seed=5)
    base = torch.tensor([2**40 + 3], dtype=torch.int64)
    args = (s, w, bias, -12345, base, 77, False, True)
    want = op("reference", *args)
    got = op("triton", *args)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.library.opcheck(torch.ops.genkernels.rbm_half_step_at_triton.default, args)


def test_offset_base_needs_the_triton_backend():
    from genkernels.boltzmann.rbm_ops import half_step
    s, w, bias = _problem(3, 5, 4, torch.float32, False, "uint8")
    with pytest.raises(ValueError, match="offset_base.*triton"):
        half_step(s, w, bias, 0, 0, False, True, backend="reference",
                  offset_base=torch.zeros(1, dtype=torch.int64))


@pytest.mark.gpu
@pytest.mark.parametrize("transpose", [False, True])
def test_triton_on_cuda_offset_read_from_device_memory_equals_the_scalar_offset(transpose):
    from genkernels.boltzmann.rbm_ops import half_step
    s, w, bias = (t.cuda() for t in _problem(300, 97, 130, torch.float32, transpose, "uint8", seed=4))
    for base, delta in [(0, 0), (2**32 - 3, 5), (2**63 - 4, 11), (-(2**63) + 2, -7), (-5, 2**40)]:
        wrapped = (base + delta + 2**63) % 2**64 - 2**63
        want = ops.rbm_half_step(s, w, bias, 7, wrapped, transpose, True, backend="triton")
        got = half_step(s, w, bias, 7, delta, transpose, True, backend="triton",
                        offset_base=torch.tensor([base], dtype=torch.int64, device="cuda"))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (base, delta)


# ------------------------------------------------------------- the fused PCD batch
def _pcd_problem(b, chains, n_vis, n_hid, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n_vis, n_hid, generator=g, dtype=torch.float64) * 0.3).to(dtype)
    vb = (torch.randn(n_vis, generator=g, dtype=torch.float64) * 0.2).to(dtype)
    hb = (torch.randn(n_hid, generator=g, dtype=torch.float64) * 0.2).to(dtype)
    v = torch.rand(b, n_vis, generator=g, dtype=torch.float64).to(dtype)
    h = (torch.rand(chains, n_hid, generator=g) < 0.5).to(torch.uint8)
    return v, w, vb, hb, h


PCD_SOLO_WORK = 1 << 21  # kSoloPcdWork in csrc/cpu/rbm.cpp: smaller steps run on one thread


@contextlib.contextmanager
def _one_thread(active: bool):
    """torch's threads set to one and BLAS sequential while it lives, when active."""
    before = torch.get_num_threads()
    try:
        if active:
            torch.set_num_threads(1)
        with backends.sequential_blas(active):
            yield
    finally:
        torch.set_num_threads(before)


@needs_cpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 64, 100), (10, 10, 64, 100), (7, 3, 13, 5),
                                   (300, 300, 33, 70), (257, 7, 128, 64)])
def test_pcd_step_cpu_is_the_reference_composition(shape, dtype):
    """One C++ call equals, bit for bit, the reference rule run on the cpu half-steps
    (the same ATen kernels in the same order), and the pure reference within rounding."""
    from genkernels.boltzmann import rbm_ops as bops
    from genkernels.boltzmann import rbm_reference as reference
    b, c, n_vis, n_hid = shape
    seed, off_v, off_h, lr = 2**63 + 5, 17, -40, 0.06 / b
    got = [t.clone() for t in _pcd_problem(b, c, n_vis, n_hid, dtype)]
    chains = bops.pcd_step_(*got, seed, off_v, off_h, lr, backend="cpu")
    want = [t.clone() for t in _pcd_problem(b, c, n_vis, n_hid, dtype)]
    # below the cost model's bound the C++ step runs on one thread (sequential BLAS): the
    # composition it equals bit for bit is the one run in that regime
    with _one_thread(b * n_vis * n_hid < PCD_SOLO_WORK):
        want_chains = reference.rbm_pcd_step_(*want, seed, off_v, off_h, lr, half_step=bops.half_step)
    assert torch.equal(chains, want_chains)
    for g_t, w_t in zip(got[1:4], want[1:4]):
        assert torch.equal(g_t, w_t)
    spec = [t.clone() for t in _pcd_problem(b, c, n_vis, n_hid, dtype)]
    spec_chains = bops.pcd_step_(*spec, seed, off_v, off_h, lr, backend="reference")
    # samples may differ only where u is within SAMPLE_MARGIN of P; these problems have none
    assert torch.equal(chains, spec_chains)
    for g_t, s_t in zip(got[1:4], spec[1:4]):
        torch.testing.assert_close(g_t, s_t, **TOL[dtype])


@needs_cpu
def test_pcd_step_records_no_autograd_history_and_opchecks():
    v, w, vb, hb, h = _pcd_problem(4, 4, 6, 5, torch.float32)
    w, vb, hb = (torch.nn.Parameter(t) for t in (w, vb, hb))
    before = w.detach().clone()
    ops_mod = torch.ops.genkernels
    ops_mod.rbm_pcd_step_(v, w, vb, hb, h, 1, 0, 8, 0.1)
    assert w.grad_fn is None and not torch.equal(w.detach(), before)
    args = [t.detach().clone() for t in _pcd_problem(4, 3, 6, 5, torch.float64)]
    torch.library.opcheck(ops_mod.rbm_pcd_step_.default, (*args, 1, 0, 8, 0.1))
    with pytest.raises(RuntimeError, match="chains must be"):
        ops_mod.rbm_pcd_step_(args[0], args[1], args[2], args[3], args[4].float(), 1, 0, 8, 0.1)
