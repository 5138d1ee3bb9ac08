"""Checkerboard Ising lattices (genkernels.Ising2D, genkernels.ops.ising_sweep).

* every backend -- reference (PyTorch on int8 spins), cpu (multi-spin coded, portable and
  AVX-512 builds), triton (interpreted on CPU tensors without a GPU), cuda (gpu-marked) --
  produces identical lattices, torch.equal, over several sweeps, both algorithms, h != 0,
  several lattices and L = 4, 6, 18, 64;
* the counter layout is pinned independently of the samplers, and the thresholds by
  their formula;
* the samples are right: exact 4 x 4 averages by enumeration, Onsager's energy and Yang's
  magnetisation at L = 128, and Kaufman's finite-lattice energy at T_c, each within three
  standard errors from binning.
"""
import math

import ising_exact as exact
import pytest
import torch

import genkernels
from genkernels import Ising2D, backends, ops
from genkernels import random as gk_random
from genkernels.ising import reference

from helpers import DEVICE as TRITON_DEVICE  # noqa: E402
from helpers import HAS_CPU, needs_cpu, needs_triton  # noqa: E402

SIZES = [4, 6, 18, 64]
TWO_32 = 2**32


def _random_spins(n_lattices, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (n_lattices, L, L), generator=g) * 2 - 1).to(torch.int8)


@pytest.fixture(params=["portable", "avx512"])
def cpu_isa(request, monkeypatch):
    """Runs a cpu test on both builds of the kernel (the AVX-512 one where the CPU has it)."""
    if request.param == "portable":
        monkeypatch.setenv("GENKERNELS_CPU_ISA", "avx2")
    else:
        monkeypatch.delenv("GENKERNELS_CPU_ISA", raising=False)
    return request.param


# ------------------------------------------------------------------------ thresholds
def test_thresholds_heatbath_formula():
    T, J, h = 2.1, 0.7, 0.35
    F = ops.ising_thresholds(T, J, h, "heatbath")
    assert F.dtype == torch.int64 and F.shape == (2, 5)
    for n in range(5):
        field = J * (2 * n - 4) + h
        p_up = 1.0 / (1.0 + math.exp(-2.0 * field / T))
        assert int(F[0, n]) == math.floor(p_up * TWO_32 + 0.5)
        assert int(F[0, n]) + int(F[1, n]) == TWO_32  # P(s' = +1) whatever s was


def test_thresholds_metropolis_formula():
    T, J, h = 1.7, 1.0, -0.4
    F = ops.ising_thresholds(T, J, h, "metropolis")
    for sigma, s in ((0, -1), (1, 1)):
        for n in range(5):
            delta_e = 2 * s * (J * (2 * n - 4) + h)
            want = TWO_32 if delta_e <= 0 else math.floor(math.exp(-delta_e / T) * TWO_32 + 0.5)
            assert int(F[sigma, n]) == want


