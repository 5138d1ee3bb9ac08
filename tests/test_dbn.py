"""genkernels.DBN: greedy layer-wise training, transform, sampling, checkpoints, errors."""

import numpy as np
import pytest
import torch

import genkernels
from genkernels import DBN, RBM
from genkernels.boltzmann.dbn import layer_seed
from genkernels.data import load_digits


def _toy_data(n=200, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(4, d, generator=g) < 0.5).double()
    data = protos[torch.randint(0, 4, (n,), generator=g)]
    flip = torch.rand(data.shape, generator=g, dtype=torch.float64) < 0.05
    return torch.where(flip, 1 - data, data)


FIT = {"batch_size": 16, "learning_rate": 0.1, "verbose": False}


def test_exported():
    assert genkernels.DBN is DBN
    assert "DBN" in genkernels.__all__


def test_layers_are_rbms_with_derived_seeds():
    dbn = DBN([12, 8, 5, 3], seed=7, dtype=torch.float64)
    assert dbn.n_layers == 3
    assert [(r.n_visible, r.n_hidden) for r in dbn.layers] == [(12, 8), (8, 5), (5, 3)]
    assert [r.seed for r in dbn.layers] == [layer_seed(7, i) for i in range(3)]
    assert len({r.seed for r in dbn.layers}) == 3
    assert all(r.dtype == torch.float64 for r in dbn.layers)
    assert DBN([4, 3], visible="gaussian", seed=0).layers[0].visible == "gaussian"
    gaussian = DBN([4, 3, 2], visible="gaussian", seed=0)
    assert [r.visible for r in gaussian.layers] == ["gaussian", "bernoulli"]


@pytest.mark.parametrize("method", ["cd", "pcd"])
def test_greedy_training_equals_rbms_trained_one_on_the_other(method):
    """Layer i of a DBN is the RBM that trains on layer i - 1's transform of its input,
    with the same seed: bit-identical weights, biases and stream position."""
    x = _toy_data()
    dbn = DBN([12, 8, 5], seed=3, dtype=torch.float64).fit(x, epochs=[3, 2], method=method, k=2,
                                                            momentum=0.5, **FIT)
    rbm0 = RBM(12, 8, seed=layer_seed(3, 0), dtype=torch.float64)
    rbm0.fit(x, epochs=3, method=method, k=2, momentum=0.5, **FIT)
    rbm1 = RBM(8, 5, seed=layer_seed(3, 1), dtype=torch.float64)
    rbm1.fit(rbm0.transform(x), epochs=2, method=method, k=2, momentum=0.5, **FIT)
    for layer, rbm in zip(dbn.layers, (rbm0, rbm1)):
        for name in ("weights", "visible_bias", "hidden_bias"):
            assert torch.equal(getattr(layer, name), getattr(rbm, name)), name
        assert layer.offset == rbm.offset and layer.epochs_done == rbm.epochs_done
    assert [r.epochs_done for r in dbn.layers] == [3, 2]


def test_every_layer_learns_its_input():
    """Each trained layer reconstructs its own input (the layer below's transform) far
    better than the same RBM untrained."""
    x = _toy_data()
    dbn = DBN([12, 10, 6], seed=0, dtype=torch.float64).fit(x, epochs=40, **FIT)
    for i, layer in enumerate(dbn.layers):
        inputs = dbn.transform(x, layer=i - 1) if i else x
        untrained = RBM(layer.n_visible, layer.n_hidden, seed=layer.seed, dtype=torch.float64)
        assert layer.reconstruction_error(inputs) < 0.5 * untrained.reconstruction_error(inputs), i
        assert layer.history[-1]["reconstruction_error"] < layer.history[0]["reconstruction_error"], i


