import os

import torch

# Triton kernels run under the interpreter on CPU tensors when no GPU is present. This
# must be set before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "slow: long-running; run with -m slow, not in CI")


# Files whose single long fixture or test (a compile, the demo, a README block) would end a
# pytest-xdist run alone if scheduled last: under xdist they go first, beside the rest.
LONG_FILES = ("test_static_gpu.py", "test_cli_data.py", "test_readme.py", "test_static_bindings.py",
              "test_bench_smoke.py")


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):   # every worker sorts alike (xdist checks the order)
        items.sort(key=lambda item: LONG_FILES.index(item.path.name) if item.path.name in LONG_FILES
                   else len(LONG_FILES))
    has_gpu = torch.cuda.is_available()
    run_slow = "slow" in (config.getoption("-m") or "")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with -m slow"))


def pytest_collection_finish(session):
    """Start the background jobs of the modules collected (tests/background_jobs.py). Not
    in a pytest-xdist worker: every worker collects every module, and the other workers keep
    the cores busy anyway; a module's fixture starts its job when the module runs."""
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return
    started = set()
    for item in session.items:
        module = getattr(item, "module", None)
        start = getattr(module, "start_in_background", None)
        if callable(start) and module.__name__ not in started:
            started.add(module.__name__)
            start()


def pytest_sessionfinish(session):
    import background_jobs
    background_jobs.stop_all()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
