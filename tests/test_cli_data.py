"""The command line and the data loaders."""
import gzip
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from tests_paths import MNIST_DIR

from genkernels import SOM, cli
from genkernels.data import load_array, load_idx, load_mnist


def _write_idx(path, arr, compress=False):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D}
    arr = np.asarray(arr)
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    imgs = np.random.randint(0, 255, (7, 4, 3)).astype(np.uint8)
    path = str(tmp_path / ("x-idx3-ubyte" + (".gz" if compress else "")))
    _write_idx(path, imgs, compress)
    assert np.array_equal(load_idx(path), imgs)
    assert load_array(path).shape == (7, 12)
    floats = np.random.rand(5, 2).astype(">f4")
    _write_idx(str(tmp_path / "f.idx"), floats)
    assert np.allclose(load_idx(str(tmp_path / "f.idx")), floats)


def test_bad_files(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(str(tmp_path / "bad.idx"))
    trunc = tmp_path / "t-idx1-ubyte"
    trunc.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(ValueError, match="truncated"):
        load_idx(str(trunc))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_array(str(tmp_path / "nothing.npy"))
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_array(str(tmp_path / "x.parquet"))


def test_csv_with_and_without_header(tmp_path):
    (tmp_path / "a.csv").write_text("f1,f2,f3\n1,2,3\n4,5,6\n")
    (tmp_path / "b.csv").write_text("1 2 3\n4 5 6\n")
    assert np.array_equal(load_array(str(tmp_path / "a.csv")), [[1, 2, 3], [4, 5, 6]])
    assert np.array_equal(load_array(str(tmp_path / "b.csv")), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="MNIST test set not present")
def test_mnist_loads():
    x, y = load_mnist(MNIST_DIR)
    assert x.shape == (10000, 784) and y.shape == (10000,)
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) == set(range(10))


def test_train_som_command_writes_model_figures_metrics(tmp_path):
    x = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "y.csv", np.arange(120) % 3, fmt="%d")
    out = tmp_path / "out"
    rc = cli.main(["train", "som", str(tmp_path / "x.npy"), "--grid", "5", "6", "--topology", "hexagonal",
                   "--epochs", "3", "--labels", str(tmp_path / "y.csv"), "--out", str(out), "--quiet",
                   "--scale", "standard"])
    assert rc == 0
    assert {"som.pt", "metrics.json", "umatrix.png", "hit_map.png", "component_planes.png",
            "labels_map.png", "training_curve.png"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    model = SOM.load(str(out / "som.pt"))
    assert model.topology == "hexagonal" and model.grid == (5, 6)
    assert metrics["quantization_error"] > 0


def test_train_som_online_from_idx_and_resume(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 255, (60, 3, 3)).astype(np.uint8)
    path = str(tmp_path / "imgs-idx3-ubyte.gz")
    _write_idx(path, imgs, compress=True)
    ck = str(tmp_path / "ck.pt")
    args = ["train", "som", path, "--grid", "4", "--mode", "online", "--epochs", "2", "--out",
            str(tmp_path / "o"), "--quiet", "--scale", "minmax", "--checkpoint", ck]
    assert cli.main(args) == 0
    assert int(SOM.load(ck).epochs_done) == 2
    assert cli.main(args + ["--resume", "--epochs", "3"]) == 0
    assert int(SOM.load(ck).epochs_done) == 3


def test_help_of_every_command(capsys):
    # `python -m genkernels` once, in a new process; every command's help through cli.main
    res = subprocess.run([sys.executable, "-m", "genkernels", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "usage: genkernels" in res.stdout
    for args in (["--help"], ["demo", "--help"], ["train", "som", "--help"], ["bench", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(args)
        assert exc.value.code == 0, args
        assert f"usage: genkernels {' '.join(args[:-1])}".rstrip() in capsys.readouterr().out, args


def test_demo_writes_report_and_figures(tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet", "--epochs", "4"]) == 0
    names = set(os.listdir(tmp_path))
    assert {"report.md", "umatrix.png", "hit_map.png", "labels_map.png", "component_planes.png",
            "training_curve.png", "patch_som_reconstruction.png", "softsom_digits.png", "rbm_filters.png",
            "rbm_samples.png"} <= names
    report = (tmp_path / "report.md").read_text()
    assert "quantization error" in report and "accuracy" in report
    assert "![patch_som_reconstruction.png](patch_som_reconstruction.png)" in report
    assert "![softsom_digits.png](softsom_digits.png)" in report
    # the RBM's AIS estimate of the test log-likelihood lies near the exact value
    import re
    m = re.search(r"Test log-likelihood of the odd-numbered digits: (-?[\d.]+) ± ([\d.]+) nats by "
                  r"annealed importance sampling .*?, (-?[\d.]+) nats exactly", report, re.S)
    assert m, report
    ais, err, exact = map(float, m.groups())
    assert abs(ais - exact) <= max(3 * err, 0.05)
    # the autoregressive models beat the uniform density of 64 binary pixels (44.4 nats) on held-out digits
    assert "![autoregressive_samples.png](autoregressive_samples.png)" in report
    pixelcnn = re.search(r"\| Gated PixelCNN, .*? \| ([\d.]+) \|", report)
    made = re.search(r"\| MADE .*? \| ([\d.]+) / ([\d.]+) \|", report)
    assert pixelcnn and made, report
    assert 0 < float(pixelcnn.group(1)) < 64 * math.log(2) and 0 < float(made.group(2)) < 64 * math.log(2)
