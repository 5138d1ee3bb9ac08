"""The op registry: each family declares its ops once, ``backends`` chooses, the op dispatches.

A family's ``ops.py`` declares every op it owns with :func:`declare`::

    RECALL = registry.declare(
        "hopfield_recall_async",
        reference=_recall_reference,                       # the spec, pure PyTorch
        cpu=registry.extension("hopfield_recall_async"),   # torch.ops.genkernels.<name>
        triton=registry.lazy(__package__ + ".recall_triton", "hopfield_recall_async_triton"),
        cuda=registry.extension("hopfield_recall_async"),
        sequential=True,                                   # the reference is a Python loop
        fake=_recall_fake)                                 # meta kernel of genkernels::<name>

and calls it as ``RECALL.kernels[RECALL.resolve(device, backend)](*args)``: every implementation
takes the arguments of the op's schema (``csrc/genkernels.cpp``) in that order, so the
backend chosen is the only thing that differs between calls. What a declaration gives:

* the backends the op has (``backends.OP_BACKENDS``), whether its reference is a
  sequential loop usable only as an oracle (no automatic fallback to it on a GPU), and an
  optional :class:`GpuPreference` -- the backend a committed GPU run measured faster, with
  the results file and commit that justify it (``backends.GPU_PREFERENCE``);
* the fake (meta) kernel and the autograd formula of ``genkernels::<name>``, registered
  with ``torch.library`` when the C++ extension is loaded (its schema exists only then);
* lazy implementations: a Triton module is imported when its backend is first chosen
  (importing triton costs about a second), never at ``import genkernels``.

This module is part of the core: it imports no family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")


@dataclass(frozen=True)
class GpuPreference:
    """Prefer ``backend`` on CUDA tensors where ``applies(workload)`` holds (``workload``:
    the keywords the op passes to resolve, e.g. ``n_maps``). ``evidence`` cites the
    committed results file and commit that measured it correct and faster."""

    backend: str
    applies: Callable[[Mapping], bool]
    evidence: str

    def __iter__(self):  # (backend, applies, evidence), as a tuple unpacks
        return iter((self.backend, self.applies, self.evidence))


class _Lazy:
    """A callable that imports ``module`` and looks ``attr`` up on first use."""

    __slots__ = ("module", "attr", "_fn")

    def __init__(self, module: str, attr: str):
        self.module, self.attr, self._fn = module, attr, None

    def load(self) -> Callable:
        if self._fn is None:
            self._fn = getattr(importlib.import_module(self.module), self.attr)
        return self._fn

    def __call__(self, *args, **kwargs):
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.module!r}, {self.attr!r})"


def lazy(module: str, attr: str) -> _Lazy:
    """An implementation imported when first needed: ``lazy(__package__ + ".triton", "fn")``."""
    return _Lazy(module, attr)


class _Extension(_Lazy):
    """``torch.ops.genkernels.<name>``, looked up when first needed (the namespace exists
    only once the C++ extension is loaded)."""

    __slots__ = ()

    def __init__(self, name: str):
        super().__init__("genkernels._C", name)

    def load(self) -> Callable:
        if self._fn is None:
            importlib.import_module("genkernels._C")
            # the overload itself: calling it skips the packet's overload resolution
            self._fn = getattr(torch.ops.genkernels, self.attr).default
        return self._fn

    def __repr__(self) -> str:
        return f"extension({self.attr!r})"


def extension(name: str) -> _Extension:
    """The registered C++ op ``torch.ops.genkernels.<name>`` (cpu and cuda backends)."""
    return _Extension(name)


class Op:
    """A declared op: its implementations per backend and what the automatic choice needs.

    ``op.resolve(device, backend=None, **workload)`` names the backend that runs it
    (``backends.resolve``: explicit > ``use_backend`` > environment > automatic), and
    ``op(name, *args)`` runs that backend's implementation."""

    __slots__ = ("name", "backends", "sequential", "gpu", "kernels")

    def __init__(self, name: str, impls: dict[str, Callable], sequential: bool, gpu: GpuPreference | None):
        self.name = name
        self.backends = tuple(b for b in BACKENDS if b in impls)
        self.sequential = sequential
        self.gpu = gpu
        # backend -> implementation; a lazy one is replaced by what it loads when its backend
        # is first chosen (op.kernels[name](*args) is the cheapest call: ops on tiny inputs
        # take a few microseconds)
        self.kernels = dict(impls)

    def prepare(self, backend: str) -> None:
        """Load ``backend``'s implementation (``backends.resolve`` calls it on the backend it
        chose, outside any traced code: under torch.compile the graph then calls the loaded
        function, not the importer)."""
        impl = self.kernels[backend]
        if isinstance(impl, _Lazy):
            self.kernels[backend] = impl.load()

    def resolve(self, device: torch.device, backend: str | None = None, **workload) -> str:
        return _resolver(self.name, device, backend, **workload)

    def __call__(self, backend: str, *args, **kwargs):
        return self.kernels[backend](*args, **kwargs)

    def __repr__(self) -> str:
        return f"Op({self.name!r}, backends={self.backends})"


