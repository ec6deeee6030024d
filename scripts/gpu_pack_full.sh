#!/usr/bin/env bash
# Splits the full CIFAR-100 and the shared ResNet-50 weights into .gpudata/c1 .. c3, each of which
# travels with one device call (64 MiB with the repository), for scripts/gpu_ood.py's full-scale
# run. The images go as one NHWC npz compressed by xz with a delta filter (122 MB for all 60,000;
# the official tar.xz is 138 MB). On the device machine, after each call that carries .gpudata/cK:
#   bash scripts/gpu_stage.sh K   # copies the part to $JC_HOME; with all parts, unpacks them
# back to back (each call within 30 s of the previous one's end: the machine, and $JC_HOME with
# it, is handed back after 30 s idle), then the run in the next call (docs/robustness.md).
# Usage: bash scripts/gpu_pack_full.sh   [CIFAR=folder holding cifar-100-python/ WEIGHTS=.pth]
#   GPUDATA (output, default .gpudata), WHL (wheels, default .whl), FIRST_BYTES / PART_BYTES (data
#   in c1, beside the wheels and weights, and in each later part; by default what is left of
#   LIMIT_BYTES, 64 MiB, less MARGIN_BYTES, 1 MiB, with the repository); WEIGHTS='' packs no
#   weights.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh  # PY, CIFAR, WEIGHTS
GPUDATA=${GPUDATA:-.gpudata}
WHL=${WHL:-.whl}
LIMIT_BYTES=${LIMIT_BYTES:-$((64 << 20))}
MARGIN_BYTES=${MARGIN_BYTES:-$((1 << 20))}
[ -d "$WHL" ] || { echo "error: no $WHL/ (run scripts/gpu_prepare.sh first)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
rm -rf "$GPUDATA" && mkdir -p "$GPUDATA/c1/whl"
"$PY" scripts/devdata.py pack "$CIFAR" "$tmp/cifar_full.npz"
xz -T2 -c --format=xz --delta=dist=3 --lzma2=preset=9e "$tmp/cifar_full.npz" > "$tmp/cifar.xz"
[ -z "$WEIGHTS" ] || xz -9e -T2 -c "$WEIGHTS" > "$GPUDATA/c1/r50.pth.xz"
for w in "$WHL"/*.whl; do cp "$w" "$GPUDATA/c1/whl/"; done
# What travels with every part: tracked + untracked-not-ignored files.
repo=$(git ls-files -co --exclude-standard -z | xargs -0 -r du -cb 2>/dev/null | grep total$ \
  | awk '{s += $1} END {print s + 0}')
# Each part's data fills what is left (a fixed 12 MiB in c1 had grown over the limit beside a
# growing repository: a review).
PART_BYTES=${PART_BYTES:-$((LIMIT_BYTES - MARGIN_BYTES - repo))}
FIRST_BYTES=${FIRST_BYTES:-$((PART_BYTES - $(du -sb "$GPUDATA/c1" | cut -f1)))}
if [ "$FIRST_BYTES" -le 0 ]; then
  echo "error: no room for data beside the wheels and weights" >&2
  exit 1
fi
head -c "$FIRST_BYTES" "$tmp/cifar.xz" > "$GPUDATA/c1/cifar.part01"
tail -c +$((FIRST_BYTES + 1)) "$tmp/cifar.xz" | split -b "$PART_BYTES" -d -a 2 \
  --numeric-suffixes=2 - "$tmp/cifar.part"
n=1
for f in "$tmp"/cifar.part*; do
  n=$((n + 1)); mkdir -p "$GPUDATA/c$n" && mv "$f" "$GPUDATA/c$n/"
done
(cd "$GPUDATA" && sha256sum c*/cifar.part* c1/r50.pth.xz 2>/dev/null | sed 's#c[0-9]*/##' \
  > SHA256SUMS) || true  # r50.pth.xz is absent with WEIGHTS=''
for d in "$GPUDATA"/c*; do cp "$GPUDATA/SHA256SUMS" "$d/"; done
over=0
for d in "$GPUDATA"/c*; do
  bytes=$(( $(du -sb "$d" | cut -f1) + repo ))
  echo "$d: $(awk -v b=$bytes 'BEGIN{printf "%.2f", b/1048576}') MiB with the repository" \
    "(limit $(awk -v b=$LIMIT_BYTES 'BEGIN{printf "%.2f", b/1048576}'))"
  [ "$bytes" -lt "$LIMIT_BYTES" ] || over=1
done
if [ "$over" = 1 ]; then  # (It had only printed the sizes: a part too big failed its call.)
  echo "error: a part is over the limit with the repository: it cannot travel in one call" >&2
  exit 1
fi