def test_thresholds_extremes():
    cold = ops.ising_thresholds(1e-4, algorithm="heatbath")
    assert cold[0].tolist() == [0, 0, TWO_32 // 2, TWO_32, TWO_32]
    assert cold[1].tolist() == [TWO_32, TWO_32, TWO_32 // 2, 0, 0]
    cold_m = ops.ising_thresholds(1e-4, algorithm="metropolis")
    # a -1 spin among n = 0, 1 up-neighbours never flips; ΔE = 0 (n = 2) always flips
    assert cold_m.tolist() == [[0, 0, TWO_32, TWO_32, TWO_32], [TWO_32, TWO_32, TWO_32, 0, 0]]


# ----------------------------------------------------------------- the counter layout
def _documented_words(seed, offset, L, B, sweep, colour):
    """Site k's word straight from the documented formula, one site at a time."""
    Q = 16 * math.ceil(L * L / 128)
    out = torch.empty(B, L * L // 2, dtype=torch.int64)
    for b in range(B):
        for k in range(L * L // 2):
            g, w, lane = k // 64, (k // 16) % 4, k % 16
            counter = offset + ((sweep * B + b) * 2 + colour) * Q + 16 * g + lane
            word = gk_random.randint4x(seed, torch.tensor([counter]), backend="reference")[0, w]
            out[b, k] = int(word.view(torch.int32)) & 0xFFFFFFFF
    return out


def test_reference_layout_matches_documentation():
    seed, offset, L, B = 99, 1000, 6, 2
    for sweep, colour in ((0, 0), (0, 1), (2, 1)):
        got = reference.colour_randoms(seed, offset, L, B, sweep, colour)
        assert torch.equal(got, _documented_words(seed, offset, L, B, sweep, colour))


def _backends_here():
    names = ["reference"]
    if HAS_CPU:
        names.append("cpu")
    if "triton" in backends.available_backends(TRITON_DEVICE):
        names.append("triton")
    return names


@pytest.mark.parametrize("L", [4, 6, 18])
def test_flips_follow_documented_words_on_every_backend(L):
    """With every threshold equal to X a site flips iff its own word u < X, whatever its
    neighbours: one sweep then exposes each site's word, checked against the formula."""
    seed, offset, B, X = 2**40 + 3, -77, 3, 3 * 2**30
    spins = _random_spins(B, L, seed=L)
    table = torch.full((2, 5), X, dtype=torch.int64)
    want = spins.clone()
    for colour in (0, 1):
        rows, cols = reference.colour_sites(L, colour)
        u = _documented_words(seed, offset, L, B, 0, colour)
        s = want[:, rows, cols]
        want[:, rows, cols] = torch.where(u < X, -s, s)
    for name in _backends_here():
        device = TRITON_DEVICE if name == "triton" else "cpu"
        got = ops.ising_sweep(spins.to(device), table, 1, seed, offset, backend=name).cpu()
        assert torch.equal(got, want), name


@pytest.mark.parametrize("value,flips", [(0, False), (TWO_32, True)])
def test_threshold_zero_never_and_two_to_32_always_flip(value, flips):
    spins = _random_spins(2, 18, seed=5)
    table = torch.full((2, 5), value, dtype=torch.int64)
    for name in _backends_here():
        device = TRITON_DEVICE if name == "triton" else "cpu"
        got = ops.ising_sweep(spins.to(device), table, 1, 7, 0, backend=name).cpu()
        assert torch.equal(got, -spins if flips else spins), name


# ------------------------------------------------------- every backend, identical lattices
CASES = [(L, alg) for L in SIZES for alg in reference.ALGORITHMS]


def _case(L, algorithm):
    spins = _random_spins(3, L, seed=L)
    table = ops.ising_thresholds(2.4, 1.0, 0.3, algorithm)
    return spins, table, 3, 2**63 + 12345, -(2**33) + 5


@pytest.mark.parametrize("L,algorithm", CASES)
@needs_cpu
def test_cpu_equals_reference(L, algorithm, cpu_isa):
    spins, table, n, seed, offset = _case(L, algorithm)
    want = ops.ising_sweep(spins, table, n, seed, offset, backend="reference")
    got = ops.ising_sweep(spins, table, n, seed, offset, backend="cpu")
    assert torch.equal(got, want)
    assert not torch.equal(got, spins)


@pytest.mark.parametrize("L,algorithm", CASES)
@needs_triton
def test_triton_equals_reference(L, algorithm):
    spins, table, n, seed, offset = _case(L, algorithm)
    want = ops.ising_sweep(spins, table, n, seed, offset, backend="reference")
    got = ops.ising_sweep(spins.to(TRITON_DEVICE), table, n, seed, offset, backend="triton")
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("L", [4, 6, 18])
def test_samples_equal_on_every_backend(L):
    """ising_sample's in-kernel bond and spin sums (popcounts on the packed bits in the cpu
    kernel) equal the observables of the lattices the reference passes through."""
    spins, table, _, seed, offset = _case(L, "metropolis")
    lattices = [spins]
    for t in range(5):
        lattices.append(ops.ising_sweep(lattices[-1], table, 1, seed,
                                        offset + t * ops.ising_counters_per_sweep(L, 3),
                                        backend="reference"))
    bonds, totals = zip(*(ops.ising_observables(x) for x in lattices[2::2]))
    want = (lattices[-1], torch.stack(bonds, 1), torch.stack(totals, 1))
    for name in _backends_here():
        device = TRITON_DEVICE if name == "triton" else "cpu"
        got = ops.ising_sample(spins.to(device), table, 5, 2, seed, offset, backend=name)
        for g, w in zip(got, want):
            assert torch.equal(g.cpu(), w), name


@needs_cpu
@pytest.mark.parametrize("L", [130, 256])
def test_cpu_equals_reference_partial_and_full_words(L, cpu_isa):
    """L / 2 = 65 (a one-bit last word) and 128 (two full words) spins per row and colour."""
    spins = _random_spins(2, L, seed=L)
    table = ops.ising_thresholds(2.269, 1.0, -0.2, "metropolis")
    want = ops.ising_sample(spins, table, 2, 1, 3, 10, backend="reference")
    got = ops.ising_sample(spins, table, 2, 1, 3, 10, backend="cpu")
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@needs_cpu
def test_cpu_thread_count_does_not_change_the_lattices():
    """One thread, or several over whole lattices (B >= threads) or over row chunks with
    barriers (B < threads): the same lattices and samples."""
    table = ops.ising_thresholds(2.0, algorithm="heatbath")
    threads = torch.get_num_threads()
    # (row chunks get a thread per 2^18 spins: L = 726 gets two; 5 lattices get two threads)
    for n_lattices, L in ((1, 726), (5, 130)):
        spins = _random_spins(n_lattices, L)
        try:
            torch.set_num_threads(1)
            one = ops.ising_sample(spins, table, 4, 2, 1, 0, backend="cpu")
            torch.set_num_threads(max(2, threads))
            many = ops.ising_sample(spins, table, 4, 2, 1, 0, backend="cpu")
        finally:
            torch.set_num_threads(threads)
        assert all(torch.equal(a, b) for a, b in zip(one, many))


@pytest.mark.parametrize("name", ["reference", pytest.param("cpu", marks=needs_cpu),
                                  pytest.param("triton", marks=needs_triton)])
def test_empty_and_noncontiguous_input(name):
    device = TRITON_DEVICE if name == "triton" else "cpu"
    table = ops.ising_thresholds(2.5)
    empty = torch.empty(0, 6, 6, dtype=torch.int8, device=device)
    assert ops.ising_sweep(empty, table, 2, backend=name).shape == (0, 6, 6)
    spins = _random_spins(2, 6, seed=4).to(device)
    view = spins.transpose(1, 2)
    assert not view.is_contiguous()
    want = ops.ising_sweep(view.contiguous(), table, 2, 5, 0, backend="reference")
    assert torch.equal(ops.ising_sweep(view, table, 2, 5, 0, backend=name).cpu(), want.cpu())
    assert torch.equal(ops.ising_sweep(spins, table, 0, backend=name), spins)


@pytest.mark.gpu
@pytest.mark.parametrize("L,algorithm", CASES + [(256, "heatbath"), (130, "metropolis")])
def test_cuda_equals_cpu(L, algorithm):
    spins, table, n, seed, offset = _case(L, algorithm)
    want = ops.ising_sweep(spins, table, n, seed, offset, backend="cpu")
    got = ops.ising_sweep(spins.cuda(), table, n, seed, offset, backend="cuda")
    assert torch.equal(got.cpu(), want)
    want = ops.ising_sample(spins, table, n, 1, seed, offset, backend="cpu")
    got = ops.ising_sample(spins.cuda(), table, n, 1, seed, offset, backend="cuda")
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))


@pytest.mark.gpu
def test_cuda_model_matches_cpu_model():
    a = Ising2D(1024, 2.269, n_lattices=4, init="random", seed=11, device="cuda").sweep(7)
    b = Ising2D(1024, 2.269, n_lattices=4, init="random", seed=11).sweep(7)
    assert torch.equal(a.spins.cpu(), b.spins)


# ------------------------------------------------------------------ ops surface
@needs_cpu
def test_opcheck_cpu():
    spins = _random_spins(2, 6)
    table = ops.ising_thresholds(2.2, 1.0, 0.1, "metropolis")
    for every in (0, 1, 3):
        torch.library.opcheck(torch.ops.genkernels.ising_sweep.default, (spins, table, 4, 3, 4, every))


@needs_triton
def test_opcheck_triton():
    from genkernels.ising import triton as ising_triton  # noqa: F401

    spins = _random_spins(2, 6).to(TRITON_DEVICE)
    table = ops.ising_thresholds(2.2).to(TRITON_DEVICE)
    torch.library.opcheck(torch.ops.genkernels.ising_sweep_triton.default, (spins, table, 2, 3, 4, 1))


@needs_cpu
def test_compile_fullgraph():
    spins = _random_spins(2, 8)
    table = ops.ising_thresholds(2.2)

    @torch.compile(fullgraph=True)
    def run(s):
        out = ops.ising_sweep(s, table, 2, 5, 0)
        return out, ops.ising_observables(out)

    out, (_bonds, total) = run(spins)
    want = ops.ising_sweep(spins, table, 2, 5, 0)
    assert torch.equal(out, want)
    assert torch.equal(total, want.to(torch.int64).sum((1, 2)))


# --------------------------------------------------------------------------- the model
def test_model_observables_of_the_ordered_state():
    model = Ising2D(6, 2.0, J=0.5, h=0.25, n_lattices=3)
    assert model.spins.dtype == torch.int8 and torch.all(model.spins == 1)
    assert torch.equal(model.energy_per_spin(), torch.full((3,), -2 * 0.5 - 0.25, dtype=torch.float64))
    assert torch.equal(model.magnetization(), torch.ones(3, dtype=torch.float64))
    flipped = model.spins.clone()
    flipped[0, 2, 3] = -1  # one spin down: four broken bonds, M = N - 2
    model.spins = flipped
    assert float(model.energy_per_spin()[0]) == pytest.approx((-0.5 * (72 - 8) - 0.25 * 34) / 36)
    assert float(model.magnetization()[0]) == pytest.approx(34 / 36)


@pytest.mark.parametrize("name", ["reference", pytest.param("cpu", marks=needs_cpu)])
def test_model_stream_continues_across_calls(name):
    """sweep(2); sweep(3) == sweep(5): the offset advances by the counters consumed."""
    a = Ising2D(18, 2.5, n_lattices=2, init="random", seed=41, algorithm="metropolis")
    b = Ising2D(18, 2.5, n_lattices=2, init="random", seed=41, algorithm="metropolis")
    a.sweep(2, backend=name).sweep(3, backend=name)
    b.sweep(5, backend=name)
    assert torch.equal(a.spins, b.spins)
    assert a.offset == b.offset == 5 * ops.ising_counters_per_sweep(18, 2)
    assert a.sweeps_done == 5


@pytest.mark.parametrize("name", ["reference", pytest.param("cpu", marks=needs_cpu)])
def test_model_checkpoint_resumes_exactly(tmp_path, name):
    model = Ising2D(10, 2.3, h=0.1, n_lattices=3, algorithm="metropolis", init="random", seed=2**40)
    model.sweep(3, backend=name)
    model.save(tmp_path / "ising.pt")
    loaded = Ising2D.load(tmp_path / "ising.pt")
    assert torch.equal(loaded.spins, model.spins) and loaded.offset == model.offset
    assert loaded.sweeps_done == 3 and loaded.h == 0.1 and loaded.algorithm == "metropolis"
    assert torch.equal(loaded.sweep(4, backend=name).spins, model.sweep(4, backend=name).spins)
    assert "sweeps_done=7" in repr(loaded)


def test_model_random_init_reproduces_from_seed():
    a = Ising2D(8, 3.0, n_lattices=2, init="random", seed=5)
    b = Ising2D(8, 3.0, n_lattices=2, init="random", seed=5)
    assert torch.equal(a.spins, b.spins)
    assert set(a.spins.unique().tolist()) == {-1, 1}


@pytest.mark.parametrize("kwargs,name", [
    ({"L": 7}, "L"), ({"L": 2}, "L"), ({"L": 4.0}, "L"),
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"n_lattices": 0}, "n_lattices"), ({"algorithm": "wolff"}, "algorithm"),
    ({"init": "checkerboard"}, "init"), ({"J": float("inf")}, "J"),
])
def test_model_errors_name_the_argument(kwargs, name):
    args = {"L": 8, "temperature": 2.0}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=name):
        Ising2D(**args)


