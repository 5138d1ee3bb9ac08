"""Which backends exist here, how one is chosen, and how to override the choice.

Every hot-path op has up to four implementations (docs/design.md, "Ops:
declared by their family"): ``reference`` (pure PyTorch), ``cpu`` (the C++ extension),
``triton`` and ``cuda``. ``backend=None`` means auto:

* CUDA tensors: ``triton``, unless a committed GPU run measured another backend faster on
  that workload (``GPU_PREFERENCE``);
* CPU tensors: ``cpu`` when the extension is built, else ``reference``.

Overrides, strongest first: the ``backend=`` argument of an op, ``use_backend(...)``
and the ``GENKERNELS_BACKEND`` environment variable. Asking for a backend that cannot
run raises :class:`BackendUnavailableError` naming what is missing; nothing falls
back silently.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import warnings

import torch

from . import registry
from .registry import BACKENDS

# Backends implemented per op, and the automatic choice's GPU preferences: declared by each
# family's ops.py through genkernels.registry (read-only views here).
#
# Auto choice on CUDA tensors (docs/design.md, "Automatic choice"): Triton,
# interpreter-tested and statically compiled, until a committed GPU run shows another
# backend correct and faster on that kind of workload. A preference (backend, applies,
# evidence) prefers ``backend`` where ``applies(workload)`` holds (``workload``: the
# keywords the op passes to resolve, e.g. n_maps) and cites the results file and the
# commit it measured. A CUDA kernel changed since its run, or never run, is reachable by
# name only. An op without a GPU backend has no preference: on CUDA tensors it runs its
# reference, unless that is a sequential loop.
OP_BACKENDS = registry.op_backends
GPU_PREFERENCE = registry.gpu_preferences


def _gpu_choice(op: registry.Op, workload: dict) -> str:
    if op.gpu is not None and op.gpu.applies(workload):
        return op.gpu.backend
    return "triton"


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run here; the message says what is missing."""


_local = threading.local()


@functools.cache
def extension_error() -> str | None:
    """None when genkernels._C loaded, else why it did not."""
    if os.environ.get("GENKERNELS_NO_EXT", "0") == "1":
        return "the C++ extension is disabled by GENKERNELS_NO_EXT=1"
    try:
        importlib.import_module("genkernels._C")
    except ImportError as exc:
        return (f"the C++ extension genkernels._C is not built ({exc}); "
                "reinstall with `pip install --no-build-isolation -e .`")
    return None


def extension_has_cuda() -> bool:
    return extension_error() is None and hasattr(torch.ops.genkernels, "som_online") and \
        torch._C._dispatch_has_kernel_for_dispatch_key("genkernels::som_online", "CUDA")


@functools.cache
def triton_error() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return None


def _why_unavailable(name: str, device: torch.device) -> str | None:
    if name == "reference":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"the cpu backend runs on CPU tensors, got {device.type} tensors"
        return extension_error()
    if name == "triton":
        if triton_error():
            return triton_error()
        if device.type == "cuda":
            return None
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return ("the triton backend runs on CUDA tensors (or on CPU tensors under "
                f"TRITON_INTERPRET=1), got {device.type} tensors")
    if name == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got {device.type} tensors"
        if extension_error():
            return extension_error()
        if not extension_has_cuda():
            return "genkernels._C was built without CUDA (set FORCE_CUDA=1 and rebuild where nvcc is found)"
        return None
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")


