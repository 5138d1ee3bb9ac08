"""Normalizing flows benchmark: a whole training step of multi-scale image flows, ours against
nflows' multi-scale image flow, our eager PyTorch reference and torch.compile.

One step is loss = -log_prob(x).mean(), its backward and an Adam step (lr 1e-3), on the same
batch for every implementation, in interleaved rounds (each round times every implementation
once, after one untimed step of its own), 1 thread unless --threads. Two architectures:

- Glow (``levels`` levels of a squeeze, ``steps`` x [ActNorm, LU-parametrised invertible 1x1
  convolution, affine coupling on half the channels], half the channels factored out but at
  the last level). ``ours`` = genkernels.Glow; ``nflows`` = the same architecture from nflows'
  own pieces: MultiscaleCompositeTransform of [SqueezeTransform, (ActNorm,
  OneByOneConvolution, AffineCouplingTransform) x steps] with a standard normal base.
- RealNVP (every scale but the last: 3 checkerboard couplings, a squeeze, 3 channel
  couplings, half the channels factored out; the last scale 4 checkerboard couplings; an
  ActNorm before each coupling). ``ours`` = genkernels.RealNVP; nflows has no checkerboard
  coupling (its couplings split channels), so it has no RealNVP row.

Every coupling's conditioner is the same network, genkernels.flows.ResNet (a 3x3 convolution
to H channels, 2 residual blocks, ReLU, a 3x3 convolution that starts at zero) -- nflows gets
it through its transform_net_create_fn. Ours feeds it the masked full input and reads 2C
channels (s and t for every channel, the kept ones unused); nflows feeds the C/2 kept channels
and reads C. The scale functions differ (ours 2 tanh(s/2), nflows sigmoid(s + 2) + 1e-3), and
so do the losses. Besides nflows, each architecture of ours runs as
``reference`` (backend="reference": the coupling op's pure-PyTorch spec, eager),
``reference compiled`` (torch.compile of the reference model's loss) and ``ours compiled``
(torch.compile of ours' loss, the fused op opaque in the graph). A compiled implementation is
compiled before the rounds (the time is recorded, not in the step).

Data: the 8x8 digits (genkernels.data.load_digits: dequantised to 17 levels, logit
preprocessing with alpha 0.05, the same tensor for everyone) at B=256, H=32, 2 levels / scales,
Glow 4 steps a level; and the digits upsampled to 28 x 28 (bilinear: MNIST's shape, with no
data file needed) at B=32, H=32. --quick: the 8x8 digits at B=32, H=8, 1 level / scale, Glow
2 steps, and no compiled rows (compiling takes a minute). nflows is optional (pip install
genkernels[bench]); missing, it is left out.

    python bench/bench_flows_images.py [--quick] [--rounds N] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time

import numpy as np
import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402

import genkernels  # noqa: E402
from genkernels.flows import ResNet  # noqa: E402

LR = 1e-3
ALPHA = 0.05
FLOWS = ("Glow", "RealNVP")
OURS = "ours"
# every implementation of ours: (name, coupling backend, compiled)
OURS_IMPLS = (("ours", None, False), ("reference", "reference", False), ("reference compiled", "reference", True),
              ("ours compiled", None, True))
# (name, side, batch, hidden, levels, glow steps a level)
CASES = {False: [("digits 8x8 B=256 H=32", 8, 256, 32, 2, 4),
                 ("digits at 28x28 B=32 H=32", 28, 32, 32, 2, 4)],
         True: [("digits 8x8 B=32 H=8", 8, 32, 8, 1, 2)]}


def nflows_installed() -> bool:
    return importlib.util.find_spec("nflows") is not None


def load_images(side: int, batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, 1, side, side) float32: the first ``batch`` digits dequantised (17 levels),
    resized to side x side (bilinear) and logit-preprocessed with ALPHA."""
    from genkernels.data import load_digits
    x = torch.from_numpy(load_digits()[0][:batch]).double().view(-1, 1, 8, 8)
    x = x + torch.from_numpy(np.random.default_rng(seed).uniform(0, 1 / 17, tuple(x.shape)))
    x = (x * 16 / 17).clamp(0, 1)
    if side != 8:
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    p = ALPHA + (1 - 2 * ALPHA) * x
    return torch.log(p / (1 - p)).float()


