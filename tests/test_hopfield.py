"""Classical Hopfield networks (issue 9, part B): storing rules, energy, synchronous and
asynchronous recall; the cpu kernel (csrc/cpu/hopfield.cpp) against the reference
(genkernels/hopfield/recall_reference.py), exactly; the capacity experiment; the model."""
import itertools

import pytest
import torch
from helpers import DEVICE, needs_cpu, needs_triton  # noqa: E402

import genkernels
from genkernels import Hopfield, backends, ops
from genkernels.hopfield import recall_reference as reference


def _pm1(*shape, dtype=torch.float32, generator=None):
    return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1


def _corrupt(x, fraction, generator):
    """x with each entry flipped with probability ``fraction``."""
    return torch.where(torch.rand(x.shape, generator=generator) < fraction, -x, x)


# ------------------------------------------------------------------- textbook example
TEXTBOOK_PATTERNS = torch.tensor([[-1., -1., -1., 1.], [1., 1., 1., 1.]])


def test_textbook_hebbian_weights():
    w = ops.hopfield_store(TEXTBOOK_PATTERNS)
    want = torch.tensor([[0.0, 0.5, 0.5, 0.0],
                         [0.5, 0.0, 0.5, 0.0],
                         [0.5, 0.5, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(w, want)


@pytest.mark.parametrize("mode,order", [("sync", "random"), ("async", "sequential"),
                                        ("async", "random")])
def test_textbook_recall(mode, order):
    net = Hopfield(4, seed=3).store(TEXTBOOK_PATTERNS)
    for seed in range(5):
        states, converged = net.recall(torch.tensor([-1., 1., 1., 1.]), mode=mode, order=order,
                                       seed=seed)
        assert torch.equal(states, torch.tensor([1., 1., 1., 1.]))
        assert bool(converged)


# ---------------------------------------------------------------------------- storing
@pytest.mark.parametrize("rule", reference.RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_rule_is_symmetric_with_zero_diagonal(rule, dtype):
    g = torch.Generator().manual_seed(1)
    w = ops.hopfield_store(_pm1(9, 57, dtype=dtype, generator=g), rule)
    assert w.dtype == dtype and w.shape == (57, 57)
    assert torch.equal(w, w.T)
    assert torch.equal(w.diagonal(), torch.zeros(57, dtype=dtype))


@pytest.mark.parametrize("rule", reference.RULES)
def test_every_rule_makes_few_patterns_fixed_points(rule):
    g = torch.Generator().manual_seed(2)
    patterns = _pm1(5, 101, generator=g)
    w = ops.hopfield_store(patterns, rule)
    states, converged = ops.hopfield_recall(w, patterns, mode="sync", max_sweeps=2)
    assert torch.equal(states, patterns) and bool(converged.all())


# ----------------------------------------------------------------------------- energy
def test_energy_definition():
    g = torch.Generator().manual_seed(3)
    w = ops.hopfield_store(_pm1(3, 11, dtype=torch.float64, generator=g))
    s = _pm1(6, 11, dtype=torch.float64, generator=g)
    want = torch.stack([-0.5 * si @ w @ si for si in s])
    torch.testing.assert_close(ops.hopfield_energy(w, s), want, rtol=1e-12, atol=1e-12)
    assert ops.hopfield_energy(w, s[0]).shape == ()


def test_energy_never_increases_after_any_single_flip():
    g = torch.Generator().manual_seed(4)
    w = ops.hopfield_store(_pm1(4, 23, dtype=torch.float64, generator=g))
    for b in range(6):
        state = _pm1(1, 23, dtype=torch.float64, generator=g)
        fields = state @ w
        energies = [reference.energy(w, state).item()]
        for t in range(20):
            units = reference.sweep_order(23, "random", 7, 0, b, t, 20)
            for _ in reference.async_sweep(w, state[0], fields[0], units):
                energies.append(reference.energy(w, state).item())
        assert len(energies) > 1
        assert all(e1 <= e0 + 1e-12 for e0, e1 in itertools.pairwise(energies))


@needs_cpu
@pytest.mark.parametrize("order", reference.ORDERS)
def test_cpu_energy_is_monotone_across_sweeps(order):
    # One probe per call: probe 0's sweep t uses counters offset + t * N whatever
    # max_sweeps is, so the runs with 1, 2, ... sweeps are prefixes of one trajectory.
    g = torch.Generator().manual_seed(5)
    w = ops.hopfield_store(_pm1(40, 200, generator=g))
    for b, probe in enumerate(_pm1(8, 200, generator=g)):
        energies = [ops.hopfield_energy(w, probe)]
        for sweeps in range(1, 8):
            states, _ = ops.hopfield_recall(w, probe, order=order, max_sweeps=sweeps, seed=11,
                                            offset=b * 10**6, backend="cpu")
            energies.append(ops.hopfield_energy(w, states))
        assert energies[-1] < energies[0]
        assert all(e1 <= e0 + 1e-4 for e0, e1 in itertools.pairwise(energies))


# --------------------------------------------------------------------- cpu == reference
CASES = [(1, 1), (7, 3), (97, 17), (257, 5), (520, 3)]  # (N, B)
# kParallelMinUnits in csrc/cpu/hopfield.cpp: below it the whole call runs on the calling
# thread, the fields' product on sequential BLAS too -- whose sums may round differently
# from a multi-threaded BLAS, and a field rounded to 0 or not decides a flip
RECALL_PARALLEL_MIN_UNITS = 512


@needs_cpu
@pytest.mark.parametrize("n,b", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", reference.ORDERS)
def test_cpu_equals_reference_exactly(n, b, dtype, order):
    g = torch.Generator().manual_seed(n * 31 + b)
    w = ops.hopfield_store(_pm1(max(1, n // 8), n, dtype=dtype, generator=g))
    probes = _pm1(b, n, dtype=dtype, generator=g)
    seeds = (0, 12345, 2**64 - 1) if order == "random" else (0,)
    for seed in seeds:
        for max_sweeps in (1, 2, 50):
            kwargs = {"order": order, "max_sweeps": max_sweeps, "seed": seed, "offset": 77}
            with backends.sequential_blas(n < RECALL_PARALLEL_MIN_UNITS):
                want = ops.hopfield_recall(w, probes, backend="reference", **kwargs)
            got = ops.hopfield_recall(w, probes, backend="cpu", **kwargs)
            assert torch.equal(got[0], want[0]), (seed, max_sweeps)
            assert torch.equal(got[1], want[1]), (seed, max_sweeps)




@needs_triton
# the interpreter runs each probe's program in turn: two probes of 37 units (a masked block of
# 64 lanes; probe 1's counters start past probe 0's) cost half of four
@pytest.mark.parametrize("n,b", [(1, 1), (7, 3), (37, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", reference.ORDERS)
def test_triton_equals_reference_exactly(n, b, dtype, order):
    g = torch.Generator().manual_seed(n * 17 + b)
    w = ops.hopfield_store(_pm1(max(1, n // 8), n, dtype=dtype, generator=g))
    probes = _pm1(b, n, dtype=dtype, generator=g)
    seeds = (0, 2**64 - 1) if order == "random" else (0,)
    for seed in seeds:
        for max_sweeps in (1, 20):
            kwargs = {"order": order, "max_sweeps": max_sweeps, "seed": seed, "offset": 77}
            # the reference on the same device: the fields start from the same product
            want = ops.hopfield_recall(w.to(DEVICE), probes.to(DEVICE), backend="reference", **kwargs)
            got = ops.hopfield_recall(w.to(DEVICE), probes.to(DEVICE), backend="triton", **kwargs)
            assert torch.equal(got[0], want[0]), (seed, max_sweeps)
            assert torch.equal(got[1], want[1]), (seed, max_sweeps)


@needs_triton
def test_triton_equals_reference_on_dense_random_weights_and_wrapping_counters():
    # many flips per sweep; counters past 2^63 wrap; offsets that do not fit 32 bits
    g = torch.Generator().manual_seed(6)
    a = torch.randn(29, 29, generator=g)
    w = ((a + a.T) / 2).fill_diagonal_(0)
    probes = _pm1(3, 29, generator=g)
    for offset in (2**63 - 100, -5, 2**33 + 7):
        kwargs = {"order": "random", "max_sweeps": 12, "seed": 99, "offset": offset}
        want = ops.hopfield_recall(w.to(DEVICE), probes.to(DEVICE), backend="reference", **kwargs)
        got = ops.hopfield_recall(w.to(DEVICE), probes.to(DEVICE), backend="triton", **kwargs)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), offset


@pytest.mark.gpu
@pytest.mark.parametrize("scratch", ["shared", "global"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", reference.ORDERS)
def test_cuda_equals_reference_exactly(order, dtype, scratch, monkeypatch):
    if "cuda" not in backends.available_backends("cuda"):
        pytest.skip("cuda backend not built")
    if scratch == "global":
        monkeypatch.setenv("GENKERNELS_HOPFIELD_GLOBAL", "1")
    g = torch.Generator().manual_seed(5)
    cases = [(1, 1), (7, 3), (97, 17), (257, 5)]
    for n, b in cases:
        w = ops.hopfield_store(_pm1(max(1, n // 8), n, dtype=dtype, generator=g)).cuda()
        probes = _corrupt(_pm1(b, n, dtype=dtype, generator=g), 0.3, g).cuda()
        for seed, max_sweeps, offset in ((0, 1, 77), (2**64 - 1, 30, 2**63 - 100), (3, 30, -5)):
            kwargs = {"order": order, "max_sweeps": max_sweeps, "seed": seed, "offset": offset}
            want = ops.hopfield_recall(w, probes, backend="reference", **kwargs)
            got = ops.hopfield_recall(w, probes, backend="cuda", **kwargs)
            assert torch.equal(got[0], want[0]), (n, seed, max_sweeps)
            assert torch.equal(got[1], want[1]), (n, seed, max_sweeps)
    # dense random couplings: many flips per sweep
    a = torch.randn(61, 61, generator=g, dtype=dtype)
    w = ((a + a.T) / 2).fill_diagonal_(0).cuda()
    probes = _pm1(9, 61, dtype=dtype, generator=g).cuda()
    kwargs = {"order": order, "max_sweeps": 30, "seed": 99, "offset": 2**33}
    want = ops.hopfield_recall(w, probes, backend="reference", **kwargs)
    got = ops.hopfield_recall(w, probes, backend="cuda", **kwargs)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.gpu
def test_cuda_and_triton_agree_at_n_1000_and_recall():
    if "cuda" not in backends.available_backends("cuda"):
        pytest.skip("cuda backend not built")
    g = torch.Generator().manual_seed(0)
    patterns = _pm1(100, 1000, generator=g)
    w = ops.hopfield_store(patterns).cuda()
    probes = _corrupt(patterns, 0.1, g).cuda()
    # both start from the same cuBLAS product on this device, then follow the same rule
    gpu = ops.hopfield_recall(w, probes, seed=4, backend="cuda")
    tri = ops.hopfield_recall(w, probes, seed=4, backend="triton")
    assert torch.equal(gpu[0], tri[0]) and torch.equal(gpu[1], tri[1])
    assert bool(gpu[1].all())
    assert float((gpu[0].cpu() * patterns).mean()) >= 0.99


@needs_triton
def test_triton_rejects_more_units_than_it_holds(monkeypatch):
    from genkernels.hopfield import recall_triton
    monkeypatch.setattr(recall_triton, "MAX_UNITS", 4)
    w = ops.hopfield_store(_pm1(1, 5))
    with pytest.raises(ValueError, match="at most 4 units per probe"):
        ops.hopfield_recall(w.to(DEVICE), _pm1(2, 5).to(DEVICE), backend="triton")


@needs_cpu
def test_cpu_equals_reference_on_dense_random_weights_and_wrapping_counters():
    # not a stored-pattern network: many flips, many sweeps; counters past 2^63 wrap
    g = torch.Generator().manual_seed(6)
    a = torch.randn(61, 61, generator=g)
    w = ((a + a.T) / 2).fill_diagonal_(0)
    probes = _pm1(9, 61, generator=g)
    for offset in (0, 2**63 - 1000, -5):
        kwargs = {"order": "random", "max_sweeps": 30, "seed": 99, "offset": offset}
        want = ops.hopfield_recall(w, probes, backend="reference", **kwargs)
        got = ops.hopfield_recall(w, probes, backend="cpu", **kwargs)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_random_order_is_the_documented_philox_permutation():
    n, seed, offset, probe, sweep, max_sweeps = 13, 42, 1000, 2, 3, 5
    units = reference.sweep_order(n, "random", seed, offset, probe, sweep, max_sweeps)
    counters = offset + (probe * max_sweeps + sweep) * n + torch.arange(n)
    keys = genkernels.random.randint(seed, counters, backend="reference").to(torch.int64)
    assert torch.equal(keys[units], keys.sort().values)
    assert sorted(units.tolist()) == list(range(n))


@needs_cpu
def test_sub_batch_with_shifted_offset_repeats_the_batch():
    g = torch.Generator().manual_seed(7)
    w = ops.hopfield_store(_pm1(10, 64, generator=g))
    probes = _pm1(6, 64, generator=g)
    full = ops.hopfield_recall(w, probes, max_sweeps=10, seed=3, offset=5, backend="cpu")
    tail = ops.hopfield_recall(w, probes[2:], max_sweeps=10, seed=3, offset=5 + 2 * 10 * 64,
                               backend="cpu")
    assert torch.equal(full[0][2:], tail[0]) and torch.equal(full[1][2:], tail[1])


@pytest.mark.parametrize("mode", reference.MODES)
def test_zero_field_units_keep_their_state(mode):
    # units {0, 1} and {2, 3} are coupled across (bipartite, weight 1): with s0 = -s1 and
    # s2 = -s3 every field is exactly 0; sign(0) taken as +1 or 0 would change them
    w = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.], [1., 1., 0., 0.], [1., 1., 0., 0.]])
    probes = torch.tensor([[1., -1., 1., -1.], [1., -1., -1., 1.], [-1., 1., 1., -1.],
                           [-1., 1., -1., 1.]])
    names = [b for b in backends.available_backends("cpu") if b in backends.OP_BACKENDS["hopfield_recall_async"]]
    for name in names if mode == "async" else [None]:
        states, converged = ops.hopfield_recall(w, probes, mode=mode, backend=name)
        assert torch.equal(states, probes), name
        assert bool(converged.all()), name


def test_sync_detects_two_cycles():
    w = torch.tensor([[0., -1.], [-1., 0.]])
    states, converged = ops.hopfield_recall(w, torch.tensor([[1., 1.], [1., -1.]]), mode="sync",
                                            max_sweeps=9)
    assert torch.equal(states, torch.tensor([[-1., -1.], [1., -1.]]))
    assert converged.tolist() == [False, True]


def test_empty_input():
    w = ops.hopfield_store(TEXTBOOK_PATTERNS)
    for mode in reference.MODES:
        states, converged = ops.hopfield_recall(w, torch.empty(0, 4), mode=mode)
        assert states.shape == (0, 4) and converged.shape == (0,)
    states, converged = ops.hopfield_recall(w, TEXTBOOK_PATTERNS, max_sweeps=0)
    assert torch.equal(states, TEXTBOOK_PATTERNS) and not bool(converged.any())


# ------------------------------------------------------------------- capacity (N=1000)
N_CAPACITY = 1000


def _overlap_from_stored(rule, alpha, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    patterns = _pm1(int(alpha * N_CAPACITY), N_CAPACITY, generator=g)
    net = Hopfield(N_CAPACITY, seed=seed).store(patterns, rule)
    states, _ = net.recall(_corrupt(patterns, noise, g) if noise else patterns)
    return patterns, states, (states * patterns).mean(dim=1)


@needs_cpu
def test_hebbian_capacity_collapses_between_alpha_0_10_and_0_20():
    _, _, below = _overlap_from_stored("hebbian", 0.10)
    _, _, above = _overlap_from_stored("hebbian", 0.20)
    assert below.mean() >= 0.99
    assert above.mean() <= 0.45


@needs_cpu
def test_pseudoinverse_recalls_every_pattern_at_alpha_0_5():
    patterns, states, _ = _overlap_from_stored("pseudoinverse", 0.5)
    assert torch.equal(states, patterns)


@needs_cpu
def test_pseudoinverse_recalls_from_corrupted_probes_at_alpha_0_4():
    patterns, states, _ = _overlap_from_stored("pseudoinverse", 0.4, noise=0.10)
    assert torch.equal(states, patterns)


# ---------------------------------------------------------------------------- opcheck
@needs_cpu
def test_opcheck_recall_async():
    g = torch.Generator().manual_seed(8)
    for dtype in (torch.float32, torch.float64):
        w = ops.hopfield_store(_pm1(3, 19, dtype=dtype, generator=g))
        probes = _pm1(5, 19, dtype=dtype, generator=g)
        torch.library.opcheck(torch.ops.genkernels.hopfield_recall_async.default,
                              (w, probes, 10, True, 3, 0))
        torch.library.opcheck(torch.ops.genkernels.hopfield_recall_async.default,
                              (w, probes, 10, False, 0, 0))


# ------------------------------------------------------------------------------ model
@needs_cpu
def test_model_stream_advances_and_reproduces(tmp_path):
    g = torch.Generator().manual_seed(9)
    patterns = _pm1(12, 80, generator=g)
    probes = _corrupt(patterns, 0.3, g)
    net = Hopfield(80, seed=21).store(patterns, "storkey")
    first = net.recall(probes)
    assert net.offset == 12 * 100 * 80
    net.save(tmp_path / "net.pt")
    second = net.recall(probes)
    loaded = Hopfield.load(tmp_path / "net.pt")
    assert torch.equal(loaded.weights, net.weights) and loaded.rule == "storkey"
    assert loaded.n_patterns == 12 and loaded.seed == 21
    assert torch.equal(loaded.recall(probes)[0], second[0])
    replay = Hopfield(80, seed=21).store(patterns, "storkey")
    assert torch.equal(replay.recall(probes)[0], first[0])


def test_model_store_replaces_weights():
    net = Hopfield(4).store(torch.tensor([[1., -1., 1., -1.]]))
    net.store(TEXTBOOK_PATTERNS)
    assert torch.equal(net.weights, ops.hopfield_store(TEXTBOOK_PATTERNS))
    assert net.n_patterns == 2


# -------------------------------------------------------------------------- bad input
W4 = ops.hopfield_store(TEXTBOOK_PATTERNS)
P4 = TEXTBOOK_PATTERNS


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: ops.hopfield_store(torch.tensor([[1., 0., 1.]])), ValueError,
     "patterns must hold only -1 and \\+1; got 0.0 at index \\(0, 1\\)"),
    (lambda: ops.hopfield_store(P4, rule="hebb"), ValueError, "rule must be one of 'hebbian'"),
    (lambda: ops.hopfield_store(P4[0]), ValueError, "patterns must be 2-D"),
    (lambda: ops.hopfield_store(P4.int()), TypeError, "patterns must be a floating-point"),
    (lambda: ops.hopfield_store(torch.empty(0, 4)), ValueError, "at least one pattern"),
    (lambda: ops.hopfield_recall(W4, P4 * 0.5), ValueError, "probes must hold only -1 and \\+1"),
    (lambda: ops.hopfield_recall(W4, P4[:, :3]), ValueError,
     "probes has 3 units but weights has 4"),
    (lambda: ops.hopfield_recall(W4[:, :3], P4), ValueError, "weights must be square"),
    (lambda: ops.hopfield_recall(W4 + torch.triu(torch.ones(4, 4)), P4), ValueError,
     "weights must be symmetric"),
    (lambda: ops.hopfield_recall(W4 * float("nan"), P4), ValueError, "weights contains NaN"),
    (lambda: ops.hopfield_recall(W4, P4, mode="parallel"), ValueError, "mode must be one of"),
    (lambda: ops.hopfield_recall(W4, P4, order="shuffled"), ValueError, "order must be one of"),
    (lambda: ops.hopfield_recall(W4, P4, max_sweeps=-1), ValueError, "max_sweeps must be in"),
    (lambda: ops.hopfield_recall(W4, P4, max_sweeps=2.5), TypeError, "max_sweeps must be an integer"),
    (lambda: ops.hopfield_recall(W4, P4, seed=-1), ValueError, "seed must be in"),
    (lambda: ops.hopfield_recall(W4, P4, offset=2**63), ValueError, r"offset must be in \[-9223372036854775808, 9223372036854775807\]"),
    (lambda: ops.hopfield_recall(W4, P4, backend="cuda"), backends.BackendUnavailableError,
     "backend 'cuda' for hopfield_recall_async is unavailable"),
    (lambda: ops.hopfield_recall(W4, P4.to("meta")), ValueError, "probes is on meta"),
    (lambda: ops.hopfield_energy(W4, P4[:, :2]), ValueError, "states has 2 units but weights has 4"),
    (lambda: Hopfield(4).store(torch.ones(2, 5)), ValueError, "patterns has 5 units but the network has 4"),
    (lambda: Hopfield(0), ValueError, "n_units must be in"),
    (lambda: Hopfield(4, dtype=torch.float16), TypeError, "dtype must be torch.float32"),
])
def test_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


@needs_triton
def test_async_recall_on_cuda_tensors_runs_on_triton():
    assert backends.resolve("hopfield_recall_async", torch.device("cuda")) == "triton"


def test_sync_recall_is_plain_torch_whatever_backend_is_forced():
    w = ops.hopfield_store(torch.tensor([[1., -1., 1., -1., 1.]]))
    probe = torch.tensor([[1., -1., 1., -1., -1.]])
    want = ops.hopfield_recall(w, probe, mode="sync")
    with genkernels.use_backend("cpu" if "cpu" in genkernels.available_backends("cpu") else "reference"):
        got = ops.hopfield_recall(w, probe, mode="sync")
    assert torch.equal(got[0], want[0]) and torch.equal(got[0], torch.tensor([[1., -1., 1., -1., 1.]]))


def test_load_rejects_other_checkpoints(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format": 1, "config": {}}, path)
    with pytest.raises(ValueError, match="not a genkernels Hopfield checkpoint"):
        Hopfield.load(path)
