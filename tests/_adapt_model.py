"""A small random model for the test-time adaptation tests (tests/test_bn_adapt.py,
tests/test_tent.py): its config, the model with non-trivial running statistics, and images."""

import jax
import jax.numpy as jnp
import numpy as np

from jax_cifar import optim, parallel
from jax_cifar import state as state_lib
from jax_cifar.configs import default


def config(name='resnet18', stem='cifar', width=4, num_classes=100):
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width = name, stem, width
  c.model.num_classes = num_classes
  c.train.eval_batch_size = 32
  return c


def small_model():
  """(config, state, graphdef, mesh) of a random cifar-stem ResNet-18 (width 4) whose running
  statistics are not the init's 0/1, so a reset would show."""
  c = config()
  mesh = parallel.make_mesh()
  tx, _ = optim.make_optimizer(c.optim, total_steps=1, steps_per_epoch=1)
  state, graphdef = state_lib.init_state(c, tx, mesh)
  rng = np.random.default_rng(0)
  stats = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 2.0, x.shape), x.dtype),
                       state.batch_stats)
  return c, state.replace(batch_stats=stats), graphdef, mesh


def images(seed, n, contrast=1.0):
  x = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3)).astype(np.float64)
  return np.clip(128 + (x - 128) * contrast, 0, 255).astype(np.uint8)
