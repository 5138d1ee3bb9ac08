"""SOM grid search benchmark: scikit-learn's ``GridSearchCV`` over
``genkernels.compat.SOMEstimator`` against ``genkernels.compat.som_grid_search`` (the same
grid, each fold's sigma x learning-rate grid trained as one ``n_maps`` SOM fit) on the same
data, same arguments.

    python bench/bench_som_estimator.py [--quick] [--out DIR] [--allow-dirty]
    pytest bench/bench_som_estimator.py --benchmark-only [--bench-quick]
        (test_som_grid_search: som_grid_search alone, pytest-benchmark's timing)

Workload: scikit-learn's 8x8 digits as genkernels.data embeds them (1,797 x 64 float32 in
[0, 1], with their labels), ``SOMEstimator(grid=(10, 10), epochs=10, random_state=0)``
(online rule, PCA initialisation), ``param_grid`` = 5 sigma x 5 learning-rate values, 3-fold
``KFold`` (``cv=3``), the default scoring (minus the quantization error) and the refit of the
best candidate on all rows: 75 single-map fits + 1 refit for GridSearchCV (``n_jobs=None``),
3 fits of 25 maps + 1 refit for the helper, on CPU with torch's threads (2 here). A third case,
GridSearchCV with ``n_jobs=2``, runs the same 76 fits in two joblib (loky) worker processes,
whose torch runs one thread each (joblib's limit of cpu_count / n_jobs).
--quick: the first 300 rows, a 5x5 map, 2 epochs, 3 x 2 values (smoke test).

Both run once as a warm-up, then in interleaved rounds (each round times both, after a
short idle pause), so that a change of load on a shared machine hits them alike. ``x
faster`` = the median over rounds of GridSearchCV's time / the helper's time in the same
round; ``best`` = the fastest round, ``x faster (best)`` the ratio of the fastest rounds.
Every round also checks that the two returned the same ``cv_results_`` scores and
``best_params_`` (``same results``). Results go to ``<out>/<machine>-som-estimator.{json,md}``
(``-quick`` added with --quick; default bench/results/).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import sys

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for path in (BENCH_DIR, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import harness as runner  # noqa: E402  bench/harness.py: machine name, versions, timing, results writer

# (rows, grid, epochs, sigma values, learning-rate values) of the full and the quick workload
WORKLOAD = {False: (None, (10, 10), 10, [0.5, 1.0, 2.0, 3.0, 5.0], [0.05, 0.1, 0.3, 0.5, 0.9]),
            True: (300, (5, 5), 2, [0.5, 1.0, 2.0], [0.1, 0.5])}
FOLDS = 3
ROUNDS = {False: 5, True: 1}
PAUSE_S = {False: 1.0, True: 0.0}
IMPLS = ("GridSearchCV", "GridSearchCV n_jobs=2", "som_grid_search")


def load_data(quick: bool) -> tuple[np.ndarray, np.ndarray]:
    from genkernels.data import load_digits
    x, y = load_digits()
    rows = WORKLOAD[quick][0]
    return (x, y) if rows is None else (x[:rows], y[:rows])


def search_arguments(quick: bool):
    """(estimator, param_grid) of the workload."""
    from genkernels.compat import SOMEstimator
    _, grid, epochs, sigmas, rates = WORKLOAD[quick]
    return SOMEstimator(grid=grid, epochs=epochs, random_state=0), {"sigma": sigmas, "learning_rate": rates}


def make_search(impl: str, x: np.ndarray, y: np.ndarray, quick: bool):
    estimator, param_grid = search_arguments(quick)
    if impl.startswith("GridSearchCV"):
        from sklearn.model_selection import GridSearchCV
        n_jobs = 2 if impl.endswith("n_jobs=2") else None

        def search():
            return GridSearchCV(estimator, param_grid, cv=FOLDS, n_jobs=n_jobs).fit(x, y)
    else:
        from genkernels.compat import som_grid_search

        def search():
            return som_grid_search(x, y, param_grid=param_grid, estimator=estimator, cv=FOLDS)
    return search


def same_results(a, b) -> bool:
    """The same test scores, ranks and choice (exactly: the same maps give the same scores)."""
    keys = [k for k in a.cv_results_ if k.startswith(("split", "mean_test", "std_test", "rank_test"))]
    return (all(np.array_equal(a.cv_results_[k], b.cv_results_[k]) for k in keys)
            and a.best_params_ == b.best_params_ and a.best_score_ == b.best_score_)


def measure(x: np.ndarray, y: np.ndarray, quick: bool, meta: dict) -> list[dict]:
    rounds = ROUNDS[quick]
    agree = []

    fns = [make_search(impl, x, y, quick) for impl in IMPLS]
    outs = [None] * len(IMPLS)

    def timed(i):
        def call():
            outs[i] = fns[i]()
            return outs[i]
        return call

    def progress(r, row):
        agree.append(all(same_results(outs[0], out) for out in outs[1:]))
        print(f"[bench] som grid search round {r + 1}/{rounds}: "
              + ", ".join(f"{impl} {t:.2f} s" for impl, t in zip(IMPLS, row))
              + ("" if agree[-1] else " (results DIFFER)"), file=sys.stderr, flush=True)
    times, searches = runner.interleaved([timed(i) for i in range(len(IMPLS))], "cpu", rounds, pause_s=PAUSE_S[quick],
                                         progress=progress)
    _, grid, epochs, sigmas, rates = WORKLOAD[quick]
    records = []
    for i, impl in enumerate(IMPLS):
        q1, med, q3 = np.percentile(times[:, i], [25, 50, 75])
        search = searches[i]
        records.append({
            "suite": "som_grid_search", "workload": meta["workload"], "impl": impl, "device": "cpu",
            "dtype": "float32", "shapes": {"n": x.shape[0], "n_features": x.shape[1], "grid": list(grid),
                                           "epochs": epochs, "n_sigma": len(sigmas), "n_learning_rate": len(rates),
                                           "folds": FOLDS},
            "fits": len(sigmas) * len(rates) * FOLDS + 1 if impl.startswith("GridSearchCV") else FOLDS + 1,
            "median_s": float(med), "iqr_s": float(q3 - q1), "min_s": float(times[:, i].min()), "rounds": rounds,
            "times_s": times[:, i].tolist(),
            "x_faster_than_gridsearchcv": float(np.median(times[:, 0] / times[:, i])),
            "x_faster_than_gridsearchcv_best": float(times[:, 0].min() / times[:, i].min()),
            "best_params": search.best_params_, "best_score": float(search.best_score_),
            "same_results": all(agree), "versions": meta["versions"], "commit": meta["commit"]})
    return records


def markdown(records: list[dict], meta: dict) -> str:
    s = records[0]["shapes"]
    lines = [f"# SOM grid search: GridSearchCV over SOMEstimator vs som_grid_search: {meta['machine']} (cpu)", "",
             f"{meta['created']}, commit `{meta['commit']}`, "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v is not None) + ".",
             (f"Load average (1 min) {meta['load_avg_start']} at the start, {meta['load_avg_end']} at "
              f"the end, on {os.cpu_count()} cores."),
             (f"`SOMEstimator(grid={tuple(s['grid'])}, epochs={s['epochs']}, random_state=0)` (online rule), "
              f"{s['n_sigma']} sigma x {s['n_learning_rate']} learning-rate values, {s['folds']}-fold CV, default "
              f"scoring (-QE), refit; x = {meta['workload']} {s['n']:,} x {s['n_features']} float32 with labels. "
              "GridSearchCV = `sklearn.model_selection.GridSearchCV` (n_jobs=None unless said), som_grid_search = "
              "`genkernels.compat.som_grid_search` (one n_maps fit per fold)."
              + (" Quick mode: shrunken workload, smoke test only." if meta["quick"] else "")), "",
             ("x faster = median over interleaved rounds of GridSearchCV's time / the row's time; best = the "
              "fastest round, x faster (best) = the ratio of the fastest rounds; same results = every round "
              "returned equal test scores, ranks and best_params_ (all three); GridSearchCV n_jobs=2: the same "
              "fits in two joblib worker processes of one thread each."), "",
             "| impl | SOM fits | median | IQR | best | rounds | best params | best score | same results "
             "| x faster than GridSearchCV | x faster (best) |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|"]
    for r in records:
        params = ", ".join(f"{k}={v}" for k, v in sorted(r["best_params"].items()))
        lines.append(f"| {r['impl']} | {r['fits']} | {runner._fmt_s(r['median_s'])} | {runner._fmt_s(r['iqr_s'])} "
                     f"| {runner._fmt_s(r['min_s'])} | {r['rounds']} | {params} | {r['best_score']:.4f} | "
                     f"{'yes' if r['same_results'] else 'NO'} | {r['x_faster_than_gridsearchcv']:.3g} | "
                     f"{r['x_faster_than_gridsearchcv_best']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_som_estimator", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="300 rows, a 5x5 map, 2 epochs, 3 x 2 values, 1 round")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"), help="results folder")
    runner.add_allow_dirty(p)
    args = p.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    runner.check_results_dir(args.out)
    x, y = load_data(args.quick)
    meta = {"machine": runner.machine_name("cpu"), "device": "cpu", "quick": args.quick, "workload": "digits",
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_avg_start": round(os.getloadavg()[0], 2),
            "versions": {**runner.versions(), "scikit-learn": importlib.metadata.version("scikit-learn")},
            "commit": runner.git_commit()}
    records = measure(x, y, args.quick, meta)
    meta["load_avg_end"] = round(os.getloadavg()[0], 2)
    table = markdown(records, meta)
    print(table)
    runner.write_results(args.out, meta["machine"] + "-som-estimator" + ("-quick" if args.quick else ""),
                         meta, records, table)
    return 0


# ---------------------------------------------------------------------- pytest entry
def test_som_grid_search(benchmark, request):
    """Time ``genkernels.compat.som_grid_search`` on the benchmark's grid: it returns
    GridSearchCV's table for every candidate and a best score (minus a quantization error)."""
    _, quick, _ = runner.bench_options(request.config)
    x, y = load_data(quick)
    search = runner.benchmark_call(benchmark, make_search("som_grid_search", x, y, quick), "cpu", rounds=3)
    _, grid, epochs, sigmas, rates = WORKLOAD[quick]
    benchmark.extra_info.update({"n": x.shape[0], "grid": list(grid), "epochs": epochs,
                                 "candidates": len(sigmas) * len(rates), "folds": FOLDS})
    assert len(search.cv_results_["params"]) == len(sigmas) * len(rates)
    assert -1.5 < search.best_score_ < 0


if __name__ == "__main__":
    sys.exit(main())
