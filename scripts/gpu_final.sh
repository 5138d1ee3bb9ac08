#!/usr/bin/env bash
# On a lent GPU, run `bash scripts/gpu_check.sh` first (every family's gpu tests and GPU
# targets, sized for 5 minutes with the build); this script is the longer benchmark run.
#
# One GPU call for the energy family (about 9 minutes at most): build the CUDA extension,
# run the energy-family GPU tests, then every energy-family GPU benchmark on cuda:
#   energy     bench/run.py energy   (RBM PCD-1 epoch at batch 100 and the large PCD-10
#                                     workload: genkernels, the eager PyTorch loop, the bare products)
#   ising      bench/run.py ising    (flips per ns: cuda, triton, reference)
#   recall     bench/bench_hopfield_recall.py (async Hopfield recall, unit updates per second)
#   bm_gibbs   bench/bench_bm_gibbs.py (Boltzmann Gibbs sweeps, unit updates per second; when present)
#   retrieval  bench/bench_hopfield.py (continuous Hopfield retrieval vs the SDPA loop and its
#                                       torch.compile version; shorter time budget per case)
# (`genkernels bench hopfield --device cuda` runs retrieval then recall in one command; here
# they are two steps, so each keeps its own time limit.)
#
#   bash scripts/gpu_final.sh
#
# Results go to bench/results/ (as every runner writes them) and are copied to
# $OUT/results; logs to $OUT (default ./gpu_out). Anchor wheels in ./.whl are installed into
# /tmp/site first when present; MNIST is read from ./.gpudata when present. Every step has
# its own time limit in seconds (BUILD_S, TEST_S, ENERGY_S, ISING_S, RECALL_S, BM_GIBBS_S, RETRIEVAL_S),
# a failed or timed-out step does not stop the next, and a summary of every step ends the output.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT" bench/results
PY=${PYTHON:-python3}
T0=$(date +%s)
STAMP=$(mktemp)
SUMMARY=()

step() {  # step NAME LIMIT_S LOG COMMAND...
  local name=$1 limit=$2 log=$3
  shift 3
  local start rc line
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$log" 2>&1
  rc=$?
  line="$name: rc=$rc, $(($(date +%s) - start)) s of $limit s"
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && line="$line (TIMED OUT)"
  SUMMARY+=("$line")
  echo "== $line"
  tail -n "${TAIL:-20}" "$OUT/$log"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpudata ] && export GENKERNELS_DATA=$PWD/.gpudata

if "$PY" -c "import sys; from genkernels import backends; sys.exit(0 if backends.extension_has_cuda() else 1)" 2>/dev/null; then
  SUMMARY+=("build: extension with CUDA already present")
else
  step build "${BUILD_S:-150}" build.log env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    MAX_JOBS="${MAX_JOBS:-16}" "$PY" -m pip install --no-build-isolation --no-deps -e .
fi
"$PY" -c "import genkernels; print('cuda backends:', genkernels.available_backends('cuda'))" 2>&1 | tee -a "$OUT/env.txt"

test_opts=(-q -ra -p no:cacheprovider)
"$PY" -c "import xdist" 2>/dev/null && test_opts+=(-n "${TEST_WORKERS:-8}")
"$PY" -c "import pytest_timeout" 2>/dev/null && test_opts+=(--timeout 60)
step tests "${TEST_S:-110}" test.log "$PY" -m pytest "${test_opts[@]}" \
  tests/test_rbm_kernels.py tests/test_rbm_binary.py tests/test_rbm.py tests/test_boltzmann.py tests/test_ising.py \
  tests/test_hopfield.py tests/test_hopfield_retrieval.py -k "gpu or cuda or triton"

step energy "${ENERGY_S:-90}" bench_rbm.log "$PY" bench/run.py energy --device cuda --out bench/results
step ising "${ISING_S:-60}" bench_ising.log "$PY" bench/run.py ising --device cuda --out bench/results
step recall "${RECALL_S:-45}" bench_recall.log "$PY" bench/bench_hopfield_recall.py --device cuda --out bench/results
[ -f bench/bench_bm_gibbs.py ] && step bm_gibbs "${BM_GIBBS_S:-45}" bench_bm_gibbs.log "$PY" bench/bench_bm_gibbs.py \
  --device cuda --out bench/results
step retrieval "${RETRIEVAL_S:-50}" bench_retrieval.log "$PY" bench/bench_hopfield.py --device cuda --budget 0.5 \
  --out bench/results

mkdir -p "$OUT/results"
find bench/results -maxdepth 1 -type f -newer "$STAMP" -exec cp {} "$OUT/results/" \;
rm -f "$STAMP"
echo
echo "== summary ($(($(date +%s) - T0)) s in all; results copied to $OUT/results)"
printf '  %s\n' "${SUMMARY[@]}"
ls "$OUT/results"
