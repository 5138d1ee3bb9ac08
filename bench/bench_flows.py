"""Normalizing flows benchmark: the affine coupling's elementwise part and the
rational-quadratic spline, forward + backward.

The part of a coupling layer after its conditioner network -- the mask, the bounded scale
sigma = b tanh(s / b), y = x e^sigma + t on the transformed features and the per-sample
log-determinant -- with the gradient of a loss of y and the log-determinant in x, s and t
(the conditioner excluded: it is the same network whichever implementation follows it).

``ours`` is genkernels.ops.affine_coupling (one fused pass each way; cpu kernel on the CPU,
Triton on a GPU); ``eager`` is the same formula as RealNVP-style PyTorch code writes it
(tanh, exp, mask products, a sum: a chain of elementwise kernels with their temporaries),
and ``eager (torch.compile)`` is that function compiled by Inductor. Every implementation
runs on the same inputs in interleaved rounds; the forward results are compared first.

The spline rows: ``ours`` is genkernels.ops.rq_spline (bin search, spline, log-determinant
in one pass; one fused backward), against nflows 0.14's
``unconstrained_rational_quadratic_spline`` (linear tails: the public neural-spline-flow
code, eager and under torch.compile) and our own PyTorch reference (the spec), on the same
raw parameters (K = 8 bins, tail bound 3). Without nflows installed those rows hold ours
and the reference only.

The ActNorm rows: ``ours`` is genkernels.ops.actnorm (y = (x + b) e^s per channel and the
log-determinant in one pass; one backward pass for the input's gradient and the two
per-channel sums the parameters' gradients need), against ``eager`` (Glow's formula as
PyTorch code writes it, broadcast add, exp, multiply, the log-determinant's sum), its
torch.compile, and nflows 0.14's ``ActNorm`` transform (already initialised), with the
gradients of x, the bias and the log-scale.

    python bench/bench_flows.py [--quick] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402

import genkernels  # noqa: E402
from genkernels.flows import channel_mask, checkerboard_mask, half_mask  # noqa: E402

BOUND = 2.0
EAGER = "eager"
# (name, batch, feature shape, mask kind)
CASES = {False: [("vectors B=1024 D=2 half", 1024, (2,), "half"),
                 ("vectors B=4096 D=64 half", 4096, (64,), "half"),
                 ("image B=64 3x32x32 checkerboard", 64, (3, 32, 32), "checkerboard"),
                 ("image B=64 12x16x16 channel", 64, (12, 16, 16), "channel"),
                 ("image B=16 3x64x64 checkerboard", 16, (3, 64, 64), "checkerboard")],
         True: [("vectors B=64 D=16 half", 64, (16,), "half"),
                ("image B=4 3x8x8 checkerboard", 4, (3, 8, 8), "checkerboard")]}


# (name, batch, features, bins, inverse)
SPLINE_CASES = {False: [("spline B=1024 D=2 K=8", 1024, 2, 8, False),
                        ("spline B=4096 D=64 K=8", 4096, 64, 8, False),
                        ("spline B=4096 D=64 K=8 inverse", 4096, 64, 8, True),
                        ("spline B=64 D=3072 K=8", 64, 3072, 8, False)],
                True: [("spline B=64 D=16 K=8", 64, 16, 8, False)]}
TAIL = 3.0

# (name, batch, feature shape)
ACTNORM_CASES = {False: [("actnorm B=512 D=64", 512, (64,)), ("actnorm B=4096 D=64", 4096, (64,)),
                         ("actnorm B=64 48x16x16", 64, (48, 16, 16)), ("actnorm B=256 3x32x32", 256, (3, 32, 32))],
                 True: [("actnorm B=64 D=16", 64, (16,)), ("actnorm B=4 3x8x8", 4, (3, 8, 8))]}


def eager_actnorm(x: torch.Tensor, bias: torch.Tensor, log_scale: torch.Tensor):
    """Glow's ActNorm as PyTorch code writes it: broadcast add, exp, multiply; the
    log-determinant H W sum(log_scale) per sample."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    y = (x + bias.view(view)) * torch.exp(log_scale.view(view))
    return y, (log_scale.sum() * x[0, 0].numel()).expand(x.shape[0])


