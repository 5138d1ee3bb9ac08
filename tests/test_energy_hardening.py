"""Regression tests of the energy family's "silently wrong results" (hardening issue):
Hopfield retrieval at extreme beta and scale, Boltzmann validation, divergence checks,
epoch/resume semantics, detached data, crafted checkpoints, 64-bit Ising indexing."""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pytest
import torch

from genkernels import DBN, RBM, BoltzmannMachine, Hopfield, Ising2D, backends, ops
from genkernels.boltzmann import rbm as rbm_module
from genkernels.ising.ops import MAX_L

from helpers import CPU_BACKENDS as _CPU  # noqa: E402
from helpers import HAS_TRITON, needs_cpu  # noqa: E402


def _toy(n=40, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.4).float()


def _same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for name, value in sa.items():
        assert torch.equal(value, sb[name]), name


# ------------------------------------------------------------------ 1. Hopfield retrieval
def _retrieval_case(scale, dtype, b, shared, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, 5, generator=g, dtype=torch.float64) * scale
    x = torch.randn(1 if shared else b, 7, 5, generator=g, dtype=torch.float64) * scale
    return q.to(dtype), x.to(dtype)


def _retrieve_with_grads(q, x, beta, backend):
    q, x = q.clone().requires_grad_(), x.clone().requires_grad_()
    out = ops.hopfield_retrieval(q, x, beta, 3, 0.0, backend=backend)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    gq, gx = torch.autograd.grad((out * w).sum(), (q, x))
    return out.detach(), gq, gx


@needs_cpu
@pytest.mark.parametrize("gemm", ["0", "1"])
@pytest.mark.parametrize("b,shared", [(6, False), (6, True), (10, True)])
@pytest.mark.parametrize("scale,beta,dtype", [(1.0, 1e9, torch.float32), (1e20, 1e9, torch.float64),
                                              (1e20, 1.0, torch.float64)])
def test_hopfield_retrieval_cpu_is_finite_and_matches_the_reference_at_extreme_beta_and_scale(
        monkeypatch, gemm, b, shared, scale, beta, dtype):
    monkeypatch.setenv("GENKERNELS_CPU_GEMM", gemm)  # per-row kernel and tiled at::mm path
    q, x = _retrieval_case(scale, dtype, b, shared)
    want = _retrieve_with_grads(q, x, beta, "reference")
    got = _retrieve_with_grads(q, x, beta, "cpu")
    for name, w, h in zip(("retrieved", "grad queries", "grad stored"), want, got):
        assert bool(torch.isfinite(w).all()), name  # the oracle is finite here
        assert bool(torch.isfinite(h).all()), f"{name}: the cpu backend gave NaN or Inf"
        tol = 1e-4 if dtype == torch.float32 else 1e-9
        torch.testing.assert_close(h, w, rtol=tol, atol=tol * max(1.0, float(w.abs().max())), msg=name)


