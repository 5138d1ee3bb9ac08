"""Benchmarks of the energy-based family: one persistent-CD-k epoch of an RBM.

    python bench/run.py energy [--device cpu|cuda] [--quick] [--out DIR] [--data DIR]
    pytest bench/bench_rbm.py --benchmark-only [--bench-quick] [--bench-device cpu|cuda] [--data DIR]
        (test_rbm_epoch: the genkernels rows alone, pytest-benchmark's timing)

Workloads (float32, 784 visible x 256 hidden units, batch 100, PCD-1, learning rate 0.1,
unless said otherwise):

* ``random``: 60,000 random binary rows of density 0.2 (seed 0);
* ``mnist``: the MNIST images found in --data / $GENKERNELS_DATA / ../shared/data/mnist
  (here the 10,000-image test set), binarised once by one Bernoulli draw per pixel (seed 0);
  skipped when absent;
* ``large``: 784 visible x 1024 hidden, batch 1024, PCD-10, on the ``mnist`` rows (the
  first 10,000 ``random`` rows when MNIST is absent; 2,000 rows with --quick), every
  device: ten batches, 2-5 s per epoch on 2 CPU cores (about 380 GFLOP of products). TF32 is allowed for this
  workload alone on CUDA (``torch.backends.cuda.matmul.allow_tf32``, off everywhere else in
  the run): it applies to every torch.mm / addmm of the ideal row and the eager loop and to
  the gradient products of genkernels; the fused Triton half-step multiplies in fp32 whatever
  the flag (its probabilities are compared with uniforms).

Rows per workload:

* ``genkernels`` backends: ``RBM(784, 256).fit(x, epochs=1, method="pcd", batch_size=100,
  monitor=None, verbose=False, state_path=p)`` under ``use_backend(b)`` -- the whole fit,
  including model construction, the data checks and the shuffle -- once per state path:
  ``<b> dense`` (matrix products) and ``<b> binary`` (the binary-state path: uint8 visible
  states, gathered weight rows and scattered weight statistics; what ``state_path="auto"``
  picks on the cpu backend for these binary data). Compiled backends only: the
  reference (Philox in int64 tensor ops) takes about a second per half-step on 2 cores;
* ``triton graph`` (CUDA only): the ``triton dense`` fit with ``cuda_graph=True`` -- each
  full batch's update replayed as one CUDA graph (a batch copy and one replay instead of
  ~16 launches from Python); the time includes the warm-up update and the capture;
* ``ideal``: the matrix products an epoch needs and nothing else -- per batch of 100,
  ``torch.mm`` of v W, h W^T and v' W (the three half-steps) and of v^T h, v'^T h' (the
  two gradient products), into preallocated outputs (2k + 3 products for PCD-k);
* ``eager loop``: the same PCD-k epoch written as plain PyTorch, one op at a time
  (``make_eager``: a shuffle, then per batch ``torch.addmm`` + ``torch.sigmoid`` for every
  half-step, ``torch.bernoulli`` for the samples, the update rule of ``genkernels.RBM``),
  which on a GPU is bound by kernel launches at batch 100;
* ``sklearn``: ``BernoulliRBM(n_components=256, n_iter=1, batch_size=100,
  learning_rate=0.1).fit`` on the same float32 array (CPU only).

Results go to ``<out>/<machine>-energy.{json,md}`` (``-energy-quick`` with --quick).
The cases of a workload run in interleaved rounds (every case once per round, after one
warm-up call of each except scikit-learn), so that a change of load on a shared machine
hits them alike. Ratios are medians of per-round ratios: ``x ideal`` = time / the ideal
row's time; ``x sklearn`` = scikit-learn's time / the row's time (how many times faster);
``x eager`` = the eager loop's time / the row's time.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

N_VISIBLE, N_HIDDEN, BATCH = 784, 256, 100
LEARNING_RATE = 0.1
RANDOM_ROWS, RANDOM_DENSITY = 60_000, 0.2
QUICK_ROWS = 2_000
# the large workload (the GPU target's shapes): hidden units, batch, Gibbs steps, rows
LARGE = {"n_hidden": 1024, "batch": 1024, "k": 10}
LARGE_ROWS = {False: 10_000, True: 2_000}
TF32_WORKLOADS = ("large",)
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
        return _with_large(out, quick)
    images = images[:QUICK_ROWS] if quick else images
    out["mnist"] = (np.random.default_rng(0).random(images.shape, dtype=np.float32) < images).astype(np.float32)
    return _with_large(out, quick)


def _with_large(out: dict[str, np.ndarray], quick: bool) -> dict[str, np.ndarray]:
    out["large"] = out.get("mnist", out["random"])[:LARGE_ROWS[quick]]
    return out


def settings(workload: str) -> dict:
    """n_hidden, batch and Gibbs steps k of a workload's epoch."""
    return dict(LARGE) if workload == "large" else {"n_hidden": N_HIDDEN, "batch": BATCH, "k": 1}