def test_model_errors_are_value_errors_for_bad_values():
    for kwargs in ({"L": 7}, {"L": 2}, {"temperature": 0.0}, {"n_lattices": 0},
                   {"algorithm": "x"}, {"init": "x"}):
        args = {"L": 8, "temperature": 2.0}
        args.update(kwargs)
        with pytest.raises(ValueError):
            Ising2D(**args)


def test_op_errors():
    table = ops.ising_thresholds(2.0)
    with pytest.raises(TypeError, match="spins"):
        ops.ising_sweep(torch.ones(1, 4, 4), table)
    with pytest.raises(ValueError, match="spins"):
        ops.ising_sweep(torch.ones(1, 4, 6, dtype=torch.int8), table)
    with pytest.raises(ValueError, match="L must be"):
        ops.ising_sweep(torch.ones(1, 5, 5, dtype=torch.int8), table)
    with pytest.raises(ValueError, match="spins must hold only"):
        ops.ising_sweep(torch.zeros(1, 4, 4, dtype=torch.int8), table)
    with pytest.raises(ValueError, match="thresholds"):
        ops.ising_sweep(torch.ones(1, 4, 4, dtype=torch.int8), table[:, :4])
    with pytest.raises(ValueError, match="thresholds"):
        ops.ising_sweep(torch.ones(1, 4, 4, dtype=torch.int8), table + TWO_32)
    with pytest.raises(ValueError, match="n_sweeps"):
        ops.ising_sweep(torch.ones(1, 4, 4, dtype=torch.int8), table, -1)
    with pytest.raises(ValueError, match="algorithm"):
        ops.ising_thresholds(2.0, algorithm="glauber")
    with pytest.raises(ValueError, match="every"):
        Ising2D(4, 2.0).measure(10, every=0)


