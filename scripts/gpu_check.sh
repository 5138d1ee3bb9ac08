#!/usr/bin/env bash
# The first thing to run on a lent GPU (sized for 7 minutes on an H100, the build included):
# build the CUDA extension for sm_90a unless it is there, then per family section
#   1. the family's GPU tests (som, ising, energy: pytest -m gpu on its test files;
#      autoregressive, flows: the Triton tests, -k triton, which run on the GPU when it is there), then
#   2. every GPU target of the family timed with CUDA events (bench/gpu_targets.py), into
#      bench/results/<gpu>-targets.json and .md (<gpu> as bench/run.py names machines).
#
#   bash scripts/gpu_check.sh [autoregressive] [flows] [som] [ising] [energy]
#        (none: all five, in this order: the families never measured on a GPU first)
#   bash scripts/gpu_check.sh --dry-run [SECTION...]     (no GPU: no build, the gpu tests
#        skip, the targets run at tiny sizes on CPU; checks the script itself)
#
# Sections: autoregressive  tests/test_masked_*.py test_pixelcnn.py; masked_conv2d, masked_linear
#                  and masked_mlp fw+bw against their dense anchors, PixelCNN cached sampling
#           flows  tests/test_flows_{coupling,spline,layers,autoregressive}.py; a 1 GiB copy (the
#                  bandwidth reference), affine_coupling and rq_spline fw+bw against eager PyTorch
#           som    tests/test_som_*.py; BMU search 1M x 256 vs 4,096 nodes (fp32/tf32/bf16,
#                  torch.mm, addmm+argmin), online epochs (64 maps auto/triton, one map
#                  40x40x784 cuda/triton)
#           ising  tests/test_ising.py; Ising2D sweeps L=1024 x 16 and L=16,384, cuda/triton
#           energy tests/test_rbm*.py test_boltzmann.py test_dbn.py test_hopfield*.py
#                  test_random.py; RBM PCD-1 epoch (eager loop, triton, cuda_graph),
#                  bm_gibbs and async Hopfield recall (cuda/triton)
#
# Time limits in seconds (environment): BUILD_S (150), <SECTION>_TESTS_S and
# <SECTION>_TARGETS_S (AUTOREGRESSIVE 60/90, FLOWS 40/40, SOM 30/60, ISING 15/20, ENERGY 35/40), and
# TOTAL_S (420) for the whole
# script: every step's limit is cut to what is left of TOTAL_S, and a step with less than
# MIN_STEP_S (10) left is not started. A failed or timed-out step does not stop the next;
# a summary of every step ends the output (exit status 1 when a step failed).
# Other knobs: PYTHON (python3), TORCH_CUDA_ARCH_LIST (9.0a), MAX_JOBS (16), TEST_WORKERS
# (4, with pytest-xdist), ROUNDS (3 timed rounds per target), TAIL (lines of each log shown).
# GENKERNELS_COMMIT / GENKERNELS_TREE_STATE=clean|dirty: the commit the results name, for
# a copy of the tree without .git (e.g. GENKERNELS_COMMIT=$(git rev-parse HEAD) from the
# checkout that was sent).
#
# Output in $OUT (default ./gpu_out; at most 8 files, as the device tool returns them):
# summary.txt (environment and summary), build.log, <section>.log (tests and targets; the
# autoregressive and flows sections share models.log), and
# results/<gpu>-targets.{json,md}, copied after every targets step. Anchor wheels in ./.whl
# are installed into /tmp/site first when present (nothing is downloaded); MNIST is read from
# ./.gpudata when present. scripts/gpu_final.sh is the longer energy-family benchmark run.
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DRY=0
sections=()
for arg in "$@"; do
  case "$arg" in
    autoregressive | flows | som | ising | energy)
      [[ " ${sections[*]} " == *" $arg "* ]] || sections+=("$arg") ;;
    all) sections=(autoregressive flows som ising energy) ;;
    --dry-run) DRY=1 ;;
    -h | --help)
      sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p;}' "$0"
      exit 0 ;;
    *)
      echo "gpu_check.sh: unknown section '$arg' (choose from: autoregressive flows som ising energy, or --dry-run)" >&2
      exit 2 ;;
  esac
