"""One random stream for every backend (docs/design.md, "Randomness").

Triton's own ``tl.randint4x`` / ``tl.rand`` (genkernels/triton_random.py, under
TRITON_INTERPRET=1 on CPU tensors without a GPU) are the ground truth: the PyTorch
reference and the C++ op over csrc/common/philox.h must give the same bits for the same
(seed, offsets). Random123's published known-answer vectors pin Philox4x32-10 itself.
"""

import pytest
import torch

import genkernels
from genkernels import backends
from genkernels import random as gk_random

from helpers import needs, needs_ext, needs_triton  # noqa: E402


SEEDS = [0, 1, 12345, 2**32 + 7, 2**63 - 1, 2**64 - 1]
EDGE_OFFSETS = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 2**40 + 3,
                2**63 - 1, -1, -(2**32), -(2**63)]
CPU_BACKENDS = ["reference", pytest.param("cpu", marks=needs_ext)]
from helpers import DEVICE as TRITON_DEVICE  # noqa: E402


def _offsets(n_random: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2024)
    rand = torch.randint(-(2**63), 2**63 - 1, (n_random,), dtype=torch.int64, generator=gen)
    return torch.cat([torch.tensor(EDGE_OFFSETS, dtype=torch.int64), rand])


def _bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bits of uint32 words or float32 uniforms, comparable with torch.equal."""
    return x.cpu().view(torch.int32)


@pytest.fixture(scope="module")
def triton_truth():
    """(seed) -> (randint4x, rand) from Triton's tl.randint4x / tl.rand on _offsets()."""
    offsets = _offsets().to(TRITON_DEVICE)
    return {seed: (gk_random.randint4x(seed, offsets, backend="triton").cpu(),
                   gk_random.rand(seed, offsets, backend="triton").cpu()) for seed in SEEDS}


# ----------------------------------------------------------------- known answers
# Random123 (Salmon et al. 2011) kat_vectors for philox4x32_10: counter, key -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_reference_matches_random123_known_answers(counter, key, expected):
    out = gk_random.philox4x32_10(torch.tensor([counter], dtype=torch.int64), key)
    assert out.dtype == torch.uint32
    assert out.to(torch.int64)[0].tolist() == list(expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_randint4x_of_zero_is_the_zero_known_answer(backend):
    out = gk_random.randint4x(0, torch.zeros(1, dtype=torch.int64), backend=backend)
    assert out.to(torch.int64)[0].tolist() == list(KAT[0][2])


@needs_triton
def test_triton_matches_the_zero_known_answer():
    out = gk_random.randint4x(0, torch.zeros(1, dtype=torch.int64, device=TRITON_DEVICE),
                              backend="triton")
    assert out.cpu().to(torch.int64)[0].tolist() == list(KAT[0][2])


# --------------------------------------------------- bit-identical to Triton's Philox
@needs_triton
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_randint4x_equals_triton_bit_for_bit(triton_truth, backend, seed):
    out = gk_random.randint4x(seed, _offsets(), backend=backend)
    assert out.dtype == torch.uint32 and out.shape == (_offsets().numel(), 4)
    assert torch.equal(_bits(out), _bits(triton_truth[seed][0]))


@needs_triton
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_rand_equals_triton_bit_for_bit(triton_truth, backend, seed):
    out = gk_random.rand(seed, _offsets(), backend=backend)
    assert out.dtype == torch.float32
    assert torch.equal(_bits(out), _bits(triton_truth[seed][1]))
    assert ((out >= 0) & (out < 1)).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_randint_and_rand_are_the_first_word(backend):
    offsets = _offsets()
    words = gk_random.randint4x(77, offsets, backend=backend)
    first = gk_random.randint(77, offsets, backend=backend)
    assert torch.equal(_bits(first), _bits(words[:, 0]))
    assert torch.equal(_bits(gk_random.rand(77, offsets, backend=backend)),
                       _bits(gk_random.uint_to_uniform_float(first)))


def test_negative_offsets_are_their_two_complement_counter():
    # counter (lo, hi) of -1 is (2^32 - 1, 2^32 - 1): the same as philox on that counter
    out = gk_random.randint4x(5, torch.tensor([-1, -(2**63)]), backend="reference")
    counters = torch.tensor([[2**32 - 1, 2**32 - 1, 0, 0], [0, 2**31, 0, 0]])
    assert torch.equal(_bits(out), _bits(gk_random.philox4x32_10(counters, (5, 0))))


def test_uint_to_uniform_float_extremes():
    words = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1], dtype=torch.int64)
    u = gk_random.uint_to_uniform_float(gk_random._as_uint32(words))
    scale = gk_random.UINT32_TO_UNIFORM_SCALE
    assert u.tolist() == [0.0, scale, 2**31 * scale, 2**31 * scale, 0.0]
    assert u.max().item() == float.fromhex("0x1.fffffep-1") < 1.0


