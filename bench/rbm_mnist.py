"""RBMs on binarised MNIST: test log-likelihood by AIS for CD-1, PCD and parallel tempering.

    python bench/rbm_mnist.py [--data DIR] [--epochs 20] [--hidden 500] [--out bench/results] [--allow-dirty]

The MNIST images in --data ($GENKERNELS_DATA, or ../shared/data/mnist; here the 10,000-image
test set) are binarised once, stochastically: one Bernoulli(pixel / 255) draw per pixel
with numpy's generator seeded 0. The first 9,000 images train, the last 1,000 test.
Each method trains ``RBM(784, hidden, seed=0)`` for the same number of epochs (batch 100,
learning rate 0.01, momentum 0.5); PT uses 10 inverse temperatures 1, 0.99, ..., 0.91 (ten
times the Gibbs work of PCD per update): the energies of a 784 x 500 model spread over
tens of nats, so neighbouring temperatures only exchange states when their betas differ by
about 0.01 (a ladder 1, 0.8, ..., 0.2 swapped in 0-9% of the tries at the first pair and
trained no better than PCD). The mean log-likelihood per image of the train and test
rows is -F(x) - log Z with log Z by AIS (base-rate model of the training data, 100 chains,
10,000 linear betas) and its standard error. Writes rbm-mnist.{md,json} and the filters and
samples (PNG) of each model to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
if REPO not in sys.path:
    sys.path.insert(0, REPO)
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

from genkernels import RBM  # noqa: E402
from genkernels.data import load_mnist  # noqa: E402
from genkernels.plot import plot_image_grid  # noqa: E402

import harness as runner  # noqa: E402  bench/harness.py: the clean-tree rule for bench/results

N_TRAIN, N_TEST = 9000, 1000
SEED = 0
FIT = {"batch_size": 100, "learning_rate": 0.01, "momentum": 0.5}
METHODS = {"CD-1": {"method": "cd"}, "PCD-1": {"method": "pcd"},
           "PT-1 (10 temperatures, beta 1 ... 0.91)": {"method": "pt",
                                                       "pt_betas": [1 - 0.01 * i for i in range(10)]}}
AIS = {"n_chains": 100, "n_betas": 10000}
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "mnist")


def binarised_mnist(directory: str) -> np.ndarray:
    images, _ = load_mnist(directory)
    return (np.random.default_rng(SEED).random(images.shape, dtype=np.float32) < images).astype(np.float32)


def run(data: str, epochs: int, hidden: int, out: str, methods=None, learning_rate: float = 0.05,
        model_seed: int = SEED) -> dict:
    fit_args = {**FIT, "learning_rate": learning_rate}
    x = binarised_mnist(data)
    train, test = torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(x[N_TRAIN:N_TRAIN + N_TEST])
    p = train.double().mean(0).clamp(1e-3, 1 - 1e-3)
    base = torch.log(p / (1 - p))
    runner.check_results_dir(out)
    os.makedirs(out, exist_ok=True)
    rows = []
    for name, kw in METHODS.items():
        if methods is not None and kw["method"] not in methods:
            continue
        rbm = RBM(784, hidden, seed=model_seed)
        start = time.perf_counter()
        rbm.fit(train, epochs=epochs, verbose=False, **fit_args, **kw)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        log_z, err = rbm.log_partition_ais(**AIS, base_visible_bias=base, seed=1)
        ais_s = time.perf_counter() - start
        ll = {split: -float(rbm.free_energy(v).double().mean()) - log_z for split, v in
              (("train", train), ("test", test))}
        stem = "rbm-mnist-" + kw["method"]
        shown = min(64, hidden)
        plot_image_grid(rbm.weights.T[:shown].reshape(shown, 28, 28).numpy(), os.path.join(out, stem + "-filters.png"),
                        f"{name}: filters of {shown} hidden units", symmetric=True)
        plot_image_grid(rbm.sample(32, n_steps=1000, seed=2).reshape(32, 28, 28).numpy(),
                        os.path.join(out, stem + "-samples.png"), f"{name}: samples after 1,000 Gibbs steps")
        row = {"method": name, "fit": kw, "fit_seconds": fit_s, "ais_seconds": ais_s, "log_z": log_z,
               "log_z_stderr": err, "train_ll": ll["train"], "test_ll": ll["test"],
               "reconstruction_error": rbm.history[-1]["reconstruction_error"],
               "swap_acceptance": rbm.history[-1].get("swap_acceptance")}
        rows.append(row)
        print(f"{name:24s} fit {fit_s:6.1f} s  log Z {log_z:9.3f} +- {err:.3f}  train {ll['train']:8.2f}  "
              f"test {ll['test']:8.2f} nats", flush=True)
    result = {"n_train": N_TRAIN, "n_test": N_TEST, "hidden": hidden, "epochs": epochs, "fit": fit_args,
              "ais": AIS, "seed": SEED, "model_seed": model_seed, "rows": rows, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "commit": runner.git_commit()}
    runner.check_results_dir(out)
    with open(os.path.join(out, "rbm-mnist.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    lines = [f"# RBM 784 x {hidden} on binarised MNIST: log-likelihood by AIS", "",
             (f"MNIST test-set images binarised once (Bernoulli(pixel / 255), numpy seed {SEED}); the first "
              f"{N_TRAIN:,} train, the last {N_TEST:,} test. RBM(784, {hidden}, seed={model_seed}), {epochs} epochs "
              f"each, batch {FIT['batch_size']}, learning rate {learning_rate}, momentum {FIT['momentum']}, float32, "
              f"{torch.get_num_threads()} CPU threads. log Z by AIS: {AIS['n_chains']} chains, "
              f"{AIS['n_betas']:,} linear betas from the base-rate model of the training images; the error "
              "is the standard error of log Z (the free energies are exact)."), "",
             "| method | train log-lik. (nats) | test log-lik. (nats) | log Z | recon. error | fit time |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['train_ll']:.2f} ± {r['log_z_stderr']:.2f} | {r['test_ll']:.2f} ± "
                     f"{r['log_z_stderr']:.2f} | {r['log_z']:.2f} | {r['reconstruction_error']:.4f} | "
                     f"{r['fit_seconds']:.1f} s |")
    pt = next((r for r in rows if r["swap_acceptance"]), None)
    if pt is not None:
        lines += ["", "PT swap acceptance of neighbouring temperatures (last epoch): "
                  + ", ".join(f"{a:.2f}" for a in pt["swap_acceptance"]) + "."]
    lines += ["", "Filters and samples: `rbm-mnist-<cd|pcd|pt>-filters.png`, `rbm-mnist-<cd|pcd|pt>-samples.png`."]
    with open(os.path.join(out, "rbm-mnist.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("GENKERNELS_DATA") or DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    parser.add_argument("--learning-rate", type=float, default=FIT["learning_rate"])
    parser.add_argument("--seed", type=int, default=SEED, help="the models' seed (the binarisation keeps seed 0)")
    parser.add_argument("--methods", nargs="+", choices=[kw["method"] for kw in METHODS.values()],
                        default=None, help="a subset of the methods (default: all)")
    runner.add_allow_dirty(parser)
    args = parser.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    runner.check_results_dir(args.out)
    try:
        run(args.data, args.epochs, args.hidden, args.out, args.methods, args.learning_rate, args.seed)
    except FileNotFoundError as exc:
        print(f"rbm_mnist: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
