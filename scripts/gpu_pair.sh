#!/usr/bin/env bash
# Two scripts/gpu_ood.py runs sharing one GPU, e.g. a recipe against a variant or two seeds
# (docs/robustness.md: two runs at once gave 1.6x the img/s of one). Run A makes the OOD sets and
# run B waits for them (--ood_from); each process gets 45 % of the GPU's memory. Waits for both
# (on their PIDs) and prints both tables.
#   bash scripts/gpu_pair.sh "A's own args" "B's own args" COMMON gpu_ood.py ARGS...
#   e.g. bash scripts/gpu_pair.sh "--set seed=0" "--set seed=1" --data ~/jc/data \
#          --weights ~/jc/r50 --probe ~/jc/probe --ood_limit 500 --tools none,shifts+bn_adapt
# Writes $OUT/{A,B}.{json,log,png} (OUT defaults to ./gpu_pair_out); the runs work in
# $WORK/A and $WORK/B (default ~/jc). With --full_set, only A makes the 950,000-image set and B
# evaluates A's (gpu_ood.py --ood_from). Exit status: non-zero if either run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then sed -n '2,11p' "$0"; exit 2; fi
A_ARGS=$1 B_ARGS=$2
shift 2
OUT=${OUT:-gpu_pair_out} WORK=${WORK:-$HOME/jc} PY=${PY:-python3}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
# $A_ARGS / $B_ARGS are split into words on purpose.
# shellcheck disable=SC2086
"$PY" scripts/gpu_ood.py "$@" $A_ARGS --work "$WORK/A" --json_out "$OUT/A.json" \
  > "$OUT/A.log" 2>&1 < /dev/null &
a=$!
# shellcheck disable=SC2086
"$PY" scripts/gpu_ood.py "$@" $B_ARGS --work "$WORK/B" --ood_from "$WORK/A" \
  --json_out "$OUT/B.json" > "$OUT/B.log" 2>&1 < /dev/null &
b=$!
wait "$a"; ra=$?
wait "$b"; rb=$?
for v in A B; do
  echo "== run $v ($( [ $v = A ] && echo "$A_ARGS" || echo "$B_ARGS" )): rc $( [ $v = A ] && echo $ra || echo $rb )"
  grep -v cuda_timer "$OUT/$v.log" | sed -n '/^configs\/ood_best.py/,$p'
done
[ "$ra" = 0 ] && [ "$rb" = 0 ]