def test_public_api():
    assert genkernels.Ising2D is Ising2D and "Ising2D" in genkernels.__all__
    assert "ising_sweep" in genkernels.ops.__all__


# ------------------------------------------------------------- physics: exact results
def _within(estimate, exact_value, sigmas=3.0):
    mean, err = estimate
    assert err > 0 and math.isfinite(err)
    assert abs(mean - exact_value) <= sigmas * err, (mean, err, exact_value,
                                                     (mean - exact_value) / err)


def test_binning_error_bar_of_independent_samples():
    """For independent samples the binned standard error is the plain one, and the
    jackknife of the specific heat agrees with its sampling spread."""
    g = torch.Generator().manual_seed(0)
    e = torch.randn(8, 512, generator=g, dtype=torch.float64) * 0.1 - 1.0
    m = torch.rand(8, 512, generator=g, dtype=torch.float64) * 2 - 1
    from genkernels.ising.ising import binning_analysis
    result = binning_analysis(e, m, 0.5, 16)
    assert result["energy"].mean == pytest.approx(float(e.mean()))
    assert result["energy"].stderr == pytest.approx(0.1 / math.sqrt(e.numel()), rel=0.25)
    assert result["binning"][0] == pytest.approx(float(e.std()) / math.sqrt(e.numel()))
    assert result["tau_int_energy"] < 1.5
    heat = result["specific_heat"]
    assert heat.mean == pytest.approx(0.25 * 16 * float(e.var(unbiased=False)), rel=1e-9)
    assert 0 < heat.stderr < heat.mean


