"""The benchmarks' shared harness: machine and version metadata, the commit of the tree,
the clean-tree rule for bench/results, timing (``measure``: warm-up, then rounds until a
budget is spent; ``median_time`` on its rule; ``interleaved``: several callables in
round-robin rounds), resident-memory sampling, busy neighbours for ``--contended`` runs,
the JSON + Markdown writer and the options of the pytest-benchmark entries
(``bench_options``). Every benchmark module uses these, and this module imports none of
them; bench/run.py is the runner built on them."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
MIN_ROUNDS, MAX_ROUNDS = 3, 50
PACKAGES = ("torch", "triton", "numpy", "minisom", "torchsom", "xpysom", "pytest-benchmark")


# ------------------------------------------------------------------------ metadata
def machine_name(device: str) -> str:
    """CPU model + core count ("intel-xeon-processor-2c") or the GPU model."""
    if device == "cuda":
        import torch
        name = torch.cuda.get_device_name()
    else:
        name = "unknown-cpu"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1]
                        break
        except OSError:
            pass
        name = f"{name} {os.cpu_count()}c"
    name = re.sub(r"\((r|tm)\)|\bcpu\b", " ", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    import genkernels
    import torch
    out["genkernels"] = genkernels.__version__
    out["torch_threads"] = torch.get_num_threads()
    return out


RESULTS_DIR = os.path.join(BENCH_DIR, "results")
ALLOW_DIRTY_ENV = "GENKERNELS_BENCH_ALLOW_DIRTY"


def git_commit() -> str | None:
    """HEAD's commit, with "-dirty" when the tree has changes (tracked or untracked files)
    outside bench/results/: results written by an earlier benchmark of the same session do
    not change the code being measured. A copy of the tree without .git (a GPU machine) names
    its commit with GENKERNELS_COMMIT, clean only with GENKERNELS_TREE_STATE=clean."""
    if os.environ.get("GENKERNELS_COMMIT"):
        clean = os.environ.get("GENKERNELS_TREE_STATE") == "clean"
        return os.environ["GENKERNELS_COMMIT"] + ("" if clean else "-dirty")
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", ".",
                                ":(exclude)bench/results"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def add_allow_dirty(parser) -> None:
    """The ``--allow-dirty`` option every benchmark runner takes (see :func:`check_results_dir`)."""
    parser.add_argument("--allow-dirty", action="store_true",
                        help="write into bench/results even from a tree with uncommitted changes "
                             "(the results then record the commit as <sha>-dirty)")


def allow_dirty(flag: bool = True) -> None:
    """Record ``--allow-dirty`` for the whole process (and its children): an environment
    variable, so that every copy of this module (``genkernels bench`` loads it under another
    name) and every runner it calls sees it."""
    if flag:
        os.environ[ALLOW_DIRTY_ENV] = "1"


def layer_bench_main(doc: str, run, argv=None) -> int:
    """The command line of a layer benchmark whose ``run(quick, rounds, out, threads, device)``
    times forward + backward (bench_autoregressive.py, bench_flows.py): --quick, --rounds,
    --threads (1), --device, --out, --allow-dirty; the results folder checked before any
    measuring."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=RESULTS_DIR)
    add_allow_dirty(p)
    args = p.parse_args(argv)
    allow_dirty(args.allow_dirty)
    check_results_dir(args.out)
    run(args.quick, args.rounds, args.out, args.threads, args.device)
    return 0


def writes_into_repo_results(out_dir: str) -> bool:
    out, results = os.path.realpath(out_dir), os.path.realpath(RESULTS_DIR)
    return out == results or out.startswith(results + os.sep)


def check_results_dir(out_dir: str) -> None:
    """Refuse (SystemExit 2, with the reason) to write results into this repository's
    bench/results/ unless the tree is a clean commit (no changes outside bench/results/),
    so that every committed results file names the code that produced it. ``--allow-dirty``
    (or GENKERNELS_BENCH_ALLOW_DIRTY=1) lifts the refusal; the files then record
    ``<sha>-dirty``. Any other --out folder is always allowed. Runners call this before
    measuring (fail fast) and again when writing."""
    if os.environ.get(ALLOW_DIRTY_ENV) == "1" or not writes_into_repo_results(out_dir):
        return
    commit = git_commit()
    if commit is not None and not commit.endswith("-dirty"):
        return
    reason = ("the tree has uncommitted changes" if commit is not None
              else "no git commit could be read for this checkout")
    print(f"[bench] refusing to write results into {RESULTS_DIR}: {reason}, so the results "
          "could not name the code that produced them. Commit first, or pass --allow-dirty "
          "(the files then record <sha>-dirty), or write elsewhere with --out DIR.",
          file=sys.stderr)
    raise SystemExit(2)


