"""Every ```python block of the README runs as written, each in a fresh scope after a hidden
prelude that defines the small data it uses (the README's blocks are unchanged)."""
import os
import re

import pytest
import torch

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def _blocks() -> list[str]:
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def _pm1(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0)


def _binary(rows: int, cols: int, seed: int, p: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, cols, generator=g) < p).float()


def _prelude_hopfield() -> dict:
    """`patterns` (5 of 1000 units, ±1) and `noisy`: 8 probes, each a pattern with 10% flipped."""
    patterns = _pm1(5, 1000, 0)
    noisy = patterns[torch.arange(8) % 5].clone()
    flip = torch.rand(noisy.shape, generator=torch.Generator().manual_seed(1)) < 0.1
    noisy[flip] = -noisy[flip]
    return {"patterns": patterns, "noisy": noisy}


def _prelude_energy() -> dict:
    """`data` for the 6-unit Boltzmann machine; `x` and `x_test`: binary rows of 784 pixels,
    100 and 20 of them (one batch of 100 per RBM epoch)."""
    return {"data": _binary(32, 6, 2, p=0.5), "x": _binary(100, 784, 3), "x_test": _binary(20, 784, 4)}


def _run(code: str, scope: dict) -> dict:
    import genkernels
    scope = {"torch": torch, "genkernels": genkernels, **scope}
    exec(compile(code, "README.md", "exec"), scope)
    return scope


def test_readme_has_the_blocks_this_test_knows():
    """A new ```python block needs its prelude here (and its own test below)."""
    blocks = _blocks()
    assert len(blocks) == 9, [b.splitlines()[0] for b in blocks]
    assert "genkernels.SOM(" in blocks[0]
    assert "som_grid_search(" in blocks[1]
    assert "genkernels.SoftSOM(" in blocks[2]
    assert "genkernels.PatchSOM(" in blocks[3]
    assert "genkernels.SOMMaskConv2d(" in blocks[4]
    assert "genkernels.Hopfield(" in blocks[5]
    assert "genkernels.BoltzmannMachine(" in blocks[6]
    assert "genkernels.GatedPixelCNN(" in blocks[7]
    assert "genkernels.AffineCoupling(" in blocks[8]


def test_readme_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = _run(_blocks()[0], {})
    assert scope["idx"].shape == (10_000, 2)
    assert (tmp_path / "umatrix.png").exists() and (tmp_path / "som.pt").exists()


def test_readme_som_estimator_block_runs():
    """The grid search block as written: both searches choose alike, and the helper's table
    is GridSearchCV's."""
    scope = _run(_blocks()[1], {})
    search, fast = scope["search"], scope["fast"]
    assert list(fast.cv_results_["params"]) == list(search.cv_results_["params"])
    assert (fast.cv_results_["mean_test_score"] == search.cv_results_["mean_test_score"]).all()
    assert fast.predict(scope["x"][:5]).shape == (5,)


def test_readme_soft_som_block_runs():
    """The SOMs-in-networks block with `x` (8, 5), `nodes` (12, 5), `values` (12, 3), `beta`."""
    g = torch.Generator().manual_seed(0)
    prelude = {"x": torch.randn(8, 5, generator=g), "nodes": torch.randn(12, 5, generator=g),
               "values": torch.randn(12, 3, generator=g), "beta": 2.0}
    scope = _run(_blocks()[2], prelude)
    assert scope["out"].shape == (8, 3)
    assert scope["net"](torch.randn(4, 2)).shape == (4, 2)


def test_readme_patch_block_runs():
    """The patch SOM block on the digits (`x`, as the tour loads them)."""
    from genkernels.data import load_digits
    scope = _run(_blocks()[3], {"x": load_digits()[0]})
    assert scope["coords"].shape == (1797, 2, 6, 6) and scope["rebuilt"].shape == (1797, 1, 8, 8)
    assert scope["idx"].shape == scope["dist"].shape == (1797, 6, 6)
    assert scope["top"].shape == (1797, 2, 3, 3) and 0 < float(scope["mse"]) < 0.1


def test_readme_hopfield_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prelude = _prelude_hopfield()
    scope = _run(_blocks()[5], prelude)
    assert scope["states"].shape == prelude["noisy"].shape and bool(scope["converged"].all())
    # 5 patterns in 1000 units, 10% noise: the pseudoinverse rule recalls every one
    assert torch.equal(scope["states"], prelude["patterns"][torch.arange(8) % 5])


