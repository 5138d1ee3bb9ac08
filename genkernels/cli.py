"""The ``genkernels`` command line: ``demo``, ``train som``, ``train patchsom``, ``train rbm``,
``train pixelcnn``, ``train made`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

SEED_LIMIT = 2**64


class UsageError(ValueError):
    """A command-line option that does not fit the others (printed as one line, exit 2)."""


def _integer(minimum: int, maximum: int | None = None, shown: str | None = None):
    """argparse type: an integer in [minimum, maximum] (``shown`` names the range)."""
    expected = shown or (f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {expected}; got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected an integer {expected}; got {value}")
        return value
    parse.__name__ = f"integer {expected}"
    return parse


def _count(minimum: int):
    """argparse type: an integer >= minimum."""
    return _integer(minimum)


_seed = _integer(0, SEED_LIMIT - 1, "in [0, 2^64)")


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


def _add_map_args(p: argparse.ArgumentParser, grid: list[int]) -> None:
    """The options of a map (SOM and PatchSOM)."""
    p.add_argument("--grid", type=_count(1), nargs="+", default=grid, metavar="N",
                   help=f"map size: ROWS COLS, or N for a 1-D map (default {' '.join(map(str, grid))})")
    p.add_argument("--topology", choices=["rectangular", "hexagonal"], default="rectangular")
    p.add_argument("--periodic", action="store_true", help="wrap the map into a torus")
    p.add_argument("--neighborhood", choices=["gaussian", "bubble", "mexican_hat", "triangle"],
                   default="gaussian")
    p.add_argument("--epochs", type=_count(1), default=10)
    p.add_argument("--mode", choices=["batch", "online", "minibatch"], default="batch")
    p.add_argument("--batch-size", type=_count(1), default=None,
                   help="mini-batch size (mode minibatch only; default 256)")
    p.add_argument("--sigma", type=_finite, nargs="+", default=None, metavar="S",
                   help="radius START [END] (default max(grid)/2 down to 1)")
    p.add_argument("--learning-rate", type=_finite, nargs="+", default=[0.5], metavar="LR",
                   help="learning rate START [END] (default 0.5 down to 0.01)")
    p.add_argument("--schedule", choices=["constant", "linear", "exponential", "inverse", "asymptotic"],
                   default="exponential")
    p.add_argument("--init", choices=["pca", "random", "uniform"], default="pca")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=["reference", "cpu", "triton", "cuda"], default=None)


def _add_som_args(p: argparse.ArgumentParser) -> None:
    _add_map_args(p, [20, 20])
    p.add_argument("--metric", choices=["euclidean", "cosine", "manhattan", "chebyshev"], default="euclidean")
    p.add_argument("--missing", choices=["raise", "ignore"], default="raise",
                   help="NaN handling: raise, or ignore missing features")
    p.add_argument("--dtype", choices=["float32", "float64", "float16", "bfloat16"], default="float32")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genkernels", description=__doc__,
                                     epilog="Errors print one line `genkernels: error: ...` and exit 2; "
                                            "--debug shows the traceback instead.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train each model family on the embedded data set and write a report",
                          description="Train a 20x20 hexagonal SOM on scikit-learn's digits; write the "
                                      "U-matrix, hit map, labels map, component planes, the QE/TE "
                                      "training curve, a patch SOM's reconstruction of the digits, a soft "
                                      "SOM layer's 2-D map of them (PNG) "
                                      "and report.md to --out.")
    demo.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    demo.add_argument("--epochs", type=_count(1), default=20)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    train = sub.add_parser("train", help="train a model on your data")
    models = train.add_subparsers(dest="model", required=True)
    som = models.add_parser("som", help="train a self-organizing map",
                            description="Train a SOM on DATA (.npy, .csv or IDX, gzipped or not) and "
                                        "write the model (som.pt), figures and metrics to --out. Under "
                                        "torchrun, --distributed trains one map on the shards of all ranks.")
    som.add_argument("data", help="data file: .npy, .csv, or IDX (e.g. t10k-images-idx3-ubyte.gz)")
    som.add_argument("--labels", default=None, help="optional labels file (same formats) for the labels map")
    som.add_argument("--out", default="som_out", help="output folder (default som_out)")
    som.add_argument("--scale", choices=["none", "minmax", "standard"], default="none",
                     help="feature scaling before training (statistics of the whole file)")
    som.add_argument("--checkpoint", default=None, help="save after every epoch to this path")
    som.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    som.add_argument("--distributed", action="store_true",
                     help="data-parallel over torch.distributed (launch with torchrun); each rank "
                          "trains on its contiguous shard of DATA")
    som.add_argument("--quiet", action="store_true")
    _add_som_args(som)
    _add_patchsom_parser(models)
    _add_rbm_parser(models)
    _add_autoregressive_parsers(models)
    _add_flow_parsers(models)

    bench = sub.add_parser("bench", help="run the benchmarks (needs a checkout with bench/)",
                           description="Run bench/run.py from the source checkout: every backend and "
                                       "anchor on the same inputs, a table of medians and ratios, "
                                       "results in bench/results/.")
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="arguments for bench/run.py, e.g. som --device cuda --quick")
    return parser


def _rate(values, option: str):
    """START [END] of a schedule option: a number or a (start, end) pair; more is an error."""
    if values is None:
        return None
    if len(values) > 2:
        raise UsageError(f"{option} takes START [END]: one or two numbers; got {len(values)} "
                         f"({' '.join(str(v) for v in values)})")
    return values[0] if len(values) == 1 else tuple(values)


def _device(text: str):
    """--device as a torch.device that exists here; UsageError otherwise."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device must be cpu, cuda or cuda:N; got {text!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"--device must be cpu, cuda or cuda:N; got {text!r}")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise UsageError(f"--device {text}: CUDA is not available here ({why}); use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {text}: there are {torch.cuda.device_count()} CUDA devices here")
    return device


def _check_outputs(out: str, files: list[str], checkpoint: str | None) -> None:
    """Create --out and check that every file the command writes there, and --checkpoint,
    can be written -- before any training, so a finished model is never lost to a bad path."""
    from .checkpoint import check_output_dir, check_output_path

    check_output_dir(out, "--out")
    for name in files:
        check_output_path(os.path.join(out, name), "--out")
    if checkpoint is not None:
        check_output_path(checkpoint, "--checkpoint")


def _write_json(path: str, obj) -> None:
    """Write obj as JSON through a temp file and os.replace (never a half-written file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _finite_metrics(metrics: dict, what: str) -> None:
    """A diverged model is an error, never a success: every float metric must be finite."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)
           and k != "topographic_error"}
    if bad:
        raise ValueError(f"training diverged: the trained {what} gives {', '.join(f'{k}={v}' for k, v in bad.items())}; "
                         "nothing was written (try a smaller learning rate or scale the data)")


def _scale(x: np.ndarray, how: str) -> np.ndarray:
    if how == "minmax":
        lo, hi = np.nanmin(x, 0), np.nanmax(x, 0)
        return (x - lo) / np.where(hi > lo, hi - lo, 1)
    if how == "standard":
        mu, sd = np.nanmean(x, 0), np.nanstd(x, 0)
        return (x - mu) / np.where(sd > 0, sd, 1)
    return x


def _write_figures(model, x, labels, out: str) -> list[str]:
    files = [model.plot_umatrix(os.path.join(out, "umatrix.png")),
             model.plot_hit_map(x, os.path.join(out, "hit_map.png")),
             model.plot_component_planes(os.path.join(out, "component_planes.png"))]
    if labels is not None:
        files.append(model.plot_labels_map(x, labels, os.path.join(out, "labels_map.png")))
    curves = {"quantization error": [h["quantization_error"] for h in model.history]}
    if all("topographic_error" in h for h in model.history):
        curves["topographic error"] = [h["topographic_error"] for h in model.history]
    files.append(model.plot_training_curve(os.path.join(out, "training_curve.png"), curves))
    return files


