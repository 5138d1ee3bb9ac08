"""Continuous modern Hopfield retrieval benchmarks: our backends against the same update
written with PyTorch's attention, on the same inputs.

    python bench/bench_hopfield.py [--device cpu|cuda] [--quick] [--out DIR] [--allow-dirty]
    python bench/run.py hopfield [--device cpu|cuda] [--quick]      (the same)
    pytest bench/bench_hopfield.py --benchmark-only [--bench-quick] [--bench-device cpu|cuda]
        (test_hopfield_retrieval: our backends alone, pytest-benchmark's timing)

Workloads (``workloads``), fp32, beta = 1 / sqrt(D) (attention's scale), tol = 0 so
every row runs all ``max_steps`` steps (no exact fixed point is reached on this data;
the steps taken are checked and recorded):

* ``shared``     B=1024 queries, P=4096 stored patterns shared by all (1, P, D), D=64;
* ``per_query``  B=256 queries, each with its own P=512 patterns (B, P, D), D=256;

each with max_steps 1 and 3. Implementations per case:

* our backends: ``reference`` (retrieval_reference.py: batched matmul + softmax per
  step), ``cpu`` (CPU tensors), ``triton`` (CUDA tensors; never the interpreter);
* ``sdpa loop``: ``xi = scaled_dot_product_attention(xi, X, X, scale=beta)`` max_steps
  times (queries as the sequence against a shared set; one query per batch entry
  against per-query sets) -- what a user would write without this library;
* ``sdpa loop (torch.compile)``: the same function through ``torch.compile``.

Ops: ``forward`` and ``forward+backward`` (gradients of sum(out * g) in queries and
stored). Each case: one warm-up call, then rounds until the time budget is spent
(``bench/harness.py``'s ``measure``); medians and IQR, and ``x ours`` = median / the fastest
compiled genkernels backend of the same row group. Results go to
``<out>/<machine>-hopfield.{json,md}`` (``-quick`` added in quick mode).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for path in (BENCH_DIR, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import harness as runner  # noqa: E402  bench/harness.py: machine name, versions, timing

from genkernels import backends, ops  # noqa: E402

SEED = 0
BUDGET_S = {False: 2.0, True: 0.2}


@dataclass(frozen=True)
class Workload:
    name: str
    b: int
    p: int
    d: int
    shared: bool

    def shapes(self) -> dict:
        return {"b": self.b, "p": self.p, "d": self.d, "shared": self.shared}


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [Workload("shared", 128, 512, 64, True), Workload("per_query", 32, 64, 256, False)]
    return [Workload("shared", 1024, 4096, 64, True), Workload("per_query", 256, 512, 256, False)]


def make_inputs(w: Workload, device: str):
    g = torch.Generator().manual_seed(SEED)
    queries = torch.randn(w.b, w.d, generator=g)
    stored = torch.randn(1 if w.shared else w.b, w.p, w.d, generator=g)
    grad = torch.randn(w.b, w.d, generator=g)
    return queries.to(device), stored.to(device), grad.to(device)


def sdpa_loop(queries: torch.Tensor, stored: torch.Tensor, beta: float, max_steps: int):
    """The update with PyTorch's attention: softmax(beta xi X^T) X, max_steps times."""
    shared = stored.shape[0] == 1 and queries.shape[0] != 1
    xi = queries[None] if shared else queries[:, None, :]
    for _ in range(max_steps):
        xi = F.scaled_dot_product_attention(xi, stored, stored, scale=beta)
    return xi[0] if shared else xi[:, 0, :]


_compiled_sdpa_loop = torch.compile(sdpa_loop, dynamic=False)


def _impls(device: str):
    """(name, kind, function(queries, stored, beta, max_steps) -> out)."""
    out = []
    for name in ("reference", "cpu", "triton"):
        if name == "triton" and device != "cuda":
            continue  # never the interpreter
        if name in backends.available_backends(device):
            out.append((name, "backend",
                        lambda q, x, beta, steps, _b=name: ops.hopfield_retrieval(q, x, beta, steps, 0.0, _b)))
    out.append(("sdpa loop", "baseline", sdpa_loop))
    out.append(("sdpa loop (torch.compile)", "baseline", _compiled_sdpa_loop))
    return out


def _case_fn(fn, queries, stored, grad, beta, max_steps, backward: bool):
    if not backward:
        def forward():
            with torch.no_grad():
                return fn(queries, stored, beta, max_steps)
        return forward

    def forward_backward():
        q = queries.detach().requires_grad_()
        x = stored.detach().requires_grad_()
        out = fn(q, x, beta, max_steps)
        return torch.autograd.grad(out, (q, x), grad)
    return forward_backward


