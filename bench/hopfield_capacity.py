"""Capacity of a Hopfield network of N = 1000 units, per storage rule: the mean overlap
between each stored pattern and the state that asynchronous recall reaches from it (and
from a copy with 10% of its units flipped), against the load alpha = P / N.

    python bench/hopfield_capacity.py [--n 1000] [--out bench/results] [--allow-dirty]

Writes ``hopfield-capacity.{json,md,png}``. The Hebbian curve falls near alpha = 0.138
(Amit, Gutfreund and Sompolinsky); the pseudo-inverse rule keeps every pattern a fixed
point up to alpha < 1 and its basins shrink as alpha grows. Storkey's rule is measured
up to alpha = 0.3 only (its storage is P sequential N x N updates).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

from genkernels import Hopfield  # noqa: E402
from genkernels.plot import _plt, _save  # noqa: E402

import harness as runner  # noqa: E402  bench/harness.py: the clean-tree rule for bench/results

ALPHAS = (0.02, 0.05, 0.08, 0.10, 0.12, 0.14, 0.16, 0.20, 0.25, 0.30, 0.40, 0.50)
RULES = ("hebbian", "storkey", "pseudoinverse")
NOISE = (0.0, 0.10)


def overlap(n, alpha, rule, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = max(1, round(alpha * n))
    patterns = torch.where(torch.rand(p, n, generator=g) < 0.5, -1.0, 1.0)
    probes = patterns.clone()
    if noise:
        flip = torch.rand(p, n, generator=g) < noise
        probes[flip] = -probes[flip]
    net = Hopfield(n, seed=seed).store(patterns, rule)
    states, _ = net.recall(probes, max_sweeps=100)
    return float((states * patterns).mean())


def run(n=1000, out=os.path.join(BENCH_DIR, "results"), alphas=ALPHAS, rules=RULES):
    runner.check_results_dir(out)
    rows = []
    for rule in rules:
        for noise in NOISE:
            for alpha in alphas:
                if rule == "storkey" and alpha > 0.3:
                    continue  # O(P N^2) storage in Python loops of N x N products: slow
                m = overlap(n, alpha, rule, noise)
                rows.append({"rule": rule, "noise": noise, "alpha": alpha, "overlap": m})
                print(f"{rule:14s} noise {noise:.2f} alpha {alpha:.2f}: overlap {m:.4f}", flush=True)
    runner.check_results_dir(out)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, "hopfield-capacity")
    with open(stem + ".json", "w") as fh:
        json.dump({"n": n, "rows": rows, "torch": torch.__version__}, fh, indent=1)
    header = "| alpha | " + " | ".join(f"{r} ({int(z * 100)}% noise)" for r in rules for z in NOISE) + " |"
    lines = [f"# Hopfield capacity, N = {n} (asynchronous recall, random order)", "",
             "Mean overlap of the recalled state with the stored pattern.", "", header,
             "|---:|" + "---:|" * (len(rules) * len(NOISE))]
    for alpha in alphas:
        cells = []
        for rule in rules:
            for z in NOISE:
                hit = [r["overlap"] for r in rows if r["rule"] == rule and r["noise"] == z and r["alpha"] == alpha]
                cells.append(f"{hit[0]:.3f}" if hit else "-")
        lines.append(f"| {alpha:.2f} | " + " | ".join(cells) + " |")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for rule in rules:
        for z, style in zip(NOISE, ("-", "--")):
            pts = [(r["alpha"], r["overlap"]) for r in rows if r["rule"] == rule and r["noise"] == z]
            ax.plot(*zip(*pts), style, marker="o", ms=3, label=f"{rule}, {int(z * 100)}% flipped")
    ax.axvline(0.138, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("load alpha = P / N")
    ax.set_ylabel("mean overlap after recall")
    ax.set_title(f"Hopfield capacity, N = {n}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, stem + ".png")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    runner.add_allow_dirty(p)
    args = p.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    run(args.n, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
