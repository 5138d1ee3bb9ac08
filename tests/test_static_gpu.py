"""GPU code compiles for sm_80 and sm_90 without a GPU (docs/design.md, "Testing").

Runs ``python -m genkernels._static`` in a subprocess without TRITON_INTERPRET (the
interpreter replaces @triton.jit; started in the background when collection ends,
tests/background_jobs.py): every Triton kernel of the registry and every
csrc/cuda/*.cu must compile, stay within the shared-memory ceilings, and land in the
report. Writes to a temporary folder; the committed reports in bench/results/static/
come from running the same command by hand.
"""

import json
import os
import pathlib
import shutil
import sys

import background_jobs
import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvcc_available() -> bool:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("nvcc") is not None or os.access(os.path.join(cuda_home, "bin", "nvcc"), os.X_OK)


def start_in_background():
    """The report's compile, started when collection ends (tests/background_jobs.py: it
    runs at low priority beside the tests before this module)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

    def command(out):
        return [sys.executable, "-m", "genkernels._static", "--out", out] + ([] if _nvcc_available() else ["--no-cuda"])
    return background_jobs.start("static_gpu_report", command, "genkernels-static-", cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def static_report():
    job = start_in_background()
    return job.result(timeout=1500), pathlib.Path(job.folder)


def test_every_kernel_compiles_within_the_shared_memory_ceiling(static_report):
    proc, _ = static_report
    assert proc.returncode == 0, f"static compile failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


def test_reports_cover_every_registered_kernel_and_arch(static_report):
    proc, out = static_report
    assert proc.returncode == 0
    report = json.loads((out / "som.json").read_text())
    assert (out / "som.md").read_text().startswith("# Static GPU report: som")
    rows = report["kernels"]
    triton_rows = [r for r in rows if r["source"] == "triton"]
    names = {r["kernel"] for r in triton_rows}
    for kernel in ("_som_bmu_kernel", "_som_node_sums_kernel", "_som_distances_kernel",
                   "_som_online_kernel"):
        assert any(n.startswith(kernel + "[") for n in names), kernel
    for name in names:
        assert {r["arch"] for r in triton_rows if r["kernel"] == name} == {"sm_80", "sm_90"}
    for r in rows:
        assert r["registers"] > 0 and 0 <= r["shared"] <= r["shared_limit"]
        assert set(r["sass"]) >= {"HMMA", "HGMMA", "FFMA", "LDGSTS", "LDSM"}


@pytest.mark.skipif(not _nvcc_available(), reason="nvcc not found")
def test_cuda_sources_are_in_the_report(static_report):
    proc, out = static_report
    assert proc.returncode == 0
    rows = json.loads((out / "som.json").read_text())["kernels"]
    cuda_rows = [r for r in rows if r["source"] == "cuda"]
    assert {r["arch"] for r in cuda_rows} == {"sm_80", "sm_90a"}
    # the persistent kernel: every metric, map in shared or global memory, fp32 and fp64
    assert len({r["kernel"] for r in cuda_rows if r["kernel"].startswith("som_online_kernel<")}) == 16
    # the cooperative kernel (B blocks per map): the same 16 specialisations
    coop = [r for r in cuda_rows if r["kernel"].startswith("som_online_coop_kernel<")]
    assert len({r["kernel"] for r in coop}) == 16
    assert all(r["registers"] <= 128 for r in coop)  # 256 threads: two blocks per SM at least
    # no stack anywhere, but for one documented case: the cosine metric's IEEE division
    # (the kernels round as the reference does, no --use_fast_math) calls its slow-path
    # subroutine, whose call frame (24 bytes on sm_80, for the map-in-global-memory
    # cooperative kernel) is only entered for denormal or extreme operands
    def ieee_division_frame(r):
        return (r["kernel"] == "som_online_coop_kernel<Cosine, false, float>" and r["arch"] == "sm_80"
                and r["stack"] <= 24)
    assert all((r["stack"] == 0 or ieee_division_frame(r)) and r["local"] == 0 for r in cuda_rows)


def test_random_family_report(static_report):
    proc, out = static_report
    assert proc.returncode == 0
    rows = json.loads((out / "random.json").read_text())["kernels"]
    triton = {r["kernel"] for r in rows if r["source"] == "triton"}
    assert any("randint4x" in n for n in triton) and any("rand" in n and "randint" not in n for n in triton)
    if _nvcc_available():
        assert {r["arch"] for r in rows if r["source"] == "cuda"} == {"sm_80", "sm_90a"}
    assert all(r["stack"] == 0 and r["local"] == 0 and r["shared"] <= r["shared_limit"] for r in rows)


def test_hopfield_family_report(static_report):
    proc, out = static_report
    assert proc.returncode == 0
    rows = json.loads((out / "hopfield.json").read_text())["kernels"]
    triton = {r["kernel"] for r in rows if r["source"] == "triton"}
    assert {n.split("[")[0] for n in triton} == {"_hopfield_retrieval_kernel", "_hopfield_recall_async_kernel"}
    assert any("fp64" in n for n in triton) and any("bf16" in n for n in triton)
    for name in triton:
        assert {r["arch"] for r in rows if r["kernel"] == name} == {"sm_80", "sm_90"}
    if _nvcc_available():  # the persistent recall kernel, fp32 and fp64
        cuda = {r["kernel"] for r in rows if r["source"] == "cuda"}
        assert cuda == {"hopfield_recall_async_kernel<float>", "hopfield_recall_async_kernel<double>"}
    assert all(r["local"] == 0 and r["shared"] <= r["shared_limit"] for r in rows)
    # registers hold each row or tile: no stack, except the fp64 Triton recall kernel,
    # which keeps an 8-24 byte frame at 8 warps (80 registers; not register pressure)
    assert all(r["stack"] == 0 for r in rows if "fp64" not in r["kernel"] or "retrieval" in r["kernel"])
    assert all(r["stack"] <= 24 for r in rows)


def test_boltzmann_family_report(static_report):
    proc, out = static_report
    assert proc.returncode == 0
    rows = json.loads((out / "boltzmann.json").read_text())["kernels"]
    triton = {r["kernel"] for r in rows if r["source"] == "triton"}
    assert any(n.startswith("_bm_gibbs_kernel[") for n in triton)
    assert all(r["local"] == 0 and r["shared"] <= r["shared_limit"] for r in rows)
    if _nvcc_available():  # the persistent Gibbs kernel (csrc/cuda/boltzmann.cu), fp32 and fp64
        cuda = [r for r in rows if r["source"] == "cuda" and r["file"] == "csrc/cuda/boltzmann.cu"]
        assert {r["kernel"] for r in cuda} == {"bm_gibbs_kernel<float>", "bm_gibbs_kernel<double>"}
        assert {r["arch"] for r in cuda} == {"sm_80", "sm_90a"}
        # no spills; few registers, so eight 256-thread blocks (chains) fit an SM
        assert all(0 < r["registers"] <= 32 and r["stack"] == 0 for r in cuda)
        # the fp32 probability takes its exp in double (csrc/common/boltzmann.h)
        assert all(r["sass"]["DFMA"] > 0 for r in cuda)


def test_rbm_binary_half_step_report(static_report):
    proc, out = static_report
    assert proc.returncode == 0
    rows = json.loads((out / "boltzmann.json").read_text())["kernels"]
    binary = [r for r in rows if r["kernel"].startswith("_rbm_half_step_binary_kernel[")]
    assert {r["kernel"].split("[")[1].split(",")[0] for r in binary} == {"u8 states", "fp32 states"}
    assert any("fp64" in r["kernel"] for r in binary)
    for name in {r["kernel"] for r in binary}:
        assert {r["arch"] for r in binary if r["kernel"] == name} == {"sm_80", "sm_90"}
    # one row and a 128-unit slice per program: a handful of registers, no spills
    assert all(r["stack"] == 0 and r["local"] == 0 and r["registers"] <= 128 for r in binary)


def test_rbm_half_step_tf32_variant_uses_tensor_cores(static_report):
    proc, out = static_report
    assert proc.returncode == 0
    rows = json.loads((out / "boltzmann.json").read_text())["kernels"]
    tf32 = [r for r in rows if r["kernel"].startswith("_rbm_half_step_kernel[") and "tf32" in r["kernel"]]
    assert {r["arch"] for r in tf32} == {"sm_80", "sm_90"}
    assert all(r["stack"] == 0 and r["local"] == 0 for r in tf32)
    # tf32 tensor-core MMAs (HMMA on sm_80; HMMA or warpgroup GMMA on sm_90)
    assert all(r["sass"].get("HMMA", 0) + r["sass"].get("HGMMA", 0) > 0 for r in tf32), tf32


def test_rbm_half_step_offset_pointer_variant_report(static_report):
    """The variant that reads the counter base from device memory (RBM.fit(cuda_graph=True))
    compiles to the scalar variant's instruction mix and shared memory, without spills."""
    proc, out = static_report
    assert proc.returncode == 0
    rows = json.loads((out / "boltzmann.json").read_text())["kernels"]
    by_name = {(r["kernel"], r["arch"]): r for r in rows}
    variants = [r for r in rows if r["kernel"].startswith("_rbm_half_step_kernel[") and "offset_ptr" in r["kernel"]]
    assert {r["kernel"] for r in variants} == {
        "_rbm_half_step_kernel[fp32 states,fp32,visible->hidden,probs,offset_ptr]",
        "_rbm_half_step_kernel[u8 states,fp32,hidden->visible,offset_ptr]"}
    assert {r["arch"] for r in variants} == {"sm_80", "sm_90"}
    for r in variants:
        scalar = by_name[(r["kernel"].replace(",offset_ptr]", "]"), r["arch"])]
        assert r["stack"] == 0 and r["local"] == 0, r
        assert r["shared"] == scalar["shared"] and r["sass"] == scalar["sass"], (r, scalar)
