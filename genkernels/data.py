"""Data loading: the embedded digits set, MNIST-style IDX files, .npy and .csv files."""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

# IDX type codes (http://yann.lecun.com/exdb/mnist/ "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: str):
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


# dimensions an IDX file may declare: MNIST-style files have 1 (labels) to 3 (images)
_IDX_MAX_DIMS = 8


def _read_failed(path: str, kind: str, exc: BaseException) -> ValueError:
    return ValueError(f"data: {path!r} is not a readable {kind} ({type(exc).__name__}: {exc})")


def _read_at_most(f, n: int) -> bytes:
    """Up to n bytes of f, read in chunks: a header may declare more than memory holds."""
    chunks, size = [], 0
    while size < n:
        chunk = f.read(min(n - size, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def load_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzipped or not): images (n, rows, cols) or labels (n,). A file
    whose header declares 0 or more than 8 dimensions, more values than it holds, or
    that is cut short (a truncated .gz included) raises ValueError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such IDX file {path!r}")
    try:
        with _open(path) as f:
            header = f.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] not in _IDX_DTYPES:
                raise ValueError(f"path: {path!r} is not an IDX file (bad magic number {header!r})")
            ndim = header[3]
            if not 1 <= ndim <= _IDX_MAX_DIMS:
                raise ValueError(f"path: {path!r} declares {ndim} dimensions; an IDX data file has 1 to "
                                 f"{_IDX_MAX_DIMS}")
            dims = f.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise ValueError(f"path: {path!r} is truncated inside its header")
            shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_DTYPES[header[2]])
            expected = math.prod(shape)  # Python ints: no overflow
            payload = _read_at_most(f, expected * dtype.itemsize + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise _read_failed(path, "IDX file", exc) from exc
    if len(payload) < expected * dtype.itemsize:
        raise ValueError(f"path: {path!r} is truncated: header says {shape}, found "
                         f"{len(payload) // dtype.itemsize} values")
    if len(payload) > expected * dtype.itemsize:
        raise ValueError(f"path: {path!r} holds more data than its header {shape} declares")
    data = np.frombuffer(payload, dtype=dtype)
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def load_array(path: str, keep_shape: bool = False) -> np.ndarray:
    """Load a data matrix (n_samples, n_features) from .npy, .csv (comma or whitespace
    separated, an optional header row skipped) or IDX (.idx*, *-ubyte, optionally .gz).
    Image stacks (n, h, w) are flattened to (n, h*w) unless ``keep_shape``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data: no such file {path!r}")
    lower = path.lower()
    base = lower[:-3] if lower.endswith(".gz") else lower
    if base.endswith(".npy"):
        try:
            if lower.endswith(".gz"):
                with gzip.open(path, "rb") as f:
                    arr = np.load(f)
            else:
                arr = np.load(path, mmap_mode="r")
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise _read_failed(path, ".npy file", exc) from exc
    elif base.endswith((".csv", ".txt", ".tsv")):
        arr = _load_text(path)
    elif "idx" in os.path.basename(base) or base.endswith("ubyte"):
        arr = load_idx(path)
    else:
        raise ValueError(f"data: unsupported file type {path!r}; expected .npy, .csv or an IDX file")
    if arr.dtype.kind == "c":
        raise ValueError(f"data: {path!r} holds complex numbers ({arr.dtype}); expected real numbers "
                         "(split real and imaginary parts into features yourself)")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"data: {path!r} holds {arr.dtype} values; expected a numeric array "
                         "(bool, integer or float)")
    if arr.ndim == 0:
        raise ValueError(f"data: {path!r} holds a single number (a 0-d array); expected a matrix "
                         "(n_samples, n_features)")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2 and not keep_shape:
        arr = arr.reshape(arr.shape[0], -1)
    return arr


def _load_text(path: str) -> np.ndarray:
    try:
        with _open(path) as f:
            text = f.read().decode("utf-8")
    except (OSError, EOFError, zlib.error) as exc:
        raise _read_failed(path, "text file", exc) from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"data: {path!r} is not a text (CSV) file: {exc}") from exc
    if "\x00" in text:
        raise ValueError(f"data: {path!r} is not a text (CSV) file: it holds NUL bytes")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"data: {path!r} is empty: no rows")
    delimiter = "," if "," in lines[0] else None
    try:
        float(lines[0].split(delimiter)[0])
        skip = 0
    except ValueError:
        skip = 1
    if skip == len(lines):
        raise ValueError(f"data: {path!r} holds a header row and no data rows")
    try:
        return np.loadtxt(lines[skip:], delimiter=delimiter, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"data: {path!r} is not a numeric CSV file ({exc})") from exc


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (embedded): x (1797, 64) float32 scaled to [0, 1], labels (1797,)."""
    from sklearn.datasets import load_digits as _digits

    bunch = _digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def load_mnist(directory: str | None = None, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (n, 784) float32 in [0, 1] and labels from ``directory`` (or the
    GENKERNELS_DATA environment variable), files ``{split}-images-idx3-ubyte[.gz]``."""
    directory = directory or os.environ.get("GENKERNELS_DATA")
    if not directory:
        raise FileNotFoundError("MNIST: pass a directory or set GENKERNELS_DATA")

    def find(stem):
        for name in (stem, stem + ".gz"):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(f"MNIST: {stem}[.gz] not found in {directory!r}")

    images = load_idx(find(f"{split}-images-idx3-ubyte"))
    labels = load_idx(find(f"{split}-labels-idx1-ubyte"))
    return images.reshape(images.shape[0], -1).astype(np.float32) / 255.0, labels.astype(np.int64)


def spirals(n: int = 2000, arms: int = 2, noise: float = 0.2, turns: float = 2.0,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The classic interleaved spirals, generated (no download): ``n`` points in the plane,
    float32 (n, 2), and their arm labels int64 (n,).

    Arm a's points lie at angle t + 2 pi a / arms and radius t / (2 pi) (t uniform over
    [0.25, turns] revolutions of 2 pi: the centre, where the arms meet, is left out), plus
    N(0, noise^2) in each coordinate. Points go to the arms in turn (n // arms each, the
    first n % arms arms one more), in a seeded random order."""
    for name, value, low in (("n", n, 1), ("arms", arms, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    for name, value in (("noise", noise), ("turns", turns)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    if not turns > 0.25:
        raise ValueError(f"turns must be > 0.25 (the arms start a quarter turn out); got {turns!r}")
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % arms
    t = rng.uniform(0.25, turns, n) * 2 * np.pi
    angle = t + 2 * np.pi * labels / arms
    radius = t / (2 * np.pi)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    points += rng.normal(0.0, noise, points.shape) if noise else 0.0
    order = rng.permutation(n)
    return points[order].astype(np.float32), labels[order].astype(np.int64)


def checkerboard(n: int = 2000, seed: int = 0) -> np.ndarray:
    """The 2-D checkerboard density of the flow literature (FFJORD, neural spline flows),
    generated: ``n`` points, float32 (n, 2), uniform over the 8 dark squares of a 4 x 4
    board of side-2 squares on [-4, 4]^2 (square (i, j) dark when i + j is even)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}")
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return (np.stack([x1, x2], axis=1) * 2).astype(np.float32)
