"""Smoke test of the benchmark runner: ``bench/run.py --quick`` measures every case and
writes a results file whose numbers make sense."""

import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys

import background_jobs
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "bench", "run.py")
MNIST = os.path.join(REPO, "..", "shared", "data", "mnist", "t10k-images-idx3-ubyte.gz")


def _installed(module):
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """``bench/run.py som --quick`` (its main, in this process; the runner still measures
    the cases it runs in child processes there)."""
    if not os.path.isfile(RUNNER):
        pytest.skip("bench/ is not in this checkout")
    out = tmp_path_factory.mktemp("bench")
    assert _bench_module("run").main(["som", "--quick", "--out", str(out)]) == 0
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


def test_bm_gibbs_runner_rates_every_backend_and_the_torch_loop(tmp_path, monkeypatch):
    """``bench/run.py bm_gibbs --quick`` (its main, in this process): one row per backend
    present and the PyTorch loop, each rated on the C * N * S unit updates it did. The quick
    case shrinks from 64 units x 8 chains to 12 x 3 (still 2 sweeps): the interpreted Triton
    kernel took 18 s a call at 64 x 8, and the runner calls it twice."""
    runner = _bench_module("run")
    monkeypatch.setattr(_bench_module("bench_bm_gibbs"), "QUICK_CASES", [(12, 3, 2)])
    assert runner.main(["bm_gibbs", "--quick", "--out", str(tmp_path)]) == 0
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


# ------------------------------------------------- energy family and sklearn compat
BENCH = os.path.join(REPO, "bench")


