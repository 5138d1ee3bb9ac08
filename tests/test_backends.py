"""Backend selection: auto choice, overrides and their precedence."""
import os

import pytest
import torch

import genkernels
from genkernels import backends, ops
from helpers import cpu_backoff, needs_ext


def test_reference_always_available():
    assert "reference" in genkernels.available_backends("cpu")
    assert "cpu" not in genkernels.available_backends("meta")


def test_auto_choice_on_cpu():
    expected = "cpu" if backends.extension_error() is None else "reference"
    assert backends.resolve("som_bmu", torch.device("cpu")) == expected


def test_precedence_argument_over_context_over_environment(monkeypatch):
    dev = torch.device("cpu")
    monkeypatch.setenv("GENKERNELS_BACKEND", "reference")
    assert backends.resolve("som_bmu", dev) == "reference"
    with genkernels.use_backend("reference"):
        assert backends.resolve("som_bmu", dev) == "reference"
        if "triton" in genkernels.available_backends("cpu"):
            assert backends.resolve("som_bmu", dev, "triton") == "triton"
    monkeypatch.delenv("GENKERNELS_BACKEND")
    with genkernels.use_backend(None):
        assert backends.resolve("som_bmu", dev) in ("cpu", "reference")


def test_use_backend_restores_previous_choice():
    with genkernels.use_backend("reference"):
        with genkernels.use_backend(None):
            assert backends.forced_backend() is None
        assert backends.forced_backend() == "reference"
    assert backends.forced_backend() is None


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" not in genkernels.available_backends("cpu")
    with pytest.raises(backends.BackendUnavailableError, match="TRITON_INTERPRET"):
        backends.resolve("som_bmu", torch.device("cpu"), "triton")


def test_every_backend_present_gives_the_same_bmu():
    x = torch.randn(37, 5)
    w = torch.randn(11, 5)
    want = ops.som_bmu(x, w, k=3, backend="reference")
    for name in genkernels.available_backends("cpu"):
        got = ops.som_bmu(x, w, k=3, backend=name)
        assert torch.equal(got[0], want[0]), name
        assert torch.allclose(got[1], want[1], rtol=1e-5, atol=1e-6), name


@pytest.mark.skipif(os.environ.get("GENKERNELS_NO_EXT") == "1", reason="extension disabled")
def test_sequential_reference_warns_once_without_extension(monkeypatch):
    monkeypatch.setattr(backends, "extension_error", lambda: "the C++ extension is not built")
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match="pure-Python reference loop"):
        assert backends.resolve("som_online", torch.device("cpu")) == "reference"


def test_gpu_auto_choice_is_triton_unless_a_committed_run_says_otherwise(monkeypatch):
    # a machine where every GPU backend could run: the choice is the declared preference
    monkeypatch.setattr(backends, "_why_unavailable", lambda name, device: None)
    cuda = torch.device("cuda")
    chosen = {op: backends.resolve(op, cuda) for op, impls in backends.OP_BACKENDS.items() if "triton" in impls}
    assert set(chosen.values()) == {"triton"}, chosen
    # the one measured exception: a single online map on the cooperative CUDA kernel
    assert backends.resolve("som_online", cuda, n_maps=1) == "cuda"
    assert backends.resolve("som_online", cuda, n_maps=64) == "triton"
    assert backends.resolve("som_online", cuda, "triton", n_maps=1) == "triton"


def test_gpu_preferences_cite_committed_results():
    import re
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for op, (backend, _applies, why) in backends.GPU_PREFERENCE.items():
        assert backend in backends.OP_BACKENDS[op], op
        files = re.findall(r"bench/results/[\w.-]+\.md", why) + \
            [f"bench/results/{m}" for m in re.findall(r"\(([\w.-]+\.md), commit", why)]
        assert files, (op, why)
        for path in files:
            assert os.path.isfile(os.path.join(root, path)), (op, path)
        commits = re.findall(r"commit ([0-9a-f]{7,40})", why)
        assert commits, (op, why)
        if os.path.isdir(os.path.join(root, ".git")):
            for commit in commits:
                proc = subprocess.run(["git", "-C", root, "cat-file", "-e", f"{commit}^{{commit}}"],
                                      capture_output=True)
                assert proc.returncode == 0, (op, commit)


