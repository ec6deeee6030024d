"""The course's Part 1: a small CNN trained from scratch (before the report's three models).

Adam at 1e-3 without weight decay (AdamW with weight_decay 0), a constant rate, batch 64, 10 epochs.
"""

from jax_cifar.configs import default


def get_config():
  c = default.get_config()
  c.model.name = 'simple_cnn'
  c.augment.crop_padding = 0
  c.augment.flip = False
  c.optim.name = 'adamw'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.schedule = 'constant'
  c.optim.warmup_epochs = 0.0
  c.optim.grad_clip_norm = 0.0
  c.train.batch_size = 64
  c.train.num_epochs = 10
  return c
