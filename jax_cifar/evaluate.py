"""Entry point: evaluate a trained run on the clean test split.

python -m jax_cifar.evaluate --config configs/NAME.py --workdir DIR [--checkpoint best|latest|PATH]
The last line printed is one JSON object with at least `test_accuracy`.
"""

import json
import pathlib
import sys

import jax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from jax_cifar import checkpoints, config_validation, optim, parallel, trainer
from jax_cifar.data import cifar100

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The run\'s configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'The training run\'s directory.')
flags.DEFINE_string('checkpoint', 'best', "'best', 'latest', or a path to a checkpoint step folder.")
flags.mark_flags_as_required(['config', 'workdir'])


def restore_state(config, workdir: str, which: str, mesh):
  """(state, graphdef, step) from the run's 'best'/'latest' checkpoint or a step folder path."""
  tx, _ = optim.make_optimizer(config.optim, total_steps=1, steps_per_epoch=1)  # Structure only.
  target, graphdef = trainer.init_state(config, tx, mesh)
  if which in ('best', 'latest'):
    ckpts = checkpoints.Checkpoints(workdir, create=False)
    restored = ckpts.restore(which, target)
    if restored is None:
      raise checkpoints.CheckpointError(f'no {which!r} checkpoint in {workdir}/checkpoints')
    return restored[0], graphdef, restored[1]
  path = pathlib.Path(which).absolute()
  item = path / 'default' if (path / 'default').exists() else path
  if not item.exists():
    raise checkpoints.CheckpointError(f'checkpoint path {path} does not exist')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  state = ocp.StandardCheckpointer().restore(item, abstract)
  return state, graphdef, int(state.step)


def evaluate(config, workdir: str, which: str = 'best') -> dict:
  config_validation.validate(config)
  mesh = parallel.make_mesh()
  state, graphdef, step = restore_state(config, workdir, which, mesh)
  _, p_eval = trainer.compile_steps(config, graphdef, None, None, mesh)
  splits = cifar100.get_splits(config.data)
  result = {'checkpoint': which, 'step': step}
  for name in ('val', 'test'):
    if splits[name] is not None:
      metrics = trainer.evaluate_split(p_eval, state.params, state.batch_stats, splits[name],
                                       config.train.eval_batch_size, mesh)
      result.update({f'{name}_{k}': v for k, v in metrics.items()})
  if jax.process_index() == 0:
    (pathlib.Path(workdir) / f'eval_{which if which in ("best", "latest") else "path"}.json'
     ).write_text(json.dumps(result, indent=2) + '\n')
  return result


def main(argv):
  del argv
  parallel.maybe_initialize_distributed()
  parallel.enable_compilation_cache()
  try:
    result = evaluate(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint)
  except (config_validation.ConfigError, cifar100.DataError, checkpoints.CheckpointError,
          OSError, ValueError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
