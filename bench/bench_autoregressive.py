"""The masked layers of the autoregressive family, forward + backward: genkernels.ops.masked_conv2d
and masked_linear against the ways public PixelCNN / MADE code computes them, on the same
inputs in one run.

    python bench/bench_autoregressive.py [--quick] [--rounds N] [--threads T] [--device cpu|cuda]
                                         [--out DIR] [--allow-dirty]
    pytest bench/bench_autoregressive.py --benchmark-only [--bench-quick]
        (test_masked_layer: each implementation alone, pytest-benchmark's timing)

One call is forward + backward of a batch: the gradients of the input, the weight and the
bias from a fixed output gradient. The convolutions (one channel group, "same" padding,
stride 1), interleaved round by round (harness.interleaved; medians):

* ``ours (<backend>)``: genkernels.ops.masked_conv2d -- an implicit GEMM over the kept taps
  (cpu: csrc/cpu/masked_conv.cpp; triton on CUDA);
* ``dense conv2d(x, w * mask)``: torch's convolution of the masked weight, as public PixelCNN
  code does it (oneDNN on the CPU, cuDNN on the GPU) -- the target: ours >= 1.3x faster on
  the CPU, >= 1.5x on the GPU;
* ``cropped kernels``: the PixelCNN++ trick in PyTorch -- the rows above the centre as one
  convolution of the (k // 2, k) top of the kernel over the input padded above, plus the
  centre row as a (1, k // 2 [+ 1]) convolution over the input padded on the left: only the
  kept taps, through torch's dense convolutions;
* each of the two under ``torch.compile`` (warm: compiling is not timed).

The gated blocks: one Gated PixelCNN layer (not the first: the vertical stack's k x k
convolution keeping the rows up to the centre, the horizontal stack's 1 x k up to the centre,
the 1 x 1 link, the gates, the 1 x 1 output and the residual), forward + backward of both
stacks: ``ours`` (genkernels' layer: masked convolutions whose gate runs in the op,
genkernels.ops.masked_conv2d_gated) against ``ours, gate unfused`` (the same masked
convolutions, the gate from torch's tanh and sigmoid: what the fusion itself saves),
``unfused PyTorch block`` (dense convolutions of the masked weights and torch's gate, as
public PixelCNN code writes the layer) and its torch.compile.

The mixture losses: PixelCNN++'s discretised logistic mixture log-likelihood of every pixel
and its gradient in the parameters: ``ours`` (genkernels.ops.logistic_mixture_log_prob, one
fused pass forward and one backward) against ``PixelCNN++ loss in PyTorch`` (the public
code's formula, bin masses from two sigmoids, the centre density below 1e-5) and its
torch.compile.

The masked linear layers (MADE's: a strictly lower-triangular mask, output j seeing inputs
< j): ``ours`` (genkernels.ops.masked_linear) against ``dense linear(x, w * mask)`` (the
masked weight through torch's linear, as public MADE code does it) and its torch.compile --
the target: ours >= 1.6x faster.

``--threads`` (default 1): torch.set_num_threads for the run; one thread compares the work
on a machine shared with other jobs (torch's two-thread regions stall whenever a neighbour
holds a core). Writes ``<out>/<machine>-autoregressive[-quick][-<T>t].{json,md}`` (default
bench/results/) with harness.write_results.
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
from genkernels.autoregressive import conv_reference, linear_reference  # noqa: E402

# conv: (name, B, C (in = out), H = W, kernel, mask type); linear: (name, B, D (in = out))
CASES = {
    False: [("7x7 A C=64 B=16 28x28", 16, 64, 28, 7, "A"),
            ("7x7 A C=128 B=8 28x28", 8, 128, 28, 7, "A"),
            ("3x3 B C=64 B=16 28x28", 16, 64, 28, 3, "B"),
            ("3x3 B C=256 B=8 16x16", 8, 256, 16, 3, "B"),
            ("5x5 B C=128 B=8 28x28", 8, 128, 28, 5, "B"),
            ("gated block 5x5 C=64 B=16 28x28", 16, 64, 28, 5, "block"),
            ("gated block 3x3 C=128 B=8 28x28", 8, 128, 28, 3, "block"),
            ("mixture loss C=3 K=10 B=16 32x32", 16, 3, 32, 10, "mixture"),
            ("mixture loss C=1 K=5 B=64 28x28", 64, 1, 28, 5, "mixture"),
            ("linear D=1024 B=256", 256, 1024), ("linear D=4096 B=128", 128, 4096)],
    True: [("7x7 A C=16 B=4 12x12", 4, 16, 12, 7, "A"),
           ("3x3 B C=32 B=4 12x12", 4, 32, 12, 3, "B"),
           ("gated block 3x3 C=16 B=4 12x12", 4, 16, 12, 3, "block"),
           ("mixture loss C=3 K=4 B=4 8x8", 4, 3, 8, 4, "mixture"),
           ("linear D=256 B=32", 32, 256)],
}
DENSE, CROPPED, DENSE_LINEAR = "dense conv2d(x, w * mask)", "cropped kernels", "dense linear(x, w * mask)"
UNFUSED, UNFUSED_OURS = "unfused PyTorch block", "ours, gate unfused"
MIXTURE_EAGER = "PixelCNN++ loss in PyTorch"


def cropped_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask_type: str) -> torch.Tensor:
    """A type-A/B masked convolution (one channel group) from two dense convolutions of the
    kept parts of the kernel (PixelCNN++'s down-shifted and right-shifted convolutions)."""
    k = weight.shape[-1]
    c = k // 2
    h, w = x.shape[-2:]
    above = F.conv2d(F.pad(x, (c, c, c, 0)), weight[:, :, :c, :], bias)[..., :h, :]
    width = c + (mask_type == "B")
    row = F.conv2d(F.pad(x, (c, 0, 0, 0)), weight[:, :, c:c + 1, :width])[..., :w]
    return above + row


def linear_implementations(case: tuple, device: str, seed: int = 0) -> dict:
    """The masked linear layer's implementations (module docstring)."""
    _, b, d = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g).to(device).requires_grad_()
    prefix = torch.arange(d, device=device)                     # output j sees the inputs < j
    mask = linear_reference.prefix_mask(prefix, d)
    weight = (torch.randn(d, d, generator=g) / d ** 0.5).to(device)
    weight = (weight * mask).requires_grad_()
    bias = torch.zeros(d, device=device, requires_grad=True)
    grad = torch.randn(b, d, generator=g).to(device)
    backend = "cpu" if device == "cpu" else "triton"

    def dense(xx, w, bb):
        return F.linear(xx, w * mask, bb)

    def ours(xx, w, bb):
        return genkernels.ops.masked_linear(xx, w, bb, prefix, backend=backend)

    def call(fn):
        def run():
            fn(x, weight, bias).backward(grad)
        return run

    return {f"ours ({backend})": call(ours), DENSE_LINEAR: call(dense),
            f"{DENSE_LINEAR} (torch.compile)": call(torch.compile(dense))}