# ------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    """Wait for the work queued on ``device`` (a CUDA device); nothing to wait for on the CPU."""
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def measure(fn, device: str, warmup: bool, budget_s: float, *, min_rounds: int = MIN_ROUNDS,
            max_rounds: int | None = MAX_ROUNDS, cutoff: str = "total", repeat_s: float | None = None,
            cpu_times: list | None = None):
    """The benchmarks' one timing rule. Run ``fn`` once untimed (``warmup``), then timed
    rounds -- a round calls ``fn`` and waits for the device -- until ``budget_s`` seconds
    of rounds are spent and ``min_rounds`` are done, or ``max_rounds`` are (None: no cap).
    Rounds too long for the budget end the measurement early, below ``min_rounds`` too:
    with ``cutoff="total"`` once the rounds together reach 3x the budget, with
    ``cutoff="round"`` once one round exceeds 3x the budget.

    ``repeat_s``: a round calls ``fn`` back to back until that many seconds have passed,
    under one clock, and counts the seconds per call (for calls of microseconds, to which
    a clock read per call would add). ``cpu_times``: a list that receives each round's
    process CPU seconds (all threads; per call with ``repeat_s``) beside the wall seconds.

    Returns (the per-round seconds, ``fn``'s last result)."""
    if cutoff not in ("total", "round"):
        raise ValueError(f"cutoff must be 'total' or 'round'; got {cutoff!r}")
    if warmup:
        fn()
        sync(device)
    times, out, spent = [], None, 0.0
    while True:
        start = time.perf_counter()
        if cpu_times is not None:
            cpu_start = time.process_time()
        out, calls = fn(), 1
        if repeat_s is not None:
            while time.perf_counter() - start < repeat_s:
                out = fn()
                calls += 1
        sync(device)
        if cpu_times is not None:
            cpu_times.append((time.process_time() - cpu_start) / calls)
        seconds = time.perf_counter() - start
        times.append(seconds / calls)
        spent += seconds
        if (cutoff == "total" and spent >= 3 * budget_s) or (cutoff == "round" and seconds > 3 * budget_s):
            break
        if len(times) >= min_rounds and (spent >= budget_s or (max_rounds is not None and len(times) >= max_rounds)):
            break
    return times, out


def median_time(fn, device, budget_s: float, min_rounds: int = 3, max_rounds: int = 20) -> tuple[float, int]:
    """:func:`measure` with one warm-up call, then timed rounds (at least min_rounds, at
    most max_rounds, until budget_s is spent; a round over 3x the budget ends it):
    (median seconds, rounds)."""
    times, _ = measure(fn, device, True, budget_s, min_rounds=min_rounds, max_rounds=max_rounds,
                       cutoff="round")
    return statistics.median(times), len(times)


def interleaved(fns, device: str, rounds: int, *, pause_s: float = 0.0, warmup=True, warm_each: bool = False,
                before=None, repeat_s: float | None = None, progress=None):
    """Time several callables in interleaved rounds: every round times each of ``fns``
    once, in order, so that a change of load on a shared machine hits them alike.

    ``warmup``: one untimed call of each before the first round (a bool for all, or one
    per callable). Before each timed call: ``before(i)`` (e.g. the thread count of
    callable i), ``pause_s`` idle seconds (thread pools that spin after a call would
    otherwise slow the next one) and, with ``warm_each``, one untimed call of the same
    callable, so that each is timed in its own steady state rather than right after
    another. A timed call is one :func:`measure` round (``repeat_s``: its seconds per
    call). ``progress(r, row)`` after round r (from 0), with that round's seconds.

    Returns (seconds, an array of shape (rounds, len(fns)); each callable's last result)."""
    flags = [warmup] * len(fns) if isinstance(warmup, bool) else list(warmup)
    for fn, flag in zip(fns, flags):
        if flag:
            fn()
            sync(device)
    times = np.zeros((rounds, len(fns)))
    outs = [None] * len(fns)
    for r in range(rounds):
        for i, fn in enumerate(fns):
            if before is not None:
                before(i)
            if pause_s > 0:
                time.sleep(pause_s)
            (times[r, i],), outs[i] = measure(fn, device, warm_each, 0.0, min_rounds=1, max_rounds=1,
                                              repeat_s=repeat_s)
        if progress is not None:
            progress(r, times[r])
    return times, outs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssSampler:
    """Peak resident memory while the op runs, polled every millisecond from
    /proc/self/statm (ru_maxrss would also count the input generation's transients)."""

    def __init__(self):
        import threading
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_bytes())



def _fmt_s(v) -> str:
    if v is None:
        return "-"
    if v >= 1:
        return f"{v:.2f} s"
    if v >= 1e-3:
        return f"{v * 1e3:.1f} ms"
    return f"{v * 1e6:.0f} us"


