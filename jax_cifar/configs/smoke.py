"""Smoke run: a narrow (width 8) cifar-stem ResNet-18 on a class-balanced 10k subset, a few minutes on 2 CPU cores.

All 100 classes; the point is a quick end-to-end check that clearly beats chance (1%).
"""

from jax_cifar.configs import default


def get_config():
  c = default.get_config()
  c.model.name = 'resnet18'
  c.model.stem = 'cifar'
  c.model.width = 8
  c.data.train_limit = 10_000
  c.data.eval_limit = 2_000
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.optim.lr = 2e-3
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 0.5
  c.optim.label_smoothing = 0.1
  c.train.batch_size = 128
  c.train.num_epochs = 4
  c.train.log_every_steps = 20
  c.checkpoint.every_steps = 100
  return c
