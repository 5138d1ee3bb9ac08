#!/usr/bin/env bash
# Build, test and benchmark genkernels on a CUDA machine in one go.
#   bash scripts/gpu_session.sh [build] [test] [bench] [quickbench] [extra]
# Stages run in the order given (default: build test bench). Logs and results go to
# $OUT (default ./gpu_out). Anchor wheels in ./.whl (minisom, torchsom, xpysom and
# their needs) are installed into /tmp/site first when present; MNIST is read from
# ./.gpudata when present. Each stage has its own time limit so that a slow stage
# cannot eat the next one's. The energy family in one call: scripts/gpu_final.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test bench)
export PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  "$PY" -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"
  nvcc --version | tail -2
} 2>&1 | tee "$OUT/env.txt"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpudata ] && export GENKERNELS_DATA=$PWD/.gpudata

has_cuda_ext() {
  "$PY" -c "import genkernels, sys; from genkernels import backends; sys.exit(0 if backends.extension_has_cuda() else 1)" 2>/dev/null
}

for stage in "${stages[@]}"; do
  t0=$(date +%s)
  case "$stage" in
    build)
      if has_cuda_ext; then
        echo "== build: extension with CUDA already present"
      else
        FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
          timeout 330 "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
        echo "== build rc=$? ($(($(date +%s) - t0)) s)"; tail -5 "$OUT/build.log"
        has_cuda_ext && echo "cuda backend: yes" || echo "cuda backend: NO"
      fi
      ;;
    test)
      timeout ${TEST_TIMEOUT:-240} "$PY" -m pytest ${TEST_VERBOSITY:--q} -ra -n ${TEST_WORKERS:-8} -p no:cacheprovider \
        ${TEST_ARGS:-} ${TEST_FILES:-tests} >"$OUT/test.log" 2>&1
      echo "== test rc=$? ($(($(date +%s) - t0)) s)"; grep -E "passed|failed|error" "$OUT/test.log" | tail -3
      grep -E "^(FAILED|ERROR)" "$OUT/test.log" | head -30
      ;;
    bench|quickbench)
      q=""; [ "$stage" = quickbench ] && q="--quick"
      # BENCH_FAMILIES: one or more of som energy ising hopfield, each with its own limit
      for family in ${BENCH_FAMILIES:-som}; do
        t1=$(date +%s)
        timeout ${BENCH_TIMEOUT:-300} "$PY" bench/run.py "$family" --device cuda $q --out "$OUT" \
          >"$OUT/bench-$family.log" 2>&1
        echo "== $stage $family rc=$? ($(($(date +%s) - t1)) s)"; tail -40 "$OUT/bench-$family.log"
      done
      ;;
    extra)
      [ -n "${EXTRA:-}" ] && timeout ${EXTRA_TIMEOUT:-120} bash -c "$EXTRA" >"$OUT/extra.log" 2>&1
      echo "== extra rc=$? ($(($(date +%s) - t0)) s)"; tail -30 "$OUT/extra.log"
      ;;
    *) echo "unknown stage $stage" >&2 ;;
  esac
done