def _track_te(x):
    """Record QE and TE of the map after each epoch (the bar shows the QE of the map
    the epoch started from)."""
    def callback(model, epoch):
        model.history[-1]["quantization_error"] = float(model.quantization_error(x).mean())
        model.history[-1]["topographic_error"] = float(model.topographic_error(x).mean())
    return callback


def _writes_outputs(args) -> bool:
    """After fit: end a distributed run on every rank (the model is complete on each) and
    say whether this process writes the outputs (rank 0 only)."""
    from . import distributed as gkdist

    is_root = gkdist.rank() == 0
    if args.distributed:
        gkdist.shutdown()
    return is_root


SOM_OUTPUTS = ["som.pt", "metrics.json", "umatrix.png", "hit_map.png", "component_planes.png",
               "training_curve.png"]
RBM_OUTPUTS = ["rbm.pt", "metrics.json", "filters.png", "samples.png", "training_curve.png"]


def cmd_train_som(args) -> int:
    import torch

    from . import SOM
    from . import distributed as gkdist
    from .data import load_array

    if len(args.grid) > 2:
        raise UsageError(f"--grid takes ROWS COLS or N; got {len(args.grid)} numbers")
    if args.batch_size is not None and args.mode != "minibatch":
        raise UsageError(f"--batch-size applies to --mode minibatch; got --mode {args.mode}")
    if args.resume and args.checkpoint is None:
        raise UsageError("--resume continues from --checkpoint; give --checkpoint PATH")
    sigma, learning_rate = _rate(args.sigma, "--sigma"), _rate(args.learning_rate, "--learning-rate")
    device = _device(args.device)
    x = load_array(args.data)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    x = _scale(np.asarray(x), args.scale)
    labels = load_array(args.labels).reshape(-1) if args.labels else None
    if labels is not None and labels.shape[0] != x.shape[0]:
        raise UsageError(f"--labels has {labels.shape[0]} rows but DATA has {x.shape[0]}")
    full_x, full_labels = x, labels
    if args.distributed:
        gkdist.ensure_process_group(device)
        shards = np.array_split(np.arange(x.shape[0]), gkdist.world_size())
        mine = shards[gkdist.rank()]
        x = x[mine[0]:mine[-1] + 1] if mine.size else x[:0]
    if gkdist.rank() == 0:
        _check_outputs(args.out, SOM_OUTPUTS + (["labels_map.png"] if labels is not None else []),
                       args.checkpoint)
    model = SOM(tuple(args.grid), x.shape[1], topology=args.topology, periodic=args.periodic,
                neighborhood=args.neighborhood, sigma=sigma, learning_rate=learning_rate,
                schedule=args.schedule, init=args.init, metric=args.metric, missing=args.missing,
                seed=args.seed, dtype=getattr(torch, args.dtype), device=device)
    start = time.perf_counter()
    model.fit(x, epochs=args.epochs, mode=args.mode, batch_size=args.batch_size or 256,
              verbose=not args.quiet, checkpoint=args.checkpoint, resume=args.resume,
              distributed=args.distributed, backend=args.backend)
    seconds = time.perf_counter() - start
    if not _writes_outputs(args):
        return 0
    qe = float(model.quantization_error(full_x).mean())
    te = float(model.topographic_error(full_x).mean()) if model.n_nodes > 1 else float("nan")
    _finite_metrics({"quantization_error": qe}, "map")
    model.save(os.path.join(args.out, "som.pt"))
    _write_figures(model, full_x, full_labels, args.out)
    metrics = {"quantization_error": qe, "topographic_error": te, "train_seconds": seconds,
               "samples": int(full_x.shape[0]), "features": int(full_x.shape[1]), "grid": args.grid,
               "epochs": args.epochs, "mode": args.mode}
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(f"QE {qe:.4f}  TE {te:.4f}  trained in {seconds:.2f} s  -> {args.out}/")
    return 0


def _add_patchsom_parser(models) -> None:
    p = models.add_parser(
        "patchsom", help="train a SOM on image patches",
        description="Train a PatchSOM on the k x k patches of the images in DATA (.npy of (N, H, W) "
                    "or (N, C, H, W), or of rows with --image-size; IDX images such as "
                    "t10k-images-idx3-ubyte.gz) and write the model (patchsom.pt), metrics.json "
                    "(quantization and reconstruction errors) and figures (the first images, their "
                    "reconstructions from the patches' winning codebook rows, the codebook; the "
                    "training curve) to --out.")
    p.add_argument("data", help="image file: .npy or IDX (gzipped or not)")
    p.add_argument("--out", default="patchsom_out", help="output folder (default patchsom_out)")
    p.add_argument("--kernel-size", type=_count(1), nargs="+", default=[3], metavar="K",
                   help="patch size: K, or KH KW (default 3)")
    p.add_argument("--stride", type=_count(1), nargs="+", default=[1], metavar="S",
                   help="step between patches: S, or SH SW (default 1)")
    p.add_argument("--image-size", type=_count(1), nargs=2, default=None, metavar=("H", "W"),
                   help="the images' size when DATA holds one flattened image per row")
    p.add_argument("--scale", choices=["auto", "none", "unit", "minmax"], default="auto",
                   help="unit divides by the largest value of the data's integer type (255 for uint8 "
                        "images), minmax maps the whole file's range to [0, 1]; auto: unit for "
                        "unsigned integers, none otherwise")
    p.add_argument("--max-patches", type=_count(1), default=100_000,
                   help="patches sampled for the initialisation and the online / minibatch modes")
    p.add_argument("--quiet", action="store_true")
    _add_map_args(p, [10, 10])
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")


def _add_rbm_parser(models) -> None:
    rbm = models.add_parser(
        "rbm", help="train a restricted Boltzmann machine",
        description="Train an RBM on DATA (.npy, .csv or IDX, gzipped or not) and write the model "
                    "(rbm.pt), metrics.json (reconstruction error, pseudo-likelihood and the test "
                    "log-likelihood, exact or by AIS, on a held-out split) and figures (filters and "
                    "samples when n_visible is a square, the training curve) to --out. Under "
                    "torchrun, --distributed trains data-parallel: every rank loads the whole file "
                    "and trains on its share of each batch, equal to one process up to float "
                    "summation order.")
    rbm.add_argument("data", help="data file: .npy, .csv, or IDX (e.g. t10k-images-idx3-ubyte.gz)")
    rbm.add_argument("--out", default="rbm_out", help="output folder (default rbm_out)")
    rbm.add_argument("--hidden", type=_count(1), default=64, help="hidden units (default 64)")
    rbm.add_argument("--visible", choices=["bernoulli", "gaussian"], default="bernoulli")
    rbm.add_argument("--learn-variance", action="store_true", help="gaussian: learn each unit's sigma")
    rbm.add_argument("--method", default="cd",
                     help="training method passed to RBM.fit: cd (CD-k), pcd (persistent CD) or pt "
                          "(parallel tempering; not with --distributed)")
    rbm.add_argument("--pt-betas", type=_count(2), default=None, metavar="M",
                     help="--method pt: the number of temperatures (RBM.fit's default otherwise)")
    rbm.add_argument("-k", type=_count(1), default=1, help="Gibbs steps per update (default 1)")
    rbm.add_argument("--epochs", type=_count(1), default=10)
    rbm.add_argument("--batch-size", type=_count(1), default=100, help="rows per update; also the PCD chains")
    rbm.add_argument("--learning-rate", type=_finite, default=0.1, help="default 0.1 (gaussian: try 0.01)")
    rbm.add_argument("--momentum", type=_finite, default=0.0)
    rbm.add_argument("--weight-decay", type=_finite, default=0.0)
    rbm.add_argument("--sparsity-target", type=_finite, default=None)
    rbm.add_argument("--scale", choices=["auto", "none", "unit", "minmax", "standard"], default="auto",
                     help="before training (statistics of the whole file): unit divides by the "
                          "largest value of the data's integer type (255 for uint8 images), minmax "
                          "and standard per feature; auto: bernoulli keeps data in [0, 1], unit "
                          "for unsigned integers (IDX images), minmax otherwise; gaussian standard")
    rbm.add_argument("--binarize", choices=["none", "threshold", "stochastic"], default="none",
                     help="bernoulli: binarise the scaled data once before the split: x > 0.5, or "
                          "one Bernoulli(x) draw per entry keyed by --seed")
    rbm.add_argument("--test-fraction", type=_finite, default=0.1,
                     help="rows held out (a permutation keyed by --seed) for the test metrics")
    rbm.add_argument("--ais-chains", type=_count(1), default=100, help="AIS chains for the test log-likelihood")
    rbm.add_argument("--ais-betas", type=_count(0), default=1000,
                     help="AIS temperatures (0: no AIS); the smaller layer has <= 16 units: exact instead")
    rbm.add_argument("--monitor", choices=["reconstruction_error", "pseudo_likelihood", "none"],
                     default="reconstruction_error", help="metric recorded after each epoch")
    rbm.add_argument("--checkpoint", default=None, help="save after every epoch to this path")
    rbm.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    rbm.add_argument("--distributed", action="store_true",
                     help="data-parallel over torch.distributed (launch with torchrun)")
    rbm.add_argument("--quiet", action="store_true")
    rbm.add_argument("--seed", type=_seed, default=0)
    rbm.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    rbm.add_argument("--dtype", choices=["float32", "float64"], default="float32")