@needs_cpu
@pytest.mark.parametrize("algorithm", reference.ALGORITHMS)
@pytest.mark.parametrize("T,h", [(2.0, 0.0), (3.0, 0.4)])
def test_four_by_four_matches_enumeration(algorithm, T, h):
    want = exact.brute_force(4, T, h)
    model = Ising2D(4, T, h=h, n_lattices=256, algorithm=algorithm, init="random", seed=3)
    result = model.measure(600, thermalize=50)
    _within(result["energy"], want["energy"])
    _within(result["abs_magnetization"], want["abs_magnetization"])


@needs_cpu
@pytest.mark.parametrize("algorithm", reference.ALGORITHMS)
def test_onsager_energy_and_yang_magnetization_at_T2(algorithm):
    model = Ising2D(128, 2.0, n_lattices=16, algorithm=algorithm, seed=7)
    result = model.measure(400, thermalize=100)
    _within(result["energy"], exact.onsager_energy(2.0))
    _within(result["abs_magnetization"], exact.yang_magnetization(2.0))


@needs_cpu
def test_onsager_energy_at_T3():
    model = Ising2D(128, 3.0, n_lattices=16, seed=8, init="random")
    result = model.measure(400, thermalize=100)
    _within(result["energy"], exact.onsager_energy(3.0))


