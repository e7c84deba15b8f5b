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
nice cmake -S "$SRC" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON >&2
nice cmake --build "$ROOT/build" --target llama-server -j 2 >&2
echo "$BIN"