# the test log-likelihood is exact when the smaller layer has at most this many units
EXACT_LL_UNITS = 16


def _rbm_data(args) -> np.ndarray:
    """DATA as float32 (N, D), scaled (--scale) and binarised (--binarize) as the options say."""
    from .data import load_array

    if args.binarize != "none" and args.visible != "bernoulli":
        raise UsageError(f"--binarize {args.binarize} applies to --visible bernoulli; got --visible {args.visible}")
    raw = np.asarray(load_array(args.data))
    how = args.scale
    if how == "auto":
        if args.visible == "gaussian":
            how = "standard"
        elif np.issubdtype(raw.dtype, np.unsignedinteger):
            how = "unit"
        else:
            how = "none" if raw.size == 0 or (raw.min() >= 0 and raw.max() <= 1) else "minmax"
    if how == "unit":
        if not np.issubdtype(raw.dtype, np.integer):
            raise UsageError(f"--scale unit divides by the largest value of an integer type; DATA holds {raw.dtype}")
        x = raw / np.iinfo(raw.dtype).max
    else:
        x = _scale(raw.astype(np.float64), how)
    x = x.astype(np.float32)
    if args.binarize == "threshold":
        x = (x > 0.5).astype(np.float32)
    elif args.binarize == "stochastic":
        x = (np.random.default_rng(args.seed).random(x.shape) < x).astype(np.float32)
    return x


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): the first round(fraction n) rows of a permutation keyed by
    seed are held out; the training rows keep the file's order."""
    if not 0 <= fraction < 1:
        raise UsageError(f"--test-fraction must be in [0, 1); got {fraction}")
    n_test = min(round(fraction * n), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _rbm_metrics(model, train, test, args) -> dict:
    metrics = {"reconstruction_error_train": model.reconstruction_error(train)}
    if test.shape[0] == 0:
        return metrics
    metrics["reconstruction_error_test"] = model.reconstruction_error(test)
    if model.visible == "bernoulli":
        metrics["pseudo_likelihood_test"] = float(model.score(test).mean())
    smaller = model.n_hidden if model.visible == "gaussian" else min(model.n_visible, model.n_hidden)
    if smaller <= EXACT_LL_UNITS:
        metrics["log_likelihood_test"] = float(model.log_likelihood_exact(test).mean())
        metrics["log_likelihood_method"] = "exact"
    elif model.visible == "bernoulli" and args.ais_betas > 0:
        ll, err = model.log_likelihood_ais(test, n_chains=args.ais_chains, n_betas=args.ais_betas,
                                           seed=args.seed + 1)
        metrics.update(log_likelihood_test=ll, log_likelihood_stderr=err,
                       log_likelihood_method=f"ais ({args.ais_chains} chains, {args.ais_betas} betas)")
    return metrics


def _rbm_figures(model, out: str) -> list[str]:
    """Filters (up to 64 hidden units) and 16 samples after 1,000 Gibbs steps (Bernoulli) as
    image grids when n_visible is a square; the monitored metric per epoch."""
    from .plot import plot_curves, plot_image_grid

    files = []
    side = math.isqrt(model.n_visible)
    if side * side == model.n_visible:
        count = min(model.n_hidden, 64)
        files.append(plot_image_grid(model.weights.T[:count].reshape(count, side, side).cpu().numpy(),
                                     os.path.join(out, "filters.png"),
                                     f"RBM filters ({model.n_visible} x {model.n_hidden})", symmetric=True))
        if model.visible == "bernoulli":
            samples = model.sample(16, n_steps=1000, seed=1).reshape(16, side, side).cpu().numpy()
            files.append(plot_image_grid(samples, os.path.join(out, "samples.png"),
                                         "RBM samples (1,000 Gibbs steps)"))
    names = [k for k in (model.history[0] if model.history else {}) if k != "epoch"]
    if names:
        files.append(plot_curves({name.replace("_", " "): [h[name] for h in model.history] for name in names},
                                 os.path.join(out, "training_curve.png")))
    return files


PATCHSOM_OUTPUTS = ["patchsom.pt", "metrics.json", "reconstruction.png", "training_curve.png"]


def _raw_images(args) -> np.ndarray:
    """DATA as (N, C, H, W) images in the file's dtype: (N, H, W) gains a channel axis, rows
    are reshaped by --image-size."""
    from .data import load_array

    raw = np.asarray(load_array(args.data, keep_shape=True))
    if args.image_size is not None:
        h, w = args.image_size
        if raw.ndim != 2 or raw.shape[1] % (h * w):
            raise UsageError(f"--image-size {h} {w}: DATA must hold rows of C x {h} x {w} values; "
                             f"got shape {raw.shape}")
        return raw.reshape(raw.shape[0], raw.shape[1] // (h * w), h, w)
    if raw.ndim == 3:
        return raw[:, None]
    if raw.ndim != 4:
        raise UsageError(f"DATA must hold images (N, H, W) or (N, C, H, W), or rows with --image-size H W; "
                         f"got shape {raw.shape}")
    return raw


def _images(args) -> np.ndarray:
    """DATA as float (N, C, H, W) images, scaled as --scale says."""
    raw = _raw_images(args)
    if raw.shape[0] == 0:
        raise UsageError("DATA holds no images")
    how = args.scale
    if how == "auto":
        how = "unit" if np.issubdtype(raw.dtype, np.unsignedinteger) else "none"
    if how == "unit":
        if not np.issubdtype(raw.dtype, np.integer):
            raise UsageError(f"--scale unit divides by the largest value of an integer type; DATA holds {raw.dtype}")
        return (raw / np.iinfo(raw.dtype).max).astype(np.float32)
    x = raw.astype(np.float64 if args.dtype == "float64" else np.float32)
    if how == "minmax":
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        x = (x - lo) / (hi - lo if hi > lo else 1.0)
    return x


def _pair_option(values: list[int], option: str) -> int | tuple[int, int]:
    if len(values) > 2:
        raise UsageError(f"{option} takes one or two numbers; got {len(values)}")
    return values[0] if len(values) == 1 else tuple(values)


def cmd_train_patchsom(args) -> int:
    import torch

    from . import PatchSOM
    from .plot import plot_curves, plot_reconstruction

    if len(args.grid) > 2:
        raise UsageError(f"--grid takes ROWS COLS or N; got {len(args.grid)} numbers")
    if args.batch_size is not None and args.mode != "minibatch":
        raise UsageError(f"--batch-size applies to --mode minibatch; got --mode {args.mode}")
    kernel_size = _pair_option(args.kernel_size, "--kernel-size")
    stride = _pair_option(args.stride, "--stride")
    sigma, learning_rate = _rate(args.sigma, "--sigma"), _rate(args.learning_rate, "--learning-rate")
    device = _device(args.device)
    images = _images(args)
    model = PatchSOM(tuple(args.grid), kernel_size, stride, images.shape[1], topology=args.topology,
                     periodic=args.periodic, neighborhood=args.neighborhood, sigma=sigma,
                     learning_rate=learning_rate, schedule=args.schedule, init=args.init, seed=args.seed,
                     backend=args.backend, dtype=getattr(torch, args.dtype), device=device)
    x = model._images(images, "DATA")   # shape, patch size and finiteness checked before any training
    _check_outputs(args.out, PATCHSOM_OUTPUTS, None)
    start = time.perf_counter()
    model.fit(x, epochs=args.epochs, mode=args.mode, batch_size=args.batch_size or 256,
              max_patches=args.max_patches, verbose=not args.quiet)
    seconds = time.perf_counter() - start
    if not bool(torch.isfinite(model.codebook).all()):
        raise ValueError("training diverged: the trained patch map's codebook holds NaN or Inf; nothing was "
                         "written (try a smaller learning rate or scale the data)")
    qe = model.quantization_error(x)
    rebuilt, error = model.reconstruct(x)
    _finite_metrics({"quantization_error": float(qe), "reconstruction_mse": float(error)}, "patch map")
    model.save(os.path.join(args.out, "patchsom.pt"))
    shown = min(8, x.shape[0])
    plot_reconstruction(x[:shown, 0].cpu(), rebuilt[:shown, 0].cpu(), model.filters[:, 0].cpu(),
                        os.path.join(args.out, "reconstruction.png"),
                        f"PatchSOM {' x '.join(map(str, args.grid))}, {' x '.join(map(str, model.kernel_size))} "
                        f"patches: reconstruction MSE {float(error):.4f}" + (" (channel 0)" if x.shape[1] > 1 else ""),
                        filter_columns=args.grid[-1])
    plot_curves({"quantization error": [h["quantization_error"] for h in model.history]},
                os.path.join(args.out, "training_curve.png"))
    hp, wp = model.patch_grid(*x.shape[2:])
    metrics = {"quantization_error": float(qe), "reconstruction_mse": float(error), "train_seconds": seconds,
               "images": int(x.shape[0]), "channels": int(x.shape[1]), "image_size": list(x.shape[2:]),
               "patches": int(x.shape[0] * hp * wp), "kernel_size": list(model.kernel_size),
               "stride": list(model.stride), "grid": args.grid, "epochs": args.epochs, "mode": args.mode,
               "history": model.history}
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(f"PatchSOM: QE {float(qe):.4f}, reconstruction MSE {float(error):.5f}, trained in {seconds:.2f} s "
          f"-> {args.out}/")
    return 0


def cmd_train_rbm(args) -> int:
    import torch

    from . import RBM
    from . import distributed as gkdist

    if args.pt_betas is not None and args.method != "pt":
        raise UsageError(f"--pt-betas applies to --method pt; got --method {args.method}")
    if args.learn_variance and args.visible != "gaussian":
        raise UsageError(f"--learn-variance applies to --visible gaussian; got --visible {args.visible}")
    if args.resume and args.checkpoint is None:
        raise UsageError("--resume continues from --checkpoint; give --checkpoint PATH")
    device = _device(args.device)
    x = _rbm_data(args)
    train_rows, test_rows = _split(x.shape[0], args.test_fraction, args.seed)
    train, test = x[train_rows], x[test_rows]
    if args.distributed:
        gkdist.ensure_process_group(device)  # every rank has loaded the whole file
    if gkdist.rank() == 0:
        _check_outputs(args.out, RBM_OUTPUTS, args.checkpoint)
    model = RBM(x.shape[1], args.hidden, args.visible, args.learn_variance, seed=args.seed,
                dtype=getattr(torch, args.dtype), device=device)
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, batch_size=args.batch_size, method=args.method, k=args.k,
              learning_rate=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay,
              sparsity_target=args.sparsity_target, verbose=not args.quiet,
              monitor=None if args.monitor == "none" else args.monitor, checkpoint=args.checkpoint,
              resume=args.resume, distributed=args.distributed,
              **({} if args.pt_betas is None else {"pt_betas": args.pt_betas}))
    seconds = time.perf_counter() - start
    if not _writes_outputs(args):
        return 0
    metrics = _rbm_metrics(model, train, test, args)
    _finite_metrics(metrics, "RBM")
    model.save(os.path.join(args.out, "rbm.pt"))
    _rbm_figures(model, args.out)
    metrics.update(train_seconds=seconds, samples_train=int(train.shape[0]), samples_test=int(test.shape[0]),
                   visible=model.n_visible, hidden=model.n_hidden, visible_units=args.visible,
                   method=args.method, k=args.k, epochs=model.epochs_done, history=model.history)
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    shown = f"reconstruction error {metrics['reconstruction_error_train']:.4f} (train)"
    if "log_likelihood_test" in metrics:
        shown += f", test log-likelihood {metrics['log_likelihood_test']:.3f} nats ({metrics['log_likelihood_method']})"
    print(f"RBM {model.n_visible} x {model.n_hidden}: {shown}, trained in {seconds:.2f} s -> {args.out}/")
    return 0


# ----------------------------------------------------------- autoregressive models
def _common_train_args(p, out: str, epochs: int, batch: int, rate: float, binary: bool = True) -> None:
    """The options the autoregressive and flow training commands share (--binarize and
    --scale for the binary models only)."""
    p.add_argument("--out", default=out, help=f"output folder (default {out})")
    if binary:
        p.add_argument("--binarize", choices=["none", "threshold", "stochastic"], default="none",
                       help="binary models: map the data (scaled to [0, 1] as --scale says) to 0/1 once "
                            "before the split: x > 0.5, or one Bernoulli(x) draw per value keyed by --seed")
        p.add_argument("--scale", choices=["auto", "none", "unit"], default="auto",
                       help="unit divides by the largest value of the data's integer type (255 for uint8 "
                            "images); auto: unit for unsigned integers when binarising, none otherwise")
    p.add_argument("--epochs", type=_count(1), default=epochs)
    p.add_argument("--batch-size", type=_count(1), default=batch)
    p.add_argument("--learning-rate", type=_finite, default=rate, help=f"Adam's (default {rate})")
    p.add_argument("--test-fraction", type=_finite, default=0.1,
                   help="rows held out (a permutation keyed by --seed) for the test NLL")
    p.add_argument("--samples", type=_count(0), default=16, help="images drawn for samples.png (0: none)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", default=None, help="the kernels' backend (default automatic)")


def _add_autoregressive_parsers(models) -> None:
    p = models.add_parser(
        "pixelcnn", help="train a Gated PixelCNN on images",
        description="Train a Gated PixelCNN on the images in DATA (.npy of (N, H, W) or (N, C, H, W), or of "
                    "rows with --image-size; IDX images such as t10k-images-idx3-ubyte.gz) and write the "
                    "model (pixelcnn.pt), metrics.json (train and held-out negative log-likelihood in "
                    "nats per image and bits per dimension) and figures (samples drawn by the cached "
                    "sampler, the training curve) to --out. Binary images (or --binarize) get a "
                    "Bernoulli head; --head categorical (a softmax) and logistic_mixture (PixelCNN++'s "
                    "discretised logistic mixture) take integer values in [0, --levels).")
    p.add_argument("data", help="image file: .npy or IDX (gzipped or not)")
    p.add_argument("--image-size", type=_count(1), nargs=2, default=None, metavar=("H", "W"),
                   help="the images' size when DATA holds one flattened image per row")
    p.add_argument("--head", choices=["bernoulli", "categorical", "logistic_mixture"], default="bernoulli")
    p.add_argument("--levels", type=_count(2), default=256,
                   help="categorical and logistic_mixture: values per channel (default 256)")
    p.add_argument("--mixtures", type=_count(1), default=5, help="logistic_mixture: components (default 5)")
    p.add_argument("--channels", type=_count(1), default=32, help="hidden channels per stack (default 32)")
    p.add_argument("--layers", type=_count(1), default=6, help="gated layers (default 6)")
    p.add_argument("--kernel-size", type=_count(1), default=5, help="odd kernel size (default 5)")
    _common_train_args(p, "pixelcnn_out", 5, 64, 1e-3)

    m = models.add_parser(
        "made", help="train a MADE density model on binary vectors",
        description="Train a MADE on the rows of DATA (.npy, .csv or IDX; images are flattened) and write "
                    "the model (made.pt), metrics.json (train and held-out negative log-likelihood in nats, "
                    "under the first mask and the ensemble of --num-masks masks) and figures (samples as "
                    "images when the rows are square images or --image-size is given, the training "
                    "curve) to --out. The data must be 0/1, or binarised with --binarize.")
    m.add_argument("data", help="data file: .npy, .csv, or IDX")
    m.add_argument("--hidden", type=_count(1), nargs="+", default=[500], metavar="H",
                   help="hidden layer sizes (default 500)")
    m.add_argument("--num-masks", type=_count(1), default=1,
                   help="connectivity masks trained in turn (connectivity-agnostic training) and "
                        "averaged at test time")
    m.add_argument("--order-agnostic", action="store_true", help="a new input ordering with every mask")
    m.add_argument("--image-size", type=_count(1), nargs=2, default=None, metavar=("H", "W"),
                   help="show the samples as H x W images")
    _common_train_args(m, "made_out", 10, 100, 1e-3)


PIXELCNN_OUTPUTS = ["pixelcnn.pt", "metrics.json", "samples.png", "training_curve.png"]
MADE_OUTPUTS = ["made.pt", "metrics.json", "samples.png", "training_curve.png"]


def _autoregressive_data(args, raw: np.ndarray, binary: bool) -> np.ndarray:
    """raw scaled (--scale) and binarised (--binarize) as the options say, float32."""
    if raw.shape[0] == 0:
        raise UsageError("DATA holds no rows")
    how = args.scale
    if how == "auto":
        how = "unit" if args.binarize != "none" and np.issubdtype(raw.dtype, np.unsignedinteger) else "none"
    if how == "unit":
        if not np.issubdtype(raw.dtype, np.integer):
            raise UsageError(f"--scale unit divides by the largest value of an integer type; DATA holds {raw.dtype}")
        x = raw / np.iinfo(raw.dtype).max
    else:
        x = raw.astype(np.float64)
    if args.binarize != "none":
        if not binary:
            raise UsageError(f"--binarize {args.binarize} applies to binary models (--head bernoulli)")
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise UsageError(f"--binarize {args.binarize} needs values in [0, 1] (use --scale unit for integer "
                             f"images); got [{x.min()}, {x.max()}]")
        if args.binarize == "threshold":
            x = x > 0.5
        else:
            x = np.random.default_rng(args.seed).random(x.shape) < x
    return np.asarray(x, dtype=np.float32)


def _autoregressive_images(args) -> np.ndarray:
    return _autoregressive_data(args, _raw_images(args), args.head == "bernoulli")


def _nll(model, x, batch: int) -> float:
    """Mean negative log-likelihood in nats per row."""
    import torch

    with torch.no_grad():
        total = sum(float(-model.log_prob(x[i:i + batch]).sum()) for i in range(0, x.shape[0], batch))
    return total / max(1, x.shape[0])


def cmd_train_pixelcnn(args) -> int:
    import torch

    from . import GatedPixelCNN
    from .plot import plot_curves, plot_image_grid

    device = _device(args.device)
    images = _autoregressive_images(args)
    train_rows, test_rows = _split(images.shape[0], args.test_fraction, args.seed)
    model = GatedPixelCNN(images.shape[1], args.channels, args.layers, args.kernel_size, head=args.head,
                          levels=args.levels, seed=args.seed, backend=args.backend, mixtures=args.mixtures).to(device)
    x = model.check_data(torch.as_tensor(images, device=device))   # values checked before any training
    train, test = x[torch.as_tensor(train_rows, device=device)], x[torch.as_tensor(test_rows, device=device)]
    _check_outputs(args.out, PIXELCNN_OUTPUTS, None)
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
              verbose=not args.quiet)
    seconds = time.perf_counter() - start
    dims = math.log(2) * x[0].numel()
    metrics = {"nll_train_nats": _nll(model, train, args.batch_size)}
    if test.shape[0]:
        metrics["nll_test_nats"] = _nll(model, test, args.batch_size)
    metrics.update({k.replace("nll", "bits_per_dim").removesuffix("_nats"): v / dims for k, v in list(metrics.items())})
    _finite_metrics(metrics, "Gated PixelCNN")
    model.save(os.path.join(args.out, "pixelcnn.pt"))
    if args.samples:
        samples = model.sample(args.samples, tuple(x.shape[2:]), seed=args.seed).cpu()
        shown = samples[:, 0] if samples.shape[1] == 1 else samples.permute(0, 2, 3, 1)[..., :3].mean(-1)
        plot_image_grid((shown / (model.levels - 1)).numpy(), os.path.join(args.out, "samples.png"),
                        f"Gated PixelCNN samples ({args.layers} layers x {args.channels} channels)")
    plot_curves({"bits/dim (train)": [h["bits_per_dim"] for h in model.history]},
                os.path.join(args.out, "training_curve.png"))
    metrics.update(train_seconds=seconds, images_train=int(train.shape[0]), images_test=int(test.shape[0]),
                   image_shape=list(x.shape[1:]), head=args.head, levels=model.levels, mixtures=model.mixtures,
                   channels=args.channels,
                   layers=args.layers, kernel_size=args.kernel_size, epochs=args.epochs, history=model.history)
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    shown = f"test NLL {metrics['nll_test_nats']:.2f} nats" if "nll_test_nats" in metrics else \
        f"train NLL {metrics['nll_train_nats']:.2f} nats"
    print(f"GatedPixelCNN: {shown}, trained in {seconds:.2f} s -> {args.out}/")
    return 0


