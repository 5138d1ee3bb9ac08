"""SOMs inside neural networks: the soft SOM layer's op against the same function written
in PyTorch, eager and under torch.compile, on the same inputs.

    python bench/bench_som_nn.py [--device cpu|cuda] [--quick] [--out DIR] [--allow-dirty]
    pytest bench/bench_som_nn.py --benchmark-only [--bench-quick] [--bench-device cpu|cuda]
        (test_som_soft: our backends alone, pytest-benchmark's timing)

Workloads (``workloads``), fp32, Euclidean distance, beta = 4, values = (K, 2) grid
coordinates (SoftSOM's default):

* ``spiral``  B=1500 rows, D=2 features, K=100 nodes (10x10): the spiral comparison's
  full batch (bench/softsom_spirals.py);
* ``hidden``  B=1024, D=64, K=400 (20x20): a SoftSOM between hidden layers of width 64;
* ``small``   B=64, D=32, K=100: a small batch, where call overhead counts.

Implementations per case:

* our backends: ``reference`` (soft_reference.soft_som_forward: the fused online-softmax
  algorithm in PyTorch, node tile by node tile), ``cpu`` (CPU tensors), ``triton`` (CUDA
  tensors; never the interpreter);
* ``definition``: softmax(-beta ||x - l||) @ g written directly in PyTorch
  (soft_reference.soft_som, which holds the (B, K, D) differences) -- what a user would
  write without this library;
* ``definition (torch.compile)``: the same function through ``torch.compile``.

Ops: ``forward`` and ``forward+backward`` (gradients of sum(out * g) in x, nodes, values
and beta). Each case: one warm-up call, then rounds until the time budget is spent
(bench/harness.py's ``measure``); medians and IQR, and ``x ours`` = median / the fastest
compiled genkernels backend of the same row group. Results go to
``<out>/<machine>-som-nn.{json,md}`` (``-quick`` added in quick mode).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for path in (BENCH_DIR, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import harness as runner  # noqa: E402  bench/harness.py: machine name, versions, timing

from genkernels import backends, ops  # noqa: E402
from genkernels.som import soft_reference  # noqa: E402

SEED = 0
BETA = 4.0
BUDGET_S = {False: 2.0, True: 0.2}


@dataclass(frozen=True)
class Workload:
    name: str
    b: int
    d: int
    k: int

    def shapes(self) -> dict:
        return {"b": self.b, "d": self.d, "k": self.k, "c": 2}


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [Workload("spiral", 300, 2, 100), Workload("hidden", 128, 64, 100), Workload("small", 16, 32, 36)]
    return [Workload("spiral", 1500, 2, 100), Workload("hidden", 1024, 64, 400), Workload("small", 64, 32, 100)]


def make_inputs(w: Workload, device: str):
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(w.b, w.d, generator=g)
    nodes = torch.randn(w.k, w.d, generator=g)
    side = int(round(w.k ** 0.5))
    values = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(w.k // side), indexing="ij"),
                         -1).reshape(-1, 2).float()
    grad = torch.randn(w.b, 2, generator=g)
    beta = torch.tensor(BETA)
    return x.to(device), nodes.to(device), values.to(device), beta.to(device), grad.to(device)


def definition(x, nodes, values, beta):
    """softmax(-beta ||x - l||) @ g, the (B, K, D) differences held at once."""
    return soft_reference.soft_som(x, nodes, values, beta, "euclidean")


_compiled_definition = torch.compile(definition, dynamic=False)


def _impls(device: str):
    """(name, kind, function(x, nodes, values, beta) -> out)."""
    out = []
    for name in ("reference", "cpu", "triton"):
        if name == "triton" and device != "cuda":
            continue  # never the interpreter
        if name in backends.available_backends(device):
            out.append((name, "backend",
                        lambda x, n, v, b, _b=name: ops.som_soft(x, n, v, b, backend=_b)))
    out.append(("definition", "baseline", definition))
    out.append(("definition (torch.compile)", "baseline", _compiled_definition))
    return out


def _case_fn(fn, x, nodes, values, beta, grad, backward: bool):
    if not backward:
        def forward():
            with torch.no_grad():
                return fn(x, nodes, values, beta)
        return forward

    def forward_backward():
        leaves = [t.detach().requires_grad_() for t in (x, nodes, values, beta)]
        out = fn(*leaves)
        return torch.autograd.grad(out, leaves, grad)
    return forward_backward


def run_cases(device: str, quick: bool, meta: dict, log=print, budget_s: float | None = None) -> list[dict]:
    budget_s = BUDGET_S[quick] if budget_s is None else budget_s
    records = []
    for w in workloads(quick):
        x, nodes, values, beta, grad = make_inputs(w, device)
        want = soft_reference.soft_som(x.double(), nodes.double(), values.double(), beta.double())
        for op, backward in (("forward", False), ("forward+backward", True)):
            for name, kind, fn in _impls(device):
                call = _case_fn(fn, x, nodes, values, beta, grad, backward)
                times, result = runner.measure(call, device, True, budget_s)
                q1, med, q3 = np.percentile(times, [25, 50, 75])
                rec = {"suite": "som_nn", "layer": "SoftSOM", "workload": w.name, "op": op, "impl": name,
                       "kind": kind, "device": device, "shapes": w.shapes(), "dtype": "float32", "beta": BETA,
                       "median_s": float(med), "iqr_s": float(q3 - q1), "rounds": len(times),
                       "versions": meta["versions"], "commit": meta["commit"]}
                if not backward:
                    rec["max_abs_diff_vs_fp64"] = float((result.double() - want).abs().max())
                records.append(rec)
                log(f"[bench] SoftSOM {w.name} {op} {name}: {runner._fmt_s(med)}")
    _add_ratios(records)
    return records


def _add_ratios(records: list[dict]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["layer"], rec["workload"], rec["op"]), []).append(rec)
    for group in groups.values():
        ours = [r for r in group if r["kind"] == "backend" and r["impl"] != "reference"] or \
            [r for r in group if r["kind"] == "backend"]
        best = min(ours, key=lambda r: r["median_s"])
        for rec in group:
            rec["x_ours"] = rec["median_s"] / best["median_s"]
            rec["ours"] = best["impl"]


def markdown(records: list[dict], meta: dict) -> str:
    v = meta["versions"]
    lines = [f"# genkernels SOM-in-network benchmarks: {meta['machine']} ({meta['device']})", "",
             f"{meta['created']}, commit `{meta['commit']}`, "
             + ", ".join(f"{k} {v[k]}" for k in v if v[k] is not None) + ".",
             f"SoftSOM: fp32, Euclidean distance, beta = {BETA:g}, values = grid coordinates (C = 2). x ours = "
             "median / the fastest compiled genkernels backend of the same row group (> 1: slower than ours)."
             + (" Quick mode: shrunken workloads, smoke test only." if meta["quick"] else ""),
             (f"1-minute load average {meta['loadavg_start']:.1f} at the start, "
              f"{meta['loadavg_end']:.1f} at the end (other work on the machine inflates and "
              "spreads the times)."), ""]
    by_group: dict[tuple, list[dict]] = {}
    for rec in records:
        by_group.setdefault((rec["layer"], rec["workload"]), []).append(rec)
    for (layer, name), recs in by_group.items():
        s = recs[0]["shapes"]
        lines += [f"## {layer} {name}: B={s['b']:,} rows, D={s['d']}, K={s['k']} nodes", "",
                  "| op | impl | kind | median | IQR | rounds | x ours | max abs diff vs fp64 |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in recs:
            diff = r.get("max_abs_diff_vs_fp64")
            lines.append(f"| {r['op']} | {r['impl']} | {r['kind']} | {runner._fmt_s(r['median_s'])} "
                         f"| {runner._fmt_s(r['iqr_s'])} | {r['rounds']} | {r['x_ours']:.3g} "
                         f"| {'-' if diff is None else f'{diff:.2g}'} |")
        lines.append("")
    return "\n".join(lines)


def run(device: str = "cpu", quick: bool = False, out_dir: str | None = None,
        budget_s: float | None = None) -> int:
    if device == "cuda":
        if not torch.cuda.is_available():
            print("bench_som_nn: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False
    runner.check_results_dir(out_dir or os.path.join(BENCH_DIR, "results"))
    meta = {"machine": runner.machine_name(device), "device": device, "quick": quick,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": runner.versions(), "commit": runner.git_commit(),
            "loadavg_start": os.getloadavg()[0]}
    records = run_cases(device, quick, meta, log=lambda m: print(m, file=sys.stderr, flush=True),
                        budget_s=budget_s)
    meta["loadavg_end"] = os.getloadavg()[0]
    table = markdown(records, meta)
    print(table)
    runner.write_results(out_dir or os.path.join(BENCH_DIR, "results"),
                         f"{meta['machine']}-som-nn" + ("-quick" if quick else ""), meta, records, table)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_som_nn", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="shrunken workloads (smoke test)")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed rounds per case (default 2, quick 0.2)")
    runner.add_allow_dirty(p)
    args = p.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    return run(args.device, args.quick, args.out, args.budget)


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per workload, op and genkernels backend of the run's device
    (``pytest bench/ --benchmark-only``; options in bench/conftest.py)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = runner.bench_options(metafunc.config)
    cases = [(w, op, name) for w in workloads(quick) for op in ("forward", "forward+backward")
             for name, kind, _ in _impls(device) if kind == "backend"]
    metafunc.parametrize("case", cases, ids=[f"{w.name}-{op}-{name}" for w, op, name in cases])


def test_som_soft(benchmark, case, request):
    """Time ``ops.som_soft`` (forward, or forward and backward) on one workload: the
    forward equals the fp64 definition within fp32 rounding, the gradients are finite."""
    w, op, backend = case
    device = runner.bench_options(request.config)[0]
    x, nodes, values, beta, grad = make_inputs(w, device)
    fn = next(fn for name, _, fn in _impls(device) if name == backend)
    call = _case_fn(fn, x, nodes, values, beta, grad, op == "forward+backward")
    result = runner.benchmark_call(benchmark, call, device)
    if op == "forward":
        want = soft_reference.soft_som(x.double(), nodes.double(), values.double(), beta.double())
        torch.testing.assert_close(result.double(), want, rtol=1e-4, atol=1e-4)
    else:
        assert all(torch.isfinite(g).all() for g in result)
