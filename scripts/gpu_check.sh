#!/usr/bin/env bash
# One GPU session's checks, each part under its own time limit, all under one overall budget:
#   a) versions and nvidia-smi
#   b) torch parity tests (tests/test_models.py, tests/test_convert.py) on the GPU
#   c) scripts/benchmark.py, JAX vs PyTorch: resnet18 cifar 32 px (batch 128/256, bf16 + fp32),
#      resnet50 160 px (+ a grad-accumulation row) and resnet152 224 px (ImageNet stem, bf16;
#      torch.compile in a child process limited to TORCH_COMPILE_TIMEOUT_S (120 s; ResNet-18:
#      R18_TORCH_COMPILE_TIMEOUT_S, 60 s), else eager, which the row records; TORCH_COMPILE=off:
#      eager only; ResNet-152 eager unless R152_TORCH_COMPILE=auto, then limited to
#      R152_TORCH_COMPILE_TIMEOUT_S, 60 s); resnet152 again
#      with model.scan_blocks (compile time and step speed); a relaunch of the ResNet-152 step
#      with JAX's persistent cache cold, then warm (relaunch_r152: process start to first step);
#      the 16 GiB micro-batch search (fit_r152)
#   c2) scripts/profile_input.py: the share of time a full-width ResNet-18 bf16 step waits for data
#   c3) ood_input / ood_step: the same for configs/ood_best.py's step, and that step (AutoAugment,
#      mixup, EMA) beside the bare ResNet-50 step at 128 px
#   d) with .devdata/ (scripts/gpu_prepare.sh): ResNet-50 at 160 px fine-tuned from the converted
#      ImageNet weights vs from random init, same steps; val (= test subset) accuracy of each
#   e) ood_best: configs/ood_best.py end to end, a labelled 19 x 5 set from jax_cifar.corrupt, the
#      submission (--full_set), clean/OOD accuracy with each of gpu_ood.py's tools (none, shifts,
#      shifts+bn_adapt, bn_adapt, flip, tent, shifts+tent, shifts_logp, shifts_logp+bn_adapt)
#      (OOD_DATA=folder holding the full cifar-100-python/, OOD_WEIGHTS=converted checkpoint
#      folder, OOD_PROBE=a probe run folder, else one is made; OOD_LIMIT test images per chunk)
# Run from the repository root, after installing the carried wheels:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PYTHONPATH && bash scripts/gpu_check.sh
# A device call lasts at most 600 s, so BUDGET_S (default 540) bounds the whole run: each part's
# limit (T_<PART>) is clipped to what is left of it, less RESERVE_S (20) for the summary; a part
# with under MIN_PART_S (30) left is skipped, saying so. All parts' limits add up to far more than
# one call: choose PARTS per call (docs/benchmarks.md, "## GPU", lists sets that fit), e.g.
#   PARTS="versions bench_r50 bench_r152" bash scripts/gpu_check.sh   # issue #14's rows
# SMALL=1 runs every part with tiny models and sizes (a CPU dry run of the logic);
# PARTS="bench_r18 finetune" runs only the named parts (versions parity_tests bench_r18 bench_r50
# bench_r152 relaunch_r152 scan_r152 fit_r152 input_path ood_input ood_step finetune ood_best).
# Each part's results land in $OUT as soon as it ends ($OUT/bench_*.json, finetune.json,
# ood_best.json, input_path.json, ood_input.json, parts.txt, summary.txt); the summary is printed
# on exit, also when the call is cut short by SIGTERM/SIGINT (the rows measured so far). $OUT
# defaults to /tmp/gpu_check.
# Exit status: 0 when every part that ran ended ok (skipped parts included), 1 when one failed or
# timed out (the others still ran), 2 for an unknown part, 143/130 when cut short by a signal.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KNOWN_PARTS=" versions parity_tests bench_r18 bench_r50 bench_r152 relaunch_r152 scan_r152 fit_r152 input_path ood_input ood_step finetune ood_best "
for p in ${PARTS:-}; do  # A mistyped part had run nothing and exited 0 with an empty summary.
  if [[ "$KNOWN_PARTS" != *" $p "* ]]; then
    echo "error: PARTS names an unknown part '$p'; the parts are:$KNOWN_PARTS" >&2
    exit 2
  fi