def _block(case: tuple, device: str, seed: int = 0):
    """A Gated PixelCNN layer (not the first: type-B stacks, residual), its inputs and output
    gradients, and the same layer written two other ways (module docstring)."""
    from genkernels.autoregressive.pixelcnn import GatedLayer

    _, b, ch, size, k, _ = case
    backend = "cpu" if device == "cpu" else "triton"
    torch.manual_seed(seed)
    layer = GatedLayer(ch, ch, k, 1, False, None, backend).to(device)
    g = torch.Generator().manual_seed(seed)
    v, h = (torch.randn(b, ch, size, size, generator=g).to(device).requires_grad_() for _ in range(2))
    grads = [torch.randn(b, ch, size, size, generator=g).to(device) for _ in range(2)]
    masks = {name: getattr(layer, name).mask() for name in ("v_conv", "h_conv", "h_out")}
    c = k // 2

    def torch_block(v, h):
        """The layer as public PixelCNN code writes it: dense convolutions of the masked
        weights, the gate from torch's tanh and sigmoid."""
        def conv(name, t, padding):
            m = getattr(layer, name)
            return F.conv2d(t, m.weight * masks[name], m.bias, padding=padding)
        v_pre = conv("v_conv", v, (c, c))
        h_pre = conv("h_conv", h, (0, c)) + F.conv2d(v_pre, layer.link.weight)
        return conventional_gate(v_pre), h + conv("h_out", conventional_gate(h_pre), 0)

    def ours_unfused(v, h):
        """Our masked convolutions, the gate from torch's tanh and sigmoid."""
        v_pre = layer.v_conv(v)
        h_pre = layer.h_conv(h) + layer.link(v_pre)
        return conventional_gate(v_pre), h + layer.h_out(conventional_gate(h_pre))

    return backend, layer, torch_block, ours_unfused, (v, h), grads


