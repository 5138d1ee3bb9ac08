"""Backend selection: auto choice, overrides and their precedence."""
import os

import pytest
import torch

import genkernels
from genkernels import backends, ops


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
