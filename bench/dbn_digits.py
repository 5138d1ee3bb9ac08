"""A deep belief network's features on scikit-learn's 8x8 digits: logistic regression on
the raw pixels against logistic regression on the DBN's top-level probabilities (and on
its first layer's), one fixed stratified train/test split, fixed seeds.

    python bench/dbn_digits.py [--out bench/results] [--allow-dirty]

Writes ``dbn-digits.{json,md}``. Runs in well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

from genkernels import DBN  # noqa: E402
from genkernels.data import load_digits  # noqa: E402

import harness as runner  # noqa: E402  bench/harness.py: the clean-tree rule for bench/results

LAYER_SIZES = [64, 128, 64]
FIT = {"epochs": 40, "batch_size": 10, "method": "cd", "k": 1, "learning_rate": 0.1}
SEED = 0
TEST_SIZE = 0.25
C = 100.0  # inverse L2 strength of every logistic regression (the same for all feature sets)


def run(out: str | None = None):
    out = out or os.path.join(BENCH_DIR, "results")
    runner.check_results_dir(out)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    start = time.perf_counter()
    dbn = DBN(LAYER_SIZES, seed=SEED).fit(x_train, **FIT)
    fit_s = time.perf_counter() - start

    def accuracy(features):
        clf = LogisticRegression(C=C, max_iter=5000).fit(features(x_train), y_train)
        return float(clf.score(features(x_test), y_test))

    rows = [
        {"features": "raw pixels", "dim": LAYER_SIZES[0], "accuracy": accuracy(lambda a: a)},
        {"features": f"DBN layer 1 p(h | x) ({LAYER_SIZES[0]}-{LAYER_SIZES[1]})", "dim": LAYER_SIZES[1],
         "accuracy": accuracy(lambda a: dbn.transform(a, layer=0).numpy())},
        {"features": f"DBN top p(h | x) ({'-'.join(map(str, LAYER_SIZES))})", "dim": LAYER_SIZES[-1],
         "accuracy": accuracy(lambda a: dbn.transform(a).numpy())},
    ]
    recon = [layer.history[-1]["reconstruction_error"] for layer in dbn.layers]
    for row in rows:
        print(f"{row['features']:40s} dim {row['dim']:4d}: test accuracy {row['accuracy']:.4f}", flush=True)
    runner.check_results_dir(out)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, "dbn-digits")
    result = {"layer_sizes": LAYER_SIZES, "fit": FIT, "seed": SEED, "test_size": TEST_SIZE, "C": C,
              "n_train": len(y_train), "n_test": len(y_test), "fit_seconds": fit_s,
              "reconstruction_error_per_layer": recon, "rows": rows, "torch": torch.__version__}
    with open(stem + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    best = max(rows, key=lambda r: r["accuracy"])
    lines = [f"# DBN features on 8x8 digits (DBN {LAYER_SIZES})", "",
             (f"scikit-learn's digits scaled to [0, 1], stratified split: {len(y_train)} train / {len(y_test)} "
             f"test rows (random_state={SEED}). DBN seed {SEED}, greedy CD-{FIT['k']}: {FIT['epochs']} epochs "
             f"per layer, batch {FIT['batch_size']}, learning rate {FIT['learning_rate']} "
             f"({fit_s:.1f} s on CPU). Logistic regression (C = {C:g}, lbfgs) on each feature set."), "",
             "| features | dim | test accuracy |", "|---|---:|---:|"]
    lines += [f"| {r['features']} | {r['dim']} | {r['accuracy']:.4f} |" for r in rows]
    lines += ["", f"Best: {best['features']} ({best['accuracy']:.4f}). Final reconstruction error per layer "
              f"(mean squared, on the first 1,000 training inputs of the layer): "
              + ", ".join(f"{e:.4f}" for e in recon) + "."]
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    runner.add_allow_dirty(parser)
    args = parser.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    run(args.out)


if __name__ == "__main__":
    main()
