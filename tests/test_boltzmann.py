"""General Boltzmann machines: Gibbs kernels against the reference and exact enumeration,
annealing against brute force, learning against the exact KL divergence."""

import pytest
import torch

from genkernels import BoltzmannMachine, backends, ops
from genkernels.boltzmann import bm_reference as reference

scipy_stats = pytest.importorskip("scipy.stats")

from helpers import DEVICE, HAS_CPU, needs_cpu, needs_cuda_backend, needs_triton  # noqa: E402


def _machine(n, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64) * scale
    w = torch.triu(a, 1)
    w = (w + w.T).to(dtype)
    b = (torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype)
    return w, b


def _states(c, n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(c, n, generator=g) < 0.5).to(dtype)


# --------------------------------------------------------------- reference itself
def test_energy_and_field_definitions():
    w, b = _machine(5, 0, torch.float64)
    s = reference.all_states(5)
    e = reference.energy(w, b, s)
    assert torch.allclose(e, torch.stack([-0.5 * x @ w @ x - b @ x for x in s]))
    # h_i = E(s_i = 0) - E(s_i = 1)
    x = s[13].clone()
    h = x @ w + b
    for i in range(5):
        on, off = x.clone(), x.clone()
        on[i], off[i] = 1.0, 0.0
        assert float(reference.energy(w, b, off) - reference.energy(w, b, on)) == pytest.approx(float(h[i]))


def test_exact_marginals_sum_to_one_and_match_brute_force():
    w, b = _machine(4, 1, torch.float64)
    joint = reference.joint_probabilities(w, b)
    assert float(joint.sum()) == pytest.approx(1.0)
    brute = torch.exp(-reference.energy(w, b, reference.all_states(4)))
    assert torch.allclose(joint, brute / brute.sum())
    marg = reference.visible_marginal(w, b, 2)
    s = reference.all_states(4)
    want = torch.zeros(4, dtype=torch.float64)
    for k in range(16):
        want[int(s[k, 0] + 2 * s[k, 1])] += joint[k]
    assert torch.allclose(marg, want)


def test_random_order_and_uniforms_follow_the_documented_counters():
    import genkernels
    n, seed, offset, c, t, s_count = 11, 7, 2**40 + 3, 2, 1, 4
    words = reference.sweep_words(n, seed, offset, c, t, s_count)
    counters = offset + (c * s_count + t) * n + torch.arange(n)
    assert torch.equal(words, genkernels.random.randint4x(seed, counters, backend="reference"))


# ------------------------------------------------------------- kernels == reference
CASES = [(1, 1), (4, 3), (9, 5), (23, 4)]  # (N, chains)


def _compare(backend, n, c, dtype, order, temps, clamp_units=(), offset=5, device="cpu"):
    w, b = _machine(n, n + c, dtype)
    s0 = _states(c, n, n * 7 + c, dtype)
    clamp = torch.zeros(n, dtype=torch.bool)
    clamp[list(clamp_units)] = True
    args = (w.to(device), b.to(device), s0.to(device), temps, clamp.to(device), order)
    want = ops.bm_gibbs(*args, seed=11, offset=offset, backend="reference")
    got = ops.bm_gibbs(*args, seed=11, offset=offset, backend=backend)
    return want, got, s0


