#!/usr/bin/env bash
# Device side of scripts/gpu_pack_full.sh: copies $GPUDATA/cK (default .gpudata/cK, carried by
# this call) into $JC_HOME (default ~/jc), which outlives the call while the machine stays warm.
# The part with the wheels installs them into $JC_HOME/site and converts the weights into
# $JC_HOME/r50; once every part is there (checked against SHA256SUMS) the images become
# $JC_HOME/data/cifar-100-python. Make the calls back to back: the machine, and $JC_HOME with it,
# is handed back after 30 s idle, so each call must start within 30 s of the previous one's end.
# Usage: bash scripts/gpu_stage.sh K ; then PYTHONPATH=$JC_HOME/site python3 scripts/gpu_ood.py
#   --data $JC_HOME/data --weights $JC_HOME/r50 --work $JC_HOME/ood
set -euo pipefail
cd "$(dirname "$0")/.."
K=$1
H=${JC_HOME:-$HOME/jc}
PY=${PY:-python3}
mkdir -p "$H/parts"
unxz() {  # stdin -> stdout; Python's lzma where the image has no xz binary
  if command -v xz > /dev/null; then xz -d -c -T0; else
    "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)'
  fi
}
t0=$(date +%s)
cp -r "${GPUDATA:-.gpudata}/c$K"/* "$H/parts/"
export PYTHONPATH="$H/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Each product is made beside its place and renamed into it, so a step cut short is redone on
# the next call instead of being taken for finished.
if compgen -G "$H/parts/whl/*.whl" > /dev/null && [ ! -d "$H/site" ]; then
  rm -rf "$H/site.tmp"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$H/site.tmp" "$H"/parts/whl/*.whl
  mv "$H/site.tmp" "$H/site" && echo "wheels installed into $H/site"
fi
if [ -f "$H/parts/r50.pth.xz" ] && [ ! -d "$H/r50" ]; then
  (cd "$H/parts" && grep r50.pth.xz SHA256SUMS | sha256sum -c --quiet)
  unxz < "$H/parts/r50.pth.xz" > "$H/r50.pth"
  "$PY" scripts/convert_torchvision_weights.py --arch resnet50 --state_dict "$H/r50.pth" \
    --output "$H/r50" --overwrite 2>&1 | { grep -v -i warn || true; } | tail -2
fi
needed=$(grep -c cifar.part "$H/parts/SHA256SUMS")
have=$(ls "$H"/parts/cifar.part* 2>/dev/null | wc -l)
if [ "$have" = "$needed" ] && [ ! -d "$H/data/cifar-100-python" ]; then
  (cd "$H/parts" && sha256sum -c --quiet SHA256SUMS)
  ls "$H"/parts/cifar.part* | sort -V | xargs -d '\n' cat | unxz > "$H/cifar_full.npz"
  rm -rf "$H/data.tmp"
  "$PY" scripts/devdata.py write "$H/cifar_full.npz" "$H/data.tmp" && rm -f "$H/cifar_full.npz"
  mkdir -p "$H/data" && mv "$H/data.tmp/cifar-100-python" "$H/data/" && rm -rf "$H/data.tmp"
  echo "data ready: $H/data/cifar-100-python"
fi
echo "stage $K done in $(($(date +%s) - t0))s: $have of $needed data parts; $H holds $(ls "$H" | tr "\n" " ")"
last=$(grep -o 'cifar\.part[^ ]*' "$H/parts/SHA256SUMS" | sort -V | tail -1)
if [ -f "${GPUDATA:-.gpudata}/c$K/$last" ] && [ ! -d "$H/data/cifar-100-python" ]; then
  # The last part staged and still no data: the machine was given back between the calls and
  # lost the earlier parts (`gpu_stage.sh 3 && ...` had gone on without data: a review).
  echo "error: the last data part is staged but only $have of $needed are in $H/parts (a fresh" \
       "machine?): stage from part 1 again, in calls made back to back" >&2
  exit 1
fi