# ------------------------------------------------------------------ Bernoulli draws
@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_ext),
                                     pytest.param("triton", marks=needs_triton)])
def test_bernoulli_draws_identical_across_backends(backend):
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    offsets = torch.arange(3 * 97, dtype=torch.int64).reshape(3, 97) + 2**33
    p = torch.rand(3, 97)
    expected = gk_random.rand(2**40 + 1, offsets, backend="reference") < p
    got = gk_random.rand(2**40 + 1, offsets.to(device), backend=backend).cpu() < p
    assert torch.equal(got, expected)
    # exact on constructed probabilities: p == u never fires, the next float above u does
    u = gk_random.rand(2**40 + 1, offsets.to(device), backend=backend).cpu()
    p_at_u = u.clone()
    assert not (u < p_at_u).any()
    assert (u < torch.nextafter(p_at_u, torch.ones_like(u))).all()


# ----------------------------------------------------------------------- shapes
@pytest.mark.parametrize("backend", CPU_BACKENDS + [pytest.param("triton", marks=needs_triton)])
def test_shapes_empty_and_non_contiguous(backend):
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    base = (torch.arange(7 * 5, dtype=torch.int64).reshape(7, 5) * 2**29 - 2**34).to(device)
    for offsets in (base, base.t(), base[::2, 1:], torch.empty(0, 3, dtype=torch.int64, device=device)):
        expected = gk_random.randint4x(9, offsets.cpu().contiguous(), backend="reference")
        out = gk_random.randint4x(9, offsets, backend=backend)
        assert out.shape == (*offsets.shape, 4)
        assert torch.equal(_bits(out), _bits(expected))
        u = gk_random.rand(9, offsets, backend=backend)
        assert u.shape == offsets.shape
        assert torch.equal(_bits(u), _bits(gk_random.uint_to_uniform_float(expected[..., 0])))


# ------------------------------------------------------------------- uniformity
def test_reference_stream_is_uniform():
    offsets = torch.arange(100_000, dtype=torch.int64)
    u = gk_random.rand(2024, offsets, backend="reference")
    assert ((u >= 0) & (u < 1)).all()
    # 100 bins, 99 degrees of freedom: P(chi2 > 200) < 1e-8 for a uniform stream
    counts = torch.bincount((u * 100).long(), minlength=100).double()
    chi2 = ((counts - 1000.0) ** 2 / 1000.0).sum().item()
    assert chi2 < 200, chi2
    # every word of randint4x: its top byte in 256 bins, 255 dof: P(chi2 > 400) < 1e-8
    words = gk_random.randint4x(2024, offsets, backend="reference").to(torch.int64)
    for column in range(4):
        counts = torch.bincount(words[:, column] >> 24, minlength=256).double()
        expected = 100_000 / 256
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2 < 400, (column, chi2)
    # neighbouring counters are not correlated
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 0.02


# ------------------------------------------------------------------ registered ops
@needs_ext
def test_opcheck_cpu_ops():
    offsets = _offsets(13).reshape(5, 5)
    torch.library.opcheck(torch.ops.genkernels.philox_randint4x.default, (12345, offsets))
    torch.library.opcheck(torch.ops.genkernels.philox_rand.default, (-1, offsets))


@needs_ext
def test_auto_backend_on_cpu_is_the_extension():
    assert backends.resolve("philox_randint4x", torch.device("cpu")) == "cpu"
    assert backends.resolve("philox_rand", torch.device("cpu")) == "cpu"
    offsets = _offsets()
    assert torch.equal(_bits(gk_random.rand(3, offsets)),
                       _bits(gk_random.rand(3, offsets, backend="reference")))