def actnorm_implementations(case: tuple, device: str, seed: int = 0) -> dict:
    """name -> a callable running ActNorm's forward + backward once on fixed inputs."""
    _, batch, shape = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g).to(device).requires_grad_()
    bias = (torch.randn(shape[0], generator=g) * 0.1).to(device).requires_grad_()
    log_scale = (torch.randn(shape[0], generator=g) * 0.1).to(device).requires_grad_()
    gy = torch.randn(batch, *shape, generator=g).to(device)
    gl = torch.randn(batch, generator=g).to(device)
    backend = "cpu" if device == "cpu" else "triton"
    fns = {f"ours ({backend})": lambda: genkernels.ops.actnorm(x, bias, log_scale, backend=backend),
           EAGER: lambda: eager_actnorm(x, bias, log_scale)}
    compiled = torch.compile(eager_actnorm)
    fns[f"{EAGER} (torch.compile)"] = lambda: compiled(x, bias, log_scale)
    try:
        from nflows.transforms import ActNorm as NflowsActNorm
    except ImportError:
        NflowsActNorm = None
    if NflowsActNorm is not None:
        layer = NflowsActNorm(shape[0]).to(device)
        layer.initialized.fill_(True)       # as after its first batch (its data-dependent start)
        with torch.no_grad():
            layer.shift.copy_(bias)
            layer.log_scale.copy_(log_scale)
        fns["nflows"] = lambda: layer(x)

    return {name: fw_bw(fn, gy, gl) for name, fn in fns.items()}


def actnorm_agreement(case: tuple, device: str) -> float:
    _, batch, shape = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g).to(device)
    bias, log_scale = torch.randn(shape[0], generator=g).to(device), torch.randn(shape[0], generator=g).to(device)
    with torch.no_grad():
        got = genkernels.ops.actnorm(x, bias, log_scale)
        want = eager_actnorm(x.double(), bias.double(), log_scale.double())
    return max(float((a.double() - e).abs().max()) for a, e in zip(got, want))


def fw_bw(fn, gy: torch.Tensor, gl: torch.Tensor):
    """A callable running fn() -> (y, logdet) and its backward with the gradients (gy, gl)."""
    def run():
        y, logdet = fn()
        torch.autograd.backward([y, logdet], [gy, gl])
    return run


def spline_implementations(case: tuple, device: str, seed: int = 0) -> dict:
    """name -> a callable running the spline's forward + backward once on fixed inputs."""
    _, batch, n, k, inverse = case
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, n, generator=g) * 1.5).to(device).requires_grad_()
    params = torch.randn(batch, n, 3 * k - 1, generator=g).to(device).requires_grad_()
    gy = torch.randn(batch, n, generator=g).to(device)
    gl = torch.randn(batch, generator=g).to(device)
    backend = "cpu" if device == "cpu" else "triton"
    fns = {f"ours ({backend})": lambda: genkernels.ops.rq_spline(x, params, bound=TAIL, inverse=inverse,
                                                                 backend=backend),
           "reference (PyTorch)": lambda: genkernels.ops.rq_spline(x, params, bound=TAIL, inverse=inverse,
                                                                   backend="reference")}
    try:
        from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline
    except ImportError:
        unconstrained_rational_quadratic_spline = None
    if unconstrained_rational_quadratic_spline is not None:
        def nflows_spline(xx, p):
            y, ld = unconstrained_rational_quadratic_spline(xx, p[..., :k], p[..., k:2 * k], p[..., 2 * k:],
                                                            inverse=inverse, tails="linear", tail_bound=TAIL)
            return y, ld.sum(1)
        compiled = torch.compile(nflows_spline)
        fns["nflows"] = lambda: nflows_spline(x, params)
        fns["nflows (torch.compile)"] = lambda: compiled(x, params)

    return {name: fw_bw(fn, gy, gl) for name, fn in fns.items()}


