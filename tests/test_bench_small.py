"""bench/bench_small.py and run.py's --contended: the rows and files they write."""

import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import bench_small
    import harness
    return harness, bench_small


def test_small_rows_time_one_and_two_threads(tmp_path, bench_modules, monkeypatch):
    harness, bench_small = bench_modules
    monkeypatch.setattr(bench_small, "ROUND_S", {True: 0.002, False: 0.002})
    assert bench_small.run(("ising",), quick=True, out_dir=str(tmp_path)) == 0
    files = sorted(os.listdir(tmp_path))
    assert files == [f"{harness.machine_name('cpu')}-small-ising-quick.{ext}" for ext in ("json", "md")]
    data = json.loads((tmp_path / files[0]).read_text())
    assert data["contention"] == {"busy_processes": 0}
    cases = {(r["case"], r["impl"]) for r in data["cases"]}
    assert ("ising L=16, 1 lattice, 1 sweep", "genkernels Ising2D.sweep") in cases
    for r in data["cases"]:
        assert r["t1_s"] > 0 and r["t2_s"] > 0
        assert r["ratio_2_over_1"] == pytest.approx(r["t2_s"] / r["t1_s"])


def test_contended_runs_busy_processes_and_names_the_results(tmp_path, bench_modules):
    harness, _ = bench_modules
    with harness.busy_neighbours(2) as busy:
        pids = [p.pid for p in busy.procs]
        assert len(pids) == 2 and all(p.poll() is None for p in busy.procs)
        assert harness.contention_meta() == {"busy_processes": 2}
        stem = harness.write_results(str(tmp_path), "x", {"machine": "m"}, [], "table")
    assert stem.endswith("x-contended2")
    assert json.loads((tmp_path / "x-contended2.json").read_text())["contention"] == {"busy_processes": 2}
    assert all(p.poll() is not None for p in busy.procs)  # stopped
    assert harness.contention_meta() == {"busy_processes": 0} and harness.contention_suffix() == ""
    with pytest.raises(ValueError, match="--contended"):
        harness.busy_neighbours(-1)


def test_runner_accepts_small_and_contended(bench_modules):
    import run
    args = run.parse_args(["energy", "--small", "--contended", "1", "--quick"])
    assert args.small and args.contended == 1 and args.family == "energy"
    assert sys.modules["bench_small"].FAMILIES == ("som", "energy", "hopfield", "ising", "bm_gibbs")