def block_implementations(case: tuple, device: str, seed: int = 0) -> dict:
    """The gated block's implementations, each forward + backward of both stacks."""
    backend, layer, torch_block, ours_unfused, inputs, grads = _block(case, device, seed)

    def call(fn):
        def run():
            torch.autograd.backward(fn(*inputs), grads)
        return run

    return {f"ours ({backend})": call(layer), UNFUSED_OURS: call(ours_unfused), UNFUSED: call(torch_block),
            f"{UNFUSED} (torch.compile)": call(torch.compile(torch_block))}


def pixelcnnpp_loss(params: torch.Tensor, v: torch.Tensor, mixtures: int, levels: int) -> torch.Tensor:
    """The discretised logistic mixture log-likelihood as the public PixelCNN++ code computes
    it (its discretized_mix_logistic_loss, in PyTorch): the bin's mass from two sigmoids, the
    density at the bin centre where the mass is below 1e-5; (B, H, W)."""
    from genkernels.autoregressive import mixture_reference as M
    channels = v.shape[1]
    p = params.permute(0, 2, 3, 1)
    pi, m, log_s, a = M.split(p, channels, mixtures)
    x = (v.permute(0, 2, 3, 1) * (2.0 / (levels - 1)) - 1.0)
    mu = M.means(m, a, x)
    x = x[..., None, :]
    centered, inv_s = x - mu, torch.exp(-log_s)
    plus, minus = inv_s * (centered + 1.0 / (levels - 1)), inv_s * (centered - 1.0 / (levels - 1))
    cdf_plus, cdf_min = torch.sigmoid(plus), torch.sigmoid(minus)
    delta = cdf_plus - cdf_min
    mid = inv_s * centered
    log_mid = mid - log_s - 2.0 * F.softplus(mid) - torch.log(torch.tensor((levels - 1) / 2.0))
    inner = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_mid)
    lp = torch.where(x < -0.999, plus - F.softplus(plus), torch.where(x > 0.999, -F.softplus(minus), inner))
    return torch.logsumexp(lp.sum(-1) + torch.log_softmax(pi, -1), -1)


def mixture_implementations(case: tuple, device: str, seed: int = 0) -> dict:
    """The mixture loss's implementations, each the forward and the gradient of the
    parameters (module docstring)."""
    from genkernels.autoregressive import mixture_reference as M
    _, b, ch, size, k, _ = case
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(b, M.param_count(ch, k), size, size, generator=g).to(device).requires_grad_()
    v = torch.randint(256, (b, ch, size, size), generator=g).float().to(device)
    grad = torch.randn(b, size, size, generator=g).to(device)
    backend = "cpu" if device == "cpu" else "triton"

    def call(fn):
        def run():
            fn(params, v).backward(grad)
        return run

    def ours(p, vv):
        return genkernels.ops.logistic_mixture_log_prob(p, vv, k, 256, backend=backend)

    def eager(p, vv):
        return pixelcnnpp_loss(p, vv, k, 256)

    return {f"ours ({backend})": call(ours), MIXTURE_EAGER: call(eager),
            f"{MIXTURE_EAGER} (torch.compile)": call(torch.compile(eager))}


