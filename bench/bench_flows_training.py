"""Normalizing flows benchmark: a whole training step of vector flows, ours against nflows and zuko.

One step is loss = -log_prob(x).mean(), its backward and an Adam step (lr 1e-3), on the same
batch for every implementation, in interleaved rounds (each round times every implementation
once, after one untimed step of its own), 1 thread unless --threads. Three flows, L
transforms each with conditioners of two hidden layers of H units (ReLU):

- RealNVP: affine couplings on alternating halves. ``ours`` = genkernels.RealNVP((D,)), an
  ActNorm before each coupling, the scale bounded by 2 tanh(s / 2), the conditioner
  (genkernels.flows.KeptMLP) fed the kept half; ``nflows`` = [ActNorm, AffineCouplingTransform (halves, an
  nflows.nn.nets.MLP fed the kept half; scale sigmoid(s + 2) + 1e-3)] x L; ``zuko`` =
  zuko.flows.RealNVP (no ActNorm; alternating odd/even features rather than halves;
  zuko's monotonic affine scale).
- MAF: ``ours`` = genkernels.MAF(D, actnorm=False); ``nflows`` = [MaskedAffineAutoregressive-
  Transform (MADE, num_blocks=1 feed-forward block after the input layer: two hidden
  layers), ReversePermutation] x L; ``zuko`` = zuko.flows.MAF (orders alternating).
- NSF (autoregressive, K = 8 bins on [-3, 3], identity outside): ``ours`` =
  genkernels.NSF(D, bound=3, actnorm=False); ``nflows`` = [MaskedPiecewiseRationalQuadratic-
  AutoregressiveTransform (tails="linear", tail_bound=3), ReversePermutation] x L; ``zuko`` =
  zuko.flows.NSF's construction (MAF of MonotonicRQSTransform) with bound 3 in place of its
  fixed 5.

Ours' MADEs (MAF, NSF) also have genkernels' direct masked input-to-output connections, which
nflows' and zuko's lack: ours' MAF and NSF have more parameters (the params column). The parametrisations
differ (scale functions, spline parameter maps, initialisations), so the losses differ too:
each row records the loss of its model's first step and of its last. Before timing, every
model's log_prob of the batch is checked finite. For ours, five profiled steps (two with
--quick; torch.profiler) give the median share of a step spent inside genkernels ops: the
flow's op (affine_coupling or rq_spline, forward and backward) and all of them (MADE's
masked_linear too) -- profiler overhead included, so a guide only.

Data: two moons (sklearn.datasets.make_moons, D=2, B=1024, H=64) and the 8x8 digits
(genkernels.data.load_digits, D=64, B=512, H=128: dequantised, standardised per pixel);
--quick: two moons at B=128, H=16, L=2. nflows and zuko are optional (pip install
genkernels[bench]); an anchor that is not installed is left out of the table.

    python bench/bench_flows_training.py [--quick] [--rounds N] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

import numpy as np
import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402

import genkernels  # noqa: E402
from genkernels.model import adam  # noqa: E402

LR = 1e-3
BINS, BOUND = 8, 3.0
FLOWS = ("RealNVP", "MAF", "NSF")
OURS, ANCHORS = "ours", ("nflows", "zuko")
# ours again, stepped by the optimiser genkernels' fit uses (torch's fused Adam,
# genkernels.model.adam): what a user of fit gets; the anchors' rows and ours run the
# default Adam, as a hand-written loop does
OURS_FIT = "ours, fit's fused Adam"
# (name, data, batch, hidden, transforms)
CASES = {False: [("moons D=2 B=1024 H=64", "moons", 1024, 64, 5),
                 ("digits D=64 B=512 H=128", "digits", 512, 128, 5)],
         True: [("moons D=2 B=128 H=16", "moons", 128, 16, 2)]}
# the genkernels ops a profiled step of ours is split into: the flow's own op (forward and
# backward) and every op of the library (MADE's masked_linear too)
FLOW_OPS = {"RealNVP": "affine_coupling", "MAF": "affine_coupling", "NSF": "rq_spline"}


def installed_anchors() -> tuple[str, ...]:
    return tuple(a for a in ANCHORS if importlib.util.find_spec(a) is not None)


def load_data(kind: str, batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, D) float32: two moons standardised, or digits dequantised and standardised."""
    if kind == "moons":
        from sklearn.datasets import make_moons
        x, _ = make_moons(n_samples=batch, noise=0.05, random_state=seed)
    else:
        from genkernels.data import load_digits
        x = load_digits()[0][:batch].astype(np.float64)
        x += np.random.default_rng(seed).uniform(0, 1 / 16, x.shape)   # the pixels are 17 levels
    x = (x - x.mean(0)) / x.std(0)
    return torch.from_numpy(x).float()


