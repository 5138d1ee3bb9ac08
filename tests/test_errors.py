"""Bad input (issue section H): each raises a clear error naming the argument, and
nothing already saved is damaged."""
import os

import numpy as np
import pytest
import torch

import genkernels
from genkernels import SOM, ops
from genkernels.backends import BackendUnavailableError

X = torch.randn(20, 3)
W = torch.randn(6, 3)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: ops.som_bmu(X[0], W), ValueError, "x must be 2-D"),
    (lambda: ops.som_bmu(X, W[:, :2]), ValueError, "x has 3 features but weights has 2"),
    (lambda: ops.som_bmu(X.int(), W), TypeError, "x must be a floating-point"),
    (lambda: ops.som_bmu(X.bool(), W), TypeError, "x must be a floating-point"),
    (lambda: ops.som_bmu(X.to(torch.complex64), W), TypeError, "x must be a floating-point"),
    (lambda: ops.som_bmu(X, W.double()), TypeError, "weights has dtype"),
    (lambda: ops.som_bmu(X, W, k=0), ValueError, r"k must be in \[1, 6\]"),
    (lambda: ops.som_bmu(X, W, k=7), ValueError, r"k must be in \[1, 6\]"),
    (lambda: ops.som_bmu(X, W, metric="cityblock"), ValueError, "metric must be one of 'euclidean'"),
    (lambda: ops.som_bmu(X, W, precision="fp16"), ValueError,
     "precision must be one of 'fp32', 'tf32', 'bf16'; got 'fp16'"),
    (lambda: ops.som_bmu(X, W, backend="gpu"), ValueError, "backend must be one of"),
    (lambda: ops.som_bmu(X, W.to("meta")), ValueError, "weights is on meta but x is on cpu"),
    (lambda: ops.som_bmu([[1.0]], W), TypeError, "x must be a torch.Tensor"),
])
def test_op_argument_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_ops_accept_empty_input():
    idx, dist = ops.som_bmu(torch.empty(0, 3), W, k=2)
    assert idx.shape == (0, 2) and dist.shape == (0, 2)
    sums, counts, dsum = ops.som_node_sums(torch.empty(0, 3), W)
    assert sums.abs().sum() == 0 and counts.sum() == 0 and float(dsum) == 0
    out = ops.som_online(W[None], X, torch.empty(1, 0, dtype=torch.int64), torch.empty(1, 0),
                         torch.empty(1, 0), torch.zeros(6, 2))
    assert torch.equal(out, W[None])


def test_online_argument_errors():
    order = torch.zeros(1, 4, dtype=torch.int64)
    rates = torch.full((1, 4), 0.5)
    coords = torch.zeros(6, 2)
    with pytest.raises(ValueError, match="order must index x's 20 rows"):
        ops.som_online(W[None], X, order + 20, rates, rates, coords)
    with pytest.raises(TypeError, match="order must be an int64"):
        ops.som_online(W[None], X, order.int(), rates, rates, coords)
    with pytest.raises(ValueError, match="lr must have the shape of order"):
        ops.som_online(W[None], X, order, rates[:, :2], rates, coords)
    with pytest.raises(ValueError, match="coords must have shape"):
        ops.som_online(W[None], X, order, rates, rates, coords[:3])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        ops.som_online(W[None], X, order, rates, -rates, coords)
    with pytest.raises(ValueError, match="rule must be one of"):
        ops.som_online(W[None], X, order, rates, rates, coords, rule="neural_gas")


@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(grid=(0, 4)), ValueError, r"grid must be in \[1, inf\]"),
    (dict(grid=(3, -1)), ValueError, "grid must be in"),
    (dict(grid=(2, 2, 2)), ValueError, "grid must be"),
    (dict(n_features=0), ValueError, "n_features"),
    (dict(sigma=0.0), ValueError, "sigma must be > 0"),
    (dict(sigma=-1.0), ValueError, "sigma must be > 0"),
    (dict(learning_rate=0), ValueError, "learning_rate must be > 0"),
    (dict(learning_rate="fast"), TypeError, "learning_rate must be a number"),
    (dict(topology="triangular"), ValueError, "topology must be one of 'rectangular', 'hexagonal'"),
    (dict(neighborhood="cone"), ValueError, "neighborhood must be one of 'gaussian', 'bubble'"),
    (dict(metric="l3"), ValueError, "metric must be one of"),
    (dict(schedule="cosine"), ValueError, "schedule must be one of"),
    (dict(init="zeros"), ValueError, "init must be one of"),
    (dict(n_maps=2, sigma=[1.0, 2.0, 3.0]), ValueError, "sigma must be"),
    (dict(topology="hexagonal", periodic=True, grid=(4, 5)), ValueError, "even number of columns"),
])
def test_model_constructor_errors(kwargs, exc, pattern):
    args = {"grid": (4, 4), "n_features": 3, **kwargs}
    with pytest.raises(exc, match=pattern):
        SOM(args.pop("grid"), args.pop("n_features"), **args)


