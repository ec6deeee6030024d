# Settings shared by the scripts that prepare GPU runs here (gpu_prepare.sh, gpu_pack_full.sh);
# sourced from the repository root. Each can be set in the environment instead (WEIGHTS='': none).
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
# The folder holding cifar-100-python/: where the library itself looks (jax_cifar.data.cifar100.
# resolve_data_dir): $JAX_CIFAR_DATA_DIR, else its download cache ~/.cache/jax_cifar.
CIFAR=${CIFAR:-${JAX_CIFAR_DATA_DIR:-$HOME/.cache/jax_cifar}}
[ -d "$CIFAR/cifar-100-python" ] || echo "warning: no $CIFAR/cifar-100-python (set CIFAR)" >&2
WEIGHTS=${WEIGHTS-../shared/data/weights/resnet50-keras-imagenet-tvlayout-fp16.pth}
