"""Runs one train step of a tiny model on a fixed batch and saves the result (used by test_trainer);
with the trainer's options, also the validator's predictions of the initial model.

Run in a subprocess so XLA_FLAGS can give it 1 or 8 fake CPU devices. It takes the step twice,
compiled with the trainer's CPU compiler options and without them (JAX_CIFAR_XLA_DEFAULTS, read
when the step is compiled), into OUT_options.npz and OUT_defaults.npz.
"""

import os
import sys

import jax
import numpy as np

from jax_cifar.configs import default  # pylint: disable=g-import-not-at-top
from jax_cifar import optim, parallel  # pylint: disable=g-import-not-at-top
from jax_cifar.training import trainer
from jax_cifar import state as state_lib


def validate(c, graphdef, state, mesh) -> dict:
  """Log-probabilities of 20 fixed images through the trainer's validator with an evaluation
  batch of 12, which 8 devices do not divide (rounded up to 16 there)."""
  c.train.eval_batch_size = 12
  validator = trainer.make_validator(c, graphdef, mesh)
  validator.state = state
  images = np.random.default_rng(1).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
  return {'__val_log_probs': validator.run(images, 'val'),
          '__val_batch': np.asarray(validator.batch_size)}


def one_step(out_path: str, with_validation: bool) -> None:
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width, c.model.num_classes = 'resnet18', 'cifar', 8, 10
  c.augment.mixup_alpha = 0.4
  c.optim.label_smoothing = 0.1
  c.optim.warmup_epochs = 0.0
  # SGD: parameter differences then show gradient differences directly (Adam's first step
  # divides by |g| and would blow up rounding in near-zero gradients).
  c.optim.name, c.optim.lr, c.optim.weight_decay = 'sgd', 0.1, 1e-4
  mesh = parallel.make_mesh()
  tx, schedule = optim.make_optimizer(c.optim, total_steps=10, steps_per_epoch=10)
  state, graphdef = state_lib.init_state(c, tx, mesh)
  val = validate(c, graphdef, state, mesh) if with_validation else {}
  train_step_fn = trainer.compile_train_step(c, graphdef, tx, schedule, mesh)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  state, metrics = train_step_fn(state, parallel.to_global(batch, parallel.batch_sharded(mesh)))
  leaves = jax.tree_util.tree_leaves_with_path((state.params, state.batch_stats))
  arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
  arrays['__loss'] = np.asarray(metrics['train_loss'])
  arrays['__devices'] = np.asarray(jax.device_count())
  arrays.update(val)
  np.savez(out_path, **arrays)


def main(out_prefix: str) -> None:
  for name, xla_defaults in (('options', False), ('defaults', True)):
    os.environ.pop('JAX_CIFAR_XLA_DEFAULTS', None)
    if xla_defaults:
      os.environ['JAX_CIFAR_XLA_DEFAULTS'] = '1'
    one_step(f'{out_prefix}_{name}.npz', with_validation=not xla_defaults)


if __name__ == '__main__':
  main(sys.argv[1])
