#!/usr/bin/env bash
# Splits the full CIFAR-100 and the shared ResNet-50 weights into .gpudata/c1 .. c3, each of which
# travels with one device call (64 MiB with the repository), for scripts/gpu_ood.py's full-scale
# run. The images go as one NHWC npz compressed by xz with a delta filter (122 MB for all 60,000;
# the official tar.xz is 138 MB). On the device machine, after each call that carries .gpudata/cK:
#   bash scripts/gpu_stage.sh K   # copies the part to $JC_HOME; with all parts, unpacks them
# Usage: bash scripts/gpu_pack_full.sh   [CIFAR=folder holding cifar-100-python/ WEIGHTS=.pth]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh  # PY, CIFAR, WEIGHTS
FIRST_MIB=${FIRST_MIB:-12}  # data in c1 (with the wheels and the weights)
PART_MIB=${PART_MIB:-58}
[ -d .whl ] || { echo "error: no .whl/ (run scripts/gpu_prepare.sh first)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
rm -rf .gpudata && mkdir -p .gpudata/c1/whl
"$PY" scripts/devdata.py pack "$CIFAR" "$tmp/cifar_full.npz"
xz -T2 -c --format=xz --delta=dist=3 --lzma2=preset=9e "$tmp/cifar_full.npz" > "$tmp/cifar.xz"
xz -9e -T2 -c "$WEIGHTS" > .gpudata/c1/r50.pth.xz
cp .whl/*.whl .gpudata/c1/whl/
head -c $((FIRST_MIB << 20)) "$tmp/cifar.xz" > .gpudata/c1/cifar.part1
tail -c +$(((FIRST_MIB << 20) + 1)) "$tmp/cifar.xz" | split -b $((PART_MIB << 20)) -d -a 1 \
  --numeric-suffixes=2 - "$tmp/cifar.part"
n=1
for f in "$tmp"/cifar.part*; do
  n=$((n + 1)); mkdir -p .gpudata/c$n && mv "$f" .gpudata/c$n/
done
(cd .gpudata && sha256sum c*/cifar.part* | sed 's#c[0-9]*/##' > SHA256SUMS \
  && sha256sum c1/r50.pth.xz | sed 's#c1/##' >> SHA256SUMS)
for d in .gpudata/c*; do cp .gpudata/SHA256SUMS "$d/"; done
repo=$(git ls-files -co --exclude-standard -z | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
for d in .gpudata/c*; do
  echo "$d: $(( ($(du -sb "$d" | cut -f1) + repo) >> 20 )) MiB with the repository (limit 64)"
done