def test_exported_from_the_package():
    assert genkernels.random is gk_random


# ----------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("fn", [gk_random.randint4x, gk_random.randint, gk_random.rand])
def test_bad_arguments_raise_clear_errors(fn):
    offsets = torch.arange(4)
    with pytest.raises(TypeError, match="offsets must be an int64 tensor"):
        fn(0, offsets.int())
    with pytest.raises(TypeError, match="offsets must be an int64 tensor"):
        fn(0, offsets.float())
    with pytest.raises(TypeError, match="offsets must be a torch.Tensor"):
        fn(0, [0, 1, 2])
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\); got -1"):
        fn(-1, offsets)
    with pytest.raises(ValueError, match="seed must be in"):
        fn(2**64, offsets)
    with pytest.raises(TypeError, match="seed must be an integer"):
        fn(1.5, offsets)
    with pytest.raises(TypeError, match="seed must be an integer"):
        fn(True, offsets)
    with pytest.raises(ValueError, match="backend must be one of"):
        fn(0, offsets, backend="numpy")
    with pytest.raises(backends.BackendUnavailableError, match="cuda"):
        fn(0, offsets, backend="cuda")


def test_uint_to_uniform_float_rejects_other_dtypes():
    with pytest.raises(TypeError, match="uint32 or int32"):
        gk_random.uint_to_uniform_float(torch.arange(3))


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("seed", SEEDS)
def test_cuda_op_equals_triton_on_device(seed):
    gen = torch.Generator().manual_seed(seed % 1000)
    offsets = torch.cat([torch.tensor(EDGE_OFFSETS),
                         torch.randint(-(2**63), 2**63 - 1, (100_003,), generator=gen)]).cuda()
    truth = gk_random.randint4x(seed, offsets, backend="triton")
    for backend in ("cuda", "reference"):
        assert torch.equal(_bits(gk_random.randint4x(seed, offsets, backend=backend)), _bits(truth))
        assert torch.equal(_bits(gk_random.rand(seed, offsets, backend=backend)),
                           _bits(gk_random.rand(seed, offsets, backend="triton")))
    assert torch.equal(_bits(truth), _bits(gk_random.randint4x(seed, offsets.cpu(), backend="reference")))


@needs_ext
def test_compiles_fullgraph():
    offsets = _offsets()

    @torch.compile(fullgraph=True)
    def bernoulli(offsets, p):
        return gk_random.rand(2**63 + 11, offsets) < p

    p = torch.rand(offsets.shape)
    expected = gk_random.rand(2**63 + 11, offsets, backend="reference") < p
    assert torch.equal(bernoulli(offsets, p), expected)


# ------------------------------------------------------------------ the stream and randn
def _box_muller_by_hand(seed, counters):
    """The stated formula, term by term, in float64."""
    import math
    words = gk_random.randint4x(seed, counters, backend="reference")
    u0 = 1.0 - gk_random.uint_to_uniform_float(words[..., 0].contiguous()).double()
    u1 = gk_random.uint_to_uniform_float(words[..., 1].contiguous()).double()
    return torch.sqrt(-2.0 * torch.log(u0)) * torch.cos(2.0 * math.pi * u1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_randn_is_the_stated_formula_and_bit_identical_on_cpu_backends(dtype):
    counters = _offsets()
    want = _box_muller_by_hand(2**64 - 3, counters).to(dtype)
    for backend in ["reference"] + (["cpu"] if "cpu" in backends.available_backends("cpu") else []):
        got = gk_random.randn(2**64 - 3, counters, dtype=dtype, backend=backend)
        assert got.dtype == dtype and torch.equal(got, want), backend


@needs("triton", "cpu")
def test_randn_on_triton_words_equals_the_reference():
    counters = _offsets(32)
    want = gk_random.randn(5, counters, backend="reference")
    assert torch.equal(gk_random.randn(5, counters, backend="triton"), want)


def test_randn_is_standard_normal_and_finite():
    z = gk_random.randn(11, torch.arange(200_000, dtype=torch.int64), dtype=torch.float64)
    assert bool(torch.isfinite(z).all())
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1.0) < 0.01
    # the tails: P(|z| > 3) = 0.0027
    assert 0.0020 < float((z.abs() > 3).double().mean()) < 0.0034