done
for v in TORCH_COMPILE_TIMEOUT_S R18_TORCH_COMPILE_TIMEOUT_S R152_TORCH_COMPILE_TIMEOUT_S; do
  # benchmark.py reads 0 as "no limit", which could spend the whole call on one compile.
  if [ -n "${!v:-}" ] \
      && ! awk -v t="${!v}" 'BEGIN{exit !(t ~ /^[0-9]+([.][0-9]+)?$/ && t + 0 > 0)}'; then
    echo "error: $v=${!v}: give a limit in seconds above 0 (TORCH_COMPILE=off for eager only)" >&2
    exit 2
  fi
done
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check_work.XXXX)
PY=${PY:-python3}
SMALL=${SMALL:-0}
export PY SMALL OUT WORK
LOG="$OUT/gpu_check.log"
: > "$LOG"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch and JAX share the GPU inside one process
# A cache given (the probe's warm ~/.cache/jax_cifar/xla after gpu_stage) is kept: a fresh one had
# made the ood_best part compile cold while its epochs were planned for a warm start (a review).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORK/xla_cache}"
export TF_CPP_MIN_LOG_LEVEL=2
T_START=$(date +%s)
BUDGET_S=${BUDGET_S:-540}      # the whole run, in seconds (a device call: at most 600)
RESERVE_S=${RESERVE_S:-20}     # kept back at the end: timeout's kill, the summary
MIN_PART_S=${MIN_PART_S:-30}   # a part with less than this left is skipped
ROWS="$OUT/parts.txt"          # one line per part, written as each part ends
: > "$ROWS"
# An earlier run's results are not this run's:
rm -f "$OUT"/bench_*.json "$OUT"/relaunch_*.json "$OUT/bench.json" "$OUT/finetune.json" \
  "$OUT/ood_best.json" "$OUT/fit_r152.json" "$OUT/input_path.json" "$OUT/ood_input.json" \
  "$OUT/summary.txt"
CURRENT='' CURRENT_PID='' CURRENT_T0=0 CURRENT_LIMIT=0 SIGNAL=''
NOT_OK=''  # the parts that failed or timed out: the script then exits 1 (it had exited 0 whatever)

row() { printf '%-14s %-44s %5ss\n' "$1" "$2" "$3" >> "$ROWS"; }

# clip_limit WANTED_S ELAPSED_S: the part's limit under the budget, 0 when it is too short to run.
clip_limit() {
  local limit=$1 left=$((BUDGET_S - $2 - RESERVE_S))
  [ "$left" -lt "$limit" ] && limit=$left
  [ "$limit" -lt "$MIN_PART_S" ] && limit=0
  echo "$limit"
}

# part NAME LIMIT_S CMD...: runs CMD under a time limit (clipped to the budget), appends its
# output to the log and keeps going whatever happens, so one failure never costs the other parts.
# The command sees PART_END, the epoch second its limit ends (to size deadlines of its own).
part() {
  local name=$1 want=$2; shift 2
  if [ -n "${PARTS:-}" ] && [[ " $PARTS " != *" $name "* ]]; then return; fi
  local t0 elapsed limit note=''
  t0=$(date +%s); elapsed=$((t0 - T_START))
  limit=$(clip_limit "$want" "$elapsed")
  if [ "$limit" = 0 ]; then
    echo "=== $name SKIPPED: $((BUDGET_S - elapsed))s of BUDGET_S=${BUDGET_S}s left" | tee -a "$LOG"
    row "$name" "SKIPPED ($((BUDGET_S - elapsed))s of budget left)" 0
    return
  fi
  [ "$limit" -lt "$want" ] && note=", clipped from ${want}s to fit BUDGET_S=${BUDGET_S}"
  echo "=== $name (limit ${limit}s$note, ${elapsed}s elapsed)" | tee -a "$LOG"
  export PART_END=$((t0 + limit))
  CURRENT=$name CURRENT_T0=$t0 CURRENT_LIMIT=$limit
  # In the background and waited for, so a signal to this script is handled at once (a trap
  # waits for a foreground command to end).
  timeout --kill-after=5 "$limit" bash -c '"$@"' _ "$@" > "$WORK/$name.log" 2>&1 &
  CURRENT_PID=$!
  wait "$CURRENT_PID"
  local rc=$? dt=$(($(date +%s) - t0))
  CURRENT='' CURRENT_PID=''
  cat "$WORK/$name.log" >> "$LOG"
  grep -v -E 'Warning|warn\(|^\s*$' "$WORK/$name.log" | tail -n "${TAIL:-8}"
  local what=ok
  [ $rc -eq 0 ] || what="FAILED rc=$rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="TIMED OUT after ${limit}s"
  row "$name" "$what" "$dt"
  [ "$what" = ok ] || NOT_OK="$NOT_OK $name"
  echo "--- $name: $what in ${dt}s" | tee -a "$LOG"
  summarize > /dev/null  # $OUT/summary.txt after every part: a call killed outright keeps it
}