def test_transform_shapes_values_and_numpy_input():
    x = _toy_data(n=37)
    dbn = DBN([12, 9, 4], seed=1).fit(x, epochs=2, **FIT)
    h = dbn.transform(x)
    assert h.shape == (37, 4) and h.dtype == torch.float32
    assert float(h.min()) >= 0 and float(h.max()) <= 1
    assert dbn.transform(x, layer=0).shape == (37, 9)
    # transform is p(h | input) up the stack
    torch.testing.assert_close(h, dbn.layers[1].transform(dbn.layers[0].transform(x)), rtol=0, atol=0)
    torch.testing.assert_close(dbn.transform(x.numpy()), h, rtol=0, atol=0)
    torch.testing.assert_close(dbn(x), h, rtol=0, atol=0)
    assert dbn.transform(x[:0]).shape == (0, 4)
    assert dbn.reconstruct(x).shape == (37, 12)


@pytest.mark.parametrize("down", ["mean", "sample"])
def test_sample_shape_values_and_seeding(down):
    x = _toy_data()
    dbn = DBN([12, 8, 5, 4], seed=2).fit(x, epochs=2, **FIT)
    offsets = [r.offset for r in dbn.layers]
    s = dbn.sample(9, n_gibbs=20, down=down, seed=11)
    assert s.shape == (9, 12) and s.dtype == torch.float32
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    if down == "sample":
        assert set(s.unique().tolist()) <= {0.0, 1.0}
    # an explicit seed leaves the model's streams alone and repeats
    assert [r.offset for r in dbn.layers] == offsets
    assert torch.equal(dbn.sample(9, n_gibbs=20, down=down, seed=11), s)
    # the model's own stream advances: two draws differ
    a, b = dbn.sample(9, n_gibbs=20, down=down), dbn.sample(9, n_gibbs=20, down=down)
    assert not torch.equal(a, b)
    assert dbn.layers[-1].offset != offsets[-1]


def test_sample_mean_down_pass_is_the_lower_layers_visible_means():
    dbn = DBN([6, 5, 3], seed=4, dtype=torch.float64).fit(_toy_data(d=6), epochs=1, **FIT)
    top = dbn.layers[1].sample(4, 7, seed=layer_seed(9, 1))
    expected = torch.sigmoid(top @ dbn.layers[0].weights.T + dbn.layers[0].visible_bias)
    torch.testing.assert_close(dbn.sample(4, n_gibbs=7, seed=9), expected, rtol=0, atol=0)


def test_two_sizes_sample_is_the_rbm_sample():
    dbn = DBN([6, 4], seed=5).fit(_toy_data(d=6), epochs=1, **FIT)
    assert torch.equal(dbn.sample(3, n_gibbs=5, seed=1), dbn.layers[0].sample(3, 5, seed=layer_seed(1, 0)))


def test_gaussian_first_layer_trains_and_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g, dtype=torch.float64)
    dbn = DBN([5, 6, 3], visible="gaussian", seed=0, dtype=torch.float64).fit(x, epochs=2, **FIT)
    assert dbn.transform(x).shape == (120, 3)
    assert torch.isfinite(dbn.sample(4, n_gibbs=3, down="sample")).all()


def test_digits_features_classify():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    dbn = DBN([64, 100, 64], seed=0).fit(x_train, epochs=15, batch_size=10, learning_rate=0.1)
    clf = LogisticRegression(C=100.0, max_iter=3000).fit(dbn.transform(x_train).numpy(), y_train)
    accuracy = clf.score(dbn.transform(x_test).numpy(), y_test)
    assert accuracy > 0.8, accuracy
    untrained = DBN([64, 100, 64], seed=0)
    clf = LogisticRegression(C=100.0, max_iter=3000).fit(untrained.transform(x_train).numpy(), y_train)
    assert accuracy > clf.score(untrained.transform(x_test).numpy(), y_test)


def test_save_load_round_trip(tmp_path):
    x = _toy_data()
    dbn = DBN([12, 7, 4], seed=6, dtype=torch.float64).fit(x, epochs=[2, 3], method="pcd", **FIT)
    path = str(tmp_path / "dbn.pt")
    dbn.save(path)
    loaded = DBN.load(path)
    assert loaded.layer_sizes == [12, 7, 4] and loaded.seed == 6 and loaded.dtype == torch.float64
    assert torch.equal(loaded.transform(x), dbn.transform(x))
    assert [r.offset for r in loaded.layers] == [r.offset for r in dbn.layers]
    assert [r.epochs_done for r in loaded.layers] == [2, 3]
    assert torch.equal(loaded.layers[1].chains, dbn.layers[1].chains)
    # the loaded stack continues exactly as the saved one
    assert torch.equal(loaded.sample(3, n_gibbs=4, down="sample"), dbn.sample(3, n_gibbs=4, down="sample"))
    dbn.fit(x, epochs=[3, 4], method="pcd", **FIT)
    loaded.fit(x, epochs=[3, 4], method="pcd", **FIT)
    assert torch.equal(loaded.transform(x), dbn.transform(x))