def spline_agreement(case: tuple, device: str) -> float:
    _, batch, n, k, inverse = case
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(batch, n, generator=g) * 1.5).to(device)
    params = torch.randn(batch, n, 3 * k - 1, generator=g).to(device)
    with torch.no_grad():
        got = genkernels.ops.rq_spline(x, params, bound=TAIL, inverse=inverse)
        want = genkernels.ops.rq_spline(x.double(), params.double(), bound=TAIL, inverse=inverse,
                                        backend="reference")
    return max(float((a.double() - e).abs().max()) for a, e in zip(got, want))


def make_mask(kind: str, shape: tuple) -> torch.Tensor:
    if kind == "half":
        return half_mask(shape[0])
    if kind == "channel":
        return channel_mask(shape[0])
    return checkerboard_mask(shape)


def eager_coupling(x: torch.Tensor, params: torch.Tensor, mask: torch.Tensor):
    """The elementwise part as PyTorch code writes it: the conditioner's output split, masks
    multiplied in, a sum per sample."""
    s, t = params.chunk(2, dim=1)
    inv = 1.0 - mask
    sigma = BOUND * torch.tanh(s / BOUND) * inv
    y = mask * x + inv * (x * torch.exp(sigma) + t)
    return y, sigma.flatten(1).sum(1)


def implementations(case: tuple, device: str, seed: int = 0) -> dict:
    """name -> a callable running forward + backward once on fixed inputs."""
    _, batch, shape, kind = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g).to(device).requires_grad_()
    params = torch.randn(batch, 2 * shape[0], *shape[1:], generator=g).to(device).requires_grad_()
    mask = make_mask(kind, shape).to(device)
    gy = torch.randn(batch, *shape, generator=g).to(device)
    gl = torch.randn(batch, generator=g).to(device)
    backend = "cpu" if device == "cpu" else "triton"

    def ours(xx, p):
        return genkernels.ops.affine_coupling(xx, p, mask, bound=BOUND, backend=backend)

    def eager(xx, p):
        return eager_coupling(xx, p, mask)

    def call(fn):
        def run():
            y, logdet = fn(x, params)
            torch.autograd.backward([y, logdet], [gy, gl])
        return run

    return {f"ours ({backend})": call(ours), EAGER: call(eager),
            f"{EAGER} (torch.compile)": call(torch.compile(eager))}


def check_agreement(case: tuple, device: str) -> float:
    """Max abs difference of ours and eager (output and log-determinant), same inputs."""
    _, batch, shape, kind = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *shape, generator=g).to(device)
    params = torch.randn(batch, 2 * shape[0], *shape[1:], generator=g).to(device)
    mask = make_mask(kind, shape).to(device)
    with torch.no_grad():
        got = genkernels.ops.affine_coupling(x, params, mask, bound=BOUND)
        want = eager_coupling(x, params, mask)
    return max(float((a - e).abs().max()) for a, e in zip(got, want))