done
[ ${#sections[@]} -eq 0 ] && sections=(autoregressive flows som ising energy)

T0=$(date +%s)
STAMP=$(mktemp)  # results newer than this are this run's
TOTAL_S=${TOTAL_S:-420}
DEADLINE=$((T0 + TOTAL_S))
# the tree as it was sent, before this run writes anything (bench/gpu_targets.py records it)
if [ -z "${GENKERNELS_TREE_STATE:-}" ]; then
  state=$("$PY" -c "import sys; sys.path.insert(0, 'bench'); import gpu_targets as g; c = g.tree_state()[1]; \
print('' if c is None else 'clean' if c else 'dirty')" 2>/dev/null)
  [ -n "$state" ] && export GENKERNELS_TREE_STATE=$state
fi
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT/results"
if [ $DRY -eq 1 ]; then
  RESULTS=$OUT/results  # never beside the committed results
  targets_opts=(--dry-run)
else
  RESULTS=bench/results
  targets_opts=(--rounds "${ROUNDS:-3}")
  unset TRITON_INTERPRET
fi
mkdir -p "$RESULTS"
SUMMARY=()
FAILED=0

step() {  # step NAME LIMIT_S LOG COMMAND...: appends to $OUT/LOG
  local name=$1 limit=$2 log=$3
  shift 3
  local start rc line left
  start=$(date +%s)
  left=$((DEADLINE - start))
  if [ "$left" -lt "${MIN_STEP_S:-10}" ]; then
    line="$name: NOT RUN (${left} s left of TOTAL_S=$TOTAL_S)"
    SUMMARY+=("$line")
    FAILED=1
    echo "== $line"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit $limit s): $*" >>"$OUT/$log"
  timeout --kill-after=10 "$limit" "$@" >>"$OUT/$log" 2>&1
  rc=$?
  line="$name: rc=$rc, $(($(date +%s) - start)) s of $limit s"
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && line="$line (TIMED OUT)"
  # pytest: 5 = no test selected (a family without gpu tests) is no failure
  { [ $rc -eq 0 ] || { [ $rc -eq 5 ] && [[ $name == *" tests" ]]; }; } || FAILED=1
  SUMMARY+=("$line")
  echo "== $line"
  tail -n "${TAIL:-25}" "$OUT/$log"
}

{
  date -u
  echo "sections: ${sections[*]}$([ $DRY -eq 1 ] && echo ' (dry run)'), TOTAL_S=$TOTAL_S"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "commit ${GENKERNELS_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}, tree ${GENKERNELS_TREE_STATE:-unknown}"
} 2>&1 | tee "$OUT/summary.txt"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpudata ] && export GENKERNELS_DATA=$PWD/.gpudata

if [ $DRY -eq 1 ]; then
  SUMMARY+=("build: skipped (dry run)")
elif "$PY" -c "import sys; from genkernels import backends; sys.exit(0 if backends.extension_has_cuda() else 1)" 2>/dev/null; then
  SUMMARY+=("build: extension with CUDA already present")
else
  step build "${BUILD_S:-150}" build.log env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" \
    MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace
fi
"$PY" -c "import sys, torch, triton, genkernels; print(sys.version.split()[0], torch.__version__, torch.version.cuda, \
triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'); \
print('backends on cuda:', genkernels.available_backends('cuda'))" 2>&1 | tee -a "$OUT/summary.txt"

test_opts=(-q -ra -p no:cacheprovider)
"$PY" -c "import xdist" 2>/dev/null && test_opts+=(-n "${TEST_WORKERS:-4}")
"$PY" -c "import pytest_timeout" 2>/dev/null && test_opts+=(--timeout 60)

for section in "${sections[@]}"; do
  select=(-m gpu) log=$section.log
  case $section in
    autoregressive)
      files=(tests/test_masked_conv_triton.py tests/test_masked_linear_triton.py tests/test_masked_mlp.py
        tests/test_masked_conv_gated.py tests/test_pixelcnn.py)
      select=(-k triton) log=models.log
      tests_s=${AUTOREGRESSIVE_TESTS_S:-60} targets_s=${AUTOREGRESSIVE_TARGETS_S:-90} ;;
    flows)
      files=(tests/test_flows_coupling.py tests/test_flows_spline.py tests/test_flows_layers.py
        tests/test_flows_autoregressive.py)
      select=(-k triton) log=models.log
      tests_s=${FLOWS_TESTS_S:-40} targets_s=${FLOWS_TARGETS_S:-40} ;;
    som)
      files=(tests/test_som_*.py)
      tests_s=${SOM_TESTS_S:-30} targets_s=${SOM_TARGETS_S:-60} ;;
    ising)
      files=(tests/test_ising.py)
      tests_s=${ISING_TESTS_S:-15} targets_s=${ISING_TARGETS_S:-20} ;;
    energy)
      files=(tests/test_rbm*.py tests/test_boltzmann.py tests/test_dbn.py tests/test_hopfield*.py tests/test_random.py)
      tests_s=${ENERGY_TESTS_S:-35} targets_s=${ENERGY_TARGETS_S:-40} ;;
  esac
  step "$section tests" "$tests_s" "$log" "$PY" -m pytest "${test_opts[@]}" "${select[@]}" "${files[@]}"
  step "$section targets" "$targets_s" "$log" "$PY" bench/gpu_targets.py "$section" \
    --out "$RESULTS" "${targets_opts[@]}"
  if [ "$RESULTS" != "$OUT/results" ]; then
    find "$RESULTS" -maxdepth 1 -type f -name '*-targets.*' -newer "$STAMP" -exec cp {} "$OUT/results/" \;
  fi
done

{
  echo
  echo "== summary ($(($(date +%s) - T0)) s in all; logs and results in $OUT)"
  printf '  %s\n' "${SUMMARY[@]}"
  ls "$OUT/results"
} 2>&1 | tee -a "$OUT/summary.txt"
rm -f "$STAMP"
exit $FAILED
