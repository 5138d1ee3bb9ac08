"""Checkpoints shared by every model: written atomically, read with weights_only=True,
every field validated on load.

A checkpoint is a dict {"format", "kind", "config", ...} saved with torch.save.

Writing (:func:`save_atomic`) goes to a temp file in the target's folder, fsynced, then
``os.replace``d over the target, so an interrupted save never damages an existing file.
The rules for what is at the path, chosen as ``numpy.save`` does:

* a symbolic link is written through: the file it points to is replaced and the link
  stays a link (to a checkpoint);
* anything else that is not a regular file (a folder, a device, a FIFO, a socket) is
  refused with a ValueError before anything is written;
* a new file gets the mode ``open()`` would give it (0666 minus the umask), a replaced
  file keeps its mode;
* temp files left behind by a save that was killed (``.tmp-<name>.<pid>.*``, their
  process gone) are removed by the next save of the same checkpoint.

Reading (:func:`read`) checks the envelope; the models check every field through one
validator, :class:`Fields` (over :func:`field`, :func:`int_field`, :func:`check_tensor` and
:func:`check_state`), whose errors name the field and the file.
"""

from __future__ import annotations

import glob
import math
import os
import stat
import tempfile
import threading

import torch

from .random import SEED_RANGE

FORMAT = 1

_umask_lock = threading.Lock()


def _umask() -> int:
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _target(path) -> str:
    """The file a save of ``path`` replaces: the path itself, or a symlink's final target."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise ValueError("path must not be empty")
    return os.path.realpath(path)


def _blocking_file(folder: str) -> str | None:
    """The first existing ancestor-or-self of ``folder`` that is not a folder, if any."""
    current = os.path.abspath(folder)
    while True:
        if os.path.lexists(current):
            return None if os.path.isdir(current) else current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _make_writable_folder(folder: str, name: str, shown, probe: bool = True) -> None:
    """Create ``folder``; with ``probe``, also write and remove a file there (a caller that
    writes its own temp file next skips the probe)."""
    blocker = _blocking_file(folder)
    if blocker is not None:
        raise ValueError(f"{name}: cannot write {os.fspath(shown)!r}: {blocker!r} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        if probe:
            fd, probe_path = tempfile.mkstemp(dir=folder, prefix=".tmp-probe-")
            os.close(fd)
            os.unlink(probe_path)
    except OSError as exc:
        raise ValueError(f"{name}: cannot write into the folder {folder!r} "
                         f"({exc.strerror or exc})") from exc


def check_output_path(path, name: str = "path", probe: bool = True) -> str:
    """Validate that a file can be written at ``path`` before long work starts: its folder
    is created (parents included) and must be writable, and whatever is at the path must be
    a regular file (or a symlink to one, or nothing). Returns the path; raises ValueError
    naming ``name`` otherwise. Nothing is left behind but the created folders."""
    target = _target(path)
    if os.path.lexists(target) and not stat.S_ISREG(os.stat(target).st_mode):
        kind = "a folder" if os.path.isdir(target) else "not a regular file"
        raise ValueError(f"{name}: {os.fspath(path)!r} is {kind}; a checkpoint or output file is written "
                         "only over a regular file")
    _make_writable_folder(os.path.dirname(target), name, path, probe)
    return os.fspath(path)


def check_output_dir(path, name: str = "out") -> str:
    """Create the folder ``path`` (parents included) and check that files can be written in
    it; raises ValueError naming ``name`` when it cannot, before any work is done."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike; got {type(path).__name__}")
    path = os.fspath(path)
    _make_writable_folder(path, name, path)
    return path