def _cap(monkeypatch, cls, name, **caps):
    """Run cls.name with the keyword (or first positional) counts in ``caps`` at most the
    given size: the README's calls, arguments and results as written, less of the work."""
    original = getattr(cls, name)

    def capped(self, *args, **kwargs):
        for key, limit in caps.items():
            if key == "_first" and args:
                args = (min(args[0], limit), *args[1:])
            elif key in kwargs:
                kwargs[key] = min(kwargs[key], limit)
            elif key != "_first":
                kwargs[key] = limit
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, capped)


def test_readme_energy_block_runs(tmp_path, monkeypatch):
    """The Boltzmann / RBM / DBN / Ising block on the prelude's small data. Three of its calls
    default to minutes of work on 2 CPU cores (AIS with 10,000 temperatures on a 784 x 500 RBM,
    and 1,000 + 10,000 sweeps of sixteen 256 x 256 lattices): they run here with fewer
    temperatures and sweeps (n_betas <= 100, sweep(<= 20), measure(<= 40 sweeps)); the full
    costs run in ``test_readme_energy_block_runs_in_full`` (-m slow)."""
    from genkernels import RBM, Ising2D
    monkeypatch.chdir(tmp_path)
    _cap(monkeypatch, RBM, "log_partition_ais", n_betas=100)
    _cap(monkeypatch, Ising2D, "sweep", _first=20)
    _cap(monkeypatch, Ising2D, "measure", _first=40)
    scope = _run(_blocks()[6], _prelude_energy())
    _check_energy_scope(scope)


@pytest.mark.slow
def test_readme_energy_block_runs_in_full(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _check_energy_scope(_run(_blocks()[6], _prelude_energy()))


def test_readme_som_mask_block_runs():
    scope = _run(_blocks()[4], {})
    conv = scope["conv"]
    assert bool(conv.som_initialized) and conv.weight.grad is not None
    assert scope["patches"].shape == (64, 100, 28, 28) and scope["hidden"].shape == (64, 100)
    # top_k=5: at most 5 channels of each image are non-zero
    with torch.no_grad():
        active = (conv.eval()(scope["images"]) != 0).flatten(2).any(2).sum(1)
    assert int(active.max()) <= 5


def test_readme_autoregressive_block_runs(capsys):
    scope = _run(_blocks()[7], {})
    assert scope["features"].shape == (8, 96, 32, 32) and scope["nats"].shape == (4,)
    assert torch.equal(scope["completed"][:, :, :6], scope["binary"][:4, :, :6])   # the observed half kept
    out = capsys.readouterr().out
    assert "OK" in out
    assert scope["rgb"].mixtures == 5 and 0 < float(scope["rgb"].bits_per_dim(scope["levels"])) < 20
    assert scope["made"].num_masks == 4 and len(scope["made"].history) == 2


def test_readme_flows_block_runs():
    scope = _run(_blocks()[8], {})
    assert scope["y"].shape == (8, 3, 32, 32) and scope["logdet"].shape == (8,)
    torch.testing.assert_close(scope["back"], scope["x"])
    assert scope["z"].shape == (32, 16) and scope["ld"].shape == (32,)
    assert scope["nice"].mask.shape == (4, 1, 1)
    assert scope["samples"].shape == (4, 1, 28, 28) and scope["latent"].shape == (16, 784)
    assert scope["glow"].sample(2, seed=0).shape == (2, 3, 16, 16)
    assert scope["draws"].shape == (32, 8) and scope["nsf"].history and scope["v"].shape == (8, 4)
    assert scope["spline_logdet"].shape == (8,) and scope["flow"].checkpoint == "invertible"


def _check_energy_scope(scope):
    assert scope["states"].shape[0] == 16 and scope["energies"].shape[0] == 16
    assert scope["features"].shape == (100, 200)
    assert {"energy", "specific_heat", "susceptibility"} <= set(scope["obs"])


# The families a package description may name, and the subpackage each needs.
FAMILY_WORDS = {"self-organizing map": "som", "Hopfield": "hopfield", "Boltzmann": "boltzmann", "RBM": "boltzmann",
                "DBN": "boltzmann", "Ising": "ising", "PixelCNN": "autoregressive", "MADE": "autoregressive",
                "autoregressive": "autoregressive", "flow": "flows", "Glow": "flows", "RealNVP": "flows"}


def test_setup_description_names_only_families_that_exist():
    import ast
    import importlib.util
    tree = ast.parse(open(os.path.join(os.path.dirname(__file__), os.pardir, "setup.py")).read())
    description = next(ast.literal_eval(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                       for k in node.keywords if k.arg == "description")
    named = {pkg for word, pkg in FAMILY_WORDS.items() if word.lower() in description.lower()}
    assert named, description
    missing = sorted(pkg for pkg in named if importlib.util.find_spec(f"genkernels.{pkg}") is None)
    assert not missing, f"setup.py's description names families with no subpackage: {missing}"
