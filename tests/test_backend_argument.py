"""Every model takes the same ``backend=`` argument (issue 15, part A): RBM, DBN and the
compat facades (MiniSom, BernoulliRBM). An explicit backend runs exactly what
``genkernels.use_backend`` with that name runs (bit for bit: the same ops on the same
backend) and overrides a ``use_backend`` of another name; one that cannot run raises
BackendUnavailableError before anything changes; a bad name raises ValueError naming
``backend``."""

import numpy as np
import pytest
import torch

import genkernels
from genkernels import DBN, RBM, backends, registry
from genkernels.compat import BernoulliRBM, MiniSom

CPU_BACKENDS = [b for b in ("reference", "cpu") if b in backends.available_backends("cpu")]
Unavailable = backends.BackendUnavailableError


def _binary(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, cols, generator=g, dtype=torch.float64) < 0.4).to(torch.float64)


def _other(backend: str) -> str:
    """A use_backend name the explicit backend must override."""
    return "reference" if backend != "reference" else CPU_BACKENDS[-1]


def _assert_same_rbm(got: RBM, want: RBM) -> None:
    assert got.offset == want.offset and got.epochs_done == want.epochs_done
    for name, value in want.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name
    assert got.history == want.history
    assert got._backend is None and want._backend is None


# ------------------------------------------------------------------------------ RBM
# (visible, fit arguments): the dense and the binary-state path, the stochastic
# binarisation, PCD, parallel tempering, Gaussian samples and the pseudo-likelihood monitor
RBM_CASES = {
    "bernoulli-pcd": ("bernoulli", {"method": "pcd", "binarize": "stochastic", "monitor": "pseudo_likelihood",
                                    "momentum": 0.5, "sparsity_target": 0.2}),
    "bernoulli-binary-cd": ("bernoulli", {"method": "cd", "k": 2, "state_path": "binary"}),
    "gaussian-pt": ("gaussian", {"method": "pt", "pt_betas": 3}),
}


def _argument_and_use_backend(run, backend):
    """(run(backend=backend) under use_backend of the other name, run() under
    use_backend(backend)): the argument must win over use_backend and equal it."""
    with genkernels.use_backend(backend):
        want = run()
    with genkernels.use_backend(_other(backend)):
        got = run(backend=backend)
    return got, want


def _rbm_run(visible: str, fit_kwargs: dict, **backend) -> tuple[RBM, list[torch.Tensor]]:
    """A tiny fit, then plain and tempered samples and (Bernoulli) an AIS estimate and the
    pseudo-likelihood, every call given ``backend`` (``{}`` or ``{"backend": name}``)."""
    x = _binary(24, 6)
    if visible == "gaussian":
        x = x * 2.0 - 1.0
    rbm = RBM(6, 4, visible, seed=5, dtype=torch.float64)
    rbm.fit(x, epochs=2, batch_size=8, learning_rate=0.05, verbose=False, **fit_kwargs, **backend)
    out = [rbm.sample(3, n_steps=2, **backend), rbm.sample(2, n_steps=2, pt_betas=2, seed=9, **backend)]
    if visible == "bernoulli":
        out.append(torch.tensor(rbm.log_partition_ais(n_chains=4, n_betas=3, **backend)))
        out.append(rbm.score(x[:5], **backend))
    return rbm, out


@pytest.mark.parametrize("case", list(RBM_CASES))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rbm_backend_argument_equals_use_backend(backend, case):
    visible, fit_kwargs = RBM_CASES[case]
    (got, got_out), (want, want_out) = _argument_and_use_backend(lambda **kw: _rbm_run(visible, fit_kwargs, **kw),
                                                                  backend)
    _assert_same_rbm(got, want)
    for a, b in zip(got_out, want_out, strict=True):
        assert torch.equal(a, b)