def cmd_train_made(args) -> int:
    import torch

    from . import MADE
    from .data import load_array
    from .plot import plot_curves, plot_image_grid

    device = _device(args.device)
    raw = np.asarray(load_array(args.data))
    x_np = _autoregressive_data(args, raw.reshape(raw.shape[0], -1) if raw.ndim > 2 else raw, True)
    train_rows, test_rows = _split(x_np.shape[0], args.test_fraction, args.seed)
    model = MADE(x_np.shape[1], args.hidden, num_masks=args.num_masks, order_agnostic=args.order_agnostic,
                 seed=args.seed, backend=args.backend).to(device)
    x = model.check_data(torch.as_tensor(x_np, device=device))
    train, test = x[torch.as_tensor(train_rows, device=device)], x[torch.as_tensor(test_rows, device=device)]
    side = math.isqrt(x.shape[1])
    size = tuple(args.image_size) if args.image_size is not None else (side, side) if side * side == x.shape[1] \
        else None
    if size is not None and size[0] * size[1] != x.shape[1]:
        raise UsageError(f"--image-size {size[0]} {size[1]} does not match the rows' {x.shape[1]} values")
    _check_outputs(args.out, MADE_OUTPUTS, None)
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
              verbose=not args.quiet)
    seconds = time.perf_counter() - start
    model.eval()
    metrics = {}
    for name, part in (("train", train), ("test", test)):
        if part.shape[0]:
            with torch.no_grad():
                metrics[f"nll_{name}_nats"] = float(-model.log_prob(part, mask=0).mean())
                metrics[f"nll_{name}_nats_ensemble"] = float(-model.log_prob(part).mean())
    _finite_metrics(metrics, "MADE")
    model.save(os.path.join(args.out, "made.pt"))
    if args.samples and size is not None:
        samples = model.sample(args.samples, seed=args.seed).cpu().reshape(-1, *size)
        plot_image_grid(samples.numpy(), os.path.join(args.out, "samples.png"), "MADE samples")
    plot_curves({"NLL (train, nats)": [h["nll"] for h in model.history]},
                os.path.join(args.out, "training_curve.png"))
    metrics.update(train_seconds=seconds, samples_train=int(train.shape[0]), samples_test=int(test.shape[0]),
                   inputs=int(x.shape[1]), hidden=args.hidden, num_masks=args.num_masks,
                   order_agnostic=args.order_agnostic, epochs=args.epochs, history=model.history)
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    key = "nll_test_nats_ensemble" if "nll_test_nats_ensemble" in metrics else "nll_train_nats_ensemble"
    print(f"MADE {x.shape[1]} -> {args.hidden}: {key.replace('_', ' ')} {metrics[key]:.2f}, trained in "
          f"{seconds:.2f} s -> {args.out}/")
    return 0


