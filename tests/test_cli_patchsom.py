"""`genkernels train patchsom`: the model PatchSOM.fit trains, metrics and figures; image
files in every layout; bad options and data fail before training with one line."""
import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch

from genkernels import PatchSOM, cli
from genkernels.data import load_digits


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("genkernels: error: ") and err.count("\n") == 1, err
    return err


def test_train_patchsom_writes_the_model_fit_would_train(tmp_path):
    x = load_digits()[0][:120]
    np.save(tmp_path / "x.npy", x)   # rows of 64 values: --image-size 8 8
    out = tmp_path / "out"
    argv = ["train", "patchsom", str(tmp_path / "x.npy"), "--image-size", "8", "8", "--grid", "4", "3",
            "--kernel-size", "3", "--stride", "2", "1", "--epochs", "3", "--sigma", "2", "0.5", "--seed", "5",
            "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    assert set(os.listdir(out)) == {"patchsom.pt", "metrics.json", "reconstruction.png", "training_curve.png"}
    images = torch.as_tensor(x).reshape(-1, 1, 8, 8)
    expected = PatchSOM((4, 3), 3, (2, 1), sigma=(2, 0.5), seed=5).fit(images, epochs=3, verbose=False)
    model = PatchSOM.load(str(out / "patchsom.pt"))
    assert torch.equal(model.codebook, expected.codebook)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quantization_error"] == pytest.approx(expected.quantization_error(images))
    assert metrics["reconstruction_mse"] == pytest.approx(float(expected.reconstruct(images)[1]))
    hp, wp = expected.patch_grid(8, 8)
    assert (metrics["images"], metrics["channels"], metrics["patches"]) == (120, 1, 120 * hp * wp)
    assert metrics["kernel_size"] == [3, 3] and metrics["stride"] == [2, 1] and len(metrics["history"]) == 3


def _idx_images(path, images: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", *images.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())


def test_image_layouts_and_scaling(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (30, 9, 7), dtype=np.uint8)
    _idx_images(tmp_path / "img-idx3-ubyte.gz", raw)
    assert cli.main(["train", "patchsom", str(tmp_path / "img-idx3-ubyte.gz"), "--grid", "3", "3", "--epochs", "1",
                     "--kernel-size", "3", "2", "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    # IDX bytes scaled to [0, 1] (auto -> unit): the same map as the scaled images
    expected = PatchSOM((3, 3), (3, 2), seed=0).fit(torch.as_tensor(raw / 255.0, dtype=torch.float32), epochs=1,
                                                    verbose=False)
    assert torch.equal(PatchSOM.load(str(tmp_path / "idx" / "patchsom.pt")).codebook, expected.codebook)
    # two channels, (N, C, H, W), minmax over the whole file
    two = rng.normal(size=(20, 2, 6, 6)) * 10 + 3
    np.save(tmp_path / "two.npy", two)
    assert cli.main(["train", "patchsom", str(tmp_path / "two.npy"), "--grid", "5", "--scale", "minmax",
                     "--epochs", "2", "--out", str(tmp_path / "two"), "--quiet", "--mode", "online"]) == 0
    model = PatchSOM.load(str(tmp_path / "two" / "patchsom.pt"))
    assert model.channels == 2 and model.n_nodes == 5
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["channels"] == 2


@pytest.fixture
def images(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((10, 6, 6)).astype(np.float32))
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["--kernel-size", "7"], "patch"),
    (["--kernel-size", "3", "3", "3"], "--kernel-size takes one or two numbers"),
    (["--stride", "1", "1", "1"], "--stride takes one or two numbers"),
    (["--image-size", "5", "5"], "--image-size 5 5: DATA must hold rows"),
    (["--scale", "unit"], "--scale unit divides by the largest value of an integer type"),
    (["--grid", "2", "2", "2"], "--grid takes ROWS COLS or N"),
    (["--batch-size", "8"], "--batch-size applies to --mode minibatch"),
    (["--sigma", "3", "2", "1"], "--sigma takes START \\[END\\]"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
])
def test_option_errors_before_training(tmp_path, images, capsys, monkeypatch, argv, message):
    import re

    def refuse(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(PatchSOM, "fit", refuse)
    err = _error(capsys, ["train", "patchsom", images, "--quiet", "--out", str(tmp_path / "o"), *argv])
    assert re.search(message, err), err
    assert not (tmp_path / "o" / "patchsom.pt").exists()


def test_bad_data_and_outputs(tmp_path, images, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(PatchSOM, "fit", refuse)
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((4, 10), np.float32))
    assert "DATA must hold images" in _error(capsys, ["train", "patchsom", str(rows), "--out", str(tmp_path / "o")])
    bad = np.random.default_rng(0).random((4, 6, 6))
    bad[2, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert "DATA contains NaN" in _error(capsys, ["train", "patchsom", str(tmp_path / "nan.npy"),
                                                  "--out", str(tmp_path / "o")])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "--out" in _error(capsys, ["train", "patchsom", images, "--out", str(blocker / "o")])
    (tmp_path / "o2" / "patchsom.pt").mkdir(parents=True)
    assert "--out" in _error(capsys, ["train", "patchsom", images, "--out", str(tmp_path / "o2")])


def test_diverged_map_writes_nothing(tmp_path, images, capsys, monkeypatch):
    def diverge(self, *args, **kwargs):
        with torch.no_grad():
            self.som.weights.fill_(float("nan"))
        return self
    monkeypatch.setattr(PatchSOM, "fit", diverge)
    out = tmp_path / "o"
    err = _error(capsys, ["train", "patchsom", images, "--quiet", "--out", str(out)])
    assert "diverged" in err
    assert not (out / "patchsom.pt").exists() and not (out / "metrics.json").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "patchsom", "--help"])
    assert exc.value.code == 0
    assert "--kernel-size" in capsys.readouterr().out
