"""Benchmark runner: every backend and every anchor on the same inputs, in one run.

    python bench/run.py [som|hopfield|ising|energy|bm_gibbs|autoregressive|flows|flows_training|
                         flows_images|made]
                        [--device cpu|cuda] [--quick] [--out DIR] [--data DIR]
                        [--small] [--contended N] [--allow-dirty]

``--small``: the family's small-shape rows (bench/bench_small.py); ``--contended N``: N busy
processes run beside the benchmark and the results are named ``...-contendedN``.
Into bench/results/ (the default) only from a clean tree: ``--allow-dirty`` writes anyway, the
results then naming the commit ``<sha>-dirty`` (any other ``--out`` is always allowed).

Times each case of bench/bench_som.py with ``time.perf_counter`` (one warm-up call,
then rounds until the time budget is spent), prints a Markdown table of medians and
ratios, and writes ``<out>/<machine>.json`` and ``<out>/<machine>.md`` (default
``bench/results/``; ``--quick`` writes ``<machine>-quick.*``). ``<machine>`` names
the CPU model and core count, or the GPU model. ``main(argv)`` is what
``genkernels bench`` calls.

Ratios: ``x ideal`` = median / (2 N K D / peak rate), the peak being the 2048^3
``torch.mm`` of the same run; ``x ours`` = median / the fastest genkernels backend of
the same workload and op (reference when no compiled backend is present). The scale
case runs in a child process of its own; its peak memory is the highest resident size
polled while the op runs minus the size before it; on CUDA, peak memory is ``torch.cuda.max_memory_allocated`` minus
the memory allocated before the op.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

FAMILIES = ("som", "hopfield", "ising", "energy", "bm_gibbs", "autoregressive", "flows",
            "flows_training", "flows_images", "made")  # energy: bench/bench_rbm.py (RBM epochs)
# bm_gibbs: bench/bench_bm_gibbs.py (Boltzmann Gibbs sweeps, <machine>-bm-gibbs.*);
# autoregressive: bench/bench_autoregressive.py (the masked convolution and linear layer, <machine>-autoregressive.*)
# flows: bench/bench_flows.py (the affine coupling's elementwise part, <machine>-flows.*)
# flows_training: bench/bench_flows_training.py (a training step of RealNVP, MAF and NSF against nflows
# and zuko, <machine>-flows-training.*)
# made: bench/bench_made.py (MADE's whole network, the fused masked_mlp, <machine>-made.*)
# flows_images: bench/bench_flows_images.py (a training step of Glow and RealNVP on images against nflows' multi-scale
# flow, the eager reference and torch.compile, <machine>-flows-images.*)
# Seconds of timed rounds per case; a case whose single round exceeds 3x this is
# measured once.
BUDGET_S = {False: 2.0, True: 0.2}
# An extrapolated case also runs its whole epoch once, for QE/TE, when that is
# expected to take at most this long.
QUALITY_BUDGET_S = {False: 30.0, True: 3.0}


# the shared pieces (metadata, the results folder rule, timing, contention, the writer)
# live in bench/harness.py
from harness import (  # noqa: E402
    _fmt,
    _fmt_s,
    _rss_bytes,
    _RssSampler,
    add_allow_dirty,
    allow_dirty,
    busy_neighbours,
    check_results_dir,
    git_commit,
    machine_name,
    measure,
    versions,
    write_results,
)


def run_case(case, quick: bool, data: str | None, meta: dict) -> dict:
    """Measure one case into its JSON record. QE/TE are computed on the run's device
    (``meta["device"]``) whatever library trained the map: one metric code for all."""
    import torch

    import bench_som
    w = case.workload
    rec = {"suite": "som", "workload": w.name, "op": case.op, "impl": case.impl,
           "kind": case.kind, "device": case.device, "shapes": w.shapes(), "dtype": case.dtype,
           "params": case.params, "median_s": None, "iqr_s": None, "rounds": 0,
           "qe": None, "te": None, "peak_mem": None, "gflops": None,
           "extrapolated": case.extrapolate != 1.0, "note": case.note,
           "versions": meta["versions"], "commit": meta["commit"]}
    if case.make is None:
        return rec
    fn = case.make()
    cuda = case.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        mem_before = torch.cuda.memory_allocated()
    else:
        mem_before = _rss_bytes()
        sampler = _RssSampler() if w.scale else None
    times, out = measure(fn, case.device, case.warmup, BUDGET_S[quick])
    if cuda:
        rec["peak_mem"] = torch.cuda.max_memory_allocated() - mem_before
    elif sampler is not None:
        rec["peak_mem"] = sampler.stop() - mem_before
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    rec.update(median_s=float(med) * case.extrapolate, iqr_s=float(q3 - q1) * case.extrapolate,
               rounds=len(times))
    if case.extrapolate != 1.0:
        rec["measured_median_s"] = float(med)
        rec["extrapolate"] = case.extrapolate
    if case.flops and case.extrapolate == 1.0:
        rec["gflops"] = case.flops / float(med) / 1e9
    if case.check is not None:
        rec.update(case.check(out))
    if case.trains:
        weights = out if case.extrapolate == 1.0 else None
        if weights is None and case.make_full is not None and \
                med * case.extrapolate <= QUALITY_BUDGET_S[quick]:
            (rec["full_run_s"],), weights = measure(case.make_full(), case.device, False, 0.0,
                                                    min_rounds=1, max_rounds=1)
        if weights is not None:
            x = bench_som.load_data(w, meta["device"], data)
            rec["qe"], rec["te"] = bench_som.quality(x, weights, w.lattice)
    return rec


def _run_in_child(case, args) -> dict:
    """Run one case in a fresh interpreter (for its own peak RSS)."""
    cmd = [sys.executable, os.path.abspath(__file__), args.family, "--device", args.device,
           "--child-case", case.id] + (["--quick"] if args.quick else []) + \
        (["--data", args.data] if args.data else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{case.id} failed in its child process:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------- report
def _label(rec) -> str:
    params = " ".join(f"{k}={v}" for k, v in rec["params"].items())
    return rec["impl"] + (f" ({params})" if params else "")


def add_ratios(records: list[dict], peak_flops_per_s: float | None) -> None:
    """x_ideal (median / ideal GEMM time) and x_ours (median / fastest genkernels backend)."""
    for rec in records:
        rec["ideal_s"] = rec["x_ideal"] = rec["x_ours"] = None
        s = rec["shapes"]
        if peak_flops_per_s and rec["op"] in ("bmu", "batch_epoch") and rec["median_s"]:
            rec["ideal_s"] = 2.0 * s["n"] * s["k"] * s["d"] / peak_flops_per_s
            rec["x_ideal"] = rec["median_s"] / rec["ideal_s"]
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["workload"], rec["op"], rec["shapes"]["maps"]), []).append(rec)
    for group in groups.values():
        ours = [r for r in group if r["kind"] == "backend" and r["median_s"]]
        compiled = [r for r in ours if r["impl"] != "reference"] or ours
        if not compiled:
            continue
        best = min(compiled, key=lambda r: r["median_s"])
        for rec in group:
            if rec["median_s"]:
                rec["x_ours"] = rec["median_s"] / best["median_s"]
                rec["ours"] = best["impl"]


def markdown(records: list[dict], meta: dict) -> str:
    v = meta["versions"]
    lines = [f"# genkernels benchmarks: {meta['machine']} ({meta['device']})", "",
             f"{meta['created']}, commit `{meta['commit']}`, "
             + ", ".join(f"{k} {v[k]}" for k in v if v[k] is not None) + ".",
             f"Peak fp32 GEMM ({meta['peak_size']}^3 torch.mm): "
             f"{_fmt(meta['peak_gflops'], '{:.1f}')} GFLOP/s."
             + (" Quick mode: shrunken workloads, smoke test only." if meta["quick"] else ""), "",
             "x ideal = median / (2 N K D / peak); x ours = median / the fastest genkernels "
             "backend of the same row group. (extrap.) = timed on a prefix and scaled to the "
             "epoch; QE/TE of extrapolated rows come from one full run when it fits the budget.",
             ""]
    by_workload: dict[str, list[dict]] = {}
    for rec in records:
        by_workload.setdefault(rec["workload"], []).append(rec)
    for name, recs in by_workload.items():
        s = recs[0]["shapes"]
        lines += [f"## {name}: N={s['n']:,} D={s['d']} map {s['rows']}x{s['cols']}"
                  + (f", {s['steps']:,} online steps" if s["steps"] else "")
                  + (f", {s['maps']} maps" if s["maps"] > 1 else ""), "",
                  "| op | impl | kind | median | IQR | rounds | QE | TE | x ideal | x ours | note |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in recs:
            median = _fmt_s(r["median_s"]) + (" (extrap.)" if r["extrapolated"] else "")
            note = r["note"]
            if r.get("peak_mem") is not None:
                note = (note + "; " if note else "") + f"peak mem +{r['peak_mem'] / 2**20:,.0f} MiB"
            if r.get("gflops") is not None:
                note = (note + "; " if note else "") + f"{r['gflops']:.1f} GFLOP/s"
            if r.get("indices_equal_fp32") is not None:
                note = (note + "; " if note else "") + \
                    f"indices = fp32 search: {100 * r['indices_equal_fp32']:.4f}%"
            lines.append(f"| {r['op']} | {_label(r)} | {r['kind']} | {median} | {_fmt_s(r['iqr_s'])} "
                         f"| {r['rounds']} | {_fmt(r['qe'], '{:.4f}')} | {_fmt(r['te'], '{:.4f}')} "
                         f"| {_fmt(r['x_ideal'], '{:.3g}')} | {_fmt(r['x_ours'], '{:.3g}')} | {note} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="genkernels bench", description=__doc__.split("\n\n")[0])
    p.add_argument("family", nargs="?", default="som", choices=FAMILIES)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="shrunken workloads, < 1 minute (smoke test)")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"),
                   help="folder for <machine>.json and <machine>.md (default bench/results)")
    p.add_argument("--data", default=None,
                   help="MNIST folder (default $GENKERNELS_DATA or ../shared/data/mnist)")
    p.add_argument("--small", action="store_true",
                   help="the family's small-shape rows (batch 1 and 10, tiny models, 1 and 2 threads, "
                        "per-call overhead): bench/bench_small.py")
    p.add_argument("--contended", type=int, default=0, metavar="N",
                   help="run N busy processes beside the benchmark; results named ...-contended")
    add_allow_dirty(p)
    p.add_argument("--child-case", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    allow_dirty(args.allow_dirty)
    if not args.child_case:
        check_results_dir(args.out)
    with busy_neighbours(0 if args.child_case else args.contended):
        if args.small:
            if args.device != "cpu":
                print("genkernels bench: --small measures CPU threads; use --device cpu", file=sys.stderr)
                return 2
            import bench_small
            return bench_small.run((args.family,), args.quick, args.out)
        return _main(args)


def _main(args) -> int:
    if args.family == "hopfield":  # retrieval (bench/bench_hopfield.py), then async recall
        import bench_hopfield
        import bench_hopfield_recall
        status = bench_hopfield.run(args.device, args.quick, args.out)
        return status or bench_hopfield_recall.main(["--device", args.device, "--out", args.out]
                                                    + (["--quick"] if args.quick else []))
    if args.family == "bm_gibbs":  # unit updates per second: bench/bench_bm_gibbs.py
        import bench_bm_gibbs
        return bench_bm_gibbs.run(args.device, args.quick, args.out)
    if args.family == "autoregressive":  # masked convolution forward + backward
        import bench_autoregressive
        return bench_autoregressive.main(["--device", args.device, "--out", args.out]
                                              + (["--quick"] if args.quick else []))
    if args.family == "flows":  # the affine coupling's elementwise part, forward + backward
        import bench_flows
        return bench_flows.main(["--device", args.device, "--out", args.out] + (["--quick"] if args.quick else []))
    if args.family == "flows_training":  # a whole training step of vector flows, against nflows and zuko
        import bench_flows_training
        return bench_flows_training.main(["--device", args.device, "--out", args.out]
                                         + (["--quick"] if args.quick else []))
    if args.family == "made":  # MADE's whole network forward + backward
        import bench_made
        return bench_made.main(["--device", args.device, "--out", args.out] + (["--quick"] if args.quick else []))
    if args.family == "flows_images":  # a whole training step of multi-scale image flows
        import bench_flows_images
        return bench_flows_images.main(["--device", args.device, "--out", args.out]
                                       + (["--quick"] if args.quick else []))
    if args.family == "ising":  # flips per ns of the checkerboard sweeps: bench/bench_ising.py
        import bench_ising
        return bench_ising.main(["--device", args.device, "--out", args.out]
                                + (["--quick"] if args.quick else []))
    import torch
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("genkernels bench: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
        # fp32 means fp32: the GEMM baselines and the peak rate without TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.family == "energy":
        import bench_rbm
        return bench_rbm.main(args)
    import bench_som

    cases = bench_som.build_cases(args.device, args.quick, args.data)
    meta = {"machine": machine_name(args.device), "device": args.device, "quick": args.quick,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": versions(), "commit": git_commit(), "peak_size": bench_som.PEAK_GEMM_SIZE}
    if args.child_case:
        case = next(c for c in cases if c.id == args.child_case)
        print(json.dumps(run_case(case, args.quick, args.data, meta)))
        return 0

    if not bench_som.mnist_available(args.data):
        print(f"[bench] MNIST not found in {bench_som.data_dir(args.data)}: its workload is "
              "skipped (set --data or GENKERNELS_DATA)", file=sys.stderr)
    records = []
    for case in cases:
        start = time.perf_counter()
        if case.make is not None and case.workload.scale and args.device == "cpu":
            rec = _run_in_child(case, args)
        else:
            rec = run_case(case, args.quick, args.data, meta)
        records.append(rec)
        print(f"[bench] {case.id}: {_fmt_s(rec['median_s'])}"
              + (" (extrap.)" if rec["extrapolated"] else "")
              + f" [{time.perf_counter() - start:.1f} s]", file=sys.stderr, flush=True)
    peak = next((r for r in records if r["op"] == "peak_gemm"), None)
    meta["peak_gflops"] = peak["gflops"] if peak else None
    add_ratios(records, meta["peak_gflops"] * 1e9 if meta["peak_gflops"] else None)

    table = markdown(records, meta)
    print(table)
    write_results(args.out, meta["machine"] + ("-quick" if args.quick else ""), meta, records, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
