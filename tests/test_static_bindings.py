"""The CUDA bindings (csrc/cuda/*_ops.cpp) compile without a GPU (docs/design.md, "Testing").

tests/test_static_gpu.py compiles the kernels (csrc/cuda/*.cu); the bindings that turn
tensors into launcher calls are C++ against torch's c10/cuda and ATen headers and are
otherwise only compiled where torch has CUDA. Here every binding file goes through
``g++ -fsyntax-only -std=c++20`` with the flags setup.py's CUDAExtension gives the C++
compiler, torch's include paths, the CUDA toolkit's include directory and ``-Icsrc``.

The CPU torch wheel lacks one generated header of the CUDA build,
``c10/cuda/impl/cuda_cmake_macros.h``; tests/cuda_stubs/ holds a test-only copy with the
generated content (never on a real build's include path). Type errors, wrong launcher
signatures, missing includes and misuse of the c10/ATen API fail here; what only
registration checks at load time (the C++ signature against the schema of
csrc/genkernels.cpp) does not.

Skipped, with the reason, where g++, the CUDA headers or torch's c10/cuda headers are
absent. The torch headers are parsed once into a precompiled header (built in the
background from the end of collection on, tests/background_jobs.py), then the files
compile in parallel (one g++ per core, at most one per file).
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import time

import background_jobs
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUBS = os.path.join(ROOT, "tests", "cuda_stubs")
BINDINGS = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*_ops.cpp")))
# what setup.py passes to the C++ compiler for a CUDA build (cxx flags without -O3/-march,
# which change nothing in a syntax check), and what torch's BuildExtension adds
CXX_FLAGS = ["-std=c++20", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-DGENKERNELS_WITH_CUDA",
             "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H", "-fPIC"]


def _cuda_include_dir() -> str | None:
    """The CUDA toolkit's include directory (holding cuda_runtime_api.h), or None."""
    candidates = [os.path.join(os.environ[v], "include") for v in ("CUDA_HOME", "CUDA_PATH")
                  if os.environ.get(v)]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    candidates.append("/usr/local/cuda/include")
    for c in candidates:
        if os.path.isfile(os.path.join(c, "cuda_runtime_api.h")):
            return c
    if nvcc:  # e.g. a wrapper script in /usr/local/bin: ask nvcc where its headers are
        try:
            dry = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True,
                                 text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        for inc in re.findall(r'INCLUDES="?-I"?([^"\s]+)', dry.stdout + dry.stderr):
            if os.path.isfile(os.path.join(inc, "cuda_runtime_api.h")):
                return os.path.normpath(inc)
    return None


def _torch_include_paths() -> list[str]:
    from torch.utils import cpp_extension

    return list(cpp_extension.include_paths())


def _skip_reason() -> str | None:
    if not BINDINGS:
        return "no csrc/cuda/*_ops.cpp"
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "g++ not found"
    if _cuda_include_dir() is None:
        return "CUDA toolkit headers (cuda_runtime_api.h) not found: set CUDA_HOME"
    if not any(os.path.isfile(os.path.join(p, "c10", "cuda", "CUDAStream.h")) for p in _torch_include_paths()):
        return "torch ships no c10/cuda headers"
    return None


