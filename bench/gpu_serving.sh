#!/usr/bin/env bash
# The GPU serving report of one lease (issue: GPU serving at scale), run on the GPU machine from
# the repository root with the wheels of ../shared/gpu/prepare.sh installed into /tmp/site:
#   bash bench/gpu_serving.sh serve   # GPU tests, decode graph parity/timing, the HTTP bench
#   bash bench/gpu_serving.sh hf      # transformers eager and static cache + torch.compile
#   bash bench/gpu_serving.sh all     # both, one summary (over 10 minutes with the GPU tests:
#                                     # NO_TESTS=1 QUICK=1 keeps it inside one device call)
# QUICK=1 skips bench/gpu_decode_graphs.py and the server with --no-cuda-graphs; NO_TESTS=1 the
# GPU tests, NO_DECODE=1 bench/gpu_decode_graphs.py (a lease that ran them in an earlier call),
# SAMPLED=1 adds sampled + penalised runs at c64 and c256 (SAMPLE_BODY, the --extra-body JSON)
# on the same server, then on one with --no-device-sampling (every logits row to the host);
# C1_ONLY=1 stops after the c1 run, NO_PROFILE=1 skips bench/gpu_kernel_profile.py (CUDA kernels
# of decode steps); HF_ARGS are passed to bench/hf_gpu_baseline.py (e.g. "--eager 1,64 --static
# 256"), HF_TIMEOUT (560 s) bounds it. During c64 and c256: GPU utilisation (nvidia-smi), py-spy,
# and the per-step host split (bench/gpu_step_split.py).
# CLIENT_PROCS (default 4): `trtserve bench --client-procs` at c64 and c256, so the load generator
# is not the limit (one client process saturates a core near 5k tok/s).
# API_SERVERS (default 4) is passed as --api-server-count (0: the one-process server); py-spy
# then records the engine-core child (the PID the server logs), not the supervisor.
# Every step runs under `timeout`; only PIDs started here are waited on or stopped. Output:
# $OUT/summary-<part>.txt (printed last) and $OUT/logs-<part>.tgz. The server needs orjson and
# httptools beside ../shared/gpu/prepare.sh's wheels (EXTRA_WHEELS="orjson httptools py-spy").
PART=${1:-serve}
source "$(dirname "$0")/gpu_env.sh" "logs-$PART"
PY=${PYTHON:-python3}
PYSPY=$(command -v py-spy || echo /tmp/site/bin/py-spy)
PORT=18123
URL=http://127.0.0.1:$PORT
SUM="$OUT/summary-$PART.txt"
API_SERVERS=${API_SERVERS:-4}
CLIENT_PROCS=${CLIENT_PROCS:-4}  # `trtserve bench --client-procs` at c64 and c256 (c1, c16: 1)
say() { echo "$*" | tee -a "$SUM"; }

start_server() {  # $1: name, rest: extra serve flags; sets SRV
  local name=$1; shift
  $PY -m server.cli serve --host 127.0.0.1 --port $PORT --metrics-port 0 --max-batch-size 256 \
    --max-num-tokens 8192 --max-queue-size 2048 --api-server-count "$API_SERVERS" "$@" \
    >"$LOG/serve-$name.log" 2>&1 &
  SRV_LOG="$LOG/serve-$name.log"
  SRV=$!
  for _ in $(seq 1 150); do
    curl -sf "$URL/v2/health/ready" >/dev/null 2>&1 && return 0
    kill -0 $SRV 2>/dev/null || { say "server $name exited during start"; return 1; }
    sleep 1
  done
  say "server $name not ready after 150 s"; return 1
}

stop_server() {
  kill -TERM "$SRV" 2>/dev/null
  timeout 45 tail --pid="$SRV" -f /dev/null || kill -KILL "$SRV" 2>/dev/null
  wait "$SRV" 2>/dev/null; say "server stopped (exit $?)"
}

bench() {  # $1: name, $2: concurrency, $3: prompts, $4: timeout s, $5: client processes (1),
           # $6: --extra-body JSON (sampling settings; greedy when absent)
  timeout "$4" $PY -m server.cli bench --url "$URL" --model ensemble --concurrency "$2" \
    --num-prompts "$3" --input-len 128 --output-len 128 --no-progress --client-procs "${5:-1}" \
    ${6:+--extra-body "$6"} \
    --output-json "$LOG/bench-$1.json" >"$LOG/bench-$1.txt" 2>"$LOG/bench-$1.err"
  local rc=$?
  say "---- bench $1: concurrency $2, $3 prompts, ${5:-1} client processes (rc=$rc)"
  grep -E "^\|" "$LOG/bench-$1.txt" | head -12 | tee -a "$SUM"
}