# ------------------------------------------------------------------------- models
def ours(flow: str, d: int, hidden: int, layers: int) -> torch.nn.Module:
    if flow == "RealNVP":
        return genkernels.RealNVP((d,), layers=layers, hidden=hidden)
    if flow == "MAF":
        return genkernels.MAF(d, layers=layers, hidden=hidden, actnorm=False)
    return genkernels.NSF(d, layers=layers, bins=BINS, bound=BOUND, hidden=hidden, actnorm=False)


def nflows_model(flow: str, d: int, hidden: int, layers: int) -> torch.nn.Module:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import (
        ActNorm,
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        ReversePermutation,
    )

    class Conditioner(torch.nn.Module):
        """nflows' plain MLP, taking the context argument couplings pass (and ignoring it)."""

        def __init__(self, in_features, out_features):
            super().__init__()
            self.net = MLP((in_features,), (out_features,), [hidden, hidden])

        def forward(self, x, context=None):
            return self.net(x)

    steps = []
    for i in range(layers):
        if flow == "RealNVP":  # nflows: mask > 0 transformed; ours keeps the first half at even layers
            transformed = (torch.arange(d) >= (d + 1) // 2) == (i % 2 == 0)
            steps += [ActNorm(d), AffineCouplingTransform(transformed.int() * 2 - 1, Conditioner)]
            continue
        # MADE: an input layer and num_blocks hidden-to-hidden layers -- num_blocks=1 is two hidden layers
        made = dict(features=d, hidden_features=hidden, num_blocks=1, use_residual_blocks=False)
        if flow == "MAF":
            steps.append(MaskedAffineAutoregressiveTransform(**made))
        else:
            steps.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                **made, num_bins=BINS, tails="linear", tail_bound=BOUND))
        steps.append(ReversePermutation(d))
    return Flow(CompositeTransform(steps), StandardNormal([d]))


def zuko_model(flow: str, d: int, hidden: int, layers: int) -> torch.nn.Module:
    import zuko
    kw = dict(transforms=layers, hidden_features=(hidden, hidden))
    if flow == "RealNVP":
        return zuko.flows.RealNVP(d, **kw)
    if flow == "MAF":
        return zuko.flows.MAF(d, **kw)
    # zuko.flows.NSF is exactly this MAF with the spline's bound fixed at 5
    spline = functools.partial(zuko.transforms.MonotonicRQSTransform, bound=BOUND, slope=1e-3)
    return zuko.flows.MAF(d, univariate=spline, shapes=[(BINS,), (BINS,), (BINS - 1,)], **kw)


BUILDERS = {OURS: ours, OURS_FIT: ours, "nflows": nflows_model, "zuko": zuko_model}


def log_prob(impl: str, model, x: torch.Tensor) -> torch.Tensor:
    """(B,) log-densities: zuko's flows are lazy distributions (model() builds the flow)."""
    return model().log_prob(x) if impl == "zuko" else model.log_prob(x)


