"""`genkernels train rbm`: model, metrics and figures; the same model as RBM.fit; resume."""
import gzip
import json
import math
import os
import re

import numpy as np
import pytest
import torch

from genkernels import RBM, cli
from genkernels.data import load_digits


def _digits(n=150):
    return load_digits()[0][:n]


def _split(n, fraction=0.1, seed=0):
    n_test = min(round(fraction * n), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def test_train_rbm_writes_the_model_fit_would_train_with_metrics_and_figures(tmp_path):
    x = _digits()
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    rc = cli.main(["train", "rbm", str(tmp_path / "x.npy"), "--hidden", "12", "--method", "pcd", "-k", "2",
                   "--epochs", "2", "--batch-size", "16", "--learning-rate", "0.05", "--momentum", "0.5",
                   "--seed", "4", "--out", str(out), "--quiet"])
    assert rc == 0
    assert {"rbm.pt", "metrics.json", "filters.png", "samples.png", "training_curve.png"} <= set(os.listdir(out))
    train, test = _split(150, seed=4)
    expected = RBM(64, 12, seed=4).fit(x[train], epochs=2, batch_size=16, method="pcd", k=2, learning_rate=0.05,
                                       momentum=0.5, verbose=False)
    model = RBM.load(str(out / "rbm.pt"))
    for name, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["samples_train"] == 135 and metrics["samples_test"] == 15
    assert metrics["reconstruction_error_test"] == pytest.approx(expected.reconstruction_error(x[test]))
    assert metrics["pseudo_likelihood_test"] == pytest.approx(float(expected.score(x[test]).mean()))
    # 12 hidden units: the test log-likelihood is exact
    assert metrics["log_likelihood_method"] == "exact"
    assert metrics["log_likelihood_test"] == pytest.approx(float(expected.log_likelihood_exact(x[test]).mean()))
    assert [h["reconstruction_error"] for h in metrics["history"]] == \
        [h["reconstruction_error"] for h in expected.history]


def test_train_rbm_ais_binarize_checkpoint_and_resume(tmp_path):
    np.save(tmp_path / "x.npy", _digits(100))
    ck = str(tmp_path / "ck.pt")
    args = ["train", "rbm", str(tmp_path / "x.npy"), "--hidden", "20", "--binarize", "threshold",
            "--ais-chains", "10", "--ais-betas", "50", "--epochs", "1", "--checkpoint", ck,
            "--out", str(tmp_path / "o"), "--quiet", "--monitor", "pseudo_likelihood"]
    assert cli.main(args) == 0
    assert RBM.load(ck).epochs_done == 1
    assert cli.main(args + ["--resume", "--epochs", "2"]) == 0
    resumed = RBM.load(ck)
    assert resumed.epochs_done == 2
    train, _ = _split(100)
    whole = RBM(64, 20, seed=0).fit((_digits(100)[train] > 0.5).astype(np.float32), epochs=2,
                                    monitor="pseudo_likelihood", verbose=False)
    assert torch.equal(resumed.weights, whole.weights)
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["log_likelihood_method"] == "ais (10 chains, 50 betas)"
    assert math.isfinite(metrics["log_likelihood_test"]) and metrics["log_likelihood_stderr"] > 0
    assert list(metrics["history"][0]) == ["epoch", "pseudo_likelihood"]


def test_train_rbm_scales_idx_images_and_gaussian_csv(tmp_path):
    imgs = np.random.default_rng(2).integers(0, 256, (40, 3, 3)).astype(np.uint8)
    path = tmp_path / "imgs-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in imgs.shape) + imgs.tobytes())
    assert cli.main(["train", "rbm", str(path), "--hidden", "4", "--epochs", "1", "--batch-size", "8",
                     "--test-fraction", "0", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    expected = RBM(9, 4, seed=0).fit(imgs.reshape(40, 9) / 255, epochs=1, batch_size=8, verbose=False)
    assert torch.allclose(RBM.load(str(tmp_path / "a" / "rbm.pt")).weights, expected.weights, atol=1e-6)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["samples_test"] == 0 and "reconstruction_error_test" not in metrics

    x = np.random.default_rng(3).normal(5.0, 2.0, (50, 4))
    np.savetxt(tmp_path / "g.csv", x, delimiter=",")
    assert cli.main(["train", "rbm", str(tmp_path / "g.csv"), "--visible", "gaussian", "--learn-variance",
                     "--hidden", "3", "--epochs", "2", "--learning-rate", "0.01", "--out", str(tmp_path / "g"),
                     "--quiet"]) == 0
    model = RBM.load(str(tmp_path / "g" / "rbm.pt"))
    assert model.visible == "gaussian" and model.learn_variance
    assert {"filters.png", "rbm.pt"} <= set(os.listdir(tmp_path / "g"))  # 4 = 2 x 2 visible units
    assert "samples.png" not in os.listdir(tmp_path / "g")
    assert json.loads((tmp_path / "g" / "metrics.json").read_text())["log_likelihood_method"] == "exact"


def test_train_rbm_parallel_tempering(tmp_path):
    np.save(tmp_path / "x.npy", _digits(60))
    out = tmp_path / "pt"
    assert cli.main(["train", "rbm", str(tmp_path / "x.npy"), "--hidden", "6", "--method", "pt", "--pt-betas", "3",
                     "--epochs", "1", "--batch-size", "10", "--out", str(out), "--quiet"]) == 0
    train, _ = _split(60)
    expected = RBM(64, 6, seed=0).fit(_digits(60)[train], epochs=1, batch_size=10, method="pt", pt_betas=3,
                                      verbose=False)
    assert torch.equal(RBM.load(str(out / "rbm.pt")).weights, expected.weights)
    assert len(json.loads((out / "metrics.json").read_text())["history"][0]["swap_acceptance"]) == 2


def test_train_rbm_bad_options(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    base = ["train", "rbm", str(tmp_path / "x.npy"), "--quiet", "--out", str(tmp_path / "o")]
    for extra, message in ((["--scale", "unit"], "--scale unit"),
                           (["--visible", "gaussian", "--binarize", "threshold"],
                            "--binarize threshold applies to --visible bernoulli"),
                           (["--test-fraction", "1"], "--test-fraction"),
                           (["--scale", "standard"], r"values in \[0, 1\]"),
                           (["--method", "gibbs"], "method")):
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("genkernels: error: ") and err.count("\n") == 1, err
        assert re.search(message, err), err
    with pytest.raises(ValueError, match="method"):
        cli.main(["--debug"] + base + ["--method", "gibbs"])


def test_train_rbm_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "rbm", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "usage: genkernels train rbm" in out and "--distributed" in out
