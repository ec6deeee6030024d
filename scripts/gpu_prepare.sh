#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh needs on a GPU machine with no network, in two ignored folders
# that travel with the working tree (64 MiB in all, repository included):
#   .whl/      Python 3.12 manylinux wheels the GPU image lacks: grain (the trainer's data
#              pipeline), its array-record and portpicker, ml-collections (the configs);
#              CORRUPT_WHEELS=1: scikit-image and its deps instead (jax_cifar.corrupt), alone,
#              for an image without them (the H200 image of 2026-11 has them all).
#   .devdata/  cifar_small.npz (class-balanced real CIFAR-100: train_x/train_y/test_x/test_y,
#              uint8 NHWC / int64) and the shared ResNet-50 ImageNet weights (fp16, torchvision
#              layout; .pth.xz, which scripts/gpu_check.sh unpacks there).
# It fills what is left of the 64 MiB with training images, in hundreds: 2,600 (+ 1,000 test,
# 62.7 MiB travelling in all) with the repository of 2026-12-08, fewer as the repository grows.
# Usage: bash scripts/gpu_prepare.sh   [CIFAR=folder holding cifar-100-python/ (default
#   $JAX_CIFAR_DATA_DIR, else ~/.cache/jax_cifar) WEIGHTS=path/to.pth N_TEST=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh  # PY, CIFAR, WEIGHTS
N_TEST=${N_TEST:-1000}
LIMIT=$((64 * 1024 * 1024))
MARGIN=$((1024 * 1024))

# --- wheels -----------------------------------------------------------------------------------
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0
# (pytest-xdist, for the parity tests' 4 workers, is in the image: carried, its pinned version had
# replaced the image's own plugin, and cost room for training images: a review.)
if [ "${CORRUPT_WHEELS:-0}" = 1 ]; then
  # The 'corrupt' extra for the ood_best part, where the image lacks it (the H200 image of
  # 2026-11 lists scikit-image, imageio, tifffile, networkx, lazy-loader, scipy, pillow). With the
  # weights it exceeds one call's 64 MiB: carry this .whl/ in a call of its own that installs it
  # into $HOME/site, then run gpu_prepare.sh again without CORRUPT_WHEELS for the data call.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl scikit-image==0.26.0 lazy-loader imageio tifffile networkx
  du -b .whl/* | awk '{printf "%10.2f MiB  %s\n", $1/1048576, $2}'
  exit 0
fi
for w in .whl/*.whl; do
  echo "$(basename "$w"): $(unzip -p "$w" '*/METADATA' | grep ^Requires-Dist | grep -v 'extra ==' \
    | sed 's/Requires-Dist: //' | tr '\n' ' ')"
done

# --- data and weights -----------------------------------------------------------------------
mkdir -p .devdata
# The weights travel xz-compressed (44 of 49 MiB: room for 1,600 more training images);
# gpu_check.sh unpacks them on the GPU machine.
rm -f .devdata/cifar_small.npz .devdata/resnet50-keras-imagenet-tvlayout-fp16.pth
xz -9e -T2 -c "$WEIGHTS" > .devdata/resnet50-keras-imagenet-tvlayout-fp16.pth.xz
# Everything that travels except the npz: tracked + untracked-not-ignored files, .whl, weights.
travel=$( (git ls-files -co --exclude-standard -z | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1) )
other=$((travel + $(du -cb .whl .devdata | tail -1 | cut -f1)))
budget=$((LIMIT - MARGIN - other))
CIFAR="$CIFAR" N_TEST="$N_TEST" BUDGET="$budget" "$PY" - <<'EOF'
import os, sys
import numpy as np
sys.path.insert(0, '.')
from jax_cifar.data import cifar100

n_test, budget = int(os.environ['N_TEST']), int(os.environ['BUDGET'])
per_image = 32 * 32 * 3 + 8
n_train = min(4000, (budget // per_image - n_test - 10) // 100 * 100)
if n_train < 1000:
  sys.exit(f'only {budget} bytes left for data: not enough for 1000 training images')
out = {}
for split, n in (('train', n_train), ('test', n_test)):
  s = cifar100.load_split(os.environ['CIFAR'], split, download=False)
  idx = cifar100.balanced_subset(s.labels, n)
  out[f'{split}_x'] = np.ascontiguousarray(s.images[idx], dtype=np.uint8)
  out[f'{split}_y'] = np.asarray(s.labels[idx], dtype=np.int64)
  counts = np.bincount(out[f'{split}_y'], minlength=100)
  print(f'{split}: {len(idx)} images, {counts.min()}..{counts.max()} per class')
np.savez('.devdata/cifar_small.npz', **out)
EOF
du -b .whl/* .devdata/* | awk '{printf "%10.2f MiB  %s\n", $1/1048576, $2}'
total=$((travel + $(du -cb .whl .devdata | tail -1 | cut -f1)))
echo "travels: $(awk -v t=$total 'BEGIN{printf "%.2f", t/1048576}') MiB of 64 MiB (repo files + .whl + .devdata)"
[ "$total" -lt "$LIMIT" ] || { echo "error: over the 64 MiB limit" >&2; exit 1; }
