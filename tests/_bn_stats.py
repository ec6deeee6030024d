"""Writes --bn_adapt statistics of a fixed random model and 50 fixed images to an .npz (argv[1]).

Run by tests/test_bn_adapt.py under different device counts: the numbers must not depend on them.
"""

import sys

import jax
import numpy as np

from jax_cifar.configs import default
from jax_cifar import optim, parallel
from jax_cifar.evaluation import bn_adapt
from jax_cifar import state as state_lib


def main(out: str) -> None:
  config = default.get_config()
  config.model.name, config.model.stem, config.model.width = 'resnet18', 'cifar', 4
  mesh = parallel.make_mesh()
  tx, _ = optim.make_optimizer(config.optim, total_steps=1, steps_per_epoch=1)
  state, graphdef = state_lib.init_state(config, tx, mesh)
  images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), np.uint8)
  adapter = bn_adapt.BNAdapter(config, graphdef, mesh, 32, state.params, state.batch_stats)
  acc = jax.device_get(adapter.statistics(state.params, state.batch_stats, images))
  np.savez(out, count=acc['count'], devices=jax.device_count(),
           **{f'mean{i}': m for i, m in enumerate(acc['mean'])},
           **{f'var{i}': v for i, v in enumerate(acc['var'])})


if __name__ == '__main__':
  main(sys.argv[1])
