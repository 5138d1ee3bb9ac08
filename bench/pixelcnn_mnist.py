"""Gated PixelCNN on binarised MNIST and on the digits: held-out NLL, a grid of samples, and
cached against naive sampling.

    python bench/pixelcnn_mnist.py [--data ../shared/data/mnist] [--epochs 5] [--channels 32]
                                   [--layers 6] [--quick] [--out bench/results] [--allow-dirty]

Data: the MNIST test file (10,000 images, IDX) -- the first 9,000 to train, the last 1,000
to evaluate -- binarised once by Bernoulli draws with the pixel intensity as probability (a
fixed seed), as binarised MNIST is usually made; and scikit-learn's digits (8 x 8, the first
1,500 to train, the last 297 to evaluate), binarised at 0.5. Model: genkernels.GatedPixelCNN
(Bernoulli head, kernel 5), Adam. Reports the held-out negative log-likelihood in nats per
image (and bits per dimension), 16 samples as a PNG, and the sampling rate of the cached
and the naive sampler on the same model and seed (images per second; the naive path runs the
whole network once per pixel). Writes ``pixelcnn-mnist.{json,md}`` and
``pixelcnn-mnist-samples.png`` (``pixelcnn-digits-samples.png``).

For orientation, the published test NLLs on the standard binarised MNIST split (50,000
training images) are about 81.3 nats (PixelCNN) and 88.0 (MADE); this run trains on 9,000.
"""

from __future__ import annotations

import argparse
import math
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


def mnist(data_dir: str, seed: int = 0) -> torch.Tensor:
    path = os.path.join(data_dir, "t10k-images-idx3-ubyte.gz")
    images = torch.as_tensor(load_idx(path).astype(np.float32) / 255.0)[:, None]
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(seed))
    return (u < images).float()


def nll(model, x: torch.Tensor, batch: int = 500) -> float:
    """Mean negative log-likelihood in nats per image."""
    with torch.no_grad():
        return float(sum(-model.log_prob(x[i:i + batch]).sum() for i in range(0, x.shape[0], batch)) / x.shape[0])


def sampling_rate(model, n: int, size: tuple[int, int], method: str) -> float:
    start = time.perf_counter()
    model.sample(n, size, seed=123, method=method)
    return n / (time.perf_counter() - start)


def run_set(name: str, train: torch.Tensor, test: torch.Tensor, args, out: str | None) -> dict:
    torch.manual_seed(0)
    model = genkernels.GatedPixelCNN(1, args.channels, args.layers, 5, seed=0)
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
              verbose=not args.quiet)
    fit_s = time.perf_counter() - start
    test_nll = nll(model, test)
    dims = test[0].numel()
    size = tuple(test.shape[2:])
    rec = {"set": name, "train_images": int(train.shape[0]), "test_images": int(test.shape[0]),
           "image_size": list(size), "channels": args.channels, "layers": args.layers, "epochs": args.epochs,
           "batch_size": args.batch_size, "learning_rate": args.learning_rate, "train_seconds": fit_s,
           "test_nll_nats": test_nll, "test_bits_per_dim": test_nll / (math.log(2) * dims),
           "history": model.history}
    samples = model.sample(16, size, seed=1)
    if out:
        rec["samples_png"] = os.path.basename(plot_image_grid(
            samples[:, 0].numpy(), os.path.join(out, f"pixelcnn-{name}-samples.png"),
            f"Gated PixelCNN samples ({name}, cached sampler)"))
    n = args.sample_batch
    rec["sampling"] = {"batch": n, "cached_images_per_s": sampling_rate(model, n, size, "cached"),
                       "naive_images_per_s": sampling_rate(model, n, size, "naive")}
    rec["sampling"]["speedup"] = rec["sampling"]["cached_images_per_s"] / rec["sampling"]["naive_images_per_s"]
    print(f"{name}: test NLL {test_nll:.2f} nats ({rec['test_bits_per_dim']:.4f} bits/dim), trained in "
          f"{fit_s:.0f} s; sampling {rec['sampling']['cached_images_per_s']:.2f} vs "
          f"{rec['sampling']['naive_images_per_s']:.3f} images/s ({rec['sampling']['speedup']:.1f}x)", file=sys.stderr)
    return rec


def _table(records: list[dict]) -> str:
    lines = ["# Gated PixelCNN: held-out NLL and sampling", "",
             "| data | train / test | model | epochs | test NLL (nats) | bits/dim | train time | "
             "cached sampling | naive sampling | cached / naive |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        s = r["sampling"]
        lines.append(f"| {r['set']} {r['image_size'][0]}x{r['image_size'][1]} binarised | {r['train_images']:,} / "
                     f"{r['test_images']:,} | {r['layers']} layers x {r['channels']} channels | {r['epochs']} | "
                     f"{r['test_nll_nats']:.2f} | {r['test_bits_per_dim']:.4f} | {r['train_seconds']:.0f} s | "
                     f"{s['cached_images_per_s']:.3g} images/s | {s['naive_images_per_s']:.3g} images/s | "
                     f"{s['speedup']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("GENKERNELS_DATA", os.path.join(BENCH_DIR, "..", "..",
                                                                                    "shared", "data", "mnist")))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--sample-batch", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="the digits only, 1 epoch, a small model")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    harness.add_allow_dirty(p)
    args = p.parse_args(argv)
    harness.allow_dirty(args.allow_dirty)
    harness.check_results_dir(args.out)
    if args.quick:
        args.epochs, args.channels, args.layers, args.sample_batch = 1, 8, 2, 4
    meta = harness.run_meta("cpu", args.quick) | {"threads": torch.get_num_threads()}
    records = []
    digits = (torch.as_tensor(load_digits()[0]).reshape(-1, 1, 8, 8) > 0.5).float()
    records.append(run_set("digits", digits[:1500], digits[1500:], args, args.out))
    if not args.quick:
        if os.path.exists(os.path.join(args.data, "t10k-images-idx3-ubyte.gz")):
            x = mnist(args.data)
            records.append(run_set("mnist", x[:9000], x[9000:], args, args.out))
        else:
            print(f"[bench] MNIST not found in {args.data}: only the digits", file=sys.stderr)
    meta["loadavg_end"] = os.getloadavg()[0]
    table = _table(records)
    print(table)
    harness.write_results(args.out, "pixelcnn-mnist" + ("-quick" if args.quick else ""), meta, records, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
