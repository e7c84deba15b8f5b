#!/usr/bin/env bash
# Every GPU check of trtserve in one run, on the GPU machine, from the repository root:
# the device layer, the NVRTC KV kernels, the onnxruntime CUDA and TensorRT executors
# (pytest -m gpu), then a short device benchmark. Full logs go to $OUT; a summary prints last.
#
# Stage the wheels first on a machine with PyPI (see ../shared/gpu/README.md):
#   EXTRA_WHEELS="pytest pytest-timeout iniconfig pluggy packaging pygments \
#     tensorrt-rtx-cu13 tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs" \
#     bash ../shared/gpu/prepare.sh
# and make the last shard's call run:  bash tests/gpu/run_on_device.sh
# (the tensorrt-rtx wheels are optional: without them the TensorRT tests skip with the reason).
set -uo pipefail

OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then
  export CUDA_HOME=/usr/local/cuda   # where cuda-pathfinder finds libnvrtc for the KV kernels
fi
if [ -n "${CUDA_HOME:-}" ]; then
  export LD_LIBRARY_PATH="$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
PY=${PYTHON:-python3}
export TRTSERVE_REQUIRE_GPU=1   # here a missing GPU / CUDA EP is a failure, not a skip

{
  nvidia-smi || true
  "$PY" - <<'PYEOF'
import importlib
for name in ("numpy", "onnx", "onnxruntime", "cuda.bindings", "tensorrt", "tensorrt_rtx",
             "pytest"):
    try:
        mod = importlib.import_module(name)
        extra = ""
        if name == "onnxruntime":
            extra = " providers=" + ",".join(mod.get_available_providers())
        print(f"{name}: {getattr(mod, '__version__', '?')} ({mod.__file__}){extra}")
    except Exception as exc:  # report, do not stop: the tests say what they need
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
PYEOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

"$PY" -m pytest tests/gpu -m gpu -v -rsx -p no:cacheprovider \
  --junitxml="$OUT/junit-gpu.xml" ${PYTEST_ARGS:-} >"$OUT/pytest-gpu.log" 2>&1
test_rc=$?

"$PY" bench/gpu_device.py --json "$OUT/gpu_device.json" >"$OUT/bench-gpu-device.log" 2>&1
bench_rc=$?

echo "================ trtserve GPU checks ================"
grep -E "PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS" "$OUT/pytest-gpu.log" | sed 's/^/  /' | tail -40
tail -n 1 "$OUT/pytest-gpu.log"
echo "pytest rc=$test_rc   (full log: $OUT/pytest-gpu.log)"
echo "---------------- device benchmark (rc=$bench_rc) ----------------"
tail -n 15 "$OUT/bench-gpu-device.log"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
