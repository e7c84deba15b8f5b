#!/usr/bin/env bash
# Engine-only A/B of two checkouts on one GPU lease: bench/gpu_decode_graphs.py (captured and
# uncaptured decode steps, medians) in BASE (another commit's tree, e.g. unpacked from
# `git archive`) and in this tree, alternating ROUNDS times, each under `timeout`. Run from the
# repository root on the GPU machine with the wheels in /tmp/site:
#   BASE=/root/base [ROUNDS=2] [BATCHES=1,64] bash bench/gpu_tree_ab.sh
# Output: $OUT/tree-ab/<side>-<round>.md and a summary on stdout.
source "$(dirname "$0")/gpu_env.sh" tree-ab
BASE=${BASE:?set BASE to the other checkout}
ROUNDS=${ROUNDS:-2}
BATCHES=${BATCHES:-1,64}
HERE=$PWD
for round in $(seq 1 "$ROUNDS"); do
  for side in base head; do
    dir=$HERE; [ "$side" = base ] && dir=$BASE
    (cd "$dir" && PYTHONPATH="/tmp/site:$dir" timeout 240 python3 bench/gpu_decode_graphs.py \
      --rotary-op --batches "$BATCHES" --prompt-len 128 --steps 24 \
      --out "$LOG/$side-$round.md" >"$LOG/$side-$round.txt" 2>&1)
    echo "---- $side (round $round, rc=$?): $(cd "$dir" && cat COMMIT 2>/dev/null)"
    grep -E "^\|" "$LOG/$side-$round.md" 2>/dev/null || tail -n 15 "$LOG/$side-$round.txt"
  done
done
