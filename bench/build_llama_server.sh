#!/usr/bin/env bash
# Build llama.cpp's llama-server from the sources the llama-cpp-python sdist vendors.
# Usage: bench/build_llama_server.sh [BUILD_ROOT]   (default ~/.cache/trtserve-bench/llama)
# Prints the path of the llama-server binary on its last line. Never commit the build dir.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="${1:-$HOME/.cache/trtserve-bench/llama}"
PY="${PYTHON:-python3}"
BIN="$ROOT/build/bin/llama-server"
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
mkdir -p "$ROOT/sdist"
if ! ls "$ROOT"/sdist/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  "$PY" -m pip download --no-deps --no-binary :all: -d "$ROOT/sdist" "llama-cpp-python==$VERSION" >&2
fi
if [[ ! -d "$ROOT/src" ]]; then
  mkdir -p "$ROOT/src"
  tar -xzf "$ROOT"/sdist/llama_cpp_python-*.tar.gz -C "$ROOT/src" --strip-components=1
fi
SRC="$ROOT/src/vendor/llama.cpp"
# Not GGML_NATIVE: -march=native turns on AMX where the CPU lists it, and a VM that lists AMX
# without enabling its tile state kills llama-server with SIGILL (tilezero) at the first matmul.
# Instead each x86 extension llama.cpp's own CPU variants use (AVX-512 + VNNI, no AMX) is turned
# on when /proc/cpuinfo lists it: a fixed list fails the other way (AVX-VNNI, which AMD Zen 4
# lacks beside its AVX512-VNNI, is SIGILL there).
isa_flags() {
  local have flag out="-DGGML_NATIVE=OFF"
  have=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  for pair in avx:AVX avx2:AVX2 bmi2:BMI2 fma:FMA f16c:F16C avx512f:AVX512 \
              avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 \
              avx_vnni:AVX_VNNI; do
    flag="${pair%%:*}"
    if [[ "$have" == *" $flag "* ]]; then out+=" -DGGML_${pair#*:}=ON"; else out+=" -DGGML_${pair#*:}=OFF"; fi
  done
  echo "$out"
}
ISA="${LLAMA_ISA:-$(isa_flags)}"
echo "llama.cpp ISA: $ISA" >&2
# shellcheck disable=SC2086
nice cmake -S "$SRC" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $ISA >&2
nice cmake --build "$ROOT/build" --target llama-server -j 2 >&2
echo "$BIN"
