#!/usr/bin/env bash
# One GPU lease's engine-only checks of the decode graph (model_decode.onnx, GroupQueryAttention):
# the GPU tests, then bench/gpu_decode_graphs.py with and without the decode graph in the same
# run (same machine, alternating), on the graph ONNX Runtime CUDA serves (--rotary-op).
# Run from the repository root on the GPU machine with the wheels in /tmp/site. Output under $OUT.
source "$(dirname "$0")/gpu_env.sh" decode-ab
BATCHES=${BATCHES:-1,16,64,128,256}
PROMPT=${PROMPT:-128}
if [ -z "${NO_TESTS:-}" ]; then
  timeout 240 python3 -m pytest tests/gpu -m gpu -q -rsx -p no:cacheprovider >"$LOG/pytest-gpu.txt" 2>&1
  echo "---- pytest tests/gpu -m gpu (rc=$?)"; tail -n 15 "$LOG/pytest-gpu.txt"
fi
for run in decode-graph general-graph; do
  flag=""; [ "$run" = general-graph ] && flag="--no-decode-graph"
  timeout 200 python3 bench/gpu_decode_graphs.py --rotary-op $flag --batches "$BATCHES" \
    --prompt-len "$PROMPT" --steps 24 --out "$LOG/$run.md" >"$LOG/$run.txt" 2>&1
  echo "---- $run (rc=$?)"; cat "$LOG/$run.md" 2>/dev/null || tail -n 25 "$LOG/$run.txt"
done
(cd "$OUT" && tar czf decode-ab.tgz decode-ab && rm -rf decode-ab)
