"""Checkpoints shared by every model: written atomically, read with weights_only=True.

A checkpoint is a dict {"format", "kind", "config", ...} saved with torch.save. Writing
goes to a temp file in the target folder, fsynced, then os.replace'd over the target,
so an interrupted save never damages an existing file.
"""

from __future__ import annotations

import os
import tempfile

import torch

FORMAT = 1


def save_atomic(payload: dict, path: str, kind: str) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) as a ``kind`` checkpoint."""
    payload = {"format": FORMAT, "kind": kind, **payload}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path: str, kind: str) -> dict:
    """Load a ``kind`` checkpoint written by :func:`save_atomic`; clear errors for a
    missing file, an unreadable one, or a checkpoint of something else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no checkpoint at {path!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"path: {path!r} is not a readable genkernels checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or \
            payload.get("kind") != kind or "config" not in payload:
        found = payload.get("kind") if isinstance(payload, dict) else None
        held = f" (it holds a {found} checkpoint)" if isinstance(found, str) and found != kind else ""
        raise ValueError(f"path: {path!r} is not a genkernels {kind} checkpoint{held}")
    return payload