# ------------------------------------------------------------------ 2. Boltzmann validation
def test_kl_divergence_rejects_bad_data():
    bm = BoltzmannMachine(3, 1, seed=0)
    with pytest.raises(ValueError, match=r"data must be \(M, 3\).*got shape \(4, 2\)"):
        bm.kl_divergence(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="data must hold only 0 and 1; got 2.0"):
        bm.kl_divergence(torch.tensor([[0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="data must hold only 0 and 1; got 0.5"):
        bm.kl_divergence(torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="data must hold only 0 and 1; got nan"):
        bm.kl_divergence(torch.tensor([[0.0, math.nan, 1.0]]))
    with pytest.raises(ValueError, match="data must hold at least one row"):
        bm.kl_divergence(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        bm.kl_divergence([[0, 1, 0]])
    # good data still works, bool included
    kl = bm.kl_divergence(torch.tensor([[0, 1, 0], [1, 1, 0]], dtype=torch.bool))
    assert math.isfinite(float(kl)) and float(kl) >= 0


@pytest.mark.parametrize("temperature", [0, -1.0, math.nan, math.inf])
def test_log_partition_and_probabilities_reject_bad_temperatures(temperature):
    bm = BoltzmannMachine(3, 1, seed=0)
    with pytest.raises(ValueError, match="temperature must be in"):
        bm.log_partition(temperature)
    with pytest.raises(ValueError, match="temperature must be in"):
        bm.probabilities(temperature)
    with pytest.raises(TypeError, match="temperature must be a real number"):
        bm.log_partition("1")


@pytest.mark.parametrize("init_std,exc", [(math.inf, ValueError), (math.nan, ValueError), (-0.1, ValueError),
                                          ("a", TypeError), (None, TypeError)])
def test_boltzmann_machine_init_std_must_be_finite_and_non_negative(init_std, exc):
    with pytest.raises(exc, match="init_std"):
        BoltzmannMachine(3, 1, init_std=init_std)
    assert float(BoltzmannMachine(3, 1, seed=0, init_std=0).weights.abs().max()) == 0


@pytest.mark.parametrize("backend", sorted(set(_CPU) & {"reference", "cpu", "triton"}))
def test_rbm_half_step_rejects_uint8_states_other_than_0_and_1(backend):
    w, bias = torch.zeros(4, 3), torch.zeros(3)
    s = torch.tensor([[0, 1, 7, 0]], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"s must hold binary states \(0 or 1\); got the value 7"):
        ops.rbm_half_step(s, w, bias, seed=0, backend=backend)
    ok = ops.rbm_half_step(torch.tensor([[0, 1, 1, 0]], dtype=torch.uint8), w, bias, seed=0, backend=backend)
    assert ok.shape == (1, 3)


# ------------------------------------------------------------------ 3. divergence
@pytest.mark.parametrize("learn_variance,monitor,what", [
    (True, None, "holds NaN or Inf"),                                   # the parameters overflow
    (False, "reconstruction_error", "the monitored reconstruction_error is inf"),  # the fit cannot
])
def test_gaussian_rbm_diverging_on_huge_data_raises_and_writes_no_checkpoint(tmp_path, learn_variance, monitor,
                                                                             what):
    x = torch.randn(100, 64, generator=torch.Generator().manual_seed(0)) * 1e30
    path = tmp_path / "ck.pt"
    rbm = RBM(64, 16, "gaussian", learn_variance=learn_variance, seed=0)
    with pytest.raises(ValueError, match=rf"RBM.fit diverged in epoch 1 .*{what}.*learning_rate"):
        rbm.fit(x, epochs=3, batch_size=10, checkpoint=str(path), verbose=False, monitor=monitor)
    assert not path.exists()
    assert rbm.epochs_done == 1  # it stopped at the first bad epoch


def test_cli_train_rbm_reports_divergence_and_writes_no_model(tmp_path):
    from genkernels import cli

    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((60, 16)).astype(np.float32) * 1e30)
    ck, out = tmp_path / "ck.pt", tmp_path / "out"
    args = ["--debug", "train", "rbm", str(tmp_path / "x.npy"), "--visible", "gaussian", "--learn-variance",
            "--scale", "none",
            "--hidden", "4", "--epochs", "2", "--checkpoint", str(ck), "--out", str(out), "--quiet"]
    with pytest.raises(ValueError, match="diverged in epoch 1"):
        cli.main(args)
    assert not ck.exists() and not (out / "rbm.pt").exists()
    assert cli.main(args[1:]) == 2  # without --debug: one error line, exit 2
    assert not ck.exists() and not (out / "rbm.pt").exists()


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    x = _toy()
    path = tmp_path / "ck.pt"
    rbm = RBM(6, 4, seed=0)
    real = RBM._update

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.epochs_done == 1:  # the second epoch's updates
            self.weights[0, 0] = math.inf
        return out

    monkeypatch.setattr(RBM, "_update", poisoned)
    with pytest.raises(ValueError, match=r"diverged in epoch 2 .*weights"):
        rbm.fit(x, epochs=3, batch_size=10, checkpoint=str(path), verbose=False)
    saved = RBM.load(str(path))
    assert saved.epochs_done == 1 and bool(torch.isfinite(saved.weights).all())


def test_dbn_divergence_names_the_layer_and_epoch():
    x = torch.randn(100, 64, generator=torch.Generator().manual_seed(0)) * 1e30
    with pytest.raises(ValueError, match=r"DBN layer 0 .*diverged in epoch 1"):
        DBN([64, 16, 4], visible="gaussian", learn_variance=True, seed=0).fit(x, epochs=2, batch_size=10,
                                                                            monitor=None)


def test_boltzmann_machine_divergence_raises():
    with pytest.raises(ValueError, match=r"BoltzmannMachine.fit diverged in epoch 1 .*learning_rate"):
        BoltzmannMachine(4, 0, seed=0).fit(_toy(d=4), epochs=3, learning_rate=1e308, weight_decay=1.0,
                                           n_chains=8, backend="reference")


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"learning_rate": math.inf}, ValueError, "learning_rate"),
    ({"learning_rate": math.nan}, ValueError, "learning_rate"),
    ({"learning_rate": "0.1"}, TypeError, "learning_rate"),
    ({"weight_decay": math.nan}, ValueError, "weight_decay"),
    ({"weight_decay": math.inf}, ValueError, "weight_decay"),
    ({"weight_decay": "0"}, TypeError, "weight_decay"),
])
def test_boltzmann_machine_hyperparameters_must_be_finite_numbers(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BoltzmannMachine(4, 0, seed=0).fit(_toy(d=4), epochs=1, **kwargs)


@pytest.mark.parametrize("kwargs,match", [({"learning_rate": math.inf}, "learning_rate"),
                                          ({"momentum": math.nan}, "momentum"),
                                          ({"weight_decay": math.inf}, "weight_decay"),
                                          ({"sparsity_target": 0.1, "sparsity_cost": math.inf}, "sparsity_cost")])
def test_rbm_hyperparameters_must_be_finite(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RBM(6, 4, seed=0).fit(_toy(), epochs=1, verbose=False, **kwargs)


# ------------------------------------------------------------------ 4. epoch semantics
FIT = {"batch_size": 10, "method": "pcd", "momentum": 0.5, "learning_rate": 0.05, "verbose": False}


def test_rbm_fit_trains_more_epochs_each_call():
    x = _toy()
    twice = RBM(6, 4, seed=3)
    twice.fit(x, epochs=1, **FIT)
    after_one = twice.weights.clone()
    twice.fit(x, epochs=1, **FIT)
    assert twice.epochs_done == 2 and not torch.equal(twice.weights, after_one)
    once = RBM(6, 4, seed=3).fit(x, epochs=2, **FIT)
    _same_model(twice, once)
    assert twice.offset == once.offset and twice.history == once.history


def test_resume_without_a_checkpoint_file_trains_and_writes_it(tmp_path):
    x = _toy()
    rbm = RBM(6, 4, seed=3).fit(x, epochs=2, **FIT)
    path = tmp_path / "new.pt"
    rbm.fit(x, epochs=1, checkpoint=str(path), resume=True, **FIT)
    assert rbm.epochs_done == 3 and path.exists()
    assert RBM.load(str(path)).epochs_done == 3
    _same_model(rbm, RBM(6, 4, seed=3).fit(x, epochs=3, **FIT))


class _Interrupt(Exception):
    pass


def _interrupt_after(monkeypatch, epochs: int):
    """Make the next fit raise right after its ``epochs``-th epoch was checkpointed."""
    real = rbm_module.Progress.update
    seen = []

    def update(self, value):
        real(self, value)
        seen.append(value)
        if len(seen) == epochs:
            raise _Interrupt

    monkeypatch.setattr(rbm_module.Progress, "update", update)


@pytest.mark.parametrize("pretrained", [0, 2])
@pytest.mark.parametrize("binarize", [None, "stochastic"])
def test_an_interrupted_fit_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, pretrained, binarize):
    x = _toy() * 0.8 + 0.1 if binarize else _toy()
    kwargs = {**FIT, "binarize": binarize}
    whole = RBM(6, 4, seed=5)
    if pretrained:
        whole.fit(x, epochs=pretrained, **kwargs)
    whole.fit(x, epochs=3, **kwargs)

    path = str(tmp_path / "ck.pt")
    part = RBM(6, 4, seed=5)
    if pretrained:
        part.fit(x, epochs=pretrained, **kwargs)
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(_Interrupt):
            part.fit(x, epochs=3, checkpoint=path, **kwargs)
    saved = RBM.load(path)
    assert saved.epochs_done == pretrained + 1
    # a fresh process: a new model resumes from the checkpoint
    resumed = RBM(6, 4, seed=5).fit(x, epochs=3, checkpoint=path, resume=True, **kwargs)
    _same_model(resumed, whole)
    assert resumed.offset == whole.offset and resumed.history == whole.history
    assert resumed.epochs_done == pretrained + 3
    # resuming the finished call again trains nothing more
    again = RBM(6, 4, seed=5).fit(x, epochs=3, checkpoint=path, resume=True, **kwargs)
    _same_model(again, whole)


def test_resume_with_fewer_epochs_than_the_checkpoint_did_raises(tmp_path):
    x = _toy()
    path = str(tmp_path / "ck.pt")
    RBM(6, 4, seed=5).fit(x, epochs=3, checkpoint=path, **FIT)
    with pytest.raises(ValueError, match="epochs: the checkpoint .* has done 3 epochs.*got 2"):
        RBM(6, 4, seed=5).fit(x, epochs=2, checkpoint=path, resume=True, **FIT)


def test_dbn_fit_trains_more_epochs_each_call():
    x = _toy(d=6)
    dbn = DBN([6, 4, 3], seed=1).fit(x, epochs=1, batch_size=10)
    first = [layer.weights.clone() for layer in dbn.layers]
    dbn.fit(x, epochs=1, batch_size=10)
    assert [layer.epochs_done for layer in dbn.layers] == [2, 2]
    assert all(not torch.equal(w, layer.weights) for w, layer in zip(first, dbn.layers))


def test_boltzmann_machine_fit_trains_more_epochs_each_call():
    data = _toy(20, 4)
    a = BoltzmannMachine(4, 2, seed=9).fit(data, epochs=2, n_chains=8, backend="reference")
    a.fit(data, epochs=1, n_chains=8, backend="reference")
    b = BoltzmannMachine(4, 2, seed=9).fit(data, epochs=3, n_chains=8, backend="reference")
    assert torch.equal(a.weights, b.weights) and torch.equal(a.bias, b.bias)


# ------------------------------------------------------------------ 5. detached data
def test_training_on_data_that_requires_grad_records_no_history_and_does_not_warn():
    x = _toy().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rbm = RBM(6, 4, seed=0).fit(x, epochs=1, **FIT)
        bm = BoltzmannMachine(6, 1, seed=0).fit(x, epochs=1, n_chains=4, backend="reference")
        kl = bm.kl_divergence(x)
    for t in (*rbm.state_dict().values(), *bm.state_dict().values(), kl):
        assert not t.requires_grad and t.grad_fn is None
    _same_model(rbm, RBM(6, 4, seed=0).fit(x.detach(), epochs=1, **FIT))


# ------------------------------------------------------------------ 6. crafted checkpoints
def _craft(path, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def _rbm_checkpoint(tmp_path):
    path = str(tmp_path / "rbm.pt")
    RBM(6, 4, seed=0).fit(_toy(), epochs=1, **FIT).save(path)
    return path


def _set(*keys, value):
    def change(payload):
        d = payload
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value(d[keys[-1]]) if callable(value) else value
    return change


def _delete(*keys):
    def change(payload):
        d = payload
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return change


RBM_CRAFTED = [
    (_set("state", "weights", value=lambda t: t.T.contiguous()), r"'state.weights' must be a \(6, 4\)"),
    (_set("state", "weights", value=lambda t: t.double()), r"'state.weights' must be a .*torch.float32"),
    (_set("state", "hidden_bias", value=lambda t: t.fill_(math.nan)), "'state.hidden_bias' holds NaN"),
    (_set("state", "chains", value=lambda t: t.fill_(7)), r"'state.chains' must hold only \(0, 1\); got the value 7"),
    (_set("state", "chains", value=lambda t: t.float()), r"'state.chains' must be a .*torch.uint8"),
    (_set("offset", value=-1), r"'offset' must lie in \[0, "),
    (_set("offset", value="0"), "'offset' must be an int"),
    (_set("epochs_done", value=-2), r"'epochs_done' must lie in \[0, "),
    (_set("history", value="x"), "'history' must be a list"),
    (_delete("offset"), "the field 'offset' is missing"),
    (_delete("state"), "the field 'state' is missing"),
    (_delete("state", "weights"), r"'state' must hold the entries .*missing \['weights'\]"),
    (_delete("config", "n_hidden"), "the field 'config.n_hidden' is missing"),
    (_set("config", "dtype", value="Tensor"), "'config.dtype' must be one of"),
    (_set("config", "n_visible", value=-6), r"'config.n_visible' must lie in \[1, "),
    (_set("call_epochs_done", value=5), r"'call_epochs_done' must lie in \[0, 1\]"),
]


@pytest.mark.parametrize("change,match", RBM_CRAFTED)
def test_rbm_load_validates_every_field(tmp_path, change, match):
    path = _rbm_checkpoint(tmp_path)
    _craft(path, change)
    with pytest.raises(ValueError, match=match):
        RBM.load(path)


def test_rbm_resume_validates_the_checkpoint(tmp_path):
    path = _rbm_checkpoint(tmp_path)
    _craft(path, _set("state", "chains", value=lambda t: t.fill_(7)))
    rbm = RBM(6, 4, seed=0)
    with pytest.raises(ValueError, match="'state.chains' must hold only"):
        rbm.fit(_toy(), epochs=2, checkpoint=path, resume=True, **FIT)
    assert rbm.epochs_done == 0 and rbm.chains.shape[0] == 0  # nothing was loaded


def test_an_old_checkpoint_without_the_call_fields_resumes_as_before(tmp_path):
    x = _toy()
    path = _rbm_checkpoint(tmp_path)
    _craft(path, lambda p: [p.pop(k) for k in ("call_epochs", "call_epochs_done", "call_offset")])
    resumed = RBM(6, 4, seed=0).fit(x, epochs=3, checkpoint=path, resume=True, **FIT)
    _same_model(resumed, RBM(6, 4, seed=0).fit(x, epochs=3, **FIT))


@pytest.mark.parametrize("change,match", [
    (_set("layers", 1, "state", "chains", value=lambda t: t.fill_(7)), "'layers\\[1\\].state.chains' must hold only"),
    (_set("layers", 0, "state", "weights", value=lambda t: t[:3]), r"'layers\[0\].state.weights' must be a \(6, 4\)"),
    (_set("layers", 0, "offset", value=-5), r"'layers\[0\].offset' must lie in"),
    (_delete("layers", 1, "epochs_done"), r"'layers\[1\].epochs_done' is missing"),
    (_set("layers", value=lambda v: v[:1]), "'layers' must hold 2 layers"),
    (_set("layers", 1, value=3), r"'layers\[1\]' must be dict"),
    (_delete("layers"), "the field 'layers' is missing"),
    (_set("config", "layer_sizes", value=[6, 0, 3]), r"'config.layer_sizes\[1\]' must lie in"),
])
def test_dbn_load_validates_every_field(tmp_path, change, match):
    path = str(tmp_path / "dbn.pt")
    DBN([6, 4, 3], seed=0).fit(_toy(), epochs=1, batch_size=10, method="pcd").save(path)
    _craft(path, change)
    with pytest.raises(ValueError, match=match):
        DBN.load(path)


@pytest.mark.parametrize("change,match", [
    (_set("state", "weights", value=lambda t: t[:, :3]), r"'state.weights' must be a \(6, 6\)"),
    (_set("state", "weights", value=lambda t: t + torch.triu(torch.ones_like(t), 1)), "symmetric"),
    (_set("state", "chains", value=lambda t: t.fill_(7)), r"'state.chains' must hold only \(0, 1\)"),
    (_set("state", "bias", value=lambda t: t.fill_(math.inf)), "'state.bias' holds NaN or Inf"),
    (_set("offset", value=-1), r"'offset' must lie in \[0, "),
    (_delete("offset"), "the field 'offset' is missing"),
    (_delete("config", "seed"), "the field 'config.seed' is missing"),
])
def test_boltzmann_machine_load_validates_every_field(tmp_path, change, match):
    path = str(tmp_path / "bm.pt")
    BoltzmannMachine(4, 2, seed=0).fit(_toy(20, 4), epochs=1, n_chains=5, backend="reference").save(path)
    _craft(path, change)
    with pytest.raises(ValueError, match=match):
        BoltzmannMachine.load(path)


@pytest.mark.parametrize("change,match", [
    (_set("state", "weights", value=lambda t: t.double()), r"'state.weights' must be a \(5, 5\) torch.float32"),
    (_set("state", "weights", value=lambda t: t[:4, :4]), r"'state.weights' must be a \(5, 5\)"),
    (_set("offset", value=-1), r"'offset' must lie in \[0, "),
    (_set("rule", value="magic"), "'rule' must be None or one of"),
    (_set("n_patterns", value=-1), r"'n_patterns' must lie in \[0, "),
    (_delete("rule"), "the field 'rule' is missing"),
    (_delete("config", "n_units"), "the field 'config.n_units' is missing"),
])
def test_hopfield_load_validates_every_field(tmp_path, change, match):
    path = str(tmp_path / "hop.pt")
    patterns = torch.where(torch.rand(2, 5) < 0.5, -1.0, 1.0)
    Hopfield(5, seed=0).store(patterns).save(path)
    _craft(path, change)
    with pytest.raises(ValueError, match=match):
        Hopfield.load(path)


@pytest.mark.parametrize("change,match", [
    (_set("spins", value=lambda t: t.fill_(7)), r"'spins' must hold only \(-1, 1\); got the value 7"),
    (_set("spins", value=lambda t: t.to(torch.int16)), r"'spins' must be a \(2, 4, 4\) torch.int8"),
    (_set("spins", value=lambda t: t[:1]), r"'spins' must be a \(2, 4, 4\)"),
    (_set("offset", value=-1), r"'offset' must lie in \[0, "),
    (_set("sweeps_done", value=-1), r"'sweeps_done' must lie in \[0, "),
    (_delete("sweeps_done"), "the field 'sweeps_done' is missing"),
    (_set("config", "L", value=5), "'config.L' must be even"),
    (_set("config", "temperature", value=-1.0), "'config.temperature' must be finite and > 0"),
    (_delete("config", "algorithm"), "the field 'config.algorithm' is missing"),
])
def test_ising_load_validates_every_field(tmp_path, change, match):
    path = str(tmp_path / "ising.pt")
    Ising2D(4, 2.0, n_lattices=2, seed=0).save(path)
    _craft(path, change)
    with pytest.raises(ValueError, match=match):
        Ising2D.load(path)


def test_valid_checkpoints_still_load(tmp_path):
    for model, cls in ((RBM(6, 4, seed=0).fit(_toy(), epochs=1, **FIT), RBM),
                       (DBN([6, 4, 3], seed=0).fit(_toy(), epochs=1, batch_size=10, sparsity_target=0.1), DBN),
                       (BoltzmannMachine(4, 2, seed=0).fit(_toy(20, 4), epochs=1, n_chains=5, backend="reference"),
                        BoltzmannMachine),
                       (Hopfield(5, seed=0), Hopfield), (Ising2D(4, 2.0, n_lattices=2, seed=0, init="random"), Ising2D)):
        path = str(tmp_path / f"{cls.__name__}.pt")
        model.save(path)
        _same_model(cls.load(path), model)


# ------------------------------------------------------------------ 7. Ising indexing
@pytest.mark.skipif(not HAS_TRITON, reason="triton backend unavailable")
@pytest.mark.parametrize("L", [4, 46340, 46342, 65536, MAX_L])
@pytest.mark.parametrize("colour", [0, 1])
def test_triton_ising_index_arithmetic_is_64_bit(L, colour):
    """The kernel's own index helpers (_geometry, _site), run by Triton on a lattice side
    given as an int32 scalar argument, as the kernel receives it: the site count and the
    element offset of the last site of each colour must equal the exact int64 values (in
    int32, L * L // 2 is negative from L = 46,342 on and the sweep updated nothing)."""
    from _ising_index_probe import index_probe

    from genkernels.ising.triton import _ising_half_sweep_kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.zeros(5, dtype=torch.int64, device=device)
    index_probe[(1,)](out, L, colour)
    L64, H = np.int64(L), np.int64(L // 2)
    sites = L64 * H
    last_i = (sites - 1) // H
    last_j = 2 * ((sites - 1) % H) + (last_i + colour) % 2
    assert out.tolist() == [int(sites), int(last_i), int(last_j), int(last_i * L64 + last_j), colour]
    # the sweep kernel takes its geometry from these helpers (no int32 product of L left)
    src = inspect.getsource(getattr(_ising_half_sweep_kernel, "fn", _ising_half_sweep_kernel))
    assert "L, H, sites = _geometry(L)" in src


@pytest.mark.parametrize("backend", sorted(set(_CPU) & {"reference", "cpu", "triton", "cuda"}))
def test_one_lattice_size_range_on_every_backend(backend):
    th = ops.ising_thresholds(2.0)
    too_big = MAX_L + 2
    with pytest.raises(ValueError, match=rf"L must be an even integer in \[4, {MAX_L}\] .*; got {too_big}"):
        ops.ising_sweep(torch.ones(0, too_big, too_big, dtype=torch.int8), th, backend=backend)
    with pytest.raises(ValueError, match=rf"in \[4, {MAX_L}\]"):
        ops.ising_sample(torch.ones(0, too_big, too_big, dtype=torch.int8), th, 1, backend=backend)
    for L in (2, 5):
        with pytest.raises(ValueError, match="L must be an even integer"):
            ops.ising_sweep(torch.ones(1, L, L, dtype=torch.int8), th, backend=backend)
    assert ops.ising_sweep(torch.ones(0, MAX_L, MAX_L, dtype=torch.int8), th, backend=backend).shape[0] == 0


def test_the_model_and_the_counters_take_the_same_range():
    with pytest.raises(ValueError, match=rf"in \[4, {MAX_L}\]"):
        Ising2D(MAX_L + 2, 2.0)
    with pytest.raises(ValueError, match=rf"in \[4, {MAX_L}\]"):
        ops.ising_counters_per_sweep(MAX_L + 2, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_sweep_of_a_lattice_beyond_int32_sites_flips_spins_everywhere(backend):
    if backend not in backends.available_backends("cuda"):
        pytest.skip(f"{backend} backend unavailable on cuda")
    L = 46_342  # L^2 = 2,147,580,964 > 2^31 sites
    spins = torch.ones(1, L, L, dtype=torch.int8, device="cuda")
    out = ops.ising_sweep(spins, ops.ising_thresholds(100.0), 1, seed=1, backend=backend)
    # at T = 100 about half of the spins flip: in the first rows and in the last ones,
    # whose element offsets lie beyond 2^31
    head, tail = out[0, :8], out[0, -8:]
    for part in (head, tail):
        flipped = float((part == -1).float().mean())
        assert 0.3 < flipped < 0.7, flipped
    del spins, out
    torch.cuda.empty_cache()
