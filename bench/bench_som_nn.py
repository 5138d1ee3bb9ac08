"""SOMs inside image and network pipelines: one section per model, each its own function and
results file.

    python bench/bench_som_nn.py [--quick] [--data DIR] [--out DIR] [--allow-dirty]
    pytest bench/bench_som_nn.py --benchmark-only [--bench-quick] [--data DIR]

Sections:

* PatchSOM (:func:`bench_patch_bmu`): the fused patch BMU search ``ops.som_patch_bmu``
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

import numpy as np
import torch
import torch.nn.functional as F

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

from harness import (  # noqa: E402
    RESULTS_DIR,
    add_allow_dirty,
    allow_dirty,
    bench_options,
    benchmark_call,
    check_results_dir,
    git_commit,
    interleaved,
    machine_name,
    versions,
    write_results,
)

import genkernels  # noqa: E402
from genkernels import ops  # noqa: E402

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


# ------------------------------------------------------------------------- runner
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small workload (smoke test)")
    p.add_argument("--data", default=None, help="folder holding the MNIST IDX files")
    p.add_argument("--out", default=RESULTS_DIR)
    add_allow_dirty(p)
    args = p.parse_args(argv)
    allow_dirty(args.allow_dirty)
    check_results_dir(args.out)
    bench_patch_bmu(args.quick, args.out, args.data)
    return 0


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """PatchSOM: one case per (images, stride) and implementation (``pytest bench/ --benchmark-only``)."""
    if "patch_case" not in metafunc.fixturenames:
        return
    _, quick, _ = bench_options(metafunc.config)
    cases = [(data, s, name) for data, s in (PATCH_QUICK["cases"] if quick else PATCH_CASES) for name in PATCH_IMPLS]
    metafunc.parametrize("patch_case", cases, ids=[f"{data}-stride{s}-{'fused' if 'patch' in name else 'unfold'}"
                                                   for data, s, name in cases])


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


if __name__ == "__main__":
    sys.exit(main())
