"""Options of ``pytest bench/bench_som.py --benchmark-only`` (environment fallbacks in
brackets): --data DIR [GENKERNELS_DATA], --bench-device cpu|cuda
[GENKERNELS_BENCH_DEVICE], --bench-quick [GENKERNELS_BENCH_QUICK=1]."""


def pytest_addoption(parser):
    group = parser.getgroup("genkernels bench")
    group.addoption("--data", default=None, help="folder holding the MNIST IDX files")
    group.addoption("--bench-device", default=None, choices=("cpu", "cuda"),
                    help="device the benchmarks run on (default cpu)")
    group.addoption("--bench-quick", action="store_true", help="shrunken workloads (smoke test)")