@needs_cpu
def test_kaufman_energy_at_critical_temperature():
    L = 16
    model = Ising2D(L, exact.T_CRITICAL, n_lattices=128, seed=9, init="random")
    result = model.measure(2000, thermalize=300)
    _within(result["energy"], exact.kaufman_energy(exact.T_CRITICAL, L))


@pytest.mark.slow
@needs_cpu
@pytest.mark.parametrize("L", [32, 64])
def test_kaufman_energy_at_critical_temperature_larger_lattices(L):
    model = Ising2D(L, exact.T_CRITICAL, n_lattices=64, seed=10, init="random")
    result = model.measure(20000, thermalize=2000, every=2)
    _within(result["energy"], exact.kaufman_energy(exact.T_CRITICAL, L))


def test_kaufman_matches_enumeration():
    for T in (1.5, exact.T_CRITICAL, 3.0):
        bf = exact.brute_force(4, T)
        assert exact.kaufman_log_z(1 / T, 4) == pytest.approx(bf["log_z"], abs=1e-10)
        assert exact.kaufman_energy(T, 4) == pytest.approx(bf["energy"], abs=1e-8)
    # the infinite-lattice limits: -sqrt(2) at T_c, Onsager off T_c
    assert exact.kaufman_energy(exact.T_CRITICAL, 2000) == pytest.approx(-math.sqrt(2), abs=1e-3)
    assert exact.kaufman_energy(3.0, 256) == pytest.approx(exact.onsager_energy(3.0), abs=1e-9)


def test_onsager_and_yang_reference_values():
    # textbook values (e.g. Onsager 1944; Yang 1952)
    assert exact.onsager_energy(exact.T_CRITICAL) == pytest.approx(-math.sqrt(2), abs=1e-6)
    assert exact.yang_magnetization(2.0) == pytest.approx(0.911319377877496, abs=1e-12)
    assert exact.ellipk(0.0) == pytest.approx(math.pi / 2)


