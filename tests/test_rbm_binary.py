"""The binary-state path of RBMs: genkernels.ops.rbm_half_step_binary, the scattered weight
statistics and RBM.fit(state_path=...), against the reference and the dense path."""

import math

import pytest
import torch
from helpers import COMPILED, needs, needs_cpu  # noqa: E402
from tolerances import TOL

import genkernels
from genkernels import backends, ops
from genkernels import random as gk_random
from genkernels.boltzmann import rbm_ops
from genkernels.boltzmann import rbm_reference as reference

# CPU tensors through the Triton interpreter (a GPU machine runs the cuda-device tests)
needs_interpreted_triton = needs("triton", "cpu")
DTYPES = (torch.float32, torch.float64)
# (B, n_visible, n_hidden): single units, widths around the AVX-512 vector (16), the
# 256-column register block of the cpu gathers (255, 257, 300) and the Triton block (128);
# the interpreted Triton kernel runs one program per row and 128-unit slice, so its 129-wide
# shape has 9 rows (the cpu one also runs it with 40)
SHAPES = [(1, 1, 1), (3, 1, 17), (5, 17, 1), (7, 31, 33), (9, 129, 65)]
CPU_SHAPES = SHAPES + [(40, 129, 65), (70, 257, 255), (33, 300, 513), (100, 784, 256)]
SAMPLE_MARGIN = 1e-6


def _binary_problem(b, n_vis, n_hid, dtype, transpose, states="uint8", density=0.3, seed=0):
    """Weights, bias and 0/1 states whose first row is all zeros and second all ones."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n_vis, n_hid, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    n_in, n_out = (n_hid, n_vis) if transpose else (n_vis, n_hid)
    bias = (torch.randn(n_out, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    s = (torch.rand(b, n_in, generator=g) < density).to(torch.uint8)
    s[0] = 0
    if b > 1:
        s[1] = 1
    return (s if states == "uint8" else s.to(dtype)), w, bias


def _uniforms(seed, offset, b, n_out):
    q = (n_out + 3) // 4
    counters = torch.arange(b * q, dtype=torch.int64).reshape(b, q) + offset
    words = gk_random.randint4x(seed, counters, backend="reference").reshape(b, 4 * q)[:, :n_out]
    return gk_random.uint_to_uniform_float(words.contiguous())


def test_reference_is_the_dense_half_step_on_binary_states():
    """The spec's gathered sums equal s @ W + bias, and its samples are rbm_half_step's
    wherever the probabilities are."""
    for transpose in (False, True):
        s, w, bias = _binary_problem(30, 23, 11, torch.float64, transpose)
        pre = reference.half_step_binary_preactivations(s, w, bias, transpose)
        dense = s.double() @ (w.T if transpose else w) + bias
        torch.testing.assert_close(pre, dense, rtol=1e-12, atol=1e-12)
        samples, probs = reference.rbm_half_step_binary(s, w, bias, 3, 5, transpose, True)
        dense_samples, dense_probs = reference.rbm_half_step(s, w, bias, 3, 5, transpose, True)
        torch.testing.assert_close(probs, dense_probs, rtol=1e-12, atol=1e-12)
        assert torch.equal(samples, dense_samples)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("states", ["uint8", "float"])
def test_matches_reference(backend, dtype, transpose, states):
    seed, offset = 2**40 + 7, 12345
    shapes = CPU_SHAPES if backend == "cpu" else SHAPES
    for i, (b, n_vis, n_hid) in enumerate(shapes):
        s, w, bias = _binary_problem(b, n_vis, n_hid, dtype, transpose, states, seed=i)
        ref_samples, ref_probs = ops.rbm_half_step_binary(s, w, bias, seed, offset, transpose, True,
                                                          backend="reference")
        samples, probs = ops.rbm_half_step_binary(s, w, bias, seed, offset, transpose, True, backend=backend)
        assert samples.dtype == torch.uint8 and probs.dtype == dtype
        assert samples.shape == probs.shape == ref_probs.shape
        torch.testing.assert_close(probs, ref_probs, **TOL[dtype])
        decided = (_uniforms(seed, offset, *ref_probs.shape).to(dtype) - ref_probs).abs() > SAMPLE_MARGIN
        assert torch.equal(samples[decided], ref_samples[decided]), (b, n_vis, n_hid)
        # the all-zeros row is sigmoid(bias)
        torch.testing.assert_close(probs[0], torch.sigmoid(bias), **TOL[dtype])
        only = ops.rbm_half_step_binary(s, w, bias, seed, offset, transpose, backend=backend)
        assert torch.equal(only, samples)


@pytest.mark.parametrize("backend", ["reference", *COMPILED])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("offset", [0, 2**32 - 5, -3])
def test_samples_equal_the_dense_op_on_exact_probabilities(backend, transpose, offset):
    """w = 0 and biases 0 / +inf / -inf make P exactly 0.5 / 1 / 0: the binary op draws the
    dense op's samples bit for bit (the same counters), whatever the offset."""
    b, n_vis, n_hid = (37, 29, 70) if backend == "triton" else (150, 45, 83)
    n_in, n_out = (n_hid, n_vis) if transpose else (n_vis, n_hid)
    w = torch.zeros(n_vis, n_hid)
    bias = torch.tensor([0.0, math.inf, -math.inf], dtype=torch.float32).repeat(n_out)[:n_out]
    s = (torch.rand(b, n_in) < 0.5).to(torch.uint8)
    seed = 987654321987
    dense = ops.rbm_half_step(s, w, bias, seed, offset, transpose, backend="reference")
    assert torch.equal(ops.rbm_half_step_binary(s, w, bias, seed, offset, transpose, backend=backend), dense)


