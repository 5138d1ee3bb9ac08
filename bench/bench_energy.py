"""Benchmarks of the energy-based family: one persistent-CD-1 epoch of an RBM.

    python bench/run.py energy [--device cpu|cuda] [--quick] [--out DIR] [--data DIR]

Workloads (float32, 784 visible x 256 hidden units, batch 100, PCD-1, learning rate 0.1):

* ``random``: 60,000 random binary rows of density 0.2 (seed 0);
* ``mnist``: the MNIST images found in --data / $GENKERNELS_DATA / ../shared/data/mnist
  (here the 10,000-image test set), binarised once by one Bernoulli draw per pixel (seed 0);
  skipped when absent.

Rows per workload:

* ``genkernels`` backends: ``RBM(784, 256).fit(x, epochs=1, method="pcd", batch_size=100,
  monitor=None, verbose=False, state_path=p)`` under ``use_backend(b)`` -- the whole fit,
  including model construction, the data checks and the shuffle -- once per state path:
  ``<b> dense`` (matrix products) and ``<b> binary`` (the binary-state path: uint8 visible
  states, gathered weight rows and scattered weight statistics; what ``state_path="auto"``
  picks on the cpu backend for these binary data). Compiled backends only: the
  reference (Philox in int64 tensor ops) takes about a second per half-step on 2 cores;
* ``ideal``: the matrix products an epoch needs and nothing else -- per batch of 100,
  ``torch.mm`` of v W, h W^T and v' W (the three half-steps) and of v^T h, v'^T h' (the
  two gradient products), into preallocated outputs;
* ``sklearn``: ``BernoulliRBM(n_components=256, n_iter=1, batch_size=100,
  learning_rate=0.1).fit`` on the same float32 array (CPU only).

Results go to ``<out>/<machine>-energy.{json,md}`` (``-energy-quick`` with --quick).
The cases of a workload run in interleaved rounds (every case once per round, after one
warm-up call of each except scikit-learn), so that a change of load on a shared machine
hits them alike. Ratios are medians of per-round ratios: ``x ideal`` = time / the ideal
row's time; ``x sklearn`` = scikit-learn's time / the row's time (how many times faster).
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

N_VISIBLE, N_HIDDEN, BATCH = 784, 256, 100
LEARNING_RATE = 0.1
RANDOM_ROWS, RANDOM_DENSITY = 60_000, 0.2
QUICK_ROWS = 2_000
# interleaved timed rounds per workload (every case once per round)
ROUNDS = {False: 5, True: 2}
# idle seconds before each timed call: thread pools that spin after a call (OpenBLAS under
# scikit-learn, OpenMP) otherwise slow the next case -- measured on 2 cores, the bare
# products took 370 ms after a warm-up but 490 ms right after scikit-learn's epoch
PAUSE_S = {False: 1.0, True: 0.1}
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "mnist")


def data_dir(path: str | None = None) -> str:
    return path or os.environ.get("GENKERNELS_DATA") or DEFAULT_DATA


def workloads(quick: bool, data: str | None) -> dict[str, np.ndarray]:
    """name -> (N, 784) float32 binary rows."""
    rng = np.random.default_rng(0)
    rows = QUICK_ROWS if quick else RANDOM_ROWS
    out = {"random": (rng.random((rows, N_VISIBLE), dtype=np.float32) < RANDOM_DENSITY).astype(np.float32)}
    try:
        from genkernels.data import load_mnist
        images, _ = load_mnist(data_dir(data))
    except FileNotFoundError as exc:
        print(f"[bench] MNIST skipped: {exc}", file=sys.stderr)
        return out
    images = images[:QUICK_ROWS] if quick else images
    out["mnist"] = (np.random.default_rng(0).random(images.shape, dtype=np.float32) < images).astype(np.float32)
    return out


def _sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def make_ours(x: np.ndarray, device: str, backend: str, state_path: str = "dense"):
    import torch

    import genkernels
    xt = torch.from_numpy(x).to(device)

    def epoch():
        with genkernels.use_backend(backend):
            rbm = genkernels.RBM(N_VISIBLE, N_HIDDEN, seed=0, device=device)
            rbm.fit(xt, epochs=1, batch_size=BATCH, method="pcd", k=1, learning_rate=LEARNING_RATE,
                    monitor=None, verbose=False, state_path=state_path)
        return rbm
    return epoch


def make_ideal(x: np.ndarray, device: str):
    """The five products of every batch, into preallocated outputs."""
    import torch
    xt = torch.from_numpy(x).to(device)
    w = torch.randn(N_VISIBLE, N_HIDDEN, device=device) * 0.01
    h = torch.empty(BATCH, N_HIDDEN, device=device)
    v = torch.empty(BATCH, N_VISIBLE, device=device)
    h_neg = torch.empty(BATCH, N_HIDDEN, device=device)
    grad = torch.empty(N_VISIBLE, N_HIDDEN, device=device)
    grad_neg = torch.empty(N_VISIBLE, N_HIDDEN, device=device)
    chain = (torch.rand(BATCH, N_HIDDEN, device=device) < 0.5).float()

    def epoch():
        for start in range(0, xt.shape[0], BATCH):
            batch = xt[start:start + BATCH]
            rows = batch.shape[0]
            torch.mm(batch, w, out=h[:rows])
            torch.mm(chain, w.T, out=v)
            torch.mm(v, w, out=h_neg)
            torch.mm(batch.T, h[:rows], out=grad)
            torch.mm(v.T, h_neg, out=grad_neg)
        return grad
    return epoch


def make_sklearn(x: np.ndarray):
    from sklearn.neural_network import BernoulliRBM

    def epoch():
        return BernoulliRBM(n_components=N_HIDDEN, learning_rate=LEARNING_RATE, batch_size=BATCH, n_iter=1,
                            random_state=0).fit(x)
    return epoch


def build_cases(device: str, data: dict[str, np.ndarray]) -> list[dict]:
    """Every case: workload, impl, kind, and make() -> the callable timing one epoch."""
    import genkernels
    cases = []
    for name, x in data.items():
        cases.append({"workload": name, "rows": x.shape[0], "impl": "ideal (torch.mm)", "kind": "ideal",
                      "make": (lambda x=x: make_ideal(x, device)), "warmup": True})
        for backend in genkernels.available_backends(device):
            if backend not in genkernels.backends.OP_BACKENDS["rbm_half_step"]:
                continue
            if backend == "reference" or (backend == "triton" and device != "cuda"):
                continue  # the spec and the interpreter are test vehicles, not backends to time
            for path in ("dense", "binary"):
                cases.append({"workload": name, "rows": x.shape[0], "impl": f"{backend} {path}", "kind": "backend",
                              "make": (lambda x=x, b=backend, p=path: make_ours(x, device, b, p)), "warmup": True})
        if device == "cpu":
            try:
                import sklearn  # noqa: F401
            except ImportError:
                print("[bench] scikit-learn not installed: its anchor is skipped", file=sys.stderr)
            else:
                cases.append({"workload": name, "rows": x.shape[0], "impl": "sklearn BernoulliRBM",
                              "kind": "anchor", "make": (lambda x=x: make_sklearn(x)), "warmup": False})
    return cases


def reconstruction_error(model, x: np.ndarray) -> float:
    """Mean-field reconstruction MSE of the trained model on the first 1,000 rows (one
    formula for ours and scikit-learn's)."""
    head = x[:1000].astype(np.float64)
    if hasattr(model, "components_"):
        w, c, b = model.components_.T, model.intercept_hidden_, model.intercept_visible_
    else:
        w, c, b = (t.detach().cpu().double().numpy() for t in (model.weights, model.hidden_bias, model.visible_bias))
    h = 1 / (1 + np.exp(-(head @ w + c)))
    v = 1 / (1 + np.exp(-(h @ w.T + b)))
    return float(((head - v) ** 2).mean())


def markdown(records: list[dict], meta: dict) -> str:
    from run import _fmt, _fmt_s
    lines = [f"# genkernels benchmarks, energy family: {meta['machine']} ({meta['device']})", "",
             f"{meta['created']}, commit `{meta['commit']}`, "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v is not None) + ".",
             (f"Load average (1 min) {meta['load_avg_start']} at the start, {meta['load_avg_end']} at "
              f"the end, on {os.cpu_count()} cores: other work shares the machine when it exceeds the "
              "core count."),
             "One persistent-CD-1 epoch of an RBM, 784 visible x 256 hidden, batch 100, float32."
             + (" Quick mode: shrunken workloads, smoke test only." if meta["quick"] else ""), "",
             ("x ideal = median over rounds of time / the ideal row's time in the same round (the "
              "epoch's torch.mm products alone); x sklearn = median of scikit-learn's time / the row's "
              "time, same round; rounds are interleaved (each runs every case once); recon = mean-field reconstruction MSE "
              "of the trained model on the first 1,000 rows."), ""]
    for name in dict.fromkeys(r["workload"] for r in records):
        recs = [r for r in records if r["workload"] == name]
        lines += [f"## {name}: {recs[0]['rows']:,} rows", "",
                  "| impl | kind | median | IQR | rounds | recon | x ideal | x sklearn |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in recs:
            lines.append(f"| {r['impl']} | {r['kind']} | {_fmt_s(r['median_s'])} | {_fmt_s(r['iqr_s'])} | "
                         f"{r['rounds']} | {_fmt(r['recon'], '{:.4f}')} | {_fmt(r['x_ideal'], '{:.3g}')} | "
                         f"{_fmt(r['x_sklearn'], '{:.3g}')} |")
        lines.append("")
    return "\n".join(lines)


def main(args) -> int:
    """Run every case (``args`` from bench/run.py's parser), print the table, write
    ``<out>/<machine>-energy[-quick].{json,md}``."""
    import torch
    from run import git_commit, machine_name, versions, write_results
    meta = {"machine": machine_name(args.device), "device": args.device, "quick": args.quick,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_avg_start": round(os.getloadavg()[0], 2),
            "versions": {**versions(), "scikit-learn": _version("scikit-learn")}, "commit": git_commit()}
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    data = workloads(args.quick, args.data)
    cases = build_cases(args.device, data)
    records = []
    for name in data:
        records += _measure_interleaved([c for c in cases if c["workload"] == name], args, data[name], meta)
    meta["load_avg_end"] = round(os.getloadavg()[0], 2)
    table = markdown(records, meta)
    print(table)
    write_results(args.out, meta["machine"] + "-energy" + ("-quick" if args.quick else ""), meta,
                  records, table)
    return 0


def _measure_interleaved(cases: list[dict], args, x: np.ndarray, meta: dict) -> list[dict]:
    """Time the cases of one workload in interleaved rounds (each round runs every case
    once, in order) so that a change of load on a shared machine hits all of them alike;
    the ratios are medians of the per-round ratios."""
    fns = [case["make"]() for case in cases]
    for case, fn in zip(cases, fns):
        if case["warmup"]:
            fn()
            _sync(args.device)
    rounds = ROUNDS[args.quick]
    times = np.zeros((rounds, len(cases)))
    outs = [None] * len(cases)
    for r in range(rounds):
        for i, fn in enumerate(fns):
            time.sleep(PAUSE_S[args.quick])
            start = time.perf_counter()
            outs[i] = fn()
            _sync(args.device)
            times[r, i] = time.perf_counter() - start
        print(f"[bench] energy {cases[0]['workload']} round {r + 1}/{rounds}: "
              + ", ".join(f"{c['impl']} {t * 1e3:.1f} ms" for c, t in zip(cases, times[r])),
              file=sys.stderr, flush=True)
    kinds = [c["kind"] for c in cases]
    ideal = times[:, kinds.index("ideal")] if "ideal" in kinds else None
    anchor = times[:, kinds.index("anchor")] if "anchor" in kinds else None
    records = []
    for i, case in enumerate(cases):
        q1, med, q3 = np.percentile(times[:, i], [25, 50, 75])
        records.append({
            "suite": "energy", "workload": case["workload"], "rows": case["rows"], "impl": case["impl"],
            "kind": case["kind"], "device": args.device, "dtype": "float32",
            "shapes": {"n": case["rows"], "n_visible": N_VISIBLE, "n_hidden": N_HIDDEN, "batch": BATCH},
            "median_s": float(med), "iqr_s": float(q3 - q1), "rounds": rounds,
            "times_s": times[:, i].tolist(),
            "recon": None if case["kind"] == "ideal" else reconstruction_error(outs[i], x),
            "x_ideal": float(np.median(times[:, i] / ideal)) if ideal is not None else None,
            "x_sklearn": float(np.median(anchor / times[:, i])) if anchor is not None else None,
            "versions": meta["versions"], "commit": meta["commit"]})
    return records


def _version(package: str) -> str | None:
    import importlib.metadata
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
