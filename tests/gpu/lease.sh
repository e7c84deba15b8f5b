#!/usr/bin/env bash
# All the work of one GPU lease: the device-layer/executor checks, then the embedded model end to
# end on the GPU (backend auto -> TensorRT refuses sm_90 -> ONNX Runtime CUDA), then an explicit
# `--backend tensorrt` to show its one-line refusal, and the bf16 graph through ONNX Runtime CUDA.
# Logs under $OUT; a summary prints last.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRTSERVE_CACHE_DIR=/tmp/trtserve-cache
bash tests/gpu/run_on_device.sh >"$OUT/run_on_device.txt" 2>&1
dev_rc=$?
PROMPT="What is the capital of France?"
python3 -m server.cli generate --chat --prompt "$PROMPT" --max-tokens 24 >"$OUT/generate_auto.txt" 2>&1
auto_rc=$?
python3 -m server.cli generate --chat --prompt "$PROMPT" --max-tokens 24 --backend onnxruntime \
  --dtype float32 >"$OUT/generate_cuda_fp32.txt" 2>&1
fp32_rc=$?
python3 -m server.cli generate --chat --prompt "$PROMPT" --max-tokens 24 --backend onnxruntime \
  --dtype bfloat16 >"$OUT/generate_cuda_bf16.txt" 2>&1
bf16_rc=$?
python3 -m server.cli generate --chat --prompt "$PROMPT" --max-tokens 8 --backend tensorrt \
  >"$OUT/generate_tensorrt.txt" 2>&1
trt_rc=$?
if [ -f bench/engine_gpu.py ]; then
  python3 bench/engine_gpu.py --out "$OUT/engine_gpu.md" >"$OUT/engine_gpu.txt" 2>&1; echo "engine_gpu rc=$?" >>"$OUT/engine_gpu.txt"
fi
# The real server on the GPU, measured by `trtserve bench` over HTTP+SSE.
python3 -m server.cli serve --host 127.0.0.1 --port 8000 --metrics-port 0 --max-batch-size 64 \
  >"$OUT/serve.log" 2>&1 &
srv=$!
for _ in $(seq 1 120); do
  curl -sf localhost:8000/v2/health/ready >/dev/null 2>&1 && break; sleep 1
done
python3 -m server.cli bench --url http://127.0.0.1:8000 --model ensemble --concurrency 1,16,64 \
  --num-prompts 64 --input-len 128 --output-len 128 --output-json "$OUT/bench_serve_gpu.json" \
  >"$OUT/bench_serve_gpu.txt" 2>"$OUT/bench_serve_gpu.err"
bench_rc=$?
kill -TERM $srv; wait $srv; serve_rc=$?
tail -n 25 "$OUT/run_on_device.txt"
echo "---- generate --backend auto (rc=$auto_rc)";        grep -v "^\s*$" "$OUT/generate_auto.txt" | tail -n 8
echo "---- generate --backend onnxruntime fp32 (rc=$fp32_rc)"; grep -v "^\s*$" "$OUT/generate_cuda_fp32.txt" | tail -n 5
echo "---- generate --backend onnxruntime bf16 (rc=$bf16_rc)"; grep -v "^\s*$" "$OUT/generate_cuda_bf16.txt" | tail -n 5
echo "---- generate --backend tensorrt (rc=$trt_rc)";    tail -n 3 "$OUT/generate_tensorrt.txt"
[ -f "$OUT/engine_gpu.txt" ] && { echo "---- engine_gpu"; tail -n 20 "$OUT/engine_gpu.txt"; }
echo "---- trtserve bench against trtserve serve on the GPU (bench rc=$bench_rc, serve exit=$serve_rc)"
grep -m3 -E "ready|backend|onnxruntime-cuda|tensorrt" "$OUT/serve.log"
cat "$OUT/bench_serve_gpu.txt"
# At most 8 files come back: keep the summaries, pack the logs.
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.txt ./*.log ./*.err ./*.xml 2>/dev/null)
exit $dev_rc
