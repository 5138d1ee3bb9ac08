"""SOMs inside neural networks and image pipelines: one section per model, each its own
function and results file.

    python bench/bench_som_nn.py [--section all|softsom|patch] [--device cpu|cuda] [--quick]
                                 [--data DIR] [--out DIR] [--allow-dirty]
    pytest bench/bench_som_nn.py --benchmark-only [--bench-quick] [--bench-device cpu|cuda]
        (test_som_soft, test_patch_bmu: our ops alone, pytest-benchmark's timing)

SoftSOM (:func:`run_cases`): the soft SOM layer's op against the same function written in
PyTorch, eager and under torch.compile, on the same inputs.

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
and beta), on CPU with 1 and with 2 torch threads (``SOFT_THREADS``). Each case: one
warm-up call, then rounds until the time budget is spent (bench/harness.py's
``measure``); medians and IQR, and ``x ours`` = median / the fastest compiled genkernels
backend of the same row group. Results go to ``<out>/<machine>-som-nn.{json,md}``
(``-quick`` added in quick mode).

PatchSOM (:func:`bench_patch_bmu`): the fused patch BMU search ``ops.som_patch_bmu``
(cpu backend: patches read from the images) against the same search done the usual way,
``torch.nn.functional.unfold`` into the im2col matrix, then ``ops.som_bmu`` (cpu) on its
rows -- both give the same indices and distances bit for bit (checked). Workload: 256
MNIST test images (28 x 28; ``--data`` or $GENKERNELS_DATA, else ../shared/data/mnist; a
seeded sparse random stand-in when absent, recorded as the source) at stride 1 and 2, and
256 dense uniform images (no blank patch) at stride 1; 5 x 5 patches, K = 100 codebook
rows drawn from the images' non-blank patches. Both run the same micro-kernel over the
non-blank patches; the fused op saves the im2col matrix (built, then copied to rows, by
the baseline) and answers blank patches (every pixel 0) without a search. Times: medians
of interleaved rounds (harness.interleaved: both timed in every round, so a change of
load hits them alike) and the median of the per-round ratios, on 1 and on 2 torch threads. Memory: the bytes of one
im2col matrix (N Hp Wp x 25 fp32) the fused op never builds; the peak of torch's CPU
allocations during one call of each, replayed from the profiler's memory records
(``torch.profiler``, ``profile_memory=True``); and the fused kernel's list of the
non-blank patches (16 bytes each: output row and image offset, std::vectors the profiler
does not see; its other scratch, the packed codebook and a few rows per thread, is under
20 KB here). Writes
``<out>/som_patch_bmu_cpu.{json,md}`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import os
import statistics
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
from harness import (  # noqa: E402
    RESULTS_DIR,
    bench_options,
    benchmark_call,
    git_commit,
    interleaved,
    machine_name,
    versions,
    write_results,
)

import genkernels  # noqa: E402
from genkernels import backends, ops  # noqa: E402
from genkernels.som import soft_reference  # noqa: E402

SEED = 0
BETA = 4.0
BUDGET_S = {False: 2.0, True: 0.2}
# torch threads of the SoftSOM rows on CPU: every implementation on 1, then on 2 (beside a
# busy process a 2-thread torch op may wait a time slice for its second thread)
SOFT_THREADS = (1, 2)


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
    threads_before = torch.get_num_threads()
    for threads in SOFT_THREADS if device == "cpu" else (threads_before,):
        torch.set_num_threads(threads)
        try:
            records += _soft_rows(device, quick, meta, log, budget_s, threads)
        finally:
            torch.set_num_threads(threads_before)
    runner.add_backend_ratios(records, lambda rec: (rec["layer"], rec["workload"], rec.get("threads"), rec["op"]))
    return records


def _soft_rows(device, quick, meta, log, budget_s, threads) -> list[dict]:
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
                       "kind": kind, "device": device, "threads": threads, "shapes": w.shapes(),
                       "dtype": "float32", "beta": BETA, "median_s": float(med), "iqr_s": float(q3 - q1),
                       "rounds": len(times), "versions": meta["versions"], "commit": meta["commit"]}
                if not backward:
                    rec["max_abs_diff_vs_fp64"] = float((result.double() - want).abs().max())
                records.append(rec)
                log(f"[bench] SoftSOM {w.name} {threads} thread(s) {op} {name}: {runner._fmt_s(med)}")
    return records


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
                  "| threads | op | impl | kind | median | IQR | rounds | x ours | max abs diff vs fp64 |",
                  "|---:|---|---|---|---:|---:|---:|---:|---:|"]
        for r in recs:
            diff = r.get("max_abs_diff_vs_fp64")
            lines.append(f"| {r.get('threads', '-')} | {r['op']} | {r['impl']} | {r['kind']} | "
                         f"{runner._fmt_s(r['median_s'])} "
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
    meta = runner.run_meta(device, quick)
    records = run_cases(device, quick, meta, log=lambda m: print(m, file=sys.stderr, flush=True),
                        budget_s=budget_s)
    meta["loadavg_end"] = os.getloadavg()[0]
    table = markdown(records, meta)
    print(table)
    runner.write_results(out_dir or os.path.join(BENCH_DIR, "results"),
                         f"{meta['machine']}-som-nn" + ("-quick" if quick else ""), meta, records, table)
    return 0


DEFAULT_DATA = os.path.join(BENCH_DIR, "..", "..", "shared", "data", "mnist")


# ------------------------------------------------------------------------ PatchSOM
PATCH_IMAGES, PATCH_KERNEL, PATCH_NODES = 256, 5, 100
# (data, stride): MNIST at both strides, and dense random images (no blank patch) at stride 1
PATCH_CASES = [("mnist", 1), ("mnist", 2), ("dense", 1)]
PATCH_QUICK = dict(images=32, cases=[("mnist", 2)], rounds=3)
# torch threads of the timed calls: both implementations on 1, then on 2 (unfold's own team
# included; beside another busy process a 2-thread unfold may wait a time slice per call)
PATCH_THREADS = (1, 2)
PATCH_IMPLS = ("som_patch_bmu (cpu)", "unfold + som_bmu (cpu)")


def patch_images(n: int, data: str = "mnist", directory: str | None = None) -> tuple[torch.Tensor, str]:
    """(n, 1, 28, 28) float32 images in [0, 1] and their source. "mnist": the first n MNIST
    test images, or a seeded stand-in (80% zeros, the rest uniform: MNIST's ink share) when
    the files are absent; "dense": seeded uniform images, no blank patch."""
    g = torch.Generator().manual_seed(0)
    if data == "dense":
        return torch.rand((n, 1, 28, 28), generator=g), "uniform-dense"
    from genkernels.data import load_mnist
    directory = directory or os.environ.get("GENKERNELS_DATA") or DEFAULT_DATA
    try:
        x, _ = load_mnist(directory)
        return torch.from_numpy(x[:n]).reshape(n, 1, 28, 28).contiguous(), "mnist-t10k"
    except FileNotFoundError:
        ink = torch.rand((n, 1, 28, 28), generator=g)
        return torch.where(torch.rand((n, 1, 28, 28), generator=g) < 0.8, 0.0, ink), "random-sparse"


def unfolded_patches(images: torch.Tensor, stride: int) -> torch.Tensor:
    """(N Hp Wp, 25): the im2col matrix as the baseline builds it."""
    cols = F.unfold(images, PATCH_KERNEL, stride=stride)                      # (N, D, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])                    # (N L, D), a copy


def patch_codebook(images: torch.Tensor, stride: int) -> torch.Tensor:
    """(K, 25) codebook rows: K distinct non-blank patches of the images drawn by a fixed seed."""
    patches = torch.unique(unfolded_patches(images, stride), dim=0)
    patches = patches[patches.abs().sum(1) > 0]
    picks = torch.randperm(patches.shape[0], generator=torch.Generator().manual_seed(1))[:PATCH_NODES]
    return patches[picks].contiguous()


def patch_impls(images: torch.Tensor, codebook: torch.Tensor, stride: int) -> dict:
    """The two implementations timed, each (indices, distances) of one call, flat."""
    def fused():
        idx, dist = ops.som_patch_bmu(images, codebook, PATCH_KERNEL, stride, backend="cpu")
        return idx.reshape(-1), dist.reshape(-1)

    def unfolded():
        idx, dist = ops.som_bmu(unfolded_patches(images, stride), codebook, backend="cpu")
        return idx.reshape(-1), dist.reshape(-1)

    return dict(zip(PATCH_IMPLS, (fused, unfolded)))


def torch_peak_bytes(fn) -> int:
    """Peak of torch's live CPU allocations during fn(), beyond those before it: the
    profiler's memory records replayed in time order -- each op's own allocations less its
    own frees (self CPU memory) at its start, each free outside an op at its time. The
    result tensors count while they live."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    changes = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                     for e in prof.profiler.function_events)
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


def bench_patch_bmu(quick: bool = False, out: str | None = RESULTS_DIR, directory: str | None = None) -> list[dict]:
    """PatchSOM rows: the fused patch BMU (cpu) against unfold + som_bmu (cpu), time and memory
    (module docstring); writes som_patch_bmu_cpu.{json,md} into ``out`` (None: nowhere)."""
    n = PATCH_QUICK["images"] if quick else PATCH_IMAGES
    rounds = PATCH_QUICK["rounds"] if quick else 25
    records = []
    threads_before = torch.get_num_threads()
    for data, stride in PATCH_QUICK["cases"] if quick else PATCH_CASES:
        images, source = patch_images(n, data, directory)
        codebook = patch_codebook(images, stride)
        impls = patch_impls(images, codebook, stride)
        (fused_idx, fused_dist), (ref_idx, ref_dist) = (fn() for fn in impls.values())
        assert torch.equal(fused_idx, ref_idx) and torch.equal(fused_dist, ref_dist), \
            "the fused op must equal unfold + som_bmu bit for bit"
        patches = unfolded_patches(images, stride)
        blank = int((patches.abs().sum(1) == 0).sum())
        peaks = [torch_peak_bytes(fn) for fn in impls.values()]
        for threads in PATCH_THREADS:
            torch.set_num_threads(threads)
            try:
                times, _ = interleaved(list(impls.values()), "cpu", rounds, pause_s=0.05)
            finally:
                torch.set_num_threads(threads_before)
            ratios = times[:, 1] / times[:, 0]
            for col, name in enumerate(PATCH_IMPLS):
                records.append({
                    "section": "PatchSOM", "impl": name, "images": n, "size": [28, 28], "kernel_size": PATCH_KERNEL,
                    "stride": stride, "nodes": PATCH_NODES, "patches": patches.shape[0], "blank_patches": blank,
                    "source": source, "dtype": "float32", "threads": threads, "rounds": rounds,
                    "median_s": float(np.median(times[:, col])), "min_s": float(times[:, col].min()),
                    "iqr_s": float(np.subtract(*np.percentile(times[:, col], [75, 25]))),
                    "unfold_over_fused_median_ratio": float(statistics.median(ratios)),
                    "torch_peak_bytes": peaks[col], "im2col_bytes": patches.numel() * 4,
                    # the fused kernel's list of the non-blank patches: output row and image offset
                    # (two int64 std::vectors, not torch allocations)
                    "kernel_list_bytes": (patches.shape[0] - blank) * 16 if col == 0 else 0})
    lines = [f"# PatchSOM: fused patch BMU vs unfold + som_bmu ({machine_name('cpu')}, torch {torch.__version__}, "
             f"commit {git_commit()})", "",
             f"{n} images 28 x 28, {PATCH_KERNEL} x {PATCH_KERNEL} patches, K = {PATCH_NODES} codebook rows drawn "
             f"from the images' non-blank patches, fp32; {rounds} interleaved rounds; both give the same "
             "indices and distances bit for bit (checked).", "",
             "| images | stride | patches (blank) | threads | impl | median | min | "
             "unfold / fused (median of rounds) | torch peak alloc | im2col matrix | patch list |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['source']} | {r['stride']} | {r['patches']:,} ({r['blank_patches'] / r['patches']:.0%}) | "
                     f"{r['threads']} | {r['impl']} | {r['median_s'] * 1e3:.2f} ms | {r['min_s'] * 1e3:.2f} ms | "
                     f"{r['unfold_over_fused_median_ratio']:.2f}x | {r['torch_peak_bytes'] / 2**20:.2f} MiB | "
                     f"{r['im2col_bytes'] / 2**20:.2f} MiB | {r['kernel_list_bytes'] / 2**20:.2f} MiB |")
    table = "\n".join(lines)
    print(table)
    if out is not None:
        meta = {"device": "cpu", "machine": machine_name("cpu"), "commit": git_commit(), "versions": versions()}
        write_results(out, "som_patch_bmu_cpu" + ("-quick" if quick else ""), meta, records, table)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_som_nn", description=__doc__.split("\n\n")[0])
    p.add_argument("--section", default="all", choices=("all", "softsom", "patch"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="shrunken workloads (smoke test)")
    p.add_argument("--data", default=None, help="folder holding the MNIST IDX files (PatchSOM)")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--budget", type=float, default=None,
                   help="SoftSOM: seconds of timed rounds per case (default 2, quick 0.2)")
    runner.add_allow_dirty(p)
    args = p.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    out = args.out or RESULTS_DIR
    runner.check_results_dir(out)
    status = 0
    if args.section in ("all", "softsom"):
        status = run(args.device, args.quick, out, args.budget)
    if args.section in ("all", "patch") and not status:
        if args.device != "cpu":
            print("bench_som_nn: the PatchSOM section measures the cpu op; use --device cpu", file=sys.stderr)
            return 2
        bench_patch_bmu(args.quick, out, args.data)
    return status


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """SoftSOM: one case per workload, op and genkernels backend of the run's device;
    PatchSOM: one per (images, stride) and implementation (``pytest bench/ --benchmark-only``;
    options in bench/conftest.py)."""
    device, quick, _ = runner.bench_options(metafunc.config)
    if "case" in metafunc.fixturenames:
        cases = [(w, op, name) for w in workloads(quick) for op in ("forward", "forward+backward")
                 for name, kind, _ in _impls(device) if kind == "backend"]
        metafunc.parametrize("case", cases, ids=[f"{w.name}-{op}-{name}" for w, op, name in cases])
    if "patch_case" in metafunc.fixturenames:
        cases = [(data, s, name) for data, s in (PATCH_QUICK["cases"] if quick else PATCH_CASES)
                 for name in PATCH_IMPLS]
        metafunc.parametrize("patch_case", cases, ids=[f"{data}-stride{s}-{'fused' if 'patch' in name else 'unfold'}"
                                                       for data, s, name in cases])


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


def test_patch_bmu(benchmark, patch_case, request):
    """Time one patch BMU search over the images (indices checked against the reference)."""
    import pytest
    if "cpu" not in genkernels.available_backends("cpu"):
        pytest.skip("the cpu backend (C++ extension) is not built")
    data, stride, name = patch_case
    _, quick, directory = bench_options(request.config)
    images, _ = patch_images(PATCH_QUICK["images"] if quick else PATCH_IMAGES, data, directory)
    codebook = patch_codebook(images, stride)
    idx, _ = benchmark_call(benchmark, patch_impls(images, codebook, stride)[name], "cpu")
    benchmark.extra_info.update({"data": data, "stride": stride, "impl": name, "images": images.shape[0]})
    want, _ = ops.som_patch_bmu(images, codebook, PATCH_KERNEL, stride, backend="reference")
    assert torch.equal(idx, want.reshape(-1))