@needs_cpu
@pytest.mark.parametrize("isa", ["avx2", "native"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_vector_paths_match_the_dense_op(isa, dtype, monkeypatch):
    """AVX2 and AVX-512 (where the CPU has it) gathers: probabilities equal the dense op's
    within the dtype tolerance, samples equal where decided."""
    if isa == "avx2":
        monkeypatch.setenv("GENKERNELS_CPU_ISA", "avx2")
    for transpose in (False, True):
        for n_hid in (1, 15, 16, 17, 256, 257, 300):
            s, w, bias = _binary_problem(23, 41, n_hid, dtype, transpose, seed=n_hid)
            samples, probs = ops.rbm_half_step_binary(s, w, bias, 11, 2**32 - 7, transpose, True, backend="cpu")
            dense_samples, dense_probs = ops.rbm_half_step(s, w, bias, 11, 2**32 - 7, transpose, True,
                                                           backend="cpu")
            torch.testing.assert_close(probs, dense_probs, **TOL[dtype])
            u = _uniforms(11, 2**32 - 7, *probs.shape).to(dtype)
            decided = (u - dense_probs).abs() > SAMPLE_MARGIN
            assert torch.equal(samples[decided], dense_samples[decided])


def test_empty_batches_and_layers():
    w = torch.randn(4, 3)
    for backend in ["reference", *COMPILED]:
        samples, probs = ops.rbm_half_step_binary(torch.zeros(0, 4, dtype=torch.uint8), w, torch.zeros(3), 1, 0,
                                                  return_probs=True, backend=backend)
        assert samples.shape == (0, 3) and probs.shape == (0, 3)
        samples = ops.rbm_half_step_binary(torch.zeros(2, 3), torch.zeros(0, 3), torch.zeros(0), 1, 0,
                                           transpose=True, backend=backend)
        assert samples.shape == (2, 0)
        samples, probs = ops.rbm_half_step_binary(torch.zeros(2, 0), torch.zeros(0, 3), torch.zeros(3), 1, 0,
                                                  return_probs=True, backend=backend)
        assert torch.equal(probs, torch.full((2, 3), 0.5))


def test_bad_arguments_raise_clear_errors():
    w = torch.randn(4, 3)
    s = (torch.rand(2, 4) < 0.5).float()
    with pytest.raises(ValueError, match=r"s must hold binary states \(0 or 1\); got the value 0.5"):
        ops.rbm_half_step_binary(torch.full((2, 4), 0.5), w, torch.zeros(3), 0)
    with pytest.raises(ValueError, match=r"s must hold binary states \(0 or 1\); got the value 2"):
        ops.rbm_half_step_binary(torch.full((2, 4), 2, dtype=torch.uint8), w, torch.zeros(3), 0)
    with pytest.raises(ValueError, match=r"s must be \(B, 3\): the hidden layer"):
        ops.rbm_half_step_binary(s, w, torch.zeros(4), 0, transpose=True)
    with pytest.raises(ValueError, match=r"bias must be \(3,\)"):
        ops.rbm_half_step_binary(s, w, torch.zeros(4), 0)
    with pytest.raises(TypeError, match="w must be float32 or float64"):
        ops.rbm_half_step_binary(s, w.half(), torch.zeros(3), 0)
    with pytest.raises(TypeError, match="s must be a floating-point tensor"):
        ops.rbm_half_step_binary(s.long(), w, torch.zeros(3), 0)
    with pytest.raises(backends.BackendUnavailableError, match="rbm_half_step_binary has no cuda backend"):
        ops.rbm_half_step_binary(s, w, torch.zeros(3), 0, backend="cuda")


# ------------------------------------------------------------------ weight statistics
@pytest.mark.parametrize("backend", ["reference", *(["cpu", "cpu-avx2"] if "cpu" in COMPILED else [])])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("states", ["uint8", "float"])
def test_binary_outer_add_equals_addmm(backend, dtype, states, monkeypatch):
    """out += alpha x^T h by scatters equals addmm (and the column sums x.sum(0)), over
    widths around the register blocks, all-zeros and all-ones columns and rows of x; on
    the AVX-512 (where the CPU has it) and the AVX2 cpu paths."""
    if backend == "cpu-avx2":
        monkeypatch.setenv("GENKERNELS_CPU_ISA", "avx2")
        backend = "cpu"
    for i, (b, n_in, n_out) in enumerate([(1, 1, 1), (5, 3, 17), (33, 70, 257), (100, 784, 256), (9, 40, 513)]):
        g = torch.Generator().manual_seed(i)
        x = (torch.rand(b, n_in, generator=g) < 0.3).to(torch.uint8)
        x[0] = 1
        x[:, 0] = 0
        h = torch.rand(b, n_out, generator=g, dtype=torch.float64).to(dtype)
        out = torch.randn(n_in, n_out, generator=g, dtype=torch.float64).to(dtype)
        expected = torch.addmm(out, x.to(dtype).T, h, alpha=-0.37)
        column_sums = torch.randn(n_in, generator=g, dtype=torch.float64).to(dtype)
        expected_sums = column_sums + 0.25 * x.to(dtype).sum(0)
        rbm_ops.binary_outer_add_(out, x if states == "uint8" else x.to(dtype), h, -0.37, column_sums, 0.25,
                                  backend)
        torch.testing.assert_close(out, expected, **TOL[dtype])
        torch.testing.assert_close(column_sums, expected_sums, **TOL[dtype])


@pytest.mark.parametrize("backend", ["reference", *(["cpu"] if "cpu" in COMPILED else [])])
def test_pack_binary(backend):
    x = (torch.rand(70, 33) < 0.4).float()
    assert torch.equal(rbm_ops.pack_binary(x, backend), x.to(torch.uint8))
    assert torch.equal(rbm_ops.pack_binary(x.double(), backend), x.to(torch.uint8))
    for value in (0.5, 2.0, -1.0, math.nan):
        y = x.clone()
        y[69, 32] = value
        assert rbm_ops.pack_binary(y, backend) is None, value


@needs_cpu
def test_opcheck():
    for dtype in DTYPES:
        for transpose in (False, True):
            s, w, bias = _binary_problem(9, 13, 6, dtype, transpose)
            for return_probs in (False, True):
                torch.library.opcheck(torch.ops.genkernels.rbm_half_step_binary.default,
                                      (s, w, bias, -5, 77, transpose, return_probs))
            torch.library.opcheck(torch.ops.genkernels.rbm_half_step_binary.default,
                                  (s.to(dtype), w, bias, 3, 0, transpose, True))
        x = (torch.rand(9, 13) < 0.5).to(torch.uint8)
        torch.library.opcheck(torch.ops.genkernels.rbm_binary_outer_add_.default,
                              (torch.randn(13, 6, dtype=dtype), x, torch.rand(9, 6, dtype=dtype), 0.5,
                               torch.zeros(13, dtype=dtype), -0.25))
        for values in (x.to(dtype), x.to(dtype) * 0.5):
            torch.library.opcheck(torch.ops.genkernels.rbm_pack_binary.default, (values,))


@needs_interpreted_triton
def test_opcheck_triton():
    from genkernels.boltzmann import rbm_triton  # noqa: F401
    s, w, bias = _binary_problem(9, 13, 6, torch.float32, False)
    torch.library.opcheck(torch.ops.genkernels.rbm_half_step_binary_triton.default,
                          (s, w, bias, 11, 3, False, True))


@needs_cpu
def test_compiles_fullgraph():
    s, w, bias = _binary_problem(20, 15, 9, torch.float32, False)

    @torch.compile(fullgraph=True)
    def gibbs(s, w, c, b):
        h, p = ops.rbm_half_step_binary(s, w, c, 7, 0, False, True, backend="cpu")
        v = ops.rbm_half_step_binary(h, w, b, 7, 20 * 3, True, backend="cpu")
        return v, p

    b_vis = torch.zeros(15)
    v, p = gibbs(s, w, bias, b_vis)
    h_ref, p_ref = ops.rbm_half_step_binary(s, w, bias, 7, 0, False, True, backend="cpu")
    assert torch.equal(p, p_ref)
    assert torch.equal(v, ops.rbm_half_step_binary(h_ref, w, b_vis, 7, 20 * 3, True, backend="cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
def test_triton_on_cuda_matches_reference(dtype, transpose):
    seed, offset = 2**50 + 3, 2**32 - 9
    for i, (b, n_vis, n_hid) in enumerate([*SHAPES, (1000, 784, 256)]):
        s, w, bias = _binary_problem(b, n_vis, n_hid, dtype, transpose, seed=i)
        ref_samples, ref_probs = ops.rbm_half_step_binary(s, w, bias, seed, offset, transpose, True,
                                                          backend="reference")
        samples, probs = ops.rbm_half_step_binary(s.cuda(), w.cuda(), bias.cuda(), seed, offset, transpose, True,
                                                  backend="triton")
        torch.testing.assert_close(probs.cpu(), ref_probs, **TOL[dtype])
        decided = (_uniforms(seed, offset, *ref_probs.shape).to(dtype) - ref_probs).abs() > SAMPLE_MARGIN
        assert torch.equal(samples.cpu()[decided], ref_samples[decided])


# ------------------------------------------------------------------ RBM.fit(state_path=...)
def _binary_digits(dtype=torch.float32):
    from genkernels.data import load_digits
    x, _ = load_digits()
    return (torch.as_tensor(x, dtype=torch.float64) > 0.5).to(dtype)


def _fit(x, state_path, dtype, epochs=1, **kwargs):
    rbm = genkernels.RBM(x.shape[1], 16, seed=3, dtype=dtype)
    return rbm.fit(x, epochs=epochs, batch_size=50, method="pcd", learning_rate=0.05, monitor=None,
                   verbose=False, state_path=state_path, **kwargs)


@needs_cpu
def test_binary_path_equals_dense_path_in_float64():
    """fp64: probabilities agree to ~1e-15, so no draw differs and an epoch of PCD (with
    momentum, weight decay and sparsity) ends with the same parameters up to 1e-10."""
    x = _binary_digits(torch.float64)
    extra = {"momentum": 0.5, "weight_decay": 1e-4, "sparsity_target": 0.1}
    dense, binary = _fit(x, "dense", torch.float64, **extra), _fit(x, "binary", torch.float64, **extra)
    assert torch.equal(dense.chains, binary.chains)
    for name in ("weights", "visible_bias", "hidden_bias", "weights_velocity"):
        torch.testing.assert_close(getattr(binary, name), getattr(dense, name), rtol=1e-10, atol=1e-10)
    assert dense.offset == binary.offset


@needs_cpu
def test_binary_path_equals_dense_path_in_float32():
    """fp32 on the binarised digits: the first steps draw the same samples (a sample can only
    differ where |u - P| is within float rounding); after an epoch (36 updates) the
    parameters agree within 1e-5."""
    x = _binary_digits()
    for path in ("dense", "binary"):
        rbm = genkernels.RBM(64, 16, seed=3)
        v_pos = x[:50]
        rbm._training_states(v_pos, path)
        if path == "binary":
            v_pos = v_pos.to(torch.uint8)
        h_pos_samples, h_pos = rbm._sample_hidden(v_pos)
        v_neg = rbm._sample_visible(h_pos_samples)
        h_neg_samples, _ = rbm._sample_hidden(v_neg)
        if path == "dense":
            first = (h_pos_samples, h_pos, v_neg, h_neg_samples)
        else:
            assert torch.equal(h_pos_samples, first[0])
            torch.testing.assert_close(h_pos, first[1], rtol=1e-6, atol=1e-6)
            assert v_neg.dtype == torch.uint8 and torch.equal(v_neg.float(), first[2])
            assert torch.equal(h_neg_samples, first[3])
    dense, binary = _fit(x, "dense", torch.float32), _fit(x, "binary", torch.float32)
    for name in ("weights", "visible_bias", "hidden_bias"):
        torch.testing.assert_close(getattr(binary, name), getattr(dense, name), rtol=1e-5, atol=1e-5)


@needs_cpu
def test_auto_takes_the_binary_path_for_binary_data_only():
    x = _binary_digits()
    auto, binary = _fit(x, "auto", torch.float32), _fit(x, "binary", torch.float32)
    assert torch.equal(auto.weights, binary.weights)
    fractional = x * 0.75
    auto, dense = _fit(fractional, "auto", torch.float32), _fit(fractional, "dense", torch.float32)
    assert torch.equal(auto.weights, dense.weights)
    # binarize='threshold' data are binary
    auto = _fit(fractional, "auto", torch.float32, binarize="threshold")
    assert torch.equal(auto.weights, _fit(x, "binary", torch.float32).weights)
    # after fit, sampling and transform use the model's dtype as before
    assert auto.sample(3, n_steps=2, seed=1).dtype == torch.float32


def test_state_path_errors():
    x = _binary_digits()
    with pytest.raises(ValueError, match="state_path must be one of 'auto', 'dense', 'binary'; got 'sparse'"):
        _fit(x, "sparse", torch.float32)
    with pytest.raises(ValueError, match="state_path='binary' needs exactly binary training data"):
        _fit(x * 0.5, "binary", torch.float32)
    gaussian = genkernels.RBM(64, 4, "gaussian", seed=0)
    with pytest.raises(ValueError, match="state_path='binary' needs Bernoulli visible units"):
        gaussian.fit(x, epochs=1, verbose=False, state_path="binary")
