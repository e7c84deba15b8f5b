#!/usr/bin/env bash
# `serve --engine-dir` on the GPU machine (tests/gpu/test_engine_dir_gpu.py) in one lease:
#   1. a TensorRT-for-RTX directory built on a machine without a GPU is refused in one line
#      (TensorRT for RTX does not run sm_90): once with the directory built on the CPU machine
#      and carried over (a small Llama, built by `stage`), once with the default model built on
#      the device with the GPU hidden from the build (the README's `trtserve build` command);
#   2. an ONNX Runtime build directory is served on the GPU with no rebuild.
#
# Two modes:
#   bash tests/gpu/run_engine_dir_check.sh stage [DEST]   on the CPU machine (reaches PyPI):
#        downloads tensorrt-rtx-cu13 (+ -bindings, -libs) and pytest for CPython 3.12 x86_64,
#        builds the small TensorRT-for-RTX directory, packs both into shards of <= 55 MB under
#        DEST/s0..sN (default .gpu-trt) and prints the calls to make.
#   bash tests/gpu/run_engine_dir_check.sh [STAGE]         on the device, after the standard
#        wheels are in /tmp/site (install-on-device.sh) and every shard was copied to STAGE
#        (default /root/trtstage): installs the shards into /tmp/site, runs the test under
#        timeout, writes $OUT/summary.txt (printed last) and $OUT/logs.tgz.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
SHARD_BYTES=${SHARD_BYTES:-55000000}
TRT_VERSION=${TRT_VERSION:-1.7.1.116}   # the version that builds here: the device must match it

stage() {
  local dest=${1:-.gpu-trt} work
  work=$(mktemp -d)
  set -e
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$work/w" \
    "tensorrt-rtx-cu13-libs==$TRT_VERSION" "tensorrt-rtx-cu13-bindings==$TRT_VERSION" \
    pytest pytest-timeout pluggy iniconfig packaging pygments tqdm orjson uvloop httptools
  # tensorrt-rtx-cu13 itself is an sdist (a pure-Python loader): build its wheel here.
  python3 -m pip wheel -q --no-deps -w "$work/w" "tensorrt-rtx-cu13==$TRT_VERSION"
  "$HERE/.venv/bin/python" "$HERE/tests/gpu/prebuild_tiny_llama.py" "$work/tiny-llama"
  "$HERE/.venv/bin/python" -m server.cli build --model "$work/tiny-llama" --backend tensorrt \
    --dtype float16 --max-batch-size 8 --max-model-len 128 --output-dir "$work/prebuilt/trt"
  (cd "$work" && tar cf bundle.tar w prebuilt)
  rm -rf "$dest" && mkdir -p "$dest"
  split -b "$SHARD_BYTES" -d -a 2 "$work/bundle.tar" "$dest/trt.part."
  local n=0 p
  for p in "$dest"/trt.part.*; do mkdir -p "$dest/s$n"; mv "$p" "$dest/s$n/"; n=$((n+1)); done
  rm -rf "$work"
  echo "staged $n shards under $dest ($(du -sh "$dest" | cut -f1)); on the device, per shard:"
  echo "  carry [\"$(basename "$dest")/sK\"]  command: mkdir -p /root/trtstage && cp $(basename "$dest")/sK/* /root/trtstage/"
}

install_trt() {
  local stage_dir=$1
  rm -rf /tmp/trt && mkdir -p /tmp/trt
  cat "$stage_dir"/trt.part.* | tar xf - -C /tmp/trt || return 1
  # shellcheck disable=SC2086  # PIP_TARGET_ARGS: extra words (a dry run elsewhere)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "${SITE:-/tmp/site}" ${PIP_TARGET_ARGS:-} /tmp/trt/w/*.whl || return 1
  PYTHONPATH="${SITE:-/tmp/site}" python3 -c "import tensorrt_rtx, pytest; print('tensorrt_rtx', tensorrt_rtx.__version__)"
}

on_device() {
  local stage_dir=${1:-/root/trtstage}
  OUT=${OUT:-$PWD/gpu-out}
  mkdir -p "$OUT"
  export PYTHONPATH="${SITE:-/tmp/site}:$PWD${PYTHONPATH:+:$PYTHONPATH}" TRTSERVE_REQUIRE_GPU=1
  # Inner limits fit one 600 s call: ~1-2 min expected (two builds of a 135M model, one load).
  local pytest=(python3 -m pytest tests/gpu/test_engine_dir_gpu.py -v -s -rsx -p no:cacheprovider)
  { nvidia-smi -L; timeout 120 bash -c "$(declare -f install_trt); install_trt $stage_dir"; } \
    >"$OUT/env.txt" 2>&1
  local install_rc=$?
  # The README's command, built on the device with the GPU hidden (a machine without one).
  timeout 400 "${pytest[@]}" >"$OUT/device-build.log" 2>&1
  local a_rc=$?
  TRTSERVE_PREBUILT_TRT_DIR=/tmp/trt/prebuilt/trt timeout 120 "${pytest[@]}" -k refused \
    >"$OUT/carried-build.log" 2>&1
  local b_rc=$?
  {
    echo "== trtserve serve --engine-dir on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
    echo "install rc=$install_rc: $(tail -n 1 "$OUT/env.txt")"
    echo "-- default model built on the device, GPU hidden (rc=$a_rc)"
    grep -E "PASSED|FAILED|ERROR|SKIPPED|refused in|ready .*after start" "$OUT/device-build.log"
    tail -n 1 "$OUT/device-build.log"
    echo "-- small Llama built on the CPU machine and carried (rc=$b_rc)"
    grep -E "PASSED|FAILED|ERROR|SKIPPED|refused in" "$OUT/carried-build.log"
    tail -n 1 "$OUT/carried-build.log"
  } >"$OUT/summary.txt" 2>&1
  (cd "$OUT" && tar czf logs.tgz env.txt device-build.log carried-build.log)
  cat "$OUT/summary.txt"
  [ "$install_rc" -eq 0 ] && [ "$a_rc" -eq 0 ] && [ "$b_rc" -eq 0 ]
}

if [ "${1:-}" = stage ]; then
  shift
  cd "$HERE" && stage "$@"
else
  on_device "$@"
fi
