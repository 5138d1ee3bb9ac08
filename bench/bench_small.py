"""Small shapes: every family's ops at batch 1 and 10 and on tiny models, on 1 and 2
threads, with the per-call overhead of the Python layer.

    python bench/bench_small.py [som|energy|hopfield|ising|bm_gibbs|all] [--quick] [--contended N] [--out DIR]
                                [--allow-dirty]

(also ``genkernels bench <family> --small``). Users call ops on tiny batches
(scikit-learn's default batch is 10) and on machines shared with other work, where the
cost of waking a thread team, or a neighbour holding the other core, dominates. For each
case and implementation this measures the time per call with ``torch.set_num_threads(1)``
and ``(2)`` in the same run (interleaved rounds) and reports ``2 threads / 1 thread``
(docs/design.md, "Threads on the CPU": no op slower on 2 threads than on 1 by more than 10%). ``overhead`` rows
time the public ``genkernels.ops`` function against its registered op called directly
and against an empty ``torch.ops`` call: the validation and dispatch cost per call.
The scikit-learn workflow (``BernoulliRBM(n_components=100)`` on the 1,797 digits, one
pass) runs at batch 1, 10, 100 and 1,000 beside ``genkernels.compat.BernoulliRBM``.

``--contended N`` runs N busy processes (one pure-Python spin loop each) beside the
benchmark and names the results ``...-contendedN``. Results:
``<out>/<machine>-small[-<family>][-quick][-contendedN].{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for path in (BENCH_DIR, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness as runner  # noqa: E402  (machine name, versions, timing, writer, contention)

FAMILIES = ("som", "energy", "hopfield", "ising", "bm_gibbs")
THREADS = (1, 2)
ROUNDS = {False: 7, True: 3}
ROUND_S = {False: 0.05, True: 0.01}
SETTLE_S = {False: 0.2, True: 0.02}  # quiet before each scikit-learn workflow fit


# ------------------------------------------------------------------------- cases
def _som_cases():
    from genkernels import ops
    g = torch.Generator().manual_seed(0)
    w = torch.rand(100, 64, generator=g)  # a 10x10 map of 64 features
    cases = []
    for b in (1, 10):
        x = torch.rand(b, 64, generator=g)
        impls = {"genkernels som_bmu (auto)": lambda x=x: ops.som_bmu(x, w),
                 "torch cdist + argmin": lambda x=x: torch.cdist(x, w).argmin(1)}
        if hasattr(torch.ops.genkernels, "som_bmu") and "cpu" in _backends():
            impls["genkernels som_bmu (reference)"] = lambda x=x: ops.som_bmu(x, w, backend="reference")
        cases.append((f"som_bmu batch {b}, 10x10 map, D=64", impls))
    # the soft SOM layer, forward + backward: a 10x10 map on 2-D points (the spiral), batch 1 and 10
    from genkernels.som import soft_reference
    nodes = torch.randn(100, 2, generator=g).requires_grad_()
    values = torch.rand(100, 2, generator=g)
    for b in (1, 10):
        x = torch.randn(b, 2, generator=g).requires_grad_()
        beta = torch.tensor(2.0)
        cases.append((f"som_soft forward+backward batch {b}, 10x10 map, D=2", {
            "genkernels som_soft (auto)": lambda x=x: ops.som_soft(x, nodes, values, beta).sum().backward(),
            "torch eager definition": lambda x=x: soft_reference.soft_som(x, nodes, values, beta).sum().backward()}))
    try:
        from minisom import MiniSom
    except ImportError:
        MiniSom = None
    from genkernels import SOM
    from genkernels.compat import MiniSom as GKMiniSom
    x = torch.rand(200, 8, generator=g).numpy()
    impls = {}
    for name, cls in (("genkernels.compat.MiniSom", GKMiniSom), ("minisom", MiniSom)):
        if cls is not None:
            som = cls(5, 5, 8, sigma=1.0, learning_rate=0.5, random_seed=0)
            impls[f"{name} winner (1 sample)"] = lambda som=som: som.winner(x[0])
            impls[f"{name} train 200 steps"] = lambda som=som: som.train(x, 200)
    model = SOM((5, 5), 8, seed=0)
    impls["genkernels SOM.fit online, 200 steps"] = lambda: model.fit(x, epochs=1, mode="online", verbose=False)
    cases.append(("tiny map 5x5, D=8, 200 rows", impls))
    # one map split over a thread team, step by step: the case a busy neighbour hurt most
    from genkernels.som import Lattice
    lattice = Lattice(24, 24)
    data = torch.rand(20_000, 32, generator=g)
    w0 = torch.rand(1, lattice.n_nodes, 32, generator=g)
    order = torch.randperm(20_000, generator=g)[None]
    lr, sigma = torch.linspace(0.5, 0.01, 20_000)[None], torch.linspace(6.0, 1.0, 20_000)[None]
    coords = lattice.coords()
    cases.append(("som_online epoch, one 24x24 map, D=32, 20,000 steps", {
        "genkernels som_online (auto)": lambda: ops.som_online(w0, data, order, lr, sigma, coords)}))
    return cases


def _energy_cases():
    from genkernels import ops
    from genkernels.boltzmann import rbm_ops
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 100, generator=g) * 0.1
    bias = torch.zeros(100)
    cases = []
    for b in (1, 10):
        s = torch.rand(b, 64, generator=g)
        impls = {"genkernels rbm_half_step (auto)": lambda s=s: ops.rbm_half_step(s, w, bias, 1, 0, False, True),
                 "genkernels half_step (validated-argument path)":
                     lambda s=s: rbm_ops.half_step(s, w, bias, 1, 0, False, True),
                 "torch addmm + sigmoid + bernoulli":
                     lambda s=s: torch.bernoulli(torch.sigmoid(torch.addmm(bias, s, w)))}
        cases.append((f"rbm_half_step batch {b}, 64 -> 100", impls))
    return cases


def _hopfield_cases():
    from genkernels import ops
    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 2, (5, 64), generator=g).float() * 2 - 1
    w = ops.hopfield_store(patterns)
    stored = torch.randn(16, 32, generator=g)
    cases = []
    for b in (1, 10):
        probes = patterns[torch.arange(b) % 5].clone()
        probes[:, :6] *= -1
        q = torch.randn(b, 32, generator=g)

        def eager(q=q):
            for _ in range(3):
                q = torch.softmax(4.0 * q @ stored.T, -1) @ stored
            return q
        cases.append((f"hopfield batch {b}: recall N=64 (async), retrieval P=16 D=32 (3 steps)", {
            "genkernels hopfield_recall async": lambda p=probes: ops.hopfield_recall(w, p, max_sweeps=5),
            "genkernels hopfield_retrieval": lambda q=q: ops.hopfield_retrieval(q, stored[None], 4.0, 3, 0.0),
            "torch eager retrieval loop": eager}))
    return cases


def _ising_cases():
    from genkernels import Ising2D
    cases = []
    for L in (16, 64):
        model = Ising2D(L, 2.269, init="random", seed=0)
        impls = {"genkernels Ising2D.sweep": lambda m=model: m.sweep(1)}
        if "cpu" in _backends():
            impls["genkernels Ising2D.sweep (reference)"] = lambda m=model: m.sweep(1, backend="reference")
        cases.append((f"ising L={L}, 1 lattice, 1 sweep", impls))
    return cases


def _bm_gibbs_cases():
    from genkernels import BoltzmannMachine
    cases = []
    for chains in (1, 10):
        bm = BoltzmannMachine(16, 4, seed=0, init_std=0.5)
        states = torch.zeros(chains, 20)
        impls = {"genkernels BoltzmannMachine.gibbs": lambda b=bm, s=states: b.gibbs(s, 1)}
        if "cpu" in _backends():
            impls["genkernels BoltzmannMachine.gibbs (reference)"] = \
                lambda b=bm, s=states: b.gibbs(s, 1, backend="reference")
        cases.append((f"bm_gibbs N=20, {chains} chains, 1 sweep", impls))
    return cases


def _overhead_cases(family: str):
    """The public op, its registered op called directly, and an empty torch.ops call."""
    from genkernels import backends, ops
    if backends.extension_error() is not None:
        return []
    g = torch.Generator().manual_seed(0)
    if family == "som":
        x, w = torch.rand(1, 8, generator=g), torch.rand(4, 8, generator=g)
        public = lambda: ops.som_bmu(x, w)  # noqa: E731
        raw = lambda: torch.ops.genkernels.som_bmu(x, w, 1, "euclidean", False)  # noqa: E731
    elif family == "energy":
        s, w, b = torch.rand(1, 4, generator=g), torch.rand(4, 4, generator=g), torch.zeros(4)
        public = lambda: ops.rbm_half_step(s, w, b, 1)  # noqa: E731
        raw = lambda: torch.ops.genkernels.rbm_half_step(s, w, b, 1, 0, False, False)  # noqa: E731
    else:
        return []
    empty = torch.empty(0)
    return [(f"per-call overhead ({family})", {
        "public genkernels.ops call": public,
        "registered op called directly": raw,
        "empty torch.ops.aten.view_as call": lambda: torch.ops.aten.view_as(empty, empty)})]


def _backends():
    from genkernels import available_backends
    return available_backends("cpu")


CASES = {"som": _som_cases, "energy": _energy_cases, "hopfield": _hopfield_cases,
         "ising": _ising_cases, "bm_gibbs": _bm_gibbs_cases}


# ------------------------------------------------------------------ the sklearn workflow
def sklearn_rows(quick: bool) -> list[dict]:
    """scikit-learn's RBM workflow on the digits (n_components=100, one pass) at batch 1,
    10, 100 and 1,000: scikit-learn and the genkernels facade, 1 and 2 threads, rounds
    interleaved. Both get the same thread count (torch's for ours, threadpoolctl's BLAS
    limit for scikit-learn's). Each timed fit follows SETTLE_S of quiet and one untimed fit
    of the same implementation: after a fit, the idle thread pools of the other (numpy's
    OpenBLAS and scikit-learn's OpenMP spin ~0.1 s; ours wait in OpenMP) would otherwise
    hold the cores during the next timed call -- each is measured in its own steady state,
    as a user calling it alone meets it."""
    try:
        from sklearn.neural_network import BernoulliRBM as SKRBM
    except ImportError:
        return []
    from genkernels.compat import BernoulliRBM
    from genkernels.data import load_digits
    x = load_digits()[0].astype(np.float64)
    if quick:
        x = x[:300]
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn requires it; without it its BLAS keeps its own count
        threadpool_limits = None
    columns = [(impl, cls, t) for t in THREADS for impl, cls in (("sklearn", SKRBM), ("genkernels", BernoulliRBM))]

    def fit(cls, batch):
        return lambda: cls(n_components=100, batch_size=batch, n_iter=1, learning_rate=0.06, random_state=0).fit(x)

    def threads(i):  # the column's thread count for torch and for scikit-learn's BLAS
        torch.set_num_threads(columns[i][2])
        if threadpool_limits:
            threadpool_limits(limits=columns[i][2], user_api="blas")
    rows = []
    for batch in (1, 10, 100, 1000):
        # the limiter of the with statement puts the BLAS thread count back afterwards
        with threadpool_limits(limits=None) if threadpool_limits else contextlib.nullcontext():
            times, _ = runner.interleaved([fit(cls, batch) for _, cls, _ in columns], "cpu", ROUNDS[quick],
                                          pause_s=SETTLE_S[quick], warmup=False, warm_each=True, before=threads)
        for impl in ("sklearn", "genkernels"):
            t1, t2 = (float(np.median(times[:, j])) for j, c in enumerate(columns) if c[0] == impl)
            rows.append({"case": f"BernoulliRBM.fit digits {x.shape[0]}x64, 100 components, batch {batch}",
                         "impl": impl, "t1_s": t1, "t2_s": t2, "ratio_2_over_1": t2 / t1,
                         "rounds": ROUNDS[quick],
                         "sklearn_over_ours_1": None, "sklearn_over_ours_2": None})
        ours, sk = rows[-1], rows[-2]
        ours["sklearn_over_ours_1"] = sk["t1_s"] / ours["t1_s"]
        ours["sklearn_over_ours_2"] = sk["t2_s"] / ours["t2_s"]
    return rows


# --------------------------------------------------------------------------- running
def run_cases(families, quick: bool) -> list[dict]:
    rows = []
    for family in families:
        for case, impls in CASES[family]() + _overhead_cases(family):
            columns = [(impl, t) for t in THREADS for impl in impls]
            times, _ = runner.interleaved([impls[impl] for impl, _ in columns], "cpu", ROUNDS[quick], warmup=False,
                                          warm_each=True, before=lambda i: torch.set_num_threads(columns[i][1]),
                                          repeat_s=ROUND_S[quick])
            for impl in impls:
                t1, t2 = (float(np.median(times[:, columns.index((impl, t))])) for t in THREADS)
                rows.append({"family": family, "case": case, "impl": impl, "t1_s": t1, "t2_s": t2,
                             "ratio_2_over_1": t2 / t1, "rounds": ROUNDS[quick]})
            print(f"[bench small] {case}: done", file=sys.stderr, flush=True)
    return rows


def _us(v) -> str:
    return "-" if v is None else (f"{v * 1e3:.2f} ms" if v >= 1e-3 else f"{v * 1e6:.1f} us")


def markdown(rows: list[dict], meta: dict) -> str:
    v = meta["versions"]
    busy = meta.get("contention", {}).get("busy_processes", 0)
    lines = [f"# Small shapes, 1 and 2 threads: {meta['machine']}", "",
             f"{meta['created']}, commit `{meta['commit']}`, "
             + ", ".join(f"{k} {v[k]}" for k in v if v[k] is not None) + ".",
             f"Load average (1 min) {meta['load_start']:.2f} at the start, {meta['load_end']:.2f} at the end, "
             f"on {os.cpu_count()} cores" + (f"; {busy} busy process(es) beside the benchmark (--contended)."
                                              if busy else "; no busy process added."), "",
             "Per-call medians over interleaved rounds (each round: the call repeated for "
             f"{ROUND_S[meta['quick']] * 1e3:.0f} ms). 2t/1t = the 2-thread median / the 1-thread median "
             "(target <= 1.10).", "",
             "| case | impl | 1 thread | 2 threads | 2t/1t |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['impl']} | {_us(r['t1_s'])} | {_us(r['t2_s'])} | "
                     f"{r['ratio_2_over_1']:.2f} |")
    sk = meta.get("sklearn_rows") or []
    if sk:
        lines += ["", "## scikit-learn's RBM workflow", "",
                  "| case | impl | 1 thread | 2 threads | 2t/1t | sklearn / ours (1t) | sklearn / ours (2t) |",
                  "|---|---|---:|---:|---:|---:|---:|"]

        def ratio(x):
            return "-" if x is None else f"{x:.2f}"
        for r in sk:
            lines.append(f"| {r['case']} | {r['impl']} | {_us(r['t1_s'])} | {_us(r['t2_s'])} | "
                         f"{r['ratio_2_over_1']:.2f} | {ratio(r['sklearn_over_ours_1'])} | "
                         f"{ratio(r['sklearn_over_ours_2'])} |")
    return "\n".join(lines) + "\n"


def run(families, quick: bool = False, out_dir: str | None = None, sklearn: bool = True) -> int:
    runner.check_results_dir(out_dir or os.path.join(BENCH_DIR, "results"))
    threads_before = torch.get_num_threads()
    meta = {"machine": runner.machine_name("cpu"), "device": "cpu", "quick": quick,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": runner.versions(), "commit": runner.git_commit(),
            "load_start": os.getloadavg()[0]}
    try:
        rows = run_cases(families, quick)
        meta["sklearn_rows"] = sklearn_rows(quick) if sklearn and "energy" in families else []
    finally:
        torch.set_num_threads(threads_before)
    meta["load_end"] = os.getloadavg()[0]
    table = markdown(rows, {**meta, "contention": runner.contention_meta()})
    print(table)
    name = meta["machine"] + "-small" + ("" if len(families) > 1 else f"-{families[0]}")
    runner.write_results(out_dir or os.path.join(BENCH_DIR, "results"), name + ("-quick" if quick else ""),
                         meta, rows, table)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("family", nargs="?", default="all", choices=("all", *FAMILIES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--contended", type=int, default=0, metavar="N",
                   help="run N busy processes beside the benchmark")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    runner.add_allow_dirty(p)
    args = p.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    families = FAMILIES if args.family == "all" else (args.family,)
    with runner.busy_neighbours(args.contended):
        return run(families, args.quick, args.out)


if __name__ == "__main__":
    sys.exit(main())
