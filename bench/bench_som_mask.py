"""SOM-masked layers keeping 5% of their outputs: forward + backward time of the sparse
kernels against the same layer with the dense mask and against a dense layer of 5 outputs.

    python bench/bench_som_mask.py [--quick] [--rounds N] [--threads T] [--out DIR] [--allow-dirty]
    pytest bench/bench_som_mask.py --benchmark-only [--bench-quick]
        (test_som_mask: each implementation alone, pytest-benchmark's timing)

Every case has 100 outputs (neurons or channels) on a 10 x 10 SOM lattice, of which the
mask keeps 5 (top_k=5: the winner and 4 neighbours, at the lattice's borders the 5 nearest)
for every row (linear), image (winner="image") or output position (winner="patch"). One
call is forward + backward of a fp32 batch: the gradients of the input, the weight and the
bias from a fixed output gradient. Implementations on the same inputs, interleaved round by
round (harness.interleaved; medians):

* ``sparse op``: genkernels.ops.som_mask_linear / som_mask_conv2d on the cpu backend, winners
  given -- the kernels alone;
* ``dense-mask op``: the same layer computed dense -- torch's linear / conv2d over all 100
  outputs, times the (B, 100[, Ho, Wo]) mask, ReLU (what mode="dense" runs): the target is
  sparse >= 5x faster per image, >= 3x per position;
* ``dense 5 outputs``: torch's linear / conv2d + ReLU with 5 outputs, no mask: the target is
  sparse within 2x of it (it writes a 20x smaller output);
* ``sparse layer`` / ``dense-mask layer``: SOMMaskLinear / SOMMaskConv2d in eval mode (the
  SOM's winner search included, no SOM update), top_k=5 vs mode="dense".

``--threads`` (default 1): torch.set_num_threads for the whole run. On a 2-core machine
shared with other work, torch's own two-thread ops stall whenever a neighbour holds a core
(each parallel region waits a time slice for its second thread), which would flatter our
kernels (they fall back to one thread: docs/design.md, "Threads on the CPU"); one thread
compares the work. Writes ``<out>/<machine>-som-mask[-<T>t].{json,md}`` (default
bench/results/; the suffix for T != 1) with harness.write_results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402

import genkernels  # noqa: E402
from genkernels.som import mask_reference  # noqa: E402

OUTPUTS, GRID, KEEP = 100, (10, 10), 5
# (name, kind, shapes): linear (B, D); conv (B, Cin, H, W, kernel, padding)
CASES = {
    False: [("linear B=256 D=784", "linear", (256, 784)),
            ("conv image B=64 1x28x28 k3", "image", (64, 1, 28, 28, 3, 1)),
            ("conv image B=64 16x14x14 k3", "image", (64, 16, 14, 14, 3, 1)),
            ("conv patch B=64 1x28x28 k3", "patch", (64, 1, 28, 28, 3, 1)),
            ("conv patch B=64 16x14x14 k3", "patch", (64, 16, 14, 14, 3, 1))],
    True: [("linear B=64 D=196", "linear", (64, 196)),
           ("conv image B=8 4x14x14 k3", "image", (8, 4, 14, 14, 3, 1)),
           ("conv patch B=8 4x14x14 k3", "patch", (8, 4, 14, 14, 3, 1))],
}


def _tables():
    coords = genkernels.som.Lattice(*GRID).coords()
    kept, values = mask_reference.mask_tables(coords, 1.0, top_k=KEEP, dtype=torch.float32)
    dense = mask_reference.neighborhood_table(coords, 1.0).float()
    return kept, values, dense


def implementations(kind: str, shape: tuple, seed: int = 0) -> dict:
    """name -> a callable running forward + backward once (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    kept, values, dense_table = _tables()
    if kind == "linear":
        b, d = shape
        x = torch.randn(b, d, generator=g).requires_grad_()
        w = (torch.randn(OUTPUTS, d, generator=g) / d ** 0.5).requires_grad_()
        bias = torch.zeros(OUTPUTS).requires_grad_()
        w5, bias5 = w[:KEEP].detach().clone().requires_grad_(), bias[:KEEP].detach().clone().requires_grad_()
        winners = torch.randint(OUTPUTS, (b,), generator=g)
        grad = torch.randn(b, OUTPUTS, generator=g)
        mask = dense_table[winners]

        def sparse():
            genkernels.ops.som_mask_linear(x, w, bias, winners, kept, values, backend="cpu").backward(grad)

        def dense_mask():
            (mask * torch.relu(F.linear(x, w, bias))).backward(grad)

        def dense5():
            torch.relu(F.linear(x, w5, bias5)).backward(grad[:, :KEEP])

        layer_kw = dict(in_features=d, out_features=OUTPUTS)
        layers = (genkernels.SOMMaskLinear(**layer_kw, top_k=KEEP, seed=0),
                  genkernels.SOMMaskLinear(**layer_kw, mode="dense", seed=0))
    else:
        b, cin, h, wd, k, pad = shape
        x = torch.randn(b, cin, h, wd, generator=g).requires_grad_()
        w = (torch.randn(OUTPUTS, cin, k, k, generator=g) / (cin * k * k) ** 0.5).requires_grad_()
        bias = torch.zeros(OUTPUTS).requires_grad_()
        w5, bias5 = w[:KEEP].detach().clone().requires_grad_(), bias[:KEEP].detach().clone().requires_grad_()
        ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
        winners = torch.randint(OUTPUTS, (b, 1) if kind == "image" else (b, ho * wo), generator=g)
        grad = torch.randn(b, OUTPUTS, ho, wo, generator=g)
        mask = mask_reference.conv_mask(winners, torch.arange(OUTPUTS).expand(OUTPUTS, OUTPUTS), dense_table,
                                        OUTPUTS, (ho, wo))

        def sparse():
            genkernels.ops.som_mask_conv2d(x, w, bias, winners, kept, values, 1, pad, backend="cpu").backward(grad)

        def dense_mask():
            (mask * torch.relu(F.conv2d(x, w, bias, 1, pad))).backward(grad)

        def dense5():
            torch.relu(F.conv2d(x, w5, bias5, 1, pad)).backward(grad[:, :KEEP])

        layer_kw = dict(in_channels=cin, out_channels=OUTPUTS, kernel_size=k, padding=pad, winner=kind,
                        input_size=(h, wd) if kind == "image" else None, seed=0)
        layers = (genkernels.SOMMaskConv2d(**layer_kw, top_k=KEEP), genkernels.SOMMaskConv2d(**layer_kw, mode="dense"))
    for layer in layers:
        layer.eval()
    layers[1].load_state_dict(layers[0].state_dict())

    def layer_call(layer):
        def call():
            layer(x).backward(grad)
        return call

    return {"sparse op": sparse, "dense-mask op": dense_mask, "dense 5 outputs": dense5,
            "sparse layer": layer_call(layers[0]), "dense-mask layer": layer_call(layers[1])}


def run(quick: bool = False, rounds: int | None = None, out: str | None = None, threads: int = 1) -> list[dict]:
    torch.set_num_threads(threads)
    rounds = rounds or (5 if quick else 21)
    records = []
    for name, kind, shape in CASES[quick]:
        impls = implementations(kind, shape)
        times, _ = harness.interleaved(list(impls.values()), "cpu", rounds, warm_each=True)
        medians = {impl: statistics.median(times[:, i]) for i, impl in enumerate(impls)}
        for i, impl in enumerate(impls):
            col = times[:, i]
            q1, q3 = (float(v) for v in torch.tensor(col).quantile(torch.tensor([0.25, 0.75], dtype=torch.float64)))
            records.append({"case": name, "kind": kind, "shape": list(shape), "impl": impl, "median_s": medians[impl],
                            "iqr_s": q3 - q1, "rounds": rounds})
        print(f"{name}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in medians.items()), file=sys.stderr)
    table = _table(records)
    print(table)
    if out:
        meta = {"suite": "som-mask", "device": "cpu", "threads": threads, "versions": harness.versions(),
                "commit": harness.git_commit(),
                "machine": harness.machine_name("cpu"), "outputs": OUTPUTS, "kept": KEEP, "dtype": "float32",
                "timing": "forward + backward, interleaved rounds, median"}
        suffix = ("-quick" if quick else "") + (f"-{threads}t" if threads != 1 else "")
        harness.write_results(out, f"{harness.machine_name('cpu')}-som-mask{suffix}", meta, records, table)
    return records


def _table(records: list[dict]) -> str:
    lines = [f"# SOM-masked layers, {KEEP} of {OUTPUTS} outputs kept: forward + backward, fp32, cpu "
             f"({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}), torch "
             f"{torch.__version__}", "",
             "| case | sparse op | dense-mask op | dense 5 outputs | dense-mask / sparse (op) | "
             "sparse / dense 5 | sparse layer | dense-mask layer | dense-mask / sparse (layer) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_case: dict = {}
    for r in records:
        by_case.setdefault(r["case"], {})[r["impl"]] = r["median_s"]
    for case, m in by_case.items():
        lines.append(f"| {case} | {m['sparse op'] * 1e3:.2f} ms | {m['dense-mask op'] * 1e3:.2f} ms | "
                     f"{m['dense 5 outputs'] * 1e3:.2f} ms | {m['dense-mask op'] / m['sparse op']:.1f}x | "
                     f"{m['sparse op'] / m['dense 5 outputs']:.2f}x | {m['sparse layer'] * 1e3:.2f} ms | "
                     f"{m['dense-mask layer'] * 1e3:.2f} ms | {m['dense-mask layer'] / m['sparse layer']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    harness.add_allow_dirty(p)
    args = p.parse_args(argv)
    harness.allow_dirty(args.allow_dirty)
    harness.check_results_dir(args.out)
    run(args.quick, args.rounds, args.out, args.threads)
    return 0


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per (shape, implementation) on the CPU (``pytest bench/ --benchmark-only``)."""
    if "case" not in metafunc.fixturenames:
        return
    _, quick, _ = harness.bench_options(metafunc.config)
    impls = ("sparse op", "dense-mask op", "dense 5 outputs", "sparse layer", "dense-mask layer")
    cases = [(name, kind, shape, impl) for name, kind, shape in CASES[quick] for impl in impls]
    metafunc.parametrize("case", cases, ids=[f"{c[0]}-{c[3]}".replace(" ", "_") for c in cases])


def test_som_mask(benchmark, case):
    """Time one implementation's forward + backward on the CPU."""
    name, kind, shape, impl = case
    harness.benchmark_call(benchmark, implementations(kind, shape)[impl], "cpu")
    benchmark.extra_info.update({"case": name, "impl": impl, "kept": KEEP, "outputs": OUTPUTS})


if __name__ == "__main__":
    sys.exit(main())