FLOWS = {"realnvp": "RealNVP", "glow": "Glow", "maf": "MAF", "nsf": "NSF"}


def _add_flow_parsers(models) -> None:
    for name, cls in FLOWS.items():
        p = models.add_parser(
            name, help=f"train a {cls} normalizing flow",
            description=f"Train a {cls} on DATA (.npy, .csv or IDX): images (N, H, W) or (N, C, H, W) "
                        "(or rows with --image-size)" + (", or vectors (N, D)" if name != "glow" else "") +
                        f" -- and write the model ({name}.pt), metrics.json (train and held-out bits per "
                        "dimension), samples.png (images) or samples.png (2-D data) and the training curve "
                        "to --out. Integer images are scaled to [0, 1] and dequantised afresh every batch "
                        "(bits/dim of the discrete data); image flows model them through the logit "
                        "preprocessing." + (" MAF and NSF flatten images to vectors." if name in ("maf", "nsf")
                                            else ""))
        p.add_argument("data", help="data file: .npy, .csv, or IDX")
        p.add_argument("--image-size", type=_count(1), nargs=2, default=None, metavar=("H", "W"),
                       help="rows are flattened H x W images")
        p.add_argument("--hidden", type=_count(1), default=64, help="conditioner width (default 64)")
        if name == "realnvp":
            p.add_argument("--scales", type=_count(1), default=2, help="image scales (default 2)")
        if name == "glow":
            p.add_argument("--levels", type=_count(1), default=2, help="squeeze-and-split levels (default 2)")
            p.add_argument("--steps", type=_count(1), default=4, help="flow steps per level (default 4)")
        if name in ("realnvp", "maf", "nsf"):
            p.add_argument("--layers", type=_count(1), default=5, help="vector flows: transforms (default 5)")
        if name == "nsf":
            p.add_argument("--bins", type=_count(1), default=8, help="spline bins (default 8)")
            p.add_argument("--coupling", action="store_true", help="spline couplings (else autoregressive)")
        p.add_argument("--checkpoint-invertible", action="store_true",
                       help="memory-saving backward: recompute activations with the inverses")
        _common_train_args(p, f"{name}_out", 10, 128, 1e-3, binary=False)