@needs_ext
def test_sequential_blas_nests_and_restores():
    get = torch.ops.genkernels.blas_set_local_threads
    if get(0) < 0:
        pytest.skip("this torch's BLAS has no thread-local control")
    assert get(0) == 0  # nothing set locally
    with backends.sequential_blas():
        assert get(1) == 1
        with backends.sequential_blas():
            assert get(1) == 1
        assert get(1) == 1
    assert get(0) == 0
    with backends.sequential_blas(active=False):
        assert get(0) == 0
    with pytest.raises(RuntimeError, match="n must be in"):
        get(-1)
    assert backends.small_products(100, 64, 100) and not backends.small_products(1000, 784, 500)


@needs_ext
def test_blas_threads_pins_restores_and_overrides_the_backoff():
    get = torch.ops.genkernels.blas_set_local_threads
    if get(0) < 0:
        pytest.skip("this torch's BLAS has no thread-local control")
    with cpu_backoff(-1):  # a quiet machine, however busy this one is
        start = get(0)
        get(start)  # this thread's setting (torch.set_num_threads sets it too), unchanged
        with backends.blas_threads(2):
            assert get(2) == 2
            with backends.blas_threads(1):
                assert get(1) == 1
            assert get(2) == 2
        assert get(start) == start
        g = torch.Generator().manual_seed(0)
        ops.rbm_half_step(torch.rand(600, 300, generator=g), torch.randn(300, 257, generator=g), torch.zeros(257),
                          5, 7, False, True)
        assert get(start) == start  # no region counted late
    with cpu_backoff():  # as after a late region: this thread's BLAS on one thread ...
        assert get(1) == 1
        with backends.blas_threads(2):  # ... which blas_threads overrides
            assert get(2) == 2
        assert get(1) == 1
    assert get(start) == start  # the back-off's end gives the threads back
    assert backends.blas_threads_for(6, 6, 455) == 1
    assert backends.blas_threads_for(1000, 784, 500) == torch.get_num_threads()


@needs_ext
def test_cpu_kernels_equal_on_one_and_two_threads():
    # the dense half-step and the random stream do not depend on the team at all; the binary
    # half-step's sums follow its row chunks: equal at one thread setting, run after run
    g = torch.Generator().manual_seed(0)
    s, w, b = torch.rand(600, 300, generator=g), torch.randn(300, 257, generator=g), torch.zeros(257)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((ops.rbm_half_step(s, w, b, 5, 7, False, True),
                            genkernels.random.rand(3, torch.arange(100_000))))
            binary = [ops.rbm_half_step_binary((s > 0.5).float(), w, b, 5, 7, False, True) for _ in range(3)]
            for again in binary[1:]:
                assert all(torch.equal(x, y) for x, y in zip(binary[0], again))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(*results):
        for a, b_ in zip(one if isinstance(one, tuple) else (one,), two if isinstance(two, tuple) else (two,)):
            assert torch.equal(a, b_)