def make_ours(x: np.ndarray, device: str, backend: str, n_hidden: int = N_HIDDEN, batch: int = BATCH,
              k: int = 1, state_path: str = "dense", cuda_graph: bool = False):
    import torch

    import genkernels
    xt = torch.from_numpy(x).to(device)

    def epoch():
        with genkernels.use_backend(backend):
            rbm = genkernels.RBM(N_VISIBLE, n_hidden, seed=0, device=device)
            rbm.fit(xt, epochs=1, batch_size=batch, method="pcd", k=k, learning_rate=LEARNING_RATE,
                    monitor=None, verbose=False, state_path=state_path, cuda_graph=cuda_graph)
        return rbm
    return epoch


def make_ideal(x: np.ndarray, device: str, n_hidden: int = N_HIDDEN, batch: int = BATCH, k: int = 1):
    """The 2k + 3 products of every batch, into preallocated outputs."""
    import torch
    xt = torch.from_numpy(x).to(device)
    w = torch.randn(N_VISIBLE, n_hidden, device=device) * 0.01
    h = torch.empty(batch, n_hidden, device=device)
    v = torch.empty(batch, N_VISIBLE, device=device)
    h_neg = torch.empty(batch, n_hidden, device=device)
    grad = torch.empty(N_VISIBLE, n_hidden, device=device)
    grad_neg = torch.empty(N_VISIBLE, n_hidden, device=device)
    chain = (torch.rand(batch, n_hidden, device=device) < 0.5).float()

    def epoch():
        for start in range(0, xt.shape[0], batch):
            rows_in = xt[start:start + batch]
            rows = rows_in.shape[0]
            torch.mm(rows_in, w, out=h[:rows])
            torch.mm(chain, w.T, out=v)
            torch.mm(v, w, out=h_neg)
            for _ in range(k - 1):
                torch.mm(h_neg, w.T, out=v)
                torch.mm(v, w, out=h_neg)
            torch.mm(rows_in.T, h[:rows], out=grad)
            torch.mm(v.T, h_neg, out=grad_neg)
        return grad
    return epoch