def _flow_data(args, raw: np.ndarray) -> tuple[np.ndarray, int | None]:
    """(data, dequantisation levels): images as (N, C, H, W) in [0, 1] (integers scaled by
    their type's maximum and dequantised from its levels), vectors as (N, D)."""
    if args.image_size is not None:
        h, w = args.image_size
        if raw.ndim != 2 or raw.shape[1] % (h * w):
            raise UsageError(f"--image-size {h} {w} does not divide the rows' {raw.shape[-1]} values")
        raw = raw.reshape(raw.shape[0], -1, h, w)
    elif raw.ndim == 3:
        raw = raw[:, None]
    levels = None
    if np.issubdtype(raw.dtype, np.integer):
        top = int(np.iinfo(raw.dtype).max) if raw.dtype.itemsize == 1 else int(raw.max())
        if raw.min() < 0 or top < 1:
            raise UsageError("integer data must be non-negative levels (e.g. uint8 pixels)")
        raw, levels = raw.astype(np.float32) / top, top + 1
    x = raw.astype(np.float32)
    if x.ndim not in (2, 4):
        raise UsageError(f"DATA must hold vectors (N, D) or images; got shape {x.shape}")
    if args.model in ("maf", "nsf") and x.ndim == 4:
        x = x.reshape(x.shape[0], -1)
    if args.model == "glow" and x.ndim != 4:
        raise UsageError("glow models images: DATA must be (N, H, W), (N, C, H, W) or rows with --image-size")
    return x, levels


def cmd_train_flow(args) -> int:
    import torch

    from . import flows
    from .data import load_array
    from .plot import plot_curves, plot_image_grid, plot_scatter

    device = _device(args.device)
    x_np, levels = _flow_data(args, np.asarray(load_array(args.data, keep_shape=True)))
    image = x_np.ndim == 4
    shape = x_np.shape[1:]
    kw = dict(hidden=args.hidden, seed=args.seed, backend=args.backend)
    if args.model == "realnvp":
        model = flows.RealNVP(shape, scales=args.scales, layers=args.layers, logit_alpha=0.05 if image else None,
                              **kw)
    elif args.model == "glow":
        model = flows.Glow(shape, levels=args.levels, steps=args.steps, logit_alpha=0.05, **kw)
    elif args.model == "maf":
        model = flows.MAF(shape, layers=args.layers, **kw)
    else:
        model = flows.NSF(shape, layers=args.layers, bins=args.bins, coupling=args.coupling, **kw)
    model = model.to(device)
    if args.checkpoint_invertible:
        model.checkpoint = "invertible"
    x = torch.as_tensor(x_np, device=device)
    train_rows, test_rows = _split(x.shape[0], args.test_fraction, args.seed)
    train, test = x[torch.as_tensor(train_rows, device=device)], x[torch.as_tensor(test_rows, device=device)]
    _check_outputs(args.out, [f"{args.model}.pt", "metrics.json", "samples.png", "training_curve.png"], None)
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
              validation=test if test.shape[0] else None, dequantize_levels=levels, verbose=not args.quiet)
    seconds = time.perf_counter() - start
    metrics = {"bits_per_dim_train": model.evaluate(train, levels=levels)}
    if test.shape[0]:
        metrics["bits_per_dim_test"] = model.evaluate(test, levels=levels)
    _finite_metrics(metrics, FLOWS[args.model])
    model.save(os.path.join(args.out, f"{args.model}.pt"))
    if args.samples:
        samples = model.sample(args.samples, seed=args.seed).cpu()
        if image:
            plot_image_grid(samples[:, 0].numpy(), os.path.join(args.out, "samples.png"),
                            f"{FLOWS[args.model]} samples")
        elif samples.shape[1] == 2:
            shown = train[:len(samples) * 4].cpu().numpy()
            plot_scatter(np.concatenate([shown, samples.numpy()]),
                         np.array(["data"] * len(shown) + ["samples"] * len(samples)),
                         os.path.join(args.out, "samples.png"), f"{FLOWS[args.model]}: data and samples")
    plot_curves({"bits/dim (train)": [h["bits_per_dim"] for h in model.history]},
                os.path.join(args.out, "training_curve.png"))
    metrics.update(train_seconds=seconds, samples_train=int(train.shape[0]), samples_test=int(test.shape[0]),
                   shape=list(shape), dequantize_levels=levels, epochs=args.epochs, history=model.history)
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    key = "bits_per_dim_test" if "bits_per_dim_test" in metrics else "bits_per_dim_train"
    print(f"{FLOWS[args.model]} {tuple(shape)}: {key.replace('_', ' ')} {metrics[key]:.3f}, trained in "
          f"{seconds:.2f} s -> {args.out}/")
    return 0


