"""Entry point: evaluate a trained run on the clean test split, the OOD submission set and CIFAR-100-C.

python -m jax_cifar.evaluate --workdir DIR [--config configs/NAME.py] [--checkpoint best|latest|N|PATH]
    [--weights raw|ema|auto] [--tta none|flip|shifts [--tta_average probs|log_probs]]
    [--bn_adapt] [--tent [--tent_lr LR --tent_epochs E --tent_batch_size B]]
    [--ood_dir D [--submission FILE.csv]] [--cifar100c_dir D]
Writes WORKDIR/eval_<tag>.json (every number, per class and per superclass included) and
confusion_<tag>.png, where <tag> is best, latest, step<N> (a step number or folder) or
path, then _ema / _auto with --weights ema / auto, then _tta-flip / _tta-shifts with --tta
(--tta_flip is an alias of --tta flip; -logp after it with --tta_average log_probs), _bn-adapt with --bn_adapt (or --tent), then _tent (with any
non-default Tent settings) with --tent; with --cifar100c_dir also
cifar100c_<tag>.png, and with an --ood_dir that holds labels.npy ood_<tag>.png (none of them
into a WORKDIR that takes no files: said first). The last
line printed (by process 0 alone, in a multi-process run) is one JSON object with the scalar results, at least
`test_accuracy` (a fraction); the line before it, on stderr, names the files written. Without --config, the run's own WORKDIR/config.json is used, and
--config.KEY=VALUE overrides change it (e.g. --config.data.eval_limit=0); a --config (or an
override) whose model keys differ from it is refused (its numbers would not be the run's), as is
one that changes augment.crop_mode or the validation split, or swaps synthetic data for real.

--tta: see jax_cifar/evaluation/tta.py (the softmax averaged over mirrored/translated views; or,
with --tta_average log_probs, their log-softmax).
--bn_adapt (never the default): USES THE UNLABELLED TEST IMAGES. Before each homogeneous chunk is
predicted (one distortion x severity block, one CIFAR-100-C corruption x severity, a whole clean
split), the BatchNorm statistics are re-estimated on that chunk's images, and restored afterwards;
see jax_cifar/evaluation/bn_adapt.py. Numbers obtained with it are test-time adaptation results.
They depend a little on the batch of its train-mode pass (train.eval_batch_size, recorded as
bn_adapt_batch in the results; a smaller chunk is one batch of its own).
--tent (never the default; implies --bn_adapt): USES THE UNLABELLED TEST IMAGES. Before each chunk
is predicted, the BatchNorm scales and biases minimise the entropy of the predictions on it (Adam
steps, one pass by default), then its statistics are re-estimated; restored for the next chunk.
See jax_cifar/evaluation/tent.py.
SIGTERM/SIGINT stop the run with one line and status 128 + signal; a stopped or killed run never
leaves a partial CSV (see jax_cifar/interrupt.py and jax_cifar/evaluation/submission.py). The
distortion (and CIFAR-100-C) files it had finished are kept in WORKDIR/partial_<tag>/ until the
evaluation ends: the
same command resumes after them (jax_cifar/evaluation/kept_predictions.py).
"""

from __future__ import annotations

from jax_cifar import starting

if __name__ == '__main__':  # A signal while the libraries load: one line, no traceback.
  starting.install()

