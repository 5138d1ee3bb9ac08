"""MADE's whole network, forward + backward: genkernels.ops.masked_mlp (the network fused)
against the layer-by-layer path and the way public MADE / nflows code computes it, on the
same inputs in one run.

    python bench/bench_made.py [--quick] [--rounds N] [--threads T] [--device cpu|cuda]
                               [--out DIR] [--allow-dirty]
    pytest bench/bench_made.py --benchmark-only [--bench-quick]

The network is genkernels.MADE's (D -> H -> H -> P D outputs, ReLU between, direct masked
connections from the inputs to the outputs, the natural order; every weight given random
values), one call the forward and the backward of a batch from a fixed output gradient (the
gradients of the input, every weight, bias and the direct connections). Interleaved round by
round (harness.interleaved; medians):

* ``ours (cpu)``: genkernels.ops.masked_mlp -- the batch through every layer in cache-sized
  chunks, BLAS products skipping the mask's upper blocks, C++ autograd
  (csrc/cpu/masked_mlp.cpp); on a GPU ``ours (triton)``, its Triton kernels (every layer in
  one launch each way, genkernels/autoregressive/mlp_triton.py);
* ``ours, layer by layer``: genkernels.ops.masked_linear per layer (the same backend) and
  torch's ReLU -- what the fusion saves, and on a GPU the path MADE takes until this
  comparison has run there;
* ``dense linears of w * mask``: torch's linear of each masked weight and ReLU, as public
  MADE code and nflows' MADE compute it, and its ``torch.compile`` (warm: compiling is not
  timed).

The shapes: MAF's conditioner on 2-D data (D=2, H=64, 2 parameters a dimension, B=1024) and
on the 8x8 digits (D=64, H=128, B=512), and a Bernoulli MADE on MNIST (D=784, one hidden
layer of 1024... here two layers of H=1024 would be 1.8M weights: H=512, B=128). ``--threads``
(default 1). Writes ``<out>/<machine>-made[-quick][-<T>t].{json,md}`` (default bench/results/).
"""

from __future__ import annotations

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
from genkernels.autoregressive import linear_reference  # noqa: E402

# (name, B, D, H, parameters a dimension)
CASES = {False: [("MAF conditioner D=2 H=64 B=1024", 1024, 2, 64, 2),
                 ("MAF conditioner D=64 H=128 B=512", 512, 64, 128, 2),
                 ("Bernoulli MADE D=784 H=512 B=128", 128, 784, 512, 1)],
         True: [("MADE D=8 H=32 B=64", 64, 8, 32, 2)]}
LAYERS, DENSE = "ours, layer by layer", "dense linears of w * mask"


def network(case: tuple, device: str, seed: int = 0):
    """MADE's network: (x, weights, biases, prefixes, skip weight, skip prefix, output grad)."""
    _, b, d, h, p = case
    made = genkernels.MADE(d, (h, h), "params", p, direct=True, seed=seed).to(device)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in made.parameters():
            param.copy_(torch.randn(param.shape, generator=g) / max(1, param.shape[-1]) ** 0.5)
    weights = [layer.weight.detach().clone().requires_grad_() for layer in made.layers]
    biases = [layer.bias.detach().clone().requires_grad_() for layer in made.layers]
    prefixes = [layer.prefix for layer in made.layers]
    skip = made.skip.weight.detach().clone().requires_grad_()
    x = torch.randn(b, d, generator=g).to(device).requires_grad_()
    grad = torch.randn(b, p * d, generator=g).to(device)
    return x, weights, biases, prefixes, skip, made.skip.prefix, grad


def dense_network(x, ws, bs, ps, skip, skip_prefix):
    h = x
    for i, (w, b, p) in enumerate(zip(ws, bs, ps)):
        h = F.linear(h, w * linear_reference.prefix_mask(p, w.shape[1]), b)
        h = torch.relu(h) if i < len(ws) - 1 else h
    return h + F.linear(x, skip * linear_reference.prefix_mask(skip_prefix, skip.shape[1]))