# summarize: the results so far, from $OUT, into $OUT/summary.txt (after every part and on exit).
summarize() {
  "$PY" - "$OUT" > "$OUT/summary.txt.tmp" 2>&1 <<'EOF'
import glob, json, os, sys
sys.path.insert(0, 'scripts')
import benchmark
out = sys.argv[1]
rows, env = [], {}
for f in sorted(glob.glob(os.path.join(out, 'bench_*.json'))):
  try:
    r = json.load(open(f))
  except ValueError as e:  # never half written (benchmark.py renames), but keep the rest
    print(f'{f}: {e}')
    continue
  rows += r['rows']
  env = r['environment']
if rows:
  json.dump({'environment': env, 'rows': rows}, open(os.path.join(out, 'bench.json'), 'w'),
            indent=1)
  print(f"device {env.get('device')} | jax {env.get('jax')} | torch {env.get('torch')}")
  print(benchmark.table(rows))
for run in ('cold', 'warm'):
  f = os.path.join(out, f'relaunch_{run}.json')
  try:
    r = json.load(open(f))['rows'][0]
  except (OSError, ValueError, KeyError, IndexError) as e:  # absent, or the run failed: the rest
    if os.path.exists(f):  # of the summary still prints
      print(f'{f}: {type(e).__name__}: {e}')
  else:
    jx = r.get('jax', {})
    s = lambda k: f'{jx[k]:.1f} s' if isinstance(jx.get(k), (int, float)) else jx.get('error', '-')
    print(f"relaunch_r152 {run} cache: {r['model']} {r['dtype']} {r['image_size']}px batch "
          f"{r['batch']}: first step {s('first_step_s')} after process start (compile "
          f"{s('compile_s')})")
for name in ('input_path', 'ood_input'):
  f = os.path.join(out, f'{name}.json')
  if os.path.exists(f):
    import bench_table
    print(bench_table.input_line(name, json.load(open(f))))
fit = os.path.join(out, 'fit_r152.json')
if os.path.exists(fit):
  import batch_fit
  print('\nfit_r152:\n' + batch_fit.summary(json.load(open(fit))))
ft = os.path.join(out, 'finetune.json')
if os.path.exists(ft):
  ft = json.load(open(ft))
  print(f"\nfine-tune ResNet-50 {ft['image_size']}px bf16, {ft['n_train']} train imgs, "
        f"{ft['epochs']} epochs, batch {ft['batch']}, val = {ft['n_test']} test imgs:")
  for name in ('pretrained', 'random'):
    if name in ft:
      print(f"  {name:10s} val_accuracy {ft[name]['val_accuracy']}  steps {ft[name]['steps']}"
            f"  {ft[name]['wall_s']:.0f}s  {ft[name]['images_per_sec']} img/s (last log)")
ood = os.path.join(out, 'ood_best.json')
if os.path.exists(ood):
  import gpu_ood
  print('\n' + gpu_ood.table(json.load(open(ood))))
EOF
  printf '%s\n' "" "parts:" >> "$OUT/summary.txt.tmp"
  cat "$ROWS" >> "$OUT/summary.txt.tmp"
  echo "total $(($(date +%s) - T_START))s of BUDGET_S=${BUDGET_S}s" >> "$OUT/summary.txt.tmp"
  mv "$OUT/summary.txt.tmp" "$OUT/summary.txt"
}

