"""Data-parallel RBM training over two gloo processes on CPU equals one process.

One pair of processes (mp.spawn, file:// rendezvous) runs every distributed case and saves
what each rank ends with; the tests compare those with single-process runs."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genkernels import RBM, cli
from genkernels.data import load_digits

WORLD = 2
# CD-1 and PCD-2 with every option: 103 rows in batches of 11 (the last one 4 rows, shares
# of 5 / 6 and 2 / 2 rows), 10 updates in one epoch
SHORT = {"epochs": 1, "batch_size": 11, "learning_rate": 0.05, "momentum": 0.5, "weight_decay": 1e-4,
         "sparsity_target": 0.1, "verbose": False}
SHORT_CASES = {"cd": {"method": "cd", "k": 1}, "pcd": {"method": "pcd", "k": 2},
               "pt": {"method": "pt", "k": 1, "pt_betas": 3}}
# 5 epochs of PCD-1 on 600 digits in batches of 20: 150 updates
LONG = {"epochs": 5, "batch_size": 20, "method": "pcd", "learning_rate": 0.05, "verbose": False}
# checkpoint / resume: PCD on 40 rows in batches of 10 (4 updates per epoch)
RESUME = {"batch_size": 10, "method": "pcd", "k": 1, "learning_rate": 0.1, "momentum": 0.5, "verbose": False}


def _binary_digits(n):
    x, _ = load_digits()
    u = np.random.default_rng(0).random(x.shape)
    return (u < x).astype(np.float32)[:n]


def _gaussian_digits(n):
    x, _ = load_digits()
    x = x[:n].astype(np.float64)
    return ((x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)).astype(np.float32)


def _state(rbm):
    return {"state": {k: v.clone() for k, v in rbm.state_dict().items()}, "offset": rbm.offset,
            "history": list(rbm.history), "epochs_done": rbm.epochs_done}


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        x = _binary_digits(103)
        for name, case in SHORT_CASES.items():
            results[name] = _state(RBM(64, 12, seed=3).fit(x, **SHORT, **case, distributed=True))
        # batches of one row: rank 0's share of every batch and of the one chain is empty
        results["single_rows"] = _state(RBM(64, 12, seed=3).fit(x[:7], **{**SHORT, "batch_size": 1},
                                                                method="pcd", distributed=True))
        g = _gaussian_digits(103)
        results["gaussian"] = _state(RBM(64, 12, "gaussian", learn_variance=True, seed=3).fit(
            g, **{**SHORT, "learning_rate": 0.01}, method="cd", distributed=True))
        results["long"] = _state(RBM(64, 16, seed=5).fit(_binary_digits(600), **LONG, distributed=True))
        xr = _binary_digits(40)
        ck = os.path.join(out_dir, "resume.pt")
        RBM(64, 8, seed=9).fit(xr, epochs=2, checkpoint=ck, **RESUME, distributed=True)
        # every rank sees the whole checkpoint once fit returns (rank 0 wrote it before the barrier)
        results["checkpoint_epochs"] = RBM.load(ck).epochs_done
        resumed = RBM(64, 8, seed=9).fit(xr, epochs=4, checkpoint=ck, resume=True, **RESUME, distributed=True)
        results["resumed"] = _state(resumed)
        results["whole"] = _state(RBM(64, 8, seed=9).fit(xr, epochs=4, **RESUME, distributed=True))
        if rank == 0:
            torch.save(RBM.load(ck).state_dict(), os.path.join(out_dir, "resumed_checkpoint_state.pt"))
        RBM(64, 8, seed=9).fit(xr, epochs=2, checkpoint=os.path.join(out_dir, "half.pt"), **RESUME,
                               distributed=True)
        try:  # rank 1 holds other rows: every rank raises the same error
            RBM(64, 8, seed=9).fit(xr[:39] if rank else xr, epochs=1, verbose=False, distributed=True)
        except ValueError as exc:
            results["mismatch"] = str(exc)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("rbm_distributed")
    mp.spawn(_worker, args=(WORLD, str(out / "rdv"), str(out)), nprocs=WORLD, join=True)
    return out, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _assert_close(dist_state, single, atol=1e-5):
    for name, value in single.state_dict().items():
        assert torch.allclose(dist_state["state"][name].to(value.dtype), value, rtol=0, atol=atol), name
    assert dist_state["offset"] == single.offset


def test_every_rank_holds_the_same_model(ranks):
    _, (r0, r1) = ranks
    for case in ("cd", "pcd", "pt", "single_rows", "gaussian", "long", "resumed", "whole"):
        assert r0[case]["offset"] == r1[case]["offset"]
        assert r0[case]["history"] == r1[case]["history"], case
        for name, value in r0[case]["state"].items():
            assert torch.equal(value, r1[case]["state"][name]), (case, name)


@pytest.mark.parametrize("method", ["cd", "pcd", "pt"])
def test_ten_updates_on_two_processes_equal_one(ranks, method):
    _, (r0, _) = ranks
    single = RBM(64, 12, seed=3).fit(_binary_digits(103), **SHORT, **SHORT_CASES[method])
    _assert_close(r0[method], single)
    # the persistent chains (gathered from both ranks) are the single process's chains
    assert torch.equal(r0[method]["state"]["chains"], single.chains)
    assert r0[method]["history"][0]["reconstruction_error"] == pytest.approx(
        single.history[0]["reconstruction_error"], rel=1e-5)
    if method == "pt":  # the swap counts of both processes add up to the single process's
        assert r0[method]["history"][0]["swap_acceptance"] == single.history[0]["swap_acceptance"]
        assert single.chains.shape == (3 * SHORT["batch_size"], 12)


def test_empty_shares_of_one_row_batches(ranks):
    _, (r0, r1) = ranks
    single = RBM(64, 12, seed=3).fit(_binary_digits(7), **{**SHORT, "batch_size": 1}, method="pcd")
    for r in (r0, r1):
        _assert_close(r["single_rows"], single)
        assert torch.equal(r["single_rows"]["state"]["chains"], single.chains)


def test_gaussian_learned_variance_on_two_processes_equals_one(ranks):
    _, (r0, _) = ranks
    single = RBM(64, 12, "gaussian", learn_variance=True, seed=3).fit(
        _gaussian_digits(103), **{**SHORT, "learning_rate": 0.01}, method="cd")
    _assert_close(r0["gaussian"], single)


def test_long_run_matches_one_process_by_reconstruction_error(ranks):
    _, (r0, _) = ranks
    single = RBM(64, 16, seed=5).fit(_binary_digits(600), **LONG)
    errors = [h["reconstruction_error"] for h in r0["long"]["history"]]
    single_errors = [h["reconstruction_error"] for h in single.history]
    # 150 updates: a draw may flip late in a run, so compare the quality each epoch: within 2 %
    # (measured here: the same to 1e-7, weights within 2.1e-7, no draw flipped)
    assert np.allclose(errors, single_errors, rtol=0.02), (errors, single_errors)
    untrained = RBM(64, 16, seed=5).reconstruction_error(_binary_digits(600))  # 0.2505
    assert errors[-1] < 0.6 * untrained  # 0.1421: it learned


def test_resume_from_a_distributed_checkpoint_equals_an_uninterrupted_run(ranks):
    out, (r0, _) = ranks
    assert r0["checkpoint_epochs"] == 2
    resumed, whole = r0["resumed"], r0["whole"]
    assert resumed["offset"] == whole["offset"] and resumed["history"] == whole["history"]
    for name, value in whole["state"].items():
        assert torch.equal(resumed["state"][name], value), name
    # the checkpoint holds the whole model: all chains, the stream position
    saved = torch.load(out / "resumed_checkpoint_state.pt")
    for name, value in whole["state"].items():
        assert torch.equal(saved[name], value), name
    assert saved["chains"].shape == (RESUME["batch_size"], 8)


def test_one_process_resumes_a_two_process_checkpoint(ranks, tmp_path):
    out, (r0, _) = ranks
    ck = tmp_path / "half.pt"
    ck.write_bytes((out / "half.pt").read_bytes())
    single = RBM(64, 8, seed=9).fit(_binary_digits(40), epochs=4, checkpoint=str(ck), resume=True, **RESUME)
    _assert_close(r0["whole"], single)
    assert torch.equal(r0["whole"]["state"]["chains"], single.chains)


def test_ranks_with_different_data_raise(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        assert "the same rows in the same order" in r["mismatch"]


def test_distributed_needs_a_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    x = _binary_digits(20)
    with pytest.raises(RuntimeError, match="no process group is initialised"):
        RBM(64, 8, seed=0).fit(x, epochs=1, verbose=False, distributed=True)
    with pytest.raises(TypeError, match="distributed must be a bool"):
        RBM(64, 8, seed=0).fit(x, epochs=1, verbose=False, distributed="yes")


def test_cli_under_torchrun_equals_one_process(tmp_path):
    np.save(tmp_path / "x.npy", _binary_digits(120))
    args = ["train", "rbm", str(tmp_path / "x.npy"), "--hidden", "12", "--method", "pcd", "--epochs", "1",
            "--batch-size", "10", "--learning-rate", "0.05", "--quiet"]
    # --standalone: torchrun picks a free port itself (no window for another process to take it)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "genkernels", *args, "--distributed", "--out", str(tmp_path / "dist"),
           "--checkpoint", str(tmp_path / "ck.pt")]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    # the single process in this one: the same command through cli.main
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    trained, single = RBM.load(str(tmp_path / "dist" / "rbm.pt")), RBM.load(str(tmp_path / "one" / "rbm.pt"))
    _assert_close(_state(trained), single)  # 11 updates
    assert torch.equal(trained.chains, single.chains)
    assert RBM.load(str(tmp_path / "ck.pt")).epochs_done == 1
    assert {"metrics.json", "filters.png", "samples.png"} <= set(os.listdir(tmp_path / "dist"))