kv_blocks() {  # the KV block gauges after a run (used must be 0 when idle)
  curl -sf "$URL/metrics" >"$LOG/metrics-$1.txt"
  say "---- /metrics after $1:"
  grep -E '^nv_trt_llm_kv_cache_block_metrics|^trtserve_step_duration_seconds_(sum|count)' \
    "$LOG/metrics-$1.txt" | tee -a "$SUM"
}

engine_pid() {  # the process that steps the model: the split server's engine core, else SRV
  local pid
  pid=$(grep -o "engine core pid [0-9]*" "$SRV_LOG" 2>/dev/null | awk '{print $4}' | tail -n 1)
  echo "${pid:-$SRV}"
}

step_count() {  # engine steps so far (the server's step-duration histogram count)
  curl -sf "$URL/metrics" | awk '/^trtserve_step_duration_seconds_count/ {print $2}'
}

profile_window() {  # $1: name; once a bench's steps run: GPU utilisation, py-spy, step count
  local steps0 steps
  steps0=$(step_count)
  for _ in $(seq 1 80); do  # the client takes seconds to start: wait for its first steps
    steps=$(step_count); [ "$steps" != "$steps0" ] && break; sleep 0.25
  done
  timeout 7 nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -lms 250 \
    >"$LOG/smi-$1.csv" 2>&1 &
  local smi=$!
  (for _ in $(seq 1 28); do echo "$(date +%s.%N | cut -c1-14) $(step_count)"; sleep 0.25; done \
    >"$LOG/steps-$1.txt") &
  local steps_pid=$!
  timeout 8 top -b -c -d 1 -n 7 -w 200 >"$LOG/top-$1.txt" 2>&1 &
  local top_pid=$!
  sleep 1
  curl -sf "$URL/metrics" >"$LOG/metrics-$1-before.txt"
  echo "py-spy pid $(engine_pid) (server $SRV)" >"$LOG/pyspy-$1.pid"
  timeout 20 "$PYSPY" record -p "$(engine_pid)" -d 5 -r 100 -f raw --idle \
    -o "$LOG/pyspy-$1-idle.txt" --nonblocking >"$LOG/pyspy-$1-idle.err" 2>&1 &
  local idle_pid=$!
  timeout 20 "$PYSPY" record -p "$(engine_pid)" -d 5 -r 200 -f raw -o "$LOG/pyspy-$1.txt" \
    --nonblocking >"$LOG/pyspy-$1.err" 2>&1
  curl -sf "$URL/metrics" >"$LOG/metrics-$1-after.txt"
  wait "$smi" "$steps_pid" "$top_pid" "$idle_pid" 2>/dev/null
}

report_window() {  # $1: name
  say "---- nvidia-smi utilization.gpu during $1 (samples, median, max):"
  awk -F', ' '{gsub(/ %/,"",$1); if ($1 ~ /^[0-9]+$/) print $1}' "$LOG/smi-$1.csv" | sort -n \
    | awk '{a[NR]=$1} END {if (NR) print NR, a[int((NR+1)/2)], a[NR]}' | tee -a "$SUM"
  say "---- per-step host split during $1 (bench/gpu_step_split.py):"
  $PY bench/gpu_step_split.py "$LOG/pyspy-$1.txt" --rate 200 --seconds 5 \
    --metrics-before "$LOG/metrics-$1-before.txt" --metrics-after "$LOG/metrics-$1-after.txt" \
    2>&1 | tee -a "$SUM"
  say "---- py-spy top frames during $1 (own samples):"
  $PY bench/pyspy_top.py "$LOG/pyspy-$1.txt" 2>&1 | head -25 | tee -a "$SUM"
  say "---- engine steps every 0.25 s during $1 (unix time, step count):"
  awk 'NR > 1 {printf "%s+%d ", $1, $2 - prev} {prev = $2}' "$LOG/steps-$1.txt" | tee -a "$SUM"
  say ""
  say "---- py-spy --idle of the engine during $1 (where it waits; own samples):"
  $PY bench/pyspy_top.py "$LOG/pyspy-$1-idle.txt" 2>&1 | head -12 | tee -a "$SUM"
  say "---- top: busiest processes, last three 1 s samples during $1 ($(grep -o \
    "engine core pid.*" "$SRV_LOG" | tail -n 1); server $SRV):"
  awk '/^ *PID/ {n++; k=0; next} n >= 5 && k < 7 && NF > 11 {k++; print substr($0, 1, 160)}' \
    "$LOG/top-$1.txt" | tee -a "$SUM"
}