# On exit, also when cut short: the part in flight is stopped and marked, and the summary of
# everything measured so far printed.
finish() {
  trap - EXIT TERM INT
  if [ -n "$CURRENT" ]; then
    [ -n "$CURRENT_PID" ] && kill -TERM "$CURRENT_PID" 2>/dev/null && sleep 1
    cat "$WORK/$CURRENT.log" >> "$LOG" 2>/dev/null
    row "$CURRENT" "INTERRUPTED by SIG$SIGNAL (limit ${CURRENT_LIMIT}s)" \
      $(($(date +%s) - CURRENT_T0))
  fi
  summarize
  echo
  cat "$OUT/summary.txt"
  rm -rf "$WORK" 2>/dev/null || true
  if [ -z "$SIGNAL" ] && [ -n "$NOT_OK" ]; then
    echo "gpu_check: not every part ended ok:$NOT_OK (parts.txt above; the log: $LOG)" >&2
    exit 1
  fi
}
trap finish EXIT
trap 'SIGNAL=TERM; exit 143' TERM
trap 'SIGNAL=INT; exit 130' INT

# The ResNet-50 weights: .devdata's .pth, or its .xz (gpu_prepare.sh carries them compressed),
# which the first part that needs them unpacks into this run's $WORK (r50_weights), never into
# .devdata: that folder must stay small enough to carry, and a CPU dry run had filled it (a review).
R50_NAME=resnet50-keras-imagenet-tvlayout-fp16.pth R50_XZ='' R50_PTH=''
if [ -f "$ROOT/.devdata/$R50_NAME" ]; then
  R50_PTH=$ROOT/.devdata/$R50_NAME
elif [ -f "$ROOT/.devdata/$R50_NAME.xz" ]; then
  R50_XZ=$ROOT/.devdata/$R50_NAME.xz R50_PTH=$WORK/weights/$R50_NAME
fi
export R50_XZ R50_PTH
[ -n "$R50_PTH" ] && export JAX_CIFAR_WEIGHTS_DIR="${R50_PTH%/*}"
r50_weights() {  # Unpacks the carried .xz once (a part's time limit covers it).
  [ -z "$R50_XZ" ] || [ -f "$R50_PTH" ] && return 0
  mkdir -p "${R50_PTH%/*}" && "$PY" -c 'import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$R50_XZ" "$R50_PTH.tmp" \
    && mv "$R50_PTH.tmp" "$R50_PTH" && echo "unpacked $R50_XZ"
}
with_r50() { r50_weights && "$@"; }
export -f r50_weights with_r50

# --- a) versions -----------------------------------------------------------------------------
versions() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" - <<'EOF'
import importlib, sys
print('python', sys.version.split()[0])
for m in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'numpy', 'torch', 'torchvision',
          'grain', 'ml_collections', 'skimage'):
  try:
    print(f'{m:18s}', getattr(importlib.import_module(m), '__version__', '?'))
  except Exception as e:  # keep going: missing ones are reported, later parts say what broke
    print(f'{m:18s} MISSING ({type(e).__name__}: {e})')
import jax, torch
print('jax devices', jax.devices(), 'backend', jax.default_backend())
print('torch cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
EOF
}
export -f versions
TAIL=20 part versions 45 versions

# --- b) parity tests -------------------------------------------------------------------------
# 94 tests since the ResNeXt / wide ResNets (43 when the GPU last ran them): over 4 pytest-xdist
# workers, which share the GPU (no preallocation) and compile on the machine's 16 cores.
PYTEST_FILES="tests/test_models.py tests/test_convert.py -n ${TEST_WORKERS:-4} --dist load"
"$PY" -c 'import xdist' 2>/dev/null || PYTEST_FILES="tests/test_models.py tests/test_convert.py"
[ "$SMALL" = 1 ] && PYTEST_FILES="tests/test_models.py::test_bfloat16_computes_convs_in_bf16_but_keeps_params_stats_and_logits_float32"
# The suite compiles with most of XLA's optimisation off (tests/conftest.py, for the CPU CI's
# time); on the GPU the parity tests check the programs as users' runs compile them.
export JAX_DISABLE_MOST_OPTIMIZATIONS=0
TAIL=6 part parity_tests "${T_TESTS:-120}" with_r50 env XLA_PYTHON_CLIENT_PREALLOCATE=false \
  "$PY" -m pytest -q -p no:cacheprovider $PYTEST_FILES

