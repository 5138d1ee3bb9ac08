"""A CNN whose 100 channels are gated by a SOM (5 active per image) against a 5-channel CNN
and a dense 100-channel CNN on MNIST: test accuracy and training time per epoch.

    python bench/som_mask_mnist.py [--data DIR] [--epochs 5] [--seeds 0 1 2] [--out bench/results] [--allow-dirty]

Data: the MNIST images in --data ($GENKERNELS_DATA, or ../shared/data/mnist; here the
10,000-image test set): the first 9,000 train, the last 1,000 test. Exits cleanly (status
0, a message) when the files are absent.

The three networks share everything but the first layer: conv 5x5 (padding 2) + ReLU,
max-pool 2, max-pool 2, a linear classifier on the (channels, 7, 7) maps.

* ``som-mask 100 (5 active)``: genkernels.SOMMaskConv2d(1, 100, 5, winner="image", top_k=5):
  a 10 x 10 SOM on the whole images picks each image's 5 channels, the winner and its 4
  nearest lattice neighbours, scaled by the Gaussian mask (sigma_forward 1); the kernels
  compute only those channels, forward and backward (the classifier still reads 100 x 7 x
  7 inputs, 95% of them zero). The SOM first organises in one pass over the training
  images (training-mode forwards without gradients; batch rule, sigma_organize 2, learning
  rate 0.5), then goes on learning slowly while the network trains (sigma_organize 1,
  learning rate 0.02): a SOM that keeps moving fast reassigns the images' channels under
  the network (with learning rate 0.5 throughout, 5% of the test images kept their winner
  over three epochs, and the test accuracy after them was 0.754 instead of 0.861, seed 0);
* ``cnn 5``: torch.nn.Conv2d(1, 5, 5) -- the same active width, no SOM;
* ``cnn 100``: torch.nn.Conv2d(1, 100, 5) -- every channel active.

Adam (learning rate 1e-3), batch 64, the same epochs and shuffles for each; float32, CPU.
Time per epoch: on a shared machine the training runs' wall times (recorded in the JSON)
swing with the neighbours' load, so the table's figure is timed apart, on fresh models of
the three kinds side by side: rounds of TIMED_STEPS training steps (the SOM's training
included) of each model in turn (harness.interleaved), the median round scaled to the
epoch's 141 steps. Writes ``som-mask-mnist.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402

import genkernels  # noqa: E402
from genkernels.data import load_mnist  # noqa: E402

N_TRAIN, N_TEST = 9000, 1000
CHANNELS, ACTIVE, KERNEL = 100, 5, 5
BATCH, LR = 64, 1e-3
SOM = {"sigma_organize": 2.0, "sigma_forward": 1.0, "learning_rate": 0.5}  # the organising pass
SOM_TRAINING = {"sigma_organize": 1.0, "learning_rate": 0.02}              # while the network trains
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "mnist")
MODELS = ("som-mask 100 (5 active)", "cnn 5", "cnn 100")
TIMED_STEPS, TIMED_ROUNDS = 20, 7


def build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == MODELS[0]:
        first = genkernels.SOMMaskConv2d(1, CHANNELS, KERNEL, padding=KERNEL // 2, winner="image",
                                         input_size=(28, 28), top_k=ACTIVE, seed=seed, **SOM)
        width = CHANNELS
    else:
        width = ACTIVE if name == MODELS[1] else CHANNELS
        first = nn.Sequential(nn.Conv2d(1, width, KERNEL, padding=KERNEL // 2), nn.ReLU())
    return nn.Sequential(first, nn.MaxPool2d(2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(width * 7 * 7, 10))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum()) for i in range(0, len(x), 500))
    return correct / len(x)


def active_channels(model: nn.Module, x: torch.Tensor) -> float:
    """Mean number of channels of the first layer with a non-zero output per image."""
    model.eval()
    with torch.no_grad():
        maps = model[0](x[:500])
    return float((maps != 0).flatten(2).any(2).sum(1).double().mean())


def organize(model: nn.Module, x: torch.Tensor, g: torch.Generator) -> float:
    """One pass of training-mode forwards without gradients: the SOM alone learns (the
    organising phase before the network trains); returns its seconds."""
    model.train()
    start = time.perf_counter()
    with torch.no_grad():
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            model[0](x[order[i:i + BATCH]])
    return time.perf_counter() - start


def train(name: str, seed: int, epochs: int, data: tuple) -> dict:
    xtr, ytr, xte, yte = data
    model = build(name, seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)
    organize_s = 0.0
    if name == MODELS[0]:
        organize_s = organize(model, xtr, g)
        model[0].sigma_organize = SOM_TRAINING["sigma_organize"]
        model[0].learning_rate = SOM_TRAINING["learning_rate"]
    epoch_s, losses = [], []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=g)
        start = time.perf_counter()
        total = 0.0
        for i in range(0, len(xtr), BATCH):
            idx = order[i:i + BATCH]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        epoch_s.append(time.perf_counter() - start)
        losses.append(total / len(xtr))
    row = {"model": name, "seed": seed, "test_accuracy": accuracy(model, xte, yte),
           "train_accuracy": accuracy(model, xtr, ytr), "train_loss": losses, "epoch_seconds": epoch_s,
           "seconds_per_epoch": statistics.mean(epoch_s), "organize_seconds": organize_s}
    if name == MODELS[0]:
        row["active_channels"] = active_channels(model, xte)
    print(f"{name:24s} seed {seed}: test {row['test_accuracy']:.4f}  train {row['train_accuracy']:.4f}  "
          f"{row['seconds_per_epoch']:.1f} s/epoch", file=sys.stderr, flush=True)
    return row


def epoch_seconds(models, data: tuple) -> dict:
    """name -> seconds per training epoch, from interleaved rounds of TIMED_STEPS steps."""
    xtr, ytr = data[:2]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randperm(len(xtr), generator=g)[:BATCH] for _ in range(TIMED_STEPS)]
    steps = []
    for name in models:
        model = build(name, 0)
        if name == MODELS[0]:
            organize(model, xtr[:2000], g)
            model[0].sigma_organize = SOM_TRAINING["sigma_organize"]
            model[0].learning_rate = SOM_TRAINING["learning_rate"]
        opt = torch.optim.Adam(model.parameters(), lr=LR)

        def step(model=model, opt=opt):
            model.train()
            for idx in batches:
                loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        steps.append(step)
    times, _ = harness.interleaved(steps, "cpu", TIMED_ROUNDS)
    per_epoch = -(-len(xtr) // BATCH) / TIMED_STEPS
    return {name: statistics.median(times[:, i]) * per_epoch for i, name in enumerate(models)}


def run(directory: str, epochs: int, seeds: list[int], out: str, models=MODELS) -> dict:
    images, labels = load_mnist(directory)
    x = torch.from_numpy(images).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels)
    data = (x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:N_TRAIN + N_TEST], y[N_TRAIN:N_TRAIN + N_TEST])
    harness.check_results_dir(out)
    rows = [train(name, seed, epochs, data) for seed in seeds for name in models]
    timed = epoch_seconds(models, data)
    lines = [f"# SOM-masked CNN on MNIST: {CHANNELS} channels, {ACTIVE} active per image", "",
             (f"The MNIST test set's first {N_TRAIN:,} images train, the last {N_TEST:,} test. Conv {KERNEL}x{KERNEL} "
              f"(padding {KERNEL // 2}) + ReLU, max-pool 2 twice, linear classifier; Adam {LR}, batch {BATCH}, "
              f"{epochs} epochs, seeds {', '.join(map(str, seeds))}; float32, {torch.get_num_threads()} CPU threads. "
              f"som-mask: genkernels.SOMMaskConv2d(winner='image', top_k={ACTIVE}, "
              + ", ".join(f"{k}={v}" for k, v in SOM.items()) + ") on the cpu backend, organised in one pass "
              "over the training images, then sigma_organize=1.0, learning_rate=0.02 while the network trains."), "",
             "| model | test accuracy (mean ± sd over seeds) | per seed | train accuracy | time per epoch "
             "(interleaved) |",
             "|---|---:|---|---:|---:|"]
    summary = {}
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        acc = [r["test_accuracy"] for r in mine]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        secs = timed[name]
        summary[name] = {"test_accuracy_mean": statistics.mean(acc), "test_accuracy_sd": sd,
                         "seconds_per_epoch": secs,
                         "training_run_seconds_per_epoch": statistics.mean(r["seconds_per_epoch"] for r in mine)}
        lines.append(f"| {name} | {statistics.mean(acc):.4f} ± {sd:.4f} | {', '.join(f'{a:.4f}' for a in acc)} | "
                     f"{statistics.mean(r['train_accuracy'] for r in mine):.4f} | {secs:.2f} s |")
    active = [r["active_channels"] for r in rows if "active_channels" in r]
    if active:
        organize_s = statistics.mean(r["organize_seconds"] for r in rows if r["model"] == MODELS[0])
        lines += ["", f"som-mask: channels with a non-zero output per test image {statistics.mean(active):.2f} of "
                  f"{CHANNELS}; before training, one organising pass of the SOM alone over the training images "
                  f"(training-mode forwards of the layer without gradients) took {organize_s:.2f} s."]
    lines += ["", f"Time per epoch: {TIMED_ROUNDS} interleaved rounds of {TIMED_STEPS} training steps of each "
              "model (fresh models; the SOM organised on 2,000 images first), the median round scaled to "
              f"{-(-N_TRAIN // BATCH)} steps. The training runs' own mean epoch times (JSON, under the "
              "neighbours' varying load): "
              + ", ".join(f"{name} {summary[name]['training_run_seconds_per_epoch']:.1f} s" for name in models) + "."]
    table = "\n".join(lines) + "\n"
    print(table)
    meta = {"suite": "som-mask-mnist", "n_train": N_TRAIN, "n_test": N_TEST, "epochs": epochs, "seeds": seeds,
            "batch": BATCH, "lr": LR, "som": SOM, "som_training": SOM_TRAINING, "channels": CHANNELS, "active": ACTIVE,
            "kernel": KERNEL,
            "summary": summary, "versions": harness.versions(), "commit": harness.git_commit(),
            "machine": harness.machine_name("cpu")}
    harness.write_results(out, "som-mask-mnist", meta, rows, table)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("GENKERNELS_DATA") or DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    parser.add_argument("--models", nargs="+", choices=range(len(MODELS)), type=int, default=None,
                        help="a subset of the models, by index (default: all)")
    harness.add_allow_dirty(parser)
    args = parser.parse_args(argv)
    harness.allow_dirty(args.allow_dirty)
    harness.check_results_dir(args.out)
    try:
        load_mnist(args.data)
    except FileNotFoundError as exc:
        print(f"som_mask_mnist: skipped, no MNIST: {exc}", file=sys.stderr)
        return 0
    run(args.data, args.epochs, args.seeds, args.out,
        MODELS if args.models is None else tuple(MODELS[i] for i in args.models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