def test_randn_rejects_an_integer_dtype():
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype"):
        gk_random.randn(0, torch.arange(3), dtype=torch.int32)


def test_stream_hands_out_consecutive_counters_with_the_int64_wrap():
    s = gk_random.PhiloxStream(seed=9, offset=2**63 - 2)
    assert s.take(3) == 2**63 - 2 and s.offset == -2**63 + 1
    s = gk_random.PhiloxStream(seed=9, offset=2**63 - 2)
    assert s.counters(4).tolist() == [2**63 - 2, 2**63 - 1, -2**63, -2**63 + 1]
    s = gk_random.PhiloxStream(seed=9)
    a = s.rand(2, 3)
    b = s.randn(5, dtype=torch.float64)
    assert s.offset == 11
    assert torch.equal(a, gk_random.rand(9, torch.arange(6).reshape(2, 3)))
    assert torch.equal(b, gk_random.randn(9, torch.arange(6, 11), dtype=torch.float64))


def test_stream_bernoulli_is_rand_below_p():
    p = torch.linspace(0, 1, 257, dtype=torch.float64)
    s = gk_random.PhiloxStream(seed=3, offset=100)
    draws = s.bernoulli(p)
    assert draws.dtype == torch.uint8 and s.offset == 357
    assert torch.equal(draws, (gk_random.rand(3, torch.arange(100, 357)) < p).to(torch.uint8))
    assert int(draws[0]) == 0 and int(draws[-1]) == 1
    with pytest.raises(TypeError, match="p must be a floating-point tensor"):
        s.bernoulli(torch.ones(3, dtype=torch.int64))


def test_stream_state_round_trips_and_is_validated():
    s = gk_random.PhiloxStream(seed=2**64 - 1, offset=-5)
    s.randn(7)
    t = gk_random.PhiloxStream()
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict() == {"seed": 2**64 - 1, "offset": 2}
    assert torch.equal(t.randn(4), s.randn(4))
    for bad, exc, match in [({"seed": -1, "offset": 0}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
                            ({"seed": 1, "offset": 2**63}, ValueError, "offset must be an int64"),
                            ({"seed": 1.5, "offset": 0}, TypeError, "seed must be an integer"),
                            ({"seed": 1}, ValueError, "keys 'seed' and 'offset'")]:
        with pytest.raises(exc, match=match):
            t.load_state_dict(bad)
    assert t.state_dict() == s.state_dict()  # a refused state changes nothing
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        t.take(-1)


def test_forks_are_reproducible_and_independent():
    parent = gk_random.PhiloxStream(seed=123)
    kids = [parent.fork(i) for i in range(4)]
    assert [k.seed for k in kids] == [gk_random.PhiloxStream(seed=123).fork(i).seed for i in range(4)]
    assert len({k.seed for k in kids} | {parent.seed}) == 5
    parent.randn(10)
    assert parent.fork(2).seed == kids[2].seed  # the parent's offset does not change its children
    draws = torch.stack([k.rand(4096) for k in kids] + [gk_random.PhiloxStream(seed=123).rand(4096)])
    corr = torch.corrcoef(draws.double())
    assert float((corr - torch.eye(5, dtype=torch.float64)).abs().max()) < 0.06
    with pytest.raises(ValueError, match="index must be >= 0"):
        parent.fork(-1)


def test_a_draw_that_raises_takes_no_counters():
    s = gk_random.PhiloxStream(seed=4, offset=10)
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype"):
        s.randn(3, dtype=torch.int32)
    with pytest.raises(ValueError, match="backend must be one of"):
        s.rand(3, backend="gpu")
    with pytest.raises(genkernels.backends.BackendUnavailableError):
        s.randint4x(3, backend="cuda")
    assert s.offset == 10
    assert torch.equal(s.rand(3), gk_random.rand(4, torch.arange(10, 13))) and s.offset == 13

