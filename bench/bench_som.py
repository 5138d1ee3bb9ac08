"""SOM benchmarks: every genkernels backend and every anchor on the same inputs.

Two ways in:

* ``pytest bench/bench_som.py --benchmark-only`` (options ``--data DIR``,
  ``--bench-device cpu|cuda``, ``--bench-quick``; see bench/conftest.py): one
  pytest-benchmark test per case;
* ``python bench/run.py som`` (bench/run.py): the runner, which times the same cases,
  adds QE/TE, peak memory and ratios, and writes bench/results/<machine>.{json,md}.

Workloads (``workloads``): random 50,000 x 64 on a 32x32 map; the MNIST test set
(10,000 x 784) on a 40x40 map; a scale case 1,000,000 x 64 on a 100x100 map (one
batch epoch, genkernels backends only). Per workload (``build_cases``):

* ``bmu``           BMU search alone: our backends, MiniSom's and torchsom's BMU
                    code, a bare distance GEMM (``torch.mm``, N x D times D x K) and a
                    naive tiled ``torch.addmm`` + ``argmin``; on CUDA (the ``bmu_gpu``
                    workload) the triton search also with ``precision="tf32"`` and
                    ``"bf16"`` (tensor cores, exact re-rank), each reporting the fraction
                    of its indices equal to the fp32 search's (``indices_equal_fp32``);
* ``batch_epoch``   one epoch of Kohonen's batch rule at the start radius:
                    ``som_node_sums`` + ``som_smooth``; MiniSom ``train_batch_offline``,
                    XPySom ``train`` (numpy), torchsom's mini-batch fit loop;
* ``online_epoch``  one epoch of the sequential rule, N steps in data order:
                    ``som_online``; MiniSom ``train``;
* ``peak_gemm``     the 2048^3 ``torch.mm`` that sets the peak rate.

Every training case starts from the same weights (K rows of the data drawn with a
fixed seed) and follows one schedule (``schedule``): sigma from max(grid)/2 to 1 and
lr from 0.5 to 0.01, exponential over the run. QE and TE of the final weights come
from one function (``quality``: ``genkernels.ops.som_bmu`` with k=2 whatever library
trained the map; TE by MiniSom's rectangular rule, best and second best farther
apart than 1.42 on the grid).

Slow cases time a prefix and extrapolate (``Case.extrapolate``): MiniSom online
(first 2,000 steps of the full schedule), MiniSom's batch epoch (2,000 samples) and
the reference online loop (1,000 steps). The triton backend is benchmarked on CUDA
tensors only, never under the interpreter.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
if importlib.util.find_spec("genkernels") is None:  # a checkout that is not pip-installed
    sys.path.insert(0, REPO)
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import genkernels  # noqa: E402
from genkernels import backends, ops  # noqa: E402
from genkernels.som.lattice import Lattice  # noqa: E402
from harness import bench_options, benchmark_call  # noqa: E402

DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "mnist")
MNIST_IMAGES = "t10k-images-idx3-ubyte.gz"

SEED = 0
# Tensor-core precisions of the triton BMU search benchmarked beside fp32 on CUDA.
LOW_PRECISIONS = ("tf32", "bf16")
LR_START, LR_END = 0.5, 0.01
SIGMA_END = 1.0
PEAK_GEMM_SIZE = 2048
# Rows per tile of the naive addmm + argmin baseline.
NAIVE_TILE_ROWS = 4096
# Above this many bytes a bare distance GEMM writes into a reused tile instead of one
# (N, K) output (the 1M x 4096 GPU target would otherwise need 16 GB).
GEMM_OUT_LIMIT = 1 << 31
TORCHSOM_BATCH_SIZES = (256, 1024, 4096)
OVER_BUDGET = "out of memory or over budget: not run"


# ------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    """One input set: N x D samples on a rows x cols map, online epochs of ``steps``."""
    name: str
    source: str                 # "random" | "mnist"
    n: int
    d: int
    rows: int
    cols: int
    steps: int
    scale: bool = False         # batch epoch of our backends only; anchors not run
    anchor_steps: int = 2000    # prefix MiniSom is timed on (steps, or samples for batch)
    reference_steps: int = 1000  # prefix the reference online loop is timed on
    maps: int = 1               # independent maps of one som_online launch (GPU target)

    @property
    def k(self) -> int:
        return self.rows * self.cols

    @property
    def lattice(self) -> Lattice:
        return Lattice(self.rows, self.cols)

    def shapes(self) -> dict:
        return {"n": self.n, "d": self.d, "rows": self.rows, "cols": self.cols,
                "k": self.k, "steps": self.steps, "maps": self.maps}


def workloads(device: str = "cpu", quick: bool = False) -> list[Workload]:
    """The workloads of one run; ``quick`` shrinks them for a smoke test (< 1 minute)."""
    if quick:
        out = [Workload("random", "random", 5000, 64, 16, 16, 5000, anchor_steps=500, reference_steps=200),
               Workload("mnist", "mnist", 1000, 784, 16, 16, 1000, anchor_steps=200, reference_steps=50)]
    else:
        out = [Workload("random", "random", 50_000, 64, 32, 32, 50_000),
               Workload("mnist", "mnist", 10_000, 784, 40, 40, 10_000),
               Workload("scale", "random", 1_000_000, 64, 100, 100, 0, scale=True)]
    if device == "cuda":
        # GPU targets: a BMU search at 1M x 256 vs 4096 nodes, and M independent 32x32
        # maps trained online in one launch (compared with the cpu backend).
        if quick:
            out += [Workload("bmu_gpu", "random", 100_000, 256, 32, 32, 0, scale=True),
                    Workload("multi_map", "random", 5000, 64, 32, 32, 1000, maps=8)]
        else:
            out += [Workload("bmu_gpu", "random", 1_000_000, 256, 64, 64, 0, scale=True),
                    Workload("multi_map", "random", 50_000, 64, 32, 32, 10_000, maps=64)]
    return out


def data_dir(path: str | None = None) -> str:
    return path or os.environ.get("GENKERNELS_DATA") or DEFAULT_DATA


def _read_idx(path: str) -> np.ndarray:
    """Fallback IDX reader (uint8 images or labels) when genkernels.data is absent."""
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        magic = f.read(4)
        if magic[:3] != b"\x00\x00\x08":
            raise ValueError(f"{path!r} is not a uint8 IDX file")
        shape = tuple(int.from_bytes(f.read(4), "big") for _ in range(magic[3]))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def mnist_available(directory: str | None = None) -> bool:
    return os.path.isfile(os.path.join(data_dir(directory), MNIST_IMAGES))


_DATA_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


def load_data(w: Workload, device: str = "cpu", directory: str | None = None) -> torch.Tensor:
    """(N, D) float32 samples of workload ``w`` on ``device`` (cached)."""
    key = (w.source, w.n, w.d)
    if key not in _DATA_CACHE:
        if w.source == "mnist":
            try:
                from genkernels.data import load_idx
            except ImportError:
                load_idx = _read_idx
            images = load_idx(os.path.join(data_dir(directory), MNIST_IMAGES))
            x = torch.from_numpy(images[: w.n].reshape(-1, w.d).astype(np.float32) / 255.0)
        else:
            gen = torch.Generator().manual_seed(SEED)
            x = torch.rand(w.n, w.d, generator=gen)
        _DATA_CACHE.clear()  # one workload resident at a time (the scale case is 256 MB)
        _DATA_CACHE[key] = {"cpu": x}
    per_device = _DATA_CACHE[key]
    if device not in per_device:
        per_device[device] = per_device["cpu"].to(device)
    return per_device[device]


def initial_weights(x: torch.Tensor, k: int, maps: int = 1) -> torch.Tensor:
    """(K, D) -- or (maps, K, D) -- rows of x drawn without replacement, fixed seed."""
    gen = torch.Generator().manual_seed(SEED + 1)
    rows = [torch.randperm(x.shape[0], generator=gen)[:k] for _ in range(maps)]
    w = torch.stack([x[r.to(x.device)] for r in rows])
    return w if maps > 1 else w[0]


def numpy_start(w, x_of, weights_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """The data and the shared starting map as numpy arrays for the numpy anchors:
    x (N, D) and weights (rows, cols, D), in x's dtype unless weights_dtype is given."""
    x = _np(x_of())
    w0 = _np(initial_weights(torch.from_numpy(x), w.k)).reshape(w.rows, w.cols, w.d)
    return x, w0 if weights_dtype is None else w0.astype(weights_dtype)


