"""Figures (matplotlib, Agg, PNG): lattice heat maps drawn cell by cell so hexagonal
maps look hexagonal, component planes, label maps and training curves."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from ._checks import check_int


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _cells(ax, lattice, values, cmap, vmin=None, vmax=None):
    """Draw one cell per node (squares, or flat-topped hexagons) coloured by values."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import RegularPolygon

    pos = lattice.coords().numpy()
    hexagonal = lattice.topology == "hexagonal"
    radius = 1 / math.sqrt(3) if hexagonal else math.sqrt(0.5)
    orientation = math.pi / 6 if hexagonal else math.pi / 4
    patches = [RegularPolygon((p[1], -p[0]), numVertices=6 if hexagonal else 4, radius=radius,
                              orientation=orientation) for p in pos]
    coll = PatchCollection(patches, cmap=cmap, edgecolor="none")
    coll.set_array(np.ma.masked_invalid(np.ma.asarray(values, dtype=float).reshape(-1)))
    if vmin is not None or vmax is not None:
        coll.set_clim(vmin, vmax)
    ax.add_collection(coll)
    ax.set_xlim(pos[:, 1].min() - 1, pos[:, 1].max() + 1)
    ax.set_ylim(-pos[:, 0].max() - 1, -pos[:, 0].min() + 1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return coll, pos


def _save(fig, path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_lattice(lattice, values, path, title="", cmap="viridis"):
    """One value per node, e.g. the U-matrix or the hit map."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 6 * lattice.rows / max(lattice.cols, 1) + 0.5))
    coll, _ = _cells(ax, lattice, np.asarray(values.cpu() if hasattr(values, "cpu") else values), cmap)
    fig.colorbar(coll, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    return _save(fig, path)


def _check_names(names, n_features: int) -> list[str] | None:
    """None, or a sequence (list, tuple, 1-D array) of exactly n_features strings."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, (Sequence, np.ndarray)):
        raise TypeError(f"names must be None or a list of {n_features} strings (one per feature); "
                        f"got {type(names).__name__}")
    names = list(names)
    if len(names) != n_features:
        raise ValueError(f"names must hold one name per feature ({n_features}); got {len(names)}")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"names must hold strings; got {type(name).__name__} {name!r} at index {i}")
    return names


def plot_planes(lattice, planes, path, names=None, max_planes=16, cmap="coolwarm"):
    """Component planes: the weight of each feature over the map, one panel each.

    planes: (F, nodes) values; names: None or F strings (one per feature, the titles);
    max_planes: an int >= 1, the most panels drawn (every F // max_planes-th feature
    beyond it). Both are checked before a figure is made or a file written."""
    names = _check_names(names, planes.shape[0])
    max_planes = check_int("max_planes", max_planes, 1)
    plt = _plt()
    planes = np.asarray(planes.detach().float().cpu())
    count = min(planes.shape[0], max_planes)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    step = max(1, planes.shape[0] // count)
    for ax, f in zip(axes.flat, range(0, step * count, step)):
        _cells(ax, lattice, planes[f], cmap)
        ax.set_title(names[f] if names is not None else f"feature {f}", fontsize=8)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    return _save(fig, path)


def plot_labels(lattice, labels_map, path):
    """Each node coloured by its majority label, shaded by its purity."""
    plt = _plt()
    values = np.full(lattice.n_nodes, np.nan)
    classes = sorted({lab for counter in labels_map.values() for lab in counter})
    index = {c: i for i, c in enumerate(classes)}
    fig, ax = plt.subplots(figsize=(6, 6 * lattice.rows / max(lattice.cols, 1) + 0.5))
    for (r, c), counter in labels_map.items():
        values[r * lattice.cols + c] = index[counter.most_common(1)[0][0]]
    from matplotlib.colors import ListedColormap
    base = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    colours = ListedColormap([base(i % base.N) for i in range(max(len(classes), 1))]).with_extremes(
        bad="lightgrey")
    coll, pos = _cells(ax, lattice, np.ma.masked_invalid(values), colours, vmin=-0.5,
                       vmax=len(classes) - 0.5)
    for (r, c), counter in labels_map.items():
        p = pos[r * lattice.cols + c]
        ax.text(p[1], -p[0], str(counter.most_common(1)[0][0]), ha="center", va="center", fontsize=6)
    ax.set_title("labels map (majority label per node)")
    return _save(fig, path)


def plot_curves(curves: dict, path, xlabel="epoch"):
    """Training curves: {name: values per epoch}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_image_grid(images, path, title="", cmap="gray", columns=8, symmetric=False):
    """Small images (n, h, w) in a grid: RBM filters (symmetric=True: a diverging colour
    scale centred at 0 per image) or samples."""
    plt = _plt()
    images = np.asarray(images)
    n = images.shape[0]
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 0.9), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = images[k]
            if symmetric:
                lim = float(np.abs(img).max()) or 1.0
                ax.imshow(img, cmap="coolwarm", vmin=-lim, vmax=lim)
            else:
                ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_reconstruction(originals, rebuilt, filters, path, title="", columns=8, filter_columns=None):
    """Images and their reconstructions (n, h, w), side by side in two rows of ``columns``,
    and below them the filters (k, kh, kw) that rebuilt them (a patch SOM's codebook, in
    rows of ``filter_columns``, e.g. the map's columns); values shown on [0, 1]."""
    plt = _plt()
    originals, rebuilt, filters = (np.asarray(a) for a in (originals, rebuilt, filters))
    n = min(columns, originals.shape[0])
    filter_columns = filter_columns or columns
    filter_rows = max(1, math.ceil(filters.shape[0] / filter_columns))
    fig = plt.figure(figsize=(columns * 0.9, (2 + filter_rows) * 0.9 + 1.2))
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.4, filter_rows + 0.4])
    axes = top.subplots(2, columns, squeeze=False)
    for row, images in enumerate((originals, rebuilt)):
        for j, ax in enumerate(axes[row]):
            ax.axis("off")
            if j < n:
                ax.imshow(images[j], cmap="gray", vmin=0.0, vmax=1.0)
    top.suptitle("originals (top) and reconstructions (bottom)", fontsize=9)
    axes = bottom.subplots(filter_rows, filter_columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < filters.shape[0]:
            ax.imshow(filters[k], cmap="gray", vmin=0.0, vmax=1.0)
    bottom.suptitle("codebook", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10, y=1.02)
    return _save(fig, path)


def plot_scatter(points, labels, path, title=""):
    """2-D points (n, 2) coloured by integer labels (n,), with a legend of the labels."""
    plt = _plt()
    points, labels = np.asarray(points), np.asarray(labels)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    cmap = plt.get_cmap("tab10")
    for i, label in enumerate(np.unique(labels)):
        sel = labels == label
        ax.scatter(points[sel, 0], points[sel, 1], s=6, color=cmap(i % 10), label=str(label), alpha=0.7)
    ax.legend(markerscale=2, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    return _save(fig, path)


def plot_densities(panels, path, title=""):
    """A row of 2-D densities: ``panels`` a list of (title, values (H, W) over the grid,
    extent (x0, x1, y0, y1)), each drawn as an image (row 0 at the bottom)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False)
    for ax, (name, values, extent) in zip(axes[0], panels):
        ax.imshow(np.asarray(values), origin="lower", extent=extent, cmap="magma", aspect="equal")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10, y=1.02)
    return _save(fig, path)
