"""``genkernels.PatchSOM`` and ``genkernels.StackedPatchSOM``: self-organizing maps of image
patches.

A patch SOM is a SOM whose samples are the kh x kw patches of images (one or more channels)
taken with a stride: its codebook rows are (C, kh, kw) filters, and an image maps to the
grid of its patches' winners. Training reuses the SOM model (genkernels.SOM: the
initialisation, the sigma schedule, Kohonen's batch rule with its separable smoothing, the
divergence check); the BMU step of the batch rule is the fused patch kernel
(genkernels.ops.som_patch_bmu), which reads the patches from the images, and each node's
sum of the patches it wins is gathered one patch offset at a time -- no im2col matrix of
all patches is ever built. The online and mini-batch rules update the map after every
sample or batch, so they run the SOM's own kernels on a seeded random sample of patches.

``StackedPatchSOM`` feeds the winner coordinates of one patch SOM -- a 2-channel image of
lattice positions -- to the next, fitting the layers in turn.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from .. import checkpoint as ckpt
from .. import registry
from .._checks import acc_dtype, all_finite, check_choice, check_int, from_numpy
from ..model import Model, Progress
from . import ops
from .patch_ops import check_patch_args, pair, som_patch_bmu
from .patch_reference import patch_grid
from .som import SOM

MODES = ("batch", "online", "minibatch")
# Patches per call of the patch BMU in fit and the queries: its index and distance outputs
# (16 bytes a patch) stay bounded on any number of images.
CHUNK_PATCHES = 1 << 20


def _chunks(images: torch.Tensor, per_image: int):
    step = max(1, CHUNK_PATCHES // max(1, per_image))
    for start in range(0, images.shape[0], step):
        yield images[start:start + step]


def patch_node_sums(images: torch.Tensor, indices: torch.Tensor, n_nodes: int, kernel: tuple[int, int],
                    stride: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The Voronoi sums of the batch rule over patches: images (N, C, H, W) and each patch's
    node indices (N, Hp, Wp) -> sums (K, C kh kw) of the patches each node wins and counts
    (K,), in the accumulation dtype. One pass per patch offset (a, b): the (N, C, Hp, Wp)
    pixels at that offset of every patch are added into their winners' rows (index_add_),
    so memory stays at one offset's pixels, 1 / (kh kw) of the im2col matrix."""
    n, c = images.shape[:2]
    kh, kw = kernel
    sh, sw = stride
    hp, wp = indices.shape[1:]
    dt = acc_dtype(images.dtype)
    flat = indices.reshape(-1)
    sums = torch.zeros((kh * kw, n_nodes, c), dtype=dt, device=images.device)
    for a in range(kh):
        for b in range(kw):
            pixels = images[:, :, a:a + sh * (hp - 1) + 1:sh, b:b + sw * (wp - 1) + 1:sw]
            sums[a * kw + b].index_add_(0, flat, pixels.permute(0, 2, 3, 1).reshape(-1, c).to(dt))
    counts = torch.bincount(flat, minlength=n_nodes).to(dt)
    return sums.permute(1, 2, 0).reshape(n_nodes, c * kh * kw), counts