def training_step(impl: str, model, x: torch.Tensor, losses: list):
    """A callable running one step (zero_grad, -mean log_prob, backward, Adam), each step's
    loss appended to ``losses`` (a detached tensor: no synchronisation inside the step)."""
    optimizer = adam(model.parameters(), LR) if impl == OURS_FIT else torch.optim.Adam(model.parameters(), lr=LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = -log_prob(impl, model, x).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        return loss
    return step


def kernel_share(step, flow: str, steps: int = 5) -> dict:
    """``steps`` profiled steps of ours: the median over them of the step's wall time under the
    profiler and of the shares of it spent inside genkernels ops (the union of their intervals:
    nested ops counted once) -- a median, as one step on a busy machine can be preempted."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with torch.profiler.record_function("training step"):
                step()
    events = prof.events()
    op = FLOW_OPS[flow]
    flow_names = (f"genkernels::{op}", f"genkernels::{op}_backward")

    def covered(lo, hi, pred) -> float:
        spans = sorted((e.time_range.start, e.time_range.end) for e in events
                       if pred(e.name) and lo <= e.time_range.start < hi)
        total, end = 0.0, -np.inf
        for a, b in spans:
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    rows = []
    for whole in (e for e in events if e.name == "training step"):
        lo, hi = whole.time_range.start, whole.time_range.end
        rows.append((hi - lo, covered(lo, hi, lambda n: n in flow_names) / (hi - lo),
                     covered(lo, hi, lambda n: n.startswith("genkernels::")) / (hi - lo)))
    span, flow_share, all_share = (float(np.median(col)) for col in zip(*rows))
    return {"profiled_step_s": span * 1e-6, "profiled_steps": len(rows), "flow_op": op,
            "flow_op_share": flow_share, "genkernels_ops_share": all_share}


# ---------------------------------------------------------------------------- run
def run(quick: bool = False, rounds: int | None = None, out: str | None = None, threads: int = 1,
        device: str = "cpu") -> list[dict]:
    torch.set_num_threads(threads)
    loadavg_start = os.getloadavg()[0]
    rounds = rounds or (3 if quick else 20)
    impls = (OURS,) + installed_anchors() + (OURS_FIT,)
    missing = [a for a in ANCHORS if a not in impls]
    if missing:
        print(f"[bench] not installed, left out: {', '.join(missing)} (pip install genkernels[bench])",
              file=sys.stderr)
    records = []
    for name, data, batch, hidden, layers in CASES[quick]:
        x = load_data(data, batch).to(device)
        d = x.shape[1]
        for flow in FLOWS:
            torch.manual_seed(0)
            models = {impl: BUILDERS[impl](flow, d, hidden, layers).to(device) for impl in impls}
            for impl, model in models.items():
                lp = log_prob(impl, model, x)
                if not bool(torch.isfinite(lp).all()):
                    raise RuntimeError(f"{name} {flow}: {impl}'s log_prob is not finite at initialisation")
            losses = {impl: [] for impl in impls}
            steps = [training_step(impl, models[impl], x, losses[impl]) for impl in impls]
            times, _ = harness.interleaved(steps, device, rounds, warm_each=True)
            seen_by_impl = {impl: [float(v) for v in losses[impl]] for impl in impls}
            share = kernel_share(steps[0], flow, 2 if quick else 5) if device == "cpu" else {}
            for i, impl in enumerate(impls):
                col = times[:, i]
                q1, q3 = np.percentile(col, [25, 75])
                seen = seen_by_impl[impl]
                if not all(np.isfinite(seen)):
                    raise RuntimeError(f"{name} {flow}: {impl}'s loss went non-finite in training")
                rec = {"case": name, "data": data, "batch": batch, "features": d, "hidden": hidden,
                       "transforms": layers, "flow": flow, "impl": impl,
                       "params": sum(p.numel() for p in models[impl].parameters()),
                       "median_s": float(np.median(col)), "iqr_s": float(q3 - q1), "rounds": rounds,
                       "x_ours": float(np.median(col / times[:, 0])), "first_loss": seen[0],
                       "last_loss": seen[-1], "steps": len(seen)}
                if impl == OURS_FIT:   # each anchor against this row, round by round
                    rec["anchor_x"] = {a: float(np.median(times[:, impls.index(a)] / col)) for a in impls
                                       if a in ANCHORS}
                if impl == OURS:
                    rec.update(share)
                records.append(rec)
            print(f"{name} {flow}: " + ", ".join(f"{impl} {np.median(times[:, i]) * 1e3:.2f} ms"
                                                  for i, impl in enumerate(impls)), file=sys.stderr)
    table = _table(records, device, threads)
    print(table)
    if out:
        harness.write_layer_results(
            out, device, quick, threads, "flows_training", "flows-training", records, table,
            loadavg_start=loadavg_start, lr=LR, bins=BINS, bound=BOUND,
            anchors={a: harness.package_version(a) for a in impls if a in ANCHORS},
            timing="one training step (zero_grad, -mean log_prob, backward, Adam), interleaved rounds, median")
    return records


def _table(records: list[dict], device: str, threads: int) -> str:
    anchors = [a for a in ANCHORS if any(r["impl"] == a for r in records)]
    lines = [f"# Vector flows, one training step (-mean log_prob, backward, Adam lr {LR}), fp32, {device} "
             f"({threads} thread{'s' * (threads > 1)}), torch {torch.__version__}, "
             + ", ".join(f"{a} {harness.package_version(a)}" for a in anchors), "",
             "Same batch, interleaved rounds, median step time. " + " ".join(f"{a} / ours" for a in anchors)
             + " (on ours' row) = the median over the rounds of the anchor's step time / ours in the same round "
             "(> 1: the anchor is slower); on the row of ours stepped by fit's optimiser (torch's fused Adam), "
             "the same against that row (every other row runs the default Adam). Loss: the first step's and the "
             "last step's (after the warm-up and timed steps); the parametrisations differ, so do the losses. "
             "Architectures: every conditioner has two hidden layers of H; zuko's RealNVP has no ActNorm and "
             "splits odd/even features, ours and nflows' halves; every RealNVP conditioner reads the kept half "
             "and computes the transformed half's parameters; ours' MADEs (MAF, NSF) add direct input-to-output "
             "connections; MAF and NSF have no ActNorm; "
             "zuko's NSF with bound 3 (its default is 5).", "",
             "| case | flow | implementation | params | median step | IQR | "
             + " | ".join(f"{a} / ours" for a in anchors) + " | first loss | last loss |",
             "|---|---|---|---:|---:|---:|" + "---:|" * len(anchors) + "---:|---:|"]
    by_group: dict = {}
    for r in records:
        by_group.setdefault((r["case"], r["flow"]), {})[r["impl"]] = r
    for group in by_group.values():
        for impl, r in group.items():
            ratios = [f"{group[a]['x_ours']:.2f}" if impl == OURS and a in group else
                      f"{r['anchor_x'][a]:.2f}" if impl == OURS_FIT and a in r.get("anchor_x", {}) else ""
                      for a in anchors]
            lines.append(f"| {r['case']} | {r['flow']} | {impl} | {r['params']:,} | {r['median_s'] * 1e3:.2f} ms | "
                         f"{r['iqr_s'] * 1e3:.2f} ms | " + "".join(f"{v} | " for v in ratios)
                         + f"{r['first_loss']:.3f} | {r['last_loss']:.3f} |")
    shares = [r for r in records if r.get("flow_op_share") is not None]
    if shares:
        lines += ["", f"Ours: {shares[0]['profiled_steps']} profiled steps (torch.profiler, its overhead included), "
                  "the median of the step time and of its shares inside the flow's genkernels op "
                  "(forward + backward) and inside all genkernels ops (masked_linear too).", "",
                  "| case | flow | profiled step | flow op | flow op share | genkernels ops share |",
                  "|---|---|---:|---|---:|---:|"]
        for r in shares:
            lines.append(f"| {r['case']} | {r['flow']} | {r['profiled_step_s'] * 1e3:.2f} ms | {r['flow_op']} | "
                         f"{100 * r['flow_op_share']:.0f}% | {100 * r['genkernels_ops_share']:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    return harness.layer_bench_main(__doc__, run, argv)


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per (data, flow, implementation) (``pytest bench/ --benchmark-only``)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = harness.bench_options(metafunc.config)
    cases = [(c, flow, impl, device) for c in CASES[quick] for flow in FLOWS
             for impl in (OURS,) + installed_anchors() + (OURS_FIT,)]
    metafunc.parametrize("case", cases, ids=[f"{c[0][0]}-{c[1]}-{c[2]}".replace(" ", "_") for c in cases])


def test_training_step(benchmark, case):
    """Time one implementation's training step."""
    (name, data, batch, hidden, layers), flow, impl, device = case
    x = load_data(data, batch).to(device)
    torch.manual_seed(0)
    model = BUILDERS[impl](flow, x.shape[1], hidden, layers).to(device)
    harness.benchmark_call(benchmark, training_step(impl, model, x, []), device)
    benchmark.extra_info.update({"case": name, "flow": flow, "impl": impl})


if __name__ == "__main__":
    sys.exit(main())
