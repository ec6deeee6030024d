#!/usr/bin/env bash
# One GPU session's checks, in about 6 minutes on an H100 (each part has its own time limit; at
# most 675 s in all with the default limits T_TESTS, T_R18, T_R50, T_R152, T_INPUT, T_FT):
#   a) versions and nvidia-smi
#   b) torch parity tests (tests/test_models.py, tests/test_convert.py) on the GPU
#   c) scripts/benchmark.py, JAX vs PyTorch: resnet18 cifar 32 px (batch 128/256, bf16 + fp32),
#      resnet50 160 px and resnet152 224 px (ImageNet stem, bf16); resnet152 again with
#      model.scan_blocks (compile time and step speed); the 16 GiB micro-batch search (fit_r152)
#   c2) scripts/profile_input.py: the share of time a full-width ResNet-18 bf16 step waits for data
#   c3) ood_input / ood_step: the same for configs/ood_best.py's step, and that step (AutoAugment,
#      mixup, EMA) beside the bare ResNet-50 step at 128 px
#   d) with .devdata/ (scripts/gpu_prepare.sh): ResNet-50 at 160 px fine-tuned from the converted
#      ImageNet weights vs from random init, same steps; val (= test subset) accuracy of each
#   e) ood_best: configs/ood_best.py end to end, a labelled 19 x 5 set from jax_cifar.corruptions.corrupt, the
#      submission, clean/OOD accuracy with none/flip/shifts/bn_adapt/shifts+bn_adapt
#      (OOD_DATA=folder holding the full cifar-100-python/, OOD_LIMIT test images per chunk, T_OOD)
# Run from the repository root, after installing the carried wheels:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PYTHONPATH; bash scripts/gpu_check.sh
# SMALL=1 runs every part with tiny models and sizes (a CPU dry run of the logic);
# PARTS="bench_r18 finetune" runs only the named parts (versions parity_tests bench_r18 bench_r50
# bench_r152 scan_r152 fit_r152 input_path ood_input ood_step finetune ood_best); T_<PART> raise their limits, e.g. the ResNet-50/152 rows:
#   PARTS="bench_r50 bench_r152" T_R50=300 T_R152=300 bash scripts/gpu_check.sh
# Writes $OUT/{gpu_check.log,bench.json,finetune.json,summary.txt} ($OUT defaults to /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
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
export JAX_COMPILATION_CACHE_DIR="$WORK/xla_cache"
export TF_CPP_MIN_LOG_LEVEL=2
SUMMARY=()
T_START=$(date +%s)

# part NAME LIMIT_S CMD...: runs CMD under a time limit, appends its output to the log and keeps
# going whatever happens, so one failure never costs the other parts.
part() {
  local name=$1 limit=$2; shift 2
  if [ -n "${PARTS:-}" ] && [[ " $PARTS " != *" $name "* ]]; then return; fi
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s, $(($(date +%s) - T_START))s elapsed)" | tee -a "$LOG"
  timeout --kill-after=15 "$limit" bash -c '"$@"' _ "$@" > "$WORK/$name.log" 2>&1
  local rc=$? dt=$(($(date +%s) - t0))
  cat "$WORK/$name.log" >> "$LOG"
  grep -v -E 'Warning|warn\(|^\s*$' "$WORK/$name.log" | tail -n "${TAIL:-8}"
  local what=ok
  [ $rc -eq 0 ] || what="FAILED rc=$rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="TIMED OUT after ${limit}s"
  SUMMARY+=("$(printf '%-14s %-26s %5ss' "$name" "$what" "$dt")")
  echo "--- $name: $what in ${dt}s" | tee -a "$LOG"
}

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
[ -f .devdata/resnet50-keras-imagenet-tvlayout-fp16.pth ] && export JAX_CIFAR_WEIGHTS_DIR="$ROOT/.devdata"
PYTEST_FILES="tests/test_models.py tests/test_convert.py"
[ "$SMALL" = 1 ] && PYTEST_FILES="tests/test_models.py::test_bfloat16_computes_convs_in_bf16_but_keeps_params_stats_and_logits_float32"
# The suite compiles with most of XLA's optimisation off (tests/conftest.py, for the CPU CI's
# time); on the GPU the parity tests check the programs as users' runs compile them.
export JAX_DISABLE_MOST_OPTIMIZATIONS=0
TAIL=6 part parity_tests "${T_TESTS:-120}" "$PY" -m pytest -q -p no:cacheprovider $PYTEST_FILES