def implementations(case: tuple, device: str, seed: int = 0) -> dict:
    """name -> a callable running forward + backward once (module docstring)."""
    x, ws, bs, ps, skip, skip_prefix, grad = network(case, device, seed)
    masks = [linear_reference.prefix_mask(p, w.shape[1]) for p, w in zip(ps, ws)]
    skip_mask = linear_reference.prefix_mask(skip_prefix, skip.shape[1])
    backend = "cpu" if device == "cpu" else "triton"

    def layers(xx):
        h = xx
        for i, (w, b, p) in enumerate(zip(ws, bs, ps)):
            h = genkernels.ops.masked_linear(h, w, b, p, backend=backend)
            h = torch.relu(h) if i < len(ws) - 1 else h
        return h + genkernels.ops.masked_linear(xx, skip, None, skip_prefix, backend=backend)

    def dense(xx):
        h = xx
        for i, (w, b, m) in enumerate(zip(ws, bs, masks)):
            h = F.linear(h, w * m, b)
            h = torch.relu(h) if i < len(ws) - 1 else h
        return h + F.linear(xx, skip * skip_mask)

    def fused(xx):
        return genkernels.ops.masked_mlp(xx, ws, bs, ps, skip, skip_prefix, backend=backend, checked=True)

    def call(fn):
        def run():
            fn(x).backward(grad)
        return run

    return {f"ours ({backend})": call(fused), LAYERS: call(layers), DENSE: call(dense),
            f"{DENSE} (torch.compile)": call(torch.compile(dense))}


def max_abs_diff(case: tuple, device: str) -> float:
    """ours' forward against the dense network's (the same inputs)."""
    x, ws, bs, ps, skip, skip_prefix, _ = network(case, device, seed=1)
    backend = "cpu" if device == "cpu" else "triton"
    with torch.no_grad():
        want = dense_network(x, ws, bs, ps, skip, skip_prefix)
        return float((genkernels.ops.masked_mlp(x, ws, bs, ps, skip, skip_prefix, backend=backend) - want).abs().max())


def run(quick: bool = False, rounds: int | None = None, out: str | None = None, threads: int = 1,
        device: str = "cpu") -> list[dict]:
    torch.set_num_threads(threads)
    rounds = rounds or (3 if quick else 20)
    records = []
    for case in CASES[quick]:
        name, b, d, h, p = case
        impls = implementations(case, device)
        diff = max_abs_diff(case, device)
        _, ws, _, ps, _, skip_prefix, _ = network(case, "cpu")
        kept = sum(int(q.sum()) for q in ps) + int(skip_prefix.sum())
        total = sum(w.numel() for w in ws) + d * p * d
        times, _ = harness.interleaved(list(impls.values()), device, rounds, warm_each=True)
        medians = {impl: statistics.median(times[:, i]) for i, impl in enumerate(impls)}
        for i, impl in enumerate(impls):
            col = torch.tensor(times[:, i])
            q1, q3 = (float(v) for v in col.quantile(torch.tensor([0.25, 0.75], dtype=torch.float64)))
            records.append({"case": name, "batch": b, "features": d, "hidden": h, "params_per_dim": p,
                            "kept": f"{kept}/{total}", "impl": impl, "median_s": medians[impl], "iqr_s": q3 - q1,
                            "rounds": rounds, "x_ours": statistics.median(times[:, i] / times[:, 0]),
                            "max_abs_diff": diff})
        print(f"{name}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in medians.items()), file=sys.stderr)
    table = _table(records, device)
    print(table)
    if out:
        harness.write_layer_results(out, device, quick, threads, "made", "made", records, table,
                                    timing="forward + backward, interleaved rounds, median")
    return records


def _table(records: list[dict], device: str) -> str:
    threads = torch.get_num_threads()
    lines = [f"# MADE's network, forward + backward, fp32, {device} ({threads} thread{'s' * (threads > 1)}), "
             f"torch {torch.__version__}", "",
             "x ours = the median over the interleaved rounds of the implementation's time / ours in the same "
             "round (> 1: slower than ours). Kept: the weights the masks keep (hidden, output and direct "
             "layers).", "",
             "| case | kept | impl | median | IQR | x ours | max abs diff |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['case']} | {r['kept']} | {r['impl']} | {r['median_s'] * 1e3:.3f} ms | "
                     f"{r['iqr_s'] * 1e3:.3f} ms | {r['x_ours']:.2f} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    return harness.layer_bench_main(__doc__, run, argv)


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per (shape, implementation) (``pytest bench/ --benchmark-only``)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = harness.bench_options(metafunc.config)
    impls = [f"ours ({'cpu' if device == 'cpu' else 'triton'})", LAYERS, DENSE, f"{DENSE} (torch.compile)"]
    cases = [(c, impl, device) for c in CASES[quick] for impl in impls]
    metafunc.parametrize("case", cases, ids=[f"{c[0][0]}-{c[1]}".replace(" ", "_") for c in cases])


def test_made_network(benchmark, case):
    """Time one implementation's forward + backward."""
    shape, impl, device = case
    harness.benchmark_call(benchmark, implementations(shape, device)[impl], device)
    benchmark.extra_info.update({"case": shape[0], "impl": impl})


if __name__ == "__main__":
    sys.exit(main())
