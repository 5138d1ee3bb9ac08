"""Compile every GPU kernel for sm_80 and sm_90 without a GPU and report what ptxas made
of it (docs/design.md, "Testing").

* Triton: each entry of :data:`REGISTRY` -- a kernel with the signature and the
  meta-parameters its launcher uses on a GPU -- goes through
  ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``.
* CUDA: every ``csrc/cuda/*.cu`` goes through
  ``nvcc -std=c++20 -O3 -cubin -arch=sm_80|sm_90a -Xptxas -v -Icsrc``.

For every kernel and architecture the report holds registers, stack and local memory
(non-zero = spills), shared memory (Triton: what the launch needs; CUDA: the static part,
the dynamic part is set per launch) against the per-block ceiling, and the SASS
instruction mix (tensor-core HMMA/HGMMA/IMMA, FFMA, LDGSTS, LDSM). Reports go to
``bench/results/static/<family>.json`` and ``<family>.md``.

    python -m genkernels._static [--out DIR] [--arch 80 90] [--no-cuda] [--no-triton] [--jobs N]

Exit status 1 on a compile error or on shared memory beyond the ceiling. Run it in a
process without ``TRITON_INTERPRET`` (the interpreter replaces ``@triton.jit``).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import glob
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "static")
ARCHS = (80, 90)
# Shared memory per block a kernel may use (opt-in maximum), bytes.
SHARED_LIMIT = {80: 166_912, 90: 232_448}
SASS_OPCODES = ("HMMA", "HGMMA", "IMMA", "FFMA", "FADD", "DFMA", "LDGSTS", "LDSM")


@dataclasses.dataclass(frozen=True)
class TritonKernel:
    """One Triton kernel specialisation as its launcher runs it on a GPU."""

    family: str                      # report file: bench/results/static/<family>.*
    name: str                        # row name in the report
    kernel: Callable[[], object]     # returns the @triton.jit function (imports lazily)
    signature: dict[str, str]        # argument -> Triton type ("*fp32", "i32", ...)
    constexprs: dict[str, object]    # meta-parameters and specialised arguments
    num_warps: int = 4
    num_stages: int = 2


def ptr(dtype: str) -> str:
    """A Triton pointer type: ptr("fp32") -> "*fp32"."""
    return "*" + dtype


def registry() -> list[TritonKernel]:
    """Every Triton kernel specialisation of the library: each family (and the core's
    random stream) declares a provider, its Triton module's ``static_kernels()``, through
    genkernels.registry; the families are found by genkernels.registry.load_families()."""
    from . import registry as op_registry
    op_registry.load_families()
    return [entry for provider in op_registry.static_kernel_providers() for entry in provider()]


# --------------------------------------------------------------------------- tools
def _tool(name: str) -> str | None:
    """cuobjdump / nvdisasm: Triton's bundled copy first, then PATH and CUDA_HOME."""
    try:
        from triton.backends.nvidia import compiler as nvidia_compiler
        bundled = os.path.join(os.path.dirname(nvidia_compiler.__file__), "bin", name)
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which(name)
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", name), os.X_OK):
            return os.path.join(home, "bin", name)
    return None


def find_nvcc() -> str | None:
    return _tool("nvcc")


def _demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout
    pretty = out.splitlines()
    return dict(zip(names, pretty)) if len(pretty) == len(names) else {n: n for n in names}


def _short_cuda_name(pretty: str) -> str:
    """'void genkernels::som::cuda::(anonymous namespace)::som_online_kernel<(genkernels::
    som::Metric)0, true, float>(float const*, ...)' -> 'som_online_kernel<Euclidean, true, float>'."""
    name = re.sub(r"^void\s+", "", pretty.replace("(anonymous namespace)::", ""))
    cut = min(i for i in (name.find("<"), name.find("("), len(name)) if i >= 0)
    head = name[:cut].rsplit("::", 1)[-1]
    if cut == len(name) or name[cut] != "<":
        return head
    depth, end = 0, cut
    for end in range(cut, len(name)):
        depth += name[end] == "<"
        depth -= name[end] == ">"
        if depth == 0:
            break
    targs = name[cut + 1:end]
    metrics = ("Euclidean", "Cosine", "Manhattan", "Chebyshev")
    targs = re.sub(r"\(genkernels::som::Metric\)(\d)", lambda m: metrics[int(m.group(1))], targs)
    return f"{head}<{targs}>"


