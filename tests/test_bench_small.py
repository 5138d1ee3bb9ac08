"""bench/bench_small.py and run.py's --contended: the rows and files they write; the timing
rules of bench/harness.py."""

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


# ------------------------------------------------------------ the harness's timing rules
class _Clock:
    """A stand-in for the time module: the clock moves only when a timed call or a pause
    says so, and every call is logged."""

    def __init__(self):
        self.now, self.log = 0.0, []

    def perf_counter(self):
        return self.now

    process_time = perf_counter

    def sleep(self, seconds):
        self.log.append(("sleep", seconds))
        self.now += seconds

    def call(self, name, seconds):
        def fn():
            self.log.append(name)
            self.now += seconds
            return name
        return fn


@pytest.fixture
def clock(bench_modules, monkeypatch):
    harness, _ = bench_modules
    fake = _Clock()
    monkeypatch.setattr(harness, "time", fake)
    return harness, fake


# (durations are binary fractions: the fake clock adds them up exactly)
@pytest.mark.parametrize("seconds, total_rounds, round_rounds", [
    (0.125, 8, 8),   # fast: the budget (1 s) ends both once spent
    (0.625, 3, 3),   # the budget is spent before min_rounds: min_rounds
    (1.625, 2, 3),   # two rounds pass 3x the budget together; no single one does
    (3.5, 1, 1)])    # one round over 3x the budget
def test_measure_rounds_follow_the_budget_rule(clock, seconds, total_rounds, round_rounds):
    harness, fake = clock
    fn = fake.call("fn", seconds)
    times, out = harness.measure(fn, "cpu", True, 1.0)
    assert out == "fn" and times == [seconds] * total_rounds
    assert fake.log.count("fn") == total_rounds + 1  # one warm-up call
    median, rounds = harness.median_time(fn, "cpu", 1.0)
    assert (median, rounds) == (seconds, round_rounds)


def test_measure_caps_the_rounds(clock):
    harness, fake = clock
    fn = fake.call("fn", 2**-10)
    assert len(harness.measure(fn, "cpu", False, 1.0)[0]) == harness.MAX_ROUNDS == 50
    assert harness.median_time(fn, "cpu", 1.0) == (2**-10, 20)
    assert len(harness.measure(fn, "cpu", False, 1.0, max_rounds=None)[0]) == 1024


def test_measure_repeat_and_cpu_times(clock):
    """repeat_s: one clock over the calls of a round, seconds per call; cpu_times: one entry
    per round."""
    harness, fake = clock
    cpu = []
    times, _ = harness.measure(fake.call("fn", 2**-10), "cpu", False, 1.0, min_rounds=2, max_rounds=2,
                               repeat_s=2**-7, cpu_times=cpu)
    assert times == cpu == [2**-10, 2**-10]
    assert fake.log.count("fn") == 16
    with pytest.raises(ValueError, match="cutoff"):
        harness.measure(fake.call("fn", 2**-10), "cpu", False, 1.0, cutoff="never")


def test_interleaved_times_every_callable_once_per_round(clock):
    harness, fake = clock
    threads = []
    rows = []
    times, outs = harness.interleaved([fake.call("a", 0.125), fake.call("b", 0.25)], "cpu", 3, pause_s=0.5,
                                      warmup=[True, False], before=threads.append,
                                      progress=lambda r, row: rows.append((r, list(row))))
    assert times.shape == (3, 2) and times.tolist() == [[0.125, 0.25]] * 3
    assert outs == ["a", "b"] and threads == [0, 1] * 3
    assert rows == [(r, [0.125, 0.25]) for r in range(3)]
    assert fake.log == ["a"] + [("sleep", 0.5), "a", ("sleep", 0.5), "b"] * 3
    fake.log.clear()
    harness.interleaved([fake.call("a", 0.125), fake.call("b", 0.25)], "cpu", 1, warmup=False, warm_each=True)
    assert fake.log == ["a", "a", "b", "b"]  # an untimed call right before each timed one


def test_harness_imports_no_benchmark_module():
    import subprocess
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import harness; "
            "print(sorted(m for m in sys.modules if m.startswith('bench_') or m == 'run'))")
    out = subprocess.run([sys.executable, "-c", code, BENCH], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
