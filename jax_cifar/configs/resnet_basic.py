"""The report's Model 1: a basic ResNet-18 from scratch, SGD lr 0.1, 5 epochs, batch 8, no augmentation.

Kept as the report ran it (it scored about 1% on the OOD leaderboard); not a recipe to copy.
Where the report is silent, this config chooses SGD momentum 0.9 (torch.optim.SGD's default is 0:
--config.optim.momentum=0), no weight decay, a constant rate.
"""

from jax_cifar.configs import default


def get_config():
  c = default.get_config()
  c.model.name = 'resnet18'
  c.model.stem = 'imagenet'  # torchvision's resnet18() as used in the course starter code.
  c.augment.crop_padding = 0
  c.augment.flip = False
  c.optim.name = 'sgd'
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.optim.schedule = 'constant'
  c.optim.warmup_epochs = 0.0
  c.optim.grad_clip_norm = 0.0
  c.train.batch_size = 8
  c.train.eval_batch_size = 200
  c.train.num_epochs = 5
  c.train.log_every_steps = 500
  c.checkpoint.every_steps = 2000
  return c
