"""Asynchronous Hopfield recall: unit updates per second, every backend and the anchors
on the same inputs in one run.

    python bench/bench_hopfield_recall.py [--device cpu|cuda] [--quick] [--out DIR] [--allow-dirty]
    pytest bench/bench_hopfield_recall.py --benchmark-only [--bench-quick] [--bench-device cpu|cuda]
        (test_hopfield_recall: our backends alone, pytest-benchmark's timing)

Workload: B probes of a spin glass (symmetric Gaussian couplings, zero diagonal), a
fixed number of sweeps S with the random order. A spin glass does not settle within a
few sweeps, so every implementation does exactly B * N * S unit updates (checked: no
probe of ours converges early) and the rate is comparable across them:

* genkernels ``cpu`` / ``triton`` / ``cuda`` (``genkernels.ops.hopfield_recall``);
* "torch loop": the straightforward PyTorch implementation -- a Python loop over the
  units of a shared random permutation, each step one (B, N) x (N,) product and a sign
  for all probes at once (on the benchmark's device);
* hopfieldkit 0.1.0 ``HopfieldNetwork.recall`` (NumPy, one probe at a time, a dot
  product per unit), when installed: timed on a few probes and per update.

Times are medians of rounds after one warm-up (CUDA: synchronised). Writes
``<out>/<machine>-hopfield-recall.{json,md}`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import genkernels  # noqa: E402
from harness import bench_options, benchmark_call  # noqa: E402
from harness import median_time as _time  # noqa: E402  (the benchmarks' one timing rule)
from genkernels import ops  # noqa: E402

CASES = {False: [(1000, 64, 5), (4096, 16, 3)], True: [(300, 8, 2)]}  # (N, B, sweeps)


def spin_glass(n, b, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g) / n**0.5
    w = ((a + a.T) / 2).fill_diagonal_(0)
    probes = torch.where(torch.rand(b, n, generator=g) < 0.5, -1.0, 1.0)
    return w.to(device), probes.to(device)


def recall_backends(device, n):
    """The compiled genkernels backends of async recall timed on ``device`` for N units
    (triton up to 4,096)."""
    return [name for name in genkernels.available_backends(device)
            if name in genkernels.backends.OP_BACKENDS["hopfield_recall_async"] and name != "reference"
            and not (name == "triton" and n > 4096)]


def torch_loop(w, probes, sweeps, generator):
    """The straightforward PyTorch version (module docstring)."""
    s = probes.clone()
    for _ in range(sweeps):
        for i in torch.randperm(w.shape[0], generator=generator).tolist():
            h = s @ w[:, i]
            s[:, i] = torch.where(h > 0, 1.0, torch.where(h < 0, -1.0, s[:, i]))
    return s


def run(device="cpu", quick=False, out=None):
    budget = 0.5 if quick else 2.0
    rows = []
    for n, b, sweeps in CASES[quick]:
        w, probes = spin_glass(n, b, device)
        updates = b * n * sweeps
        impls = [(name, "backend", lambda name=name: ops.hopfield_recall(
            w, probes, max_sweeps=sweeps, seed=1, backend=name)) for name in recall_backends(device, n)]
        g = torch.Generator().manual_seed(1)
        loop_b = b if device == "cuda" or n <= 1000 else max(1, b // 4)
        impls.append(("torch loop", "anchor",
                      lambda: torch_loop(w, probes[:loop_b], sweeps, g)))
        try:
            from hopfieldkit import HopfieldNetwork
            net = HopfieldNetwork(n)
            net.weights = w.double().cpu().numpy()
            probe_np = probes[0].double().cpu().numpy()
            impls.append(("hopfieldkit 0.1.0", "anchor",
                          lambda: net.recall(probe_np, order="random", max_steps=1, seed=1)))
        except ImportError:
            pass
        for name, kind, fn in impls:
            median, rounds = _time(fn, device if kind == "backend" or name == "torch loop" else "cpu",
                                   budget)
            if name == "torch loop":
                work = loop_b * n * sweeps
            elif name.startswith("hopfieldkit"):
                work = n  # one sweep of one probe (it stops at a fixed point: checked below)
            else:
                work = updates
            rows.append({"N": n, "B": b, "sweeps": sweeps, "impl": name, "kind": kind,
                         "median_s": median, "rounds": rounds, "updates": work,
                         "updates_per_s": work / median})
        if any(r["impl"] == "cpu" or r["impl"] == "cuda" for r in rows):
            _, conv = ops.hopfield_recall(w, probes, max_sweeps=sweeps, seed=1)
            assert not bool(conv.any()), "a probe converged early: the update count would be wrong"
    best = {}
    for r in rows:
        if r["kind"] == "backend":
            best[r["N"]] = max(best.get(r["N"], 0.0), r["updates_per_s"])
    for r in rows:
        r["x_slower_than_ours"] = best.get(r["N"], float("nan")) / r["updates_per_s"]
    lines = [f"# Async Hopfield recall ({device}), torch {torch.__version__}", "",
             "| N | B | sweeps | impl | kind | median | unit updates/s | x slower than ours |",
             "|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['N']} | {r['B']} | {r['sweeps']} | {r['impl']} | {r['kind']} | "
                     f"{r['median_s'] * 1e3:.2f} ms | {r['updates_per_s']:.3g} | {r['x_slower_than_ours']:.3g} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        from harness import check_results_dir, contention_meta, contention_suffix, git_commit, machine_name
        check_results_dir(out)
        os.makedirs(out, exist_ok=True)
        stem = os.path.join(out, f"{machine_name(device)}-hopfield-recall{'-quick' if quick else ''}"
                            f"{contention_suffix()}")
        with open(stem + ".json", "w") as fh:
            json.dump({"device": device, "torch": torch.__version__, "commit": git_commit(),
                       "contention": contention_meta(), "rows": rows}, fh, indent=1)
        with open(stem + ".md", "w") as fh:
            fh.write(text)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    from harness import add_allow_dirty, allow_dirty, check_results_dir
    add_allow_dirty(p)
    args = p.parse_args(argv)
    allow_dirty(args.allow_dirty)
    check_results_dir(args.out)
    np.random.seed(0)
    run(args.device, args.quick, args.out)
    return 0


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per (N, B, sweeps) and compiled backend of the run's device, triton on CUDA
    tensors only (``pytest bench/ --benchmark-only``; options in bench/conftest.py)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = bench_options(metafunc.config)
    cases = [(n, b, sweeps, name) for n, b, sweeps in CASES[quick] for name in recall_backends(device, n)
             if not (name == "triton" and device != "cuda")]
    metafunc.parametrize("case", cases, ids=[f"N{n}-B{b}-S{s}-{name}" for n, b, s, name in cases])


def test_hopfield_recall(benchmark, case, request):
    """Time ``ops.hopfield_recall`` (async, random order) on a spin glass: B probes x N
    units x S sweeps of updates, every probe still changing (none converged early) and
    every state +-1."""
    n, b, sweeps, backend = case
    device = bench_options(request.config)[0]
    w, probes = spin_glass(n, b, device)
    states, converged = benchmark_call(benchmark, lambda: ops.hopfield_recall(
        w, probes, max_sweeps=sweeps, seed=1, backend=backend), device)
    benchmark.extra_info.update({"N": n, "B": b, "sweeps": sweeps, "impl": backend, "updates": b * n * sweeps})
    assert not bool(converged.any())
    assert states.shape == probes.shape and bool((states.abs() == 1).all())


if __name__ == "__main__":
    sys.exit(main())