def _fmt(v, spec="{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else spec.format(v)



# ------------------------------------------------------------------- contention
_BUSY: list = []


class busy_neighbours:
    """``with busy_neighbours(n):`` runs n busy processes (a pure-Python spin loop each,
    like another user's job) beside the benchmark; results written meanwhile are named
    ``...-contendedN`` and record the count (``contention_meta``)."""

    def __init__(self, n: int):
        if n < 0:
            raise ValueError(f"--contended must be >= 0; got {n}")
        self.n = n
        self.procs: list = []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        _BUSY.extend(self.procs)
        if self.procs:
            time.sleep(0.5)  # let the scheduler see them
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
            proc.wait()
            _BUSY.remove(proc)
        return False


def run_meta(device: str, quick: bool) -> dict:
    """The metadata every results file starts with: machine, device, quick mode, time,
    versions, commit and the 1-minute load average at the start (the caller adds
    ``loadavg_end`` when the cases are done)."""
    return {"machine": machine_name(device), "device": device, "quick": quick,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": versions(), "commit": git_commit(), "loadavg_start": os.getloadavg()[0]}


def add_backend_ratios(records: list[dict], group_of) -> None:
    """``x_ours`` = median / the fastest compiled genkernels backend (kind "backend", not
    "reference"; the reference when it is the only one) of the record's group
    (``group_of(record)``), and ``ours`` = that backend, on every record."""
    groups: dict = {}
    for rec in records:
        groups.setdefault(group_of(rec), []).append(rec)
    for group in groups.values():
        ours = [r for r in group if r["kind"] == "backend" and r["impl"] != "reference"] or \
            [r for r in group if r["kind"] == "backend"]
        best = min(ours, key=lambda r: r["median_s"])
        for rec in group:
            rec["x_ours"] = rec["median_s"] / best["median_s"]
            rec["ours"] = best["impl"]


def package_version(package: str) -> str | None:
    """An installed package's version (None when it is not installed)."""
    import importlib.metadata
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_layer_results(out: str, device: str, quick: bool, threads: int, suite: str, stem: str, records: list[dict],
                        table: str, **meta) -> str:
    """A layer or training-step benchmark's results: :func:`run_meta` with the suite, the
    thread count, fp32, ``meta`` and the 1-minute load average at the end, written as
    ``<machine>-<stem>[-quick][-<T>t]`` by :func:`write_results`."""
    meta = run_meta(device, quick) | {"suite": suite, "threads": threads, "dtype": "float32"} | meta | {
        "loadavg_end": os.getloadavg()[0]}
    suffix = ("-quick" if quick else "") + (f"-{threads}t" if threads != 1 else "")
    return write_results(out, f"{machine_name(device)}-{stem}{suffix}", meta, records, table)


def contention_meta() -> dict:
    return {"busy_processes": len(_BUSY)}


def contention_suffix() -> str:
    return f"-contended{len(_BUSY)}" if _BUSY else ""


def write_results(out_dir: str, name: str, meta: dict, records: list[dict], table: str) -> str:
    """Write ``<out_dir>/<name>.json`` (meta and every case) and ``<name>.md`` (the
    table); returns the path stem. Every family's runner writes its results this way;
    under ``busy_neighbours`` the name gains ``-contended`` and meta the busy count.
    Into bench/results/ only from a clean tree unless --allow-dirty (:func:`check_results_dir`)."""
    check_results_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, name + contention_suffix())
    meta = {**meta, "contention": contention_meta()}
    with open(stem + ".json", "w") as f:
        json.dump({**meta, "cases": records}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    print(f"[bench] wrote {stem}.json and {stem}.md", file=sys.stderr)
    return stem


# ------------------------------------------------------------ pytest-benchmark entries
def bench_options(config) -> tuple[str, bool, str | None]:
    """(device, quick, MNIST folder) of a ``pytest bench/ --benchmark-only`` run, from the
    options bench/conftest.py adds or their environment fallbacks: --bench-device
    [GENKERNELS_BENCH_DEVICE, default cpu], --bench-quick [GENKERNELS_BENCH_QUICK=1] and
    --data (None: the benchmark's own default, $GENKERNELS_DATA or ../shared/data/mnist)."""
    device = config.getoption("--bench-device", default=None) or os.environ.get("GENKERNELS_BENCH_DEVICE", "cpu")
    quick = config.getoption("--bench-quick", default=False) or os.environ.get("GENKERNELS_BENCH_QUICK") == "1"
    return device, bool(quick), config.getoption("--data", default=None)


def benchmark_call(benchmark, fn, device: str, rounds: int = 5, warmup: bool = True):
    """Time ``fn`` with pytest-benchmark's ``benchmark`` fixture: ``rounds`` rounds of one
    call each, the device synchronised inside the timing, after one untimed call unless
    ``warmup`` is False. Returns ``fn``'s last result."""
    def timed():
        out = fn()
        sync(device)
        return out
    return benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1 if warmup else 0, iterations=1)