# --- c) benchmarks ---------------------------------------------------------------------------
BENCH="$PY scripts/benchmark.py --steps ${BENCH_STEPS:-20} --warmup 3"
if [ "$SMALL" = 1 ]; then
  part bench_r18 300 $BENCH --steps 2 --warmup 0 --models resnet18:cifar:4 --image_size 32 \
    --batch 8 --dtypes bfloat16,float32 --out "$WORK/bench_r18.json"
  part bench_r50 300 $BENCH --steps 2 --warmup 0 --models resnet50:imagenet:8 --image_size 64 \
    --batch 8 --dtypes bfloat16 --out "$WORK/bench_r50.json"
  part scan_r152 300 $BENCH --steps 1 --warmup 0 --frameworks jax --scan_blocks on \
    --models resnet152:imagenet:4 --image_size 32 --batch 8 --dtypes bfloat16 \
    --out "$WORK/bench_r152_scan.json"
else
  part bench_r18 "${T_R18:-150}" $BENCH --models resnet18:cifar --image_size 32 --batch 128,256 \
    --dtypes bfloat16,float32 --out "$WORK/bench_r18.json"
  part bench_r50 "${T_R50:-70}" $BENCH --models resnet50:imagenet --image_size 160 --batch 128 \
    --dtypes bfloat16 --out "$WORK/bench_r50.json"
  # torch.compile of ResNet-152 takes minutes: eager (channels_last + autocast) fits the budget.
  part bench_r152 "${T_R152:-80}" $BENCH --models resnet152:imagenet --image_size 224 --batch 128 \
    --dtypes bfloat16 --torch_compile "${R152_TORCH_COMPILE:-off}" --out "$WORK/bench_r152.json"
  # model.scan_blocks: compile time and step speed of the scanned ResNet-152 (bench_r152 = unrolled).
  part scan_r152 "${T_SCAN:-150}" $BENCH --steps 5 --warmup 1 --frameworks jax --scan_blocks on \
    --models resnet152:imagenet --image_size 224 --batch 128 --dtypes bfloat16 \
    --out "$WORK/bench_r152_scan.json"
  # Which micro-batch of the ResNet-152 recipe fits 16 GiB, and does remat help on a GPU (5-8 compiles).
  part fit_r152 "${T_FIT:-300}" $PY scripts/benchmark.py --models configs/resnet152.py \
    --dtypes bfloat16 --find_batch_size --analysis_only --mem_cap_gb 16 --remat on \
    --out "$WORK/fit_r152.json"
fi

# --- c2) input path: does grain + host-to-device transfer keep a fast step fed? ----------------
INPUT="$PY scripts/profile_input.py --config configs/smoke.py --config.data.source=synthetic \
  --config.data.train_limit=0"
if [ "$SMALL" = 1 ]; then
  part input_path 120 $INPUT --config.data.synthetic_size=1024 --config.model.width=4 \
    --config.train.batch_size=64 --steps 8
else  # Full-width ResNet-18 in bf16: the fastest step here, so the one most likely to starve.
  part input_path "${T_INPUT:-90}" $INPUT --config.data.synthetic_size=40000 \
    --config.model.width=64 --config.model.dtype=bfloat16 --steps 200
fi

# c3) The trainer ran configs/ood_best.py at 3,974 img/s on an H200, below the bare ResNet-50 step:
# is it the input path or the step's own extras (AutoAugment, mixup, EMA)? The same three timings
# for that config (synthetic data, random init), then its step beside the bare ResNet-50 step.
OODCFG="--config configs/ood_best.py --config.data.source=synthetic --config.data.train_limit=0 \
  --config.model.pretrained="
if [ "$SMALL" = 1 ]; then
  part ood_input 300 $PY scripts/profile_input.py $OODCFG --config.data.synthetic_size=256 \
    --config.model.name=resnet18 --config.model.image_size=32 --config.model.dtype=float32 \
    --config.train.batch_size=16 --steps 4
  part ood_step 300 $BENCH --steps 2 --warmup 0 --frameworks jax \
    --models configs/ood_best.py,resnet18:imagenet:8 --image_size 32 --batch 8 \
    --dtypes float32 --out "$WORK/bench_ood_step.json"
else
  part ood_input "${T_OOD_INPUT:-180}" $PY scripts/profile_input.py $OODCFG \
    --config.data.synthetic_size=40000 --steps 300
  part ood_step "${T_OOD_STEP:-150}" $BENCH --frameworks jax \
    --models configs/ood_best.py,resnet50:imagenet --image_size 128 --batch 128 \
    --dtypes bfloat16 --out "$WORK/bench_ood_step.json"
fi

# --- d) fine-tune: pretrained vs random ------------------------------------------------------
finetune() {
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
                '--state_dict', '.devdata/resnet50-keras-imagenet-tvlayout-fp16.pth',
                '--output', str(weights), '--overwrite'], check=True)
print(f'converted weights in {time.time() - t:.1f}s', flush=True)