def test_load_rejects_other_checkpoints(tmp_path):
    rbm_path = str(tmp_path / "rbm.pt")
    RBM(4, 3, seed=0).save(rbm_path)
    with pytest.raises(ValueError, match="not a genkernels DBN checkpoint.*holds a RBM"):
        DBN.load(rbm_path)
    dbn_path = str(tmp_path / "dbn.pt")
    DBN([4, 3], seed=0).save(dbn_path)
    with pytest.raises(ValueError, match="not a genkernels RBM checkpoint"):
        RBM.load(dbn_path)
    with pytest.raises(FileNotFoundError, match="path"):
        DBN.load(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("sizes, exc, match", [
    ([5], ValueError, "layer_sizes must hold at least 2"),
    ([], ValueError, "layer_sizes must hold at least 2"),
    ([5, 0], ValueError, r"layer_sizes\[1\]"),
    ([5, -3, 2], ValueError, r"layer_sizes\[1\]"),
    ([5, 2.5], TypeError, r"layer_sizes\[1\]"),
    (5, TypeError, "layer_sizes must be a sequence"),
    ("64", TypeError, "layer_sizes must be a sequence"),
])
def test_bad_layer_sizes(sizes, exc, match):
    with pytest.raises(exc, match=match):
        DBN(sizes)


def test_bad_arguments():
    x = _toy_data()
    dbn = DBN([12, 6, 3], seed=0)
    with pytest.raises(ValueError, match=r"x must be \(N, 12\)"):
        dbn.fit(x[:, :10], epochs=1)
    with pytest.raises(ValueError, match=r"x must be \(N, 12\)"):
        dbn.transform(np.zeros((4, 13)))
    with pytest.raises(ValueError, match="epochs must be an integer or a list of 2"):
        dbn.fit(x, epochs=[1, 2, 3])
    with pytest.raises(ValueError, match=r"epochs\[1\]"):
        dbn.fit(x, epochs=[1, -1])
    with pytest.raises(TypeError, match="epochs"):
        dbn.fit(x, epochs=1.5)
    with pytest.raises(TypeError, match="checkpoint"):
        dbn.fit(x, epochs=1, checkpoint="x.pt")
    with pytest.raises(ValueError, match="x must hold values in"):
        dbn.fit(x * 2, epochs=1)
    with pytest.raises(ValueError, match="down"):
        dbn.sample(2, down="up")
    with pytest.raises(ValueError, match="n_samples"):
        dbn.sample(-1)
    with pytest.raises(ValueError, match="layer"):
        dbn.transform(x, layer=2)
    with pytest.raises(ValueError, match="visible"):
        DBN([4, 3], visible="poisson")
    # nothing was trained by the failed calls
    assert [r.epochs_done for r in dbn.layers] == [0, 0]


def test_binarize_applies_to_the_data_only():
    x = _toy_data() * 0.9 + 0.05
    dbn = DBN([12, 6, 3], seed=0, dtype=torch.float64).fit(x, epochs=1, binarize="threshold", **FIT)
    rbm0 = RBM(12, 6, seed=layer_seed(0, 0), dtype=torch.float64).fit(x, epochs=1, binarize="threshold", **FIT)
    rbm1 = RBM(6, 3, seed=layer_seed(0, 1), dtype=torch.float64).fit(rbm0.transform((x > 0.5).double()), epochs=1,
                                                                      **FIT)
    assert torch.equal(dbn.layers[0].weights, rbm0.weights)
    assert torch.equal(dbn.layers[1].weights, rbm1.weights)
