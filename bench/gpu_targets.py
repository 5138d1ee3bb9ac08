"""Every family's GPU targets in one short run, timed with CUDA events (``scripts/gpu_check.sh``
runs it per family, after the family's ``gpu`` tests).

    python bench/gpu_targets.py [som] [ising] [energy] [autoregressive] [flows] [--out DIR] [--rounds N]
                                [--dry-run]

No family named: all of them. Each case is a warm-up call, then ``--rounds`` timed calls
(CUDA events, ``gpu_quick.cuda_time``; one round for the cases that take a second or more);
its record holds the median, the rounds, a rate, and a correctness check of its output:

* ``som`` -- exact BMU search ``ops.som_bmu``, 1,000,000 x 256 fp32 against 4,096 nodes,
  with ``precision="fp32"``, ``"tf32"`` and ``"bf16"`` (tensor-core candidates, certified,
  exact fp32 re-rank), each with ``search="fused"`` and ``"blocked"``, against the bare
  fp32 ``torch.mm`` of the same shapes and the tiled ``torch.addmm`` + ``argmin`` anchor
  (both from bench/bench_som.py); checked: the chosen node is the fp64 nearest node (up
  to ties) on 4,096 spread rows, and every index equal to the fp32 fused search's
  (certified searches are exact by construction). Online SOM epoch of 64 maps 32x32x64,
  10,000 steps, N=50,000 (bench_som's ``multi_map`` workload), ``backend=None`` (auto) and triton; one map 40x40x784,
  2,000 steps, cuda and triton; checked: finite, and the quantization error of map 0 within
  2% across the backends of the group (long sequential runs are compared by quality).
* ``ising`` -- ``Ising2D`` heat-bath sweeps at T_c, L=1024 x 16 lattices and L=16,384 x 1
  lattice, cuda and triton, flips per ns; checked: from one seed both backends give the
  same lattices (Philox streams identical on every backend).
* ``energy`` -- one RBM PCD-1 epoch, 784 x 500, batch 100, 10,000 random binary rows: the
  eager PyTorch loop (the anchor, bench_rbm.make_eager), ``RBM.fit`` on triton, and
  ``RBM.fit(cuda_graph=True)``; checked: reconstruction error (bench_rbm) below the
  untrained model's and within a quarter of the eager loop's progress of it.
  ``bm_gibbs`` N=1000, 64 chains, 5 sweeps and async Hopfield recall N=1000, B=64, 5 sweeps,
  cuda and triton, unit updates per second; checked: Hopfield cuda == triton exactly,
  bm_gibbs the share of chains equal across the backends (fused samplers may part where
  |u - p| <= 1e-6) at least 90%.
* ``autoregressive`` -- forward + backward (bench_autoregressive's and bench_made's inputs)
  of ``masked_conv2d`` (7x7 A C=64, 3x3 B C=256, 5x5 B C=128) against cuDNN's
  ``conv2d(x, w * mask)`` and the cropped kernels, ``masked_linear`` at D=1024 and 4096
  against ``linear(x, w * mask)``, ``masked_mlp`` (MADE's network in one launch each way)
  against the masked_linear layers one by one and the dense network; rate: the anchor's
  median / this one's ("x <anchor>", the anchor timed first); checked: ours' max abs
  difference from the anchor's output. Gated PixelCNN sampling, 28x28, cached against
  naive: cached images/s; checked (bench_pixelcnn_sampling.run_case: the naive sampler over 2
  rows, extrapolated; the speedup in the summary): the first rows equal. No torch.compile anchors here (their
  compile time would eat the run; the full benches have them).
* ``flows`` -- a device-to-device copy of 1 GiB (the bandwidth the targets are read
  against), then forward + backward of ``affine_coupling`` (bench_flows' cases) against the
  eager formula: rate "x eager"; the check's summary adds the bandwidth ours reaches on the
  op's minimal traffic (x, s, t read and y written forward; y's gradient, x, s read and the
  three gradients written backward: 10 values a feature) as a share of the copy's; and
  ``rq_spline`` (bench_flows' spline cases) against the PyTorch reference (and nflows when
  installed).

Results: ``<out>/<machine>-targets.json`` and ``.md`` (default bench/results/, ``<machine>``
as bench/run.py names it, written through its ``write_results`` after every case, so a run
stopped by its time limit keeps what it measured). Records of the families not run are kept
from the file already there. Every record: suite, target, impl (and the backend it
resolved to), shapes, dtype, median_s, rounds, rate, check, versions, commit, tree_clean
(``GENKERNELS_COMMIT`` / ``GENKERNELS_TREE_STATE=clean|dirty`` override git, for copies of the
tree without .git). Exit status 1 when a case raised or a check failed.

``--dry-run``: every case at tiny sizes on CPU tensors, triton under the interpreter
(``TRITON_INTERPRET=1``) and the cpu backend standing in for cuda, one round, no warm-up,
written to ``<machine>-targets-dry.*``: exercises the code paths here (tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import os
import subprocess
import sys
import time
import traceback

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
for _path in (BENCH_DIR, REPO):
    if _path not in sys.path:
        sys.path.insert(0, _path)

FAMILIES = ("som", "ising", "energy", "autoregressive", "flows")
# a case whose warm-up call takes this long is timed on one round
SLOW_CALL_S = 1.0
# paths a run writes into the tree: not a reason to call it dirty
RUN_OUTPUTS = ("bench/results/", "gpu_out/")


# ------------------------------------------------------------------------- metadata
def tree_state() -> tuple[str | None, bool | None, list[str]]:
    """(HEAD commit, whether the tree is clean, the changed paths): from git, or from
    GENKERNELS_COMMIT / GENKERNELS_TREE_STATE when set (a copy of the tree without .git).
    Results the runs write (bench/results/, gpu_out/) do not count as changes."""
    commit = os.environ.get("GENKERNELS_COMMIT") or None
    state = os.environ.get("GENKERNELS_TREE_STATE") or None
    changed: list[str] = []
    try:
        if commit is None:
            commit = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                                    text=True, check=True).stdout.strip() or None
        if state is None:
            status = subprocess.run(["git", "-C", REPO, "status", "--porcelain"], capture_output=True,
                                    text=True, check=True).stdout
            changed = [line[3:] for line in status.splitlines()
                       if line[3:] and not line[3:].startswith(RUN_OUTPUTS)]
            state = "dirty" if changed else "clean"
    except (OSError, subprocess.CalledProcessError):
        pass
    return commit, None if state is None else state == "clean", changed[:20]


class Run:
    """One invocation: device, sizes, timing, and the results file it keeps up to date."""

    def __init__(self, families, out: str, rounds: int, dry: bool):
        import torch

        import harness as runner
        self.torch = torch
        self.runner = runner
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.rounds = 1 if dry else rounds
        self.families = tuple(families)
        self.machine = runner.machine_name(self.device)
        self.name = self.machine + ("-targets-dry" if dry else "-targets")
        self.out = out
        commit, clean, changed = tree_state()
        self.versions = {**runner.versions(), "cuda": torch.version.cuda}
        self.commit, self.clean = commit, clean
        self.meta = {"machine": self.machine, "device": self.device, "dry_run": dry,
                     "gpu": torch.cuda.get_device_name() if self.device == "cuda" else None,
                     "created": datetime.datetime.now().isoformat(timespec="seconds"),
                     "families_run": list(self.families), "commit": commit, "tree_clean": clean,
                     "changed_paths": changed, "versions": self.versions,
                     "timer": "perf_counter (dry run)" if dry else "CUDA events (gpu_quick.cuda_time)",
                     "command": "python bench/gpu_targets.py " + " ".join(self.families)
                                + (" --dry-run" if dry else "")}
        self.records = self._kept_records()
        self.failures = 0

    def _kept_records(self) -> list[dict]:
        """The records of the families this run does not measure, from the file there."""
        import json
        try:
            with open(os.path.join(self.out, self.name + ".json")) as f:
                old = json.load(f)
        except (OSError, ValueError):
            return []
        return [r for r in old.get("cases", []) if isinstance(r, dict) and r.get("suite") not in self.families]

    # sizes and backends
    def size(self, full, tiny):
        return tiny if self.dry else full

    def backend(self, name: str) -> tuple[str | None, str | None]:
        """(the backend that runs for ``name`` here, why none does): on a dry run the cpu
        backend stands in for cuda, and triton runs under the interpreter."""
        import genkernels
        actual = "cpu" if self.dry and name == "cuda" else name
        if actual is None or actual in genkernels.available_backends(self.device):
            return actual, None
        why = (f"backend {actual!r} is not available on {self.device} (available: "
               f"{', '.join(genkernels.available_backends(self.device))})")
        return None, why

    # timing
    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def time(self, fn, rounds: int | None):
        """(median seconds, rounds, last output): one warm-up call, then the rounds."""
        if self.dry:  # no warm-up, wall clock: the code path, not a number
            times, out = [], None
            for _ in range(rounds or 1):
                start = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - start)
            return sorted(times)[len(times) // 2], len(times), out
        from gpu_quick import cuda_time
        if rounds is None:  # one warm-up round decides: slow cases are timed once
            start = time.perf_counter()
            fn()
            self.sync()
            rounds = 1 if time.perf_counter() - start >= SLOW_CALL_S else self.rounds
        median, out = cuda_time(fn, rounds=rounds, with_output=True)
        return median, rounds, out

    # records
    def gpu_backends(self, suite: str, target: str, shapes: dict, dtype: str, call, **kwargs):
        """One :meth:`case` per GPU backend ("cuda", "triton"), timing ``call(backend)``;
        returns (outputs by impl, their records) for the cases that ran, for a cross-check."""
        outs, recs = {}, []
        for impl in ("cuda", "triton"):
            backend, why = self.backend(impl)
            rec, out = self.case(suite, target, impl, shapes, dtype,
                                 lambda backend=backend: lambda: call(backend), backend=backend, skip=why,
                                 **kwargs)
            if out is not None:
                outs[impl] = out
                recs.append(rec)
        return outs, recs

    def case(self, suite: str, target: str, impl: str, shapes: dict, dtype: str, make, *,
             backend: str | None = None, rate=None, check=None, params: dict | None = None,
             note: str = "", rounds: int | None = None, skip: str | None = None):
        """Time ``make()``'s callable into one record (written at once); returns (record,
        last output). ``rate(median_s) -> (value, unit)``; ``check(output) -> dict`` with an
        ``ok`` entry; an exception becomes the record's ``error``, and the run goes on."""
        rec = {"suite": suite, "target": target, "impl": impl, "backend": backend,
               "params": params or {}, "shapes": shapes, "dtype": dtype, "device": self.device,
               "median_s": None, "rounds": 0, "rate": None, "rate_unit": None, "check": None,
               "error": None, "skipped": skip, "note": note, "dry_run": self.dry,
               "versions": self.versions, "commit": self.commit, "tree_clean": self.clean}
        out = None
        start = time.perf_counter()
        if skip is None:
            try:
                fn = make()
                median, n, out = self.time(fn, rounds)
                rec.update(median_s=median, rounds=n)
                if rate is not None:
                    rec["rate"], rec["rate_unit"] = rate(median)
                if check is not None:
                    rec["check"] = check(out)
            except Exception as exc:  # noqa: BLE001 -- recorded; the next case runs
                rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                traceback.print_exc()
        self.add(rec)
        print(f"[targets] {suite} {target} {impl}{' ' + str(params) if params else ''}: "
              + (f"skipped ({skip})" if skip else f"ERROR {rec['error']}" if rec["error"] else
                 f"{_fmt_s(rec['median_s'])} x{rec['rounds']}"
                 + (f", {rec['rate']:.4g} {rec['rate_unit']}" if rec["rate"] is not None else "")
                 + (f", check {_check_text(rec['check'])}" if rec["check"] is not None else ""))
              + f" [{time.perf_counter() - start:.1f} s]", file=sys.stderr, flush=True)
        if self.device == "cuda":
            self.torch.cuda.empty_cache()
        return rec, out

    def add(self, rec: dict) -> None:
        if rec not in self.records:
            self.records.append(rec)
        self.failures += rec["error"] is not None or (rec["check"] is not None and rec["check"].get("ok") is False)
        self.save()

    def update(self, rec: dict, **fields) -> None:
        """Change a written record (a check across the backends of a group) and rewrite."""
        before = rec["check"] is not None and rec["check"].get("ok") is False
        rec.update(fields)
        after = rec["check"] is not None and rec["check"].get("ok") is False
        self.failures += after and not before
        self.save()

    def save(self) -> None:
        import contextlib
        import io
        with contextlib.redirect_stderr(io.StringIO()):  # the writer's line after every case
            self.runner.write_results(self.out, self.name, self.meta, self.records,
                                      markdown(self.records, self.meta))


