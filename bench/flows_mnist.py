"""RealNVP and Glow on MNIST and on the digits: held-out bits per dimension and sample grids.

    python bench/flows_mnist.py [--data ../shared/data/mnist] [--quick] [--out bench/results]
                                [--allow-dirty]

Data: the MNIST test file (10,000 images, IDX) -- the first 9,000 to train, the last 1,000
to evaluate -- as 256-level pixels in [0, 1], dequantised afresh every batch (the reported
bits/dim are the discrete pixels': the continuous density's plus log2 256 = 8); and
scikit-learn's digits (8 x 8, 17 levels, the first 1,500 to train, the last 297 to
evaluate). Models: genkernels.RealNVP (multi-scale, ResNet couplings) and genkernels.Glow,
both with the logit preprocessing (alpha 0.05), Adam with gradient clipping. Writes
``flows-mnist.{json,md}`` and a sample grid per model and data set.

For orientation, the published full-data results are RealNVP 3.49 and Glow 3.35 bits/dim on
CIFAR-10, and about 1.0-1.1 bits/dim for such flows on MNIST (60,000 training images, many
epochs); this run trains on 9,000 for a few epochs on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402

import genkernels  # noqa: E402
from genkernels.data import load_digits, load_idx  # noqa: E402
from genkernels.plot import plot_image_grid  # noqa: E402

# name -> (constructor, its arguments for an image shape, epochs on MNIST, epochs on the digits)
MODELS = {"RealNVP": (genkernels.RealNVP, dict(scales=2, hidden=32), 4, 20),
          "Glow": (genkernels.Glow, dict(levels=2, steps=4, hidden=32), 10, 20)}


def run_set(name: str, train: torch.Tensor, test: torch.Tensor, levels: int, args, out: str | None) -> list[dict]:
    records = []
    for label, (cls, kwargs, mnist_epochs, digit_epochs) in MODELS.items():
        epochs = 1 if args.quick else (mnist_epochs if name == "mnist" else digit_epochs)
        torch.manual_seed(0)
        model = cls(tuple(train.shape[1:]), seed=0, logit_alpha=0.05, **kwargs)
        start = time.perf_counter()
        model.fit(train, epochs=epochs, batch_size=64, learning_rate=1e-3, dequantize_levels=levels,
                  max_grad_norm=100.0, verbose=not args.quiet)
        fit_s = time.perf_counter() - start
        test_bpd = model.evaluate(test, levels=levels)
        rec = {"set": name, "model": label, "config": kwargs, "train_images": int(train.shape[0]),
               "test_images": int(test.shape[0]), "image_size": list(train.shape[2:]), "levels": levels,
               "epochs": epochs, "batch_size": 64, "learning_rate": 1e-3, "train_seconds": fit_s,
               "test_bits_per_dim": test_bpd, "train_bits_per_dim": model.history[-1]["bits_per_dim"],
               "inverse_error": model.history[-1]["inverse_error"],
               "parameters": sum(p.numel() for p in model.parameters())}
        if out:
            samples = model.sample(16, seed=1, temperature=0.7)[:, 0].clamp(0, 1)
            rec["samples_png"] = os.path.basename(plot_image_grid(
                samples.numpy(), os.path.join(out, f"flows-{name}-{label.lower()}-samples.png"),
                f"{label} samples ({name}, temperature 0.7)"))
        print(f"{name} {label}: test {test_bpd:.3f} bits/dim, trained {epochs} epochs in {fit_s:.0f} s",
              file=sys.stderr)
        records.append(rec)
    return records


def _table(records: list[dict]) -> str:
    lines = ["# RealNVP and Glow: held-out bits per dimension of the discrete pixels", "",
             "| data | train / test | model | parameters | epochs | test bits/dim | train time | inverse error |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['set']} {r['image_size'][0]}x{r['image_size'][1]}, {r['levels']} levels | "
                     f"{r['train_images']:,} / {r['test_images']:,} | {r['model']} | {r['parameters']:,} | "
                     f"{r['epochs']} | {r['test_bits_per_dim']:.3f} | {r['train_seconds']:.0f} s | "
                     f"{r['inverse_error']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("GENKERNELS_DATA", os.path.join(BENCH_DIR, "..", "..",
                                                                                    "shared", "data", "mnist")))
    p.add_argument("--quick", action="store_true", help="the digits only, 1 epoch")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    harness.add_allow_dirty(p)
    args = p.parse_args(argv)
    harness.allow_dirty(args.allow_dirty)
    harness.check_results_dir(args.out)
    meta = harness.run_meta("cpu", args.quick) | {"threads": torch.get_num_threads()}
    digits = torch.as_tensor(np.round(load_digits()[0] * 16) / 16).reshape(-1, 1, 8, 8).float()
    records = run_set("digits", digits[:1500], digits[1500:], 17, args, args.out)
    path = os.path.join(args.data, "t10k-images-idx3-ubyte.gz")
    if not args.quick:
        if os.path.exists(path):
            x = torch.as_tensor(load_idx(path).astype(np.float32) / 255.0)[:, None]
            records += run_set("mnist", x[:9000], x[9000:], 256, args, args.out)
        else:
            print(f"[bench] MNIST not found in {args.data}: only the digits", file=sys.stderr)
    meta["loadavg_end"] = os.getloadavg()[0]
    table = _table(records)
    print(table)
    harness.write_results(args.out, "flows-mnist" + ("-quick" if args.quick else ""), meta, records, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
