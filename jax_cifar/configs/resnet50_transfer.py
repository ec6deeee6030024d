"""Transfer learning: an ImageNet-pretrained ResNet-50 fine-tuned on CIFAR-100 with a fresh head.

Set `model.pretrained` to a converted checkpoint (without it the backbone starts random but still
trains at `backbone_lr_mult` x the head's rate, which the run warns about):
  # the shared Keras-ported ResNet-50 (torchvision layout):
  python -m jax_cifar.convert --arch resnet50 \
      --state_dict $JAX_CIFAR_WEIGHTS_DIR/resnet50-keras-imagenet-tvlayout-fp16.pth --output weights/resnet50
  # or torchvision's own weights (needs internet once):
  python -m jax_cifar.convert --arch resnet50 --weights IMAGENET1K_V2 --output weights/resnet50
  python -m jax_cifar.train --config configs/resnet50_transfer.py --workdir runs/r50 \
      --config.model.pretrained=weights/resnet50

The backbone trains at `backbone_lr_mult` x the head's rate; `freeze_backbone_steps` (0 here) can
keep it fixed for a first few steps, so the random head sends no large gradients into it. 160x160
inputs suit a GPU; on a CPU pass e.g. --config.model.image_size=64 (see docs/transfer.md).
"""

from jax_cifar.configs import default


def get_config():
  c = default.get_config()
  c.model.name = 'resnet50'
  c.model.stem = 'imagenet'  # The pretrained weights need torchvision's 7x7/2 stem + max-pool.
  c.model.normalize = 'imagenet'  # ... and ImageNet's mean/std.
  c.model.image_size = 160  # 32x32 upsampled on device; 224 is a little better and ~2x slower.
  c.model.pretrained = ''  # Path of a converted checkpoint (see above); '' = random init.
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.optim.name = 'adamw'
  c.optim.lr = 1e-3  # Head rate; the backbone gets lr * backbone_lr_mult.
  c.optim.backbone_lr_mult = 0.1
  c.optim.freeze_backbone_steps = 0  # e.g. 200: warm up only the head first.
  c.optim.weight_decay = 0.05
  c.optim.schedule = 'cosine'
  c.optim.warmup_epochs = 0.5
  c.optim.grad_clip_norm = 1.0
  c.optim.label_smoothing = 0.1
  c.train.batch_size = 128
  c.train.num_epochs = 10
  c.train.log_every_steps = 50
  return c