# relaunch CMD...: a benchmark command run twice into one fresh compilation cache, cold (it
# compiles and writes the cache) then warm (it reads it back, as a relaunched run does); each
# JSON's first_step_s is process start to the end of the first step.
relaunch() {
  rm -rf "$WORK/relaunch_cache"
  local run
  for run in cold warm; do
    "$@" --cache_dir "$WORK/relaunch_cache" --out "$OUT/relaunch_$run.json" || return
  done
}
export -f relaunch

# --- c) benchmarks ---------------------------------------------------------------------------
# Each writes $OUT/bench_*.json after every row. torch.compile runs in a child process killed
# after TORCH_COMPILE_TIMEOUT_S; the row then holds PyTorch eager, marked eager* with the reason.
BENCH="$PY scripts/benchmark.py --steps ${BENCH_STEPS:-20} --warmup 3"
if [ "$SMALL" = 1 ]; then
  # On the CPU the compiled try times out: the fallback path, in seconds.
  TCT="--torch_compile on --torch_compile_timeout_s ${TORCH_COMPILE_TIMEOUT_S:-5}"
  part bench_r18 300 $BENCH --steps 2 --warmup 0 --models resnet18:cifar:4 --image_size 32 \
    --batch 8 --dtypes bfloat16,float32 --out "$OUT/bench_r18.json"
  part bench_r50 300 $BENCH --steps 2 --warmup 0 --models resnet50:imagenet:8 --image_size 64 \
    --batch 8 --dtypes bfloat16 --grad_accum_steps 1,2 $TCT --out "$OUT/bench_r50.json"
  part bench_r152 300 $BENCH --steps 1 --warmup 0 --models resnet152:imagenet:4 --image_size 32 \
    --batch 8 --dtypes bfloat16 $TCT --out "$OUT/bench_r152.json"
  part relaunch_r152 300 relaunch $PY scripts/benchmark.py --steps 1 --warmup 0 --frameworks jax \
    --models resnet152:imagenet:4 --image_size 32 --batch 8 --dtypes float32
  part scan_r152 300 $BENCH --steps 1 --warmup 0 --frameworks jax --scan_blocks on \
    --models resnet152:imagenet:4 --image_size 32 --batch 8 --dtypes bfloat16 \
    --out "$OUT/bench_r152_scan.json"
  part fit_r152 300 $PY scripts/benchmark.py --models resnet152:imagenet:4 --image_size 32 \
    --dtypes bfloat16 --find_batch_size --analysis_only --mem_cap_gb 0.05 --remat on \
    --recipe_batch 16 --find_start 4 --find_max 16 --batch_quantum 4 --out "$OUT/fit_r152.json"