from jax_cifar.configs import default  # pylint: disable=wrong-import-position
from jax_cifar import parallel  # pylint: disable=wrong-import-position
from jax_cifar.training import trainer
parallel.enable_compilation_cache()  # the second run reuses the first one's compiled steps

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
json.dump({'image_size': size, 'batch': batch, 'epochs': epochs,
           'n_train': int(len(data['train_y'])), 'n_test': int(len(data['test_y'])), **results},
          open(out_json, 'w'), indent=1)
EOF
}
export -f finetune
if [ -f .devdata/cifar_small.npz ] && [ -f .devdata/resnet50-keras-imagenet-tvlayout-fp16.pth ]; then
  TAIL=6 part finetune "${T_FT:-$([ "$SMALL" = 1 ] && echo 400 || echo 120)}" finetune
else
  SUMMARY+=("finetune       skipped: no .devdata/ (run scripts/gpu_prepare.sh)")
fi

# --- e) robust OOD: configs/ood_best.py end to end, then each test-time tool -------------------
# Trains the recipe from the converted ImageNet ResNet-50 on $OOD_DATA (a folder holding
# cifar-100-python/, e.g. the full training set carried in parts to $HOME) or, without it, on
# .devdata/cifar_small.npz; builds a labelled 19 x 5 set from the test split with
# jax_cifar.corrupt (needs the 'corrupt' extra: scipy, scikit-image); writes the submission and
# prints clean and OOD accuracy with and without each test-time tool.
ood_best() {
  local data=${OOD_DATA:-$WORK/ood_data}
  if [ ! -d "$data/cifar-100-python" ]; then  # The official layout, from the small npz.
    "$PY" scripts/devdata.py write .devdata/cifar_small.npz "$data" || return 1
  fi
  "$PY" scripts/convert_torchvision_weights.py --arch resnet50 --state_dict \
    .devdata/resnet50-keras-imagenet-tvlayout-fp16.pth --output "$WORK/r50" --overwrite || return 1
  # The deadline leaves the part's limit (T_OOD, 480 s) room for the set-up above.
  # The test-split set only: the small npz holds too few training images for a validation one.
  local size=(--ood_limit "${OOD_LIMIT:-500}" --ood_splits test --full_set
              --deadline_s "${OOD_DEADLINE_S:-420}")
  # CPU dry run: tiny sizes, and a deadline that skips the 18-view evaluations.
  [ "$SMALL" = 1 ] && size=(--small --procs 2 --ood_splits test --deadline_s 240)
  # --json_out: the JSON lands in $OUT after every phase, so a part timeout keeps what finished.
  "$PY" scripts/gpu_ood.py --data "$data" --weights "$WORK/r50" --work "$WORK/ood" "${size[@]}" \
    --train_deadline_s "${OOD_TRAIN_S:-300}" --json_out "$OUT/ood_best.json" \
    2> "$WORK/ood_stderr.log"
  local rc=$?
  cp "$WORK/ood/gpu_ood_severity.png" "$OUT/" 2>/dev/null
  [ $rc -eq 0 ] || tail -n 30 "$WORK/ood_stderr.log"
  return $rc
}
export -f ood_best
if [ -f configs/ood_best.py ] && [ -f .devdata/resnet50-keras-imagenet-tvlayout-fp16.pth ]; then
  TAIL=8 part ood_best "${T_OOD:-$([ "$SMALL" = 1 ] && echo 1800 || echo 480)}" ood_best
else
  SUMMARY+=("ood_best       skipped: needs configs/ood_best.py and .devdata/ (scripts/gpu_prepare.sh)")
fi

# --- summary ---------------------------------------------------------------------------------
"$PY" - "$WORK" "$OUT" > "$OUT/summary.txt" 2>&1 <<'EOF'
import glob, json, os, sys
sys.path.insert(0, 'scripts')
import benchmark
work, out = sys.argv[1:3]
rows, env = [], {}
for f in sorted(glob.glob(os.path.join(work, 'bench_*.json'))):
  r = json.load(open(f))
  rows += r['rows']
  env = r['environment']
json.dump({'environment': env, 'rows': rows}, open(os.path.join(out, 'bench.json'), 'w'), indent=1)
print(f"device {env.get('device')} | jax {env.get('jax')} | torch {env.get('torch')}")
print(benchmark.table(rows))
for r in rows:
  if r.get('torch', {}).get('compile_error'):
    print(f"  torch.compile fell back to eager for {r['model']}: {r['torch']['compile_error']}")
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
printf '%s\n' "" "parts:" "${SUMMARY[@]}" "total $(($(date +%s) - T_START))s" >> "$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
rm -rf "$WORK" 2>/dev/null || true
