"""scikit-learn compatibility benchmark: ``genkernels.compat.BernoulliRBM.fit`` against
``sklearn.neural_network.BernoulliRBM.fit`` on the same array, same parameters.

    python bench/bench_compat_rbm.py [--quick] [--out DIR] [--data DIR] [--allow-dirty]
    python bench/bench_compat_rbm.py --recon-states K [--recon-batch 100] [--quick] [--out DIR] [--data DIR]
    pytest bench/bench_compat_rbm.py --benchmark-only [--bench-quick] [--data DIR]
        (test_compat_bernoulli_rbm_fit: genkernels' estimator alone, pytest-benchmark's timing)

Workload: 5,000 rows x 784 features in float64 (scikit-learn's default dtype path): the
first 5,000 MNIST images as grey levels in [0, 1] when MNIST is found in --data /
$GENKERNELS_DATA / ../shared/data/mnist, else 5,000 random binary rows of density 0.2
(seed 0); --quick: 500 rows. Both estimators get ``n_components=256, learning_rate=0.1,
n_iter=1, random_state=0`` and ``batch_size`` 100 or 10: one pass of persistent CD-1, the
whole ``fit`` (validation, initialisation, training) on CPU.

Every case runs once as a warm-up, then the cases run in interleaved rounds (each round
times every case once, after a short idle pause: thread pools that spin after a call
otherwise slow the next one), so that a change of load on a shared machine hits them
alike. ``x faster`` = the median over rounds of scikit-learn's time / genkernels' time at
the same batch size in the same round; ``best`` = the fastest round and ``x faster (best)``
the ratio of the fastest rounds (on a machine shared with other jobs, rounds that overlap
another job's multi-threaded work can take 10-30x longer: the fastest round is what the
machine does alone); recon = mean-field reconstruction MSE of the
fitted model on the first 1,000 rows (bench_rbm.reconstruction_error, one formula for
both). Results go to ``<out>/<machine>-compat-rbm.{json,md}`` (``-quick`` added with
--quick; default bench/results/).

``--recon-states K`` times nothing: it fits both estimators once for every random_state
0 .. K-1 at batch size ``--recon-batch`` (default 100) on the same workload and records each
fitted model's reconstruction error (the formula above), with the mean, the standard
deviation (ddof=1) and the range per estimator, in ``<out>/<machine>-compat-rbm-recon.{json,md}``
(``-quick`` added with --quick): whether the two agree in distribution, since their Gibbs
samples come from different random streams.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for path in (BENCH_DIR, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import harness as runner  # noqa: E402  bench/harness.py: machine name, versions, timing, results writer
from bench_rbm import data_dir, reconstruction_error  # noqa: E402

ROWS = {False: 5_000, True: 500}
N_FEATURES, N_COMPONENTS, LEARNING_RATE = 784, 256, 0.1
BATCH_SIZES = (100, 10)
ROUNDS = {False: 7, True: 2}
PAUSE_S = {False: 1.0, True: 0.1}


def load_data(quick: bool, data: str | None) -> tuple[str, np.ndarray]:
    """(name, (rows, 784) float64 in [0, 1])."""
    rows = ROWS[quick]
    try:
        from genkernels.data import load_mnist
        images, _ = load_mnist(data_dir(data))
    except FileNotFoundError as exc:
        print(f"[bench] MNIST not found ({exc}): random binary rows instead", file=sys.stderr)
        rng = np.random.default_rng(0)
        return "random", (rng.random((rows, N_FEATURES)) < 0.2).astype(np.float64)
    return "mnist", images[:rows].astype(np.float64)


def make_fit(impl: str, x: np.ndarray, batch_size: int, random_state: int = 0):
    if impl == "genkernels":
        from genkernels.compat import BernoulliRBM
    else:
        from sklearn.neural_network import BernoulliRBM

    def fit():
        return BernoulliRBM(n_components=N_COMPONENTS, learning_rate=LEARNING_RATE, batch_size=batch_size,
                            n_iter=1, random_state=random_state).fit(x)
    return fit


def recon_over_states(x: np.ndarray, states: int, batch_size: int, meta: dict) -> list[dict]:
    """One record per estimator: the reconstruction error of a fit for every random_state
    in 0 .. states-1, with its mean, standard deviation (ddof=1) and range."""
    records = []
    for impl in ("genkernels", "sklearn"):
        errors = []
        for random_state in range(states):
            errors.append(reconstruction_error(make_fit(impl, x, batch_size, random_state)(), x))
            print(f"[bench] compat recon {impl} random_state {random_state}: {errors[-1]:.5f}",
                  file=sys.stderr, flush=True)
        e = np.asarray(errors)
        records.append({
            "suite": "compat_rbm_recon", "workload": meta["workload"], "impl": impl, "device": "cpu",
            "dtype": "float64", "shapes": {"n": x.shape[0], "n_features": N_FEATURES,
                                           "n_components": N_COMPONENTS, "batch_size": batch_size},
            "n_iter": 1, "learning_rate": LEARNING_RATE, "random_states": list(range(states)),
            "recon": errors, "recon_mean": float(e.mean()),
            "recon_std": float(e.std(ddof=1)) if states > 1 else 0.0,
            "recon_min": float(e.min()), "recon_max": float(e.max()),
            "versions": meta["versions"], "commit": meta["commit"]})
    return records


def recon_markdown(records: list[dict], meta: dict) -> str:
    s = records[0]["shapes"]
    states = records[0]["random_states"]
    lines = [f"# scikit-learn BernoulliRBM compatibility, reconstruction errors: {meta['machine']} (cpu)", "",
             f"{meta['created']}, commit `{meta['commit']}`, "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v is not None) + ".",
             (f"`BernoulliRBM(n_components={s['n_components']}, learning_rate={LEARNING_RATE}, "
              f"batch_size={s['batch_size']}, n_iter=1, random_state=r).fit(x)` for r = {states[0]} .. {states[-1]}, "
              f"x = {meta['workload']} {s['n']:,} x {s['n_features']} float64; recon = mean-field "
              "reconstruction MSE of the fitted model on the first 1,000 rows; std with ddof=1."
              + (" Quick mode: shrunken workload." if meta["quick"] else "")), "",
             "| impl | " + " | ".join(f"r={r}" for r in states) + " | mean | std | min | max |",
             "|---|" + "---:|" * (len(states) + 4)]
    for r in records:
        lines.append(f"| {r['impl']} | " + " | ".join(f"{e:.4f}" for e in r["recon"])
                     + f" | {r['recon_mean']:.4f} | {r['recon_std']:.4f} | {r['recon_min']:.4f} "
                     f"| {r['recon_max']:.4f} |")
    return "\n".join(lines) + "\n"


def measure(x: np.ndarray, quick: bool, meta: dict) -> list[dict]:
    """Every (impl, batch size) case: a warm-up, then interleaved timed rounds."""
    cases = [(impl, batch) for batch in BATCH_SIZES for impl in ("genkernels", "sklearn")]
    rounds = ROUNDS[quick]

    def progress(r, row):
        print(f"[bench] compat round {r + 1}/{rounds}: "
              + ", ".join(f"{impl} batch {batch} {t * 1e3:.1f} ms" for (impl, batch), t in zip(cases, row)),
              file=sys.stderr, flush=True)
    times, models = runner.interleaved([make_fit(impl, x, batch) for impl, batch in cases], "cpu", rounds,
                                       pause_s=PAUSE_S[quick], progress=progress)
    records = []
    for i, (impl, batch) in enumerate(cases):
        sklearn_times = times[:, cases.index(("sklearn", batch))]
        q1, med, q3 = np.percentile(times[:, i], [25, 50, 75])
        records.append({
            "suite": "compat_rbm", "workload": meta["workload"], "impl": impl, "device": "cpu",
            "dtype": "float64", "shapes": {"n": x.shape[0], "n_features": N_FEATURES,
                                           "n_components": N_COMPONENTS, "batch_size": batch},
            "n_iter": 1, "median_s": float(med), "iqr_s": float(q3 - q1), "rounds": rounds,
            "times_s": times[:, i].tolist(), "recon": reconstruction_error(models[i], x),
            "min_s": float(times[:, i].min()),
            "x_faster_than_sklearn": float(np.median(sklearn_times / times[:, i])),
            "x_faster_than_sklearn_best": float(sklearn_times.min() / times[:, i].min()),
            "versions": meta["versions"], "commit": meta["commit"]})
    return records


def markdown(records: list[dict], meta: dict) -> str:
    s = records[0]["shapes"]
    lines = [f"# scikit-learn BernoulliRBM compatibility: {meta['machine']} (cpu)", "",
             f"{meta['created']}, commit `{meta['commit']}`, "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v is not None) + ".",
             (f"Load average (1 min) {meta['load_avg_start']} at the start, {meta['load_avg_end']} at "
              f"the end, on {os.cpu_count()} cores."),
             (f"`BernoulliRBM(n_components={s['n_components']}, learning_rate={LEARNING_RATE}, "
              f"batch_size=..., n_iter=1, random_state=0).fit(x)`, x = {meta['workload']} "
              f"{s['n']:,} x {s['n_features']} float64; genkernels = `genkernels.compat.BernoulliRBM`, "
              "sklearn = `sklearn.neural_network.BernoulliRBM`."
              + (" Quick mode: shrunken workload, smoke test only." if meta["quick"] else "")), "",
             ("x faster = median over interleaved rounds of scikit-learn's time / the row's time at the "
              "same batch size; best = the fastest round, x faster (best) = the ratio of the fastest "
              "rounds (rounds that overlap other jobs on a shared machine can be 10-30x slower); recon = "
              "mean-field reconstruction MSE on the first 1,000 rows."), "",
             "| batch size | impl | median | IQR | best | rounds | recon | x faster than sklearn | x faster (best) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['shapes']['batch_size']} | {r['impl']} | {runner._fmt_s(r['median_s'])} | "
                     f"{runner._fmt_s(r['iqr_s'])} | {runner._fmt_s(r['min_s'])} | {r['rounds']} | "
                     f"{r['recon']:.4f} | {r['x_faster_than_sklearn']:.3g} | {r['x_faster_than_sklearn_best']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_compat_rbm", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="500 rows, 2 rounds (smoke test)")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"), help="results folder")
    p.add_argument("--data", default=None, help="MNIST folder (default $GENKERNELS_DATA or ../shared/data/mnist)")
    p.add_argument("--recon-states", type=int, default=0, metavar="K",
                   help="time nothing: record both estimators' reconstruction errors for random_state "
                        "0..K-1 (<machine>-compat-rbm-recon.{json,md})")
    p.add_argument("--recon-batch", type=int, default=100, help="batch size of --recon-states (default 100)")
    runner.add_allow_dirty(p)
    args = p.parse_args(argv)
    if args.recon_states < 0 or args.recon_batch < 1:
        p.error("--recon-states must be >= 0 and --recon-batch >= 1")
    runner.allow_dirty(args.allow_dirty)
    runner.check_results_dir(args.out)
    import importlib.metadata
    workload, x = load_data(args.quick, args.data)
    meta = {"machine": runner.machine_name("cpu"), "device": "cpu", "quick": args.quick, "workload": workload,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_avg_start": round(os.getloadavg()[0], 2),
            "versions": {**runner.versions(), "scikit-learn": importlib.metadata.version("scikit-learn")},
            "commit": runner.git_commit()}
    if args.recon_states:
        records = recon_over_states(x, args.recon_states, args.recon_batch, meta)
    else:
        records = measure(x, args.quick, meta)
    meta["load_avg_end"] = round(os.getloadavg()[0], 2)
    table, suffix = (recon_markdown(records, meta), "-recon") if args.recon_states else (markdown(records, meta), "")
    print(table)
    runner.write_results(args.out, meta["machine"] + "-compat-rbm" + suffix + ("-quick" if args.quick else ""),
                         meta, records, table)
    return 0


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per batch size (``pytest bench/ --benchmark-only``; options in bench/conftest.py;
    the estimator runs on CPU whatever --bench-device says)."""
    if "batch_size" in metafunc.fixturenames:
        metafunc.parametrize("batch_size", BATCH_SIZES, ids=[f"batch{b}" for b in BATCH_SIZES])


def test_compat_bernoulli_rbm_fit(benchmark, batch_size, request):
    """Time ``genkernels.compat.BernoulliRBM(...).fit`` (one pass, scikit-learn's arguments) on
    the benchmark's rows: the fitted model reconstructs them (recon below 0.25)."""
    _, quick, directory = runner.bench_options(request.config)
    _, x = load_data(quick, directory)
    model = runner.benchmark_call(benchmark, make_fit("genkernels", x, batch_size), "cpu", rounds=3)
    benchmark.extra_info.update({"n": x.shape[0], "n_features": N_FEATURES, "n_components": N_COMPONENTS,
                                 "batch_size": batch_size})
    assert 0 < reconstruction_error(model, x) < 0.25


if __name__ == "__main__":
    sys.exit(main())
