"""Sequential Gibbs sweeps of general Boltzmann machines: unit updates per second, every
backend and the straightforward PyTorch loop on the same inputs in one run.

    python bench/bench_bm_gibbs.py [--device cpu|cuda] [--quick] [--out DIR] [--allow-dirty]
    genkernels bench bm_gibbs [--device cpu|cuda] [--quick]
    pytest bench/bench_bm_gibbs.py --benchmark-only [--bench-quick] [--bench-device cpu|cuda]
        (test_bm_gibbs: our backends alone, pytest-benchmark's timing)

Workload: C chains of a spin-glass Boltzmann machine (symmetric Gaussian couplings of
variance 1/N, zero diagonal, zero bias), S sweeps at T = 1 in random order, fp32. A Gibbs
sweep always visits every unit, so every implementation does C * N * S unit updates:

* genkernels ``cpu`` / ``triton`` (N <= 4096) / ``cuda`` (``genkernels.ops.bm_gibbs``);
* "torch loop": the straightforward PyTorch implementation -- per sweep a Python loop
  over the units of a random permutation, each step one (C, N) x (N,) product, a
  sigmoid and a Bernoulli draw for all chains at once (on the benchmark's device); on the
  CPU's largest case it runs a quarter of the chains and is rated per update.

Times are medians of rounds after one warm-up (CUDA: synchronised). Writes
``<out>/<machine>-bm-gibbs{-quick}.{json,md}`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for path in (BENCH_DIR, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import harness as runner  # noqa: E402  bench/harness.py: machine name, versions, timing, results writer
from harness import median_time as _time  # noqa: E402  the benchmarks' one timing rule

import genkernels  # noqa: E402
from genkernels import ops  # noqa: E402

# (N, C, sweeps) per device; --quick: one small case
CASES = {"cpu": [(1000, 64, 5), (4096, 16, 2)],
         "cuda": [(1000, 64, 5), (1000, 1024, 5), (4096, 16, 2), (16384, 8, 1)]}
QUICK_CASES = [(64, 8, 2)]  # small enough for the Triton interpreter (N = 300 took 74 s a call there)
TRITON_MAX_UNITS = 4096


def spin_glass_machine(n, c, device, seed=0):
    """(weights (N, N), bias (N,), states (C, N)) fp32 on device (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g) / n**0.5
    w = torch.triu(a, 1)
    w = w + w.T
    states = (torch.rand(c, n, generator=g) < 0.5).float()
    return w.to(device), torch.zeros(n, device=device), states.to(device)


def gibbs_backends(device, n):
    """The compiled genkernels backends of ``bm_gibbs`` timed on ``device`` for N units
    (triton up to TRITON_MAX_UNITS)."""
    return [name for name in genkernels.available_backends(device)
            if name in genkernels.backends.OP_BACKENDS["bm_gibbs"] and name != "reference"
            and not (name == "triton" and n > TRITON_MAX_UNITS)]


def torch_loop(w, b, states, temperatures, generator):
    """The straightforward PyTorch version (module docstring)."""
    s = states.clone()
    for temp in temperatures:
        for i in torch.randperm(w.shape[0], generator=generator).tolist():
            p = torch.sigmoid((s @ w[:, i] + b[i]) / temp)
            s[:, i] = (torch.rand(s.shape[0], device=s.device) < p).to(s.dtype)
    return s


