"""What the tests need to know about this machine, in one place: the device the Triton
tests run on (the interpreter on CPU tensors without a GPU, see conftest.py), the backends
available, and one skip mark per backend carrying the reason it cannot run. Tolerances per
dtype: tests/tolerances.py."""
import contextlib

import pytest
import torch

from genkernels import backends

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPU_BACKENDS = backends.available_backends("cpu")
HAS_EXT = backends.extension_error() is None
HAS_CPU = "cpu" in CPU_BACKENDS
HAS_TRITON = "triton" in backends.available_backends(DEVICE)
HAS_CUDA_BACKEND = "cuda" in backends.available_backends("cuda")
# the compiled backends that run on CPU tensors here (triton through the interpreter)
COMPILED = [b for b in ("cpu", "triton") if b in CPU_BACKENDS]


def needs(backend: str, device: str | None = None):
    """Skip unless ``backend`` runs on ``device`` (default: cpu for "cpu", cuda for "cuda",
    DEVICE for "triton" and "reference")."""
    device = device or {"cpu": "cpu", "cuda": "cuda"}.get(backend, DEVICE)
    why = backends.unavailable_reason(backend, device)
    return pytest.mark.skipif(why is not None, reason=f"{backend} backend on {device}: {why}")


needs_ext = pytest.mark.skipif(not HAS_EXT, reason=f"the C++ extension: {backends.extension_error()}")
needs_cpu = needs("cpu")
needs_triton = needs("triton")
needs_cuda_backend = needs("cuda")


@contextlib.contextmanager
def cpu_backoff(ns: int = 60 * 10**9):
    """The cpu kernels' busy-machine back-off (csrc/cpu/parallel_region.h) forced for the
    block, as after a late region: every region on the calling thread, its BLAS on one
    thread. ``ns=-1``: a quiet machine for the block (no back-off, late regions ignored),
    however busy this one is. Ended after the block either way."""
    torch.ops.genkernels.cpu_force_backoff(ns)
    try:
        yield
    finally:
        torch.ops.genkernels.cpu_force_backoff(0)


@contextlib.contextmanager
def num_threads(n: int):
    """torch.set_num_threads(n) for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def jacobian_logdet(fn, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """log |det J| at each sample of x (B, ...) of the map fn(x[, context]) -> (y, ...), by
    autograd's full Jacobian (the brute-force check of a flow's log-determinant)."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        args = () if context is None else (context[i:i + 1],)
        jac = torch.autograd.functional.jacobian(lambda v: fn(v, *args)[0].reshape(-1), xi).reshape(xi.numel(), -1)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def randomise_flow(flow, seed: int = 3, scale: float = 0.2):
    """Every parameter of a flow (or layer) drawn from N(0, scale^2) -- its conditioners'
    output layers start at zero -- and its ActNorms marked initialised: a made-up but valid
    state. Returns the flow."""
    from genkernels.flows import ActNorm

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    for m in flow.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return flow


def grid_mass_and_inside(flow, half: float, points: int, samples: int, seed: int = 11) -> tuple[float, float]:
    """(the grid integral of exp(log_prob) over [-half, half]^2 with ``points`` per side, the
    fraction of ``samples`` of the flow's own draws inside that box): equal for a normalised
    2-D density (a random flow may put mass outside any fixed box)."""
    side = torch.linspace(-half, half, points, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = float(flow.log_prob(grid).exp().sum() * (side[1] - side[0]) ** 2)
        draws = flow.sample(samples, seed=seed)
    return mass, float((draws.abs() <= half).all(1).double().mean())
