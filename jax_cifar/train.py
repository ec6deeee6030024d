"""Entry point: python -m jax_cifar.train --config configs/NAME.py --workdir DIR [--config.KEY=VALUE]."""

import sys

from absl import flags
from ml_collections import config_flags

from jax_cifar import checkpoints, cli, config_validation, errors, parallel, tracking, trainer
from jax_cifar.data import cifar100

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for config.json, metrics.jsonl and checkpoints.')
flags.mark_flags_as_required(['config', 'workdir'])

# Bad input ends with one line naming the problem and a non-zero status, not a traceback.
EXPECTED_ERRORS = (errors.UserError, config_validation.ConfigError, cifar100.DataError, checkpoints.CheckpointError,
                   trainer.NonFiniteLossError, OSError, ValueError)


def main(argv):
  del argv
  cli.quiet_libraries()  # Library logs (orbax, jax) only with --verbosity=0.
  try:
    parallel.maybe_initialize_distributed()
    parallel.enable_compilation_cache()
    result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except trainer.Preempted:
    sys.exit(trainer.PREEMPTED_EXIT_CODE)
  except EXPECTED_ERRORS as e:
    cli.fail(str(e))
  best = result.get('best_val_accuracy')
  tracking.say(f'Done at step {result["step"]}: best val_accuracy '
               f'{"n/a" if best is None else f"{best:.4f}"}; checkpoints in '
               f'{FLAGS.workdir}/checkpoints, metrics in {FLAGS.workdir}/metrics.jsonl')


if __name__ == '__main__':
  cli.run(main)