def cmd_demo(args) -> int:
    import torch

    from . import SOM, available_backends
    from .data import load_digits

    from .checkpoint import check_output_dir

    check_output_dir(args.out, "--out")
    x, y = load_digits()
    model = SOM((20, 20), x.shape[1], topology="hexagonal", seed=0)
    start = time.perf_counter()
    model.fit(x, epochs=args.epochs, mode="batch", verbose=not args.quiet, callback=_track_te(x))
    batch_s = time.perf_counter() - start
    online = SOM((20, 20), x.shape[1], topology="hexagonal", seed=0)
    start = time.perf_counter()
    online.fit(x, epochs=2, mode="online", verbose=not args.quiet)
    online_s = time.perf_counter() - start
    files = _write_figures(model, x, y, args.out)
    model.label_nodes(x[::2], y[::2])
    accuracy = float((model.predict(x[1::2]) == y[1::2]).mean())
    model.save(os.path.join(args.out, "som.pt"))
    qe, te = float(model.quantization_error(x)), float(model.topographic_error(x))
    report = [
        "# genkernels demo",
        "",
        f"torch {torch.__version__}, backends on this machine: {', '.join(available_backends())}",
        "",
        "## Self-organizing map: scikit-learn digits (1,797 x 64) on a 20 x 20 hexagonal map",
        "",
        "| training | epochs | seconds | quantization error | topographic error |",
        "|---|---|---|---|---|",
        f"| batch rule | {args.epochs} | {batch_s:.2f} | {qe:.4f} | {te:.4f} |",
        f"| online rule | 2 | {online_s:.2f} | {float(online.quantization_error(x)):.4f} | "
        f"{float(online.topographic_error(x)):.4f} |",
        "",
        f"Classifying the odd-numbered digits by the majority label of their best-matching node "
        f"(nodes labelled with the even-numbered ones): accuracy {accuracy:.3f}.",
        "",
        *[f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in files],
        "",
    ]
    report += _demo_patch(x, args)
    report += _demo_softsom(x, y, args)
    report += _demo_rbm(x, args)
    report += _demo_autoregressive(x, args)
    report += _demo_flows(x, args)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(report))
    print(f"demo: QE {qe:.4f}, TE {te:.4f}, batch fit {batch_s:.2f} s; wrote {args.out}/report.md")
    return 0


def _demo_patch(x, args) -> list[str]:
    """PatchSOM part of the demo: a 6 x 6 map of the digits' 3 x 3 patches (stride 1, batch
    rule, the fused patch BMU), the digits rebuilt from their patches' winning codebook
    rows, and one figure: originals, reconstructions and the codebook."""
    import torch

    from . import PatchSOM
    from .plot import plot_reconstruction

    images = torch.as_tensor(x).reshape(-1, 1, 8, 8)
    model = PatchSOM((6, 6), 3, seed=0)
    start = time.perf_counter()
    model.fit(images, epochs=args.epochs, verbose=not args.quiet)
    fit_s = time.perf_counter() - start
    rebuilt, error = model.reconstruct(images)
    hp, wp = model.patch_grid(8, 8)
    figure = plot_reconstruction(images[:8, 0], rebuilt[:8, 0], model.filters[:, 0],
                                 os.path.join(args.out, "patch_som_reconstruction.png"),
                                 f"PatchSOM 6 x 6, 3 x 3 patches: reconstruction MSE {float(error):.4f}",
                                 filter_columns=6)
    return [
        "## Patch SOM: the digits' 3 x 3 patches on a 6 x 6 map",
        "",
        f"{images.shape[0] * hp * wp:,} patches (stride 1), batch rule, {args.epochs} epochs in {fit_s:.2f} s; "
        f"quantization error {model.history[-1]['quantization_error']:.4f}. Rebuilt from their patches' "
        f"winning codebook rows (overlaps averaged), the digits differ from the originals by a mean squared "
        f"error of {float(error):.5f} (pixels in [0, 1]).",
        "",
        f"![{os.path.basename(figure)}]({os.path.basename(figure)})",
        "",
    ]


def _demo_softsom(x, y, args) -> list[str]:
    """SoftSOM part of the demo: a 10 x 10 soft SOM layer on the digits, its map organised
    by the SOM batch rule (train_embedding="som", 100 training-mode forwards of 256 random
    digits), then each digit's soft output -- the softmax-weighted grid coordinates -- as a
    2-D scatter coloured by its label."""
    import torch

    from . import SoftSOM
    from .plot import plot_scatter

    data = torch.as_tensor(x)
    steps, batch = 100, 256
    layer = SoftSOM((10, 10), data.shape[1], beta=5.0, train_embedding="som", som_steps=steps, seed=0)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            layer(data[torch.randint(data.shape[0], (batch,), generator=gen)])
        layer.eval()
        coords = layer(data)
    fit_s = time.perf_counter() - start
    figure = plot_scatter(coords.numpy(), y, os.path.join(args.out, "softsom_digits.png"),
                          "SoftSOM 10 x 10 (beta 5): the digits' soft grid coordinates")
    return [
        "## Soft SOM layer: the digits through a 10 x 10 SoftSOM",
        "",
        f"The layer's map organised by the SOM batch rule over {steps} training-mode forwards of {batch} "
        f"random digits, then every digit's output: the grid coordinates of the nodes weighted by "
        f"softmax(-5 distance): a differentiable 2-D map position ({fit_s:.2f} s).",
        "",
        f"![{os.path.basename(figure)}]({os.path.basename(figure)})",
        "",
    ]


def _demo_autoregressive(x, args) -> list[str]:
    """Autoregressive part of the demo: the digits binarised at 0.5, the first 1,500 to train
    and the other 297 to test, a small Gated PixelCNN (3 layers of 8 channels, 3 x 3 kernels,
    2 epochs) and a MADE (64 -> 128 -> 128 -> 64, 4 connectivity masks, 20 epochs); held-out
    NLL in nats per digit and one figure of samples from each (the PixelCNN's by the cached
    sampler)."""
    import torch

    from . import MADE, GatedPixelCNN
    from .plot import plot_image_grid

    binary = torch.as_tensor((np.asarray(x) > 0.5).astype(np.float32))
    train, test = binary[:1500], binary[1500:]
    start = time.perf_counter()
    pixelcnn = GatedPixelCNN(1, 8, 3, 3, seed=0).fit(train.reshape(-1, 1, 8, 8), epochs=2, batch_size=50,
                                                     learning_rate=3e-3, verbose=not args.quiet)
    pixelcnn_s = time.perf_counter() - start
    start = time.perf_counter()
    made = MADE(64, (128, 128), num_masks=4, seed=0).fit(train, epochs=20, batch_size=50, learning_rate=3e-3,
                                                        verbose=not args.quiet)
    made_s = time.perf_counter() - start
    with torch.no_grad():
        nll = {"pixelcnn": float(-pixelcnn.log_prob(test.reshape(-1, 1, 8, 8)).mean()),
               "made": float(-made.log_prob(test, mask=0).mean()), "made_ensemble": float(-made.log_prob(test).mean())}
    _finite_metrics(nll, "autoregressive models")
    samples = torch.cat([pixelcnn.sample(8, (8, 8), seed=0)[:, 0], made.sample(8, seed=0).reshape(-1, 8, 8)])
    figure = plot_image_grid(samples.numpy(), os.path.join(args.out, "autoregressive_samples.png"),
                             "Gated PixelCNN (top) and MADE (bottom) samples of binarised digits")
    return [
        "## Autoregressive models: binarised digits (1,500 train / 297 test)",
        "",
        "| model | training | seconds | test NLL (nats per digit) |",
        "|---|---|---|---|",
        f"| Gated PixelCNN, 3 layers x 8 channels, 3 x 3 | 2 epochs | {pixelcnn_s:.2f} | {nll['pixelcnn']:.2f} |",
        f"| MADE 64-128-128-64, 4 masks (mask 0 / ensemble) | 20 epochs | {made_s:.2f} | "
        f"{nll['made']:.2f} / {nll['made_ensemble']:.2f} |",
        "",
        f"![{os.path.basename(figure)}]({os.path.basename(figure)})",
        "",
    ]