# pylint: disable=wrong-import-position
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from jax_cifar import checkpoints, cli, config_validation, console_logs, errors, interrupt
from jax_cifar import parallel, step_folders, tracking, xla_options
from jax_cifar import workdir as workdir_lib
from jax_cifar.data import ood
from jax_cifar.evaluation import clean_splits, eval_json, inference, kept_predictions, ood_sets
from jax_cifar.evaluation import output_files, submission, tta
from jax_cifar.evaluation import tent as tent_lib
from jax_cifar.evaluation.output_files import output_tag

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, registered when the module runs as `python -m jax_cifar.evaluate`:
  importing it as a library (evaluate(), with jax_cifar.train, whose --config and --workdir are its
  own) registers none."""
  config_flags.DEFINE_config_file('config', None, 'A configuration file, or a packaged one as '
                                  'jax_cifar:NAME (default: the run\'s own WORKDIR/config.json, '
                                  'which --config.KEY=VALUE overrides change); its model keys '
                                  'must match the run\'s.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'The training run\'s directory.')
  cli.require_nonempty('workdir', "the training run's folder")
  flags.DEFINE_string('checkpoint', 'best',
                      "'best', 'latest', a step number the run kept, or a path to a checkpoint "
                      'step folder.')
  flags.DEFINE_enum('tta', 'none', tta.MODES, 'Test-time augmentation: none; flip (image and its '
                    'mirror); shifts (mirror x translations by {-2,0,2}^2 px, 18 views). The '
                    'softmax is averaged over the views (--tta_average).')
  flags.DEFINE_bool('tta_flip', False, 'Alias of --tta flip.')
  flags.DEFINE_enum('tta_average', 'probs', tta.AVERAGES, 'What --tta flip/shifts averages over '
                    'the views: probs (their softmax) or log_probs (their log-softmax, '
                    'renormalised: the geometric mean).')
  flags.DEFINE_enum('weights', 'raw', checkpoints.READ_WEIGHTS, "The checkpoint's raw weights, "
                    'their EMA (runs trained with ema.decay > 0), or auto: the one with the higher '
                    "validation accuracy at the checkpoint's step (metrics.jsonl).")
  flags.DEFINE_bool('bn_adapt', False, 'Test-time BatchNorm adaptation, never the default: USES '
                    'THE UNLABELLED TEST IMAGES. Re-estimates the BatchNorm statistics on each '
                    'chunk (distortion x severity, CIFAR-100-C corruption x severity, whole clean '
                    'split) before predicting it; restored for the next chunk.')
  flags.DEFINE_bool('tent', False, 'Test-time entropy minimisation (Tent), never the default; '
                    'implies --bn_adapt and USES THE UNLABELLED TEST IMAGES: each chunk\'s '
                    'BatchNorm scales and biases take Adam steps that lower the entropy of its '
                    'predictions.')
  flags.DEFINE_float('tent_lr', tent_lib.TentOptions.lr, '--tent: Adam learning rate.')
  flags.DEFINE_integer('tent_epochs', tent_lib.TentOptions.epochs,
                       '--tent: passes over each chunk.')
  flags.DEFINE_integer('tent_batch_size', tent_lib.TentOptions.batch_size,
                       '--tent: images per Adam step (global, divisible by the device count; one '
                       'larger than a chunk is the whole chunk; the tag keeps the value given).')
  flags.DEFINE_string('ood_dir', None, 'Folder of distortion00.npy .. distortion18.npy to predict.')
  flags.DEFINE_string('submission', None, 'Submission CSV to write for --ood_dir '
                      '(default WORKDIR/submission_<tag>.csv).')
  flags.DEFINE_string('cifar100c_dir', None, 'CIFAR-100-C folder: <corruption>.npy and labels.npy.')
  for flag, what in (('checkpoint', "'best', 'latest', a step number or a step folder"),
                     ('ood_dir', 'the folder of distortion00.npy .. distortion18.npy'),
                     ('submission', 'the CSV to write, or leave the flag out'),
                     ('cifar100c_dir', 'the CIFAR-100-C folder')):
    cli.require_nonempty(flag, what)  # An unset shell variable ("$OOD") had been ignored.
  flags.mark_flags_as_required(['workdir'])


# ---------------------------------------------------------------------------------------------
# Clean splits, the OOD submission, CIFAR-100-C
# ---------------------------------------------------------------------------------------------
def evaluate(config, workdir: str, which: str = 'best', *, tta_flip: bool = False,
             tta_mode: str = 'none', adapt_bn: bool = False, ood_dir: str | None = None,
             submission_csv: str | None = None, cifar100c_dir: str | None = None,
             weights: str = 'raw', tent: tent_lib.TentOptions | bool | None = None,
             tta_average: str = 'probs') -> dict:
  """Evaluates a checkpoint ('raw' weights, their 'ema', or 'auto': the better on validation at
  that step), optionally with test-time adaptation (`adapt_bn`, `tent`, which implies it); writes
  eval_<tag>.json and figures into `workdir`; returns the numbers. `tent`: True, False or the
  options (tent.TentOptions); `tta_average`: what `tta_mode`'s views average (tta.AVERAGES)."""
  tent = tent_lib.resolve(tent)
  # '~/runs/a' as load_model reads it (the shell leaves the ~ of --workdir=~/runs/a).
  workdir, which, ood_dir, cifar100c_dir, submission_csv = map(
      workdir_lib.expanded, (workdir, which, ood_dir, cifar100c_dir, submission_csv))
  config_validation.validate(config, launch=False)  # Evaluating trains nothing.
  xla_options.check_xla_defaults()
  parallel.same_settings_everywhere({  # Flags given to one process only had hung (a walkthrough).
      **workdir_lib.flatten(config.to_dict()), '--checkpoint': str(which), '--tta': tta_mode,
      '--tta_flip': tta_flip, '--tta_average': tta_average, '--bn_adapt': adapt_bn,
      '--weights': weights,
      '--tent': dataclasses.asdict(tent) if tent else None, '--ood_dir given': bool(ood_dir),
      '--cifar100c_dir given': bool(cifar100c_dir), '--submission given': bool(submission_csv)},
      'configs or flags')
  inference.check_matches_run(config, workdir)
  inference.check_step_folder_of_another_run(config, workdir, str(which))
  tta_mode = inference.resolve_tta(tta_mode, tta_flip)
  inference.check_tta_average(tta_average, tta_mode)
  # Check every OOD input before anything compiles: bad files fail in a second, naming the file.
  ood_files = ood.check_distortion_dir(ood_dir) if ood_dir else None
  c_files = ood.check_cifar100c_dir(cifar100c_dir) if cifar100c_dir else None
  # Their labels too: found bad only after the 950,000 predictions, the run's numbers were lost.
  if ood_files and (pathlib.Path(ood_dir) / ood.LABELS_FILE).exists():
    ood.load_labels(pathlib.Path(ood_dir) / ood.LABELS_FILE, ood_files[0].num_images)
  if c_files:
    ood.load_labels(pathlib.Path(cifar100c_dir) / ood.LABELS_FILE,
                    next(iter(c_files.values())).num_images)
  if submission_csv and not ood_dir:
    raise errors.ConfigError('--submission needs --ood_dir (the folder of distortion00..18.npy)')
  if ood_files and config.model.num_classes > submission.NUM_CLASSES:  # (Found after inference.)
    raise errors.ConfigError(
        f'--ood_dir: this model predicts model.num_classes={config.model.num_classes} classes, '
        f'and a submission\'s labels are CIFAR-100\'s 0..{submission.NUM_CLASSES - 1}')
  if which == 'best' and weights == 'raw' and config.checkpoint.best_weights == 'ema':
    logging.warning("%s's 'best' step was chosen by its EMA weights' accuracy "  # As load_model.
                    "(checkpoint.best_weights='ema'); these are its raw weights: --weights ema or "
                    'auto evaluates the ones that were ranked', workdir)
  workdir_path = pathlib.Path(workdir)
  adapt_bn = adapt_bn or tent is not None
  which = step_folders.kept_step_folder(workdir, which) or which  # A step number, as load_model.
  tag = output_tag(which, tta_mode, adapt_bn, weights, tent, tta_average)  # (By the name given.)
  if which not in ('best', 'latest'):  # A step folder, as its number is: without its default/.
    # Recorded by its real path: another spelling (a link: macOS's /tmp is /private/tmp) had been
    # "another checkpoint", its numbers set aside and its kept predictions started over (a
    # portability review). Its tag comes from the name given: a step folder that is itself a link
    # (to another disk) had been tagged `path`, not step<N> (the diff review).
    folder = pathlib.Path(which).absolute()
    which = os.path.realpath(folder.parent if folder.name == 'default' else folder)
  csv_path = pathlib.Path(submission_csv or workdir_path / f'submission_{tag}.csv')
  if ood_files:
    output_files.check_submission_path(submission_csv or csv_path, default=not submission_csv)
    per = ood_files[0].num_images // ood.SEVERITIES
    if per != submission.KAGGLE_IMAGES:  # Said before the work, not found out on upload.
      tracking.say(f'{ood_dir}: {per} images per severity, so {csv_path.name} will have '
                   f'{len(ood_files) * ood_files[0].num_images:,} rows; the course\'s Kaggle set '
                   f'has {submission.KAGGLE_IMAGES:,} per severity ({19 * 5 * submission.KAGGLE_IMAGES:,} rows)')
  # A run read from a read-only place (a colleague's, a mounted archive) is still evaluated: its
  # numbers are printed, and its own files are not written (found at the end, they had been lost).
  keeps = jax.process_index() != 0 or output_files.takes_files(
      workdir_path, tag, resumable=bool(ood_files or c_files))
  before = output_files.stamps(workdir_path, tag)  # (What it wrote, for its closing line.)
  predictor, step = inference.load_predictor(config, workdir, which, tta_mode=tta_mode,
                                             adapt_bn=adapt_bn, weights=weights, tent=tent,
                                             tta_average=tta_average)
  starting.collect_as_usual()  # Model traced and restored: collect as usual now (starting.py).
  result = {'checkpoint': which, 'weights': predictor.weights, 'step': step, 'tta': tta_mode,
            **({'tta_average': tta_average} if tta_mode != 'none' else {}),
            'bn_adapt': adapt_bn, 'tent': dataclasses.asdict(tent) if tent else None}
  if predictor.adapter is not None:  # Its statistics pass's batch: the numbers depend a little on it.
    result['bn_adapt_batch'] = predictor.batch_size
  # The distortion files' predictions are kept as each finishes, so that a stopped, killed or
  # failed run resumes after them (hours of --tta shifts on a small GPU had started over).
  step_dir = (workdir_path / 'checkpoints' / which / str(step) if which in ('best', 'latest')
              else pathlib.Path(which))
  step_dir = step_dir.parent if step_dir.name == 'default' else step_dir
  kept = (kept_predictions.KeptPredictions(
      workdir_path / f'partial_{tag}' if keeps else None, kept_predictions.settings(
          result, config, step_dir, [*(ood_files or ()), *(c_files or {}).values()]))
          if ood_files or c_files else None)
  # The confusion figure is drawn with the JSON, once everything is predicted: a run stopped
  # during the OOD files had left a figure of an evaluation that never finished (an audit).
  draw_later = []
  # (resolved: `--workdir .` had named none; the step, as `best` moves on: a figure review)
  run_name = f'{workdir_path.resolve().name} ({tag}' + (
      f', step {step})' if tag.split('_')[0] != f'step{step}' else ')')
  try:
    result.update(clean_splits.evaluate_clean(predictor, config,
                                  workdir_path / f'confusion_{tag}.png' if keeps else None,
                                  draw_later, run_name))
    if c_files:
      result.update(ood_sets.evaluate_cifar100c(
          predictor, cifar100c_dir, c_files,
          workdir_path / f'cifar100c_{tag}.png' if keeps else None,
          run_name=run_name, draw_later=draw_later, kept=kept))
    if ood_files:  # Last: a stop or a failure before it keeps an existing CSV, as main() says.
      result.update(ood_sets.predict_submission(
          predictor, ood_dir, csv_path, ood_files,
          workdir_path / f'ood_{tag}.png' if keeps else None,
          run_name=run_name, draw_later=draw_later, kept=kept))
    if keeps and jax.process_index() == 0:
      with _result_kept_on_failure(result):  # (The figures under the JSON's lock.)
        eval_json.write(workdir_path / f'eval_{tag}.json', result, step_dir,
                        then=lambda: [draw() for draw in draw_later])
      stale = workdir_path / f'ood_{tag}.png'
      if ood_files and 'ood_accuracy' not in result and stale.is_file():  # A set without labels
        stale.unlink()  # replaced a labelled one's numbers: its figure goes too, and is named.
        tracking.say(f'note: removed {stale.name}, the figure of an earlier, labelled OOD set '
                     "whose numbers this set's replace")
  except BaseException as e:
    if kept:  # Its folder stays for the next run, and the lock goes (as at the process's exit).
      if isinstance(e, interrupt.Interrupted):
        e.kept_note = kept.stop_note()  # main()'s stop line says where the finished files wait.
      elif kept.stop_note():  # A failure (a full disk) had said nothing of them (a review).
        tracking.say(f'note: {kept.stop_note()[2:]}')
      kept.close()
    raise
  if kept:
    kept.clear()
  if jax.process_index() == 0:
    output_files.say_written(workdir_path, tag, before, csv_path if ood_files else None)
  return result


