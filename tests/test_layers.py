"""The package's layering (docs/design.md, "Layers") and the op registry.

The import-linter contracts in pyproject.toml: families are independent of each other; the
core imports no family, facade or CLI; models never import the CLI or the facades; kernels
never import ops. Every op is declared once through genkernels.registry by its family."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import genkernels
from genkernels import backends, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed: pip install -e '.[test]'")
    proc = subprocess.run([exe, "--config", os.path.join(ROOT, "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_every_family_declares_its_ops_and_static_kernels():
    families = registry.load_families()
    assert {"som", "hopfield", "boltzmann", "ising"} <= set(families)
    ops = dict(backends.OP_BACKENDS)
    for name, impls in ops.items():
        assert impls[0] == "reference", name  # every op has its spec
        assert registry.get(name).backends == impls
    # every family (or each op stack of it) declares its static kernels, + the core's random stream
    sources = registry.static_kernel_sources()
    assert len(sources) == len(set(sources)) == len(registry.static_kernel_providers())
    assert {s.split(".")[0] for s in sources} == set(families) | {"random"}


def test_every_kernel_module_is_under_the_kernels_contract():
    """The naming rule of docs/design.md ("Names and places"): a family's kernel modules are
    triton.py / reference.py, or <stack>_triton.py / <stack>_reference.py beside
    <stack>_ops.py; the contract "Kernels never import ops" lists every such name."""
    import re
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    contract = text[text.index('name = "Kernels never import ops"'):]
    pkg = os.path.join(ROOT, "genkernels")
    for family in registry.load_families():
        for f in sorted(os.listdir(os.path.join(pkg, family))):
            m = re.fullmatch(r"(?:(\w+)_)?(triton|reference|ops)\.py", f)
            if m is None:
                continue
            if m.group(2) == "ops":
                assert f'"genkernels.*.{f[:-3]}"' in contract or f == "ops.py", (family, f)
                continue
            assert f'"genkernels.*.{f[:-3]}"' in contract, (family, f)
            if m.group(1):  # a stack's kernels sit beside the stack's ops
                assert os.path.exists(os.path.join(pkg, family, f"{m.group(1)}_ops.py")), (family, f)


def test_declaring_an_op_twice_or_a_preference_it_lacks_raises():
    with pytest.raises(ValueError, match="declared twice"):
        registry.declare("som_bmu", reference=lambda *a: None)
    with pytest.raises(ValueError, match="does not implement"):
        registry.declare("registry_test_op", reference=lambda *a: None,
                         gpu=registry.GpuPreference("cuda", lambda w: True, "none"))
    with pytest.raises(KeyError, match="no op 'no_such_op' is declared"):
        registry.get("no_such_op")


def test_lazy_implementations_load_when_their_backend_is_chosen():
    op = registry.get("som_bmu")
    assert op.resolve(torch.device("cpu"), "reference") == "reference"
    idx, _ = op("reference", torch.zeros(3, 2), torch.eye(2), 1, "euclidean", False)
    assert idx[:, 0].tolist() == [0, 0, 0]
    lazy = registry.lazy("genkernels.som.reference", "som_bmu")
    assert lazy.load() is genkernels.som.reference.som_bmu


def test_package_faces_export_models_and_ops():
    from genkernels import boltzmann, compat, hopfield
    assert boltzmann.RBM is genkernels.RBM and boltzmann.DBN is genkernels.DBN
    assert boltzmann.BoltzmannMachine is genkernels.BoltzmannMachine
    assert hopfield.Hopfield is genkernels.Hopfield and hopfield.HopfieldRetrieval is genkernels.HopfieldRetrieval
    for face in (genkernels.ops, boltzmann, hopfield, genkernels.som, genkernels.ising, compat):
        assert len(face.__all__) == len(set(face.__all__)), face.__name__
        for name in face.__all__:
            assert hasattr(face, name), (face.__name__, name)
