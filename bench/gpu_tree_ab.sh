#!/usr/bin/env bash
# Engine-only A/B of checkouts on one GPU lease: bench/gpu_decode_graphs.py (captured and
# uncaptured decode steps, medians) in each tree of TREES (name:dir pairs; "head" is this tree),
# alternating ROUNDS times, each under `timeout`. Run from the repository root on the GPU machine
# with the wheels in /tmp/site, the other trees unpacked from `git archive`:
#   TREES="base:/root/base head:$PWD" [ROUNDS=1] [BATCHES=1,64] [PROMPT_LEN=128] \
#     bash bench/gpu_tree_ab.sh
# (the first step prefills every prompt at once: BATCHES x PROMPT_LEN must fit max_num_tokens,
# 8192; PROMPT_LEN=32 for batch 256)
# Output: the tables on stdout, every log in $OUT/tree-ab.tgz.
source "$(dirname "$0")/gpu_env.sh" tree-ab
TREES=${TREES:?set TREES to name:dir pairs}
ROUNDS=${ROUNDS:-1}
BATCHES=${BATCHES:-1,64}
PROMPT_LEN=${PROMPT_LEN:-128}
for round in $(seq 1 "$ROUNDS"); do
  for tree in $TREES; do
    name=${tree%%:*}; dir=${tree#*:}
    (cd "$dir" && PYTHONPATH="/tmp/site:$dir" timeout 240 python3 bench/gpu_decode_graphs.py \
      --rotary-op --batches "$BATCHES" --prompt-len "$PROMPT_LEN" --steps 24 \
      --out "$LOG/$name-$round.md" >"$LOG/$name-$round.txt" 2>&1)
    echo "---- $name (round $round, rc=$?): $(cat "$dir/COMMIT" 2>/dev/null)"
    grep -E "^\|" "$LOG/$name-$round.md" 2>/dev/null || tail -n 15 "$LOG/$name-$round.txt"
  done
done
(cd "$OUT" && tar czf tree-ab.tgz tree-ab && rm -rf tree-ab)
