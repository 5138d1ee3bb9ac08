"""The soft SOM inside a network, on the two-arm spiral: test accuracy of a 2-32-32-2 MLP
alone, of the same MLP on the outputs of a 10x10 SoftSOM used as preprocessing (trained
end to end with it; or with its embeddings organised by the SOM batch rule over the first
100 training steps, train_embedding="som"), and of the MLP with the SoftSOM interposed between its hidden layers
(2-32, SoftSOM(10x10, 32) -> grid coordinates, 2-32-2). Five seeds each, mean and standard
deviation.

    python bench/softsom_spirals.py [--quick] [--out bench/results] [--allow-dirty]

Data: genkernels.data.spirals(2000, arms=2, noise=0.2, turns=2, seed=0), the first 1,500
points for training and the last 500 for testing. Full-batch Adam, the same epochs and
learning rate for every model. Writes ``softsom-spirals.{json,md}``.
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
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import genkernels  # noqa: E402
from genkernels.data import spirals  # noqa: E402

import harness  # noqa: E402

N, N_TRAIN, NOISE, TURNS = 2000, 1500, 0.2, 2.0
SEEDS = (0, 1, 2, 3, 4)
EPOCHS = {False: 1500, True: 150}
LR = 1e-2
GRID = (10, 10)
HIDDEN = 32
BETA = 4.0
SOM_STEPS = 100  # training forwards the SOM-organised map's schedule runs over


def mlp(d_in: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, 2))


def build(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        return mlp(2)
    if kind == "softsom+mlp":
        return nn.Sequential(genkernels.SoftSOM(GRID, 2, beta=BETA, learnable_beta=True, seed=seed), mlp(2))
    if kind == "som-organised softsom+mlp":
        return nn.Sequential(genkernels.SoftSOM(GRID, 2, beta=BETA, learnable_beta=True, seed=seed,
                                                train_embedding="som", som_steps=SOM_STEPS), mlp(2))
    if kind == "mlp with softsom inside":
        return nn.Sequential(nn.Linear(2, HIDDEN), nn.ReLU(),
                             genkernels.SoftSOM(GRID, HIDDEN, beta=BETA, learnable_beta=True, seed=seed),
                             nn.Linear(2, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))
    raise ValueError(kind)


def train(model: nn.Module, x, y, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()


def run(quick: bool, out: str) -> dict:
    harness.check_results_dir(out)
    x, y = (torch.from_numpy(a) for a in spirals(N, 2, NOISE, TURNS, seed=0))
    x_train, y_train, x_test, y_test = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    kinds = ("mlp", "softsom+mlp", "som-organised softsom+mlp", "mlp with softsom inside")
    rows = []
    for kind in kinds:
        accs, seconds = [], []
        for seed in SEEDS[: 2 if quick else None]:
            model = build(kind, seed)
            start = time.perf_counter()
            train(model, x_train, y_train, EPOCHS[quick])
            seconds.append(time.perf_counter() - start)
            with torch.no_grad():
                accs.append(float((model(x_test).argmax(1) == y_test).float().mean()))
        row = {"model": kind, "accuracies": accs, "mean": statistics.mean(accs),
               "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "train_seconds": statistics.mean(seconds)}
        rows.append(row)
        print(f"{kind:26s} test accuracy {row['mean']:.4f} +- {row['std']:.4f} ({row['train_seconds']:.1f} s)",
              flush=True)
    meta = {"benchmark": "softsom-spirals", **harness.versions(), "machine": harness.machine_name("cpu"),
            "commit": harness.git_commit(), "n": N, "n_train": N_TRAIN, "noise": NOISE, "turns": TURNS,
            "seeds": list(SEEDS[: 2 if quick else None]), "epochs": EPOCHS[quick], "lr": LR, "grid": list(GRID),
            "hidden": HIDDEN, "beta_init": BETA, "som_steps": SOM_STEPS, "quick": quick}
    lines = ["# The soft SOM inside a network: two-arm spirals", "",
             f"`genkernels.data.spirals({N}, arms=2, noise={NOISE}, turns={TURNS:g}, seed=0)`: {N_TRAIN} training "
             f"and {N - N_TRAIN} test points. Full-batch Adam (lr {LR:g}), {EPOCHS[quick]} epochs, seeds "
             f"{', '.join(map(str, meta['seeds']))}; SoftSOM {GRID[0]}x{GRID[1]}, values = grid coordinates, "
             f"beta learned from {BETA:g}; the SOM-organised map: train_embedding='som', "
             f"som_steps={SOM_STEPS}. Machine: {meta['machine']}.", "",
             "| model | test accuracy (mean ± std) | train time per seed |", "|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['mean']:.4f} ± {r['std']:.4f} | {r['train_seconds']:.1f} s |" for r in rows]
    harness.write_results(out, "softsom-spirals" + ("-quick" if quick else ""), meta, rows, "\n".join(lines))
    return {"meta": meta, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two seeds, 150 epochs (a smoke test)")
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    harness.add_allow_dirty(parser)
    args = parser.parse_args(argv)
    harness.allow_dirty(args.allow_dirty)
    run(args.quick, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