def _remove_stale_temps(folder: str, base: str) -> None:
    for tmp in glob.glob(os.path.join(glob.escape(folder), f".tmp-{glob.escape(base)}.*.*")):
        pid = tmp[len(os.path.join(folder, f".tmp-{base}.")):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer is alive: maybe saving right now
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, owned by another user
        try:
            os.unlink(tmp)
        except OSError:
            pass


def save_atomic(payload: dict, path, kind: str) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) as a ``kind`` checkpoint
    at ``path`` (see the module docstring for symlinks, modes and leftovers)."""
    payload = {"format": FORMAT, "kind": kind, **payload}
    check_output_path(path, probe=False)  # the temp file below is the probe
    target = _target(path)
    folder, base = os.path.split(target)
    _remove_stale_temps(folder, base)
    mode = stat.S_IMODE(os.stat(target).st_mode) if os.path.exists(target) else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{base}.{os.getpid()}.", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path, kind: str) -> dict:
    """Load a ``kind`` checkpoint written by :func:`save_atomic`; clear errors for a
    missing file, an unreadable one, a checkpoint of something else, or one of this kind
    whose 'config' field is missing or not a dict."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no checkpoint at {os.fspath(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"path: {os.fspath(path)!r} is not a readable genkernels checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else None
        held = f" (it holds a {found} checkpoint)" if isinstance(found, str) and found != kind else ""
        raise ValueError(f"path: {os.fspath(path)!r} is not a genkernels {kind} checkpoint{held}")
    field(payload, "config", dict, path, "a dict")  # a damaged checkpoint of this kind: name the field
    return payload


# ----------------------------------------------------------------- field validation
def _where(path) -> str:
    return f"checkpoint {os.fspath(path)!r}" if path is not None else "checkpoint"