def _demo_flows(x, args) -> list[str]:
    """Flows part of the demo: a neural spline flow (autoregressive, 8 bins) and a MAF on two
    moons and on the checkerboard density (held-out bits/dim; densities on a grid beside the
    data's histogram), and a RealNVP on the digits (logit preprocessing, dequantised from
    their 17 levels: held-out bits/dim of the discrete digits, samples)."""
    import torch
    from sklearn.datasets import make_moons

    from . import MAF, NSF, RealNVP
    from .data import checkerboard
    from .plot import plot_densities, plot_image_grid

    sets = {"two moons": make_moons(3000, noise=0.05, random_state=0)[0].astype(np.float32),
            "checkerboard": checkerboard(3000, seed=0)}
    rows, panels = [], []
    side = np.linspace(-4.5, 4.5, 121, dtype=np.float32)
    grid = torch.as_tensor(np.stack(np.meshgrid(side, side, indexing="xy"), -1).reshape(-1, 2))
    for name, data in sets.items():
        data = (data - data.mean(0)) / data.std(0)     # standardised: both on the same grid
        train, test = torch.as_tensor(data[:2500]), torch.as_tensor(data[2500:])
        hist = np.histogram2d(data[:, 1], data[:, 0], bins=60, range=[[-4.5, 4.5]] * 2)[0]
        panels.append((f"{name}: data", hist, (-4.5, 4.5, -4.5, 4.5)))
        for label, model in (("NSF", NSF(2, layers=4, bins=8, hidden=32, seed=0)),
                             ("MAF", MAF(2, layers=4, hidden=32, seed=0))):
            start = time.perf_counter()
            model.fit(train, epochs=20, batch_size=250, learning_rate=5e-3, verbose=not args.quiet)
            seconds = time.perf_counter() - start
            bpd = model.evaluate(test)
            _finite_metrics({"bits_per_dim": bpd}, label)
            with torch.no_grad():
                density = model.log_prob(grid).exp().reshape(len(side), len(side)).numpy()
            panels.append((f"{label}", density, (-4.5, 4.5, -4.5, 4.5)))
            rows.append(f"| {label}, 4 layers, hidden 32, 20 epochs | {name} | {seconds:.2f} | {bpd:.3f} |")
    densities = plot_densities(panels, os.path.join(args.out, "flow_densities.png"),
                               "2-D densities learned by the flows (standardised data)")
    digits = torch.as_tensor(np.round(np.asarray(x) * 16) / 16).reshape(-1, 1, 8, 8)
    train, test = digits[:1500], digits[1500:]
    flow = RealNVP((1, 8, 8), scales=2, hidden=16, seed=0, logit_alpha=0.05)
    start = time.perf_counter()
    # 8 x 8 images in batches of 100: convolutions too small for a second thread, which
    # beside a busy process waits a time slice per call (6x slower measured on 2 cores)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flow.fit(train, epochs=10, batch_size=100, learning_rate=1e-3, dequantize_levels=17,
                 max_grad_norm=100.0, verbose=not args.quiet)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    bpd = flow.evaluate(test, levels=17)
    _finite_metrics({"bits_per_dim": bpd}, "RealNVP")
    samples = plot_image_grid(flow.sample(16, seed=0, temperature=0.8)[:, 0].numpy(),
                              os.path.join(args.out, "realnvp_digits.png"), "RealNVP samples (temperature 0.8)")
    return [
        "## Normalizing flows: 2-D densities (2,500 train / 500 test) and digits (1,500 / 297)",
        "",
        "| flow | data | seconds | test bits/dim |",
        "|---|---|---|---|",
        *rows,
        f"| RealNVP, 2 scales, hidden 16, logit preprocessing, 10 epochs | digits, 17 levels dequantised | {seconds:.2f} | "
        f"{bpd:.3f} |",
        "",
        "Bits per dimension of the held-out points (2-D: of the standardised continuous data; "
        "digits: of the discrete 17-level pixels, log2 17 = 4.09 bits for a uniform model).",
        "",
        f"![{os.path.basename(densities)}]({os.path.basename(densities)})",
        f"![{os.path.basename(samples)}]({os.path.basename(samples)})",
        "",
    ]


def _demo_rbm(x, args) -> list[str]:
    """RBM part of the demo: 64 visible x 16 hidden units on the digits (even rows to
    train, binarised stochastically once), filters and samples as figures, and the test
    log-likelihood of the odd rows by AIS next to the exact value (16 hidden units
    enumerate)."""
    import torch

    from . import RBM
    from .plot import plot_image_grid

    data = torch.as_tensor(x)
    u = torch.rand(data.shape, generator=torch.Generator().manual_seed(0))
    binary = (u < data).float()  # one stochastic binarisation, fixed seed
    train, test = binary[::2], binary[1::2]
    rbm = RBM(64, 16, seed=0)
    start = time.perf_counter()
    epochs = max(10, 5 * args.epochs)
    rbm.fit(train, epochs=epochs, batch_size=20, method="pcd", learning_rate=0.05, verbose=False)
    fit_s = time.perf_counter() - start
    filters = plot_image_grid(rbm.weights.T.reshape(16, 8, 8).cpu().numpy(),
                              os.path.join(args.out, "rbm_filters.png"), "RBM filters (64 x 16)",
                              symmetric=True)
    samples = plot_image_grid(rbm.sample(16, n_steps=1000, seed=1).reshape(16, 8, 8).cpu().numpy(),
                              os.path.join(args.out, "rbm_samples.png"), "RBM samples (1,000 Gibbs steps)")
    ais, err = rbm.log_likelihood_ais(test, n_chains=100, n_betas=2000, seed=2)
    exact = float(rbm.log_likelihood_exact(test).mean())
    return [
        "## Restricted Boltzmann machine: the same digits, binarised, 64 visible x 16 hidden",
        "",
        f"Persistent CD-1, {epochs} epochs on the even-numbered digits in {fit_s:.2f} s. Test "
        f"log-likelihood of the odd-numbered digits: {ais:.3f} ± {err:.3f} nats by annealed "
        f"importance sampling (100 chains, 2,000 temperatures), {exact:.3f} nats exactly "
        "(enumerating the 2^16 hidden states).",
        "",
        f"![{os.path.basename(filters)}]({os.path.basename(filters)})",
        f"![{os.path.basename(samples)}]({os.path.basename(samples)})",
        "",
    ]


def cmd_bench(args) -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runner = os.path.join(here, "bench", "run.py")
    if not os.path.isfile(runner):
        print("genkernels bench: no bench/ folder beside this installation; the benchmarks run "
              "from a source checkout (git clone, then `genkernels bench` inside it)", file=sys.stderr)
        return 2
    import importlib.util
    spec = importlib.util.spec_from_file_location("genkernels_bench_run", runner)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(runner))
    spec.loader.exec_module(module)
    return int(module.main(list(args.args)) or 0)


def run(args: argparse.Namespace) -> int:
    """The parsed command; library errors propagate (see :func:`main`)."""
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "train":
        return {"rbm": cmd_train_rbm, "patchsom": cmd_train_patchsom, "som": cmd_train_som,
                "pixelcnn": cmd_train_pixelcnn, "made": cmd_train_made, **dict.fromkeys(FLOWS, cmd_train_flow)
                }[args.model](args)
    return cmd_bench(args)


def main(argv: list[str] | None = None) -> int:
    """Run the command line. Any error prints one line ``genkernels: error: <message>`` on
    stderr and returns 2 (usage errors found by argparse exit 2 with its usage line);
    ``--debug`` re-raises instead, with the traceback."""
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, (ValueError, TypeError, OSError)):
            message = f"{type(exc).__name__}: {message}"
        print(f"genkernels: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