def test_fit_input_errors():
    som = SOM((3, 3), 3, seed=0)
    with pytest.raises(ValueError, match="x is empty"):
        som.fit(np.empty((0, 3), np.float32), verbose=False)
    with pytest.raises(ValueError, match="x is empty"):
        som.fit(np.empty((0, 3), np.float32), mode="online", verbose=False)
    with pytest.raises(ValueError, match="x has 4 features but the map has 3"):
        som.fit(np.ones((5, 4), np.float32), verbose=False)
    with pytest.raises(ValueError, match="x must be 2-D"):
        som.fit(np.ones((5, 3, 1), np.float32), verbose=False)
    with pytest.raises(TypeError, match="x must hold floating-point values"):
        som.fit(np.ones((5, 3), np.int64), verbose=False)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        som.fit(torch.ones(5, 3, dtype=torch.complex64), verbose=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        som.fit(np.ones((5, 3), np.float32), mode="stochastic", verbose=False)
    with pytest.raises(ValueError, match="epochs must be in"):
        som.fit(np.ones((5, 3), np.float32), epochs=0, verbose=False)
    bad = np.ones((5, 3), np.float32)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="first at row 3"):
        som.fit(bad, verbose=False)
    with pytest.raises(ValueError, match="cannot be distributed"):
        som.fit(np.ones((5, 3), np.float32), mode="online", distributed=True, verbose=False)
    with pytest.raises(ValueError, match="topographic error is not defined"):
        SOM((1, 1), 3).topographic_error(np.ones((2, 3), np.float32))


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        SOM.load(str(tmp_path / "absent.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable genkernels checkpoint"):
        SOM.load(str(corrupt))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a genkernels SOM checkpoint"):
        SOM.load(str(other))


def test_failed_save_leaves_existing_checkpoint_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "m.pt")
    som = SOM((3, 3), 3, seed=0).fit(np.random.rand(30, 3).astype(np.float32), epochs=1, verbose=False)
    som.save(path)
    before = open(path, "rb").read()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    som.codebook.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        som.save(path)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_resume_rejects_a_checkpoint_of_another_map(tmp_path):
    path = str(tmp_path / "m.pt")
    SOM((3, 3), 3, seed=0).fit(np.random.rand(30, 3).astype(np.float32), epochs=1, verbose=False).save(path)
    with pytest.raises(ValueError, match="grid"):
        SOM((4, 4), 3).fit(np.random.rand(30, 3).astype(np.float32), epochs=2, checkpoint=path, resume=True,
                           verbose=False)


def test_unavailable_backend_names_what_is_missing(monkeypatch):
    with pytest.raises(BackendUnavailableError, match="cuda"):
        ops.som_bmu(X, W, backend="cuda")
    monkeypatch.setenv("GENKERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="GENKERNELS_BACKEND must be one of"):
        ops.som_bmu(X, W)
    with pytest.raises(ValueError, match=r"use_backend\(name\) must be one of"):
        genkernels.use_backend("fast")


@pytest.mark.parametrize("temperature", ["hot", [1.0, "x"], 1 + 2j, True, torch.tensor([1 + 1j])])
def test_temperature_must_be_real_numbers(temperature):
    from genkernels import BoltzmannMachine
    bm = BoltzmannMachine(4, 2, seed=0)
    with pytest.raises(TypeError, match="temperature must"):
        bm.gibbs(torch.zeros(2, 6), 1, temperature=temperature)
    with pytest.raises(TypeError, match="temperatures must"):
        genkernels.ops.bm_gibbs(bm.weights, bm.bias, torch.zeros(2, 6), temperature)


def test_read_only_arrays_train_without_warnings(tmp_path):
    import warnings

    import numpy as np

    from genkernels import RBM
    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((50, 6)) > 0.5).astype(np.float32))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = RBM(6, 3, seed=0).fit(x, epochs=1, verbose=False)
    assert torch.isfinite(model.weights).all()
    assert not x.flags.writeable  # the caller's memmap untouched


def test_float64_data_beyond_float32_is_not_called_nan():
    from genkernels import RBM
    x = torch.rand(10, 4, dtype=torch.float64)
    x[3, 1] = 1e39
    with pytest.raises(ValueError, match="beyond the range of float32"):
        RBM(4, 2, visible="gaussian", seed=0).fit(x, epochs=1, verbose=False)
    RBM(4, 2, visible="gaussian", seed=0, dtype=torch.float64).fit(x / 1e39, epochs=1, verbose=False)


def test_minisom_trains_on_a_memmap_without_warnings(tmp_path):
    import warnings

    import numpy as np

    from genkernels.compat import MiniSom
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((60, 4)))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    som = MiniSom(3, 3, 4, random_seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        som.train(x, 100)
        som.train_batch(x, 20)
    assert np.isfinite(som.get_weights()).all() and not x.flags.writeable
