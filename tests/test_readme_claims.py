"""Every README figure that cites a results file is recomputed here from that file's JSON
(never from the rounded Markdown table) and must appear in the README exactly as formatted
below: editing a number in the README, or committing a new results file without updating
the README, fails this test.

Each claim is a function returning the README snippets it vouches for; whitespace is
compared collapsed (the README wraps lines anywhere)."""

import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
README = os.path.join(REPO, "README.md")


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.fixture(scope="module")
def readme() -> str:
    with open(README) as f:
        return _squash(f.read())


def load(name: str) -> dict:
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def one(cases: list[dict], **match) -> dict:
    hits = [c for c in cases if all(c.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, (match, len(hits))
    return hits[0]


# ---------------------------------------------------------------- formatting
def g(v: float, digits: int) -> str:
    """``digits`` significant digits, as the README writes ratios and times."""
    return f"{v:.{digits}g}"


def ms(seconds: float, digits: int = 3) -> str:
    return f"{g(seconds * 1e3, digits)} ms"


def sci(v: float) -> str:
    """2.2·10⁷: two significant digits times a power of ten in superscript."""
    mantissa, exponent = f"{v:.1e}".split("e")
    sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    return f"{mantissa}·10{str(int(exponent)).translate(sup)}"


def neg(text: str) -> str:
    """The README's minus sign (U+2212)."""
    return text.replace("-", "−")


# ------------------------------------------------------------------- claims
def som_cpu() -> list[str]:
    d = load("intel-xeon-processor-2c.json")

    def c(workload, op, impl, **kw):
        return one(d["cases"], workload=workload, op=op, impl=impl, **kw)

    def best_torchsom(workload):
        return min(r["x_ours"] for r in d["cases"]
                   if r["workload"] == workload and r["op"] == "batch_epoch" and r["impl"] == "torchsom")

    rb, rbe, ro = c("random", "bmu", "cpu"), c("random", "batch_epoch", "cpu"), c("random", "online_epoch", "cpu")
    mb, mbe, mo = c("mnist", "bmu", "cpu"), c("mnist", "batch_epoch", "cpu"), c("mnist", "online_epoch", "cpu")
    sc = c("scale", "batch_epoch", "cpu")
    mini_online = c("random", "online_epoch", "minisom")
    return [
        f"reached {d['peak_gflops']:.0f} GFLOP/s in the same run",
        f"| 50,000×64, 32×32 map | BMU search | {ms(rb['median_s'])} | {g(rb['x_ideal'], 3)}× | bare `torch.mm` "
        f"of the distance GEMM {g(c('random', 'bmu', 'torch.mm')['x_ours'], 2)}× slower; naive `addmm` + `argmin` "
        f"{g(c('random', 'bmu', 'torch addmm+argmin')['x_ours'], 2)}×; torchsom "
        f"{g(c('random', 'bmu', 'torchsom')['x_ours'], 2)}×; MiniSom {g(c('random', 'bmu', 'minisom')['x_ours'], 2)}× |",
        f"| 50,000×64, 32×32 map | batch epoch | {ms(rbe['median_s'])} | {g(rbe['x_ideal'], 3)}× | torchsom (best "
        f"batch size) {g(best_torchsom('random'), 3)}× slower; XPySom "
        f"{g(c('random', 'batch_epoch', 'xpysom')['x_ours'], 3)}×; MiniSom `train_batch_offline` "
        f"{g(c('random', 'batch_epoch', 'minisom')['x_ours'], 3)}× (extrapolated) — same QE {rbe['qe']:.4f} / "
        f"TE {rbe['te']:.4f} as MiniSom and XPySom |",
        f"| 50,000×64, 32×32 map | online epoch, 50,000 sequential steps | {ms(ro['median_s'])} | – | MiniSom "
        f"`train` {g(mini_online['x_ours'], 3)}× slower (extrapolated from 2,000 steps); QE {ro['qe']:.4f} / "
        f"TE {ro['te']:.4f} vs MiniSom's {mini_online['qe']:.4f} / {mini_online['te']:.4f} |",
        f"| MNIST 10,000×784, 40×40 map | BMU search | {ms(mb['median_s'])} | {g(mb['x_ideal'], 3)}× | bare "
        f"`torch.mm` {g(c('mnist', 'bmu', 'torch.mm')['x_ours'], 3)}× slower; naive `addmm` + `argmin` "
        f"{g(c('mnist', 'bmu', 'torch addmm+argmin')['x_ours'], 3)}×; torchsom "
        f"{g(c('mnist', 'bmu', 'torchsom')['x_ours'], 2)}×; MiniSom {g(c('mnist', 'bmu', 'minisom')['x_ours'], 2)}× |",
        f"| MNIST 10,000×784, 40×40 map | batch epoch | {ms(mbe['median_s'])} | {g(mbe['x_ideal'], 3)}× | torchsom "
        f"{g(best_torchsom('mnist'), 2)}× slower (best batch size, a different rule); XPySom "
        f"{g(c('mnist', 'batch_epoch', 'xpysom')['x_ours'], 2)}×; MiniSom "
        f"{g(c('mnist', 'batch_epoch', 'minisom')['x_ours'], 3)}× |",
        f"| MNIST 10,000×784, 40×40 map | online epoch, 10,000 steps | {ms(mo['median_s'])} | – | MiniSom `train` "
        f"{g(c('mnist', 'online_epoch', 'minisom')['x_ours'], 3)}× slower (extrapolated) |",
        f"| 1,000,000×64, 100×100 map | batch epoch | {g(sc['median_s'], 2)} s, +{sc['peak_mem'] / 2**20:.0f} MiB "
        f"peak | {g(sc['x_ideal'], 3)}× |",
    ]


def som_gpu() -> list[str]:
    d = load("nvidia-h100-80gb-hbm3.json")

    def c(workload, op, impl, **kw):
        return one(d["cases"], workload=workload, op=op, impl=impl, **kw)

    def best_torchsom(workload):
        return min(r["x_ours"] for r in d["cases"]
                   if r["workload"] == workload and r["op"] == "batch_epoch" and r["impl"] == "torchsom")

    tf32 = c("bmu_gpu", "bmu", "triton", params={"precision": "tf32"})
    fp32 = c("bmu_gpu", "bmu", "triton", params={"precision": "fp32"})
    rbe, mbe = c("random", "batch_epoch", "triton"), c("mnist", "batch_epoch", "triton")
    ro = c("random", "online_epoch", "triton")
    mm = {w: c(w, "bmu", "torch.mm")["median_s"] for w in ("random", "mnist")}
    ours = {w: c(w, "bmu", "triton")["median_s"] for w in ("random", "mnist")}
    torchsom = {w: c(w, "bmu", "torchsom")["median_s"] for w in ("random", "mnist")}
    fp32_rates = [c(w, "bmu", "triton")["gflops"] for w in ("random", "mnist")] + [fp32["gflops"]]
    multi = {impl: c("multi_map", "online_epoch", impl) for impl in ("triton", "cuda", "cpu")}
    return [
        f"reached {g(d['peak_gflops'] / 1e3, 3)} TFLOP/s",
        f"| 1,000,000×256, 64×64 map | BMU search, `precision=\"tf32\"` | {ms(tf32['median_s'])} | "
        f"{g(tf32['x_ideal'], 3)}× | fp32 `torch.mm` of the distance GEMM alone "
        f"{ms(c('bmu_gpu', 'bmu', 'torch.mm')['median_s'])}; naive `addmm` + `argmin` "
        f"{ms(c('bmu_gpu', 'bmu', 'torch addmm+argmin')['median_s'])}; our exact fp32 search "
        f"{fp32['median_s'] * 1e3:.1f} ms ({g(fp32['median_s'] / tf32['median_s'], 2)}× slower than tf32) |",
        f"| 50,000×64, 32×32 map | batch epoch | {ms(rbe['median_s'], 2)} | {g(rbe['x_ideal'], 3)}× | torchsom (best "
        f"batch size, a different rule) {g(best_torchsom('random'), 3)}× slower; XPySom (CPU) "
        f"{g(c('random', 'batch_epoch', 'xpysom')['x_ours'], 3)}×; MiniSom "
        f"{sci(c('random', 'batch_epoch', 'minisom')['x_ours'])}× |",
        f"| MNIST 10,000×784, 40×40 map | batch epoch | {ms(mbe['median_s'], 2)} | {g(mbe['x_ideal'], 3)}× | "
        f"torchsom {g(best_torchsom('mnist'), 2)}× slower; XPySom (CPU) "
        f"{g(c('mnist', 'batch_epoch', 'xpysom')['x_ours'], 3)}× |",
        f"| 50,000×64, 32×32 map | online epoch, 50,000 steps | {g(ro['median_s'], 3)} s (triton, one program per "
        f"map) | – | MiniSom (CPU) {g(c('random', 'online_epoch', 'minisom')['x_ours'], 2)}× slower; the plain "
        f"PyTorch loop on the GPU {g(c('random', 'online_epoch', 'reference')['x_ours'], 2)}× slower |",
        f"| 64 maps 32×32, D=64 | online, 10,000 steps each, one launch | {ms(multi['triton']['median_s'])} "
        f"(triton) | – | the same launch on the 16-core CPU "
        f"{g(multi['cpu']['median_s'] / multi['triton']['median_s'], 3)}× slower |",
        f"runs at {min(fp32_rates) / 1e3:.0f}–{max(fp32_rates) / 1e3:.0f} TFLOP/s",
        f"a bare fp32 GEMM is {g(ours['random'] / mm['random'], 2)}× (50,000×64) to "
        f"{g(ours['mnist'] / mm['mnist'], 2)}× (MNIST) faster than our whole search and torchsom's brute-force "
        f"GEMM search is {g(ours['random'] / torchsom['random'], 2)}× and "
        f"{g(ours['mnist'] / torchsom['mnist'], 2)}× faster on those two workloads",
        f"10,000 steps took {g(c('mnist', 'online_epoch', 'triton')['median_s'], 3)} s (triton) and "
        f"{g(c('mnist', 'online_epoch', 'cuda')['median_s'], 3)} s (cuda) against "
        f"{g(c('mnist', 'online_epoch', 'reference')['median_s'], 3)} s for a plain PyTorch loop",
        f"(64: {g(multi['cuda']['median_s'], 3)} s on cuda against {g(multi['triton']['median_s'], 2)} s on triton)",
    ]


def energy() -> list[str]:
    d = load("intel-xeon-processor-2c-energy.json")

    def row(workload, impl, label, sklearn=True):
        r = one(d["cases"], workload=workload, impl=impl)
        t = ms(r["median_s"]) if r["median_s"] < 1 else f"{g(r['median_s'], 3)} s"
        x_sk = f"{r['x_sklearn']:.2f}" if sklearn else "–"
        return f"| {label} | {t} | {r['x_ideal']:.2f} | {x_sk} | {r['x_eager']:.2f} |", r

    rows = [row("random", "cpu binary", "60,000 random binary rows, 784×256, batch 100, PCD-1 — binary-state path (auto)"),
            row("random", "cpu dense", "same, dense path (`state_path=\"dense\"`)"),
            row("mnist", "cpu binary", "binarised MNIST 10,000 rows, same model — binary-state path"),
            row("mnist", "cpu dense", "same, dense path"),
            row("large", "cpu dense", "MNIST rows, 784×1024, batch 1024, PCD-10 (dense)", sklearn=False)]
    dense = [r["x_ideal"] for _, r in rows[1:4:2]]
    binary = [r["x_ideal"] for _, r in rows[0:3:2]]
    sk = [r["x_sklearn"] for _, r in rows[0:3:2]]
    return [text for text, _ in rows] + [
        f"the dense PCD-1 epoch is {min(dense):.1f}–{max(dense):.1f}× its bare products",
        f"the binary path is at {min(binary):.2f}–{max(binary):.2f}×",
        f"the binary path is {min(sk):.1f}–{max(sk):.1f}× faster than scikit-learn",
    ]


def rbm_mnist() -> list[str]:
    d = load("rbm-mnist.json")
    cd, pcd, pt = d["rows"]
    acc = pt["swap_acceptance"]
    return [
        f"CD-1 {neg(format(cd['test_ll'], '.2f'))} ± {cd['log_z_stderr']:.2f} nats, PCD-1 "
        f"{neg(format(pcd['test_ll'], '.2f'))} ± {pcd['log_z_stderr']:.2f}",
        f"swap acceptance {min(acc):.2f}–{max(acc):.2f}",
        neg(f"{pt['test_ll']:.2f} ± {pt['log_z_stderr']:.2f}, all at learning rate {d['fit']['learning_rate']}"),
        f"trains RBM(784, {d['hidden']}) for {d['epochs']} epochs on the first {d['n_train']:,}",
    ]


def compat() -> list[str]:
    d = load("intel-xeon-processor-2c-compat-rbm.json")
    c = {(r["impl"], r["shapes"]["batch_size"]): r for r in d["cases"]}
    gk100, sk100, gk10, sk10 = c["genkernels", 100], c["sklearn", 100], c["genkernels", 10], c["sklearn", 10]
    # what the README says in words about batch 10 must hold in the JSON
    assert gk10["median_s"] > sk10["median_s"], "the README says we are slower at the median at batch 10"
    return [
        f"at batch 100 the median fit took {g(gk100['median_s'] * 1e3, 3)} ms vs {g(sk100['median_s'] * 1e3, 3)} "
        f"ms ({g(gk100['x_faster_than_sklearn'], 2)}× faster, the median of the per-round ratios)",
        f"at batch 10 the median fit took {gk10['median_s']:.2f} s vs {sk10['median_s']:.2f} s, so ours was "
        f"**slower at the median**",
        f"(IQR {gk10['iqr_s']:.2f} s and {sk10['iqr_s']:.2f} s; the fastest rounds took {ms(gk10['min_s'])} vs "
        f"{g(sk10['min_s'], 3)} s)",
        f"({d['cases'][0]['shapes']['n']:,} MNIST rows × 784 in float64, {gk100['shapes']['n_components']} components",
    ]


def compat_recon() -> list[str]:
    d = load("intel-xeon-processor-2c-compat-rbm-recon.json")
    gk, sk = (one(d["cases"], impl=impl) for impl in ("genkernels", "sklearn"))
    assert f"{gk['recon_mean']:.4f}" == f"{sk['recon_mean']:.4f}"
    states = gk["random_states"]
    return [
        f"`python bench/bench_compat_rbm.py --recon-states {len(states)}` (the same {gk['shapes']['n']:,} rows, "
        f"batch {gk['shapes']['batch_size']}, one fit per random_state {states[0]}-{states[-1]}) gives a mean of "
        f"{gk['recon_mean']:.4f} for both and a standard deviation of {gk['recon_std']:.4f} (ours) and "
        f"{sk['recon_std']:.4f} (scikit-learn)",
    ]


def som_grid_search() -> list[str]:
    d = load("amd-epyc-2c-som-estimator.json")
    gs, par, ours = (one(d["cases"], impl=impl) for impl in ("GridSearchCV", "GridSearchCV n_jobs=2",
                                                              "som_grid_search"))
    assert all(c["same_results"] for c in (gs, par, ours)), "the README says every round returned the same scores"
    assert ours["x_faster_than_gridsearchcv"] < 5, "the README says the 5x target is not met"
    maps = ours["shapes"]["n_sigma"] * ours["shapes"]["n_learning_rate"]
    return [
        f"| grid search + refit: `som_grid_search`, {ours['fits'] - 1} fits of {maps} maps | {ours['median_s']:.2f} s "
        f"| – | `GridSearchCV` over `SOMEstimator` ({gs['fits'] - 1} fits) {gs['median_s']:.2f} s, "
        f"{g(ours['x_faster_than_gridsearchcv'], 3)}× slower; with `n_jobs=2` {par['median_s']:.2f} s; same scores",
        f"(load average {d['load_avg_start']} at the start, {d['load_avg_end']} at the end), the median search took "
        f"{ours['median_s']:.2f} s vs {gs['median_s']:.2f} s ({g(ours['x_faster_than_gridsearchcv'], 3)}× faster, "
        f"the median of the per-round ratios; {g(ours['x_faster_than_gridsearchcv_best'], 3)}× between the fastest "
        f"rounds), and {par['median_s']:.2f} s for `GridSearchCV(..., n_jobs=2)`",
        f"Both train the same {gs['fits'] - 1} maps step by step",
    ]


def ais_digits() -> list[str]:
    d = load("rbm-ais-digits.json")
    uniform, base_rate = (one(d["rows"], base=b) for b in ("uniform", "base-rate"))
    return [
        f"A {d['n_visible']} × {d['n_hidden']} RBM trained on the binarised 8x8 digits ({d['epochs']} epochs of "
        f"PCD-1, `python bench/rbm_ais_digits.py`), default {d['n_chains']} × {d['n_betas']:,}: "
        f"{uniform['log_z']:.4f} ± {uniform['stderr']:.4f} (uniform base) and {base_rate['log_z']:.4f} ± "
        f"{base_rate['stderr']:.4f} (base-rate) vs exact {d['exact_log_z']:.4f}",
    ]


def hopfield_recall() -> list[str]:
    d = load("intel-xeon-processor-2c-hopfield-recall.json")

    def r(n, impl):
        return one(d["rows"], N=n, impl=impl)

    return [
        f"N = 1,000, {r(1000, 'cpu')['B']} probes: {sci(r(1000, 'cpu')['updates_per_s'])} unit updates/s on the "
        f"`cpu` backend, {g(r(1000, 'torch loop')['x_slower_than_ours'], 2)}× the straightforward PyTorch loop "
        f"over units and {g(r(1000, 'hopfieldkit 0.1.0')['x_slower_than_ours'], 2)}× hopfieldkit 0.1.0",
        f"N = 4,096 (a 64 MiB weight matrix, memory-bound): {sci(r(4096, 'cpu')['updates_per_s'])}/s, "
        f"{g(r(4096, 'torch loop')['x_slower_than_ours'], 3)}× the loop and "
        f"{g(r(4096, 'hopfieldkit 0.1.0')['x_slower_than_ours'], 2)}× hopfieldkit",
    ]


def dbn_digits() -> list[str]:
    d = load("dbn-digits.json")
    raw, first, top = (r["accuracy"] for r in d["rows"])
    return [
        f"On 8x8 digits ({d['n_train']:,} train / {d['n_test']} test, `python bench/dbn_digits.py`, "
        f"{d['fit_seconds']:.0f} s of training on CPU) logistic regression reaches {raw:.3f} on the raw pixels, "
        f"{first:.3f} on the first layer's features and {top:.3f} on the top layer's",
    ]


def small_amd():
    """The quiet small-shapes run on the AMD EPYC (bench/bench_small.py all)."""
    d = load("amd-epyc-2c-small.json")
    sk = [r for r in d["sklearn_rows"] if r["impl"] == "genkernels"]
    by_batch = {int(r["case"].rsplit(" ", 1)[1]): r for r in sk}
    one_t = [g(by_batch[b]["sklearn_over_ours_1"], 3) + "×" for b in (1, 10, 100, 1000)]
    two_t = ", ".join(g(by_batch[b]["sklearn_over_ours_2"], 3) + "×" for b in (1, 10, 100, 1000))
    cases = d["cases"]

    def overhead(family):
        public = one(cases, case=f"per-call overhead ({family})", impl="public genkernels.ops call")
        raw = one(cases, case=f"per-call overhead ({family})", impl="registered op called directly")
        return g((public["t1_s"] - raw["t1_s"]) * 1e6, 2)
    others = [r["ratio_2_over_1"] for r in cases if r["impl"].startswith("genkernels") and
              "reference" not in r["impl"] and "overhead" not in r["case"]]
    busy = load("amd-epyc-2c-small-contended1.json")["cases"]
    batch10 = "hopfield batch 10: recall N=64 (async), retrieval P=16 D=32 (3 steps)"
    recall, retrieval = (g(one(busy, case=batch10, impl=f"genkernels {op}")["ratio_2_over_1"], 2) + "×"
                         for op in ("hopfield_recall async", "hopfield_retrieval"))
    busy_sk = [r for r in load("amd-epyc-2c-small-contended1.json")["sklearn_rows"] if r["impl"] == "genkernels"]
    busy_1000 = one(busy_sk, case=by_batch[1000]["case"])
    return [f"{', '.join(one_t[:3])} and {one_t[3]} faster than scikit-learn at batch 1, 10, 100 and 1,000 "
            f"on one thread ({two_t} on two;",
            f"every op is within {g(max(others), 3)}× one thread on two",
            f"{overhead('som')} µs for `som_bmu` and {overhead('energy')} µs for `rbm_half_step`",
            f"Hopfield recall and retrieval at batch 10 take {recall} and {retrieval} their one-thread time",
            f"(2 threads {g(busy_1000['ratio_2_over_1'], 3)}× one thread"]


def bmu_certification():
    """Rows the certified BMU search re-searches (bench/bmu_certification.py)."""
    cases = load("bmu-certification.json")["cases"]

    def pct(data, precision):
        return g(100 * one(cases, data=data, precision=precision)["uncertified"], 2) + "%"
    return [f"re-searched: bf16 {pct('random', 'bf16')} on uniform 256-feature data against 4,096 of its rows "
            f"and {pct('mnist', 'bf16')} on MNIST against 1,024 of its images; tf32 {pct('random', 'tf32')} "
            f"and {pct('mnist', 'tf32')}, fp32 {pct('random', 'fp32')} and {pct('mnist', 'fp32')}"]


def patch_som() -> list[str]:
    """The fused patch BMU against unfold + som_bmu (bench/bench_som_nn.py, bench_patch_bmu)."""
    cases = load("som_patch_bmu_cpu.json")["cases"]
    labels = {("mnist-t10k", 1): "256 MNIST 28×28", ("mnist-t10k", 2): "256 MNIST 28×28",
              ("uniform-dense", 1): "256 dense uniform 28×28"}
    rows = []
    for (source, stride), label in labels.items():
        for threads in (1, 2):
            fused = one(cases, source=source, stride=stride, threads=threads, impl="som_patch_bmu (cpu)")
            unfold = one(cases, source=source, stride=stride, threads=threads, impl="unfold + som_bmu (cpu)")
            rows.append(f"| {label} | {stride} | {threads} | {ms(fused['median_s'])} | {ms(unfold['median_s'])}, "
                        f"{g(fused['unfold_over_fused_median_ratio'], 3)}× | "
                        f"{g(unfold['min_s'] / fused['min_s'], 3)}× | "
                        f"{fused['torch_peak_bytes'] / 2**20:.2f} / {unfold['torch_peak_bytes'] / 2**20:.2f} MiB "
                        f"({fused['im2col_bytes'] / 2**20:.2f} MiB) | {fused['kernel_list_bytes'] / 2**20:.2f} MiB |")
    return rows


def _msec(seconds: float) -> str:
    """Milliseconds to about two significant digits, never in exponent form."""
    v = seconds * 1e3
    return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms" if v >= 1 else f"{v:.2f} ms"


def som_mask():
    """The SOM-masked layers' forward + backward times (bench/bench_som_mask.py, 1 thread)."""
    d = load("amd-epyc-2c-som-mask.json")
    rows = []
    for case, target in (("linear B=256 D=784", "≥ 5×"), ("conv image B=64 1x28x28 k3", "≥ 5×"),
                         ("conv image B=64 16x14x14 k3", "≥ 5×"), ("conv patch B=64 1x28x28 k3", "≥ 3×"),
                         ("conv patch B=64 16x14x14 k3", "≥ 3×")):
        m = {r["impl"]: r["median_s"] for r in d["cases"] if r["case"] == case}
        rows.append(f"| {case} | {_msec(m['sparse op'])} | {_msec(m['dense-mask op'])} | "
                    f"{g(m['dense-mask op'] / m['sparse op'], 2)}× ({target}) | {_msec(m['dense 5 outputs'])} | "
                    f"{g(m['sparse op'] / m['dense 5 outputs'], 2)}× (≤ 2×) | "
                    f"{g(m['dense-mask layer'] / m['sparse layer'], 2)}× |")
    return rows


def som_mask_mnist():
    """The SOM-masked CNN on MNIST against 5- and 100-channel CNNs (bench/som_mask_mnist.py)."""
    d = load("som-mask-mnist.json")
    rows = []
    for name, s in d["summary"].items():
        train = sum(r["train_accuracy"] for r in d["cases"] if r["model"] == name) / len(d["seeds"])
        rows.append(f"| {name} | {s['test_accuracy_mean']:.3f} ± {s['test_accuracy_sd']:.3f} | {train:.3f} | "
                    f"{s['seconds_per_epoch']:.1f} s |")
    return rows


def softsom_spirals():
    """The SoftSOM on the two-arm spirals, five seeds (bench/softsom_spirals.py)."""
    cases = {c["model"]: c for c in load("softsom-spirals.json")["cases"]}
    labels = {"mlp": "2→32→32→2 MLP alone",
              "softsom+mlp": "10×10 SoftSOM (grid coordinates out) → the same MLP, trained end to end",
              "som-organised softsom+mlp": "the same, the map organised by the SOM rule over the first 100 steps",
              "mlp with softsom inside": "MLP with the SoftSOM between its hidden layers"}
    return [f"| {label} | {cases[m]['mean']:.3f} ± {cases[m]['std']:.3f} |" for m, label in labels.items()]


def softsom_speed():
    """The soft SOM op against its definition, eager and compiled (bench/bench_som_nn.py --section softsom)."""
    rows = [r for r in load("amd-epyc-2c-som-nn.json")["cases"] if r["layer"] == "SoftSOM" and r["threads"] == 1]

    def row(w, op, impl):
        return next(r for r in rows if r["workload"] == w and r["op"] == op and r["impl"] == impl)

    def msec(v):
        return f"{v * 1e3:.2f} ms" if v < 1e-3 else f"{v * 1e3:.1f} ms"
    labels = {"spiral": "spiral B=1,500 D=2 K=100", "hidden": "hidden layer B=1,024 D=64 K=400",
              "small": "small batch B=64 D=32 K=100"}
    return [f"| {label} | {op} | {msec(row(w, op, 'cpu')['median_s'])} | {row(w, op, 'definition')['x_ours']:.2f}× | "
            f"{row(w, op, 'definition (torch.compile)')['x_ours']:.2f}× |"
            for w, label in labels.items() for op in ("forward", "forward+backward")]


def pixelcnn_mnist():
    """The Gated PixelCNN's held-out NLL (bench/pixelcnn_mnist.py)."""
    labels = {"digits": "digits 8×8", "mnist": "MNIST 28×28"}
    return [f"| {labels[c['set']]} | {c['train_images']:,} / {c['test_images']:,} | {c['test_nll_nats']:.2f} nats | "
            f"{c['test_bits_per_dim']:.4f} | {c['train_seconds']:.0f} s |"
            for c in load("pixelcnn-mnist.json")["cases"]]


def pixelcnn_sampling():
    """Cached against naive sampling (bench/bench_pixelcnn_sampling.py)."""
    cases = load("amd-epyc-2c-pixelcnn-sampling.json")["cases"]
    assert all(r["same_values"] and r["naive_rows"] == 4 for r in cases)
    return [f"| {r['layers']} layers × {r['channels']} channels | {r['image_side']}×{r['image_side']} | {r['batch']} | "
            f"{g(r['cached_images_per_s'], 3)} images/s | {g(r['naive_images_per_s'], 3)} images/s | "
            f"{r['speedup']:.1f}× |" for r in cases]


def _ours_against_others(name: str, op: str | None = None) -> list[str]:
    """One README row per case of results file ``name`` (of op ``op`` only, when given):
    ours (cpu)'s median, then every other implementation's x ours (the median of the rounds'
    time / ours), in file order."""
    by_case: dict = {}
    for r in load(name)["cases"]:
        if op is None or r.get("op", "affine_coupling") == op:
            by_case.setdefault(r["case"], {})[r["impl"]] = r
    rows = []
    for case, impls in by_case.items():
        ours = impls["ours (cpu)"]
        others = " | ".join(f"{g(r['x_ours'], 3)}×" for impl, r in impls.items() if impl != "ours (cpu)")
        rows.append(f"| {case} | {_msec(ours['median_s'])} | {others} |")
    return rows


def autoregressive_layers():
    """The masked layers, gated blocks and mixture losses, forward + backward, one thread
    (bench/bench_autoregressive.py)."""
    return _ours_against_others("amd-epyc-2c-autoregressive.json")


def flows_coupling():
    """The affine coupling's elementwise part, forward + backward, one thread
    (bench/bench_flows.py)."""
    return _ours_against_others("amd-epyc-2c-flows.json", "affine_coupling")


def flows_spline():
    """The rational-quadratic spline, forward + backward, one thread (bench/bench_flows.py)."""
    return _ours_against_others("amd-epyc-2c-flows.json", "rq_spline")


def flows_actnorm():
    """ActNorm's map, forward + backward, one thread (bench/bench_flows.py)."""
    return _ours_against_others("amd-epyc-2c-flows.json", "actnorm")


def flows_training():
    """A training step of RealNVP, MAF and NSF against nflows and zuko
    (bench/bench_flows_training.py)."""
    rows = []
    for r in load("amd-epyc-2c-flows-training.json")["cases"]:
        if r["impl"] == "ours":
            others = {o["impl"]: o for o in load("amd-epyc-2c-flows-training.json")["cases"]
                      if o["case"] == r["case"] and o["flow"] == r["flow"]}
            fit = others["ours, fit's fused Adam"]["anchor_x"]
            rows.append(f"| {r['case']} | {r['flow']} | {_msec(r['median_s'])} | "
                        f"{g(others['nflows']['x_ours'], 3)}× | {g(others['zuko']['x_ours'], 3)}× | "
                        f"{r['flow_op_share'] * 100:.0f}% | {g(fit['nflows'], 3)}×, {g(fit['zuko'], 3)}× |")
    return rows


def made_network():
    """MADE's whole network, forward + backward, one thread (bench/bench_made.py)."""
    return _ours_against_others("amd-epyc-2c-made.json")


def flows_images():
    """A training step of Glow and RealNVP on images against the reference, torch.compile and
    nflows (bench/bench_flows_images.py)."""
    cases = load("amd-epyc-2c-flows-images.json")["cases"]
    rows = []
    for r in cases:
        if r["impl"] == "ours":
            by = {o["impl"]: o for o in cases if o["case"] == r["case"] and o["flow"] == r["flow"]}
            rows.append(f"| {r['case']} | {r['flow']} | {_msec(r['median_s'])} | "
                        + " | ".join(f"{g(by[k]['x_ours'], 3)}×" for k in ("reference", "reference compiled",
                                                                            "ours compiled"))
                        + f" | {g(by['nflows']['x_ours'], 3) + '×' if 'nflows' in by else '–'} |")
    return rows


def flows_mnist():
    """RealNVP's and Glow's held-out bits/dim on MNIST and the digits (bench/flows_mnist.py)."""
    return [f"| {r['set']} {r['image_size'][0]}×{r['image_size'][1]}, {r['levels']} levels | "
            f"{r['train_images']:,} / {r['test_images']:,} | {r['model']} | {r['epochs']} | "
            f"{r['test_bits_per_dim']:.3f} | {r['train_seconds']:.0f} s |"
            for r in load("flows-mnist.json")["cases"]]


CLAIMS = [som_cpu, som_gpu, energy, rbm_mnist, compat, compat_recon, som_grid_search, ais_digits, hopfield_recall,
          dbn_digits, bmu_certification, small_amd, patch_som, som_mask, som_mask_mnist, softsom_spirals,
          softsom_speed, pixelcnn_mnist, pixelcnn_sampling,
          autoregressive_layers, flows_coupling, flows_spline, flows_actnorm, flows_training, flows_mnist, made_network, flows_images]


@pytest.mark.parametrize("claim", CLAIMS, ids=[c.__name__ for c in CLAIMS])
def test_readme_figures_match_their_results_file(readme, claim):
    missing = [snippet for snippet in claim() if _squash(snippet) not in readme]
    assert not missing, "README figures that differ from their results JSON:\n" + "\n".join(missing)


def test_every_cited_results_file_exists(readme):
    for path in re.findall(r"\]\((bench/results/[^)]+)\)", readme):
        assert os.path.isfile(os.path.join(REPO, path)), path


def test_ais_10x8_figure_is_what_the_test_model_gives(readme):
    """The 10 x 8 figure the README attributes to tests/test_rbm_ais.py: that test's random
    RBM, 100 chains x 1,000 betas, seed 0 (a few seconds)."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_rbm_ais import _random_rbm
    rbm = _random_rbm()
    est, se = rbm.log_partition_ais(n_chains=100, n_betas=1000, seed=0)
    exact = rbm.log_partition_exact()
    snippet = (f"a 10 × 8 RBM with N(0, 0.5²) weights, 100 chains × 1,000 β, {est:.4f} ± {se:.4f} vs exact "
               f"{exact:.4f}")
    assert _squash(snippet) in readme, snippet

