"""The tiny synthetic run that the notebook API's tests train (test_api.py) or name
(test_api_arguments.py)."""

from jax_cifar.configs import default


def config():
  c = default.get_config()
  c.data.source, c.data.synthetic_size, c.data.val_fraction = 'synthetic', 320, 0.25
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'cifar', 4
  c.train.batch_size, c.train.eval_batch_size, c.train.num_epochs = 32, 64, 2
  c.train.log_every_steps, c.checkpoint.every_steps = 3, 3
  c.ema.decay = 0.5
  return c