else
  # torch.compile of ResNet-50 took ~70 s in an earlier session; of ResNet-152, minutes. Every
  # compile has a limit (a limit of 0 would be none); TORCH_COMPILE=off measures eager only.
  TCT="--torch_compile ${TORCH_COMPILE:-auto} --torch_compile_timeout_s"
  # Four rows, each with a torch.compile child of up to 60 s: 150 s had lost the fourth (a review).
  part bench_r18 "${T_R18:-260}" $BENCH --models resnet18:cifar --image_size 32 --batch 128,256 \
    --dtypes bfloat16,float32 $TCT "${R18_TORCH_COMPILE_TIMEOUT_S:-60}" --out "$OUT/bench_r18.json"
  # Issue #14: ResNet-50 at 160 px, then the same batch of 128 as 4 accumulated micro-batches.
  part bench_r50 "${T_R50:-270}" $BENCH --models resnet50:imagenet --image_size 160 --batch 128 \
    --dtypes bfloat16 --grad_accum_steps "${R50_ACCUM:-1,4}" \
    $TCT "${TORCH_COMPILE_TIMEOUT_S:-120}" --out "$OUT/bench_r50.json"
  # ResNet-152: PyTorch eager unless R152_TORCH_COMPILE=auto|on (TORCH_COMPILE does not change
  # it): its torch.compile took minutes before, so a 60 s try would only spend a sixth of the call.
  part bench_r152 "${T_R152:-330}" $BENCH --models resnet152:imagenet --image_size 224 --batch 128 \
    --dtypes bfloat16 --torch_compile "${R152_TORCH_COMPILE:-off}" \
    --torch_compile_timeout_s "${R152_TORCH_COMPILE_TIMEOUT_S:-60}" --out "$OUT/bench_r152.json"
  # Issue #14 item 2: does a relaunch with the cache warm start training in seconds? (JAX only.)
  part relaunch_r152 "${T_RELAUNCH:-240}" relaunch $PY scripts/benchmark.py --steps 1 --warmup 0 \
    --frameworks jax --models resnet152:imagenet --image_size 224 --batch 128 --dtypes bfloat16
  # model.scan_blocks: compile time and step speed of the scanned ResNet-152 (bench_r152 = unrolled).
  part scan_r152 "${T_SCAN:-150}" $BENCH --steps 5 --warmup 1 --frameworks jax --scan_blocks on \
    --models resnet152:imagenet --image_size 224 --batch 128 --dtypes bfloat16 \
    --out "$OUT/bench_r152_scan.json"
  # Which micro-batch of the ResNet-152 recipe fits 16 GiB, and does remat help on a GPU: the
  # search starts at 64 and stops at the recipe's 128 in steps of 32 (about 6 compiles, not 9).
  # Shapes only (--analysis_only): nothing runs, so XLA's autotuning, which times each
  # convolution's algorithms at every batch, is off by default (FIT_XLA_FLAGS): a ResNet-152
  # compile with it may take 60-90 s, six of them more than the part's 300 s (a review). The
  # memory then counts the untuned algorithms' workspace.
  part fit_r152 "${T_FIT:-300}" \
    env XLA_FLAGS="${XLA_FLAGS:-} ${FIT_XLA_FLAGS---xla_gpu_autotune_level=0}" \
    $PY scripts/benchmark.py --models configs/resnet152.py \
    --dtypes bfloat16 --find_batch_size --analysis_only --mem_cap_gb 16 --remat on \
    --find_start 64 --find_max 128 --batch_quantum 32 --out "$OUT/fit_r152.json"
fi

# --- c2) input path: does grain + host-to-device transfer keep a fast step fed? ----------------
INPUT="$PY scripts/profile_input.py --config configs/smoke.py --config.data.source=synthetic \
  --config.data.train_limit=0"
if [ "$SMALL" = 1 ]; then
  part input_path 120 $INPUT --config.data.synthetic_size=1024 --config.model.width=4 \
    --config.train.batch_size=64 --steps 8 --out "$OUT/input_path.json"
else  # Full-width ResNet-18 in bf16: the fastest step here, so the one most likely to starve.
  part input_path "${T_INPUT:-90}" $INPUT --config.data.synthetic_size=40000 \
    --config.model.width=64 --config.model.dtype=bfloat16 --steps 200 --out "$OUT/input_path.json"
fi

# c3) The trainer ran configs/ood_best.py at 3,974 img/s on an H200, below the bare ResNet-50 step:
# is it the input path or the step's own extras (AutoAugment, mixup, EMA)? The same three timings
# for that config (synthetic data, random init), then its step beside the bare ResNet-50 step.
OODCFG="--config configs/ood_best.py --config.data.source=synthetic --config.data.train_limit=0 \
  --config.model.pretrained="
if [ "$SMALL" = 1 ]; then
  part ood_input 300 $PY scripts/profile_input.py $OODCFG --config.data.synthetic_size=256 \
    --config.model.name=resnet18 --config.model.image_size=32 --config.model.dtype=float32 \
    --config.train.batch_size=16 --steps 4 --out "$OUT/ood_input.json"
  part ood_step 300 $BENCH --steps 2 --warmup 0 --frameworks jax \
    --models configs/ood_best.py,resnet18:imagenet:8 --image_size 32 --batch 8 \
    --dtypes float32 --out "$OUT/bench_ood_step.json"
else
  part ood_input "${T_OOD_INPUT:-180}" $PY scripts/profile_input.py $OODCFG \
    --config.data.synthetic_size=40000 --steps 300 --out "$OUT/ood_input.json"
  part ood_step "${T_OOD_STEP:-150}" $BENCH --frameworks jax \
    --models configs/ood_best.py,resnet50:imagenet --image_size 128 --batch 128 \
    --dtypes bfloat16 --out "$OUT/bench_ood_step.json"
fi

