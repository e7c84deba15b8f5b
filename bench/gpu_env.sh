# Sourced by the GPU lease scripts (bench/gpu_*.sh) with the name of their log folder:
#   source bench/gpu_env.sh NAME   -> OUT (default ./gpu-out), LOG=$OUT/NAME (made), PYTHONPATH
# with the wheels in /tmp/site and the checkout, the graph cache in /tmp, CUDA_HOME if present.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
LOG="$OUT/$1"
mkdir -p "$LOG"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRTSERVE_CACHE_DIR=/tmp/trtserve-cache
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
[ -n "${CUDA_HOME:-}" ] && export LD_LIBRARY_PATH="$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