# ---------------------------------------------------------------------- formatting
def _fmt_s(v) -> str:
    from harness import _fmt_s as fmt
    return fmt(v)


def _check_text(check: dict | None) -> str:
    if check is None:
        return "-"
    head = {True: "ok", False: "FAIL", None: "-"}[check.get("ok")]
    return head + (f": {check['summary']}" if check.get("summary") else "")


def _shapes_text(shapes: dict) -> str:
    return " ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in shapes.items())


def markdown(records: list[dict], meta: dict) -> str:
    v = meta["versions"]
    lines = [f"# GPU targets: {meta['machine']}" + (" (dry run: tiny sizes on CPU)" if meta["dry_run"] else ""),
             "",
             f"{meta['created']}, `{meta['command']}`, commit `{meta['commit']}` "
             f"({'clean' if meta['tree_clean'] else 'dirty' if meta['tree_clean'] is False else 'tree state unknown'}"
             "), " + ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "triton", "cuda", "numpy") if v.get(k))
             + f". Timer: {meta['timer']}; median of the rounds after one warm-up call.", "",
             "Records of families not in this command come from earlier runs: each row's commit is in the JSON.",
             ""]
    for suite in dict.fromkeys(r["suite"] for r in records):
        lines += [f"## {suite}", "",
                  "| target | impl | shapes | dtype | median | rounds | rate | check |",
                  "|---|---|---|---|---:|---:|---:|---|"]
        for r in (r for r in records if r["suite"] == suite):
            impl = r["impl"] + (f" ({', '.join(f'{k}={x}' for k, x in r['params'].items())})" if r["params"] else "")
            if r["backend"] and r["backend"] not in r["impl"]:
                impl += f" -> {r['backend']}"
            if r["error"]:
                median, check = "ERROR", r["error"].splitlines()[0][:120]
            elif r["skipped"]:
                median, check = "skipped", r["skipped"]
            else:
                median, check = _fmt_s(r["median_s"]), _check_text(r["check"])
            rate = "-" if r["rate"] is None else f"{r['rate']:.4g} {r['rate_unit']}"
            lines.append(f"| {r['target']} | {impl} | {_shapes_text(r['shapes'])} | {r['dtype']} | {median} | "
                         f"{r['rounds']} | {rate} | {check} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- som
def _bmu_check(x, weights, indices, rows: int = 4096) -> dict:
    """The chosen node is the nearest in fp64 (up to a relative 1e-5 of the distance) on
    ``rows`` rows spread over x."""
    import torch
    n = x.shape[0]
    sel = torch.linspace(0, n - 1, min(rows, n), device=x.device).long()
    xs, w = x[sel].double(), weights.double()
    d2 = (xs * xs).sum(1, keepdim=True) + (w * w).sum(1)[None] - 2 * xs @ w.T
    best, argbest = d2.min(1)
    got = d2.gather(1, indices.reshape(n, -1)[sel, :1].long()).squeeze(1)
    excess = float(((got - best) / best.abs().clamp_min(1e-12)).max())
    equal = float((indices.reshape(n, -1)[sel, 0] == argbest).double().mean())
    ok = excess <= 1e-5
    return {"ok": ok, "rows_checked": int(sel.numel()), "argmin_equal_fp64": equal,
            "max_rel_excess": excess, "summary": f"fp64 nearest on {sel.numel()} rows (max rel excess {excess:.1e})"}


def som_targets(run: Run) -> None:
    import torch

    import bench_som
    from bench_som import Workload
    from genkernels import backends, ops
    from genkernels.som.reference import PRECISIONS
    SEARCHES = ("fused", "blocked")

    # --- exact BMU search, 1M x 256 against 4,096 nodes
    w = run.size(Workload("bmu_gpu", "random", 1_000_000, 256, 64, 64, 0, scale=True),
                 Workload("bmu_gpu", "random", 128, 16, 8, 8, 0, scale=True))

    def x_of():
        return bench_som.load_data(w, run.device)

    shapes = {"n": w.n, "d": w.d, "k": w.k}
    flops = 2.0 * w.n * w.k * w.d

    def tflops(median):
        return flops / median / 1e12, "TFLOP/s"

    fp32_indices = {}
    for precision, search in itertools.product(PRECISIONS, SEARCHES):
        backend, why = run.backend("triton")

        def make(precision=precision, search=search, backend=backend):
            x = x_of()
            weights = bench_som.initial_weights(x, w.k)
            return lambda: ops.som_bmu(x, weights, precision=precision, search=search, backend=backend)

        def check(out, precision=precision, search=search):
            x = x_of()
            result = _bmu_check(x, bench_som.initial_weights(x, w.k), out[0])
            if (precision, search) == ("fp32", "fused"):
                fp32_indices["idx"] = out[0]
            elif "idx" in fp32_indices:
                result["indices_equal_fp32"] = float((out[0] == fp32_indices["idx"]).double().mean())
                result["ok"] = result["ok"] and result["indices_equal_fp32"] == 1.0
                result["summary"] += f"; {100 * result['indices_equal_fp32']:.4f}% = fp32 fused search"
            return result
        note = ("fused distance + top-k in registers" if search == "fused" else
                "blocked: " + ("cuBLAS products" if precision == "fp32" else f"{precision} Triton GEMM")
                + " per L2-sized row block, then select + re-rank")
        if precision != "fp32":
            note += f"; {precision} tensor-core candidates, certified, exact fp32 re-rank"
        run.case("som", "som_bmu", "genkernels.ops.som_bmu", shapes, "float32", make, backend=backend,
                 params={"precision": precision, "search": search}, rate=tflops, check=check, skip=why,
                 note=note)
    fp32_indices.clear()
    baselines = {c.impl: c for c in bench_som._bmu_cases(w, run.device, x_of)
                 if c.impl in ("torch.mm", "torch addmm+argmin")}
    run.case("som", "som_bmu", "torch.mm", shapes, "float32", baselines["torch.mm"].make, rate=tflops,
             note=baselines["torch.mm"].note)

    def naive_check(out):
        x = x_of()
        return _bmu_check(x, bench_som.initial_weights(x, w.k), out)
    run.case("som", "som_bmu", "torch addmm+argmin", shapes, "float32", baselines["torch addmm+argmin"].make,
             rate=tflops, check=naive_check, note="anchor: " + baselines["torch addmm+argmin"].note)

    # --- online epochs: 64 maps 32x32x64 (auto, triton); one map 40x40x784 (cuda, triton)
    groups = [
        (run.size(Workload("multi_map", "random", 50_000, 64, 32, 32, 10_000, maps=64),
                  Workload("multi_map", "random", 300, 8, 4, 4, 30, maps=3)), ("auto", "triton")),
        (run.size(Workload("single_map", "random", 10_000, 784, 40, 40, 2_000),
                  Workload("single_map", "random", 200, 16, 4, 4, 30)), ("cuda", "triton")),
    ]
    for wl, impls in groups:
        outs, recs = {}, []
        shapes = wl.shapes()
        for impl in impls:
            if impl == "auto":
                backend = backends.resolve("som_online", torch.device(run.device), None, n_maps=wl.maps)
                why = None
            else:
                backend, why = run.backend(impl)
            call_backend = None if impl == "auto" else backend
            rec, out = run.case("som", "som_online epoch", impl, shapes, "float32",
                                lambda wl=wl, b=call_backend: _online_epoch(run, wl, b), backend=backend,
                                rate=lambda median, wl=wl: (wl.maps * wl.steps / median, "steps/s"),
                                skip=why, params={"maps": wl.maps} if wl.maps > 1 else {},
                                rounds=1 if impl == "triton" and wl.maps == 1 else None)
            if out is not None:
                outs[impl] = out
                recs.append(rec)
        # quality across the backends of the group: QE of map 0 within 2%
        x = bench_som.load_data(wl, run.device)
        qe = {impl: bench_som.quality(x, out[0], wl.lattice)[0] for impl, out in outs.items()}
        first = next(iter(outs), None)
        for rec, (impl, out) in zip(recs, outs.items()):
            rel = abs(qe[impl] - qe[first]) / qe[first] if qe[first] else math.inf
            diff = float((out - outs[first]).abs().max())
            ok = bool(torch.isfinite(out).all()) and rel <= 0.02
            run.update(rec, check={"ok": ok, "qe_map0": qe[impl], "qe_rel_diff": rel, "vs": first,
                                   "max_abs_diff": diff,
                                   "summary": f"QE(map 0) {qe[impl]:.4f}, {100 * rel:.2f}% from {first}, "
                                              f"max |diff| {diff:.2e}"})


def _online_epoch(run: Run, wl, backend):
    """Inputs of one online epoch of ``wl`` (as bench_som's make_ours builds them: each map a
    shuffled pass over the data, bench_som's schedule); returns the callable."""
    import torch

    import bench_som
    from genkernels import ops
    x = bench_som.load_data(wl, run.device)
    w0 = bench_som.initial_weights(x, wl.k, wl.maps).reshape(wl.maps, wl.k, wl.d)
    coords = wl.lattice.coords(torch.float32, x.device)
    gen = torch.Generator().manual_seed(bench_som.SEED + 2)
    order = torch.stack([torch.randperm(wl.n, generator=gen)[:wl.steps] for _ in range(wl.maps)]).to(x.device)
    lr, sigma = bench_som.schedule(wl.steps, wl.rows, wl.cols)
    lr_t = torch.tensor(lr, dtype=torch.float32, device=x.device).expand(wl.maps, -1)
    sig_t = torch.tensor(sigma, dtype=torch.float32, device=x.device).expand(wl.maps, -1)
    return lambda: ops.som_online(w0, x, order, lr_t, sig_t, coords, backend=backend)


# -------------------------------------------------------------------------- ising
def ising_targets(run: Run) -> None:
    import torch

    import genkernels
    from bench_ising import T_CRITICAL
    cases = run.size([(1024, 16, 50), (16384, 1, 10)], [(16, 2, 2), (32, 1, 2)])  # (L, B, sweeps per call)
    for L, B, sweeps in cases:
        finals, recs = {}, []
        for impl in ("cuda", "triton"):
            backend, why = run.backend(impl)

            def make(L=L, B=B, sweeps=sweeps, backend=backend):
                model = genkernels.Ising2D(L, T_CRITICAL, n_lattices=B, seed=0, device=run.device)
                return lambda: model.sweep(sweeps, backend=backend)

            def flips(median, L=L, B=B, sweeps=sweeps):
                return B * L * L * sweeps / median / 1e9, "flips/ns"
            rec, _ = run.case("ising", "Ising2D.sweep", impl, {"L": L, "n_lattices": B, "sweeps_per_call": sweeps},
                              "int8", make, backend=backend, rate=flips, skip=why,
                              note="heat-bath at T_c, checkerboard")
            if why is None and rec["error"] is None:
                model = genkernels.Ising2D(L, T_CRITICAL, n_lattices=B, seed=0, device=run.device)
                finals[impl] = model.sweep(2, backend=backend).spins.clone()
                recs.append(rec)
        first = next(iter(finals), None)
        for rec, (impl, spins) in zip(recs, finals.items()):
            equal = bool(torch.equal(spins, finals[first]))
            run.update(rec, check={"ok": equal if len(finals) > 1 else None, "vs": first,
                                   "summary": f"2 sweeps from seed 0: lattices {'=' if equal else '!='} {first}"})
        del finals
        if run.device == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------- energy
def energy_targets(run: Run) -> None:
    _rbm_targets(run)
    _bm_gibbs_targets(run)
    _hopfield_targets(run)


def _rbm_targets(run: Run) -> None:
    import types

    import numpy as np
    import torch

    import bench_rbm
    rows, n_hidden, batch = run.size((10_000, 500, 100), (100, 8, 50))
    x = (np.random.default_rng(0).random((rows, bench_rbm.N_VISIBLE), dtype=np.float32)
         < bench_rbm.RANDOM_DENSITY).astype(np.float32)
    shapes = {"n": rows, "n_visible": bench_rbm.N_VISIBLE, "n_hidden": n_hidden, "batch": batch, "k": 1}
    g = torch.Generator().manual_seed(0)
    untrained = bench_rbm.reconstruction_error(types.SimpleNamespace(
        weights=torch.randn(bench_rbm.N_VISIBLE, n_hidden, generator=g) * 0.01,
        visible_bias=torch.zeros(bench_rbm.N_VISIBLE), hidden_bias=torch.zeros(n_hidden)), x)
    backend, why = run.backend("triton")
    graph_why = why or ("CUDA graphs need CUDA" if run.device != "cuda" else None)
    impls = [("eager loop", None, lambda: bench_rbm.make_eager(x, run.device, n_hidden, batch, 1),
              "anchor: plain PyTorch PCD-1, one op at a time (bench_rbm.make_eager)"),
             ("RBM.fit", why, lambda: bench_rbm.make_ours(x, run.device, backend, n_hidden, batch, 1),
              "genkernels.RBM(...).fit(epochs=1, method='pcd') under use_backend"),
             ("RBM.fit(cuda_graph=True)", graph_why,
              lambda: bench_rbm.make_ours(x, run.device, backend, n_hidden, batch, 1, cuda_graph=True),
              "each full batch's update replayed as one CUDA graph (warm-up and capture included)")]
    recs = []
    for impl, skip, make, note in impls:
        def check(model):
            recon = bench_rbm.reconstruction_error(model, x)
            return {"ok": None, "recon": recon, "untrained_recon": untrained}
        rec, _ = run.case("energy", "RBM PCD-1 epoch", impl, shapes, "float32", make,
                          backend=None if impl == "eager loop" else backend, check=check, skip=skip,
                          note=note, rate=lambda median: (rows / median, "rows/s"))
        recs.append(rec)
    eager = recs[0]
    for rec in recs:
        if rec["check"] is None:
            continue
        recon = rec["check"]["recon"]
        progress = untrained - (eager["check"]["recon"] if eager["check"] else recon)
        ok = recon < untrained and (eager["check"] is None or abs(recon - eager["check"]["recon"]) < 0.25 * progress)
        fields = {"check": {**rec["check"], "ok": ok,
                            "summary": f"recon {recon:.4f} (untrained {untrained:.4f}"
                                       + (f", eager {eager['check']['recon']:.4f})" if eager["check"] else ")")}}
        if eager["median_s"] and rec["median_s"]:
            fields["x_eager"] = eager["median_s"] / rec["median_s"]
        run.update(rec, **fields)


def _bm_gibbs_targets(run: Run) -> None:
    import torch

    from bench_bm_gibbs import spin_glass_machine
    from genkernels import ops
    n, c, sweeps = run.size((1000, 64, 5), (8, 2, 1))
    w, b, s0 = spin_glass_machine(n, c, run.device)
    temps = [1.0] * sweeps
    outs, recs = run.gpu_backends(
        "energy", "bm_gibbs", {"N": n, "chains": c, "sweeps": sweeps}, "float32",
        lambda backend, w=w, b=b, s0=s0: ops.bm_gibbs(w, b, s0, temps, seed=1, backend=backend),
        rate=lambda median: (c * n * sweeps / median, "updates/s"),
        note="spin glass, T = 1, random order (bench_bm_gibbs.spin_glass_machine)")
    first = next(iter(outs), None)
    for rec, (impl, out) in zip(recs, outs.items()):
        chains_equal = float((out == outs[first]).all(1).double().mean())
        run.update(rec, check={"ok": chains_equal >= 0.9 if len(outs) > 1 else None, "vs": first,
                               "chains_equal": chains_equal,
                               "summary": f"{100 * chains_equal:.1f}% of chains = {first}"})
    del w, b, s0, outs
    if run.device == "cuda":
        torch.cuda.empty_cache()


def _hopfield_targets(run: Run) -> None:
    import torch

    from bench_hopfield_recall import spin_glass
    from genkernels import ops
    n, batch, sweeps = run.size((1000, 64, 5), (8, 2, 1))
    w, probes = spin_glass(n, batch, run.device)
    outs, recs = run.gpu_backends(
        "energy", "hopfield_recall async", {"N": n, "B": batch, "sweeps": sweeps}, "float32",
        lambda backend: ops.hopfield_recall(w, probes, max_sweeps=sweeps, seed=1, backend=backend),
        rate=lambda median: (batch * n * sweeps / median, "updates/s"),
        note="spin glass probes, random order (bench_hopfield_recall.spin_glass)")
    first = next(iter(outs), None)
    for rec, (impl, (states, converged)) in zip(recs, outs.items()):
        equal = bool(torch.equal(states, outs[first][0]) and torch.equal(converged, outs[first][1]))
        run.update(rec, check={"ok": equal if len(outs) > 1 else None, "vs": first,
                               "converged_early": int(converged.sum()),
                               "summary": f"states and converged {'=' if equal else '!='} {first}; "
                                          f"{int(converged.sum())} probes converged early"})


# ---------------------------------------------------------- autoregressive, flows
def _against(run: Run, suite: str, target: str, shapes: dict, impls: dict, anchor: str, check=None,
             note: str = "") -> dict:
    """Time ``impls[anchor]`` (a callable) first, then every other one with rate = the
    anchor's median / its own ("x <anchor>"); ``check(name) -> dict | None`` for each.
    Returns the records by name."""
    recs = {}
    order = [anchor] + [name for name in impls if name != anchor]
    for name in order:
        base = recs[anchor]["median_s"] if anchor in recs else None
        if name == anchor:   # 1 by definition: every row reads against the same unit
            rate = lambda median: (1.0, f"x {anchor}")   # noqa: E731
        else:
            rate = None if not base else (lambda median, base=base: (base / median, f"x {anchor}"))
        backend = "triton" if name.startswith("ours (triton)") else "cpu" if name.startswith("ours (cpu)") else None
        recs[name], _ = run.case(suite, target, name, shapes, "float32", lambda fn=impls[name]: fn, backend=backend,
                                 rate=rate, check=None if check is None else (lambda _out, name=name: check(name)),
                                 note=note)
    return recs


def _diff_check(diff: float, tol: float):
    """A check for ours against the anchor's output: max abs difference within tol."""
    def check(name):
        if not name.startswith("ours ("):
            return None
        return {"ok": bool(diff <= tol), "max_abs_diff": diff, "summary": f"max |ours - anchor| = {diff:.1e}"}
    return check


def autoregressive_targets(run: Run) -> None:
    import bench_autoregressive as ar
    import bench_made
    import bench_pixelcnn_sampling as sampling
    full = {c[0]: c for c in ar.CASES[False]}
    cases = run.size([full[n] for n in ("7x7 A C=64 B=16 28x28", "3x3 B C=256 B=8 16x16", "5x5 B C=128 B=8 28x28",
                                        "linear D=1024 B=256", "linear D=4096 B=128")],
                     [c for c in ar.CASES[True] if len(c) == 3 or c[5] in ("A", "B")])
    for case in cases:
        impls = {k: v for k, v in ar.implementations(case, run.device).items() if "torch.compile" not in k}
        anchor = ar.DENSE_LINEAR if len(case) == 3 else ar.DENSE
        shapes = ({"B": case[1], "D": case[2]} if len(case) == 3 else
                  {"B": case[1], "C": case[2], "HW": case[3], "kernel": case[4], "mask": case[5]})
        _against(run, "autoregressive", ("masked_linear " if len(case) == 3 else "masked_conv2d ") + case[0], shapes,
                 impls, anchor, _diff_check(ar.check_agreement(case, run.device), 1e-3), note="forward + backward")
    for case in run.size(bench_made.CASES[False], bench_made.CASES[True]):
        impls = {k: v for k, v in bench_made.implementations(case, run.device).items() if "torch.compile" not in k}
        name, b, d, h, p = case
        _against(run, "autoregressive", "masked_mlp " + name, {"B": b, "D": d, "H": h, "P": p}, impls,
                 bench_made.LAYERS, _diff_check(bench_made.max_abs_diff(case, run.device), 1e-3),
                 note="MADE's network, forward + backward")
    import genkernels
    case = run.size((32, 6, 28, 16), sampling.CASES[True][0])   # (channels, layers, side, batch)
    channels, layers, side, batch = case
    rows = run.size(2, 1)

    def make():
        model = genkernels.GatedPixelCNN(1, channels, layers, 5, seed=0).to(run.device)
        return lambda: model.sample(batch, (side, side), seed=1, method="cached")

    def sampled(_images):   # both methods once more, on the same model and seed (bench_pixelcnn_sampling)
        out = sampling.run_case(case, run.device, rows)
        return {"ok": out["same_values"], "speedup": out["speedup"],
                "summary": f"naive {out['naive_images_per_s']:.3g} images/s (over {out['naive_rows']} rows, "
                f"extrapolated): cached {out['speedup']:.3g}x; first rows {'=' if out['same_values'] else '!='}"}
    run.case("autoregressive", "GatedPixelCNN.sample 28x28" if side == 28 else f"GatedPixelCNN.sample {side}x{side}",
             "cached", {"channels": channels, "layers": layers, "side": side, "batch": batch}, "float32", make,
             rounds=1, rate=lambda median: (batch / median, "images/s"), check=sampled,
             note="the cached sampler (one call, whole images); the check times the naive one")


def flows_targets(run: Run) -> None:
    import torch

    import bench_flows
    n = run.size(1 << 28, 1 << 12)   # floats: 1 GiB
    buffers = [torch.empty(n, device=run.device), torch.empty(n, device=run.device)]
    copy, _ = run.case("flows", "device copy (bandwidth reference)", "torch copy_", {"floats": n}, "float32",
                       lambda: lambda: buffers[1].copy_(buffers[0]),
                       rate=lambda median: (2 * 4 * n / median / 1e9, "GB/s"))
    buffers.clear()
    if run.device == "cuda":
        torch.cuda.empty_cache()
    copy_bw = copy["rate"] * 1e9 if copy["rate"] else None
    for case in run.size(bench_flows.CASES[False], bench_flows.CASES[True]):
        name, batch, shape = case[0], case[1], case[2]
        impls = {k: v for k, v in bench_flows.implementations(case, run.device).items() if "torch.compile" not in k}
        features = batch * math.prod(shape)
        recs = _against(run, "flows", "affine_coupling " + name, {"B": batch, "features": list(shape)}, impls,
                        bench_flows.EAGER, _diff_check(bench_flows.check_agreement(case, run.device), 1e-4),
                        note="forward + backward")
        ours = next((r for k, r in recs.items() if k.startswith("ours")), None)
        if ours and ours["median_s"] and copy_bw and ours["check"]:
            share = 10 * 4 * features / ours["median_s"] / copy_bw
            run.update(ours, check={**ours["check"], "bandwidth_share": share,
                                    "summary": ours["check"]["summary"] + f"; {share:.0%} of the copy's bandwidth"})
    for case in run.size(bench_flows.SPLINE_CASES[False], bench_flows.SPLINE_CASES[True]):
        impls = {k: v for k, v in bench_flows.spline_implementations(case, run.device).items()
                 if "torch.compile" not in k}
        name, batch, feats, bins, inverse = case
        _against(run, "flows", "rq_spline " + name, {"B": batch, "D": feats, "K": bins, "inverse": inverse}, impls,
                 "reference (PyTorch)", _diff_check(bench_flows.spline_agreement(case, run.device), 1e-3),
                 note="forward + backward")


TARGETS = {"som": som_targets, "ising": ising_targets, "energy": energy_targets,
           "autoregressive": autoregressive_targets, "flows": flows_targets}


# --------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_targets", description=__doc__.split("\n\n")[0])
    p.add_argument("families", nargs="*", metavar="FAMILY",
                   help=f"one or more of {', '.join(FAMILIES)} (default: all)")
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"),
                   help="folder for <machine>-targets.json and .md (default bench/results)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per case after the warm-up (default 3)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes on CPU tensors (triton interpreted, cpu for cuda): the code paths only")
    args = p.parse_args(argv)
    for family in args.families:
        if family not in FAMILIES:
            p.error(f"unknown family {family!r}: choose from {', '.join(FAMILIES)}")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    args.families = list(dict.fromkeys(args.families)) or list(FAMILIES)
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.dry_run and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_targets: no CUDA device is visible (--dry-run runs the cases on CPU)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: the torch.mm baselines
    torch.backends.cudnn.allow_tf32 = False
    run = Run(args.families, args.out, args.rounds, args.dry_run)
    for family in args.families:
        start = time.perf_counter()
        try:
            TARGETS[family](run)
        except Exception:  # noqa: BLE001 -- a broken family does not stop the next
            traceback.print_exc()
            run.failures += 1
        print(f"[targets] {family}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    run.save()
    print(markdown(run.records, run.meta))
    print(f"[targets] wrote {os.path.join(args.out, run.name)}.json and .md", file=sys.stderr)
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
