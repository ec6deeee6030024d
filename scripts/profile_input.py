"""Does the input path keep up with the train step? Times one epoch three ways and prints the share
of time the step waits for data.

  python scripts/profile_input.py --config configs/smoke.py [--steps 0] [--config.KEY=VALUE ...]

  input only : grain pipeline -> host-to-device transfer (prefetch_to_device), no step
  step only  : the compiled train step on one batch already on the device (on-device augmentation
               included: it is part of the step)
  together   : the trainer's loop, pipeline feeding the step
  host ms    : the time one call of the step takes to return with the device idle (the host's
               share of a step, which async dispatch overlaps with the device's), for the
               trainer's step over the flat list of state arrays and for the one over TrainState
The waiting share is 1 - (step only / together): the extra time the real pipeline adds to the
pure compute. --steps 0 means one epoch of the config's training set. Prints one JSON line last.
"""

import json
import math
import os
import statistics
import time

import jax
from absl import flags
from ml_collections import config_flags

from jax_cifar import cli, optim, parallel, xla_options
from jax_cifar.training import trainer
from jax_cifar import state as state_lib
from jax_cifar.data import cifar100, pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Registered only when run as a script (importing it must not clash with another --config)."""
  config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
  flags.DEFINE_integer('steps', 0, 'Steps to time (0: one epoch).', lower_bound=0)
  flags.DEFINE_string('out', '', 'Also write the JSON line to this file (gpu_check.sh\'s summary).')
  flags.mark_flags_as_required(['config'])


def _batches(config, split, steps: int, mesh):
  stream = pipeline.train_batches(split, config.train.batch_size, config.seed,
                                  math.ceil(steps / pipeline.steps_per_epoch(
                                      len(split), config.train.batch_size)) + 1,
                                  0, config.data.worker_count)
  return parallel.prefetch_to_device(stream, parallel.batch_sharded(mesh), size=config.data.prefetch)


def _host_ms(step_fn, state, batch, calls: int = 10):
  """Median time for a call to return while nothing else runs; the state it ends with."""
  times = []
  for _ in range(calls):
    jax.block_until_ready(state)
    t = time.perf_counter()
    state, _ = step_fn(state, batch)
    times.append(time.perf_counter() - t)
  jax.block_until_ready(state)
  return 1e3 * statistics.median(times), state


def _said(what: str, value: float) -> None:
  """Each number as it is measured: a run cut short by its time limit keeps them (all had been
  printed only at the end: a review)."""
  print(f'  {what}: {value:.1f}', flush=True)


def profile(config, steps: int) -> dict:
  mesh = parallel.make_mesh()
  split = cifar100.get_splits(config.data)['train']
  steps = steps or pipeline.steps_per_epoch(len(split), config.train.batch_size)
  tx, schedule = optim.make_optimizer(config.optim, steps, steps)
  state, graphdef = state_lib.init_state(config, tx, mesh)
  treedef = jax.tree.structure(state)
  tree_step = trainer.compile_train_step(config, graphdef, tx, schedule, mesh)
  train_step_fn = trainer.compile_train_step(config, graphdef, tx, schedule, mesh, treedef)
  # Compile and warm up outside the timings.
  first = next(_batches(config, split, 1, mesh))
  state, metrics = tree_step(state, first)
  host_tree_ms, state = _host_ms(tree_step, state, first)
  _said('host ms per step call (TrainState)', host_tree_ms)
  state = jax.tree.leaves(state)  # From here on, the trainer's flat state.
  state, metrics = train_step_fn(state, first)
  jax.block_until_ready(metrics)
  host_flat_ms, state = _host_ms(train_step_fn, state, first)
  _said('host ms per step call (flat state)', host_flat_ms)

  batches = _batches(config, split, steps, mesh)
  t = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(next(batches))
  t_input = time.perf_counter() - t
  _said('input only img/s', steps * config.train.batch_size / t_input)

  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_step_fn(state, first)
  jax.block_until_ready((state, metrics))
  t_step = time.perf_counter() - t
  _said('step only img/s', steps * config.train.batch_size / t_step)

  batches, t_next = _batches(config, split, steps, mesh), 0.0
  t = time.perf_counter()  # Includes the pipeline's start-up, as a training run's first epoch does.
  for _ in range(steps):
    t0 = time.perf_counter()
    batch = next(batches)
    t_next += time.perf_counter() - t0
    state, metrics = train_step_fn(state, batch)
  jax.block_until_ready((state, metrics))
  t_both = time.perf_counter() - t

  images = steps * config.train.batch_size
  return {
      'steps': steps, 'batch_size': config.train.batch_size, 'devices': jax.device_count(),
      'backend': jax.default_backend(),
      'input_only_img_s': images / t_input, 'step_only_img_s': images / t_step,
      'together_img_s': images / t_both,
      'host_time_in_next_fraction': t_next / t_both,
      'host_ms_per_step_flat': host_flat_ms, 'host_ms_per_step_train_state': host_tree_ms,
      'wait_fraction': max(0.0, 1.0 - t_step / t_both),
  }


def main(argv):
  del argv
  xla_options.enable_compilation_cache()
  import hostinfo  # pylint: disable=g-import-not-at-top  (scripts/, beside this file)
  result = {**profile(FLAGS.config, FLAGS.steps), 'machine': hostinfo.machine()}
  print(f"machine: {hostinfo.describe(result['machine'])}\n{'path':<12}{'img/s':>10}\n"
        f"{'input only':<12}{result['input_only_img_s']:>10.0f}\n"
        f"{'step only':<12}{result['step_only_img_s']:>10.0f}\n"
        f"{'together':<12}{result['together_img_s']:>10.0f}\n"
        f"host ms per step call: {result['host_ms_per_step_flat']:.1f} (flat state, the "
        f"trainer's) against {result['host_ms_per_step_train_state']:.1f} (TrainState)\n"
        f"the step waits for data {100 * result['wait_fraction']:.1f}% of the time "
        f"({result['steps']} steps of {result['batch_size']}, {result['devices']} "
        f"{result['backend']} device(s))")
  print(json.dumps(result), flush=True)
  if FLAGS.out:
    write_result(FLAGS.out, result)


def write_result(path: str, result: dict) -> None:
  """`result` as JSON at `path`, whole or not at all (a device call cut short keeps the last)."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(result, f)
  os.replace(tmp, path)


if __name__ == '__main__':
  cli.run(main, define_flags=define_flags)  # (Help: status 0; a bad flag: one error line, 2.)