def field(payload: dict, key: str, types, path=None, what: str | None = None):
    """payload[key], which must exist and be an instance of ``types``; ValueError naming
    the field otherwise."""
    if not isinstance(payload, dict) or key not in payload:
        raise ValueError(f"{_where(path)}: the field {key!r} is missing")
    value = payload[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        names = what or " or ".join(t.__name__ for t in _as_tuple(types))
        raise ValueError(f"{_where(path)}: the field {key!r} must be {names}; got {type(value).__name__}")
    return value


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def int_field(payload: dict, key: str, low: int | None = None, high: int | None = None, path=None) -> int:
    """An integer field within [low, high]."""
    value = field(payload, key, int, path, "an int")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{_where(path)}: the field {key!r} must lie in {bounds}; got {value}")
    return value


def check_tensor(name: str, value, shape: tuple, dtype: torch.dtype, path=None, *,
                 finite: bool = True, values: tuple | None = None) -> torch.Tensor:
    """A stored tensor with exactly ``shape`` and ``dtype``: finite when floating, and
    holding only ``values`` when given (e.g. (0, 1) for binary chains)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{_where(path)}: the field {name!r} must be a tensor; got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
        raise ValueError(f"{_where(path)}: the field {name!r} must be a {tuple(shape)} {dtype} tensor; "
                         f"got {tuple(value.shape)} {value.dtype}")
    if finite and value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{_where(path)}: the field {name!r} holds NaN or Inf")
    if values is not None and value.numel():
        allowed = torch.zeros_like(value, dtype=torch.bool)
        for v in values:
            allowed |= value == v
        if not bool(allowed.all()):
            bad = value[~allowed].flatten()[0].item()
            raise ValueError(f"{_where(path)}: the field {name!r} must hold only {values}; got the value {bad!r}")
    return value


def check_state(payload: dict, module: torch.nn.Module, path=None, key: str = "state",
                values: dict[str, tuple] | None = None) -> dict[str, torch.Tensor]:
    """payload[key] must hold exactly ``module``'s state_dict entries, each with the same
    shape and dtype, finite, and (``values``: name -> allowed values) within its set."""
    return Fields(payload, path).state(module, key, values)


# dtypes a model's checkpoint may name in its config
MODEL_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# a model's stream position: the counter of its next draw. It starts at 0 and grows by the
# draws made (2^63 counters are out of reach), so a negative one is a crafted checkpoint
OFFSET_RANGE = (0, 2**63 - 1)


class Fields:
    """The fields of a checkpoint (or of a dict inside one), validated one by one: every
    accessor checks the field's type and range and raises ValueError naming the file and
    the field -- with ``prefix`` in front for a nested payload, e.g.
    'layers[1].state.weights' -- before a model is built or loaded from it."""

    def __init__(self, payload: dict, path=None, prefix: str = ""):
        if not isinstance(payload, dict):
            raise ValueError(f"{_where(path)}: the field {prefix.rstrip('.') or 'payload'!r} must be a dict; "
                             f"got {type(payload).__name__}")
        self.payload, self.path, self.prefix = payload, path, prefix
        self._named = {prefix + k: v for k, v in payload.items() if isinstance(k, str)}

    def name(self, key: str) -> str:
        return self.prefix + key

    def error(self, key: str, message: str) -> ValueError:
        """A ValueError naming the file and the field: "... the field 'key' <message>"."""
        return ValueError(f"{_where(self.path)}: the field {self.name(key)!r} {message}")

    def __contains__(self, key: str) -> bool:
        return key in self.payload

    def get(self, key: str, types, what: str | None = None):
        return field(self._named, self.name(key), types, self.path, what)

    def int(self, key: str, low: int | None = None, high: int | None = None) -> int:
        return int_field(self._named, self.name(key), low, high, self.path)

    def real(self, key: str, positive: bool = False) -> float:
        """A finite real number (an int or a float; > 0 when ``positive``)."""
        value = float(self.get(key, (int, float), "a real number"))
        if not math.isfinite(value) or (positive and not value > 0):
            raise self.error(key, "must be finite" + (" and > 0" if positive else "") + f"; got {value!r}")
        return value

    def choice(self, key: str, choices) -> str:
        value = self.get(key, str)
        if value not in choices:
            raise self.error(key, f"must be one of {list(choices)}; got {value!r}")
        return value

    def seed(self, key: str = "seed") -> int:
        return self.int(key, *SEED_RANGE)

    def offset(self, key: str = "offset") -> int:
        return self.int(key, *OFFSET_RANGE)

    def dtype(self, key: str = "dtype", dtypes: dict | None = None) -> torch.dtype:
        dtypes = MODEL_DTYPES if dtypes is None else dtypes
        name = self.get(key, str)
        if name not in dtypes:
            raise self.error(key, f"must be one of {sorted(dtypes)}; got {name!r}")
        return dtypes[name]

    def sub(self, key: str) -> Fields:
        """The dict field ``key`` as Fields of its own (its errors name 'key.<field>')."""
        return Fields(self.get(key, dict), self.path, self.name(key) + ".")

    def records(self, key: str) -> list:
        """A list of dicts (a training history)."""
        value = self.get(key, list, "a list of dicts")
        if not all(isinstance(record, dict) for record in value):
            raise self.error(key, "must be a list of dicts")
        return list(value)

    def tensor(self, key: str, shape: tuple, dtype: torch.dtype, *, values: tuple | None = None) -> torch.Tensor:
        value = self.get(key, torch.Tensor, "a tensor")
        return check_tensor(self.name(key), value, shape, dtype, self.path, values=values)

    def tensors(self, key: str, expected: dict[str, tuple[tuple, torch.dtype]],
                values: dict[str, tuple] | None = None) -> dict[str, torch.Tensor]:
        """The dict of tensors ``key``, holding exactly the entries of ``expected`` (name ->
        (shape, dtype)), each finite and (``values``: name -> allowed values) within its set."""
        state = self.get(key, dict, "a dict of tensors")
        if set(state) != set(expected):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise self.error(key, f"must hold the entries {sorted(expected)}"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unexpected {extra}" if extra else ""))
        for name, (shape, dtype) in expected.items():
            check_tensor(f"{self.name(key)}.{name}", state[name], shape, dtype, self.path,
                         values=(values or {}).get(name))
        return state

    def state(self, module: torch.nn.Module, key: str = "state",
              values: dict[str, tuple] | None = None) -> dict[str, torch.Tensor]:
        """``module``'s state_dict entries, each of the same shape and dtype as the module's."""
        return self.tensors(key, {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}, values)


def leading_rows(value, default: int = 0) -> int:
    """The row count of a stored (rows, ...) tensor whose row count is free (persistent
    chains); ``default`` when it is no tensor with dimensions (check_tensor reports it)."""
    return int(value.shape[0]) if isinstance(value, torch.Tensor) and value.dim() >= 1 else default
