"""Gated PixelCNN sampling: the cached sampler (Ramachandran et al., 2017) against the naive
one, images per second, on the same model, batch and seed.

    python bench/bench_pixelcnn_sampling.py [--quick] [--threads 1] [--device cpu|cuda]
                                            [--out bench/results] [--allow-dirty]

Models: genkernels.GatedPixelCNN with a Bernoulli head and 5 x 5 kernels at a few sizes
(channels x layers), weights as initialised (sampling costs the same for any weights).
``cached`` samples whole 28 x 28 (and 8 x 8) images; ``naive`` runs the whole network once
per pixel, the same computation at every pixel, so it is timed over the first
``--naive-rows`` image rows (every pixel of them sampled, nothing skipped) and its rate
extrapolated to the whole image -- the record says how many rows it ran. Both draw the same
values: the run checks that the cached images' first rows equal the naive ones'. Writes
``<machine>-pixelcnn-sampling.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402

import genkernels  # noqa: E402

# (channels, layers, image side, batch)
CASES = {False: [(16, 5, 28, 16), (32, 6, 28, 16), (64, 8, 28, 16), (32, 6, 8, 16)],
         True: [(8, 2, 8, 4)]}


def _timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_case(case: tuple, device: str, naive_rows: int) -> dict:
    channels, layers, side, batch = case
    model = genkernels.GatedPixelCNN(1, channels, layers, 5, seed=0).to(device)
    model.sample(batch, (min(side, 4), min(side, 4)), seed=1)   # warm-up
    cached_s, cached = _timed(lambda: model.sample(batch, (side, side), seed=1, method="cached"))
    rows = min(naive_rows, side)
    # the naive sampler on the first `rows` rows of the same images (same seed: the same uniforms)
    given = torch.zeros(batch, 1, side, side, device=device)
    observed = torch.zeros(batch, 1, side, side, dtype=torch.bool, device=device)
    observed[:, :, rows:] = True    # rows below are given (zeros) and never sampled
    naive_s, naive = _timed(lambda: model.sample(batch, given=given, mask=observed, seed=1, method="naive"))
    # the naive path runs the network once per sampled pixel whatever the given rows hold; the
    # cached images' first rows must equal what naive drew there
    same = bool(torch.equal(cached[:, :, :rows], naive[:, :, :rows]))
    naive_full_s = naive_s * side / rows
    return {"channels": channels, "layers": layers, "image_side": side, "batch": batch,
            "cached_s": cached_s, "cached_images_per_s": batch / cached_s,
            "naive_rows": rows, "naive_rows_s": naive_s, "naive_images_per_s": batch / naive_full_s,
            "naive_extrapolated": rows < side, "speedup": naive_full_s / cached_s, "same_values": same}


def _table(records: list[dict], meta: dict) -> str:
    lines = ["# Gated PixelCNN sampling: cached against naive", "",
             f"{meta['machine']}, {meta['threads']} thread(s), torch {meta['versions']['torch']}, "
             "Bernoulli head, 5 x 5 kernels, weights as initialised.", "",
             "| model | image | batch | cached | naive | cached / naive | naive timed on | same values |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for r in records:
        lines.append(f"| {r['layers']} layers x {r['channels']} channels | {r['image_side']}x{r['image_side']} | "
                     f"{r['batch']} | {r['cached_images_per_s']:.3g} images/s | {r['naive_images_per_s']:.3g} images/s "
                     f"| {r['speedup']:.1f}x | {r['naive_rows']} of {r['image_side']} rows | {r['same_values']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--naive-rows", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    harness.add_allow_dirty(p)
    args = p.parse_args(argv)
    harness.allow_dirty(args.allow_dirty)
    harness.check_results_dir(args.out)
    torch.set_num_threads(args.threads)
    meta = harness.run_meta(args.device, args.quick) | {"threads": torch.get_num_threads()}
    records = []
    for case in CASES[args.quick]:
        rec = run_case(case, args.device, args.naive_rows)
        print(f"{case}: cached {rec['cached_images_per_s']:.3g} images/s, naive {rec['naive_images_per_s']:.3g} "
              f"images/s, {rec['speedup']:.1f}x, same values {rec['same_values']}", file=sys.stderr, flush=True)
        records.append(rec)
    meta["loadavg_end"] = os.getloadavg()[0]
    table = _table(records, meta)
    print(table)
    name = f"{meta['machine']}-pixelcnn-sampling" + ("-quick" if args.quick else "")
    harness.write_results(args.out, name, meta, records, table)
    return 0 if all(r["same_values"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
