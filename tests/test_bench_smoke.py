"""Smoke test of the benchmark runner: ``bench/run.py --quick`` measures every case and
writes a results file whose numbers make sense."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "bench", "run.py")
MNIST = os.path.join(REPO, "..", "shared", "data", "mnist", "t10k-images-idx3-ubyte.gz")


def _installed(module):
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if not os.path.isfile(RUNNER):
        pytest.skip("bench/ is not in this checkout")
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, RUNNER, "som", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (json_path,) = out.glob("*-quick.json")
    assert json_path.with_suffix(".md").is_file()
    return json.loads(json_path.read_text())


def _rows(results, **match):
    return [c for c in results["cases"] if all(c[k] == v for k, v in match.items())]


def test_every_case_has_a_positive_median(results):
    ran = [c for c in results["cases"] if c["median_s"] is not None]
    assert ran, "no case was measured"
    for case in ran:
        assert case["median_s"] > 0 and case["rounds"] >= 1, case
        assert case["iqr_s"] >= 0, case
    assert results["peak_gflops"] > 0


@pytest.mark.parametrize("workload", ["random", "mnist"])
def test_expected_cases(results, workload):
    if workload == "mnist" and not os.path.isfile(MNIST):
        pytest.skip("MNIST test set not present")
    for op in ("bmu", "batch_epoch", "online_epoch"):
        assert _rows(results, workload=workload, op=op, kind="backend"), (workload, op)
    assert _rows(results, workload=workload, op="bmu", impl="torch.mm")
    assert _rows(results, workload=workload, op="bmu", impl="torch addmm+argmin")
    anchors = {"minisom": ("batch_epoch", "online_epoch"), "torchsom": ("batch_epoch",),
               "xpysom": ("batch_epoch",)}
    for anchor, ops in anchors.items():
        if not _installed(anchor):
            continue
        for op in ops:
            assert _rows(results, workload=workload, op=op, impl=anchor), (workload, op, anchor)


def test_training_quality_is_finite(results):
    for case in results["cases"]:
        if case["op"] in ("batch_epoch", "online_epoch") and case["qe"] is not None:
            assert math.isfinite(case["qe"]) and case["qe"] > 0, case
            assert math.isfinite(case["te"]) and 0 <= case["te"] <= 1, case
    for case in _rows(results, op="batch_epoch", kind="backend"):
        assert case["qe"] is not None, case


def test_batch_anchors_run_the_same_rule(results):
    """MiniSom's train_batch_offline (lr=1) and XPySom's train are Kohonen's batch rule
    from the same start: their maps quantize as well as ours, to fp32 rounding."""
    for workload in ("random", "mnist"):
        ours = [c["qe"] for c in _rows(results, workload=workload, op="batch_epoch", kind="backend")]
        if not ours:
            continue
        for anchor in ("minisom", "xpysom"):
            for case in _rows(results, workload=workload, op="batch_epoch", impl=anchor):
                if case["qe"] is not None:
                    assert case["qe"] == pytest.approx(ours[0], rel=1e-4), case


def test_bm_gibbs_runner_rates_every_backend_and_the_torch_loop(tmp_path):
    """``bench/run.py bm_gibbs --quick``: one row per backend present and the PyTorch loop,
    each rated on the C * N * S unit updates it did."""
    if not os.path.isfile(RUNNER):
        pytest.skip("bench/ is not in this checkout")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, RUNNER, "bm_gibbs", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (json_path,) = tmp_path.glob("*-bm-gibbs-quick.json")
    assert json_path.with_suffix(".md").is_file()
    cases = json.loads(json_path.read_text())["cases"]
    impls = {c["impl"] for c in cases}
    assert "torch loop" in impls
    import genkernels
    if "cpu" in genkernels.available_backends("cpu"):
        assert "cpu" in impls
    for case in cases:
        assert case["median_s"] > 0 and case["rounds"] >= 1, case
        assert case["updates"] == case["chains_timed"] * case["N"] * case["sweeps"], case
        assert case["updates_per_s"] == pytest.approx(case["updates"] / case["median_s"])