# --- d) fine-tune: pretrained vs random ------------------------------------------------------
finetune() {
  r50_weights || return
  "$PY" - "$WORK/ft" "$SMALL" "$OUT/finetune.json" <<'EOF'
import json, os, pathlib, pickle, subprocess, sys, time
import numpy as np

work, small, out_json = pathlib.Path(sys.argv[1]), sys.argv[2] == '1', sys.argv[3]
sys.path.insert(0, 'scripts')
from devdata import write_cifar_folder  # pylint: disable=wrong-import-position
data = write_cifar_folder(work / 'data')  # the official layout, which the trainer reads
print(f'data: {len(data["train_y"])} train / {len(data["test_y"])} test images', flush=True)

t = time.time()
weights = work / 'r50'
subprocess.run([sys.executable, 'scripts/convert_torchvision_weights.py', '--arch', 'resnet50',
                '--state_dict', os.environ['R50_PTH'],
                '--output', str(weights), '--overwrite'], check=True)
print(f'converted weights in {time.time() - t:.1f}s', flush=True)

from jax_cifar.configs import default  # pylint: disable=wrong-import-position
from jax_cifar import xla_options  # pylint: disable=wrong-import-position
from jax_cifar.training import trainer
xla_options.enable_compilation_cache()  # the second run reuses the first one's compiled steps

size, batch, epochs = (32, 16, 1) if small else (160, 64, 4)
results = {}
for name, pretrained in (('pretrained', str(weights)), ('random', '')):
  c = default.get_config()
  c.model.name, c.model.stem, c.model.image_size = 'resnet50', 'imagenet', size
  c.model.normalize, c.model.dtype, c.model.pretrained = 'imagenet', 'bfloat16', pretrained
  c.data.dir, c.data.download, c.data.val_fraction = str(work / 'data'), False, 0.0
  c.optim.lr, c.optim.weight_decay, c.optim.warmup_epochs = 5e-4, 0.05, 0.5
  c.optim.label_smoothing, c.optim.grad_clip_norm = 0.1, 1.0
  c.train.batch_size, c.train.num_epochs, c.train.eval_batch_size = batch, epochs, 500
  c.train.eval_every_epochs, c.train.log_every_steps, c.train.resume = epochs, 10, False
  c.checkpoint.every_steps = 10**6
  if small:  # 3 steps and one evaluation (max_steps would stop before evaluating)
    c.data.train_limit, c.data.eval_limit, c.train.num_epochs, c.train.eval_every_epochs = 48, 64, 1, 1
  t = time.time()
  result = trainer.train_and_evaluate(c, str(work / name))
  wall = time.time() - t
  rows = [json.loads(l) for l in open(work / name / 'metrics.jsonl')]
  ips = [r['images_per_sec'] for r in rows if 'images_per_sec' in r]
  results[name] = {'val_accuracy': result.get('val_accuracy'), 'val_loss': result.get('val_loss'),
                   'steps': result['step'], 'wall_s': wall,
                   'images_per_sec': ips[-1] if ips else None,
                   'train_loss_last': [r['train_loss'] for r in rows if 'train_loss' in r][-1:]}
  print(f'FINETUNE {name:10s} steps {result["step"]} val_accuracy {result.get("val_accuracy")} '
        f'({wall:.0f}s, {results[name]["images_per_sec"]} img/s at the last log)', flush=True)
  # After each run: the pretrained one's numbers had been lost when the part's limit cut the
  # random-init run short (a review).
  with open(out_json + '.tmp', 'w') as f:
    json.dump({'image_size': size, 'batch': batch, 'epochs': epochs,
               'n_train': int(len(data['train_y'])), 'n_test': int(len(data['test_y'])),
               **results}, f, indent=1)
  os.replace(out_json + '.tmp', out_json)
EOF
}
export -f finetune
if [ -f .devdata/cifar_small.npz ] && [ -n "$R50_PTH" ]; then
  TAIL=6 part finetune "${T_FT:-$([ "$SMALL" = 1 ] && echo 400 || echo 120)}" finetune
else
  if [ -z "${PARTS:-}" ] || [[ " $PARTS " == *" finetune "* ]]; then
    row finetune "skipped: no .devdata/ (scripts/gpu_prepare.sh)" 0
  fi
fi