def unavailable_reason(name: str, device: torch.device | str = "cpu") -> str | None:
    """Why backend ``name`` cannot run on ``device`` here, or None when it can."""
    return _why_unavailable(_check_name(name, "name"), torch.device(device))


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` here, in the order of BACKENDS."""
    device = torch.device(device)
    return [b for b in BACKENDS if _why_unavailable(b, device) is None]


def _check_name(name: str, origin: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{origin} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


class use_backend(contextlib.ContextDecorator):
    """Force a backend for every op: ``genkernels.use_backend("triton")`` sets it for
    the thread, and ``with genkernels.use_backend("reference"): ...`` only inside the
    block. ``use_backend(None)`` returns to automatic choice."""

    def __init__(self, name: str | None):
        if name is not None:
            _check_name(name, "use_backend(name)")
        self._previous = getattr(_local, "backend", None)
        _local.backend = name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _local.backend = self._previous
        return False


def _environ_get(key: str, _raw=getattr(os.environ, "_data", None), _encode=getattr(os.environ, "encodekey", None)):
    """os.environ.get(key) in a tenth of its time where CPython keeps the environment as a
    dict of encoded keys (every op call reads GENKERNELS_BACKEND: 0.7 us through
    os.environ.get, a third of the backend choice); os.environ.get elsewhere."""
    if _raw is None or _encode is None:
        return os.environ.get(key)
    value = _raw.get(_encode(key))
    return None if value is None else os.environ.decodevalue(value)


def forced_backend() -> str | None:
    name = getattr(_local, "backend", None)
    if name is not None:
        return name
    env = _environ_get("GENKERNELS_BACKEND")
    if env:
        return _check_name(env, "GENKERNELS_BACKEND")
    return None


class sequential_blas(contextlib.ContextDecorator):
    """``with genkernels.backends.sequential_blas():`` -- BLAS calls of this thread (torch's
    matmuls) run on this thread alone inside the block, where the BLAS allows it (MKL).

    For loops of small products (a 100 x 64 x 100 GEMM takes 0.1 ms): BLAS starts a thread
    team for each, and beside a busy process that team waits a time slice for its second
    thread -- 16 ms per product measured on 2 cores. ``active=False`` makes it a no-op (the
    callers decide by the size of their products). Nesting restores the previous setting;
    without the C++ extension it does nothing."""

    def __init__(self, active: bool = True):
        self.active = active
        self._previous: list[int] = []

    def __enter__(self):
        if self.active and extension_error() is None:
            self._previous.append(int(torch.ops.genkernels.blas_set_local_threads(1)))
        return self

    def __exit__(self, *exc):
        if self.active and extension_error() is None:
            previous = self._previous.pop()
            if previous >= 0:
                torch.ops.genkernels.blas_set_local_threads(previous)
        return False


class blas_threads:
    """``with genkernels.backends.blas_threads(n):`` -- BLAS calls of this thread run on n
    threads inside the block (where the BLAS allows it: MKL), whatever the cpu kernels'
    busy-machine back-off left this thread's BLAS at (one thread after a late region, see
    csrc/cpu/parallel_region.h).

    For products whose result must not depend on how busy the machine is: MKL rounds some
    products differently on one thread than on its threaded path (a 6 x 6 x 455 fp32
    product does; a 1,000 x 784 x 500 one does not). Pick n from the products' shape
    (``blas_threads_for``), never from the machine's load. Blocks nest (the previous setting
    comes back at each exit); without the C++ extension it does nothing. It costs two op
    calls (a few microseconds): for the products of an epoch, not of an inner loop."""

    __slots__ = ("_previous", "n")

    def __init__(self, n: int):
        self.n = int(n)
        self._previous: list[int] = []

    def __enter__(self):
        if extension_error() is None:
            self._previous.append(_blas_set_local_threads()(self.n))
        return self

    def __exit__(self, *exc):
        if self._previous:
            previous = self._previous.pop()
            if previous >= 0 and previous != self.n:
                _blas_set_local_threads()(previous)
        return False


@functools.cache
def _blas_set_local_threads():
    """torch.ops.genkernels.blas_set_local_threads, looked up once (the lookup costs as much
    as the call)."""
    return torch.ops.genkernels.blas_set_local_threads


# Products below this many multiply-adds run with sequential_blas in the models' loops: a
# second BLAS thread saves little there and can cost a time slice on a busy machine. 2^24
# (about 0.5 ms of one core): the facade's 1,000 x 64 x 100 products (6.4M) took longer on
# MKL's 2-thread team than on one thread even on a quiet machine (2-core AMD EPYC).
SMALL_PRODUCT = 1 << 24


def small_products(rows: int, inner: int, cols: int) -> bool:
    """Whether a loop of (rows x inner) @ (inner x cols) products is one for sequential_blas."""
    return rows * inner * cols < SMALL_PRODUCT


def blas_threads_for(rows: int, inner: int, cols: int) -> int:
    """BLAS threads for a (rows x inner) @ (inner x cols) product that must reproduce bit
    for bit (``blas_threads``): one thread for a small product (``small_products``: the
    same result on every thread setting), else the thread setting (torch.set_num_threads)."""
    return 1 if small_products(rows, inner, cols) else torch.get_num_threads()


_warned: set[str] = set()


@torch.compiler.assume_constant_result
def resolve(op: str, device: torch.device, backend: str | None = None, **workload) -> str:
    """The backend that runs ``op`` on ``device``: explicit > use_backend > env > auto.

    ``workload``: what the automatic GPU choice depends on for this op (see
    GPU_PREFERENCE), e.g. ``n_maps=`` for som_online. Under torch.compile the choice is made once while tracing and baked into the graph
    (a compiled function keeps the backend it was traced with)."""
    requested = _check_name(backend, "backend") if backend is not None else forced_backend()
    declared = registry.get(op)
    name = _choose(declared, device, requested, workload)
    declared.prepare(name)
    return name


registry.install_resolver(resolve)


def _choose(declared: registry.Op, device: torch.device, requested: str | None, workload: dict) -> str:
    op, implemented = declared.name, declared.backends
    if requested is not None:
        if requested not in implemented:
            raise BackendUnavailableError(
                f"{op} has no {requested} backend; it is implemented for: {', '.join(implemented)}")
        why = _why_unavailable(requested, device)
        if why is not None:
            raise BackendUnavailableError(f"backend {requested!r} for {op} is unavailable: {why}")
        return requested
    if device.type == "cuda":
        preferred = _gpu_choice(declared, workload)
        for name in (preferred, *[b for b in ("triton", "cuda") if b != preferred]):
            if name in implemented and _why_unavailable(name, device) is None:
                return name
        if "reference" in implemented and not declared.sequential:
            return "reference"
        gpu = [b for b in implemented if b in ("triton", "cuda")]
        why = (triton_error() or extension_error() or "its GPU backends cannot run here") if gpu else \
            (f"it is implemented for {', '.join(implemented)} only, and its reference is a "
             "sequential Python loop; move the tensors to the CPU")
        raise BackendUnavailableError(f"no GPU backend for {op} on {device}: {why}")
    if device.type == "cpu" and "cpu" in implemented and extension_error() is None:
        return "cpu"
    if declared.sequential and op not in _warned:
        _warned.add(op)
        warnings.warn(f"{op}: running the pure-Python reference loop because "
                      f"{extension_error() or 'no compiled backend serves ' + device.type}; "
                      "it is slow beyond small sizes", RuntimeWarning, stacklevel=5)
    return "reference"
