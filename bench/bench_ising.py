"""Ising benchmark: checkerboard sweep throughput in flips per nanosecond.

    python bench/bench_ising.py [--device cpu|cuda] [--quick] [--out DIR] [--allow-dirty]

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
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for path in (BENCH_DIR, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch

import genkernels
from genkernels import ops

SIZES = (256, 1024)
LATTICES = (1, 16)
T_CRITICAL = 2.0 / 1.762747174039086  # 2 / ln(1 + sqrt 2)
TARGET_CALL_S = 0.2


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def backends_for(device: str) -> list[str]:
    if device == "cuda":
        return [b for b in ("cuda", "triton", "reference")
                if b in genkernels.available_backends("cuda")]
    return [b for b in ("cpu", "reference") if b in genkernels.available_backends("cpu")]


def time_case(backend: str, device: str, L: int, B: int, budget_s: float, threads: int) -> dict:
    spins = torch.ones(B, L, L, dtype=torch.int8, device=device)
    table = ops.ising_thresholds(T_CRITICAL)

    cpu_times = []

    def run(n):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        ops.ising_sweep(spins, table, n, 1, 0, backend=backend)
        sync(device)
        cpu_times.append(time.process_time() - cpu_start)
        return time.perf_counter() - start

    run(1)  # warm-up (and Triton's compile); then size the calls by the cost of a sweep,
    # apart from a call's fixed cost (validation, packing: O(L^2))
    one = run(1)
    per_sweep = max((run(3) - one) / 2, one / 10, 1e-6)
    n = max(1, min(1000, int(TARGET_CALL_S / per_sweep)))
    times = []
    del cpu_times[:]
    while not times or (sum(times) < budget_s and len(times) < 20):
        times.append(run(n))
        if times[-1] > 3 * budget_s:
            break
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
                    if backend == "reference" and L * L * B > 1024 * 1024:
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


if __name__ == "__main__":
    sys.exit(main())