def test_rbm_reference_and_cpu_backends_agree_within_rounding():
    """The two CPU backends compute the probabilities in a different order: the same
    model within the float64 rounding (the draws agree wherever |u - P| exceeds it)."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip(backends.extension_error())
    x = _binary(24, 6)
    ref = RBM(6, 4, seed=5, dtype=torch.float64).fit(x, epochs=2, batch_size=8, verbose=False, backend="reference")
    cpu = RBM(6, 4, seed=5, dtype=torch.float64).fit(x, epochs=2, batch_size=8, verbose=False, backend="cpu")
    torch.testing.assert_close(cpu.weights, ref.weights, rtol=1e-10, atol=1e-10)
    assert cpu.offset == ref.offset


def test_rbm_unavailable_backend_raises_before_anything_changes():
    x = _binary(24, 6)
    rbm = RBM(6, 4, seed=5)
    fresh = RBM(6, 4, seed=5)
    with pytest.raises(Unavailable, match="rbm_half_step has no cuda backend"):
        rbm.fit(x, epochs=1, binarize="stochastic", verbose=False, backend="cuda")
    with pytest.raises(Unavailable, match="rbm_half_step has no cuda backend"):
        rbm.sample(2, n_steps=1, backend="cuda")
    with pytest.raises(Unavailable, match="rbm_half_step has no cuda backend"):
        rbm.log_partition_ais(n_chains=2, n_betas=1, backend="cuda")
    with pytest.raises(Unavailable, match="cuda backend runs on CUDA tensors"):
        rbm.score(x, backend="cuda")
    _assert_same_rbm(rbm, fresh)


def test_rbm_bad_backend_name_raises_value_error():
    x = _binary(24, 6)
    rbm = RBM(6, 4, seed=5)
    for call in (lambda: rbm.fit(x, epochs=1, verbose=False, backend="gpu"),
                 lambda: rbm.sample(2, backend="gpu"),
                 lambda: rbm.log_partition_ais(n_chains=2, n_betas=1, backend="gpu"),
                 lambda: rbm.score(x, backend="gpu")):
        with pytest.raises(ValueError, match="backend must be one of .*got 'gpu'"):
            call()
    _assert_same_rbm(rbm, RBM(6, 4, seed=5))


@pytest.mark.parametrize("backend", ["reference", "cpu", "cuda"])
def test_rbm_cuda_graph_with_a_non_triton_backend_raises_value_error(backend):
    rbm = RBM(6, 4, seed=5)
    with pytest.raises(ValueError, match=f"cuda_graph=True needs the triton backend.*got backend='{backend}'"):
        rbm.fit(_binary(24, 6), epochs=1, verbose=False, cuda_graph=True, backend=backend)
    _assert_same_rbm(rbm, RBM(6, 4, seed=5))


# ------------------------------------------------------------------------------ DBN
def _dbn_run(**backend) -> tuple[DBN, torch.Tensor]:
    dbn = DBN([6, 5, 4], seed=3, dtype=torch.float64)
    dbn.fit(_binary(24, 6), epochs=[2, 1], batch_size=8, method="pcd", binarize="stochastic",
            learning_rate=0.05, **backend)
    return dbn, dbn.sample(3, n_gibbs=2, down="sample", **backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dbn_backend_argument_equals_use_backend(backend):
    (got, got_samples), (want, want_samples) = _argument_and_use_backend(_dbn_run, backend)
    for got_layer, want_layer in zip(got.layers, want.layers, strict=True):
        _assert_same_rbm(got_layer, want_layer)
    assert torch.equal(got_samples, want_samples)


def test_dbn_unavailable_or_bad_backend_raises_before_training():
    x = _binary(24, 6)
    dbn = DBN([6, 5, 4], seed=3)
    with pytest.raises(Unavailable, match="rbm_half_step has no cuda backend"):
        dbn.fit(x, epochs=1, binarize="stochastic", backend="cuda")
    with pytest.raises(Unavailable, match="rbm_half_step has no cuda backend"):
        dbn.sample(2, n_gibbs=1, down="sample", backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of .*got 'gpu'"):
        dbn.fit(x, epochs=1, backend="gpu")
    with pytest.raises(ValueError, match="backend must be one of .*got 'gpu'"):
        dbn.sample(2, n_gibbs=1, backend="gpu")
    for layer, fresh in zip(dbn.layers, DBN([6, 5, 4], seed=3).layers, strict=True):
        _assert_same_rbm(layer, fresh)


# -------------------------------------------------------------------------- MiniSom
def _som_data() -> np.ndarray:
    return np.random.RandomState(0).rand(20, 3)


def _minisom_run(**backend) -> list[np.ndarray]:
    """train (som_online), train_batch_offline (som_node_sums) and the metrics (som_bmu)."""
    data = _som_data()
    som = MiniSom(4, 3, 3, sigma=1.5, learning_rate=0.5, random_seed=1, **backend)
    som.train(data, 30, random_order=True)
    online = som.get_weights().copy()
    som.train_batch_offline(data, 3)
    return [online, som.get_weights().copy(), np.array([som.quantization_error(data), som.topographic_error(data)]),
            np.asarray(som.quantization(data))]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_minisom_backend_argument_equals_use_backend(backend):
    got, want = _argument_and_use_backend(_minisom_run, backend)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert MiniSom(2, 2, 3, backend=backend).backend == backend


def test_minisom_unavailable_or_bad_backend():
    data = _som_data()
    som = MiniSom(4, 3, 3, random_seed=1, backend="cuda")
    before = som.get_weights().copy()
    # som_online has a cuda backend, for CUDA tensors; som_node_sums and som_bmu have none
    with pytest.raises(Unavailable, match="som_online is unavailable: the cuda backend runs on CUDA tensors"):
        som.train(data, 10)
    with pytest.raises(Unavailable, match="som_node_sums has no cuda backend"):
        som.train_batch_offline(data, 2)
    with pytest.raises(Unavailable, match="som_bmu has no cuda backend"):
        som.quantization_error(data)
    np.testing.assert_array_equal(som.get_weights(), before)
    with pytest.raises(ValueError, match="backend must be None or one of .*got 'gpu'"):
        MiniSom(4, 3, 3, backend="gpu")


# --------------------------------------------------------------------- BernoulliRBM
def _bernoulli_rbm_run(**backend) -> list[np.ndarray]:
    """fit and gibbs (rbm_pcd_step_ and the half-steps), then partial_fit on a fresh one."""
    x = _binary(20, 6).numpy()
    est = BernoulliRBM(n_components=4, learning_rate=0.1, batch_size=5, n_iter=2, random_state=0, **backend)
    est.fit(x)
    out = [est.components_, est.intercept_hidden_, est.intercept_visible_, est.h_samples_, est.gibbs(x[:4])]
    part = BernoulliRBM(n_components=4, batch_size=5, random_state=1, **backend)
    part.partial_fit(x[:5]).partial_fit(x[5:12])
    return [*out, part.components_, part.intercept_hidden_, part.intercept_visible_, part.h_samples_]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bernoulli_rbm_backend_argument_equals_use_backend(backend):
    got, want = _argument_and_use_backend(_bernoulli_rbm_run, backend)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bernoulli_rbm_backend_is_a_parameter():
    """get_params and clone keep it (an __init__ parameter, scikit-learn's convention)."""
    from sklearn.base import clone
    est = BernoulliRBM(n_components=3, backend="reference")
    assert est.get_params()["backend"] == "reference"
    assert clone(est).backend == "reference"
    assert BernoulliRBM().get_params()["backend"] is None


def test_bernoulli_rbm_unavailable_backend_raises_before_training():
    x = _binary(20, 6).numpy()
    est = BernoulliRBM(n_components=4, batch_size=5, random_state=0, backend="cuda")
    with pytest.raises(Unavailable, match="rbm_half_step has no cuda backend"):
        est.fit(x)
    with pytest.raises(Unavailable, match="rbm_half_step has no cuda backend"):
        est.partial_fit(x)
    assert not any(hasattr(est, a) for a in ("components_", "h_samples_", "random_state_", "_philox_seed"))
    fitted = BernoulliRBM(n_components=4, batch_size=5, n_iter=1, random_state=0).fit(x)
    offset = fitted._philox_offset
    fitted.backend = "cuda"
    with pytest.raises(Unavailable, match="rbm_half_step has no cuda backend"):
        fitted.gibbs(x[:2])
    assert fitted._philox_offset == offset


def test_bernoulli_rbm_bad_backend_name_raises_value_error():
    x = _binary(20, 6).numpy()
    with pytest.raises(ValueError, match="'backend' parameter"):
        BernoulliRBM(n_components=4, backend="gpu").fit(x)
    with pytest.raises(ValueError, match="'backend' parameter"):
        BernoulliRBM(n_components=4, backend="gpu").partial_fit(x)
    fitted = BernoulliRBM(n_components=4, batch_size=5, n_iter=1, random_state=0).fit(x)
    fitted.backend = "gpu"
    with pytest.raises(ValueError, match="backend must be one of .*got 'gpu'"):
        fitted.gibbs(x[:2])


@pytest.mark.skipif("triton" not in backends.available_backends("cpu"), reason="needs the Triton interpreter")
def test_bernoulli_rbm_triton_backend_composes_the_triton_half_steps():
    """rbm_pcd_step_ has no triton kernel: backend='triton' runs its reference on the
    triton half-steps -- the reference's model within the float64 rounding."""
    x = _binary(10, 5).numpy()
    kwargs = {"n_components": 3, "batch_size": 5, "n_iter": 1, "random_state": 0}
    triton = BernoulliRBM(**kwargs, backend="triton").fit(x)
    ref = BernoulliRBM(**kwargs, backend="reference").fit(x)
    np.testing.assert_allclose(triton.components_, ref.components_, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(triton.h_samples_, ref.h_samples_)


# ------------------------------------------------------------- what actually runs
class _Spy(dict):
    """An op's kernels table recording (op, backend) for every kernel looked up to run."""

    def __init__(self, kernels: dict, op: str, seen: set):
        super().__init__(kernels)
        self.op, self.seen = op, seen

    def __getitem__(self, backend):
        self.seen.add((self.op, backend))
        return super().__getitem__(backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_op_of_every_model_runs_the_explicit_backend(backend, monkeypatch):
    """Where two backends give the same bits (the binary-state path, the facades), equal
    results cannot show which ran: every kernel looked up while the models run with
    ``backend=`` under use_backend of another name is that backend's. (The half-step
    uniforms of the initial states are the reference's words by design.)"""
    seen: set = set()
    for name in list(registry.op_backends):
        op = registry.get(name)
        monkeypatch.setattr(op, "kernels", _Spy(op.kernels, name, seen))
    with genkernels.use_backend(_other(backend)):
        for visible, fit_kwargs in RBM_CASES.values():
            _rbm_run(visible, fit_kwargs, backend=backend)
        _dbn_run(backend=backend)
        _minisom_run(backend=backend)
        _bernoulli_rbm_run(backend=backend)
    ops_run = {op for op, _ in seen}
    assert {"rbm_half_step", "rbm_half_step_binary", "rbm_binary_outer_add", "rbm_pcd_step", "philox_rand",
            "philox_randint4x", "som_online", "som_node_sums", "som_bmu"} <= ops_run
    wrong = {(op, b) for op, b in seen if b != backend and not (op == "philox_randint4x" and b == "reference")}
    assert not wrong
