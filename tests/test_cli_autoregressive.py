"""``genkernels train pixelcnn`` and ``genkernels train made`` on .npy and IDX data: the model,
metrics and figures they write, the model reloaded gives the reported NLL, and bad input
(non-binary data for a binary model, --binarize with a categorical head, an --out that
cannot be written) fails with one clear line before any training."""

import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch

import genkernels
from genkernels import cli


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    """60 8 x 8 digits in [0, 1] (float32 .npy)."""
    from genkernels.data import load_digits
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, (load_digits()[0][:60].reshape(-1, 8, 8) / 16.0).astype(np.float32))
    return str(path)


def _idx_images(path, images: np.ndarray) -> str:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", *images.shape) + images.tobytes())
    return str(path)


def test_train_pixelcnn_writes_model_metrics_and_figures(digits, tmp_path, capsys):
    out = tmp_path / "pc"
    assert cli.main(["train", "pixelcnn", digits, "--binarize", "threshold", "--channels", "4", "--layers", "2",
                     "--epochs", "1", "--samples", "2", "--quiet", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["metrics.json", "pixelcnn.pt", "samples.png", "training_curve.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images_train"] == 54 and metrics["images_test"] == 6 and metrics["image_shape"] == [1, 8, 8]
    assert metrics["bits_per_dim_test"] == pytest.approx(metrics["nll_test_nats"] / (64 * np.log(2)))
    model = genkernels.GatedPixelCNN.load(str(out / "pixelcnn.pt"))
    test_rows = np.sort(np.random.default_rng(0).permutation(60)[:6])
    x = torch.as_tensor((np.load(digits)[test_rows] > 0.5).astype(np.float32))[:, None]
    with torch.no_grad():
        assert float(-model.log_prob(x).mean()) == pytest.approx(metrics["nll_test_nats"], rel=1e-5)
    assert "test NLL" in capsys.readouterr().out


def test_train_pixelcnn_categorical_on_idx_images(tmp_path):
    images = (np.arange(20 * 6 * 5) % 7).astype(np.uint8).reshape(20, 6, 5)
    path = _idx_images(tmp_path / "images-idx3-ubyte.gz", images)
    out = tmp_path / "cat"
    assert cli.main(["train", "pixelcnn", path, "--head", "categorical", "--levels", "8", "--channels", "2",
                     "--layers", "1", "--kernel-size", "3", "--epochs", "1", "--samples", "0", "--quiet",
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["levels"] == 8 and metrics["image_shape"] == [1, 6, 5] and "samples.png" not in os.listdir(out)
    out = tmp_path / "mix"
    assert cli.main(["train", "pixelcnn", path, "--head", "logistic_mixture", "--levels", "8", "--mixtures", "2",
                     "--channels", "2", "--layers", "1", "--kernel-size", "3", "--epochs", "1", "--samples", "2",
                     "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mixtures"] == 2 and metrics["head"] == "logistic_mixture" and metrics["nll_test_nats"] > 0


def test_train_made_on_flattened_images(digits, tmp_path):
    out = tmp_path / "made"
    assert cli.main(["train", "made", digits, "--binarize", "stochastic", "--hidden", "16", "16", "--num-masks",
                     "2", "--order-agnostic", "--epochs", "1", "--samples", "3", "--quiet", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["made.pt", "metrics.json", "samples.png", "training_curve.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["inputs"] == 64 and metrics["num_masks"] == 2 and metrics["hidden"] == [16, 16]
    for key in ("nll_train_nats", "nll_test_nats", "nll_test_nats_ensemble"):
        assert 0 < metrics[key] < 64 * np.log(2) * 2
    model = genkernels.MADE.load(str(out / "made.pt"))
    assert model.num_masks == 2 and model.n_inputs == 64


@pytest.mark.parametrize("argv, message", [
    (["pixelcnn", "{digits}", "--epochs", "1"], "binary"),                               # not 0/1
    (["made", "{digits}", "--epochs", "1"], "0 and 1"),
    (["pixelcnn", "{digits}", "--head", "categorical", "--binarize", "threshold"], "--binarize threshold applies"),
    (["pixelcnn", "{digits}", "--binarize", "threshold", "--kernel-size", "4"], "odd"),
    (["made", "{digits}", "--binarize", "threshold", "--image-size", "4", "4"], "--image-size 4 4"),
    (["pixelcnn", "{digits}", "--binarize", "threshold", "--out", "{file}"], "--out"),
])
def test_bad_input_fails_before_training(digits, tmp_path, capsys, argv, message):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv = [a.format(digits=digits, file=blocker) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o")]
    assert cli.main(["train", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genkernels: error:") and message in err, err
    assert not (tmp_path / "o" / "metrics.json").exists()
