"""Data loading: the embedded digits set, MNIST-style IDX files, .npy and .csv files."""

from __future__ import annotations

import gzip
import os

import numpy as np

# IDX type codes (http://yann.lecun.com/exdb/mnist/ "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: str):
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def load_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzipped or not): images (n, rows, cols) or labels (n,)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such IDX file {path!r}")
    with _open(path) as f:
        header = f.read(4)
        if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] not in _IDX_DTYPES:
            raise ValueError(f"path: {path!r} is not an IDX file (bad magic number {header!r})")
        ndim = header[3]
        shape = tuple(int.from_bytes(f.read(4), "big") for _ in range(ndim))
        dtype = np.dtype(_IDX_DTYPES[header[2]])
        data = np.frombuffer(f.read(), dtype=dtype)
    expected = int(np.prod(shape)) if shape else 0
    if data.size != expected:
        raise ValueError(f"path: {path!r} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def load_array(path: str) -> np.ndarray:
    """Load a data matrix (n_samples, n_features) from .npy, .csv (comma or whitespace
    separated, an optional header row skipped) or IDX (.idx*, *-ubyte, optionally .gz).
    Image stacks (n, h, w) are flattened to (n, h*w)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data: no such file {path!r}")
    lower = path.lower()
    base = lower[:-3] if lower.endswith(".gz") else lower
    if base.endswith(".npy"):
        if lower.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                arr = np.load(f)
        else:
            arr = np.load(path, mmap_mode="r")
    elif base.endswith((".csv", ".txt", ".tsv")):
        arr = _load_text(path)
    elif "idx" in os.path.basename(base) or base.endswith("ubyte"):
        arr = load_idx(path)
    else:
        raise ValueError(f"data: unsupported file type {path!r}; expected .npy, .csv or an IDX file")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    return arr


def _load_text(path: str) -> np.ndarray:
    with _open(path) as f:
        text = f.read().decode()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    delimiter = "," if "," in lines[0] else None
    try:
        float(lines[0].split(delimiter)[0])
        skip = 0
    except ValueError:
        skip = 1
    return np.loadtxt(lines[skip:], delimiter=delimiter, dtype=np.float64, ndmin=2)


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