@needs_cpu
@pytest.mark.parametrize("n,c", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", reference.ORDERS)
def test_cpu_equals_reference(n, c, dtype, order):
    for temps in ([1e-30, 1e-30], [1.0, 0.5, 2.0]):
        want, got, s0 = _compare("cpu", n, c, dtype, order, temps, clamp_units=[0] if n > 2 else [])
        # at T -> 0 every draw is decided (p is exactly 0, 1/2 or 1): exact in any arithmetic;
        # at T = O(1) the same formula in the same dtype gives the same draws here
        assert torch.equal(got, want), temps
        if n > 2:
            assert torch.equal(got[:, 0], s0[:, 0])  # the clamped unit never moved


@needs_triton
@pytest.mark.parametrize("n,c", [(1, 1), (5, 3), (13, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", reference.ORDERS)
def test_triton_equals_reference_on_decided_draws(n, c, dtype, order):
    # T -> 0: p in {0, 1/2, 1} exactly, so the draws cannot depend on the exp's rounding
    want, got, _ = _compare("triton", n, c, dtype, order, [1e-30, 1e-30, 1e-30],
                            clamp_units=[1] if n > 2 else [], offset=2**33 + 1, device=DEVICE)
    assert torch.equal(got, want)


@needs_triton
@needs_cpu
def test_triton_and_cpu_agree_at_unit_temperature():
    # the fields agree bit for bit; a draw could differ only where |u - p| is within
    # rounding of the exp, which these 300 draws do not hit
    w, b = _machine(10, 3)
    s0 = _states(6, 10, 4)
    temps = [1.0, 0.8, 1.3, 1.0, 2.0]
    cpu = ops.bm_gibbs(w, b, s0, temps, seed=1, offset=-9, backend="cpu")
    tri = ops.bm_gibbs(w.to(DEVICE), b.to(DEVICE), s0.to(DEVICE), temps, seed=1, offset=-9,
                       backend="triton")
    assert torch.equal(tri.cpu(), cpu)


# ------------------------------------------------------------- cuda == cpu, draw for draw


def _dyadic_machine(n, seed, dtype):
    """Weights and bias on a grid of 2^-(3 + q), |w| <= 2^-q with 2^q ~ sqrt(N): every field,
    whatever the order of its sum, is exact in fp32 (at most 20 significant bits), so the
    CPU's BLAS and cuBLAS start the chains from the same fields and only the probability
    arithmetic (csrc/common/boltzmann.h) is compared; |h| stays O(1), so p is not 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    q = (n - 1).bit_length() // 2
    a = torch.randint(-8, 9, (n, n), generator=g, dtype=torch.int64)
    w = torch.triu(a, 1)
    w = ((w + w.T).to(torch.float64) / 2 ** (3 + q)).to(dtype)
    b = (torch.randint(-8, 9, (n,), generator=g, dtype=torch.int64).to(torch.float64) / 8).to(dtype)
    return w, b


@pytest.mark.gpu
@needs_cuda_backend
@needs_cpu
@pytest.mark.parametrize("scratch", ["shared", "global"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order", reference.ORDERS)
def test_cuda_equals_cpu_draw_for_draw(order, dtype, scratch, monkeypatch):
    if scratch == "global":
        monkeypatch.setenv("GENKERNELS_BM_GLOBAL", "1")
    for n, c in [(1, 3), (7, 5), (33, 4), (300, 6), (1031, 3)]:
        w, b = _dyadic_machine(n, n, dtype)
        s0 = _states(c, n, n + 1, dtype)
        clamp = torch.zeros(n, dtype=torch.bool)
        if n > 2:
            clamp[[0, n // 2]] = True
        for temps, seed, offset in (([1.0, 0.5, 2.0, 1.3], 11, 5), ([0.7] * 3, 2**64 - 1, 2**63 - 50)):
            want = ops.bm_gibbs(w, b, s0, temps, clamp, order, seed, offset, backend="cpu")
            got = ops.bm_gibbs(w.cuda(), b.cuda(), s0.cuda(), temps, clamp.cuda(), order, seed, offset,
                               backend="cuda")
            assert torch.equal(got.cpu(), want), (n, temps)
            assert torch.equal(got[:, clamp].cpu(), s0[:, clamp])  # clamped units never moved
            if n >= 33:  # the draws are not decided in advance: the chains move
                assert not torch.equal(want, s0)


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("scratch", ["shared", "global"])
def test_cuda_equals_the_reference_on_cuda_tensors_in_fp64(scratch, monkeypatch):
    # Gaussian couplings: the reference on the same device starts from the same cuBLAS
    # product and calls the same double exp, so the draws agree exactly
    if scratch == "global":
        monkeypatch.setenv("GENKERNELS_BM_GLOBAL", "1")
    for n, c in [(1, 2), (7, 3), (33, 2)]:
        w, b = _machine(n, 40 + n, torch.float64)
        s0 = _states(c, n, n, torch.float64)
        clamp = torch.zeros(n, dtype=torch.bool)
        clamp[n - 1] = n > 1
        args = (w.cuda(), b.cuda(), s0.cuda(), [1.0, 0.6, 1.7], clamp.cuda())
        for order in reference.ORDERS:
            want = ops.bm_gibbs(*args, order, 3, -7, backend="reference")
            got = ops.bm_gibbs(*args, order, 3, -7, backend="cuda")
            assert torch.equal(got, want), (n, order)


@pytest.mark.gpu
@needs_cuda_backend
def test_cuda_samples_the_exact_distribution():
    # triton stays the auto choice until a committed GPU run of this kernel says otherwise
    assert backends.resolve("bm_gibbs", torch.device("cuda")) == "triton"
    bm = BoltzmannMachine(4, 2, seed=3, init_std=0.8, dtype=torch.float64, device="cuda")
    bm.bias.copy_(torch.linspace(-1, 1, bm.n_units, dtype=torch.float64))
    samples = bm.sample(40000, n_sweeps=30, backend="cuda")
    p = _chi_square_p(reference.state_index(samples).cpu(), bm.probabilities().cpu())
    assert p > 1e-3, p


@pytest.mark.gpu
@needs_cuda_backend
def test_cuda_opcheck_and_empty():
    w, b = _machine(6, 2)
    clamp = torch.zeros(6, dtype=torch.bool, device="cuda")
    clamp[1] = True
    for dtype in (torch.float32, torch.float64):
        args = (w.to("cuda", dtype), b.to("cuda", dtype), _states(3, 6, 0, dtype).cuda(), clamp,
                torch.tensor([1.0, 0.5], dtype=dtype, device="cuda"))
        torch.library.opcheck(torch.ops.genkernels.bm_gibbs.default, (*args, True, 3, 0))
        torch.library.opcheck(torch.ops.genkernels.bm_gibbs.default, (*args, False, 0, -4))
    out = ops.bm_gibbs(w.cuda(), b.cuda(), torch.empty(0, 6, device="cuda"), 1.0, backend="cuda")
    assert out.shape == (0, 6) and out.is_cuda


# ----------------------------------------------------------- statistics (chi-square)
def _chi_square_p(samples_idx, probs):
    counts = torch.bincount(samples_idx, minlength=probs.numel()).double()
    expected = probs * samples_idx.numel()
    keep = expected >= 5  # pool the rare states into one cell
    obs = torch.cat([counts[keep], counts[~keep].sum()[None]])
    exp = torch.cat([expected[keep], expected[~keep].sum()[None]])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return scipy_stats.chisquare(obs.numpy(), exp.numpy()).pvalue


@needs_cpu
@pytest.mark.parametrize("n_visible,n_hidden,chains", [(2, 2, 20000), (6, 4, 40000)])
def test_gibbs_samples_match_the_exact_joint_distribution(n_visible, n_hidden, chains):
    bm = BoltzmannMachine(n_visible, n_hidden, seed=3, init_std=0.8, dtype=torch.float64)
    bm.bias.copy_(torch.linspace(-1, 1, bm.n_units, dtype=torch.float64))
    samples = bm.sample(chains, n_sweeps=30)  # one sample per independent chain
    p = _chi_square_p(reference.state_index(samples), bm.probabilities())
    assert p > 1e-3, p
    # and the visible marginal
    q = bm.visible_distribution()
    p_vis = _chi_square_p(reference.state_index(samples[:, :n_visible]), q)
    assert p_vis > 1e-3, p_vis


@needs_cpu
def test_a_wrong_temperature_fails_the_chi_square_test():
    # the test has power: samples at T = 1.3 are rejected against the T = 1 distribution
    bm = BoltzmannMachine(3, 2, seed=4, init_std=1.0, dtype=torch.float64)
    samples = bm.sample(40000, n_sweeps=30, temperature=1.3)
    assert _chi_square_p(reference.state_index(samples), bm.probabilities()) < 1e-6
    assert _chi_square_p(reference.state_index(samples), bm.probabilities(1.3)) > 1e-3


# ------------------------------------------------------------------- annealing
@needs_cpu
@pytest.mark.parametrize("instance", range(4))
def test_annealing_finds_the_brute_force_ground_state(instance):
    n = 14
    bm = BoltzmannMachine(n, seed=instance, dtype=torch.float64)
    w, b = _machine(n, 100 + instance, torch.float64)
    bm.weights.copy_(w)
    bm.bias.copy_(b)
    states, energies = bm.anneal(n_chains=16, t_start=5.0, t_end=0.02, n_sweeps=300)
    _, e_min = reference.ground_state(w, b)
    assert bool((energies[1:] >= energies[:-1]).all())
    assert float(energies[0]) == pytest.approx(float(e_min), abs=1e-9)
    assert float(bm.energy(states[0])) == pytest.approx(float(e_min), abs=1e-9)


# -------------------------------------------------------------------- learning
@needs_cpu
@pytest.mark.parametrize("n_hidden", [0, 2])
def test_learning_lowers_the_exact_kl_divergence(n_hidden):
    data = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]] * 8,
                        dtype=torch.float64)
    bm = BoltzmannMachine(4, n_hidden, seed=5, dtype=torch.float64)
    before = float(bm.kl_divergence(data))
    bm.fit(data, epochs=300, learning_rate=0.1, n_sweeps=3, n_chains=200)
    after = float(bm.kl_divergence(data))
    assert after < 0.5 * before, (before, after)
    assert torch.equal(bm.weights, bm.weights.T)
    assert bool((bm.weights.diagonal() == 0).all())


# ------------------------------------------------------------- model plumbing
@needs_cpu
def test_stream_reproduces_and_checkpoint_resumes(tmp_path):
    data = (torch.rand(20, 5, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    a = BoltzmannMachine(5, 3, seed=9).fit(data, epochs=4, n_chains=16)
    path = str(tmp_path / "bm.pt")
    a.save(path)
    b = BoltzmannMachine.load(path)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.chains, b.chains) and a.offset == b.offset
    a.fit(data, epochs=3, n_chains=16)
    b.fit(data, epochs=3, n_chains=16)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.bias, b.bias)
    c = BoltzmannMachine(5, 3, seed=9).fit(data, epochs=7, n_chains=16)
    assert torch.equal(c.weights, a.weights)


def test_empty_and_opcheck():
    w, b = _machine(6, 2)
    out = ops.bm_gibbs(w, b, torch.empty(0, 6), 1.0, backend="reference")
    assert out.shape == (0, 6)
    if HAS_CPU:
        torch.library.opcheck(torch.ops.genkernels.bm_gibbs.default,
                              (w, b, _states(3, 6, 0), torch.zeros(6, dtype=torch.bool),
                               torch.tensor([1.0, 0.5]), True, 3, 0))


@needs_cpu
def test_compiles_fullgraph():
    w, b = _machine(6, 2)
    s0 = _states(3, 6, 1)

    @torch.compile(fullgraph=True)
    def step(s):
        return torch.ops.genkernels.bm_gibbs(w, b, s, torch.zeros(6, dtype=torch.bool),
                                             torch.tensor([1.0, 1.0]), True, 3, 0)

    assert torch.equal(step(s0), ops.bm_gibbs(w, b, s0, [1.0, 1.0], seed=3, backend="cpu"))


W4, B4 = _machine(4, 0)
S4 = _states(2, 4, 0)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: ops.bm_gibbs(W4[:, :3], B4, S4, 1.0), ValueError, "weights must be square"),
    (lambda: ops.bm_gibbs(W4 + torch.triu(torch.ones(4, 4), 1), B4, S4, 1.0), ValueError,
     "weights must be symmetric"),
    (lambda: ops.bm_gibbs(W4 + torch.eye(4), B4, S4, 1.0), ValueError, "zero diagonal"),
    (lambda: ops.bm_gibbs(W4 * float("nan"), B4, S4, 1.0), ValueError, "weights contains NaN"),
    (lambda: ops.bm_gibbs(W4, B4[:3], S4, 1.0), ValueError, "bias has 3 units"),
    (lambda: ops.bm_gibbs(W4, B4, S4[:, :3], 1.0), ValueError, "states has 3 units"),
    (lambda: ops.bm_gibbs(W4, B4, S4 * 0.5, 1.0), ValueError, "states must hold only 0 and 1"),
    (lambda: ops.bm_gibbs(W4, B4, S4, 0.0), ValueError, "temperatures must be finite and > 0"),
    (lambda: ops.bm_gibbs(W4, B4, S4, -1.0), ValueError, "temperatures must be finite and > 0"),
    (lambda: ops.bm_gibbs(W4, B4, S4, []), ValueError, "at least one temperature"),
    (lambda: ops.bm_gibbs(W4, B4, S4, 1.0, clamp=torch.ones(3, dtype=torch.bool)), ValueError,
     r"clamp must be a \(4,\) bool tensor"),
    (lambda: ops.bm_gibbs(W4, B4, S4, 1.0, order="shuffled"), ValueError, "order must be one of"),
    (lambda: ops.bm_gibbs(W4.half(), B4.half(), S4.half(), 1.0), TypeError, "weights must be torch.float32"),
    (lambda: BoltzmannMachine(0), ValueError, "n_visible must be in"),
    (lambda: BoltzmannMachine(3).fit(torch.ones(4, 2)), ValueError, "data has 2 columns"),
    (lambda: BoltzmannMachine(3).fit(torch.full((4, 3), 0.5)), ValueError, "data must hold only 0 and 1"),
    (lambda: BoltzmannMachine(3).fit(torch.empty(0, 3)), ValueError, "at least one row"),
    (lambda: BoltzmannMachine(3).fit(torch.ones(2, 3), learning_rate=-1), ValueError, "learning_rate"),
    (lambda: BoltzmannMachine(3).gibbs(torch.ones(2, 3), 2, temperature=[1.0, 2.0, 3.0]), ValueError,
     "temperature must be one value or 2"),
    (lambda: BoltzmannMachine(30).log_partition(), ValueError, "at most 24 units"),
])
def test_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_load_rejects_other_checkpoints(tmp_path):
    from genkernels import Hopfield
    path = str(tmp_path / "h.pt")
    Hopfield(4, seed=0).save(path)
    with pytest.raises(ValueError, match="BoltzmannMachine"):
        BoltzmannMachine.load(path)