def run(quick: bool = False, rounds: int | None = None, out: str | None = None, threads: int = 1,
        device: str = "cpu") -> list[dict]:
    torch.set_num_threads(threads)
    rounds = rounds or (3 if quick else 15)
    records = []
    for case in CASES[quick] + SPLINE_CASES[quick] + ACTNORM_CASES[quick]:
        spline, actnorm = case in SPLINE_CASES[quick], case in ACTNORM_CASES[quick]
        impls = (spline_implementations(case, device) if spline else actnorm_implementations(case, device)
                 if actnorm else implementations(case, device))
        diff = (spline_agreement(case, device) if spline else actnorm_agreement(case, device) if actnorm
                else check_agreement(case, device))
        times, _ = harness.interleaved(list(impls.values()), device, rounds, warm_each=True)
        medians = {impl: statistics.median(times[:, i]) for i, impl in enumerate(impls)}
        if spline:
            _, batch, n, bins, inverse = case
            shape, kind, elements = (n,), f"K={bins}" + (" inverse" if inverse else ""), batch * n
        elif actnorm:
            _, batch, shape = case
            kind, elements = "-", batch * int(torch.tensor(shape).prod())
        else:
            _, batch, shape, kind = case
            elements = batch * int(torch.tensor(shape).prod())
        for i, impl in enumerate(impls):
            col = torch.tensor(times[:, i])
            q1, q3 = (float(v) for v in col.quantile(torch.tensor([0.25, 0.75], dtype=torch.float64)))
            op = "rq_spline" if spline else "actnorm" if actnorm else "affine_coupling"
            records.append({"op": op, "case": case[0], "batch": batch,
                            "features": list(shape), "mask": kind,
                            "elements": elements, "impl": impl, "median_s": medians[impl], "iqr_s": q3 - q1,
                            "rounds": rounds, "x_ours": statistics.median(times[:, i] / times[:, 0]),
                            "x_ours_of_medians": medians[impl] / medians[list(impls)[0]],
                            # bytes of one forward + backward pass at the minimum, fp32: read x, s,
                            # t, write y (fw); read gy, x, s (or sigma), write gx, gs, gt (bw); the
                            # spline: x, 3K - 1 parameters, y (fw); gy, x, parameters, gx, their grads (bw);
                            # ActNorm: x, y (fw); gy, x, gx (bw)
                            "min_bytes": 4 * elements * (6 * bins + 2 if spline else 5 if actnorm else 10),
                            "max_abs_diff": diff})
        print(f"{case[0]}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in medians.items()), file=sys.stderr)
    table = _table(records, device)
    print(table)
    if out:
        harness.write_layer_results(out, device, quick, threads, "flows", "flows", records, table, bound=BOUND,
                                    timing="forward + backward, interleaved rounds, median")
    return records


def _table(records: list[dict], device: str) -> str:
    threads = torch.get_num_threads()
    lines = [f"# Affine coupling (elementwise part + log-determinant), rational-quadratic spline and ActNorm, "
             f"forward + backward, fp32, {device} ({threads} thread{'s' * (threads > 1)}), torch {torch.__version__}",
             "", "x ours = the median over the interleaved rounds of the implementation's time / ours in the same "
             "round (> 1: slower than ours). GB/s: the pass's minimum traffic (the coupling: 10 fp32 values per "
             "element, x, s, t, y forward, gy, x, s, gx, gs, gt backward; the spline: 6K + 2; ActNorm: 5, x, y, gy, "
             "x, gx) over the median time. max abs diff: ours against the fp64 reference (the coupling: against "
             "eager).", ""]
    for op, title in (("affine_coupling", "Affine coupling"), ("rq_spline", "Rational-quadratic spline (K bins)"),
                      ("actnorm", "ActNorm (per-channel scale and shift, its parameters' gradients too)")):
        rows = [r for r in records if r.get("op", "affine_coupling") == op]
        if not rows:
            continue
        lines += [f"## {title}", "", "| case | impl | median | IQR | x ours | GB/s | max abs diff |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['case']} | {r['impl']} | {r['median_s'] * 1e3:.3f} ms | {r['iqr_s'] * 1e3:.3f} ms | "
                         f"{r['x_ours']:.2f} | {r['min_bytes'] / r['median_s'] / 1e9:.1f} | "
                         f"{r['max_abs_diff']:.1e} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    return harness.layer_bench_main(__doc__, run, argv)


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per (shape, implementation) (``pytest bench/ --benchmark-only``)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = harness.bench_options(metafunc.config)
    backend = "cpu" if device == "cpu" else "triton"
    impls = (f"ours ({backend})", EAGER, f"{EAGER} (torch.compile)")
    cases = [(c, impl, device) for c in CASES[quick] for impl in impls]
    metafunc.parametrize("case", cases, ids=[f"{c[0][0]}-{c[1]}".replace(" ", "_") for c in cases])


def test_coupling(benchmark, case):
    """Time one implementation's forward + backward."""
    shape, impl, device = case
    harness.benchmark_call(benchmark, implementations(shape, device)[impl], device)
    benchmark.extra_info.update({"case": shape[0], "impl": impl})


if __name__ == "__main__":
    sys.exit(main())
