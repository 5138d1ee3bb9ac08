"""``genkernels train realnvp|glow|maf|nsf``: vectors and images (.npy, IDX), what they write
(model, metrics, figures), the model reloaded gives the reported bits/dim, integer images
dequantised with the discrete data's bits/dim, and bad input failing with one clear line
before any training."""

import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch
from helpers import num_threads

import genkernels
from genkernels import cli


@pytest.fixture(autouse=True)
def _one_thread():
    """Small layers and batches: one thread (beside the other test worker a second thread
    waits a time slice per small call); the tests that compare thread counts set their own."""
    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def moons(tmp_path_factory) -> str:
    from sklearn.datasets import make_moons

    path = tmp_path_factory.mktemp("data") / "moons.npy"
    np.save(path, make_moons(120, noise=0.05, random_state=0)[0].astype(np.float32))
    return str(path)


@pytest.fixture(scope="module")
def digits_idx(tmp_path_factory) -> str:
    """60 8 x 8 digits as uint8 IDX images (levels 0..255)."""
    from genkernels.data import load_digits

    images = (load_digits()[0][:60].reshape(-1, 8, 8) * 255).round().astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "digits-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", *images.shape) + images.tobytes())
    return str(path)


@pytest.mark.parametrize("model, extra", [("realnvp", ["--layers", "2"]), ("maf", ["--layers", "2"]),
                                          ("nsf", ["--layers", "2", "--bins", "4"]),
                                          ("nsf", ["--layers", "2", "--coupling", "--checkpoint-invertible"])])
def test_train_vector_flows(model, extra, moons, tmp_path, capsys):
    out = tmp_path / model
    assert cli.main(["train", model, moons, "--hidden", "8", "--epochs", "2", "--samples", "20", "--quiet",
                     "--out", str(out), *extra]) == 0
    assert sorted(os.listdir(out)) == sorted(["metrics.json", f"{model}.pt", "samples.png", "training_curve.png"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["samples_train"] == 108 and metrics["samples_test"] == 12 and metrics["shape"] == [2]
    cls = getattr(genkernels, {"realnvp": "RealNVP", "maf": "MAF", "nsf": "NSF"}[model])
    flow = cls.load(str(out / f"{model}.pt"))
    test_rows = np.sort(np.random.default_rng(0).permutation(120)[:12])
    x = torch.as_tensor(np.load(moons)[test_rows])
    assert flow.evaluate(x) == pytest.approx(metrics["bits_per_dim_test"], rel=1e-5)
    assert len(metrics["history"]) == 2 and "bits per dim test" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["glow", "realnvp"])
def test_train_image_flows_on_integer_images(model, digits_idx, tmp_path):
    out = tmp_path / model
    size = ["--levels", "1", "--steps", "1"] if model == "glow" else ["--scales", "1"]
    assert cli.main(["train", model, digits_idx, "--hidden", "4", "--epochs", "1", "--samples", "4", "--quiet",
                     "--out", str(out), *size]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dequantize_levels"] == 256 and metrics["shape"] == [1, 8, 8]
    assert 0 < metrics["bits_per_dim_test"] < 16       # the discrete data's: at most 8 for a good model
    assert "samples.png" in os.listdir(out)


@pytest.mark.parametrize("argv, match", [
    (["train", "glow", "DATA", "--epochs", "1"], "glow models images"),
    (["train", "realnvp", "DATA", "--image-size", "3", "3"], "--image-size 3 3"),
    (["train", "realnvp", "DATA", "--out", "/proc/no/such"], "--out"),
])
def test_bad_input_fails_before_training(argv, match, moons, capsys):
    argv = [moons if a == "DATA" else a for a in argv]
    assert cli.main(argv) == 2
    assert match in capsys.readouterr().err