def schedule(steps: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step lr and sigma (float64, shape (steps,)): exponential decay from
    (0.5, max(grid)/2) at the first step to (0.01, 1) at the last."""
    frac = np.arange(steps, dtype=np.float64) / max(steps - 1, 1)
    sigma_start = max(rows, cols) / 2
    lr = LR_START * (LR_END / LR_START) ** frac
    sigma = sigma_start * (SIGMA_END / sigma_start) ** frac
    return lr, sigma


def quality(x: torch.Tensor, weights, lattice: Lattice) -> tuple[float, float]:
    """Quantization error (mean distance to the BMU) and topographic error (share of
    samples whose two best nodes are farther apart than 1.42 on the grid) of any
    library's final weights, (K, D) or (rows, cols, D), numpy or torch."""
    w = weights if torch.is_tensor(weights) else torch.from_numpy(np.asarray(weights))
    w = w.reshape(lattice.n_nodes, -1).to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        idx, dist = ops.som_bmu(x, w, k=2)
    qe = float(dist[:, 0].double().mean())
    te = float(1.0 - lattice.adjacent(idx[:, 0], idx[:, 1]).double().mean())
    return qe, te


def bench_backends(op: str, device: str) -> list[str]:
    """genkernels backends that run ``op`` on ``device`` here; triton only on CUDA."""
    return [b for b in genkernels.available_backends(device)
            if b in backends.OP_BACKENDS[op] and not (b == "triton" and device != "cuda")]


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One timed thing. ``make()`` builds its inputs and returns the callable to time;
    for training cases that callable returns the final weights."""
    workload: Workload
    op: str
    impl: str
    kind: str                     # "backend" (genkernels) | "anchor" | "baseline"
    device: str
    make: Callable[[], Callable[[], Any]] | None  # None: not run (``note`` says why)
    extrapolate: float = 1.0      # per-epoch seconds = measured seconds x extrapolate
    make_full: Callable[[], Callable[[], Any]] | None = None  # whole epoch, for QE/TE
    trains: bool = False          # the callable returns weights: QE/TE apply
    flops: float | None = None
    warmup: bool = True
    dtype: str = "float32"
    note: str = ""
    params: dict = field(default_factory=dict)
    # extra record fields computed from the last timed result, outside the timing
    # (e.g. how often a low-precision search agrees with the fp32 one)
    check: Callable[[Any], dict] | None = None

    @property
    def id(self) -> str:
        extra = "".join(f"-{k}{v}" for k, v in self.params.items())
        return f"{self.workload.name}-{self.op}-{self.impl}{extra}"


def _distance_flops(n: int, k: int, d: int) -> float:
    return 2.0 * n * k * d


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _import_xpysom():
    # xpysom prints a CuPy warning on import; keep the runner's output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        from xpysom import XPySom
    return XPySom


def _anchor_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _bmu_cases(w: Workload, device: str, x_of) -> list[Case]:
    cases = []
    flops = _distance_flops(w.n, w.k, w.d)
    for b in bench_backends("som_bmu", device):
        if b == "reference" and w.scale:
            continue

        def make(b=b):
            x = x_of()
            weights = initial_weights(x, w.k)
            return lambda: ops.som_bmu(x, weights, backend=b)
        params = {"precision": "fp32", "search": "fused"} if b == "triton" and w.name == "bmu_gpu" else {}
        cases.append(Case(w, "bmu", b, "backend", device, make, flops=flops,
                          warmup=b != "reference", params=params))
    if w.name == "bmu_gpu" and "triton" in bench_backends("som_bmu", device):
        cases += _low_precision_bmu_cases(w, device, x_of, flops)

    def make_mm():
        x = x_of()
        wt = initial_weights(x, w.k).t().contiguous()
        if w.n * w.k * 4 <= GEMM_OUT_LIMIT:
            return lambda: torch.mm(x, wt)
        tile = max(1, GEMM_OUT_LIMIT // (4 * w.k))
        out = torch.empty(tile, w.k, device=x.device)

        def tiled():
            for s in range(0, w.n, tile):
                e = min(w.n, s + tile)
                torch.mm(x[s:e], wt, out=out[: e - s])
            return out
        return tiled
    cases.append(Case(w, "bmu", "torch.mm", "baseline", device, make_mm, flops=flops,
                      note="distance GEMM alone (N x D times D x K), fp32"))

    def make_naive():
        x = x_of()
        weights = initial_weights(x, w.k)
        wt = weights.t().contiguous()
        w_sq = (weights * weights).sum(1)

        def naive():
            out = torch.empty(w.n, dtype=torch.int64, device=x.device)
            for s in range(0, w.n, NAIVE_TILE_ROWS):
                e = min(w.n, s + NAIVE_TILE_ROWS)
                out[s:e] = torch.addmm(w_sq, x[s:e], wt, alpha=-2).argmin(1)
            return out
        return naive
    cases.append(Case(w, "bmu", "torch addmm+argmin", "baseline", device, make_naive, flops=flops,
                      note=f"naive: |w|^2 - 2 x.w in tiles of {NAIVE_TILE_ROWS} rows, argmin"))
    if w.scale:
        return cases
    if _anchor_available("minisom"):
        def make_minisom():
            from minisom import MiniSom
            x = _np(x_of())
            m = MiniSom(w.rows, w.cols, w.d, random_seed=SEED)
            m._weights = _np(initial_weights(torch.from_numpy(x), w.k)).reshape(
                w.rows, w.cols, w.d).astype(np.float64)
            return lambda: m._distance_from_weights(x).argmin(axis=1)
        cases.append(Case(w, "bmu", "minisom", "anchor", "cpu", make_minisom, flops=flops,
                          dtype="float64", note="MiniSom._distance_from_weights + argmin (numpy, fp64)"))
    if _anchor_available("torchsom"):
        def make_torchsom():
            som = _torchsom(w, device, 1024, x_of())
            x = x_of()
            return lambda: som.identify_bmus(x)
        cases.append(Case(w, "bmu", "torchsom", "anchor", device, make_torchsom, flops=flops,
                          note="torchsom SOM.identify_bmus (brute-force torch search)"))
    return cases


def _low_precision_bmu_cases(w: Workload, device: str, x_of, flops: float) -> list[Case]:
    """The other triton BMU searches: tensor cores (tf32, bf16) with the fused kernel,
    and every precision with the blocked one (search="blocked"), each checked against
    the fp32 fused search on the same inputs: the fraction of equal (row, index) entries
    (1 by construction: every search is certified exact)."""
    cases = []
    inputs: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    variants = [(p, "fused") for p in LOW_PRECISIONS] + [(p, "blocked") for p in ("fp32",) + LOW_PRECISIONS]

    for precision, search in variants:
        def make(precision=precision, search=search):
            x = x_of()
            weights = initial_weights(x, w.k)
            inputs[precision, search] = (x, weights)
            return lambda: ops.som_bmu(x, weights, precision=precision, search=search, backend="triton")

        def agreement(out, precision=precision, search=search):
            x, weights = inputs.pop((precision, search))
            want = ops.som_bmu(x, weights, precision="fp32", search="fused", backend="triton")[0]
            return {"indices_equal_fp32": float((out[0] == want).double().mean())}
        note = f"{precision} tensor-core search, certified, exact fp32 re-rank" if precision != "fp32" else \
            "exact fp32 search"
        if search == "blocked":
            note += "; blocked: products per L2-sized row block, then select"
        cases.append(Case(w, "bmu", "triton", "backend", device, make, flops=flops,
                          params={"precision": precision, "search": search}, check=agreement, note=note))
    return cases


def _torchsom(w: Workload, device: str, batch_size: int, x: torch.Tensor):
    from torchsom import SOM
    lr, sigma = LR_START, max(w.rows, w.cols) / 2
    som = SOM(w.rows, w.cols, w.d, epochs=1, batch_size=batch_size, sigma=sigma,
              learning_rate=lr, search_backend="torch", device=device, random_seed=SEED)
    som.weights.data.copy_(initial_weights(x, w.k).reshape(w.rows, w.cols, w.d))
    return som


def _batch_cases(w: Workload, device: str, x_of) -> list[Case]:
    cases = []
    sigma = max(w.rows, w.cols) / 2
    flops = _distance_flops(w.n, w.k, w.d)
    for b in bench_backends("som_node_sums", device):
        if b == "reference" and w.scale:
            continue

        def make(b=b):
            x = x_of()
            w0 = initial_weights(x, w.k)
            coords = w.lattice.coords(torch.float32, x.device)

            def epoch():
                sums, counts, _ = ops.som_node_sums(x, w0, backend=b)
                return ops.som_smooth(sums, counts, w0, coords, sigma=sigma,
                                      grid_shape=(w.rows, w.cols))
            return epoch
        cases.append(Case(w, "batch_epoch", b, "backend", device, make, trains=not w.scale,
                          flops=flops, warmup=b != "reference"))
    if w.scale:
        cases += [Case(w, "batch_epoch", a, "anchor", "cpu", None, note=OVER_BUDGET)
                  for a in ("minisom", "torchsom", "xpysom")]
        return cases

    if _anchor_available("minisom"):
        def make_minisom(samples):
            def make():
                from minisom import MiniSom
                x, w0 = numpy_start(w, x_of, np.float64)
                # lr 1 makes train_batch_offline Kohonen's batch rule, as ours.
                m = MiniSom(w.rows, w.cols, w.d, sigma=sigma, random_seed=SEED,
                            decay_function=lambda lr, t, max_iter: 1.0)
                m._sigma_decay_function = lambda s, t, max_iter: sigma

                def epoch():
                    m._weights = w0.copy()
                    m.train_batch_offline(x[:samples], 1)
                    return m._weights
                return epoch
            return make
        sub = min(w.anchor_steps, w.n)
        cases.append(Case(w, "batch_epoch", "minisom", "anchor", "cpu", make_minisom(sub),
                          extrapolate=w.n / sub, make_full=make_minisom(w.n), trains=True,
                          flops=flops, warmup=False, dtype="float64",
                          note=(f"train_batch_offline(1 iteration, lr=1); extrapolated from "
                                f"{sub:,} of {w.n:,} samples" if sub < w.n else
                                "train_batch_offline(1 iteration, lr=1)")))
    if _anchor_available("xpysom"):
        def make_xpysom():
            XPySom = _import_xpysom()
            x, w0 = numpy_start(w, x_of)
            # std_coeff=1: exp(-d^2 / (2 sigma^2)), the Gaussian every other library uses.
            s = XPySom(w.rows, w.cols, w.d, sigma=sigma, sigmaN=SIGMA_END, learning_rate=LR_START,
                       learning_rateN=LR_END, decay_function="exponential", std_coeff=1.0,
                       random_seed=SEED, xp=np)

            def epoch():
                s._weights = w0.copy()
                s.train(x, 1)
                return s._weights
            return epoch
        cases.append(Case(w, "batch_epoch", "xpysom", "anchor", "cpu", make_xpysom, trains=True,
                          flops=flops, note="XPySom.train(1 epoch), numpy on CPU"))
    if _anchor_available("torchsom"):
        for bs in TORCHSOM_BATCH_SIZES:
            def make_torchsom(bs=bs):
                from torch.utils.data import DataLoader, TensorDataset
                x = x_of()
                som = _torchsom(w, device, bs, x)
                w0 = som.weights.data.clone()
                # As SOM.fit: batches drawn from the data on the host, moved to the device.
                loader = DataLoader(TensorDataset(x.cpu()), batch_size=bs, shuffle=True,
                                    generator=torch.Generator().manual_seed(SEED))

                def epoch():
                    som.weights.data.copy_(w0)
                    for (batch,) in loader:  # SOM.fit's loop without its per-batch QE/TE
                        batch = batch.to(device)
                        som._update_weights(batch, som.identify_bmus(batch),
                                            som.lr_schedule[0], som.sigma_schedule[0])
                    return som.weights.data
                return epoch
            cases.append(Case(w, "batch_epoch", "torchsom", "anchor", device, make_torchsom,
                              trains=True, flops=flops, params={"bs": bs},
                              note="SOM.fit loop (mini-batch rule, lr 0.5) without per-batch QE/TE"))
    return cases


def _online_cases(w: Workload, device: str, x_of) -> list[Case]:
    cases = []
    lr, sigma = schedule(w.steps, w.rows, w.cols)

    def make_ours(b, steps, maps=1, on_device=None):
        def make():
            x = x_of().to(on_device or device)
            w0 = initial_weights(x, w.k, maps).reshape(maps, w.k, w.d)
            coords = w.lattice.coords(torch.float32, x.device)
            if maps == 1:
                order = (torch.arange(steps) % w.n)[None]
            else:  # each map its own shuffled pass over the data
                gen = torch.Generator().manual_seed(SEED + 2)
                order = torch.stack([torch.randperm(w.n, generator=gen)[:steps] for _ in range(maps)])
            order = order.to(x.device)
            lr_t = torch.tensor(lr[:steps], dtype=torch.float32, device=x.device).expand(maps, -1)
            sig_t = torch.tensor(sigma[:steps], dtype=torch.float32, device=x.device).expand(maps, -1)

            def epoch():
                out = ops.som_online(w0, x, order, lr_t, sig_t, coords, backend=b)
                return out[0] if maps == 1 else out
            return epoch
        return make

    for b in bench_backends("som_online", device):
        if w.maps > 1 and b == "reference":
            continue
        if b == "reference":
            sub = min(w.reference_steps, w.steps)
            cases.append(Case(w, "online_epoch", b, "backend", device, make_ours(b, sub),
                              extrapolate=w.steps / sub, make_full=make_ours(b, w.steps),
                              trains=True, warmup=False,
                              note=f"Python loop; extrapolated from {sub:,} of {w.steps:,} steps"))
        else:
            cases.append(Case(w, "online_epoch", b, "backend", device, make_ours(b, w.steps, w.maps),
                              trains=w.maps == 1, params={"maps": w.maps} if w.maps > 1 else {}))
    if w.maps > 1:
        if device == "cuda" and "cpu" in bench_backends("som_online", "cpu"):
            cases.append(Case(w, "online_epoch", "cpu", "backend", "cpu",
                              make_ours("cpu", w.steps, w.maps, on_device="cpu"),
                              params={"maps": w.maps}, warmup=False,
                              note="the same launch on CPU tensors"))
        return cases
    if _anchor_available("minisom"):
        def make_minisom(steps):
            def make():
                from minisom import MiniSom
                x, w0 = numpy_start(w, x_of, np.float64)
                m = MiniSom(w.rows, w.cols, w.d, sigma=float(sigma[0]), learning_rate=LR_START,
                            random_seed=SEED, decay_function=lambda lr0, t, max_iter: lr[t])
                m._sigma_decay_function = lambda s0, t, max_iter: sigma[t]

                def epoch():
                    m._weights = w0.copy()
                    m.train(x, steps)  # sample t % N at step t, as ours
                    return m._weights
                return epoch
            return make
        sub = min(w.anchor_steps, w.steps)
        cases.append(Case(w, "online_epoch", "minisom", "anchor", "cpu", make_minisom(sub),
                          extrapolate=w.steps / sub, make_full=make_minisom(w.steps), trains=True,
                          warmup=False, dtype="float64",
                          note=(f"MiniSom.train; extrapolated from the first {sub:,} of "
                                f"{w.steps:,} steps" if sub < w.steps else "MiniSom.train")))
    return cases


def _peak_case(device: str) -> Case:
    n = PEAK_GEMM_SIZE
    w = Workload("peak", "random", n, n, 1, n, 0)

    def make():
        gen = torch.Generator().manual_seed(SEED)
        a = torch.rand(n, n, generator=gen).to(device)
        b = torch.rand(n, n, generator=gen).to(device)
        return lambda: torch.mm(a, b)
    return Case(w, "peak_gemm", "torch.mm", "baseline", device, make, flops=2.0 * n ** 3,
                note=f"{n}^3 fp32 torch.mm: the peak rate ideal times are computed from")


def build_cases(device: str = "cpu", quick: bool = False, directory: str | None = None) -> list[Case]:
    """Every case of one run, in the order the runner measures them (peak GEMM first)."""
    cases = [_peak_case(device)]
    for w in workloads(device, quick):
        if w.source == "mnist" and not mnist_available(directory):
            continue

        def x_of(w=w):
            return load_data(w, device, directory)
        if w.maps > 1:
            cases += _online_cases(w, device, x_of)
        elif w.name == "bmu_gpu":
            cases += _bmu_cases(w, device, x_of)
        elif w.scale:
            cases += _batch_cases(w, device, x_of)
        else:
            cases += _bmu_cases(w, device, x_of) + _batch_cases(w, device, x_of) + \
                _online_cases(w, device, x_of)
    return cases


# ---------------------------------------------------------------------- pytest entry
def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    device, quick, directory = bench_options(metafunc.config)
    cases = [c for c in build_cases(device, quick, directory) if c.make is not None]
    metafunc.parametrize("case", cases, ids=[c.id for c in cases])


def test_som(benchmark, case, request):
    """Time one case; extra_info carries the shapes, extrapolation factor and QE/TE."""
    device = case.device
    result = benchmark_call(benchmark, case.make(), device, rounds=5 if case.warmup else 1, warmup=case.warmup)
    benchmark.extra_info.update({"workload": case.workload.name, "op": case.op, "impl": case.impl,
                                 "kind": case.kind, **case.workload.shapes(),
                                 "extrapolate": case.extrapolate, "note": case.note})
    if case.check is not None:
        benchmark.extra_info.update(case.check(result))
    if case.trains and case.extrapolate == 1.0:
        x = load_data(case.workload, device, request.config.getoption("--data", default=None))
        qe, te = quality(x, result, case.workload.lattice)
        assert math.isfinite(qe) and math.isfinite(te)
        benchmark.extra_info.update({"qe": qe, "te": te})