def conventional_gate(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def implementations(case: tuple, device: str, seed: int = 0) -> dict:
    """name -> a callable running forward + backward once (module docstring)."""
    if len(case) == 3:
        return linear_implementations(case, device, seed)
    if case[5] == "block":
        return block_implementations(case, device, seed)
    if case[5] == "mixture":
        return mixture_implementations(case, device, seed)
    _, b, ch, size, k, mask_type = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, ch, size, size, generator=g).to(device).requires_grad_()
    rules = conv_reference.tap_rules((k, k), mask_type)
    mask = conv_reference.dense_mask(rules, ch, ch, (k, k), device=device)
    weight = (torch.randn(ch, ch, k, k, generator=g) / (ch * k * k) ** 0.5).to(device)
    weight = (weight * mask).requires_grad_()
    bias = torch.zeros(ch, device=device, requires_grad=True)
    grad = torch.randn(b, ch, size, size, generator=g).to(device)
    backend = "cpu" if device == "cpu" else "triton"

    def dense(xx, w, bb):
        return F.conv2d(xx, w * mask, bb, padding=k // 2)

    def cropped(xx, w, bb):
        return cropped_conv(xx, w, bb, mask_type)

    def call(fn):
        def run():
            fn(x, weight, bias).backward(grad)
        return run

    def ours(xx, w, bb):
        return genkernels.ops.masked_conv2d(xx, w, bb, mask_type, backend=backend)

    return {f"ours ({backend})": call(ours), DENSE: call(dense), CROPPED: call(cropped),
            f"{DENSE} (torch.compile)": call(torch.compile(dense)),
            f"{CROPPED} (torch.compile)": call(torch.compile(cropped))}


def check_agreement(case: tuple, device: str) -> float:
    """Max abs difference of ours and the baselines' forward (same inputs)."""
    if len(case) == 3:
        _, b, d = case
        g = torch.Generator().manual_seed(1)
        x, w = torch.randn(b, d, generator=g).to(device), torch.randn(d, d, generator=g).to(device) / d ** 0.5
        prefix = torch.arange(d, device=device)
        with torch.no_grad():
            want = F.linear(x, w * linear_reference.prefix_mask(prefix, d))
            return float((genkernels.ops.masked_linear(x, w, None, prefix) - want).abs().max())
    if case[5] == "mixture":
        from genkernels.autoregressive import mixture_reference as M
        _, b, ch, size, k, _ = case
        g = torch.Generator().manual_seed(1)
        params = torch.randn(b, M.param_count(ch, k), size, size, generator=g).to(device)
        v = torch.randint(256, (b, ch, size, size), generator=g).float().to(device)
        with torch.no_grad():
            return float((genkernels.ops.logistic_mixture_log_prob(params, v, k) - pixelcnnpp_loss(params, v, k, 256))
                         .abs().max())
    if case[5] == "block":
        _, layer, torch_block, _, inputs, _ = _block(case, device, seed=1)
        with torch.no_grad():
            return max(float((a - e).abs().max()) for a, e in zip(layer(*inputs), torch_block(*inputs)))
    _, b, ch, size, k, mask_type = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, ch, size, size, generator=g).to(device)
    weight = torch.randn(ch, ch, k, k, generator=g).to(device) / (ch * k * k) ** 0.5
    bias = torch.randn(ch, generator=g).to(device)
    mask = conv_reference.dense_mask(conv_reference.tap_rules((k, k), mask_type), ch, ch, (k, k), device=device)
    with torch.no_grad():
        want = F.conv2d(x, weight * mask, bias, padding=k // 2)
        ours = genkernels.ops.masked_conv2d(x, weight, bias, mask_type)
        crop = cropped_conv(x, weight * mask, bias, mask_type)
    return max(float((ours - want).abs().max()), float((crop - want).abs().max()))


def run(quick: bool = False, rounds: int | None = None, out: str | None = None, threads: int = 1,
        device: str = "cpu") -> list[dict]:
    torch.set_num_threads(threads)
    rounds = rounds or (3 if quick else 15)
    records = []
    for case in CASES[quick]:
        impls = implementations(case, device)
        diff = check_agreement(case, device)
        times, _ = harness.interleaved(list(impls.values()), device, rounds, warm_each=True)
        medians = {impl: statistics.median(times[:, i]) for i, impl in enumerate(impls)}
        ours_col = next(i for i, k in enumerate(impls) if k.startswith("ours"))
        for i, impl in enumerate(impls):
            col = torch.tensor(times[:, i])
            q1, q3 = (float(v) for v in col.quantile(torch.tensor([0.25, 0.75], dtype=torch.float64)))
            if len(case) == 3:
                shape = {"layer": "linear", "batch": case[1], "features": case[2],
                         "kept": f"{case[2] * (case[2] - 1) // 2}/{case[2] ** 2}"}
            elif case[5] == "mixture":
                _, b, ch, size, k, _ = case
                shape = {"layer": "mixture loss", "batch": b, "channels": ch, "size": size, "mixtures": k,
                         "kept": "-"}
            elif case[5] == "block":
                _, b, ch, size, k, _ = case
                shape = {"layer": "gated block", "batch": b, "channels": ch, "size": size, "kernel": k,
                         "kept": f"{(k // 2 + 1) * k}/{k * k}, {k // 2 + 1}/{k}"}
            else:
                _, b, ch, size, k, mask_type = case
                taps = conv_reference.kept_taps(conv_reference.tap_rules((k, k), mask_type))
                shape = {"layer": "conv", "batch": b, "channels": ch, "size": size, "kernel": k,
                         "mask_type": mask_type, "kept": f"{taps}/{k * k}"}
            records.append({"case": case[0], **shape, "impl": impl, "median_s": medians[impl], "iqr_s": q3 - q1,
                            "rounds": rounds,
                            "x_ours": statistics.median(times[:, i] / times[:, ours_col]),
                            "x_ours_of_medians": medians[impl] / medians[list(impls)[ours_col]],
                            "max_abs_diff": diff})
        print(f"{case[0]}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in medians.items()), file=sys.stderr)
    table = _table(records, device)
    print(table)
    if out:
        harness.write_layer_results(out, device, quick, threads, "autoregressive", "autoregressive", records, table,
                                    timing="forward + backward, interleaved rounds, median")
    return records


def _table(records: list[dict], device: str) -> str:
    threads = torch.get_num_threads()
    lines = [f"# Masked layers, forward + backward, fp32, {device} ({threads} thread{'s' * (threads > 1)}), "
             f"torch {torch.__version__}", "",
             "x ours = the median over the interleaved rounds of the implementation's time / ours in the same "
             "round (> 1: slower than ours; a change of load hits both alike). Kept: taps (conv) or weights "
             "(linear).", "",
             "| case | kept | impl | median | IQR | x ours | max abs diff |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['case']} | {r['kept']} | {r['impl']} | "
                     f"{r['median_s'] * 1e3:.2f} ms | {r['iqr_s'] * 1e3:.2f} ms | {r['x_ours']:.2f} | "
                     f"{r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    return harness.layer_bench_main(__doc__, run, argv)


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    """One case per (shape, implementation) (``pytest bench/ --benchmark-only``)."""
    if "case" not in metafunc.fixturenames:
        return
    device, quick, _ = harness.bench_options(metafunc.config)
    backend = "cpu" if device == "cpu" else "triton"
    conv = (f"ours ({backend})", DENSE, CROPPED, f"{DENSE} (torch.compile)", f"{CROPPED} (torch.compile)")
    linear = (f"ours ({backend})", DENSE_LINEAR, f"{DENSE_LINEAR} (torch.compile)")
    block = (f"ours ({backend})", UNFUSED_OURS, UNFUSED, f"{UNFUSED} (torch.compile)")
    mixture = (f"ours ({backend})", MIXTURE_EAGER, f"{MIXTURE_EAGER} (torch.compile)")
    cases = [(c, impl, device) for c in CASES[quick]
             for impl in (linear if len(c) == 3 else block if c[5] == "block" else mixture if c[5] == "mixture"
                          else conv)]
    metafunc.parametrize("case", cases, ids=[f"{c[0][0]}-{c[1]}".replace(" ", "_") for c in cases])


def test_masked_layer(benchmark, case):
    """Time one implementation's forward + backward."""
    shape, impl, device = case
    harness.benchmark_call(benchmark, implementations(shape, device)[impl], device)
    benchmark.extra_info.update({"case": shape[0], "impl": impl})


if __name__ == "__main__":
    sys.exit(main())
