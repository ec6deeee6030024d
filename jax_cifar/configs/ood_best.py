"""OOD-oriented fine-tune of the shared ImageNet ResNet-50: AutoAugment + label smoothing +
crop/flip + AugMix with its Jensen-Shannon loss (mixup off: the JSD loss refuses it) + weight EMA.

  # once: convert the shared torchvision-layout ResNet-50 (or --weights IMAGENET1K_V2, online)
  python scripts/convert_torchvision_weights.py --arch resnet50 --state_dict FILE.pth --output weights/resnet50
  #   FILE.pth: e.g. $JAX_CIFAR_WEIGHTS_DIR/resnet50-keras-imagenet-tvlayout-fp16.pth
  python -m jax_cifar.train --config configs/ood_best.py --workdir runs/ood_best \
      --config.model.pretrained=weights/resnet50
  python -m jax_cifar.evaluate --config configs/ood_best.py --workdir runs/ood_best \
      --checkpoint best --weights ema --ood_dir DIR --submission submission_ood.csv

Evaluate with --weights ema if metrics.jsonl's final val_accuracy_ema beats val_accuracy, else
--weights raw (decide on validation, never on the OOD set; `best` is picked by the EMA). No
test-time tool helped in the measurement (--tta flip/shifts, --bn_adapt: within noise or worse), so
the command uses none; --bn_adapt re-estimates BatchNorm statistics on the unlabelled test images
and is test-time adaptation, never a default.

How this was chosen, honestly: docs/robustness.md trained a width-8 cifar-stem ResNet-18 from
scratch on 2 CPU cores (10k images, 312 steps, ~10% clean accuracy). AugMix + JSD was the best of
the 312-step rows on validation and beat the report recipe in both seeds on clean and OOD accuracy,
but it costs 3x compute per step (3 views per image), and the compute-matched control (the report
recipe for 3x the epochs) beat it by about 4 points on validation, clean test and OOD in both
seeds: at that scale the JSD lead was compute. The photometric augmentations and the EMA did not
help either (the EMA is kept because it usually pays off in long runs; it did not in 312 steps).
This recipe stays AugMix + JSD, the published choice for corruption robustness at scale, until it
is measured against the report recipe at equal compute on ResNet-50: rerun
scripts/robustness_table.py --config configs/ood_best.py --rows report,augmix_jsd,report_3x on a
GPU before relying on it.
On a CPU pass e.g. --config.model.image_size=64.
"""

from jax_cifar.configs import default


def get_config():
  c = default.get_config()
  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'  # The pretrained weights need torchvision's 7x7/2 stem + max-pool.
  c.model.normalize = 'imagenet'
  c.model.image_size = 128  # 32x32 upsampled on device; 64 for CPU checks, 160-224 on a GPU.
  c.model.pretrained = ''  # Path of the converted checkpoint, given on the command line.
  c.model.dtype = 'bfloat16'  # GPU/TPU; on a CPU pass --config.model.dtype=float32.
  # The report recipe without mixup: crop/flip + AutoAugment (CIFAR10 policy) + label smoothing.
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.augment.policy = 'autoaugment_cifar10'
  c.augment.mixup_alpha = 0.0  # The JSD loss refuses mixup/CutMix.
  c.optim.label_smoothing = 0.1
  # AugMix + Jensen-Shannon consistency (clean + 2 AugMix views per image; 12 as in the paper).
  c.augment.augmix = True
  c.augment.augmix_jsd_weight = 12.0
  # EMA of the weights; 'best' picked by the EMA's validation accuracy. 10 epochs of 45k images at
  # batch 128 are ~3,500 steps: decay 0.999 averages over ~1,000 of them.
  c.ema.decay = 0.999
  c.ema.warmup_power = 0.75
  c.checkpoint.best_weights = 'ema'
  # Fine-tuning settings of configs/resnet50_transfer.py.
  c.optim.name = 'adamw'
  c.optim.lr = 1e-3  # Head rate; the backbone gets lr * backbone_lr_mult.
  c.optim.backbone_lr_mult = 0.1
  c.optim.weight_decay = 0.05
  c.optim.schedule = 'cosine'
  c.optim.warmup_epochs = 0.5
  c.optim.grad_clip_norm = 1.0
  c.train.batch_size = 128
  c.train.num_epochs = 10
  c.train.log_every_steps = 50
  return c
