"""Ising benchmark: checkerboard sweep throughput in flips per nanosecond.

    python bench/bench_ising.py [--device cpu|cuda] [--quick] [--out DIR]

A flip is one attempted spin update, so one sweep of B lattices of L x L is B L^2 flips.
Cases: L = 256 and 1024, B = 1 and 16 lattices, heat-bath at T_c (the acceptance rate
does not change the work: every site draws its word and is compared), per backend:
``reference`` (PyTorch on int8 spins), ``cpu`` (multi-spin coded, csrc/cpu/ising.cpp) on
CPU tensors; ``cuda`` (multi-spin coded) and ``triton`` (int8 spins) on CUDA tensors only
(the Triton interpreter is not benchmarked). Each call runs enough sweeps to last about
0.1 s (the int8 <-> bit packing of a call is included, amortised over its sweeps), one
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
TARGET_CALL_S = 0.1


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

    def run(n):
        sync(device)
        start = time.perf_counter()
        ops.ising_sweep(spins, table, n, 1, 0, backend=backend)
        sync(device)
        return time.perf_counter() - start

    run(1)  # warm-up (and Triton's compile), then size the calls on a second one
    n = max(1, min(1000, int(TARGET_CALL_S / max(run(1), 1e-6))))
    times = []
    while not times or (sum(times) < budget_s and len(times) < 20):
        times.append(run(n))
        if times[-1] > 3 * budget_s:
            break
    median = statistics.median(times)
    flips = B * L * L * n
    return {"backend": backend, "device": device, "threads": threads, "L": L, "n_lattices": B,
            "sweeps_per_call": n, "load_average": os.getloadavg()[0],
            "rounds": len(times), "median_s": median, "min_s": min(times),
            "flips_per_ns": flips / median / 1e9, "best_flips_per_ns": flips / min(times) / 1e9}


def main(argv=None) -> int:
    from run import git_commit, machine_name, versions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small budget, L = 256 only")
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    args = parser.parse_args(argv)
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
                          f"{case['sweeps_per_call']} sweeps/call, {case['rounds']} rounds, "
                          f"load {case['load_average']:.1f})", flush=True)
    torch.set_num_threads(all_threads)
    machine = machine_name(args.device)
    stem = f"ising-{machine}" + ("-quick" if args.quick else "")
    os.makedirs(args.out, exist_ok=True)
    meta = {"machine": machine, "date": datetime.datetime.now(datetime.UTC).isoformat(),
            "commit": git_commit(), "versions": versions(), "unit": "flips per ns (median)"}
    with open(os.path.join(args.out, stem + ".json"), "w") as fh:
        json.dump({**meta, "cases": cases}, fh, indent=1)
        fh.write("\n")
    lines = [f"# Ising sweeps on {machine}", "",
             f"`python bench/bench_ising.py --device {args.device}"
             + (" --quick" if args.quick else "") + f"`, commit {meta['commit']}, "
             f"{os.cpu_count()} cores. Flips per ns (one flip = one attempted spin update), median "
             "of the rounds and best round; load = the 1-minute load average when the case ran "
             "(other jobs share this machine).", "",
             "| backend | threads | L | lattices | flips/ns (median) | best | load |",
             "|---|---|---|---|---|---|---|"]
    for c in cases:
        lines.append(f"| {c['backend']} | {c['threads']} | {c['L']} | {c['n_lattices']} | "
                     f"{c['flips_per_ns']:.3f} | {c['best_flips_per_ns']:.3f} | "
                     f"{c['load_average']:.1f} |")
    with open(os.path.join(args.out, stem + ".md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.join(args.out, stem)}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