def make_eager(x: np.ndarray, device: str, n_hidden: int = N_HIDDEN, batch: int = BATCH, k: int = 1):
    """One PCD-k epoch as plain PyTorch eager code: what a user writes without this library.
    The rule of genkernels.RBM (scikit-learn's): positive statistics from the data's hidden
    probabilities, negative ones from the sampled visible states of the persistent chains
    (zeros at first) and their hidden probabilities; a fresh shuffle per epoch; the
    weights from N(0, 0.01^2) and zero biases."""
    import types

    import torch
    xt = torch.from_numpy(x).to(device)
    n = xt.shape[0]
    generator = torch.Generator(device=device).manual_seed(0)

    def epoch():
        w = torch.randn(N_VISIBLE, n_hidden, device=device, generator=generator) * 0.01
        b = torch.zeros(N_VISIBLE, device=device)
        c = torch.zeros(n_hidden, device=device)
        chains = torch.zeros(batch, n_hidden, device=device)
        shuffled = xt[torch.randperm(n, device=device, generator=generator)]
        for start in range(0, n, batch):
            v_pos = shuffled[start:start + batch]
            h_pos = torch.sigmoid(torch.addmm(c, v_pos, w))
            h = chains
            for _ in range(k):
                v_neg = torch.bernoulli(torch.sigmoid(torch.addmm(b, h, w.T)), generator=generator)
                h_neg = torch.sigmoid(torch.addmm(c, v_neg, w))
                h = torch.bernoulli(h_neg, generator=generator)
            chains = h
            w.addmm_(v_pos.T, h_pos, alpha=LEARNING_RATE / v_pos.shape[0])
            w.addmm_(v_neg.T, h_neg, alpha=-LEARNING_RATE / batch)
            c += LEARNING_RATE * (h_pos.mean(0) - h_neg.mean(0))
            b += LEARNING_RATE * (v_pos.mean(0) - v_neg.mean(0))
        return types.SimpleNamespace(weights=w, visible_bias=b, hidden_bias=c)
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
        shape = settings(name)
        cases.append({"workload": name, "rows": x.shape[0], "impl": "ideal (torch.mm)", "kind": "ideal",
                      "make": (lambda x=x, s=shape: make_ideal(x, device, **s)), "warmup": True})
        for backend in genkernels.available_backends(device):
            if backend not in genkernels.backends.OP_BACKENDS["rbm_half_step"]:
                continue
            if backend == "reference" or (backend == "triton" and device != "cuda"):
                continue  # the spec and the interpreter are test vehicles, not backends to time
            # the binary-state path where it can be faster: the cpu backend, the PCD-1 workloads
            paths = ("dense", "binary") if backend == "cpu" and name != "large" else ("dense",)
            for path in paths:
                cases.append({"workload": name, "rows": x.shape[0], "impl": f"{backend} {path}", "kind": "backend",
                              "make": (lambda x=x, b=backend, s=shape, p=path: make_ours(x, device, b, **s,
                                                                                         state_path=p)),
                              "warmup": True})
            if backend == "triton":  # (CUDA only, as above) the same fit replayed as CUDA graphs
                cases.append({"workload": name, "rows": x.shape[0], "impl": "triton graph", "kind": "backend",
                              "make": (lambda x=x, s=shape: make_ours(x, device, "triton", **s, cuda_graph=True)),
                              "warmup": True})
        cases.append({"workload": name, "rows": x.shape[0], "impl": "eager loop", "kind": "eager",
                      "make": (lambda x=x, s=shape: make_eager(x, device, **s)), "warmup": True})
        if device == "cpu" and name != "large":  # scikit-learn: PCD-1 only
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
    from harness import _fmt, _fmt_s
    lines = [f"# genkernels benchmarks, energy family: {meta['machine']} ({meta['device']})", "",
             f"{meta['created']}, commit `{meta['commit']}`, "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v is not None) + ".",
             (f"Load average (1 min) {meta['load_avg_start']} at the start, {meta['load_avg_end']} at "
              f"the end, on {os.cpu_count()} cores: other work shares the machine when it exceeds the "
              "core count."),
             "One persistent-CD-k epoch of an RBM, float32, 784 visible units; hidden units, batch "
             "and k per section." + (" Quick mode: shrunken workloads, smoke test only." if meta["quick"] else ""),
             "",
             ("x ideal = median over rounds of time / the ideal row's time in the same round (the "
              "epoch's torch.mm products alone); x sklearn = median of scikit-learn's time / the row's "
              "time, same round; x eager = the same for the plain PyTorch eager loop's time (> 1: faster "
              "than it); rounds are interleaved (each runs every case once); recon = mean-field reconstruction MSE "
              "of the trained model on the first 1,000 rows."), ""]
    for name in dict.fromkeys(r["workload"] for r in records):
        recs = [r for r in records if r["workload"] == name]
        s = recs[0]["shapes"]
        lines += [f"## {name}: {recs[0]['rows']:,} rows, {s['n_visible']} x {s['n_hidden']}, batch "
                  f"{s['batch']}, PCD-{s['k']}" + (", TF32 allowed" if recs[0].get("tf32") else ""), "",
                  "| impl | kind | median | IQR | rounds | recon | x ideal | x sklearn | x eager |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in recs:
            lines.append(f"| {r['impl']} | {r['kind']} | {_fmt_s(r['median_s'])} | {_fmt_s(r['iqr_s'])} | "
                         f"{r['rounds']} | {_fmt(r['recon'], '{:.4f}')} | {_fmt(r['x_ideal'], '{:.3g}')} | "
                         f"{_fmt(r['x_sklearn'], '{:.3g}')} | {_fmt(r.get('x_eager'), '{:.3g}')} |")
        lines.append("")
    return "\n".join(lines)


def main(args) -> int:
    """Run every case (``args`` from bench/run.py's parser), print the table, write
    ``<out>/<machine>-energy[-quick].{json,md}``."""
    import torch
    from harness import check_results_dir, git_commit, machine_name, package_version, versions, write_results
    check_results_dir(args.out)
    meta = {"machine": machine_name(args.device), "device": args.device, "quick": args.quick,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_avg_start": round(os.getloadavg()[0], 2),
            "versions": {**versions(), "scikit-learn": package_version("scikit-learn")}, "commit": git_commit()}
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    data = workloads(args.quick, args.data)
    cases = build_cases(args.device, data)
    records = []
    for name in data:
        with _tf32(args.device == "cuda" and name in TF32_WORKLOADS):
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
    import torch

    from harness import interleaved
    rounds = ROUNDS[args.quick]

    def progress(r, row):
        print(f"[bench] energy {cases[0]['workload']} round {r + 1}/{rounds}: "
              + ", ".join(f"{c['impl']} {t * 1e3:.1f} ms" for c, t in zip(cases, row)),
              file=sys.stderr, flush=True)
    # (no thread pool spins after a synchronised CUDA call: the short pause)
    times, outs = interleaved([case["make"]() for case in cases], args.device, rounds,
                              pause_s=PAUSE_S[args.quick] if args.device == "cpu" else PAUSE_S[True],
                              warmup=[case["warmup"] for case in cases], progress=progress)
    kinds = [c["kind"] for c in cases]
    ideal = times[:, kinds.index("ideal")] if "ideal" in kinds else None
    anchor = times[:, kinds.index("anchor")] if "anchor" in kinds else None
    eager = times[:, kinds.index("eager")] if "eager" in kinds else None
    shape = settings(cases[0]["workload"])
    records = []
    for i, case in enumerate(cases):
        q1, med, q3 = np.percentile(times[:, i], [25, 50, 75])
        records.append({
            "suite": "energy", "workload": case["workload"], "rows": case["rows"], "impl": case["impl"],
            "kind": case["kind"], "device": args.device, "dtype": "float32",
            "shapes": {"n": case["rows"], "n_visible": N_VISIBLE, **shape},
            "tf32": args.device == "cuda" and torch.backends.cuda.matmul.allow_tf32,
            "median_s": float(med), "iqr_s": float(q3 - q1), "rounds": rounds,
            "times_s": times[:, i].tolist(),
            "recon": None if case["kind"] == "ideal" else reconstruction_error(outs[i], x),
            "x_ideal": float(np.median(times[:, i] / ideal)) if ideal is not None else None,
            "x_sklearn": float(np.median(anchor / times[:, i])) if anchor is not None else None,
            "x_eager": float(np.median(eager / times[:, i])) if eager is not None else None,
            "versions": meta["versions"], "commit": meta["commit"]})
    return records


@contextlib.contextmanager
def _tf32(allow: bool):
    """TF32 matmuls allowed (on CUDA) inside the block when ``allow``; the flag as it was after."""
    if not allow:
        yield
        return
    import torch
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per workload and genkernels backend row (``build_cases``' kind "backend")
    of the run's device (``pytest bench/ --benchmark-only``; options in bench/conftest.py)."""
    if "case" not in metafunc.fixturenames:
        return
    from harness import bench_options
    device, quick, directory = bench_options(metafunc.config)
    data = workloads(quick, directory)
    if quick:  # one batch of the large workload: a few seconds per case on 2 cores
        data["large"] = data["large"][:LARGE["batch"]]
    cases = [(case, data[case["workload"]]) for case in build_cases(device, data) if case["kind"] == "backend"]
    metafunc.parametrize("case", cases, ids=[f"{c['workload']}-{c['impl'].replace(' ', '-')}" for c, _ in cases])


def test_rbm_epoch(benchmark, case, request):
    """Time one PCD-k epoch of ``genkernels.RBM.fit`` (the whole fit) on one workload: the
    trained model reconstructs the rows better than the untrained one."""
    import genkernels
    from harness import bench_options, benchmark_call
    case, x = case
    device = bench_options(request.config)[0]
    shape = settings(case["workload"])
    with _tf32(device == "cuda" and case["workload"] in TF32_WORKLOADS):
        model = benchmark_call(benchmark, case["make"](), device, rounds=3)
    benchmark.extra_info.update({"workload": case["workload"], "impl": case["impl"], "rows": case["rows"],
                                 "n_visible": N_VISIBLE, **shape})
    untrained = genkernels.RBM(N_VISIBLE, shape["n_hidden"], seed=0, device=device)
    assert reconstruction_error(model, x) < reconstruction_error(untrained, x)
