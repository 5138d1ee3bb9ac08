"""Data-parallel SOM training over two gloo processes on CPU equals one process.

One pair of processes (mp.spawn, file:// rendezvous) runs every distributed fit and saves
what each rank ends with; the tests compare those with single-process runs."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genkernels import SOM

WORLD = 2


def _data():
    g = np.random.default_rng(0)
    return (g.normal(size=(301, 5)) + 3 * g.integers(0, 3, (301, 1))).astype(np.float32)


CASES = [("pca", "batch"), ("random", "batch"), ("pca", "minibatch")]


def _worker(rank, world, init_file, out_dir):
    """Every distributed fit in one pair of processes (starting a pair costs seconds): the
    three of test_two_processes_equal_one, then the sequential-sampling minibatch fit of
    test_minibatch_step_equals_one_process_on_the_union_of_the_ranks_batches."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x = _data()
        shard = np.array_split(x, world)[rank]
        for init, mode in CASES:
            som = SOM((4, 5), 5, seed=7, init=init)
            ck = os.path.join(out_dir, f"ck-{init}-{mode}.pt")
            som.fit(shard, epochs=3, mode=mode, batch_size=32, verbose=False, distributed=True, checkpoint=ck)
            torch.save(som.weights, os.path.join(out_dir, f"w-{init}-{mode}-{rank}.pt"))
        shard = np.array_split(_seq_data(), world)[rank]
        som = SOM((4, 5), 5, seed=7, init="pca")
        som.fit(shard, epochs=_SEQ_EPOCHS, mode="minibatch", batch_size=_SEQ_B, sampling="sequential",
                verbose=False, distributed=True)
        torch.save(som.weights, os.path.join(out_dir, f"w-seq-{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The folder with what both ranks saved (one mp.spawn for every case)."""
    out = tmp_path_factory.mktemp("som_distributed")
    mp.spawn(_worker, args=(WORLD, str(out / "rdv"), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("init,mode", CASES)
def test_two_processes_equal_one(ranks, init, mode):
    w0 = torch.load(ranks / f"w-{init}-{mode}-0.pt")
    w1 = torch.load(ranks / f"w-{init}-{mode}-1.pt")
    assert torch.equal(w0, w1)  # every rank holds the same map
    assert (ranks / f"ck-{init}-{mode}.pt").exists()
    back = SOM.load(str(ranks / f"ck-{init}-{mode}.pt"))
    assert torch.equal(back.weights, w0)
    if mode == "batch":
        single = SOM((4, 5), 5, seed=7, init=init).fit(_data(), epochs=3, verbose=False)
        assert torch.allclose(w0, single.weights, rtol=1e-5, atol=1e-5)
    else:
        single = SOM((4, 5), 5, seed=7, init=init).fit(_data(), epochs=3, mode=mode, batch_size=64,
                                                        verbose=False)
        x = torch.from_numpy(_data())
        qe_dist = float(torch.cdist(x, w0).min(1).values.mean())
        assert qe_dist < 1.05 * float(single.quantization_error(x))


# minibatch mode, exactly: with sequential sampling rank r's step s takes rows
# [s*b, (s+1)*b) of its shard, and the step all-reduces the sums of both ranks' batches, so
# it is one single-process step of batch 2b on the union of those rows. Interleaving the
# shards' blocks makes the single process's sequential batches exactly those unions.
_SEQ_N, _SEQ_B, _SEQ_EPOCHS = 256, 32, 2


def _seq_data():
    g = np.random.default_rng(1)
    return (g.normal(size=(_SEQ_N, 5)) + 3 * g.integers(0, 3, (_SEQ_N, 1))).astype(np.float32)


def test_minibatch_step_equals_one_process_on_the_union_of_the_ranks_batches(ranks):
    """Two gloo processes in minibatch mode (sequential sampling, batch 32 each) equal one
    process (batch 64) on the data reordered so that its batches are the unions of the
    ranks' batches. Tolerance 1e-5: the same float32 arithmetic except that each step's
    sums over 64 rows are added as two all-reduced partial sums of 32 (float summation
    order, relative error ~ 64 * 2^-24 ~ 4e-6 per sum), as in the batch-mode test above."""
    world = WORLD
    w0 = torch.load(ranks / "w-seq-0.pt")
    assert torch.equal(w0, torch.load(ranks / "w-seq-1.pt"))
    shards = np.array_split(_seq_data(), world)
    steps = len(shards[0]) // _SEQ_B
    union = np.concatenate([shard[s * _SEQ_B:(s + 1) * _SEQ_B] for s in range(steps) for shard in shards])
    single = SOM((4, 5), 5, seed=7, init="pca").fit(union, epochs=_SEQ_EPOCHS, mode="minibatch",
                                                   batch_size=world * _SEQ_B, sampling="sequential",
                                                   verbose=False)
    assert torch.allclose(w0, single.weights, rtol=1e-5, atol=1e-5), (w0 - single.weights).abs().max()
    # and the comparison is not vacuous: the natural order gives a different map
    natural = SOM((4, 5), 5, seed=7, init="pca").fit(_seq_data(), epochs=_SEQ_EPOCHS, mode="minibatch",
                                                    batch_size=world * _SEQ_B, sampling="sequential",
                                                    verbose=False)
    assert not torch.allclose(w0, natural.weights, rtol=1e-3, atol=1e-3)


def test_cli_under_torchrun(tmp_path):
    np.save(tmp_path / "x.npy", _data())
    out = tmp_path / "out"
    # --standalone: torchrun picks a free port itself (no window for another process to take it)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "genkernels", "train", "som", str(tmp_path / "x.npy"),
           "--grid", "4", "5", "--epochs", "2", "--distributed", "--quiet", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    single = SOM((4, 5), 5, seed=0).fit(_data(), epochs=2, verbose=False)
    trained = SOM.load(str(out / "som.pt"))
    assert torch.allclose(trained.weights, single.weights, rtol=1e-5, atol=1e-5)
