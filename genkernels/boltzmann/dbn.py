"""``genkernels.DBN``: a deep belief network, a stack of RBMs trained greedily layer by layer.

Layer i is ``RBM(layer_sizes[i], layer_sizes[i + 1])`` with binary hidden units; the
first layer's visible units are Bernoulli or Gaussian (``visible=``), every other layer's
are Bernoulli. ``fit`` trains layer 0 on the data, then layer 1 on layer 0's hidden
probabilities p(h | x) (``RBM.transform``), and so on up the stack (Hinton, Osindero and
Teh, 2006). ``transform`` propagates probabilities up the stack; ``sample`` runs Gibbs
sampling in the top RBM and a down pass through the lower layers.

Random stream: layer i is an RBM with seed ``layer_seed(seed, i)`` and its own counter
offset (see ``genkernels.boltzmann.rbm``), so layer i of a DBN is bit-identical to an
``RBM(layer_sizes[i], layer_sizes[i + 1], seed=layer_seed(seed, i))`` trained on the same
inputs with the same arguments.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import checkpoint as ckpt
from .._checks import check_choice, check_int
from ..model import DivergedError, Model
from ..random import SEED_RANGE
from .rbm import RBM, VISIBLE_UNITS

DOWN_PASSES = ("mean", "sample")
# fit() arguments of RBM.fit that a DBN does not forward (its checkpoints hold every layer)
_NOT_FORWARDED = ("checkpoint", "resume")
_SEED_STRIDE = 0x9E3779B97F4A7C15  # odd 64-bit constant (2^64 / golden ratio): layer seeds differ


def layer_seed(seed: int, layer: int) -> int:
    """The seed of RBM ``layer`` in a DBN with ``seed``: (seed + layer * 0x9E3779B97F4A7C15) mod 2^64."""
    return (seed + layer * _SEED_STRIDE) % 2**64


class DBN(Model):
    """A deep belief network: ``len(layer_sizes) - 1`` stacked RBMs.

    Args:
        layer_sizes: unit counts from the data up, at least two entries, each >= 1
            (``[784, 500, 200]``: RBM(784, 500) under RBM(500, 200)).
        visible: "bernoulli" (data in [0, 1]) or "gaussian" (real-valued, standardised) for
            the first layer's visible units; learn_variance: learn their standard deviations.
        seed: int in [0, 2^64) keying every random draw (layer i uses ``layer_seed(seed, i)``);
            None draws one from torch's RNG.
        dtype: float32 or float64. device: where the parameters live.

    ``layers`` is an ``nn.ModuleList`` of the RBMs, bottom first.

    Example::

        dbn = genkernels.DBN([64, 128, 64], seed=0)
        dbn.fit(x, epochs=[20, 20], batch_size=20, learning_rate=0.05)
        features = dbn.transform(x)          # (N, 64) top-level probabilities
        v = dbn.sample(16, n_gibbs=1000)     # (16, 64) in [0, 1]

    The DBN's own stream (``seed``) keys its layers' seeds and draws nothing itself.
    """

    kind = "DBN"
    _main_op = "rbm_half_step"

    def __init__(self, layer_sizes: Sequence[int], visible: str = "bernoulli", learn_variance: bool = False,
                 *, seed: int | None = None, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if isinstance(layer_sizes, (str, bytes)) or not isinstance(layer_sizes, Sequence):
            raise TypeError(f"layer_sizes must be a sequence of integers; got {type(layer_sizes).__name__}")
        if len(layer_sizes) < 2:
            raise ValueError(f"layer_sizes must hold at least 2 entries (visible and one hidden layer); "
                             f"got {list(layer_sizes)}")
        self.layer_sizes = [check_int(f"layer_sizes[{i}]", n, 1) for i, n in enumerate(layer_sizes)]
        self.visible = check_choice("visible", visible, VISIBLE_UNITS)
        self._init_stream(seed)
        self.layers = nn.ModuleList(
            RBM(n_in, n_out, visible if i == 0 else "bernoulli", learn_variance if i == 0 else False,
                seed=layer_seed(self.seed, i), dtype=dtype, device=device)
            for i, (n_in, n_out) in enumerate(zip(self.layer_sizes[:-1], self.layer_sizes[1:])))
        self.learn_variance = learn_variance

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].device

    @property
    def n_layers(self) -> int:
        """Number of RBMs (len(layer_sizes) - 1)."""
        return len(self.layers)

    def _check_width(self, x, name: str = "x") -> None:
        if isinstance(x, (torch.Tensor, np.ndarray)) and (x.ndim != 2 or x.shape[1] != self.layer_sizes[0]):
            raise ValueError(f"{name} must be (N, {self.layer_sizes[0]}) (layer_sizes[0] = {self.layer_sizes[0]}); "
                             f"got shape {tuple(x.shape)}")

    def _per_layer(self, name: str, value) -> list[int]:
        if isinstance(value, (list, tuple)):
            if len(value) != self.n_layers:
                raise ValueError(f"{name} must be an integer or a list of {self.n_layers} (one per RBM); "
                                 f"got a list of {len(value)}")
            return [check_int(f"{name}[{i}]", v, 0) for i, v in enumerate(value)]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer or a list of {self.n_layers} integers; "
                            f"got {type(value).__name__} {value!r}")
        return [check_int(name, value, 0)] * self.n_layers

    # -------------------------------------------------------------------- training
    def fit(self, x, epochs: int | Sequence[int] = 10, batch_size: int = 100, method: str = "cd", k: int = 1,
            learning_rate: float = 0.1, verbose: bool = False, *, backend: str | None = None,
            **rbm_kwargs) -> DBN:
        """Greedy layer-wise training on x (N, layer_sizes[0]).

        Layer 0 is trained on x, then layer i on layer i - 1's hidden probabilities of its
        own training input (``RBM.transform``), each with ``RBM.fit(..., epochs[i],
        batch_size, method, k, learning_rate, verbose, backend=backend, **rbm_kwargs)``.

        Args:
            epochs: the epochs this call trains each layer (an int for every layer, or a
                list of ``n_layers``): as in ``RBM.fit``, every layer trains that many MORE
                epochs from its current state, so a second call continues training (layer i
                then on the features of the retrained layer i - 1).
            rbm_kwargs: further ``RBM.fit`` arguments (momentum, weight_decay,
                sparsity_target, sparsity_cost, monitor) given to every layer, except
                ``binarize``, which applies to the data (layer 0) only: the upper layers see
                probabilities. ``checkpoint``/``resume`` are not taken: use :meth:`save`.
            backend: None (auto) or "reference", "cpu", "triton": the backend of every op
                of every layer's training (``RBM.fit``'s backend) and of the binarisation of
                the data; checked before anything is trained (a bad name raises ValueError,
                one that cannot run here BackendUnavailableError).
        Returns: self.
        Raises: ValueError naming the layer and the epoch when a layer's training diverges
            (a parameter NaN or Inf, see ``RBM.fit``).
        """
        epochs = self._per_layer("epochs", epochs)
        for name in _NOT_FORWARDED:
            if name in rbm_kwargs:
                raise TypeError(f"{name} is not a DBN.fit argument: save the whole stack with DBN.save")
        binarize = rbm_kwargs.pop("binarize", None)
        self._check_width(x)
        # the data as layer 0 trains on it (binarised once, as RBM.fit would); each upper
        # layer's input is the layer below's p(h | input)
        with self.layers[0]._ops_backend(backend):
            inputs = self.layers[0]._data(x, binarize=binarize)
        for i, (layer, n_epochs) in enumerate(zip(self.layers, epochs)):
            if i > 0:
                inputs = self.layers[i - 1].transform(inputs)
            try:
                layer.fit(inputs, n_epochs, batch_size, method, k, learning_rate, verbose=verbose, backend=backend,
                          **rbm_kwargs)
            except DivergedError as exc:
                raise DivergedError(f"DBN layer {i} (RBM({layer.n_visible}, {layer.n_hidden})): {exc}") from None
        return self

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def transform(self, x, layer: int | None = None) -> torch.Tensor:
        """Probabilities up the stack: x (N, layer_sizes[0]) -> (N, layer_sizes[-1]), each
        layer's p(h = 1 | input) fed to the next. layer: stop after RBM ``layer``
        (0-based) and return its (N, layer_sizes[layer + 1]) probabilities."""
        top = self.n_layers - 1 if layer is None else check_int("layer", layer, 0, self.n_layers - 1)
        self._check_width(x)
        h = x
        for rbm in self.layers[:top + 1]:
            h = rbm.transform(h)
        return h

    @torch.no_grad()
    def reconstruct(self, x) -> torch.Tensor:
        """Mean-field reconstruction: probabilities up the stack, then the means
        E[v | h] of every layer down: x (N, layer_sizes[0]) -> (N, layer_sizes[0])."""
        h = self.transform(x)
        for rbm in reversed(self.layers):
            h = rbm._visible_mean(h)
        return h

    @torch.no_grad()
    def sample(self, n_samples: int, n_gibbs: int = 1000, down: str = "mean",
               seed: int | None = None, *, backend: str | None = None) -> torch.Tensor:
        """Samples from the DBN's generative model, (n_samples, layer_sizes[0]).

        The top RBM runs n_gibbs Gibbs steps from noise (``RBM.sample``); its visible
        states (binary, layer_sizes[-2] units) then go down through the lower RBMs:
        down="mean" passes the probabilities p(v = 1 | h) (means for Gaussian units) from
        layer to layer, so the result lies in [0, 1] for Bernoulli data; down="sample"
        draws binary states at every lower layer (Bernoulli data: a binary result; Gaussian
        visible units: one N(b + sigma W h, sigma^2) draw). With two layer_sizes there is no
        down pass and the top RBM's binary samples are returned.

        seed: None draws from the layers' streams and advances them; an int keys every draw
        by (layer_seed(seed, i), offset 0) and leaves the model's streams alone.

        backend: None (auto) or "reference", "cpu", "triton": the backend of every op of the
        Gibbs sampling and the sampled down pass (``RBM.sample``'s backend); checked first
        (a bad name raises ValueError, one that cannot run here BackendUnavailableError).
        """
        n_samples = check_int("n_samples", n_samples, 0)
        n_gibbs = check_int("n_gibbs", n_gibbs, 0)
        check_choice("down", down, DOWN_PASSES)
        if seed is not None:
            seed = check_int("seed", seed, *SEED_RANGE)
        top = self.layers[-1]
        v = top.sample(n_samples, n_gibbs, seed=None if seed is None else layer_seed(seed, self.n_layers - 1),
                       backend=backend)
        for i in range(self.n_layers - 2, -1, -1):
            rbm = self.layers[i]
            if down == "mean":
                v = rbm._visible_mean(v)
                continue
            with rbm._ops_backend(backend), rbm._call_stream(None if seed is None else layer_seed(seed, i)):
                v = rbm._sample_visible(v.to(torch.uint8))
        return v

    # ----------------------------------------------------------------- persistence
    def _config(self) -> dict:
        return {"layer_sizes": list(self.layer_sizes), "visible": self.visible,
                "learn_variance": self.learn_variance, "seed": self.seed,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def _payload(self) -> dict:
        """Every layer (parameters, training state, random-stream positions) and the
        configuration, in one file."""
        return {"config": self._config(), "layers": [rbm._payload() for rbm in self.layers]}

    @classmethod
    def _from_checkpoint(cls, fields: ckpt.Fields, device=None) -> DBN:
        """Every layer is validated as ``RBM.load`` validates a model; errors name the
        field, e.g. 'layers[1].state.chains'."""
        cfg = fields.sub("config")
        sizes = cfg.get("layer_sizes", list, "a list of ints")
        if len(sizes) < 2:
            raise cfg.error("layer_sizes", f"must hold at least 2 entries; got {sizes}")
        sizes = [ckpt.Fields({f"layer_sizes[{i}]": n}, fields.path, cfg.prefix).int(f"layer_sizes[{i}]", 1)
                 for i, n in enumerate(sizes)]
        model = cls(sizes, cfg.choice("visible", VISIBLE_UNITS), cfg.get("learn_variance", bool), seed=cfg.seed(),
                    dtype=cfg.dtype(), device=device)
        layers = fields.get("layers", list, "a list of layer dicts")
        if len(layers) != model.n_layers:
            raise fields.error("layers", f"must hold {model.n_layers} layers for layer_sizes {sizes}; "
                               f"got {len(layers)}")
        for i, (rbm, layer_payload) in enumerate(zip(model.layers, layers)):
            ckpt.Fields({f"layers[{i}]": layer_payload}, fields.path).get(f"layers[{i}]", dict)
            rbm._restore(ckpt.Fields(layer_payload, fields.path, f"layers[{i}]."))
        return model

    def forward(self, x) -> torch.Tensor:
        """Top-level probabilities (:meth:`transform`)."""
        return self.transform(x)

    def extra_repr(self) -> str:
        return f"layer_sizes={self.layer_sizes}, visible={self.visible!r}"