def compile_command(path: str) -> list[str]:
    """g++ -fsyntax-only for one binding file. torch and CUDA headers are system headers
    (-isystem), so -Wall speaks about this project's code only."""
    includes = []
    for p in _torch_include_paths():
        includes += ["-isystem", p]
    includes += ["-isystem", _cuda_include_dir(), "-I", os.path.join(ROOT, "csrc")]
    # -I comes before -isystem in the search: the stub only where torch lacks the real header
    if not any(os.path.isfile(os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h"))
               for p in _torch_include_paths()):
        includes += ["-I", STUBS]
    return [os.environ.get("CXX", "g++"), "-fsyntax-only", *CXX_FLAGS, *includes, path]


# The torch headers every binding file includes first. Parsing them is nearly all of a
# file's compile time, so they are parsed once into a precompiled header (g++ .gch) that
# each file whose leading includes are exactly these uses; a file that fails with it is
# compiled again without it, so the PCH only ever saves time (GENKERNELS_STATIC_PCH=0: off).
PCH_HEADERS = ("ATen/ATen.h", "c10/cuda/CUDAGuard.h", "c10/cuda/CUDAStream.h", "torch/library.h")


def _leading_system_includes(path: str) -> set[str]:
    """The <...> includes before the first "..." include or code line of a file."""
    found = set()
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("//"):
            continue
        m = re.match(r"#include\s*<([^>]+)>", line)
        if m is None:
            break
        found.add(m.group(1))
    return found


def _pch_command(folder: str) -> list[str]:
    """Writes the PCH's header into ``folder``; the g++ command that precompiles it."""
    header = os.path.join(folder, "bindings_pch.h")
    with open(header, "w") as f:
        f.writelines(f"#include <{h}>\n" for h in PCH_HEADERS)
    cmd = [a for a in compile_command(header)[:-1] if a != "-fsyntax-only"]
    return cmd + ["-x", "c++-header", header, "-o", header + ".gch"]


def start_in_background():
    """The PCH build (tens of seconds on one core), started when collection ends
    (tests/background_jobs.py: it runs at low priority beside the tests before this module);
    None where there is no PCH to build."""
    if SKIP is not None or os.environ.get("GENKERNELS_STATIC_PCH", "1") == "0":
        return None
    return background_jobs.start("static_bindings_pch", _pch_command, "genkernels-pch-")


def _build_pch() -> str | None:
    """The precompiled header (its .h; the .gch beside it), or None: off, or g++ failed."""
    job = start_in_background()
    if job is None or job.result(timeout=600).returncode != 0:
        return None
    return os.path.join(job.folder, "bindings_pch.h")


def _compile(path: str, pch: str | None) -> tuple[int, str, float]:
    start = time.perf_counter()
    use_pch = pch is not None and _leading_system_includes(path) >= set(PCH_HEADERS)
    extra = ["-include", pch] if use_pch else []
    cmd = compile_command(path)
    proc = subprocess.run(cmd[:-1] + extra + cmd[-1:], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if use_pch and (proc.returncode != 0 or "warning:" in proc.stderr):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@pytest.fixture(scope="module")
def compiled() -> dict[str, tuple[int, str, float]]:
    """{file name: (g++ status, output, seconds)} for every binding file, compiled in parallel."""
    pch = _build_pch()
    jobs = max(1, min(len(BINDINGS), os.cpu_count() or 1, int(os.environ.get("GENKERNELS_STATIC_JOBS", "8"))))
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        results = dict(zip(BINDINGS, pool.map(lambda p: _compile(p, pch), BINDINGS)))
    if pch is not None:
        for suffix in ("", ".gch"):  # about 400 MB
            os.remove(pch + suffix)
    return {os.path.basename(p): r for p, r in results.items()}


def test_stub_matches_the_generated_header():
    # the generated file of every shared-library build (PyTorch's
    # c10/cuda/impl/cuda_cmake_macros.h.in with C10_CUDA_BUILD_SHARED_LIBS on)
    text = open(os.path.join(STUBS, "c10", "cuda", "impl", "cuda_cmake_macros.h")).read()
    assert "#pragma once" in text and "#define C10_CUDA_BUILD_SHARED_LIBS" in text
    # a CUDA build of torch has the real one: the stub must only ever fill a gap
    for p in _torch_include_paths():
        real = os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h")
        if os.path.isfile(real):
            assert "C10_CUDA_BUILD_SHARED_LIBS" in open(real).read()


def test_every_binding_file_is_checked(compiled):
    names = set(compiled)
    assert {"som_ops.cpp", "boltzmann_ops.cpp", "hopfield_ops.cpp", "ising_ops.cpp", "random_ops.cpp"} <= names
    # every kernel file with a TORCH_LIBRARY_IMPL binding has its *_ops.cpp here
    for cu in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        ops = os.path.basename(cu)[:-3] + "_ops.cpp"
        if os.path.isfile(os.path.join(ROOT, "csrc", "cuda", ops)):
            assert ops in names


@pytest.mark.parametrize("name", [os.path.basename(p) for p in BINDINGS])
def test_binding_compiles(compiled, name):
    rc, output, seconds = compiled[name]
    assert rc == 0, f"g++ -fsyntax-only csrc/cuda/{name} failed ({seconds:.0f} s):\n{output[-8000:]}"


@pytest.mark.parametrize("name", [os.path.basename(p) for p in BINDINGS])
def test_binding_has_no_warnings(compiled, name):
    # setup.py builds with -Wall; torch's and CUDA's headers are -isystem here, so every
    # warning left is this project's
    rc, output, _ = compiled[name]
    assert rc == 0
    warnings = [line for line in output.splitlines() if "warning:" in line]
    assert not warnings, "\n".join(warnings[:20]) + "\n" + output[-4000:]