_OPS: dict[str, Op] = {}


def _resolver(op: str, device: torch.device, backend: str | None = None, **workload) -> str:
    """backends.resolve, installed by genkernels.backends when it loads (it imports this
    module, so this module cannot import it at its top)."""
    from . import backends
    return backends.resolve(op, device, backend, **workload)


def install_resolver(resolve: Callable[..., str]) -> None:
    global _resolver
    _resolver = resolve


def declare(name: str, *, reference: Callable, cpu: Callable | None = None, triton: Callable | None = None,
            cuda: Callable | None = None, sequential: bool = False, gpu: GpuPreference | None = None,
            fake: Callable | None = None, autograd: tuple[Callable, Callable] | None = None) -> Op:
    """Declare op ``name`` (once per process): its implementations per backend (each with
    the schema's signature), whether its reference is a sequential loop, its GPU
    preference, and for ``genkernels::<name>`` the fake kernel and ``autograd`` =
    (backward, setup_context) of ``torch.library.register_autograd``."""
    if name in _OPS:
        raise ValueError(f"op {name!r} is declared twice")
    impls = {"reference": reference, "cpu": cpu, "triton": triton, "cuda": cuda}
    impls = {b: f for b, f in impls.items() if f is not None}
    if gpu is not None and gpu.backend not in impls:
        raise ValueError(f"{name}: its GPU preference names {gpu.backend!r}, which it does not implement")
    op = Op(name, impls, sequential, gpu)
    if fake is not None or autograd is not None:
        register_schema_kernels(name, fake=fake, autograd=autograd)
    _OPS[name] = op
    return op


def register_schema_kernels(name: str, *, fake: Callable | None = None,
                            autograd: tuple[Callable, Callable] | None = None) -> bool:
    """Fake kernel and autograd of a C++ schema that is not itself a declared op (a
    backward op, a helper op): registered when the extension is loaded; returns whether."""
    if not _schema_exists(name):
        return False
    qualified = f"genkernels::{name}"
    if fake is not None:
        torch.library.register_fake(qualified)(fake)
    if autograd is not None:
        torch.library.register_autograd(qualified, autograd[0], setup_context=autograd[1])
    return True


def _schema_exists(name: str) -> bool:
    from .backends import extension_error
    return extension_error() is None and hasattr(torch.ops.genkernels, name)


def get(name: str) -> Op:
    try:
        return _OPS[name]
    except KeyError:
        raise KeyError(f"no op {name!r} is declared; declared: {', '.join(sorted(_OPS))}") from None


class _View(Mapping):
    """A read-only view of one field of every declared op."""

    def __init__(self, field: Callable[[Op], object], keep: Callable[[Op], bool] = lambda op: True):
        self._field, self._keep = field, keep

    def __getitem__(self, name: str):
        op = _OPS.get(name)
        if op is None or not self._keep(op):
            raise KeyError(name)
        return self._field(op)

    def __iter__(self) -> Iterator[str]:
        return (name for name, op in _OPS.items() if self._keep(op))

    def __len__(self) -> int:
        return sum(1 for op in _OPS.values() if self._keep(op))

    def __repr__(self) -> str:
        return repr(dict(self.items()))


# ------------------------------------------------------------------ static GPU report
_STATIC: dict[str, Callable[[], list]] = {}


def static_kernels(source: str, provider: Callable[[], list]) -> None:
    """Declare where a Triton module's kernel specialisations for the static GPU report
    come from. ``source`` names the family, or ``<family>.<stack>`` for one op stack of a
    family with several; ``provider()`` (usually ``lazy(<module>, "static_kernels")``)
    returns genkernels._static.TritonKernel entries."""
    if source in _STATIC:
        raise ValueError(f"the static kernels of {source!r} are declared twice")
    _STATIC[source] = provider


def static_kernel_providers() -> list[Callable[[], list]]:
    return list(_STATIC.values())


def static_kernel_sources() -> list[str]:
    """The names static kernels were declared under, in declaration order."""
    return list(_STATIC)


def load_families() -> list[str]:
    """Import every family (a subpackage of genkernels with an ``ops`` module: the package
    face imports its ops), so that their declarations are here; returns their names. The
    core finds families this way and never names one."""
    import os
    import pkgutil

    root = os.path.dirname(__file__)
    names = [m.name for m in pkgutil.iter_modules([root])
             if m.ispkg and os.path.exists(os.path.join(root, m.name, "ops.py"))]
    for name in names:
        importlib.import_module(f"{__package__}.{name}")
    return names


# What backends reads and tests inspect: name -> implemented backends, and the GPU
# preferences (name -> (backend, applies, evidence)).
op_backends: Mapping[str, tuple[str, ...]] = _View(lambda op: op.backends)
gpu_preferences: Mapping[str, GpuPreference] = _View(lambda op: op.gpu, keep=lambda op: op.gpu is not None)
