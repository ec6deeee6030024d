"""Entry point: python -m jax_cifar.train --config configs/NAME.py --workdir DIR [--config.KEY=VALUE];
again with only --workdir DIR (and any overrides), it resumes that run with its own config."""

from jax_cifar import starting

if __name__ == '__main__':  # A signal while the libraries load: one line, no traceback.
  starting.install()

# pylint: disable=wrong-import-position
import os
import shlex
import signal
import sys

from absl import flags
from ml_collections import config_flags

from jax_cifar import cli, console_logs, errors

if __name__ == '__main__' and any(a.startswith(('--grain', '--array_record', '--helpfull'))
                                  for a in sys.argv[1:]):
  import grain  # pylint: disable=unused-import  (defines the --grain_* flags parsed with ours)

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, registered when the module runs as `python -m jax_cifar.train`:
  importing it (with jax_cifar.evaluate, whose --config and --workdir are its own) registers
  none."""
  config_flags.DEFINE_config_file('config', None, 'Training configuration: a file '
                                  '(configs/NAME.py) or a packaged one, jax_cifar:NAME (e.g. '
                                  'jax_cifar:smoke, resnet152, ood_best; their keys: '
                                  'jax_cifar/configs/default.py); override keys with '
                                  '--config.KEY=VALUE. Omitted, the run in --workdir resumes with '
                                  'its own config (WORKDIR/config.json, and any overrides).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for config.json, metrics.jsonl and checkpoints.')
  # (--config is not: with --workdir alone, the run there resumes; absl had asked for both.)
  flags.mark_flags_as_required(['workdir'])
  cli.require_nonempty('workdir', "the run's folder")


def main(argv):
  del argv
  # JAX, flax, orbax and grain load once the flags are parsed: `--help`, a mistyped flag and a
  # config that does not load answer in a fraction of a second, not after two seconds of imports.
  from jax_cifar import parallel, tracking, xla_options  # pylint: disable=import-outside-toplevel
  from jax_cifar import resume_rules  # pylint: disable=import-outside-toplevel
  from jax_cifar.training import trainer  # pylint: disable=import-outside-toplevel
  console_logs.quiet_libraries()  # Library logs (orbax, jax) only with --verbosity=0.
  try:
    parallel.maybe_initialize_distributed()  # (It gives SIGTERM back to the start-up handler.)
    xla_options.enable_compilation_cache()
    result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except trainer.Preempted:
    # Saved and stopping: a further signal changes nothing. Python's handlers here had let one
    # during the interpreter's shutdown exit 130/143 (or print a KeyboardInterrupt from JAX's
    # atexit hook), which a scheduler that requeues on 75 reads as a failure (a kill review).
    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, signal.SIG_IGN)
    sys.exit(trainer.PREEMPTED_EXIT_CODE)
  except resume_rules.ChangedConfig as e:
    given = cli.config_file_given()
    overridden = config_flags.get_override_values(FLAGS['config'])  # {KEY: value} given.
    if given and set(e.keys) - set(overridden):  # Changes that came with the file (not an override:
      # the diff review): a shipped config updated since the run began had been refused as the
      # user's change, with no word of the run's own config.json (an upgrade review).
      e = resume_rules.ChangedConfig(
          f'{e}. (This launch\'s config is --config {given}, which may itself have changed since '
          f'the run began, as shipped configs do with jax-cifar: `--workdir '
          f'{shlex.quote(FLAGS.workdir)}` '
          'without --config resumes with the run\'s own config.json, overrides on top.)', e.keys)
    cli.fail_or_raise(e)
  except errors.ConfigError as e:
    # A value of the run's own config (one a newer jax-cifar refuses, e.g. data.prefetch 100) had
    # not said where it came from or how to change it. Not a launch setting (JAX_NUM_PROCESSES had
    # been blamed on config.json: a message review).
    if cli.config_file_given() is None and not isinstance(e, errors.LaunchSettingError):
      e = errors.ConfigError(
          f"{e} (this launch's config is the run's own, {FLAGS.workdir}/config.json, with any "
          '--config.KEY=VALUE given on top: a value it holds is changed so)')
    cli.fail_or_raise(e)
  except Exception as e:  # pylint: disable=broad-except
    cli.fail_or_raise(e)  # Bad input: one `error:` line; a bug keeps its traceback.
  starting.uninstall()  # train_and_evaluate gave back the start-up handler: no longer starting.
  best = result.get('best_val_accuracy')  # Of the weights that pick `best`: the EMA's, or the raw.
  step, total = result['step'], result['total_steps']
  short = (f' ({step} of {total} steps: train.max_steps; relaunch with a larger one to go on)'
           if step < total else '')  # (It had read as the end of the run: a walkthrough.)
  tracking.say(f'Done at step {step}: best {result["best_metric"]} '
               f'{"n/a" if best is None else f"{best:.4f}"}{short}; checkpoints in '
               f'{os.path.join(FLAGS.workdir, "checkpoints")}, metrics in '
               f'{os.path.join(FLAGS.workdir, "metrics.jsonl")} (their '
               f'curves: python -m jax_cifar.report {shlex.quote(FLAGS.workdir)} --out DIR)')


def _run_config(workdir: str):
  from jax_cifar import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  return workdir_lib.run_config(workdir)


if __name__ == '__main__':
  # A relaunch needs only --workdir: without --config the run resumes with its own config (but
  # train.resume and train.allow_config_change at their defaults). A signal's stop (SIGTERM,
  # SLURM's time limit) exits 75; the run's end and a train.max_steps stop exit 0.
  cli.run(main, define_flags=define_flags, run_config=_run_config, resume=True)