sampled_runs() {  # $1: name prefix. Sampled + penalised requests (SAMPLE_BODY) at c64, c256
  local body=${SAMPLE_BODY:-'{"temperature": 0.8, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.1, "random_seed": 1}'}
  bench "${1:-}sampled-c64" 64 512 150 "$CLIENT_PROCS" "$body"
  bench "${1:-}sampled-c256" 256 1024 240 "$CLIENT_PROCS" "$body"
  kv_blocks "${1:-}sampled-c256"
}

serve_part() {
  if [ -z "${NO_TESTS:-}" ]; then
    timeout 300 $PY -m pytest tests/gpu -m gpu -q -rsx -p no:cacheprovider >"$LOG/pytest-gpu.txt" 2>&1
    say "---- pytest tests/gpu -m gpu (rc=$?)"; tail -n 12 "$LOG/pytest-gpu.txt" | tee -a "$SUM"
  fi
  if [ -z "${NO_PROFILE:-}" ]; then
    timeout 240 $PY bench/gpu_kernel_profile.py --out "$LOG/kernel_profile.md" \
      >"$LOG/kernel_profile.txt" 2>&1
    say "---- bench/gpu_kernel_profile.py (rc=$?)"
    cat "$LOG/kernel_profile.md" 2>/dev/null | tee -a "$SUM" || tail -n 20 "$LOG/kernel_profile.txt"
  fi
  if [ -z "${QUICK:-}" ] && [ -z "${NO_DECODE:-}" ]; then
    timeout 240 $PY bench/gpu_decode_graphs.py --rotary-op --out "$LOG/decode_graphs.md" \
      >"$LOG/decode_graphs.txt" 2>&1
    say "---- bench/gpu_decode_graphs.py (rc=$?)"
    cat "$LOG/decode_graphs.md" 2>/dev/null | tee -a "$SUM" || tail -n 20 "$LOG/decode_graphs.txt"
  fi
  start_server graphs || { tail -n 30 "$LOG/serve-graphs.log"; return; }
  bench c1 1 32 120
  [ -n "${C1_ONLY:-}" ] && { stop_server; return; }
  bench c16 16 64 90
  profile_window c64 &
  local prof=$!
  bench c64 64 512 120 "$CLIENT_PROCS"
  wait "$prof" 2>/dev/null
  report_window c64
  profile_window c256 &
  prof=$!
  bench c256 256 1024 240 "$CLIENT_PROCS"
  wait "$prof" 2>/dev/null
  report_window c256
  kv_blocks c256
  [ -n "${SAMPLED:-}" ] && sampled_runs
  grep -E "decode bucket|CUDA graph|WARNING|ERROR" "$LOG/serve-graphs.log" | head -20 | tee -a "$SUM"
  stop_server
  if [ -n "${SAMPLED:-}" ]; then  # the same sampled load with every logits row sent to the host
    start_server hostsampling --no-device-sampling || return
    sampled_runs host-
    stop_server
  fi
  [ -n "${QUICK:-}" ] && return
  start_server nographs --no-cuda-graphs || return
  bench nographs-c1 1 16 90
  bench nographs-c64 64 256 90 "$CLIENT_PROCS"
  bench nographs-c256 256 512 200 "$CLIENT_PROCS"
  stop_server
}

{ date -u; nvidia-smi -L; cat COMMIT 2>/dev/null || git log --oneline -1; } | tee "$SUM"
hf_part() {
  timeout "${HF_TIMEOUT:-560}" $PY bench/hf_gpu_baseline.py ${HF_ARGS:-} --out "$LOG/hf.md" \
    >"$LOG/hf.txt" 2>&1
  say "---- bench/hf_gpu_baseline.py (rc=$?)"; cat "$LOG/hf.md" | tee -a "$SUM"
}
case "$PART" in
  serve) serve_part ;;
  hf) hf_part ;;
  all) serve_part; hf_part ;;  # one report: the HTTP bench and transformers on the same GPU
esac
(cd "$OUT" && tar czf "logs-$PART.tgz" "logs-$PART" && rm -rf "logs-$PART")
echo "==== summary ($PART) ===="; cat "$SUM"