def overlay_patches(filters: torch.Tensor, indices: torch.Tensor, size: tuple[int, int],
                    stride: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images rebuilt from each patch's filter: filters (K, C, kh, kw), indices (N, Hp, Wp) ->
    (images (N, C, H, W), coverage (H, W)) in filters' dtype, every pixel the mean of the
    filter values of the patches over it and 0 where no patch covers it; coverage counts
    them. One pass per patch offset, as patch_node_sums (patch_reference.fold_patches is
    the same by torch.nn.functional.fold)."""
    n, hp, wp = indices.shape
    k_nodes, c, kh, kw = filters.shape
    sh, sw = stride
    total = torch.zeros((n, c) + tuple(size), dtype=filters.dtype, device=filters.device)
    coverage = torch.zeros(tuple(size), dtype=filters.dtype, device=filters.device)
    for a in range(kh):
        for b in range(kw):
            rows, cols = slice(a, a + sh * (hp - 1) + 1, sh), slice(b, b + sw * (wp - 1) + 1, sw)
            total[:, :, rows, cols] += filters[:, :, a, b][indices].permute(0, 3, 1, 2)
            coverage[rows, cols] += 1
    return torch.where(coverage > 0, total / coverage.clamp(min=1), torch.zeros((), dtype=total.dtype)), coverage


class PatchSOM(Model):
    """A self-organizing map of the kh x kw patches of images.

    Args:
        grid: ``(rows, cols)`` or ``(n,)`` of the map (as genkernels.SOM).
        kernel_size: the patch size, an int or (kh, kw).
        stride: the step between patches, an int >= 1 or (sh, sw); no padding.
        channels: C, the channels of the images.
        topology, periodic, neighborhood, sigma, learning_rate, schedule, init: as
            genkernels.SOM (the map is a genkernels.SOM of C kh kw features, ``model.som``).
        seed: the map's seed (initialisation, patch samples, sample order), an int in
            [0, 2^64); None draws one.
        backend: the default backend of the patch BMU and the SOM ops (None: automatic);
            every method also takes ``backend=``.
        dtype, device: of the codebook.

    Images are (N, C, H, W) float tensors or numpy arrays ((N, H, W) when C = 1), finite,
    with H >= kh and W >= kw; each holds Hp x Wp patches (:meth:`patch_grid`).

    Example::

        model = genkernels.PatchSOM((6, 6), kernel_size=3, seed=0)
        model.fit(images, epochs=10)            # images (N, 1, H, W)
        coords = model.transform(images)        # (N, 2, Hp, Wp) winner lattice positions
        rebuilt, mse = model.reconstruct(images)
    """

    kind = "PatchSOM"
    _dtype_source = "codebook"
    _main_op = "som_patch_bmu"

    def __init__(self, grid, kernel_size, stride=1, channels: int = 1, *, topology: str = "rectangular",
                 periodic: bool = False, neighborhood: str = "gaussian", sigma=None, learning_rate=0.5,
                 schedule: str = "exponential", init: str = "pca", seed: int | None = None,
                 backend: str | None = None, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.kernel_size = pair("kernel_size", kernel_size)
        self.stride = pair("stride", stride)
        self.channels = check_int("channels", channels, 1)
        if backend is not None:
            check_choice("backend", backend, registry.BACKENDS)
        self.backend = backend
        n_features = self.channels * self.kernel_size[0] * self.kernel_size[1]
        self.som = SOM(grid, n_features, topology=topology, periodic=periodic, neighborhood=neighborhood,
                       sigma=sigma, learning_rate=learning_rate, schedule=schedule, init=init, seed=seed,
                       dtype=dtype, device=device)
        self._init_stream(self.som.seed)
        self.history: list[dict] = []

    # ------------------------------------------------------------------ properties
    @property
    def codebook(self) -> torch.Tensor:
        """(K, C kh kw) codebook: row k is node k's patch, features in unfold's (c, a, b) order."""
        return self.som.codebook[0]

    @property
    def filters(self) -> torch.Tensor:
        """(K, C, kh, kw): the codebook as patches."""
        return self.codebook.reshape(self.n_nodes, self.channels, *self.kernel_size)

    @property
    def n_nodes(self) -> int:
        return self.som.n_nodes

    @property
    def n_features(self) -> int:
        return self.som.n_features

    @property
    def initialized(self) -> bool:
        return bool(self.som.initialized)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """(Hp, Wp): the patches of an H x W image."""
        return patch_grid(height, width, self.kernel_size, self.stride)

    # ----------------------------------------------------------------------- input
    def _images(self, images, name: str = "images") -> torch.Tensor:
        """images as a validated (N, C, H, W) tensor in the model's dtype and device."""
        if isinstance(images, np.ndarray):
            if not np.issubdtype(images.dtype, np.floating):
                raise TypeError(f"{name} must hold floating-point values; got numpy dtype {images.dtype}")
            images = from_numpy(images)
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or a numpy array; got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {images.dtype}")
        if images.dim() == 3 and self.channels == 1:
            images = images[:, None]
        if images.dim() != 4:
            raise ValueError(f"{name} must be (N, {self.channels}, H, W)" + (" or (N, H, W)" if self.channels == 1
                                                                              else "")
                             + f"; got shape {tuple(images.shape)}")
        if images.shape[1] != self.channels:
            raise ValueError(f"{name} has {images.shape[1]} channel(s) but the map takes channels={self.channels}")
        check_patch_args(images, self.kernel_size, self.stride)
        images = images.detach().to(device=self.device, dtype=self.dtype)
        if not torch.compiler.is_compiling() and not all_finite(images):
            raise ValueError(f"{name} contains NaN or Inf")
        return images

    def _sample(self, images: torch.Tensor, count: int) -> torch.Tensor:
        """(min(count, all), C kh kw) patches drawn without replacement by the model's seed,
        gathered from the images (every patch when count covers them all)."""
        n, _, h, w = images.shape
        hp, wp = self.patch_grid(h, w)
        total = n * hp * wp
        gen = torch.Generator().manual_seed(self.seed)
        picks = torch.randperm(total, generator=gen)[:count] if count < total else torch.arange(total)
        picks = picks.to(images.device)
        img, rem = picks // (hp * wp), picks % (hp * wp)
        top, left = (rem // wp) * self.stride[0], (rem % wp) * self.stride[1]
        kh, kw = self.kernel_size
        rows = top[:, None, None] + torch.arange(kh, device=images.device)[None, :, None]
        cols = left[:, None, None] + torch.arange(kw, device=images.device)[None, None, :]
        channel = torch.arange(self.channels, device=images.device)[None, :, None, None]
        patches = images[img[:, None, None, None], channel, rows[:, None], cols[:, None]]   # (count, C, kh, kw)
        return patches.reshape(picks.shape[0], -1)

    def _backend_of(self, backend: str | None):
        """The ops' backend block of a public method: its backend=, else the model's."""
        return self._ops_backend(backend if backend is not None else self.backend)

    # ---------------------------------------------------------------------- train
    def fit(self, images, epochs: int = 10, mode: str = "batch", batch_size: int = 256, *,
            max_patches: int = 100_000, verbose: bool = True, backend: str | None = None,
            callback=None) -> "PatchSOM":
        """Train the map on the patches of ``images`` for ``epochs`` passes.

        Args:
            images: (N, C, H, W) float tensor or numpy array ((N, H, W) when C = 1), N >= 1.
            mode: "batch" (Kohonen's batch rule over every patch, each epoch one fused patch
                BMU pass and one smoothing), "online" or "minibatch" (genkernels.SOM's rules
                on a random sample of ``max_patches`` patches, drawn by the model's seed).
            max_patches: the patches the initialisation (``init="pca"`` or ``"random"``) and the
                online / mini-batch modes sample; every patch when there are fewer.
            callback: called as callback(model, epoch) after every epoch.

        Every call trains ``epochs`` more epochs from the current map (the schedules run over
        them); ``history`` gets one entry per epoch with the quantization error (mean patch
        distance; batch mode: of the map the epoch started from, the fused pass's by-product).
        A diverged map raises genkernels.som.som.SOMDivergedError and keeps its last finite
        codebook. Checkpointing during fit and resume are not offered: ``save`` after it.
        """
        epochs = check_int("epochs", epochs, 1)
        check_choice("mode", mode, MODES)
        batch_size = check_int("batch_size", batch_size, 1)
        max_patches = check_int("max_patches", max_patches, 1)
        x = self._images(images)
        if x.shape[0] == 0:
            raise ValueError("images is empty; the PatchSOM needs images to train")
        with torch.no_grad(), self._backend_of(backend):
            if mode != "batch":
                self.som.fit(self._sample(x, max_patches), epochs=epochs, mode=mode, batch_size=batch_size,
                             verbose=verbose, backend=self._backend,
                             callback=None if callback is None else (lambda som, epoch: callback(self, epoch)))
                self.history = [dict(h) for h in self.som.history]
                return self
            if not self.initialized:
                self.som._initialize(self._sample(x, max_patches), False)
            self._fit_batch(x, epochs, verbose, callback)
        return self

    def _fit_batch(self, x: torch.Tensor, epochs: int, verbose: bool, callback) -> None:
        som = self.som
        lattice = som.lattice
        coords = som.coords()
        self.history = []
        som.epochs_done.zero_()
        bar = Progress(epochs, 0, verbose, "PatchSOM (batch)", "qe", "{:.4f}")
        for epoch in range(epochs):
            _, sig = som._rates(epoch, 1, epochs, epoch, epochs)
            before = som.codebook.clone()
            w = som.codebook[0]
            sums, counts, distance_sum, n_patches = self._node_sums(x, w)
            som.codebook[0] = ops.som_smooth(sums, counts, w, coords, lattice.periods, som.neighborhood,
                                             float(sig[0, 0]), lattice.shape if lattice.separable else None)
            qe = distance_sum / n_patches
            som._check_finite(before, epoch, epochs, "batch", qe)
            som.epochs_done.fill_(epoch + 1)
            self.history.append({"epoch": epoch + 1, "quantization_error": qe})
            if callback is not None:
                callback(self, epoch + 1)
            bar.update(qe)
        bar.close()

    def _node_sums(self, x: torch.Tensor, w: torch.Tensor):
        """(sums (K, D), counts (K,), the sum of the patches' BMU distances, the patch count)
        of the batch rule, over chunks of images."""
        dt = acc_dtype(self.dtype)
        sums = torch.zeros((self.n_nodes, self.n_features), dtype=dt, device=self.device)
        counts = torch.zeros(self.n_nodes, dtype=dt, device=self.device)
        distance_sum, n_patches = 0.0, 0
        hp, wp = self.patch_grid(*x.shape[2:])
        for chunk in _chunks(x, hp * wp):
            idx, dist = som_patch_bmu(chunk, w, self.kernel_size, self.stride, backend=self._backend)
            s, c = patch_node_sums(chunk, idx, self.n_nodes, self.kernel_size, self.stride)
            sums += s
            counts += c
            distance_sum += float(dist.to(torch.float64).sum())
            n_patches += idx.numel()
        return sums, counts, distance_sum, n_patches

    # --------------------------------------------------------------------- queries
    def bmu(self, images, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (N, Hp, Wp) int64, distances (N, Hp, Wp)) of every patch's best-matching
        node (genkernels.ops.som_patch_bmu)."""
        x = self._images(images)
        hp, wp = self.patch_grid(*x.shape[2:])
        idx, dist = [], []
        with torch.no_grad(), self._backend_of(backend):
            for chunk in _chunks(x, hp * wp):
                i, d = som_patch_bmu(chunk, self.codebook, self.kernel_size, self.stride, backend=self._backend)
                idx.append(i)
                dist.append(d)
        if not idx:
            return (torch.empty((0, hp, wp), dtype=torch.int64, device=self.device),
                    torch.empty((0, hp, wp), dtype=self.dtype, device=self.device))
        return torch.cat(idx), torch.cat(dist)

    def transform(self, images, backend: str | None = None) -> torch.Tensor:
        """(N, 2, Hp, Wp) lattice coordinates (row, col; hexagonal positions on hexagonal
        maps) of every patch's best-matching node, in the accumulation dtype: an image of
        the map's positions, the input of the next layer of a StackedPatchSOM."""
        idx = self.bmu(images, backend)[0]
        return self.som.coords()[idx].permute(0, 3, 1, 2).contiguous()

    def forward(self, images) -> torch.Tensor:
        """:meth:`transform`."""
        return self.transform(images)

    def quantization_error(self, images, backend: str | None = None) -> float:
        """The mean distance of the patches to their best-matching nodes."""
        dist = self.bmu(images, backend)[1]
        return float(dist.to(torch.float64).mean()) if dist.numel() else float("nan")

    def reconstruct(self, images, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild images from their patches' winning codebook rows.

        Returns (rebuilt (N, C, H, W) in the model's dtype: every pixel the mean of the
        winning filters' values over the patches that cover it, 0 where none does -- past
        the last patch, or between patches when stride > kernel_size; error: a 0-d float64
        tensor, the mean squared error over the covered pixels of every image and channel)."""
        x = self._images(images)
        idx = self.bmu(x, backend)[0]
        dt = acc_dtype(self.dtype)
        rebuilt, coverage = overlay_patches(self.filters.to(dt), idx, tuple(x.shape[2:]), self.stride)
        covered = (coverage > 0).to(torch.float64)
        sq = ((rebuilt - x.to(dt)) ** 2).to(torch.float64) * covered
        pixels = covered.sum() * x.shape[0] * x.shape[1]
        error = sq.sum() / pixels if x.shape[0] else torch.tensor(float("nan"), dtype=torch.float64)
        return rebuilt.to(self.dtype), error

    # ----------------------------------------------------------------- persistence
    def _config(self) -> dict:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "channels": self.channels,
                "backend": self.backend}

    def _payload(self) -> dict:
        """The patch geometry, the map (genkernels.SOM's checkpoint fields) and the history."""
        return {"config": self._config(), "som": self.som._payload(), "history": self.history}

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> "PatchSOM":
        cfg = fields.sub("config")
        geometry = {}
        for key in ("kernel_size", "stride"):
            value = cfg.get(key, list, "a list of 2 ints")
            if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                raise cfg.error(key, f"must be [rows, cols] of ints >= 1; got {value!r}")
            geometry[key] = tuple(value)
        channels = cfg.int("channels", 1)
        backend = cfg.get("backend", (type(None), str), "None or a backend name")
        if backend is not None and backend not in registry.BACKENDS:
            raise cfg.error("backend", f"must be None or one of {list(registry.BACKENDS)}; got {backend!r}")
        sub = fields.sub("som")
        som_cfg = sub.sub("config")
        for key, types in SOM._CONFIG_TYPES.items():
            som_cfg.get(key, types)
        if som_cfg.payload["dtype"] not in SOM._DTYPES:
            raise som_cfg.error("dtype", f"must be one of {list(SOM._DTYPES)}; got {som_cfg.payload['dtype']!r}")
        width = channels * geometry["kernel_size"][0] * geometry["kernel_size"][1]
        if som_cfg.payload["n_features"] != width or som_cfg.payload["n_maps"] != 1:
            raise som_cfg.error("n_features", f"must be channels * kh * kw = {width} with n_maps 1; got "
                                f"{som_cfg.payload['n_features']} and {som_cfg.payload['n_maps']}")
        som = SOM._from_config(som_cfg.payload, fields.path, device)
        som._check_payload(sub.payload, fields.path)
        som._restore(sub.payload)
        history = fields.records("history")
        model = cls(som.grid, geometry["kernel_size"], geometry["stride"], channels, backend=backend, seed=som.seed,
                    dtype=som.dtype, device=device)
        model.som = som
        model.history = history
        return model

    def extra_repr(self) -> str:
        return (f"grid={self.som.grid}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"channels={self.channels}")


class StackedPatchSOM(Model):
    """Patch SOMs in a stack: the winner coordinates of layer l, a (N, 2, Hp, Wp) image of
    lattice positions, are the images of layer l + 1 (which takes ``channels=2``).

    Args:
        layers: a non-empty list of genkernels.PatchSOM on one device; every layer after the
            first has channels=2.

    ``fit`` trains the layers in turn (each on the transform of the one before, as it
    stands after its own fit); ``transform`` runs the images through every layer.
    """

    kind = "StackedPatchSOM"
    _dtype_source = "codebook"
    _main_op = "som_patch_bmu"

    def __init__(self, layers):
        super().__init__()
        if not isinstance(layers, (list, tuple, nn.ModuleList)) or len(layers) == 0:
            raise ValueError(f"layers must be a non-empty list of genkernels.PatchSOM; got {layers!r}")
        for i, layer in enumerate(layers):
            if not isinstance(layer, PatchSOM):
                raise TypeError(f"layers[{i}] must be a genkernels.PatchSOM; got {type(layer).__name__}")
            if i > 0 and layer.channels != 2:
                raise ValueError(f"layers[{i}] must take channels=2 (the winner coordinates of layers[{i - 1}]); "
                                 f"got channels={layer.channels}")
            if layer.device != layers[0].device:
                raise ValueError(f"layers[{i}] is on {layer.device} but layers[0] is on {layers[0].device}")
        self.layers = nn.ModuleList(layers)
        self._init_stream(layers[0].seed)

    @property
    def codebook(self) -> torch.Tensor:
        """The first layer's codebook (the stack's dtype and device)."""
        return self.layers[0].codebook

    def output_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(Hp, Wp) of every layer's output for H x W input images; a ValueError names the
        first layer whose patches do not fit its input."""
        sizes = []
        for i, layer in enumerate(self.layers):
            kh, kw = layer.kernel_size
            if kh > height or kw > width:
                source = "the images" if i == 0 else f"the output of layers[{i - 1}]"
                raise ValueError(f"layers[{i}]: kernel_size {layer.kernel_size} does not fit its input of "
                                 f"{height} x {width} ({source})")
            height, width = layer.patch_grid(height, width)
            sizes.append((height, width))
        return sizes

    def _epochs(self, epochs) -> list[int]:
        if isinstance(epochs, numbers.Integral) and not isinstance(epochs, bool):
            return [check_int("epochs", epochs, 1)] * len(self.layers)
        if isinstance(epochs, (list, tuple)) and len(epochs) == len(self.layers):
            return [check_int(f"epochs[{i}]", e, 1) for i, e in enumerate(epochs)]
        raise ValueError(f"epochs must be an int or a list of one int per layer ({len(self.layers)}); got {epochs!r}")

    def fit(self, images, epochs=10, mode: str = "batch", *, max_patches: int = 100_000, verbose: bool = True,
            backend: str | None = None) -> "StackedPatchSOM":
        """Fit layer 0 on the images, then each next layer on the transform of the one before.
        ``epochs``: an int for every layer or one per layer; the other arguments as
        PatchSOM.fit."""
        epochs = self._epochs(epochs)
        x = self.layers[0]._images(images)
        self.output_sizes(*x.shape[2:])
        for i, layer in enumerate(self.layers):
            layer.fit(x, epochs[i], mode, max_patches=max_patches, verbose=verbose, backend=backend)
            if i + 1 < len(self.layers):
                x = layer.transform(x, backend)
        return self

    def transform(self, images, backend: str | None = None) -> torch.Tensor:
        """(N, 2, Hp, Wp) winner coordinates of the last layer (its Hp, Wp: output_sizes)."""
        x = self.layers[0]._images(images)
        self.output_sizes(*x.shape[2:])
        for layer in self.layers:
            x = layer.transform(x, backend)
        return x

    def forward(self, images) -> torch.Tensor:
        return self.transform(images)

    def _payload(self) -> dict:
        return {"config": {"n_layers": len(self.layers)}, "layers": [layer._payload() for layer in self.layers]}

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> "StackedPatchSOM":
        n_layers = fields.sub("config").int("n_layers", 1)
        layers = fields.get("layers", list, "a list of layer dicts")
        if len(layers) != n_layers:
            raise fields.error("layers", f"must hold {n_layers} layers; got {len(layers)}")
        return cls([PatchSOM._from_checkpoint(ckpt.Fields(payload, fields.path, f"layers[{i}]."), device)
                    for i, payload in enumerate(layers)])

    def extra_repr(self) -> str:
        return f"n_layers={len(self.layers)}"