# ------------------------------------------------------------------------- models
def ours(flow: str, shape, hidden: int, levels: int, steps: int, backend: str | None) -> torch.nn.Module:
    if flow == "Glow":
        return genkernels.Glow(shape, levels=levels, steps=steps, hidden=hidden, backend=backend)
    return genkernels.RealNVP(shape, scales=levels, hidden=hidden, backend=backend)


def nflows_glow(shape, hidden: int, levels: int, steps: int) -> torch.nn.Module:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (
        ActNorm,
        AffineCouplingTransform,
        CompositeTransform,
        MultiscaleCompositeTransform,
        OneByOneConvolution,
        SqueezeTransform,
    )

    def conditioner(in_channels, out_channels):
        return ResNet(in_channels, out_channels, hidden, 2)

    c, h, w = shape
    multiscale = MultiscaleCompositeTransform(num_transforms=levels)
    for _ in range(levels):
        squeeze = SqueezeTransform()
        c, h, w = squeeze.get_output_shape(c, h, w)
        layers = [squeeze]
        for i in range(steps):   # ours' channel_mask(c, i % 2): even steps keep the first half
            transformed = (torch.arange(c) >= c // 2) == (i % 2 == 0)
            layers += [ActNorm(c), OneByOneConvolution(c),
                       AffineCouplingTransform(transformed.int() * 2 - 1, conditioner)]
        nxt = multiscale.add_transform(CompositeTransform(layers), (c, h, w))
        if nxt is not None:
            c, h, w = nxt
    return Flow(multiscale, StandardNormal([math.prod(shape)]))


def implementations(flow: str, shape, hidden: int, levels: int, steps: int, compiled_too: bool) -> dict:
    """{name: (model, compiled)}: the same initial seed for each."""
    impls = {}
    for name, backend, compiled in OURS_IMPLS:
        if compiled and not compiled_too:
            continue
        torch.manual_seed(0)
        model = ours(flow, shape, hidden, levels, steps, backend)
        impls[name] = (model, compiled)
    if flow == "Glow" and nflows_installed():
        torch.manual_seed(0)
        impls["nflows"] = (nflows_glow(shape, hidden, levels, steps), False)
    return impls


def training_step(model, loss_fn, losses: list):
    """A callable running one step (zero_grad, loss, backward, Adam), each step's loss
    appended to ``losses`` (detached: no synchronisation inside the step)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        return loss
    return step


# ---------------------------------------------------------------------------- run
def run(quick: bool = False, rounds: int | None = None, out: str | None = None, threads: int = 1,
        device: str = "cpu") -> list[dict]:
    torch.set_num_threads(threads)
    loadavg_start = os.getloadavg()[0]
    rounds = rounds or (2 if quick else 10)
    if not nflows_installed():
        print("[bench] nflows is not installed, left out (pip install genkernels[bench])", file=sys.stderr)
    records = []
    for name, side, batch, hidden, levels, steps in CASES[quick]:
        x = load_images(side, batch).to(device)
        shape = tuple(x.shape[1:])
        for flow in FLOWS:
            impls = implementations(flow, shape, hidden, levels, steps, compiled_too=not quick)
            names = list(impls)
            fns, losses, compile_s = [], {n: [] for n in names}, {}
            for n in names:
                model, compiled = impls[n]
                model.to(device)
                with torch.no_grad():   # ActNorm's data-dependent initialisation, outside any graph
                    lp = model.log_prob(x)
                if not bool(torch.isfinite(lp).all()):
                    raise RuntimeError(f"{name} {flow}: {n}'s log_prob is not finite at initialisation")

                def loss(model=model):
                    return -model.log_prob(x).mean()
                if compiled:
                    loss = torch.compile(loss)
                    t0 = time.perf_counter()
                    loss().backward()   # compiles forward and backward
                    model.zero_grad(set_to_none=True)
                    compile_s[n] = time.perf_counter() - t0
                fns.append(training_step(model, loss, losses[n]))
            times, _ = harness.interleaved(fns, device, rounds, warm_each=True)
            for i, n in enumerate(names):
                col = times[:, i]
                q1, q3 = np.percentile(col, [25, 75])
                seen = [float(v) for v in losses[n]]
                if not all(np.isfinite(seen)):
                    raise RuntimeError(f"{name} {flow}: {n}'s loss went non-finite in training")
                records.append({
                    "case": name, "side": side, "batch": batch, "hidden": hidden, "levels": levels,
                    "steps": steps if flow == "Glow" else None, "flow": flow, "impl": n,
                    "params": sum(p.numel() for p in impls[n][0].parameters()),
                    "median_s": float(np.median(col)), "iqr_s": float(q3 - q1), "rounds": rounds,
                    "x_ours": float(np.median(col / times[:, 0])), "compile_s": compile_s.get(n),
                    "first_loss": seen[0], "last_loss": seen[-1], "training_steps": len(seen)})
            print(f"{name} {flow}: " + ", ".join(f"{n} {np.median(times[:, i]) * 1e3:.1f} ms"
                                                  for i, n in enumerate(names)), file=sys.stderr)
    table = _table(records, device, threads)
    print(table)
    if out:
        harness.write_layer_results(
            out, device, quick, threads, "flows_images", "flows-images", records, table, loadavg_start=loadavg_start,
            lr=LR, logit_alpha=ALPHA, anchors={"nflows": harness.package_version("nflows")},
            timing="one training step (zero_grad, -mean log_prob, backward, Adam), interleaved rounds, median")
    return records


def _table(records: list[dict], device: str, threads: int) -> str:
    lines = [f"# Image flows, one training step (-mean log_prob, backward, Adam lr {LR}), fp32, {device} "
             f"({threads} thread{'s' * (threads > 1)}), torch {torch.__version__}"
             + (f", nflows {harness.package_version('nflows')}" if any(r["impl"] == "nflows" for r in records)
                else ""), "",
             "Same batch, interleaved rounds, median step time; x ours = the median over the rounds of the row's "
             "step time / ours' in the same round (> 1: slower than ours). Every coupling's conditioner is "
             "genkernels.flows.ResNet; ours feeds it the masked full input (C channels in, 2C out), nflows the "
             "kept half (C/2 in, C out); the scale functions differ, so do the losses. nflows has no "
             "checkerboard coupling: no nflows RealNVP row. Compiled rows: torch.compile of the loss "
             "(compile time apart, its own column).", "",
             "| case | flow | implementation | params | median step | IQR | x ours | compile | first loss | "
             "last loss |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        comp = "" if r["compile_s"] is None else f"{r['compile_s']:.0f} s"
        lines.append(f"| {r['case']} | {r['flow']} | {r['impl']} | {r['params']:,} | {r['median_s'] * 1e3:.1f} ms | "
                     f"{r['iqr_s'] * 1e3:.1f} ms | {r['x_ours']:.2f} | {comp} | {r['first_loss']:.2f} | "
                     f"{r['last_loss']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    return harness.layer_bench_main(__doc__, run, argv)


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per (data, flow, eager implementation) (``pytest bench/ --benchmark-only``)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = harness.bench_options(metafunc.config)
    impls = [n for n, _, compiled in OURS_IMPLS if not compiled] + (["nflows"] if nflows_installed() else [])
    cases = [(c, flow, impl, device) for c in CASES[quick] for flow in FLOWS for impl in impls
             if impl != "nflows" or flow == "Glow"]
    metafunc.parametrize("case", cases, ids=[f"{c[0][0]}-{c[1]}-{c[2]}".replace(" ", "_") for c in cases])


def test_training_step(benchmark, case):
    """Time one eager implementation's training step."""
    (name, side, batch, hidden, levels, steps), flow, impl, device = case
    x = load_images(side, batch).to(device)
    torch.manual_seed(0)
    if impl == "nflows":
        model = nflows_glow(tuple(x.shape[1:]), hidden, levels, steps)
    else:
        model = ours(flow, tuple(x.shape[1:]), hidden, levels, steps, dict((n, b) for n, b, _ in OURS_IMPLS)[impl])
    model.to(device)
    with torch.no_grad():
        model.log_prob(x)
    harness.benchmark_call(benchmark, training_step(model, lambda: -model.log_prob(x).mean(), []), device)
    benchmark.extra_info.update({"case": name, "flow": flow, "impl": impl})


if __name__ == "__main__":
    sys.exit(main())