# --- e) robust OOD: configs/ood_best.py end to end, then each test-time tool -------------------
# Trains the recipe from the converted ImageNet ResNet-50 on $OOD_DATA (a folder holding
# cifar-100-python/, e.g. the full training set carried in parts to $HOME) or, without it, on
# .devdata/cifar_small.npz; builds a labelled 19 x 5 set from the test split with
# jax_cifar.corrupt (needs the 'corrupt' extra: scipy, scikit-image); writes the submission and
# prints clean and OOD accuracy with and without each test-time tool.
ood_best() {
  local data=${OOD_DATA:-$WORK/ood_data} weights=${OOD_WEIGHTS:-} probe=${OOD_PROBE-auto}
  if [ ! -d "$data/cifar-100-python" ]; then  # The official layout, from the small npz.
    "$PY" scripts/devdata.py write .devdata/cifar_small.npz "$data" || return 1
  fi
  if [ -z "$weights" ]; then  # OOD_WEIGHTS: an already converted folder (gpu_stage.sh: ~/jc/r50)
    weights=$WORK/r50
    r50_weights || return 1
    "$PY" scripts/convert_torchvision_weights.py --arch resnet50 --state_dict \
      "$R50_PTH" --output "$weights" --overwrite || return 1
  fi
  # Full data (OOD_DATA): the config's 30 epochs do not fit, so a probe (100 steps of the same
  # step on synthetic data, which also warms the compilation cache) sizes the epochs to the
  # training deadline, as docs/robustness.md's run did. OOD_PROBE=DIR reuses one, OOD_PROBE=''
  # trains the config's epochs and stops at the deadline.
  local extra=()
  if [ -n "${OOD_DATA:-}" ] && [ -n "$probe" ]; then
    if [ "$probe" = auto ]; then
      probe=$WORK/probe
      "$PY" -m jax_cifar.train --config configs/ood_best.py --workdir "$probe" \
        --config.data.source=synthetic --config.data.synthetic_size=50000 \
        --config.train.max_steps=100 --config.model.pretrained="$weights" > "$WORK/probe.log" 2>&1 \
        || { tail -n 20 "$WORK/probe.log"; return 1; }
    fi
    extra=(--probe "$probe")
  fi
  # Deadlines from what is left of this part's limit (PART_END, clipped to the budget), less
  # 20 s to write the results; training gets 60 % of it.
  local left=$((PART_END - $(date +%s) - 20))
  local deadline=${OOD_DEADLINE_S:-$left} train=${OOD_TRAIN_S:-$((left * 6 / 10))}
  # The test-split set only: the small npz holds too few training images for a validation one.
  local size=(--ood_limit "${OOD_LIMIT:-500}" --ood_splits test --full_set)
  # CPU dry run: tiny sizes, and a deadline that skips the 18-view evaluations.
  if [ "$SMALL" = 1 ]; then
    size=(--small --procs 2 --ood_splits test)
    [ "$deadline" -gt 240 ] && deadline=240
  fi
  echo "ood_best: data $data, weights $weights, ${extra[*]:-no probe}; deadlines: training" \
    "${train}s, evaluations ${deadline}s"
  # --json_out: the JSON lands in $OUT after every phase, so a part timeout keeps what finished.
  "$PY" scripts/gpu_ood.py --data "$data" --weights "$weights" --work "$WORK/ood" "${size[@]}" \
    "${extra[@]}" --deadline_s "$deadline" --train_deadline_s "$train" \
    --json_out "$OUT/ood_best.json" 2> "$WORK/ood_stderr.log"
  local rc=$?
  [ $rc -eq 0 ] || tail -n 30 "$WORK/ood_stderr.log"
  return $rc
}
export -f ood_best
if [ -f configs/ood_best.py ] && { [ -n "${OOD_WEIGHTS:-}" ] \
    || [ -n "$R50_PTH" ]; } && { [ -n "${OOD_DATA:-}" ] \
    || [ -f .devdata/cifar_small.npz ]; }; then
  TAIL=8 part ood_best "${T_OOD:-$([ "$SMALL" = 1 ] && echo 1800 || echo 480)}" ood_best
else
  if [ -z "${PARTS:-}" ] || [[ " $PARTS " == *" ood_best "* ]]; then
    row ood_best "skipped: no data/weights (.devdata/ or OOD_DATA + OOD_WEIGHTS)" 0
  fi
fi
exit 0  # the summary: finish(), on EXIT (which exits 1 if a part failed or timed out)
