# Settings shared by the scripts that prepare GPU runs here (gpu_prepare.sh, gpu_pack_full.sh);
# sourced from the repository root. Each can be set in the environment instead (WEIGHTS='': none).
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
CIFAR=${CIFAR:-${JAX_CIFAR_DATA_DIR:-/work/cache/cifar}}  # folder holding cifar-100-python/
WEIGHTS=${WEIGHTS-../shared/data/weights/resnet50-keras-imagenet-tvlayout-fp16.pth}