def cubin_usage(cubin_path: str) -> dict[str, dict]:
    """Per function of a cubin: registers, stack, local, static shared, SASS mix."""
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        raise RuntimeError("cuobjdump not found (neither bundled with triton nor on PATH)")
    res = subprocess.run([cuobjdump, "-res-usage", cubin_path], capture_output=True, text=True,
                         check=True).stdout
    usage: dict[str, dict] = {}
    current = None
    for line in res.splitlines():
        m = re.match(r"\s*Function\s+(\S+):", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            fields = dict(re.findall(r"(\w+):(\d+)", line))
            usage[current] = {"registers": int(fields.get("REG", 0)),
                              "stack": int(fields.get("STACK", 0)),
                              "local": int(fields.get("LOCAL", 0)),
                              "shared_static": int(fields.get("SHARED", 0))}
            current = None
    sass = subprocess.run([cuobjdump, "-sass", cubin_path], capture_output=True, text=True,
                          check=True).stdout
    current = None
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in sass.splitlines():
        m = re.match(r"\s*Function\s*:\s*(\S+)", line)
        if m:
            current = m.group(1)
            continue
        if current:
            for op in re.findall(r"\b(" + "|".join(SASS_OPCODES) + r")(?:\.\w+)*\b", line):
                counts[current][op] += 1
    for fn, info in usage.items():
        info["sass"] = {op: counts[fn].get(op, 0) for op in SASS_OPCODES}
    return usage


# ------------------------------------------------------------------------ compiling
def compile_triton(entry: TritonKernel, cc: int, workdir: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = entry.kernel()
    signature = dict(entry.signature)
    for name in entry.constexprs:
        signature[name] = "constexpr"
    src = ASTSource(fn=fn, signature=signature, constexprs=dict(entry.constexprs))
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                              options={"num_warps": entry.num_warps, "num_stages": entry.num_stages})
    path = os.path.join(workdir, f"triton_{cc}.cubin")
    with open(path, "wb") as fh:
        fh.write(compiled.asm["cubin"])
    usage = cubin_usage(path)
    info = next(iter(usage.values()))
    return {"family": entry.family, "kernel": entry.name, "source": "triton", "arch": f"sm_{cc}",
            "num_warps": entry.num_warps, "num_stages": entry.num_stages,
            "registers": info["registers"], "stack": info["stack"], "local": info["local"],
            "shared": int(compiled.metadata.shared), "shared_limit": SHARED_LIMIT[cc],
            "sass": info["sass"]}


def compile_cuda(path: str, cc: int, workdir: str) -> list[dict]:
    nvcc = find_nvcc()
    arch = "sm_90a" if cc == 90 else f"sm_{cc}"
    out = os.path.join(workdir, os.path.basename(path) + f".{arch}.cubin")
    cmd = [nvcc, "-std=c++20", "-O3", "-cubin", f"-arch={arch}", "-Xptxas",
           "-v", "-I" + os.path.join(ROOT, "csrc"), "-o", out, path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {path} ({arch}):\n{proc.stderr}")
    usage = cubin_usage(out)
    pretty = _demangle(list(usage))
    family = os.path.splitext(os.path.basename(path))[0]
    rows = []
    for mangled, info in sorted(usage.items(), key=lambda kv: pretty[kv[0]]):
        rows.append({"family": family, "kernel": _short_cuda_name(pretty[mangled]),
                     "source": "cuda", "file": os.path.relpath(path, ROOT), "arch": arch,
                     "registers": info["registers"], "stack": info["stack"],
                     "local": info["local"], "shared": info["shared_static"],
                     "shared_limit": SHARED_LIMIT[cc], "sass": info["sass"]})
    return rows


# -------------------------------------------------------------------------- reports
def _markdown(family: str, rows: list[dict], versions: dict) -> str:
    lines = [f"# Static GPU report: {family}", "",
             "Generated by `python -m genkernels._static` (no GPU needed). "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
             "Shared = bytes per block (Triton: the launch's total; CUDA: the static part -- "
             "dynamic shared memory is sized per launch). Stack/local > 0 means spills.", "",
             "| kernel | source | arch | warps | regs | stack | local | shared | limit | "
             + " | ".join(SASS_OPCODES) + " |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(SASS_OPCODES)]
    for r in rows:
        lines.append(f"| `{r['kernel']}` | {r['source']} | {r['arch']} | {r.get('num_warps', 8)} | "
                     f"{r['registers']} | {r['stack']} | {r['local']} | {r['shared']} | "
                     f"{r['shared_limit']} | "
                     + " | ".join(str(r["sass"][op]) for op in SASS_OPCODES) + " |")
    return "\n".join(lines) + "\n"


def _versions() -> dict:
    versions = {}
    try:
        import triton
        versions["triton"] = triton.__version__
    except ImportError:
        pass
    nvcc = find_nvcc()
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"release ([\d.]+)", out)
        versions["nvcc"] = m.group(1) if m else "unknown"
    return versions


def _build_key(entry: TritonKernel) -> tuple:
    """What a Triton build depends on: equal keys compile to the same cubin."""
    fn = entry.kernel()
    return (fn.__module__, fn.__name__, tuple(entry.signature.items()),
            tuple((name, repr(value)) for name, value in entry.constexprs.items()),
            entry.num_warps, entry.num_stages)


@functools.cache
def _registry_cached() -> list[TritonKernel]:
    return registry()


def _triton_job(index: int, cc: int) -> dict:
    entry = _registry_cached()[index]
    with tempfile.TemporaryDirectory() as workdir:
        return compile_triton(entry, cc, workdir)


def _cuda_job(path: str, cc: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as workdir:
        return compile_cuda(path, cc, workdir)


def run(out_dir: str = DEFAULT_OUT, archs=ARCHS, triton_kernels: bool = True,
        cuda_sources: bool = True, jobs: int | None = None, log=print) -> tuple[list[dict], list[str]]:
    """Compile everything (in `jobs` worker processes), write the reports; returns
    (rows, errors)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces @triton.jit")
    errors: list[str] = []
    tasks = []  # (label, function, args, row fields to set on the job's result or None)
    if triton_kernels:
        # entries that differ only in their row name (the same kernel, signature,
        # meta-parameters and launch options) are one build: compiled once, reported under each name
        first: dict[tuple, int] = {}
        for index, entry in enumerate(registry()):
            built = first.setdefault(_build_key(entry), index)
            names = {"family": entry.family, "kernel": entry.name}
            tasks += [(f"{entry.name} sm_{cc}", _triton_job, (built, cc), names) for cc in archs]
    if cuda_sources:
        if find_nvcc() is None:
            errors.append("nvcc not found: CUDA sources not compiled (pass --no-cuda)")
        else:
            for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
                rel = os.path.relpath(path, ROOT)
                tasks += [(f"{rel} sm_{cc}", _cuda_job, (path, cc), None) for cc in archs]
    rows: list[dict] = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs or os.cpu_count() or 1, mp_context=context) as pool:
        submitted: dict[tuple, concurrent.futures.Future] = {}
        futures = []
        for label, fn, args, names in tasks:
            if (fn, args) not in submitted:
                submitted[(fn, args)] = pool.submit(fn, *args)
            futures.append((label, submitted[(fn, args)], names))
        for label, future, names in futures:
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 -- reported, fails the run
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            if names is not None:
                result = {**result, **names}
            rows.extend(result if isinstance(result, list) else [result])
            log(f"compiled {label}")
    for r in rows:
        if r["shared"] > r["shared_limit"]:
            errors.append(f"{r['kernel']} {r['arch']}: {r['shared']} B of shared memory "
                          f"exceeds the {r['shared_limit']} B ceiling")
    os.makedirs(out_dir, exist_ok=True)
    versions = _versions()
    by_family: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by_family[r["family"]].append(r)
    for family, family_rows in by_family.items():
        with open(os.path.join(out_dir, f"{family}.json"), "w") as fh:
            json.dump({"versions": versions, "kernels": family_rows}, fh, indent=1)
            fh.write("\n")
        with open(os.path.join(out_dir, f"{family}.md"), "w") as fh:
            fh.write(_markdown(family, family_rows, versions))
    return rows, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genkernels._static", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="report folder (default: %(default)s)")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--no-cuda", action="store_true", help="skip csrc/cuda/*.cu")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton registry")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    args = parser.parse_args(argv)
    rows, errors = run(args.out, tuple(args.arch), not args.no_triton, not args.no_cuda, args.jobs)
    print(f"{len(rows)} kernel builds reported in {args.out}")
    for err in errors:
        print("ERROR:", err, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