@contextlib.contextmanager
def _result_kept_on_failure(result: dict):
  """An OSError while writing the results (a full disk) carries them, and main() prints them
  before its error line: they had been lost, to be computed again (a resource review)."""
  try:
    yield
  except OSError as e:
    e.unwritten_result = result
    raise


def _scalars(result: dict) -> dict:
  """The result line's numbers: the scalars, and --tent's settings flat (a --tent line had read
  as a plain --bn_adapt one)."""
  scalars = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
  if result.get('tent'):
    scalars.update({f'tent_{k}': v for k, v in result['tent'].items()})
  return scalars


def _tent_options() -> tent_lib.TentOptions | None:
  """--tent and its settings (which are refused without it, rather than silently ignored)."""
  given = [f'--{k}' for k in ('tent_lr', 'tent_epochs', 'tent_batch_size') if FLAGS[k].present]
  if given and not FLAGS.tent:
    raise errors.ConfigError(f'{", ".join(given)}: used only with --tent, which is not given')
  if not FLAGS.tent:
    return None
  return tent_lib.TentOptions(FLAGS.tent_lr, FLAGS.tent_epochs, FLAGS.tent_batch_size)


def main(argv):
  del argv
  console_logs.quiet_libraries()  # Library logs (orbax, jax) only with --verbosity=0.
  try:
    parallel.maybe_initialize_distributed()
    # After it: JAX's distributed runtime installs its own SIGTERM handler (its preemption
    # notifier), which had replaced this one, so SIGTERM did not stop a multi-process evaluation
    # and its exit then waited minutes in a preemption barrier.
    interrupt.FLAG.install()
    xla_options.enable_compilation_cache()
    workdir = workdir_lib.expanded(FLAGS.workdir)  # (--workdir=~/runs/a: the shell leaves that ~.)
    inference.check_tta_average(FLAGS.tta_average, inference.resolve_tta(FLAGS.tta, FLAGS.tta_flip),
                                given=FLAGS['tta_average'].present)
    config = FLAGS.config or workdir_lib.run_config(workdir)
    if FLAGS.config and cli.config_is_the_runs():
      inference.check_matches_run(config, workdir, given='the overridden config',
                                  advice='Override only keys that keep the model as it was '
                                  'trained (data.dir, data.eval_limit, train.eval_batch_size...)')
    result = evaluate(config, workdir, FLAGS.checkpoint, tta_flip=FLAGS.tta_flip,
                      tta_mode=FLAGS.tta, adapt_bn=FLAGS.bn_adapt, ood_dir=FLAGS.ood_dir,
                      submission_csv=FLAGS.submission, cifar100c_dir=FLAGS.cifar100c_dir,
                      weights=FLAGS.weights, tent=_tent_options(), tta_average=FLAGS.tta_average)
  except interrupt.Interrupted as e:
    csv = ' (an existing CSV is kept)' if FLAGS.ood_dir else ''
    files = getattr(e, 'kept_note', '')
    line = (f'stopped by {e.name}' if jax.process_index() != 0 else  # (Process 0 says the rest.)
            f'stopped by {e.name}; no results were written{csv}{files}' if files else
            f'stopped by {e.name}; nothing partial was written{csv}')
    print(f'error: {line}', file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:  # SIGINT outside our handler's reach (e.g. a library replaced it).
    print('error: stopped by SIGINT', file=sys.stderr, flush=True)
    sys.exit(128 + signal.SIGINT)
  except Exception as e:  # pylint: disable=broad-except
    if (unwritten := getattr(e, 'unwritten_result', None)) is not None:
      print(json.dumps(_scalars(unwritten)), flush=True)
      print('note: the numbers were computed (the line above) but could not all be written:',
            file=sys.stderr, flush=True)
    cli.fail_or_raise(e)  # Bad input: one `error:` line, in one write; a bug keeps its traceback.
  if jax.process_index() == 0:  # One result line per run, not one per process (a walkthrough).
    print(json.dumps(_scalars(result)), flush=True)


if __name__ == '__main__':
  # Flag and config mistakes are one error: line; --config jax_cifar:NAME works; overrides without
  # --config change the run's own config.
  cli.run(main, define_flags=define_flags, run_config=workdir_lib.run_config)
