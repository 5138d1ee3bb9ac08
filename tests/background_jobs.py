"""Long subprocesses a test module needs (a compile, a report), started when collection
ends so that they run beside the tests before that module, on the core the Python-bound
tests (the Triton interpreter, most of the suite) leave idle.

A module opts in by defining ``start_in_background()``: conftest.py calls it once per
session when a test of that module was collected (not for --collect-only), and the
module's fixture calls it again (it starts the job only once) and waits for
``job.result()``. The same command runs, with the same output; only its start is earlier.

A job runs at the lowest priority (nice 19) in its own process group, so it takes only the
CPU the tests leave; when a fixture waits for it, the group is raised to this process's
priority (where the OS allows it), so the wait is no longer than running it then. Jobs
still running at the end of the session are killed, and their folders removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable

_JOBS: dict[str, Job] = {}


class Job:
    """``make_command(folder)`` -> argv, run in a new process group at nice 19; ``folder``
    is a new temporary directory (the job's to write in), removed at the end of the session."""

    def __init__(self, make_command: Callable[[str], list[str]], prefix: str, **popen_kwargs):
        self.folder = tempfile.mkdtemp(prefix=prefix)
        self.args = make_command(self.folder)
        self._stdout = tempfile.TemporaryFile()
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(self.args, stdout=self._stdout, stderr=self._stderr, start_new_session=True,
                                      preexec_fn=lambda: os.nice(19), **popen_kwargs)
        self._result: subprocess.CompletedProcess | None = None

    def result(self, timeout: float) -> subprocess.CompletedProcess:
        """Wait for the job (at most ``timeout`` seconds from now) -> its CompletedProcess
        (text stdout and stderr). Raises subprocess.TimeoutExpired, the job killed, on timeout."""
        if self._result is None:
            try:
                os.setpriority(os.PRIO_PGRP, self._proc.pid, os.getpriority(os.PRIO_PROCESS, 0))
            except OSError:  # no privilege to raise a priority, or the group has exited
                pass
            try:
                returncode = self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
            outputs = []
            for stream in (self._stdout, self._stderr):
                stream.seek(0)
                outputs.append(stream.read().decode(errors="replace"))
                stream.close()
            self._result = subprocess.CompletedProcess(self.args, returncode, *outputs)
        return self._result

    def kill(self) -> None:
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self._proc.wait()


def start(key: str, make_command: Callable[[str], list[str]], prefix: str, **popen_kwargs) -> Job:
    """The job named ``key``, started now unless it already was this session."""
    if key not in _JOBS:
        _JOBS[key] = Job(make_command, prefix, **popen_kwargs)
    return _JOBS[key]


def stop_all() -> None:
    """Kill what still runs and remove every job's folder (end of the session)."""
    for job in _JOBS.values():
        job.kill()
        shutil.rmtree(job.folder, ignore_errors=True)
    _JOBS.clear()
