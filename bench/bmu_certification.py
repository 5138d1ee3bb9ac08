"""How many rows the certified BMU search leaves to its next stage, per precision.

    python bench/bmu_certification.py [--rows 20000] [--out bench/results] [--allow-dirty]

The triton search keeps SLOTS candidates per row (genkernels.som.triton._bmu_plan) and
certifies a row when its last kept key exceeds the k-th by more than twice the rounding
error bound (_certify_constant); the others are searched again with more precision. The
share of rows certified decides what a tf32/bf16 search costs. This script computes it on
a CPU with the operand rounding emulated as a GPU does it (tf32 truncated to 10 mantissa
bits, bf16 rounded to nearest), the keys from fp32 products, for k = 1, on
``random`` -- uniform data of 256 features against 4,096 of its rows (the GPU target's
shapes, fewer rows) -- and ``mnist`` -- the MNIST test images (784 features, 0..1)
against 1,024 of them, when ../shared/data/mnist or GENKERNELS_DATA holds them.
Writes bench/results/bmu-certification.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _tf32(t: torch.Tensor) -> torch.Tensor:
    return (t.view(torch.int32) & -8192).view(torch.float32)


ROUNDING = {"fp32": (lambda t: t, 0.0), "tf32": (_tf32, 2.0 ** -10),
            "bf16": (lambda t: t.bfloat16().float(), 2.0 ** -8)}


def uncertified_share(x: torch.Tensor, w: torch.Tensor, precision: str, k: int = 1,
                      chunk: int = 2048) -> tuple[float, int]:
    """(share of rows not certified, SLOTS) for the fused search's plan."""
    from genkernels.som import triton as som_triton
    rnd, unit = ROUNDING[precision]
    pid = som_triton.PRECISION_IDS[precision]
    _, _, certify, slots, _ = som_triton._bmu_plan(x, "euclidean", k, pid)
    assert certify
    c = som_triton._certify_constant("euclidean", x.shape[1], unit)
    w_sq = (w * w).sum(1)
    wr = rnd(w)
    open_rows = 0
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        keys = w_sq[None, :] - 2.0 * (rnd(xs) @ wr.T)
        v = keys.topk(min(slots, w.shape[0]), 1, largest=False).values
        bound = c * ((xs * xs).sum(1) + w_sq.max())
        open_rows += int((~(v[:, -1] > v[:, k - 1] + 2.0 * bound)).sum())
    return open_rows / x.shape[0], slots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    import harness as bench_run
    bench_run.add_allow_dirty(parser)
    args = parser.parse_args(argv)
    bench_run.allow_dirty(args.allow_dirty)
    bench_run.check_results_dir(args.out)

    import bench_som
    from bench_som import Workload

    gen = torch.Generator().manual_seed(0)
    datasets = {}
    x = torch.rand(args.rows, 256, generator=gen)
    datasets["random"] = (x, bench_som.initial_weights(x, 4096), "uniform [0, 1), 256 features, 4,096 nodes")
    try:
        xm = bench_som.load_data(Workload("certify", "mnist", 10_000, 784, 32, 32, 0))
        datasets["mnist"] = (xm, bench_som.initial_weights(xm, 1024), "MNIST test images, 784 features, 1,024 nodes")
    except OSError as exc:
        print(f"mnist skipped: {exc}")
    records = []
    for name, (x, w, what) in datasets.items():
        for precision in ROUNDING:
            share, slots = uncertified_share(x, w, precision)
            records.append({"data": name, "what": what, "rows": x.shape[0], "nodes": w.shape[0],
                            "d": x.shape[1], "k": 1, "precision": precision, "slots": slots,
                            "uncertified": share})
            print(f"{name:7s} {precision}: {100 * share:.2f}% of {x.shape[0]} rows uncertified ({slots} candidates)")
    commit = bench_run.git_commit()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bmu-certification.json"), "w") as f:
        json.dump({"command": "python bench/bmu_certification.py", "commit": commit,
                   "torch": torch.__version__, "cases": records}, f, indent=1)
    lines = ["# Rows the certified BMU search leaves open (k = 1, rounding emulated on CPU)", "",
             "`python bench/bmu_certification.py` -- see its docstring.", "",
             "| data | precision | candidates | rows | uncertified |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['precision']} | {r['slots']} | {r['rows']:,} | {100 * r['uncertified']:.2f}% |"
              for r in records]
    with open(os.path.join(args.out, "bmu-certification.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
