"""Ising benchmark: checkerboard sweep throughput in flips per nanosecond.

    python bench/bench_ising.py [--device cpu|cuda] [--quick] [--out DIR] [--allow-dirty]
    pytest bench/bench_ising.py --benchmark-only [--bench-quick] [--bench-device cpu|cuda]
        (test_ising_sweep: PYTEST_SWEEPS sweeps per call, pytest-benchmark's timing)

A flip is one attempted spin update, so one sweep of B lattices of L x L is B L^2 flips.
Cases: L = 256 and 1024, B = 1 and 16 lattices, heat-bath at T_c (the acceptance rate
does not change the work: every site draws its word and is compared), per backend:
``reference`` (PyTorch on int8 spins), ``cpu`` (multi-spin coded, csrc/cpu/ising.cpp) on
CPU tensors; ``cuda`` (multi-spin coded) and ``triton`` (int8 spins) on CUDA tensors only
(the Triton interpreter is not benchmarked). On a machine shared with other jobs, run it
with OMP_WAIT_POLICY=passive: libgomp's default spin-waiting then starves the working
threads (two threads measured 3x slower than one at a load average of 7). Each call runs
enough sweeps to last about
0.2 s (the int8 <-> bit packing of a call is included, amortised over its sweeps), one
warm-up call, then rounds until the time budget is spent; the table reports the median.

Results go to ``<out>/ising-<machine>.json`` and ``.md`` (default bench/results/;
``--quick``: ``ising-<machine>-quick.*``), ``<machine>`` as bench/run.py names it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for path in (BENCH_DIR, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402

import genkernels  # noqa: E402
from genkernels import ops  # noqa: E402
from harness import bench_options, benchmark_call, measure  # noqa: E402

SIZES = (256, 1024)
LATTICES = (1, 16)
T_CRITICAL = 2.0 / 1.762747174039086  # 2 / ln(1 + sqrt 2)
TARGET_CALL_S = 0.2
# the reference (the oracle, seconds per sweep at 1024^2 sites) is timed up to this many
# sites (B L^2); in the pytest entry with --bench-quick up to QUICK_REFERENCE_SITES
REFERENCE_SITES = 1024 * 1024
QUICK_REFERENCE_SITES = 256 * 256
PYTEST_SWEEPS = 5  # sweeps per timed call of the pytest entry


def backends_for(device: str) -> list[str]:
    if device == "cuda":
        return [b for b in ("cuda", "triton", "reference")
                if b in genkernels.available_backends("cuda")]
    return [b for b in ("cpu", "reference") if b in genkernels.available_backends("cpu")]


def time_case(backend: str, device: str, L: int, B: int, budget_s: float, threads: int) -> dict:
    spins = torch.ones(B, L, L, dtype=torch.int8, device=device)
    table = ops.ising_thresholds(T_CRITICAL)

    def sweeps(n):
        return lambda: ops.ising_sweep(spins, table, n, 1, 0, backend=backend)

    def seconds(n):
        return measure(sweeps(n), device, False, 0.0, min_rounds=1, max_rounds=1)[0][0]

    seconds(1)  # warm-up (and Triton's compile); then size the calls by the cost of a sweep,
    # apart from a call's fixed cost (validation, packing: O(L^2))
    one = seconds(1)
    per_sweep = max((seconds(3) - one) / 2, one / 10, 1e-6)
    n = max(1, min(1000, int(TARGET_CALL_S / per_sweep)))
    cpu_times = []
    times, _ = measure(sweeps(n), device, False, budget_s, min_rounds=1, max_rounds=20, cutoff="round",
                       cpu_times=cpu_times)
    median = statistics.median(times)
    flips = B * L * L * n
    # flips per core-ns: CPU time of all the process's threads, which the other jobs of a
    # shared machine do not inflate the way they inflate the wall time
    per_core = flips / statistics.median(cpu_times) / 1e9 if device == "cpu" else None
    return {"backend": backend, "device": device, "threads": threads, "L": L, "n_lattices": B,
            "sweeps_per_call": n, "load_average": os.getloadavg()[0],
            "rounds": len(times), "median_s": median, "min_s": min(times),
            "flips_per_ns": flips / median / 1e9, "best_flips_per_ns": flips / min(times) / 1e9,
            "flips_per_core_ns": per_core}


def main(argv=None) -> int:
    from harness import (add_allow_dirty, allow_dirty, check_results_dir, contention_meta, contention_suffix,
                         git_commit, machine_name, versions)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small budget, L = 256 only")
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    add_allow_dirty(parser)
    args = parser.parse_args(argv)
    allow_dirty(args.allow_dirty)
    check_results_dir(args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    budget = 0.3 if args.quick else 2.0
    sizes = (256,) if args.quick else SIZES
    cases = []
    all_threads = torch.get_num_threads()
    for backend in backends_for(args.device):
        # the cpu kernel also on one thread: on a shared machine the two can differ a lot
        thread_counts = sorted({1, all_threads}) if backend == "cpu" else [all_threads]
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for L in sizes:
                for B in LATTICES:
                    if backend == "reference" and L * L * B > REFERENCE_SITES:
                        continue  # seconds per sweep: the oracle, not a contender
                    case = time_case(backend, args.device, L, B, budget, threads)
                    cases.append(case)
                    print(f"{backend:>9} {threads:>2} thr  L={L:<5} B={B:<3} "
                          f"{case['flips_per_ns']:8.3f} flips/ns (best {case['best_flips_per_ns']:.3f}, "
                          f"{case['flips_per_core_ns'] or 0:.3f} per core-ns, "
                          f"{case['sweeps_per_call']} sweeps/call, {case['rounds']} rounds, "
                          f"load {case['load_average']:.1f})", flush=True)
    torch.set_num_threads(all_threads)
    machine = machine_name(args.device)
    stem = f"ising-{machine}" + ("-quick" if args.quick else "") + contention_suffix()
    check_results_dir(args.out)
    os.makedirs(args.out, exist_ok=True)
    meta = {"machine": machine, "date": datetime.datetime.now(datetime.UTC).isoformat(),
            "commit": git_commit(), "versions": versions(), "unit": "flips per ns (median)",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "contention": contention_meta()}
    with open(os.path.join(args.out, stem + ".json"), "w") as fh:
        json.dump({**meta, "cases": cases}, fh, indent=1)
        fh.write("\n")
    lines = [f"# Ising sweeps on {machine}", "",
             f"`python bench/bench_ising.py --device {args.device}"
             + (" --quick" if args.quick else "") + f"`, commit {meta['commit']}, "
             f"{os.cpu_count()} cores. Flips per ns (one flip = one attempted spin update), median "
             "of the rounds and best round; load = the 1-minute load average when the case ran "
             "(other jobs share this machine). OMP_WAIT_POLICY="
             f"{meta['omp_wait_policy'] or 'unset'} (on a loaded machine libgomp's default spinning "
             "waits starve the working threads; passive waiting avoids that).", "",
             ("Flips per core-ns divide by the CPU time of the process's threads instead of the "
              "wall time (what a quiet machine would give per core)."), "",
             "| backend | threads | L | lattices | flips/ns (median) | best | flips/core-ns | load |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        lines.append(f"| {c['backend']} | {c['threads']} | {c['L']} | {c['n_lattices']} | "
                     f"{c['flips_per_ns']:.3f} | {c['best_flips_per_ns']:.3f} | "
                     f"{c['flips_per_core_ns'] or float('nan'):.3f} | {c['load_average']:.1f} |")
    with open(os.path.join(args.out, stem + ".md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.join(args.out, stem)}.{{json,md}}")
    return 0


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per backend of the run's device, L and B, the reference on small lattices
    only (``pytest bench/ --benchmark-only``; options in bench/conftest.py)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = bench_options(metafunc.config)
    sites = QUICK_REFERENCE_SITES if quick else REFERENCE_SITES
    cases = [(backend, L, B) for backend in backends_for(device) for L in ((256,) if quick else SIZES)
             for B in LATTICES if not (backend == "reference" and L * L * B > sites)]
    metafunc.parametrize("case", cases, ids=[f"{backend}-L{L}-B{B}" for backend, L, B in cases])


def test_ising_sweep(benchmark, case, request):
    """Time PYTEST_SWEEPS heat-bath checkerboard sweeps at T_c of B lattices of L x L from
    all spins up (``ops.ising_sweep``, one call): every spin stays +-1 and some flip."""
    backend, L, B = case
    device = bench_options(request.config)[0]
    spins = torch.ones(B, L, L, dtype=torch.int8, device=device)
    table = ops.ising_thresholds(T_CRITICAL)
    out = benchmark_call(benchmark, lambda: ops.ising_sweep(spins, table, PYTEST_SWEEPS, 1, 0, backend=backend),
                         device)
    benchmark.extra_info.update({"backend": backend, "L": L, "n_lattices": B, "sweeps_per_call": PYTEST_SWEEPS,
                                 "flips": B * L * L * PYTEST_SWEEPS})
    assert out.shape == (B, L, L) and bool((out.abs() == 1).all())
    assert bool((out == -1).any())


if __name__ == "__main__":
    sys.exit(main())
