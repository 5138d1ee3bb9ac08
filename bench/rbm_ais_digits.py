"""AIS against exact enumeration on a trained RBM: 64 visible x 16 hidden units on the
binarised 8x8 digits.

    python bench/rbm_ais_digits.py [--epochs 50] [--n-chains 100] [--n-betas 10000] [--out bench/results]
                                   [--allow-dirty]

The digits (scikit-learn's 1,797 images scaled to [0, 1]) are binarised once,
stochastically (Bernoulli(pixel), torch generator seed 0), as in ``genkernels demo``; the
even-numbered rows train RBM(64, 16, seed=0) by persistent CD-1 (batch 20, learning rate
0.05, float32). Its log partition function is then estimated by ``log_partition_ais``
(defaults: 100 chains x 10,000 linear betas, seed 0) from two base models, the uniform one
(zero visible biases) and the base-rate one of the training rows (logit of the pixel means
clipped to [0.01, 0.99]), and computed exactly by enumerating the 2^16 hidden states
(``log_partition_exact``). Results: ``<out>/rbm-ais-digits.{json,md}`` (default
bench/results/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for path in (BENCH_DIR, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402

import harness as runner  # noqa: E402  bench/harness.py: versions, commit, the clean-tree rule
from genkernels import RBM  # noqa: E402
from genkernels.data import load_digits  # noqa: E402

N_VISIBLE, N_HIDDEN, SEED = 64, 16, 0
FIT = {"batch_size": 20, "method": "pcd", "learning_rate": 0.05}


def binarised_digits() -> torch.Tensor:
    x, _ = load_digits()
    data = torch.as_tensor(x)
    u = torch.rand(data.shape, generator=torch.Generator().manual_seed(SEED))
    return (u < data).float()


def base_rate(x: torch.Tensor) -> torch.Tensor:
    p = x.mean(0).clamp(0.01, 0.99)
    return torch.log(p / (1 - p))


def run(out: str, epochs: int = 50, n_chains: int = 100, n_betas: int = 10_000) -> dict:
    runner.check_results_dir(out)
    meta = {"created": datetime.datetime.now().isoformat(timespec="seconds"), "commit": runner.git_commit(),
            "machine": runner.machine_name("cpu"), "versions": runner.versions()}
    train = binarised_digits()[::2]
    rbm = RBM(N_VISIBLE, N_HIDDEN, seed=SEED)
    start = time.perf_counter()
    rbm.fit(train, epochs=epochs, verbose=False, **FIT)
    fit_s = time.perf_counter() - start
    exact = rbm.log_partition_exact()
    rows = []
    for base, kw in (("uniform", {}), ("base-rate", {"base_visible_bias": base_rate(train)})):
        start = time.perf_counter()
        est, se = rbm.log_partition_ais(n_chains=n_chains, n_betas=n_betas, seed=0, **kw)
        rows.append({"base": base, "log_z": est, "stderr": se, "error": est - exact,
                     "error_in_stderr": (est - exact) / se, "seconds": time.perf_counter() - start})
        print(f"{base:>9} base: log Z {est:.4f} +- {se:.4f} (exact {exact:.4f}, off by {est - exact:+.4f})",
              flush=True)
    result = {**meta, "n_visible": N_VISIBLE, "n_hidden": N_HIDDEN, "seed": SEED, "n_train": train.shape[0],
              "epochs": epochs, "fit": FIT, "fit_seconds": fit_s, "n_chains": n_chains, "n_betas": n_betas,
              "exact_log_z": exact, "rows": rows}
    runner.check_results_dir(out)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, "rbm-ais-digits")
    with open(stem + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    lines = [f"# AIS vs exact log Z: RBM {N_VISIBLE} x {N_HIDDEN} on binarised 8x8 digits", "",
             f"{meta['created']}, commit `{meta['commit']}`, {meta['machine']}, torch {meta['versions']['torch']}.",
             (f"Digits binarised once (Bernoulli(pixel), seed {SEED}); RBM({N_VISIBLE}, {N_HIDDEN}, seed={SEED}) "
              f"trained on the {train.shape[0]:,} even-numbered rows: {epochs} epochs of persistent CD-1, batch "
              f"{FIT['batch_size']}, learning rate {FIT['learning_rate']} ({fit_s:.1f} s). "
              f"`log_partition_ais(n_chains={n_chains}, n_betas={n_betas}, seed=0)`; exact log Z by "
              f"enumerating the 2^{N_HIDDEN} hidden states: {exact:.4f}."), "",
             "| base model | AIS log Z | standard error | AIS - exact | in standard errors | time |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['base']} | {r['log_z']:.4f} | {r['stderr']:.4f} | {r['error']:+.4f} | "
              f"{r['error_in_stderr']:+.2f} | {r['seconds']:.1f} s |" for r in rows]
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {stem}.{{json,md}}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--n-chains", type=int, default=100)
    p.add_argument("--n-betas", type=int, default=10_000)
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    runner.add_allow_dirty(p)
    args = p.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    run(args.out, args.epochs, args.n_chains, args.n_betas)
    return 0


if __name__ == "__main__":
    sys.exit(main())