def run_cases(device: str, quick: bool, meta: dict, log=print, budget_s: float | None = None
              ) -> list[dict]:
    budget_s = BUDGET_S[quick] if budget_s is None else budget_s
    records = []
    for w in workloads(quick):
        queries, stored, grad = make_inputs(w, device)
        beta = 1.0 / math.sqrt(w.d)
        for max_steps in (1, 3):
            _, steps = ops.hopfield_retrieval(queries, stored, beta, max_steps, 0.0,
                                              return_steps=True)
            all_steps = bool((steps == max_steps).all())
            want = sdpa_loop(queries, stored, beta, max_steps)
            for op, backward in (("forward", False), ("forward+backward", True)):
                for name, kind, fn in _impls(device):
                    call = _case_fn(fn, queries, stored, grad, beta, max_steps, backward)
                    times, result = runner.measure(call, device, True, budget_s)
                    q1, med, q3 = np.percentile(times, [25, 50, 75])
                    rec = {"suite": "hopfield", "workload": w.name, "op": op, "impl": name,
                           "kind": kind, "device": device, "shapes": w.shapes(),
                           "max_steps": max_steps, "dtype": "float32", "beta": beta,
                           "median_s": float(med), "iqr_s": float(q3 - q1), "rounds": len(times),
                           "every_row_took_max_steps": all_steps,
                           "versions": meta["versions"], "commit": meta["commit"]}
                    if not backward:
                        rec["max_abs_diff_vs_sdpa"] = float((result - want).abs().max())
                    records.append(rec)
                    log(f"[bench] {w.name} steps={max_steps} {op} {name}: {runner._fmt_s(med)}")
    runner.add_backend_ratios(records, lambda rec: (rec["workload"], rec["max_steps"], rec["op"]))
    return records


def markdown(records: list[dict], meta: dict) -> str:
    v = meta["versions"]
    lines = [f"# genkernels Hopfield retrieval benchmarks: {meta['machine']} ({meta['device']})", "",
             f"{meta['created']}, commit `{meta['commit']}`, "
             + ", ".join(f"{k} {v[k]}" for k in v if v[k] is not None) + ".",
             "fp32, beta = 1/sqrt(D), tol = 0 (every row runs max_steps steps). x ours = median / "
             "the fastest compiled genkernels backend of the same row group (> 1: slower than "
             "ours)." + (" Quick mode: shrunken workloads, smoke test only." if meta["quick"] else ""),
             (f"1-minute load average {meta['loadavg_start']:.1f} at the start, "
              f"{meta['loadavg_end']:.1f} at the end (other work on the machine inflates and "
              "spreads the times)."), ""]
    by_group: dict[tuple, list[dict]] = {}
    for rec in records:
        by_group.setdefault((rec["workload"], rec["max_steps"]), []).append(rec)
    for (name, max_steps), recs in by_group.items():
        s = recs[0]["shapes"]
        stored = f"(1, {s['p']}, {s['d']}) shared" if s["shared"] else \
            f"({s['b']}, {s['p']}, {s['d']}) per query"
        lines += [f"## {name}: B={s['b']:,} queries, stored {stored}, max_steps={max_steps}", "",
                  "| op | impl | kind | median | IQR | rounds | x ours | max abs diff vs sdpa |",
                  "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in recs:
            diff = r.get("max_abs_diff_vs_sdpa")
            lines.append(f"| {r['op']} | {r['impl']} | {r['kind']} | {runner._fmt_s(r['median_s'])} "
                         f"| {runner._fmt_s(r['iqr_s'])} | {r['rounds']} | {r['x_ours']:.3g} "
                         f"| {'-' if diff is None else f'{diff:.2g}'} |")
        lines.append("")
    return "\n".join(lines)


def run(device: str = "cpu", quick: bool = False, out_dir: str | None = None,
        budget_s: float | None = None) -> int:
    if device == "cuda":
        if not torch.cuda.is_available():
            print("bench_hopfield: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False
    runner.check_results_dir(out_dir or os.path.join(BENCH_DIR, "results"))
    meta = runner.run_meta(device, quick)
    records = run_cases(device, quick, meta, log=lambda m: print(m, file=sys.stderr, flush=True),
                        budget_s=budget_s)
    meta["loadavg_end"] = os.getloadavg()[0]
    table = markdown(records, meta)
    print(table)
    runner.write_results(out_dir or os.path.join(BENCH_DIR, "results"),
                         f"{meta['machine']}-hopfield" + ("-quick" if quick else ""), meta, records, table)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_hopfield", description=__doc__.split("\n\n")[0])
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
    """One case per workload, max_steps, op and genkernels backend of the run's device
    (``pytest bench/ --benchmark-only``; options in bench/conftest.py)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = runner.bench_options(metafunc.config)
    cases = [(w, max_steps, op, name) for w in workloads(quick) for max_steps in (1, 3)
             for op in ("forward", "forward+backward") for name, kind, _ in _impls(device) if kind == "backend"]
    metafunc.parametrize("case", cases, ids=[f"{w.name}-steps{s}-{op}-{name}" for w, s, op, name in cases])


def test_hopfield_retrieval(benchmark, case, request):
    """Time ``ops.hopfield_retrieval`` (forward, or forward and backward) on one workload:
    the forward result is the update written with PyTorch's attention, the gradients finite."""
    w, max_steps, op, backend = case
    device = runner.bench_options(request.config)[0]
    queries, stored, grad = make_inputs(w, device)
    beta = 1.0 / math.sqrt(w.d)
    fn = next(fn for name, _, fn in _impls(device) if name == backend)
    call = _case_fn(fn, queries, stored, grad, beta, max_steps, op == "forward+backward")
    result = runner.benchmark_call(benchmark, call, device)
    benchmark.extra_info.update({"workload": w.name, **w.shapes(), "max_steps": max_steps, "op": op,
                                 "impl": backend})
    if op == "forward":
        torch.testing.assert_close(result, sdpa_loop(queries, stored, beta, max_steps), rtol=1e-4, atol=1e-5)
    else:
        assert all(bool(torch.isfinite(g).all()) for g in result)
