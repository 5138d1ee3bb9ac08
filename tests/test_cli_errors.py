"""The command line facing bad input: one line `genkernels: error: ...`, exit 2, nothing
trained before the outputs are known to be writable, nothing lost after."""

import gzip
import os
import stat

import numpy as np
import pytest
import torch

from genkernels import SOM, cli


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random((40, 3)).astype(np.float32))
    return str(path)


def _error(capsys, argv) -> str:
    """Run the CLI expecting exit 2 and one error line; return that line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("genkernels: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def no_training(monkeypatch):
    """Training raises: the checks under test must come before any training."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the output paths were checked")
    monkeypatch.setattr(SOM, "fit", refuse)
    from genkernels import RBM
    monkeypatch.setattr(RBM, "fit", refuse)


@pytest.mark.parametrize("model", ["som", "rbm"])
@pytest.mark.parametrize("where", ["out_is_file", "out_under_file", "model_file_is_folder",
                                   "checkpoint_under_file", "checkpoint_is_folder"])
def test_bad_output_paths_fail_before_training(tmp_path, data, capsys, no_training, model, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out, extra = tmp_path / "out", []
    if where == "out_is_file":
        out = blocker
    elif where == "out_under_file":
        out = blocker / "out"
    elif where == "model_file_is_folder":
        (out / f"{model}.pt").mkdir(parents=True)
    elif where == "checkpoint_under_file":
        extra = ["--checkpoint", str(blocker / "ck.pt")]
    else:
        (tmp_path / "ck.pt").mkdir()
        extra = ["--checkpoint", str(tmp_path / "ck.pt")]
    err = _error(capsys, ["train", model, data, "--quiet", "--out", str(out), *extra])
    option = "--checkpoint" if where.startswith("checkpoint") else "--out"
    assert f"error: {option}: " in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_fails_before_training(tmp_path, data, capsys, no_training):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert "--out" in _error(capsys, ["train", "som", data, "--quiet", "--out", str(folder / "o")])
    finally:
        folder.chmod(stat.S_IRWXU)


def test_outputs_created_before_training(tmp_path, data):
    out = tmp_path / "a" / "b"
    ck = tmp_path / "c" / "ck.pt"
    assert cli.main(["train", "som", data, "--quiet", "--epochs", "1", "--out", str(out),
                     "--checkpoint", str(ck)]) == 0
    assert (out / "som.pt").is_file() and ck.is_file()


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "--device cuda"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--sigma", "3", "2", "1"], "--sigma takes START \\[END\\]"),
    (["--learning-rate", "0.5", "0.1", "0.01"], "--learning-rate takes START \\[END\\]"),
    (["--grid", "2", "3", "4"], "--grid takes ROWS COLS or N"),
    (["--batch-size", "8"], "--batch-size applies to --mode minibatch"),
    (["--resume"], "--resume continues from --checkpoint"),
])
def test_som_option_errors(tmp_path, data, capsys, argv, message):
    import re
    if argv[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    err = _error(capsys, ["train", "som", data, "--quiet", "--out", str(tmp_path / "o"), *argv])
    assert re.search(message, err), err


@pytest.mark.parametrize("argv, message", [
    (["--method", "cd", "--pt-betas", "4"], "--pt-betas applies to --method pt"),
    (["--learn-variance"], "--learn-variance applies to --visible gaussian"),
    (["--resume"], "--resume continues from --checkpoint"),
])
def test_rbm_option_errors(tmp_path, data, capsys, argv, message):
    err = _error(capsys, ["train", "rbm", data, "--quiet", "--out", str(tmp_path / "o"), *argv])
    assert message in err, err


@pytest.mark.parametrize("model, argv", [
    ("rbm", ["--ais-betas", "-5"]), ("rbm", ["--ais-chains", "0"]), ("rbm", ["--hidden", "-1"]),
    ("rbm", ["-k", "0"]), ("rbm", ["--epochs", "-2"]), ("rbm", ["--pt-betas", "1"]),
    ("rbm", ["--learning-rate", "nan"]), ("som", ["--epochs", "0"]), ("som", ["--seed", "-1"]),
    ("som", ["--seed", str(2**64)]), ("som", ["--seed", "one"]), ("som", ["--grid", "0", "3"]),
    ("som", ["--sigma", "inf"]), ("rbm", ["--seed", "1.5"]),
])
def test_bad_numbers_are_usage_errors(tmp_path, data, capsys, model, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", model, data, "--quiet", "--out", str(tmp_path / "o"), *argv])
    assert exc.value.code == 2
    assert f"error: argument {argv[0]}" in capsys.readouterr().err


def _write(tmp_path, name, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def _npy_bytes(array) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


IDX_HEADER = bytes([0, 0, 8, 1]) + (1000).to_bytes(4, "big")
BAD_FILES = {
    "empty.csv": (b"", "is empty"),
    "header.csv": (b"a,b,c\n", "header row and no data rows"),
    "binary.csv": (bytes(range(256)) * 4, "not a text"),
    "words.csv": (b"1,2\nx,y\n", "not a numeric CSV"),
    "zero.npy": (b"", "not a readable .npy"),
    "truncated.npy": (_npy_bytes(np.arange(100.0))[:150], "not a readable .npy"),
    "scalar.npy": (_npy_bytes(np.array(3.0)), "0-d array"),
    "structured.npy": (_npy_bytes(np.zeros(3, dtype=[("a", "f4"), ("b", "i4")])), "expected a numeric array"),
    "strings.npy": (_npy_bytes(np.array(["a", "b"])), "expected a numeric array"),
    "complex.npy": (_npy_bytes(np.ones((4, 2), complex)), "complex numbers"),
    "cut-idx1-ubyte.gz": (gzip.compress(IDX_HEADER + bytes(1000))[:30], "not a readable IDX"),
    "d0-idx1-ubyte": (bytes([0, 0, 8, 0]), "declares 0 dimensions"),
    "d255-idx1-ubyte": (bytes([0, 0, 8, 255]) + b"\xff" * 1020, "declares 255 dimensions"),
    "huge-idx3-ubyte": (bytes([0, 0, 8, 3]) + b"\xff" * 12 + b"abc", "truncated"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
@pytest.mark.parametrize("model", ["som", "rbm"])
def test_bad_data_files(tmp_path, capsys, name, model):
    content, message = BAD_FILES[name]
    path = _write(tmp_path, name, content)
    err = _error(capsys, ["train", model, path, "--quiet", "--out", str(tmp_path / "o")])
    assert message in err and name in err, err
    assert not (tmp_path / "o" / f"{model}.pt").exists()


def test_debug_shows_the_exception(tmp_path):
    path = _write(tmp_path, "empty.csv", b"")
    with pytest.raises(ValueError, match="is empty"):
        cli.main(["--debug", "train", "som", path, "--quiet", "--out", str(tmp_path / "o")])


def test_diverged_training_writes_nothing(tmp_path, data, capsys, monkeypatch):
    def diverge(self, *args, **kwargs):
        with torch.no_grad():
            self.weights.fill_(float("nan"))
        return self
    monkeypatch.setattr(SOM, "fit", diverge)
    err = _error(capsys, ["train", "som", data, "--quiet", "--out", str(tmp_path / "o")])
    assert "training diverged" in err and "NaN" in err
    assert not (tmp_path / "o" / "som.pt").exists() and not (tmp_path / "o" / "metrics.json").exists()