def run_cases(device, quick, log=print):
    budget = 0.5 if quick else 2.0
    records = []
    for n, c, sweeps in QUICK_CASES if quick else CASES[device]:
        w, b, s0 = spin_glass_machine(n, c, device)
        temps = [1.0] * sweeps
        impls = [(name, "backend", c, functools.partial(ops.bm_gibbs, w, b, s0, temps, seed=1, backend=name))
                 for name in gibbs_backends(device, n)]
        loop_c = c if device == "cuda" or n <= 1000 else max(1, c // 4)
        impls.append(("torch loop", "anchor", loop_c, functools.partial(
            torch_loop, w, b, s0[:loop_c], temps, torch.Generator().manual_seed(1))))
        for name, kind, chains, fn in impls:
            median, rounds = _time(fn, device, budget)
            updates = chains * n * sweeps
            records.append({"N": n, "C": c, "sweeps": sweeps, "impl": name, "kind": kind,
                            "chains_timed": chains, "median_s": median, "rounds": rounds,
                            "updates": updates, "updates_per_s": updates / median})
            log(f"[bench] bm_gibbs N={n} C={c} S={sweeps} {name}: {median * 1e3:.2f} ms")
    best = {}
    for r in records:
        if r["kind"] == "backend":
            key = (r["N"], r["C"])
            best[key] = max(best.get(key, 0.0), r["updates_per_s"])
    for r in records:
        r["x_slower_than_ours"] = best.get((r["N"], r["C"]), float("nan")) / r["updates_per_s"]
    return records


def markdown(records, meta):
    command = f"python bench/bench_bm_gibbs.py --device {meta['device']}" + (" --quick" if meta["quick"] else "")
    lines = [f"# Sequential Gibbs sweeps of a Boltzmann machine ({meta['device']}, {meta['machine']})", "",
             f"Spin glass, fp32, T = 1, random order; torch {meta['versions'].get('torch')}; `{command}`.", "",
             "| N | C | sweeps | impl | kind | median | unit updates/s | x slower than ours |",
             "|---:|---:|---:|---|---|---:|---:|---:|"]
    if "loadavg_end" in meta:
        lines.insert(3, f"Load average {meta['loadavg_start']:.1f} at the start, {meta['loadavg_end']:.1f} at the end "
                        f"({os.cpu_count()} cores).")
    for r in records:
        chains = "" if r["chains_timed"] == r["C"] else f" ({r['chains_timed']} chains timed)"
        lines.append(f"| {r['N']} | {r['C']} | {r['sweeps']} | {r['impl']}{chains} | {r['kind']} | "
                     f"{r['median_s'] * 1e3:.2f} ms | {r['updates_per_s']:.3g} | "
                     f"{r['x_slower_than_ours']:.3g} |")
    return "\n".join(lines)


def run(device="cpu", quick=False, out_dir=None):
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_bm_gibbs: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    runner.check_results_dir(out_dir or os.path.join(BENCH_DIR, "results"))
    torch.manual_seed(0)
    meta = runner.run_meta(device, quick)
    records = run_cases(device, quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    meta["loadavg_end"] = os.getloadavg()[0]
    table = markdown(records, meta)
    print(table)
    runner.write_results(out_dir or os.path.join(BENCH_DIR, "results"),
                         f"{meta['machine']}-bm-gibbs" + ("-quick" if quick else ""), meta, records, table)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_bm_gibbs", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="one small case (smoke test)")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    runner.add_allow_dirty(p)
    args = p.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    return run(args.device, args.quick, args.out)


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per (N, C, sweeps) and compiled backend of the run's device, triton on CUDA
    tensors only (``pytest bench/ --benchmark-only``; options in bench/conftest.py)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = runner.bench_options(metafunc.config)
    cases = [(n, c, sweeps, name) for n, c, sweeps in (QUICK_CASES if quick else CASES[device])
             for name in gibbs_backends(device, n) if not (name == "triton" and device != "cuda")]
    metafunc.parametrize("case", cases, ids=[f"N{n}-C{c}-S{s}-{name}" for n, c, s, name in cases])


def test_bm_gibbs(benchmark, case, request):
    """Time ``ops.bm_gibbs``: S sweeps at T = 1 of C chains of an N-unit spin glass, C * N * S
    unit updates; the chains come back as (C, N) states in {0, 1}."""
    n, c, sweeps, backend = case
    device = runner.bench_options(request.config)[0]
    w, b, s0 = spin_glass_machine(n, c, device)
    states = runner.benchmark_call(benchmark, functools.partial(ops.bm_gibbs, w, b, s0, [1.0] * sweeps, seed=1,
                                                                backend=backend), device)
    benchmark.extra_info.update({"N": n, "C": c, "sweeps": sweeps, "impl": backend, "updates": c * n * sweeps})
    assert states.shape == (c, n) and bool(((states == 0) | (states == 1)).all())


if __name__ == "__main__":
    sys.exit(main())