def _bench_module(name):
    if not os.path.isfile(os.path.join(BENCH, name + ".py")):
        pytest.skip("bench/ is not in this checkout")
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def energy(tmp_path_factory):
    """bench/run.py energy's main on tiny workloads: 300 random rows at the default shapes
    (784 x 256, batch 100, PCD-1) and a 'large' workload shrunk to 784 x 32, batch 64, PCD-3."""
    import argparse

    import numpy as np
    bench_rbm = _bench_module("bench_rbm")
    rows = (np.random.default_rng(0).random((300, 784)) < 0.2).astype(np.float32)
    out = tmp_path_factory.mktemp("energy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_rbm, "workloads", lambda quick, data: {"random": rows, "large": rows[:200]})
        mp.setattr(bench_rbm, "LARGE", {"n_hidden": 32, "batch": 64, "k": 3})
        mp.setattr(bench_rbm, "PAUSE_S", {False: 0.0, True: 0.0})
        args = argparse.Namespace(device="cpu", quick=True, out=str(out), data=None)
        assert bench_rbm.main(args) == 0
    (json_path,) = out.glob("*-energy-quick.json")
    assert "| x eager |" in json_path.with_suffix(".md").read_text()
    return json.loads(json_path.read_text()), rows


def _untrained_recon(rows, n_hidden):
    """Reconstruction error of an RBM at its initial weights N(0, 0.01^2), zero biases."""
    import types

    import numpy as np
    import torch
    bench_rbm = _bench_module("bench_rbm")
    g = torch.Generator().manual_seed(0)
    model = types.SimpleNamespace(weights=torch.randn(784, n_hidden, generator=g) * 0.01,
                                  visible_bias=torch.zeros(784), hidden_bias=torch.zeros(n_hidden))
    return bench_rbm.reconstruction_error(model, np.asarray(rows))


def test_energy_bench_has_the_eager_loop_and_the_large_workload(energy):
    results, _ = energy
    by = {(c["workload"], c["impl"]): c for c in results["cases"]}
    for workload in ("random", "large"):
        for impl in ("ideal (torch.mm)", "cpu dense", "eager loop"):
            case = by[(workload, impl)]
            assert case["median_s"] > 0 and case["rounds"] == 2, case
            assert case["x_eager"] > 0, case
        assert by[(workload, "eager loop")]["x_eager"] == 1.0
    assert ("random", "sklearn BernoulliRBM") in by
    assert ("large", "sklearn BernoulliRBM") not in by  # scikit-learn runs PCD-1 only
    assert by[("large", "cpu dense")]["shapes"] == {"n": 200, "n_visible": 784, "n_hidden": 32, "batch": 64, "k": 3}
    assert by[("random", "cpu dense")]["shapes"]["k"] == 1
    assert not any(c["tf32"] for c in results["cases"])  # TF32 only ever on CUDA
    assert not any(c["impl"] == "triton graph" for c in results["cases"])  # CUDA graphs: CUDA only


def test_energy_bench_times_cuda_graphs_on_every_cuda_workload(monkeypatch):
    """On CUDA every workload gains the "triton graph" row: the triton fit with
    cuda_graph=True (the case list only; nothing runs here)."""
    import numpy as np

    import genkernels
    bench_rbm = _bench_module("bench_rbm")
    monkeypatch.setattr(genkernels, "available_backends", lambda device=None: ["reference", "triton"])
    rows = np.zeros((10, 784), dtype=np.float32)
    cases = bench_rbm.build_cases("cuda", {"random": rows, "large": rows})
    for workload in ("random", "large"):
        impls = [c["impl"] for c in cases if c["workload"] == workload]
        assert impls == ["ideal (torch.mm)", "triton dense", "triton graph", "eager loop"], impls


@pytest.mark.parametrize("workload", ["random", "large"])
def test_energy_eager_loop_learns_as_ours(energy, workload):
    """The eager loop runs genkernels.RBM's rule: after the epoch its reconstruction error
    sits where ours does (other random draws), well below the untrained model's."""
    results, rows = energy
    by = {c["impl"]: c for c in results["cases"] if c["workload"] == workload}
    n = by["cpu dense"]["shapes"]["n"]
    start = _untrained_recon(rows[:n], by["cpu dense"]["shapes"]["n_hidden"])
    progress = start - by["cpu dense"]["recon"]
    assert progress > 0.01, (start, by["cpu dense"]["recon"])
    assert abs(by["eager loop"]["recon"] - by["cpu dense"]["recon"]) < 0.25 * progress, (start, by)


def test_compat_bench_times_both_estimators(tmp_path, monkeypatch):
    bench_compat_rbm = _bench_module("bench_compat_rbm")
    monkeypatch.setattr(bench_compat_rbm, "ROWS", {False: 200, True: 200})
    monkeypatch.setattr(bench_compat_rbm, "PAUSE_S", {False: 0.0, True: 0.0})
    assert bench_compat_rbm.main(["--quick", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*-compat-rbm-quick.json")
    assert json_path.with_suffix(".md").is_file()
    cases = json.loads(json_path.read_text())["cases"]
    by = {(c["impl"], c["shapes"]["batch_size"]): c for c in cases}
    assert set(by) == {(impl, b) for impl in ("genkernels", "sklearn") for b in (100, 10)}
    for (impl, batch), case in by.items():
        assert case["median_s"] > 0 and case["dtype"] == "float64", case
        assert case["shapes"]["n"] == 200 and case["shapes"]["n_components"] == 256
        assert 0 < case["min_s"] <= case["median_s"], case
        if impl == "sklearn":
            assert case["x_faster_than_sklearn"] == case["x_faster_than_sklearn_best"] == 1.0
        assert 0 < case["recon"] < 0.25, case
    # the same rule from scikit-learn's initial weights: at batch 100 the same reconstruction
    # error up to the sampling noise of one pass (its spread over random_state 0-5 on these
    # 200 rows: 2e-4 for either estimator; at batch 10 it is 0.02, too wide to compare)
    assert by[("genkernels", 100)]["recon"] == pytest.approx(by[("sklearn", 100)]["recon"], abs=2e-3), by


def test_som_estimator_bench_times_both_searches(tmp_path):
    """--quick: GridSearchCV (n_jobs None and 2) and som_grid_search timed on the same grid,
    with the same results (scores, ranks, best_params_) and the helper's fewer SOM fits."""
    bench = _bench_module("bench_som_estimator")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*-som-estimator-quick.json")
    assert "| x faster than GridSearchCV |" in json_path.with_suffix(".md").read_text()
    cases = json.loads(json_path.read_text())["cases"]
    assert [c["impl"] for c in cases] == ["GridSearchCV", "GridSearchCV n_jobs=2", "som_grid_search"]
    grid_search, parallel, helper = cases
    assert grid_search["fits"] == parallel["fits"] == 3 * 2 * 3 + 1 and helper["fits"] == 3 + 1
    for case in cases:
        assert case["same_results"] and 0 < case["min_s"] <= case["median_s"], case
        assert case["best_params"] == grid_search["best_params"] and -1.5 < case["best_score"] < 0
    assert grid_search["x_faster_than_gridsearchcv"] == 1.0 and helper["x_faster_than_gridsearchcv"] > 0


def test_hopfield_family_runs_retrieval_then_recall(tmp_path, monkeypatch):
    """`genkernels bench hopfield` runs the retrieval benchmark and the async-recall one
    (the retrieval stubbed here: its torch.compile rows take minutes on 2 cores)."""
    runner = _bench_module("run")
    bench_hopfield = _bench_module("bench_hopfield")
    calls = []
    monkeypatch.setattr(bench_hopfield, "run", lambda *args: calls.append(args) or 0)
    # as on the command line: no Triton interpreter, so no interpreted backend is timed
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert runner.main(["hopfield", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == [("cpu", True, str(tmp_path))]
    (recall,) = tmp_path.glob("*-hopfield-recall-quick.json")
    rows = json.loads(recall.read_text())["rows"]
    assert {"cpu", "torch loop"} <= {r["impl"] for r in rows}
    assert all(r["updates_per_s"] > 0 for r in rows)


def test_made_bench_times_the_fused_network_against_layers_and_dense(tmp_path):
    """``bench/run.py made --quick``: MADE's network forward + backward by the fused op, the
    layer-by-layer path and the dense masked-weight network (eager and compiled), ours equal
    to the dense network's output."""
    assert _bench_module("run").main(["made", "--quick", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*-made-quick.json")
    cases = json.loads(json_path.read_text())["cases"]
    assert [c["impl"] for c in cases] == ["ours (cpu)", "ours, layer by layer", "dense linears of w * mask",
                                          "dense linears of w * mask (torch.compile)"]
    for case in cases:
        assert case["median_s"] > 0 and case["max_abs_diff"] < 1e-5, case
    assert cases[0]["x_ours"] == 1.0


def test_flows_images_bench_times_glow_and_realnvp_against_nflows_and_the_reference(tmp_path):
    """``bench/run.py flows_images --quick``: a training step of Glow (ours, the reference
    backend, nflows' multi-scale flow) and RealNVP (ours, the reference) on the same images;
    ours and the reference are the same model (the same losses), every loss finite and lower
    after training."""
    pytest.importorskip("nflows")
    assert _bench_module("run").main(["flows_images", "--quick", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*-flows-images-quick.json")
    cases = json.loads(json_path.read_text())["cases"]
    assert {(c["flow"], c["impl"]) for c in cases} == \
        {("Glow", "ours"), ("Glow", "reference"), ("Glow", "nflows"), ("RealNVP", "ours"), ("RealNVP", "reference")}
    by = {(c["flow"], c["impl"]): c for c in cases}
    for case in cases:
        assert case["median_s"] > 0 and case["iqr_s"] >= 0 and case["rounds"] >= 1, case
        assert math.isfinite(case["first_loss"]) and case["last_loss"] < case["first_loss"], case
    for flow in ("Glow", "RealNVP"):
        assert by[(flow, "ours")]["params"] == by[(flow, "reference")]["params"]
        assert by[(flow, "ours")]["first_loss"] == pytest.approx(by[(flow, "reference")]["first_loss"], rel=1e-4)
    assert by[("Glow", "ours")]["x_ours"] == 1.0


def test_flows_training_bench_times_every_flow_against_both_anchors(tmp_path):
    """``bench/run.py flows_training --quick``: a training step of each flow (RealNVP, MAF, NSF)
    by ours, nflows, zuko and ours with fit's fused Adam on the same batch, every loss finite and lower after training,
    ours starting at the identity (its first loss is the standard normal's on standardised data)."""
    pytest.importorskip("nflows")
    pytest.importorskip("zuko")
    assert _bench_module("run").main(["flows_training", "--quick", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*-flows-training-quick.json")
    assert "| nflows / ours | zuko / ours |" in json_path.with_suffix(".md").read_text()
    cases = json.loads(json_path.read_text())["cases"]
    assert {(c["flow"], c["impl"]) for c in cases} == \
        {(f, i) for f in ("RealNVP", "MAF", "NSF") for i in ("ours", "nflows", "zuko", "ours, fit's fused Adam")}
    for case in cases:
        assert case["median_s"] > 0 and case["iqr_s"] >= 0 and case["rounds"] >= 1, case
        assert math.isfinite(case["first_loss"]) and case["last_loss"] < case["first_loss"], case
        if case["impl"] == "ours":
            d = case["features"]
            assert case["first_loss"] == pytest.approx(0.5 * d * math.log(2 * math.pi * math.e), rel=1e-4)
            assert 0 < case["flow_op_share"] <= case["genkernels_ops_share"] <= 1, case
        else:
            assert case["x_ours"] > 0
        if case["impl"] == "ours, fit's fused Adam":   # the same model and losses, each anchor against it
            ours = next(c for c in cases if c["impl"] == "ours" and c["flow"] == case["flow"])
            assert case["first_loss"] == pytest.approx(ours["first_loss"], rel=1e-6)
            assert set(case["anchor_x"]) == {"nflows", "zuko"} and min(case["anchor_x"].values()) > 0


def test_flows_mnist_quick_trains_both_flows_on_the_digits(tmp_path):
    """``bench/flows_mnist.py --quick``: RealNVP and Glow on the digits, one epoch each, finite
    held-out bits/dim below the uniform model's (log2 17), a sample grid each."""
    assert _bench_module("flows_mnist").main(["--quick", "--quiet", "--out", str(tmp_path)]) == 0
    cases = json.loads((tmp_path / "flows-mnist-quick.json").read_text())["cases"]
    assert [c["model"] for c in cases] == ["RealNVP", "Glow"]
    for c in cases:
        assert 0 < c["test_bits_per_dim"] < math.log2(17) and (tmp_path / c["samples_png"]).is_file(), c


def start_in_background():
    """The collection of bench/ by pytest (a new process importing every benchmark module),
    started when this session's collection ends (tests/background_jobs.py)."""
    if not os.path.isdir(BENCH):
        return None
    return background_jobs.start(
        "pytest_bench_collect", lambda _: [sys.executable, "-m", "pytest", BENCH, "--benchmark-only", "--bench-quick",
                                           "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        # a pytest-xdist worker's variables would tell pytest-benchmark it runs under xdist
        "genkernels-bench-collect-", cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")})


def test_pytest_benchmark_lists_every_family():
    """``pytest bench/ --benchmark-only`` collects the pytest-benchmark entry of every
    family's benchmark module (bench/conftest.py collects bench_*.py)."""
    job = start_in_background()
    if job is None:
        pytest.skip("bench/ is not in this checkout")
    proc = job.result(timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    modules = {line.split("::")[0] for line in proc.stdout.splitlines() if "::test_" in line}
    assert modules == {f"bench/{name}.py" for name in ("bench_som", "bench_hopfield", "bench_hopfield_recall",
                                                        "bench_ising", "bench_rbm", "bench_bm_gibbs",
                                                        "bench_compat_rbm", "bench_som_estimator", "bench_som_nn",
                                                        "bench_som_mask", "bench_autoregressive", "bench_flows",
                                                        "bench_flows_training", "bench_flows_images",
                                                        "bench_made")}, \
        proc.stdout[-4000:]


# ------------------------------------------------------- results from a clean tree only
def test_results_dir_refuses_a_dirty_tree(monkeypatch, tmp_path, capsys):
    """Writing into the repository's bench/results needs a clean tree (or --allow-dirty);
    any other folder is always allowed."""
    runner = _bench_module("harness")  # the clean-tree rule and the commit live there
    monkeypatch.delenv(runner.ALLOW_DIRTY_ENV, raising=False)
    monkeypatch.setattr(runner, "git_commit", lambda: "0123abcd-dirty")
    with pytest.raises(SystemExit) as exc:
        runner.check_results_dir(runner.RESULTS_DIR)
    assert exc.value.code == 2
    assert "--allow-dirty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.check_results_dir(os.path.join(runner.RESULTS_DIR, "sub"))
    runner.check_results_dir(str(tmp_path))  # elsewhere: allowed
    monkeypatch.setattr(runner, "git_commit", lambda: None)  # no commit to name: refused too
    with pytest.raises(SystemExit):
        runner.check_results_dir(runner.RESULTS_DIR)
    monkeypatch.setattr(runner, "git_commit", lambda: "0123abcd")
    runner.check_results_dir(runner.RESULTS_DIR)  # clean: allowed
    monkeypatch.setattr(runner, "git_commit", lambda: "0123abcd-dirty")
    monkeypatch.setenv(runner.ALLOW_DIRTY_ENV, "1")  # what --allow-dirty sets
    runner.check_results_dir(runner.RESULTS_DIR)


@pytest.mark.parametrize("argv", [["bm_gibbs", "--quick"], ["ising", "--quick"], ["hopfield", "--quick"],
                                  ["energy", "--quick"], ["som", "--quick", "--small"],
                                  ["flows_training", "--quick"], ["flows_images", "--quick"],
                                  ["made", "--quick"]])
def test_runner_refuses_before_measuring(monkeypatch, argv):
    """Every family's runner stops before measuring anything when it would write into
    bench/results from a dirty tree, and writes nothing."""
    runner, harness = _bench_module("run"), _bench_module("harness")
    monkeypatch.delenv(harness.ALLOW_DIRTY_ENV, raising=False)
    monkeypatch.setattr(harness, "git_commit", lambda: "0123abcd-dirty")
    before = set(os.listdir(harness.RESULTS_DIR))
    with pytest.raises(SystemExit) as exc:
        runner.main(argv)
    assert exc.value.code == 2
    assert set(os.listdir(harness.RESULTS_DIR)) == before


@pytest.mark.parametrize("script", ["bench_compat_rbm", "bench_som_estimator", "bench_bm_gibbs", "bench_hopfield",
                                    "bench_small",
                                    "bench_ising", "bench_hopfield_recall", "dbn_digits", "hopfield_capacity",
                                    "rbm_mnist", "rbm_ais_digits", "bench_som_nn", "softsom_spirals"])
def test_every_script_refuses_a_dirty_tree(monkeypatch, capsys, script):
    """The standalone scripts apply the same rule (their default --out is bench/results)."""
    runner = _bench_module("harness")
    module = _bench_module(script)
    monkeypatch.delenv(runner.ALLOW_DIRTY_ENV, raising=False)
    monkeypatch.setattr(runner, "git_commit", lambda: "0123abcd-dirty")
    before = set(os.listdir(runner.RESULTS_DIR))
    with pytest.raises(SystemExit) as exc:
        module.main(["--quick"] if script.startswith("bench_") else [])
    assert exc.value.code == 2
    assert set(os.listdir(runner.RESULTS_DIR)) == before
    capsys.readouterr()
    with pytest.raises(SystemExit):
        module.main(["--help"])
    assert "--allow-dirty" in capsys.readouterr().out


def test_rbm_ais_digits_writes_ais_and_exact(tmp_path):
    """bench/rbm_ais_digits.py on a tiny budget: both base models, the exact log Z, and
    AIS within a few of its own standard errors of it."""
    module = _bench_module("rbm_ais_digits")
    result = module.run(str(tmp_path), epochs=1, n_chains=50, n_betas=200)
    saved = json.loads((tmp_path / "rbm-ais-digits.json").read_text())
    assert saved["exact_log_z"] == result["exact_log_z"]
    assert [r["base"] for r in saved["rows"]] == ["uniform", "base-rate"]
    for row in saved["rows"]:
        assert row["stderr"] > 0 and abs(row["error"]) < max(5 * row["stderr"], 0.5), row
    assert (tmp_path / "rbm-ais-digits.md").is_file()


def test_compat_bench_records_reconstruction_errors_over_random_states(tmp_path, monkeypatch):
    """--recon-states K: both estimators fitted for random_state 0..K-1, every error, its
    mean and spread in <machine>-compat-rbm-recon-quick.json; nothing timed."""
    bench_compat_rbm = _bench_module("bench_compat_rbm")
    monkeypatch.setattr(bench_compat_rbm, "ROWS", {False: 200, True: 200})
    assert bench_compat_rbm.main(["--quick", "--recon-states", "3", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*-compat-rbm-recon-quick.json")
    assert "| mean | std |" in json_path.with_suffix(".md").read_text()
    cases = json.loads(json_path.read_text())["cases"]
    assert [c["impl"] for c in cases] == ["genkernels", "sklearn"]
    import numpy as np
    for case in cases:
        assert case["random_states"] == [0, 1, 2] and len(case["recon"]) == 3
        assert all(0 < e < 0.25 for e in case["recon"]), case
        assert case["recon_mean"] == pytest.approx(np.mean(case["recon"]))
        assert case["recon_std"] == pytest.approx(np.std(case["recon"], ddof=1))
        assert case["shapes"]["batch_size"] == 100 and "median_s" not in case


# ------------------------------------------- GPU targets (bench/gpu_targets.py, scripts/gpu_check.sh)
GPU_CHECK = os.path.join(REPO, "scripts", "gpu_check.sh")
RECORD_FIELDS = {"suite", "target", "impl", "backend", "params", "shapes", "dtype", "device", "median_s",
                 "rounds", "rate", "rate_unit", "check", "error", "skipped", "versions", "commit", "tree_clean"}


@pytest.fixture(scope="module")
def gpu_targets(tmp_path_factory):
    """bench/gpu_targets.py --dry-run: every family's targets at tiny sizes on CPU tensors
    (triton interpreted, cpu standing in for cuda), in this process."""
    module = _bench_module("gpu_targets")
    out = tmp_path_factory.mktemp("targets")
    assert module.main(["--dry-run", "--out", str(out)]) == 0
    (json_path,) = out.glob("*-targets-dry.json")
    return module, out, json.loads(json_path.read_text()), json_path.with_suffix(".md").read_text()


def test_gpu_targets_dry_run_records_every_target(gpu_targets):
    _, _, results, md = gpu_targets
    assert results["dry_run"] is True and results["device"] == "cpu"
    assert results["families_run"] == ["som", "ising", "energy", "autoregressive", "flows"]
    assert results["versions"]["torch"] and "commit" in results and "tree_clean" in results
    cases = results["cases"]
    for case in cases:
        assert RECORD_FIELDS <= set(case), case
        assert case["error"] is None, case
        assert case["versions"]["torch"] and case["commit"] == results["commit"]
        assert case["tree_clean"] in (True, False, None)
        if case["skipped"]:
            continue
        assert case["median_s"] > 0 and case["rounds"] == 1 and case["rate"] > 0, case
        assert case["check"] is None or case["check"]["ok"] is True, case
    got = {(c["suite"], c["target"], c["impl"], c["params"].get("precision")) for c in cases
           if c["suite"] in ("som", "ising", "energy")}
    assert got == {
        *{("som", "som_bmu", "genkernels.ops.som_bmu", p) for p in ("fp32", "tf32", "bf16")},
        ("som", "som_bmu", "torch.mm", None), ("som", "som_bmu", "torch addmm+argmin", None),
        ("som", "som_online epoch", "auto", None), ("som", "som_online epoch", "triton", None),
        ("som", "som_online epoch", "cuda", None),
        ("ising", "Ising2D.sweep", "cuda", None), ("ising", "Ising2D.sweep", "triton", None),
        *{("energy", "RBM PCD-1 epoch", i, None) for i in ("eager loop", "RBM.fit", "RBM.fit(cuda_graph=True)")},
        ("energy", "bm_gibbs", "cuda", None), ("energy", "bm_gibbs", "triton", None),
        ("energy", "hopfield_recall async", "cuda", None), ("energy", "hopfield_recall async", "triton", None)}
    assert len([c for c in cases if c["suite"] == "ising"]) == 4  # two sizes, two backends
    # the masked layers, MADE's network and the sampler; the flows' ops against the copy's bandwidth
    assert {c["target"].split(" ")[0] for c in cases if c["suite"] == "autoregressive"} == {
        "masked_conv2d", "masked_linear", "masked_mlp", "GatedPixelCNN.sample"}
    assert {c["target"].split(" ")[0] for c in cases if c["suite"] == "flows"} == {
        "device", "affine_coupling", "rq_spline"}
    ours = [c for c in cases if c["suite"] in ("autoregressive", "flows") and c["impl"].startswith("ours (")]
    assert ours and all(c["check"]["ok"] and c["rate_unit"].startswith("x ") for c in ours)
    assert all("bandwidth_share" in c["check"] for c in ours if c["target"].startswith("affine_coupling"))
    by = {(c["target"], c["impl"], c["params"].get("precision")): c for c in cases}
    # on CPU the cpu backend stands in for cuda; CUDA graphs are skipped with the reason
    assert by[("Ising2D.sweep", "cuda", None)]["backend"] == "cpu"
    assert by[("RBM PCD-1 epoch", "RBM.fit(cuda_graph=True)", None)]["skipped"]
    if not by[("som_bmu", "genkernels.ops.som_bmu", "bf16")]["skipped"]:  # triton interpreted
        assert by[("som_bmu", "genkernels.ops.som_bmu", "bf16")]["check"]["indices_equal_fp32"] == 1.0
        assert by[("RBM PCD-1 epoch", "RBM.fit", None)]["x_eager"] > 0
    assert by[("som_bmu", "torch.mm", None)]["rate_unit"] == "TFLOP/s"
    for heading in ("## som", "## ising", "## energy", "## autoregressive", "## flows", "| target | impl |"):
        assert heading in md


def test_gpu_targets_rerun_of_one_family_keeps_the_others(gpu_targets):
    module, out, before, _ = gpu_targets
    assert module.main(["ising", "--dry-run", "--out", str(out)]) == 0
    (json_path,) = out.glob("*-targets-dry.json")
    after = json.loads(json_path.read_text())
    assert after["families_run"] == ["ising"]
    assert [c for c in after["cases"] if c["suite"] != "ising"] == \
        [c for c in before["cases"] if c["suite"] != "ising"]
    assert len([c for c in after["cases"] if c["suite"] == "ising"]) == 4


def test_gpu_targets_arguments(gpu_targets, capsys):
    module = gpu_targets[0]
    with pytest.raises(SystemExit) as exc:
        module.main(["bogus", "--dry-run"])
    assert exc.value.code == 2 and "unknown family 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.main(["--rounds", "0", "--dry-run"])
    assert module.parse_args([]).families == ["som", "ising", "energy", "autoregressive", "flows"]
    assert module.parse_args(["energy", "som", "energy"]).families == ["energy", "som"]
    import torch
    if not torch.cuda.is_available():  # a real run needs the GPU
        assert module.main(["ising", "--out", os.devnull]) == 2


def test_gpu_targets_tree_state_overrides(gpu_targets, monkeypatch):
    module = gpu_targets[0]
    monkeypatch.setenv("GENKERNELS_COMMIT", "abc123")
    monkeypatch.setenv("GENKERNELS_TREE_STATE", "clean")
    assert module.tree_state() == ("abc123", True, [])
    monkeypatch.setenv("GENKERNELS_TREE_STATE", "dirty")
    assert module.tree_state()[1] is False


def test_gpu_check_script_is_valid_bash():
    if not os.path.isfile(GPU_CHECK):
        pytest.skip("scripts/ is not in this checkout")
    subprocess.run(["bash", "-n", GPU_CHECK], check=True)
    import shutil
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", GPU_CHECK], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
    proc = subprocess.run(["bash", GPU_CHECK, "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown section 'bogus'" in proc.stderr
    proc = subprocess.run(["bash", GPU_CHECK, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "TOTAL_S" in proc.stdout and "set -u" not in proc.stdout


def test_gpu_check_script_dry_run(tmp_path):
    """scripts/gpu_check.sh --dry-run ising: no build, the section's gpu tests (skipped
    without a GPU), its targets at tiny sizes; the steps and the summary, results in $OUT."""
    if not os.path.isfile(GPU_CHECK):
        pytest.skip("scripts/ is not in this checkout")
    # generous limits: this checks the script's steps, not the speed of a loaded CPU
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "TAIL": "0", "TOTAL_S": "600",
           "ISING_TESTS_S": "240", "ISING_TARGETS_S": "240",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(["bash", GPU_CHECK, "--dry-run", "ising"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "build: skipped (dry run)" in summary
    assert "ising tests: rc=0" in summary and "ising targets: rc=0" in summary
    assert "som" not in summary.split("== summary")[1]
    assert (tmp_path / "ising.log").is_file()
    (json_path,) = (tmp_path / "results").glob("*-targets-dry.json")
    assert {c["suite"] for c in json.loads(json_path.read_text())["cases"]} == {"ising"}
    # the device tool returns at most 8 files from $OUT
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) <= 8


def test_gpu_check_script_starts_no_step_past_its_total_limit(tmp_path):
    """TOTAL_S caps the whole script: a step with less than MIN_STEP_S left is not started,
    said so in the summary, and the script exits 1."""
    if not os.path.isfile(GPU_CHECK):
        pytest.skip("scripts/ is not in this checkout")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "TOTAL_S": "0"}
    proc = subprocess.run(["bash", GPU_CHECK, "--dry-run", "som"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = (tmp_path / "summary.txt").read_text().split("== summary")[1]
    assert "som tests: NOT RUN" in summary and "som targets: NOT RUN" in summary
    assert not (tmp_path / "som.log").exists()
