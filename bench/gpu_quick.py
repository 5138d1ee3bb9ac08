"""A few GPU timings in one short run (CUDA events, median of rounds after a warm-up):

* online SOM epoch, one map: MNIST-sized 40x40 x 784 (2,000 steps) and 32x32 x 64
  (10,000 steps): the CUDA kernel with one block per map (GENKERNELS_SOM_ONLINE_BLOCKS=1)
  and the cooperative multi-block kernel (auto), and triton;
* asynchronous Hopfield recall on a spin glass, N = 1000, B = 64, 5 sweeps: cuda,
  triton and the straightforward PyTorch loop (bench/bench_hopfield_recall.py);
* Boltzmann Gibbs sweeps, N = 1000, 64 chains, 5 sweeps: cuda and triton
  (bench/bench_bm_gibbs.py has more cases and the PyTorch loop).

    python bench/gpu_quick.py [--out DIR] [--allow-dirty]   -> prints a table, writes <out>/gpu-quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

from genkernels import ops  # noqa: E402
from genkernels.som import Lattice  # noqa: E402


def cuda_time(fn, rounds=3, with_output=False):
    out = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return (statistics.median(times), out) if with_output else statistics.median(times)


def online_case(rows, cols, d, n, steps):
    g = torch.Generator().manual_seed(0)
    lat = Lattice(rows, cols)
    x = torch.rand(n, d, generator=g).cuda()
    w = torch.rand(1, lat.n_nodes, d, generator=g).cuda()
    order = torch.randint(0, n, (1, steps), generator=g).cuda()
    lr = torch.linspace(0.5, 0.01, steps)[None].cuda()
    sigma = torch.linspace(max(rows, cols) / 2, 1.0, steps)[None].cuda()
    return w, x, order, lr, sigma, lat.coords(torch.float32).cuda()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    import harness as runner  # bench/harness.py: the clean-tree rule for bench/results
    runner.add_allow_dirty(p)
    args = p.parse_args(argv)
    runner.allow_dirty(args.allow_dirty)
    if args.out:
        runner.check_results_dir(args.out)
    rows = []
    for name, (r, c, d, n, steps) in {"MNIST-sized 40x40x784, 2k steps": (40, 40, 784, 10000, 2000),
                                      "32x32x64, 10k steps": (32, 32, 64, 50000, 10000)}.items():
        case = online_case(r, c, d, n, steps)
        got = {}
        for label, backend, blocks in (("cuda, one block per map", "cuda", "1"),
                                       ("cuda, cooperative (auto)", "cuda", "auto"),
                                       ("triton", "triton", "auto")):
            os.environ["GENKERNELS_SOM_ONLINE_BLOCKS"] = blocks
            t, got[label] = cuda_time(lambda backend=backend, case=case: ops.som_online(*case, backend=backend),
                                      rounds=1, with_output=True)
            rows.append({"case": f"som_online {name}", "impl": label, "seconds": t})
            print(rows[-1], flush=True)
        ref = got["cuda, one block per map"]
        for label, out in got.items():
            rows.append({"case": f"som_online {name}", "impl": f"{label}: max abs diff vs one block",
                         "seconds": float((out - ref).abs().max())})
    os.environ["GENKERNELS_SOM_ONLINE_BLOCKS"] = "auto"

    from bench_hopfield_recall import spin_glass, torch_loop
    w, probes = spin_glass(1000, 64, "cuda")
    for backend in ("cuda", "triton"):
        t = cuda_time(lambda backend=backend: ops.hopfield_recall(w, probes, max_sweeps=5, seed=1,
                                                                   backend=backend))
        rows.append({"case": "hopfield recall N=1000 B=64 5 sweeps", "impl": backend, "seconds": t,
                     "updates_per_s": 64 * 1000 * 5 / t})
        print(rows[-1], flush=True)
    a = ops.hopfield_recall(w, probes, max_sweeps=5, seed=1, backend="cuda")
    b = ops.hopfield_recall(w, probes, max_sweeps=5, seed=1, backend="triton")
    rows.append({"case": "hopfield recall N=1000 B=64 5 sweeps", "impl": "cuda == triton",
                 "seconds": float(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))})
    g = torch.Generator().manual_seed(1)
    t = cuda_time(lambda: torch_loop(w, probes, 1, g), rounds=1)
    rows.append({"case": "hopfield recall N=1000 B=64 5 sweeps", "impl": "torch loop (1 sweep, x5)",
                 "seconds": 5 * t, "updates_per_s": 64 * 1000 / t})
    print(rows[-1], flush=True)

    bw = (w > 0).float() * w  # any symmetric zero-diagonal couplings
    bw = (bw + bw.T) / 2
    bias = torch.zeros(1000, device="cuda")
    s0 = (probes > 0).float()
    for backend in ("cuda", "triton"):
        t = cuda_time(lambda backend=backend: ops.bm_gibbs(bw, bias, s0, [1.0] * 5, seed=1, backend=backend))
        rows.append({"case": "bm_gibbs N=1000 C=64 5 sweeps", "impl": backend, "seconds": t,
                     "updates_per_s": 64 * 1000 * 5 / t})
        print(rows[-1], flush=True)
    print("\n| case | impl | seconds (or value) | unit updates/s |\n|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['impl']} | {r['seconds']:.4g} | {r.get('updates_per_s', float('nan')):.3g} |")
    if args.out:
        runner.check_results_dir(args.out)
        with open(os.path.join(args.out, "gpu-quick.json"), "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
                      fh, indent=1)


if __name__ == "__main__":
    main()
