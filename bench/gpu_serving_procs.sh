#!/usr/bin/env bash
# The HTTP bench at concurrency 64/256 with several client processes (bench/gpu_client_procs.py)
# beside one `trtserve bench` run on the same server: is the single client process the limit?
# Split server (4 front ends), prefix caching off (the multi-process client repeats one prompt).
# GPU machine, repository root, wheels in /tmp/site. Only the server started here is stopped.
source "$(dirname "$0")/gpu_env.sh" procs
PORT=18124
python3 -m server.cli serve --host 127.0.0.1 --port $PORT --metrics-port 0 --max-batch-size 256 \
  --max-num-tokens 8192 --max-queue-size 2048 --api-server-count 4 --no-enable-prefix-caching \
  >"$LOG/serve.log" 2>&1 &
SRV=$!
for _ in $(seq 1 150); do curl -sf "127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 1; done
date -u; nvidia-smi -L; cat COMMIT 2>/dev/null
echo "| concurrency | requests | ok | dropped | client procs | out tok/s | TTFT p50 ms | TTFT p99 ms | wall s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
run() { timeout 90 python3 bench/gpu_client_procs.py --port $PORT --concurrency "$1" \
  --requests "$2" --procs "$3" 2>>"$LOG/procs.err"; }
run 64 512 4
timeout 10 nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader -lms 250 >"$LOG/smi.csv" &
SMI=$!
run 256 1024 8
wait "$SMI"
echo "GPU utilisation during c256 x 8 procs (samples, median, max):"
awk '{print $1}' "$LOG/smi.csv" | sort -n | awk '{a[NR]=$1} END {print NR, a[int((NR+1)/2)], a[NR]}'
run 256 1024 4
timeout 120 python3 -m server.cli bench --url "http://127.0.0.1:$PORT" --model ensemble \
  --concurrency 256 --num-prompts 1024 --input-len 128 --output-len 128 --no-progress \
  >"$LOG/bench-c256.txt" 2>&1
echo "---- trtserve bench (one process) against the same server, c256:"; grep "^|" "$LOG/bench-c256.txt" | head -9
curl -sf "127.0.0.1:$PORT/metrics" | grep -E '^nv_trt_llm_kv_cache_block_metrics.*"(used|free|max)"'
kill -TERM "$SRV"; timeout 45 tail --pid="$SRV" -f /dev/null || kill -KILL "$SRV"
wait "$SRV"; echo "server exit $?"
(cd "$OUT" && tar czf procs.tgz procs && rm -rf procs)
