#!/usr/bin/env bash
# One short GPU call: build with CUDA, time bench/gpu_quick.py, run the GPU tests of the
# newest kernels. Logs under $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
t0=$(date +%s)
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 timeout 110 python3 -m pip install --no-build-isolation \
  --no-deps -e . >"$OUT/build.log" 2>&1
echo "build rc=$? $(( $(date +%s) - t0 )) s"; tail -2 "$OUT/build.log"
timeout 60 python3 bench/gpu_quick.py --out "$OUT" 2>&1 | tee "$OUT/quick.log" | tail -16
echo "bench done $(( $(date +%s) - t0 )) s"
timeout ${TEST_S:-70} python3 -m pytest -v -n 16 -p no:cacheprovider --timeout 60 \
  tests/test_som_gpu.py tests/test_hopfield.py tests/test_hopfield_retrieval.py tests/test_boltzmann.py \
  -k "gpu or cuda or triton or online_kernels" >"$OUT/test.log" 2>&1
echo "tests rc=$? $(( $(date +%s) - t0 )) s"
grep -cE "PASSED" "$OUT/test.log"; grep -E "FAILED|ERROR" "$OUT/test.log" | grep -v "^E " | head -20
