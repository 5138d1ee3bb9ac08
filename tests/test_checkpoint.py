"""Checkpoint files: what is at the path, modes, leftovers of killed saves, field checks."""

import os
import stat
import subprocess
import sys

import pytest
import torch

from genkernels import checkpoint as ckpt

PAYLOAD = {"config": {"n": 1}, "state": {"w": torch.ones(2, 3)}}


def test_symlink_is_written_through(tmp_path):
    target = tmp_path / "real.pt"
    link = tmp_path / "link.pt"
    os.symlink(target, link)
    ckpt.save_atomic(PAYLOAD, str(link), "Test")
    assert os.path.islink(link), "the link was replaced by a file"
    assert target.is_file()
    assert torch.equal(ckpt.read(str(link), "Test")["state"]["w"], torch.ones(2, 3))


@pytest.mark.parametrize("make", ["fifo", "device_link", "folder"])
def test_non_regular_target_is_refused(tmp_path, make):
    path = tmp_path / "target.pt"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "device_link":
        os.symlink("/dev/null", path)
    else:
        path.mkdir()
    before = os.lstat(path)
    with pytest.raises(ValueError, match="path"):
        ckpt.save_atomic(PAYLOAD, str(path), "Test")
    after = os.lstat(path)
    assert (before.st_ino, before.st_mode) == (after.st_ino, after.st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_new_file_follows_umask_and_replaced_file_keeps_mode(tmp_path):
    path = tmp_path / "ck.pt"
    old = os.umask(0o027)
    try:
        ckpt.save_atomic(PAYLOAD, str(path), "Test")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    os.chmod(path, 0o604)
    ckpt.save_atomic(PAYLOAD, str(path), "Test")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o604


def test_stale_temp_of_a_killed_save_is_removed(tmp_path):
    path = tmp_path / "ck.pt"
    # a save killed mid-write leaves its temp file; its process is gone
    script = (f"import os, signal, genkernels.checkpoint as c, torch\n"
              f"orig = torch.save\n"
              f"def killed(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
              f"torch.save = killed\n"
              f"c.save_atomic({{'config': {{}}}}, {str(path)!r}, 'Test')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    stale = [p for p in os.listdir(tmp_path) if p.startswith(".tmp-ck.pt.")]
    assert len(stale) == 1
    # a temp of a live writer (this process's parent) must survive
    live = tmp_path / f".tmp-ck.pt.{os.getppid()}.abc.pt"
    live.write_bytes(b"")
    ckpt.save_atomic(PAYLOAD, str(path), "Test")
    left = sorted(p for p in os.listdir(tmp_path) if p.startswith(".tmp-"))
    assert left == [live.name]
    # another checkpoint's temp files are not touched
    other = tmp_path / ".tmp-other.pt.999999999.x.pt"
    other.write_bytes(b"")
    ckpt.save_atomic(PAYLOAD, str(path), "Test")
    assert other.exists()


@pytest.mark.parametrize("where", ["under_file", "file_is_folder_path"])
def test_check_output_path_before_work(tmp_path, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "ck.pt" if where == "under_file" else blocker
    if where == "under_file":
        with pytest.raises(ValueError, match="checkpoint: cannot write .* is a file, not a folder"):
            ckpt.check_output_path(str(path), "checkpoint")
        with pytest.raises(ValueError, match="out: cannot write .* is a file, not a folder"):
            ckpt.check_output_dir(str(path), "out")
    else:
        assert ckpt.check_output_path(str(path), "checkpoint") == str(path)
        with pytest.raises(ValueError, match="out: cannot write .* is a file, not a folder"):
            ckpt.check_output_dir(str(path), "out")


def test_check_output_path_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "ck.pt"
    ckpt.check_output_path(str(path))
    assert path.parent.is_dir() and not path.exists()
    assert os.listdir(path.parent) == []


def test_field_validators_name_the_field():
    payload = {"offset": -1, "state": {"w": torch.ones(2, 3)}, "name": 3, "flag": True}
    with pytest.raises(ValueError, match="'missing' is missing"):
        ckpt.field(payload, "missing", int)
    with pytest.raises(ValueError, match="'name' must be str"):
        ckpt.field(payload, "name", str)
    with pytest.raises(ValueError, match="'flag' must be an int"):
        ckpt.int_field(payload, "flag")
    with pytest.raises(ValueError, match=r"'offset' must lie in \[0, "):
        ckpt.int_field(payload, "offset", 0)
    module = torch.nn.Module()
    module.register_buffer("w", torch.zeros(2, 3))
    assert ckpt.check_state(payload, module)["w"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"'state.w' must be a \(2, 3\).*got \(3, 2\)"):
        ckpt.check_state({"state": {"w": torch.ones(3, 2)}}, module)
    with pytest.raises(ValueError, match="'state.w' must be a .*float32"):
        ckpt.check_state({"state": {"w": torch.ones(2, 3, dtype=torch.float64)}}, module)
    with pytest.raises(ValueError, match="'state.w' holds NaN"):
        ckpt.check_state({"state": {"w": torch.full((2, 3), float("nan"))}}, module)
    with pytest.raises(ValueError, match="missing \\['w'\\]"):
        ckpt.check_state({"state": {}}, module)
    with pytest.raises(ValueError, match="must hold only \\(0, 1\\); got the value 7"):
        ckpt.check_state({"state": {"w": torch.full((2, 3), 7.0)}}, module, values={"w": (0, 1)})