# Every C++ entry point of the cpu backend, called directly with inputs that require grad
# (sizes that start a thread team) and with inputs the kernel rejects: each call returns or
# raises a Python exception, and the process never aborts (an escaped c10::Error inside an
# OpenMP region used to reach std::terminate).
_ENTRY_POINTS = """
import torch
import genkernels  # loads the extension
g = lambda *shape, dtype=torch.float32: torch.rand(*shape, dtype=dtype).requires_grad_()
ops = torch.ops.genkernels
w = (lambda a: ((a + a.T) / 2).fill_diagonal_(0).requires_grad_())(torch.randn(600, 600))
spins = (torch.randint(0, 2, (4, 64, 64), dtype=torch.int8) * 2 - 1)
u8 = lambda *shape: torch.ones(*shape, dtype=torch.uint8)
off = torch.zeros(600, dtype=torch.bool)
calls = {  # name: (well-formed call with grad-requiring inputs, a call the kernel rejects)
    "som_bmu": (lambda: ops.som_bmu(g(4000, 64), g(256, 64), 3, "euclidean", False),
                lambda: ops.som_bmu(g(4000, 64), g(256, 63), 3, "euclidean", False)),
    "som_node_sums": (lambda: ops.som_node_sums(g(4000, 64), g(256, 64), "euclidean", False),
                      lambda: ops.som_node_sums(g(4000, 64), g(256, 63), "euclidean", False)),
    "som_online": (lambda: ops.som_online(g(2, 256, 8), g(500, 8), torch.randint(0, 500, (2, 300)), g(2, 300),
                                          g(2, 300) + 0.5, g(256, 2), 0.0, 0.0, "gaussian", "wta", "euclidean"),
                   lambda: ops.som_online(g(2, 256, 8), g(500, 8), torch.randint(0, 500, (2, 300)), g(2, 300),
                                          g(2, 300) + 0.5, g(255, 2), 0.0, 0.0, "gaussian", "wta", "euclidean")),
    "hopfield_recall_async": (lambda: ops.hopfield_recall_async(w, torch.ones(8, 600), 3, True, 1, 0),
                              lambda: ops.hopfield_recall_async(w, torch.ones(8, 599), 3, True, 1, 0)),
    "bm_gibbs": (lambda: ops.bm_gibbs(w, g(600), torch.ones(8, 600), off, torch.ones(8), True, 1, 0),
                 lambda: ops.bm_gibbs(w, g(599), torch.ones(8, 600), off, torch.ones(8), True, 1, 0)),
    "hopfield_retrieval": (lambda: ops.hopfield_retrieval(g(300, 64), g(1, 500, 64), torch.tensor(2.0), 3, 0.0),
                           lambda: ops.hopfield_retrieval(g(300, 64), g(1, 500, 63), torch.tensor(2.0), 3, 0.0)),
    "ising_sweep": (lambda: ops.ising_sweep(spins, genkernels.ops.ising_thresholds(2.269), 2, 1, 0, 1),
                    lambda: ops.ising_sweep(spins.float(), genkernels.ops.ising_thresholds(2.269), 2, 1, 0, 1)),
    "rbm_half_step": (lambda: ops.rbm_half_step(g(300, 200), g(200, 100), g(100), 1, 0, False, True),
                      lambda: ops.rbm_half_step(g(300, 200), g(199, 100), g(100), 1, 0, False, True)),
    "rbm_half_step_binary": (lambda: ops.rbm_half_step_binary(u8(300, 200), g(200, 100), g(100), 1, 0, False, True),
                             lambda: ops.rbm_half_step_binary(u8(300, 200), g(199, 100), g(100), 1, 0, False, True)),
    "rbm_binary_outer_add_": (lambda: ops.rbm_binary_outer_add_(torch.zeros(200, 100), u8(300, 200), g(300, 100),
                                                                0.1, torch.zeros(200), 0.1),
                              lambda: ops.rbm_binary_outer_add_(torch.zeros(200, 100), u8(300, 200), g(299, 100),
                                                                0.1, torch.zeros(200), 0.1)),
    "rbm_pcd_step_": (lambda: ops.rbm_pcd_step_(g(300, 200).detach(), g(200, 100), g(200), g(100),
                                                torch.zeros(300, 100, dtype=torch.uint8), 1, 0, 10**6, 0.1),
                      lambda: ops.rbm_pcd_step_(g(300, 200).detach(), g(200, 100), g(200), g(100),
                                                torch.zeros(300, 100), 1, 0, 10**6, 0.1)),
    "rbm_pack_binary": (lambda: ops.rbm_pack_binary(g(3000, 200)), lambda: ops.rbm_pack_binary(g(30, 2, 2))),
    "philox_rand": (lambda: ops.philox_rand(1, torch.arange(1 << 16)), lambda: ops.philox_rand(1, torch.rand(3))),
}
for name, pair in calls.items():
    for variant, call in zip(("grad", "bad"), pair):
        try:
            call()
            print(name, variant, "ran")
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            print(name, variant, "raised", type(exc).__name__)
print("done")
"""


@needs_ext
def test_no_cpu_entry_point_aborts_on_grad_inputs_or_errors():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", _ENTRY_POINTS], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split("\n")
    assert lines[-2] == "done", proc.stdout
    assert sum(line.endswith(" grad ran") for line in lines) == 13, proc.stdout
    assert sum(" bad raised " in line for line in lines) == 13, proc.stdout
