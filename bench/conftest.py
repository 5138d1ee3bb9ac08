"""``pytest bench/ --benchmark-only`` runs the pytest-benchmark entry of every family (the
``test_*`` functions of bench/bench_*.py; ``pytest bench/bench_som.py`` one module).
Options (environment fallbacks in brackets; read by harness.bench_options): --data DIR
[GENKERNELS_DATA], --bench-device cpu|cuda [GENKERNELS_BENCH_DEVICE], --bench-quick
[GENKERNELS_BENCH_QUICK=1]."""

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("genkernels bench")
    group.addoption("--data", default=None, help="folder holding the MNIST IDX files")
    group.addoption("--bench-device", default=None, choices=("cpu", "cuda"),
                    help="device the benchmarks run on (default cpu)")
    group.addoption("--bench-quick", action="store_true", help="shrunken workloads (smoke test)")


def pytest_collect_file(file_path, parent):
    """Collect bench_<family>[_<topic>].py when pytest is pointed at the folder (a file named on
    the command line is collected by pytest itself)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and \
            not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
