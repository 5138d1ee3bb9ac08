"""Compile every GPU kernel for sm_80 and sm_90 without a GPU and report what ptxas made
of it (DESIGN.md, "Testing"; recipes in GPU_STATIC.md).

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


def _ptr(dtype: str) -> str:
    return "*" + dtype


def _som_registry() -> list[TritonKernel]:
    import triton.language as tl

    from .som import triton as som_triton

    acc = {"fp32": tl.float32, "fp64": tl.float64}
    # contiguous inputs: the unit feature stride is specialised to a constexpr 1 by the
    # Triton launcher, as here
    strides = {"stride_xn": "i32", "stride_wk": "i32"}
    unit = {"stride_xd": 1, "stride_wd": 1}
    entries = []

    def bmu(metric, k, dtype="fp32", ignore_nan=False, precision="fp32"):
        import torch

        x_dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16,
                   "fp16": torch.float16}[dtype]
        precision_id = som_triton._bmu_precision(x_dtype, metric, ignore_nan, precision,
                                                 interpreted=False)
        exact, recheck, certify, slots, cfg = som_triton._bmu_plan(
            torch.empty(0, dtype=x_dtype), metric, k, precision_id)
        cfg = dict(cfg)
        acc_name = "fp64" if dtype == "fp64" else "fp32"
        # without CERTIFY the launcher passes the indices for the two unread pointers
        sig = {"X": _ptr(dtype), "W": _ptr(dtype), "INDICES": "*i64", "DISTANCES": _ptr(dtype),
               "UNSURE": "*i8" if certify else "*i64", "WSQ_MAX": "*fp32" if certify else "*i64",
               "N": "i32", "K": "i32", "D": "i32", "k": "i32", **strides, "C_BOUND": "fp32"}
        meta = dict(METRIC=som_triton.METRIC_IDS[metric], IGNORE_NAN=ignore_nan, EXACT=exact,
                    PRECISION=precision_id, RECHECK=recheck, CERTIFY=certify, SLOTS=slots,
                    ACC=acc[acc_name],
                    BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"])
        tag = (f"{metric},{dtype},k={k}" + (",ignore_nan" if ignore_nan else "")
               + (f",precision={precision}" if precision != "fp32" else ""))
        entries.append(TritonKernel("som", f"_som_bmu_kernel[{tag}]",
                                    lambda: som_triton._som_bmu_kernel, sig, {**meta, **unit},
                                    cfg["num_warps"], cfg["num_stages"]))

    def products(precision):
        cfg = dict(som_triton.PRODUCTS_CONFIG)
        sig = {"X": "*fp32", "W": "*fp32", "G": "*fp32", "N": "i32", "K": "i32", "D": "i32",
               **strides, "stride_gn": "i32"}
        meta = dict(PRECISION=som_triton.PRECISION_IDS[precision],
                    BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"])
        entries.append(TritonKernel("som", f"_som_products_kernel[{precision}]",
                                    lambda: som_triton._som_products_kernel, sig, {**meta, **unit},
                                    cfg["num_warps"], cfg["num_stages"]))

    def blocked_select(k, precision="fp32"):
        cfg = dict(som_triton.BLOCKED_SELECT_CONFIG)
        margin = som_triton.CERTIFY_MARGIN if precision == "fp32" else som_triton.LOW_PRECISION_MARGIN
        slots = som_triton._next_pow2(min(k + margin, som_triton.TOPK_SLOTS_MAX))
        sig = {"G": "*fp32", "WSQ": "*fp32", "WSQ_MAX": "*fp32", "X": "*fp32", "W": "*fp32",
               "INDICES": "*i64", "DISTANCES": "*fp32", "UNSURE": "*i8",
               "N": "i32", "K": "i32", "D": "i32", "k": "i32", "stride_gn": "i32", **strides,
               "C_BOUND": "fp32"}
        meta = dict(SLOTS=slots, BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"])
        tag = f"k={k}" + (f",precision={precision}" if precision != "fp32" else "")
        entries.append(TritonKernel("som", f"_som_bmu_products_kernel[{tag}]",
                                    lambda: som_triton._som_bmu_products_kernel, sig, {**meta, **unit},
                                    cfg["num_warps"], cfg["num_stages"]))

    def node_sums(metric, dtype="fp32", ignore_nan=False):
        import torch

        x_dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}[dtype]
        exact, recheck, _, slots, cfg = som_triton._bmu_plan(torch.empty(0, dtype=x_dtype), metric, 1,
                                                             certify=False)
        cfg = dict(cfg)
        acc_name = "fp64" if dtype == "fp64" else "fp32"
        sig = {"X": _ptr(dtype), "W": _ptr(dtype), "SUMS": _ptr(acc_name),
               "COUNTS": _ptr(acc_name), "DISTANCE_SUM": "*fp64",
               "N": "i32", "K": "i32", "D": "i32", **strides}
        meta = dict(METRIC=som_triton.METRIC_IDS[metric], IGNORE_NAN=ignore_nan, EXACT=exact,
                    RECHECK=recheck, SLOTS=slots, ACC=acc[acc_name],
                    BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"])
        tag = f"{metric},{dtype}" + (",ignore_nan" if ignore_nan else "")
        entries.append(TritonKernel("som", f"_som_node_sums_kernel[{tag}]",
                                    lambda: som_triton._som_node_sums_kernel, sig,
                                    {**meta, **unit}, cfg["num_warps"], cfg["num_stages"]))

    def distances(metric):
        cfg = dict(som_triton.DISTANCES_CONFIG)
        sig = {"X": "*fp32", "W": "*fp32", "OUT": "*fp32", "N": "i32", "K": "i32", "D": "i32",
               **strides}
        meta = dict(METRIC=som_triton.METRIC_IDS[metric], IGNORE_NAN=False, ACC=tl.float32,
                    BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"])
        entries.append(TritonKernel("som", f"_som_distances_kernel[{metric},fp32]",
                                    lambda: som_triton._som_distances_kernel, sig,
                                    {**meta, **unit}, cfg["num_warps"], cfg["num_stages"]))

    def online(rule, neighborhood, metric="euclidean", dtype="fp32"):
        cfg = dict(som_triton.ONLINE_CONFIG)
        acc_name = "fp64" if dtype == "fp64" else "fp32"
        sig = {"OUT": _ptr(acc_name), "X": _ptr(dtype), "ORDER": "*i64", "LR": _ptr(acc_name),
               "SIGMA": _ptr(acc_name), "COORDS": _ptr(acc_name), "PERIODS": _ptr(acc_name),
               "K": "i32", "D": "i32", "T": "i32", "stride_xn": "i32"}
        meta = dict(NEIGHBORHOOD=som_triton.NEIGHBORHOOD_IDS[neighborhood],
                    RULE=som_triton.RULE_IDS[rule], METRIC=som_triton.METRIC_IDS[metric],
                    ACC=acc[acc_name], BLOCK_K=cfg["BLOCK_K"], BLOCK_D=cfg["BLOCK_D"],
                    stride_xd=1)
        entries.append(TritonKernel("som", f"_som_online_kernel[{rule},{neighborhood},{metric},{dtype}]",
                                    lambda: som_triton._som_online_kernel, sig, meta,
                                    cfg["num_warps"], cfg["num_stages"]))

    bmu("euclidean", 1)
    bmu("euclidean", 2)
    bmu("euclidean", 8)
    bmu("euclidean", 1, "bf16")
    bmu("euclidean", 2, "fp16")
    bmu("euclidean", 1, ignore_nan=True)
    bmu("euclidean", 1, "fp64")
    bmu("euclidean", 1, precision="tf32")
    bmu("euclidean", 1, precision="bf16")
    bmu("euclidean", 4, precision="bf16")
    bmu("cosine", 1)
    bmu("cosine", 1, precision="tf32")
    bmu("cosine", 1, precision="bf16")
    bmu("manhattan", 1)
    bmu("chebyshev", 1)
    products("tf32")
    products("bf16")
    blocked_select(1)
    blocked_select(3)
    blocked_select(1, "tf32")
    distances("euclidean")
    node_sums("euclidean")
    node_sums("euclidean", ignore_nan=True)
    node_sums("euclidean", "fp64")
    node_sums("euclidean", "bf16")
    online("som", "gaussian")
    online("som", "bubble", "cosine")
    online("wtm", "gaussian")
    online("wta", "gaussian")
    online("som", "mexican_hat", dtype="fp64")
    return entries


def _random_registry() -> list[TritonKernel]:
    from . import triton_random

    # seeds >= 2^31 reach the kernels as i64 (>= 2^63 as u64): the i64 case is the common one
    def sig(out):
        return {"OFFSETS": "*i64", "OUT": out, "seed": "i64", "N": "i32"}

    meta = {"BLOCK": triton_random.BLOCK}
    return [
        TritonKernel("random", "_philox_randint4x_kernel",
                     lambda: triton_random._philox_randint4x_kernel, sig("*i32"), meta),
        TritonKernel("random", "_philox_rand_kernel", lambda: triton_random._philox_rand_kernel,
                     sig("*fp32"), meta),
    ]


def _hopfield_registry() -> list[TritonKernel]:
    import triton.language as tl

    from .hopfield import recall_triton
    from .hopfield import triton as hopfield_triton

    def recall(dtype, random, block_n):
        ptr = _ptr(dtype)
        sig = {"W": ptr, "STATES": ptr, "FIELDS": ptr, "CONVERGED": "*i8", "N": "i32",
               "max_sweeps": "i32", "seed": "i64", "offset": "i64"}
        order = "random" if random else "sequential"
        return TritonKernel("hopfield", f"_hopfield_recall_async_kernel[{dtype},{order},N<={block_n}]",
                            lambda: recall_triton._hopfield_recall_async_kernel, sig,
                            {"RANDOM": random, "BLOCK_N": block_n},
                            recall_triton._num_warps(block_n, 8 if dtype == "fp64" else 4), 3)

    def retrieval(dtype: str, d: int) -> TritonKernel:
        acc = "fp64" if dtype == "fp64" else "fp32"
        cfg = hopfield_triton._config(d)
        # contiguous inputs: unit feature strides are specialised to 1 by the launcher; a
        # shared pattern set differs only by the value of stride_xb (0)
        sig = {"OUT": _ptr(acc), "STEPS": "*i64", "Q": _ptr(dtype), "X": _ptr(dtype),
               "PARAMS": _ptr(acc), "P": "i32", "D": "i32", "max_steps": "i32",
               "stride_qb": "i32", "stride_xb": "i32", "stride_xp": "i32"}
        meta = {"BLOCK_P": cfg["BLOCK_P"], "BLOCK_D": cfg["BLOCK_D"],
                "ACC": {"fp32": tl.float32, "fp64": tl.float64}[acc], "stride_qd": 1, "stride_xd": 1}
        return TritonKernel("hopfield", f"_hopfield_retrieval_kernel[{dtype},D={d}]",
                            lambda: hopfield_triton._hopfield_retrieval_kernel, sig, meta,
                            cfg["num_warps"], 2)

    # recall: N <= 1024 in each dtype and order, and the largest N; retrieval: the
    # benchmark's feature counts (64, 256), a large D, half precision and fp64
    return [recall("fp32", True, 1024), recall("fp32", False, 1024), recall("fp64", True, 1024),
            recall("fp32", True, recall_triton.MAX_UNITS),
            retrieval("fp32", 64), retrieval("fp32", 256), retrieval("fp32", 1024),
            retrieval("bf16", 64), retrieval("fp16", 256), retrieval("fp64", 64)]


def _boltzmann_registry() -> list[TritonKernel]:
    from .boltzmann import bm_triton
    from .hopfield import recall_triton as hopfield_triton

    def gibbs(dtype, random, block_n):
        ptr = _ptr(dtype)
        sig = {"W": ptr, "STATES": ptr, "FIELDS": ptr, "CLAMP": "*i8", "TEMPS": ptr, "N": "i32",
               "S": "i32", "seed": "i64", "offset": "i64"}
        order = "random" if random else "sequential"
        return TritonKernel("boltzmann", f"_bm_gibbs_kernel[{dtype},{order},N<={block_n}]",
                            lambda: bm_triton._bm_gibbs_kernel, sig,
                            {"RANDOM": random, "BLOCK_N": block_n},
                            hopfield_triton._num_warps(block_n, 8 if dtype == "fp64" else 4), 3)

    return [gibbs("fp32", True, 1024), gibbs("fp32", False, 1024), gibbs("fp64", True, 1024)]
def _ising_registry() -> list[TritonKernel]:
    from .ising import triton as ising_triton

    # offsets beyond 2^31 reach the kernel as i64, the common case for a model's stream
    sig = {"SPINS": "*i8", "TH": "*i64", "seed": "i64", "offset": "i64", "sweep": "i32",
           "B": "i32", "L": "i32", "Q": "i32"}
    return [TritonKernel("ising", f"_ising_half_sweep_kernel[colour={colour}]",
                         lambda: ising_triton._ising_half_sweep_kernel, sig,
                         {"COLOUR": colour, "BLOCK": ising_triton.BLOCK}, ising_triton.NUM_WARPS)
            for colour in (0, 1)]


# Every Triton kernel of the library, per family, with what its launcher runs on a GPU.
REGISTRY_BUILDERS: dict[str, Callable[[], list[TritonKernel]]] = {
    "som": _som_registry, "random": _random_registry, "hopfield": _hopfield_registry,
    "boltzmann": lambda: _boltzmann_registry() + _rbm_registry(), "ising": _ising_registry}


def _rbm_registry() -> list[TritonKernel]:
    import torch
    import triton.language as tl

    from .boltzmann import triton as rbm_triton

    def half_step(states, dtype, transpose, return_probs, precision="ieee", offset_ptr=False):
        cfg = rbm_triton.CONFIG[torch.float64 if dtype == "fp64" else torch.float32]
        sig = {"S": _ptr(states), "W": _ptr(dtype), "BIAS": _ptr(dtype), "SAMPLES": "*u8",
               "PROBS": _ptr(dtype), "seed": "i64", "offset": "i64", "B": "i32", "N_IN": "i32",
               "N_OUT": "i32", "stride_sb": "i32"}
        if offset_ptr:  # the counter base read from device memory (RBM.fit(cuda_graph=True))
            sig["OFFSET_PTR"] = "*i64"
        # contiguous weights: the unit stride of the direction is specialised to a constexpr 1
        if transpose:
            sig["stride_wn"] = "i32"
            strides = {"stride_wk": 1}
        else:
            sig["stride_wk"] = "i32"
            strides = {"stride_wn": 1}
        meta = {"RETURN_PROBS": return_probs, "ACC": tl.float64 if dtype == "fp64" else tl.float32,
                "BLOCK_B": cfg["BLOCK_B"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"],
                "PRECISION": precision, "USE_OFFSET_PTR": offset_ptr, **strides,
                **({} if offset_ptr else {"OFFSET_PTR": None})}
        tag = f"{states} states,{dtype},{'hidden->visible' if transpose else 'visible->hidden'}" + \
            (",probs" if return_probs else "") + (f",{precision}" if precision != "ieee" else "") + \
            (",offset_ptr" if offset_ptr else "")
        return TritonKernel("boltzmann", f"_rbm_half_step_kernel[{tag}]", lambda: rbm_triton._rbm_half_step_kernel,
                            sig, meta, cfg["num_warps"], cfg["num_stages"])

    def half_step_binary(states, dtype, return_probs):
        cfg = rbm_triton.BINARY_CONFIG[torch.float64 if dtype == "fp64" else torch.float32]
        sig = {"S": _ptr(states), "W_ROWS": _ptr(dtype), "BIAS": _ptr(dtype), "SAMPLES": "*u8",
               "PROBS": _ptr(dtype), "seed": "i64", "offset": "i64", "N_IN": "i32", "N_OUT": "i32",
               "stride_sb": "i32"}
        meta = {"RETURN_PROBS": return_probs, "ACC": tl.float64 if dtype == "fp64" else tl.float32,
                "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"]}
        tag = f"{states} states,{dtype}" + (",probs" if return_probs else "")
        return TritonKernel("boltzmann", f"_rbm_half_step_binary_kernel[{tag}]",
                            lambda: rbm_triton._rbm_half_step_binary_kernel, sig, meta, cfg["num_warps"],
                            cfg["num_stages"])

    return [half_step("fp32", "fp32", False, True), half_step("u8", "fp32", False, True),
            half_step("u8", "fp32", True, False), half_step("fp32", "fp32", False, False),
            half_step("fp64", "fp64", False, True), half_step("u8", "fp32", False, True, "tf32"),
            half_step("u8", "fp32", True, False, "tf32"),
            half_step("fp32", "fp32", False, True, offset_ptr=True), half_step("u8", "fp32", True, False, offset_ptr=True),
            half_step_binary("u8", "fp32", True), half_step_binary("u8", "fp32", False),
            half_step_binary("fp32", "fp32", True), half_step_binary("u8", "fp64", True)]




def registry() -> list[TritonKernel]:
    return [entry for build in REGISTRY_BUILDERS.values() for entry in build()]


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
    tasks = []  # (label, function, args)
    if triton_kernels:
        for index, entry in enumerate(registry()):
            tasks += [(f"{entry.name} sm_{cc}", _triton_job, (index, cc)) for cc in archs]
    if cuda_sources:
        if find_nvcc() is None:
            errors.append("nvcc not found: CUDA sources not compiled (pass --no-cuda)")
        else:
            for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
                rel = os.path.relpath(path, ROOT)
                tasks += [(f"{rel} sm_{cc}", _cuda_job, (path, cc)) for cc in archs]
    rows: list[dict] = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs or os.cpu_count() or 1, mp_context=context) as pool:
        futures = [(label, pool.submit(fn, *args)) for label, fn, args in tasks]
        for label, future in futures:
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 -- reported, fails the run
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
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
