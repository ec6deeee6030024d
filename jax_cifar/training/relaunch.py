"""What a relaunch of a run may change: its previous launch's config against this one's.

`resume_rules` holds the rules (which keys are safe to change, which extend the schedule);
`start.resume_or_init` calls `check_config_change` once it has restored the step it resumes from
(before anything is written), `cannot_resume_with` to word the error of a resume whose allowed
changes altered what the train state holds, and `record_launch` once the launch is agreed on.
"""

import json
import math
import os
import pathlib

import jax
from absl import logging

from jax_cifar import checkpoints, code_digest, config_validation, optim, resume_rules, tracking
from jax_cifar import xla_options
from jax_cifar import workdir as workdir_lib


# Keys that decide how many images an epoch has: with one of them changed, the previous launch's
# steps per epoch is not known here.
_EPOCH_SIZE_KEYS = ('data.source', 'data.synthetic_size', 'data.train_limit', 'data.val_fraction')


def check_config_change(config, workdir: pathlib.Path, start_step: int, steps_per_epoch: int,
                        total_steps: int, has_best: bool = False, num_train: int = 0) -> dict:
  """The changes from the run's previous launch; trajectory-altering ones refused (see workdir).
  Also at step 0 when the previous launch left a `best` checkpoint (killed before its first
  `latest`): the new run would inherit that checkpoint and its accuracy as its own. `num_train`
  (the training images) gives the previous launch's steps per epoch when train.batch_size
  changed."""
  if not (start_step > 0 or has_best):
    return {}
  old = workdir_lib.previous_config(workdir)
  if old is None:  # Deleted: any change had resumed without a word (an audit).
    path = workdir / workdir_lib.CONFIG_FILE
    if not config.train.allow_config_change:
      raise workdir_lib.WorkdirError(
          f'{path} is missing: it records the config of the saved checkpoints, so this launch '
          f'cannot be checked against it. Put it back ({workdir_lib.LAUNCHES_FILE} holds each '
          'launch\'s config, the newest last), or pass --config.train.allow_config_change=true '
          'to go on with this launch\'s config (in Python: config.train.allow_config_change = '
          'True)')
    logging.warning('%s is missing: going on with this launch\'s config '
                    '(train.allow_config_change).', path)
    return {}
  new = json.loads(json.dumps(config.to_dict(), default=str))
  changes = resume_rules.config_changes(old, new)
  # Keys that do nothing under both configs (simple_cnn's model.width, ema.warmup_power without
  # an EMA) may come and go: a relaunch without such a flag is the same run.
  inert = (config_validation.inert_keys(workdir_lib.flatten(old))
           & config_validation.inert_keys(workdir_lib.flatten(new)))
  changes = {k: v for k, v in changes.items() if k not in inert}
  if start_step == 0:  # Nothing is resumed: every change that is not safe starts another run.
    other = [f'{k} {a!r} -> {b!r}' for k, (a, b) in changes.items()
             if not resume_rules.is_safe_change(k, a, b)]
    if other and not config.train.allow_config_change:
      raise workdir_lib.WorkdirError(
          f'{workdir} holds a best checkpoint of a launch with another config ({"; ".join(other)}) '
          'that stopped before its first latest checkpoint, so nothing can be resumed. Start in a '
          'fresh --workdir, or pass --config.train.allow_config_change=true to start over here '
          '(that checkpoint, config.json and metrics.jsonl are moved to a previous-* folder; in '
          'Python: config.train.allow_config_change = True)')
    return changes
  notable = resume_rules.check_resume(changes, allow=config.train.allow_config_change,
                                     epoch=start_step / steps_per_epoch, workdir=workdir,
                                     new=workdir_lib.flatten(new))
  if total_steps < start_step:  # Fewer steps per epoch (a larger batch, less data): a relaunch had
    # said "Done" at once, trained nothing and exited 0 (a longevity review).
    keys = [k for k in changes if k in ('train.batch_size', 'train.num_epochs', *_EPOCH_SIZE_KEYS)]
    # The fewest epochs (in hundredths) that train one more step: "more than 3.00" had named
    # values from 3.01 up that train none (steps are whole, rounded down: the diff review).
    least = math.ceil(100 * (start_step + 1) / steps_per_epoch) / 100
    while optim.epochs_to_steps(least, steps_per_epoch) <= start_step:
      least = round(least + 0.01, 2)
    raise resume_rules.EndsBeforeTheStep(
        f'with {", ".join(keys or changes)} changed the run ends at step {total_steps} '
        f'({config.train.num_epochs:g} epochs of {steps_per_epoch} steps), before step '
        f'{start_step}, where it resumes: set train.num_epochs to at least {least:g} to train on')
  for key in notable:
    logging.warning('Resuming at step %d with %s changed: %r -> %r.', start_step, key,
                    *changes[key])
  _say_other_code_or_devices(workdir, start_step)
  if 'model.scan_blocks' in changes:  # (Bitwise resumes held for every other safe key: a review.)
    logging.warning('Resuming with model.scan_blocks %r -> %r: the same parameters, but a scanned '
                    'step sums in another order than an unrolled one, so the run is not bit-exact '
                    'with one that kept it.', *changes['model.scan_blocks'])
  if 'checkpoint.best_weights' in changes:  # Safe to change, but the kept best is not re-ranked.
    logging.warning("Resuming with checkpoint.best_weights %r -> %r: the kept 'best' checkpoint "
                    'was chosen by the %s weights\' val_accuracy, and a later step replaces it '
                    'only if its %s weights score higher than that.',
                    *changes['checkpoint.best_weights'], changes['checkpoint.best_weights'][0],
                    changes['checkpoint.best_weights'][1])
  if not {'train.num_epochs', 'train.batch_size'} & set(notable):
    return changes
  old_steps_per_epoch = _previous_steps_per_epoch(changes, steps_per_epoch, num_train)
  if 'train.batch_size' in changes:  # Steps count on; their epochs are the new batch size's.
    was = (f' (it was epoch {start_step / old_steps_per_epoch:.2f})' if old_steps_per_epoch
           else '')
    logging.warning('train.batch_size %r -> %r: step %d counts as epoch %.2f from here%s; the '
                    'schedule and the data order follow the new batch size.',
                    *changes['train.batch_size'], start_step, start_step / steps_per_epoch, was)
  _, new_schedule = optim.make_optimizer(config.optim, total_steps, steps_per_epoch)
  rate = float(new_schedule(start_step))
  if not old_steps_per_epoch:  # (The old training set's size is not known here.)
    logging.warning('The schedule now ends at step %d: the learning rate at step %d is %.3g.',
                    total_steps, start_step, rate)
    return changes
  old_optim = config.optim.copy_and_resolve_references()
  for key, (before, _) in ((k, v) for k, v in changes.items() if k.startswith('optim.')):
    old_optim[key.split('.', 1)[1]] = before
  old_epochs = changes.get('train.num_epochs', (config.train.num_epochs,))[0]
  old_total = optim.epochs_to_steps(old_epochs, old_steps_per_epoch)
  _, old_schedule = optim.make_optimizer(old_optim, old_total, old_steps_per_epoch)
  logging.warning('The schedule now ends at step %d (was %d): the learning rate at step %d is '
                  '%.3g (was %.3g).', total_steps, old_total, start_step, rate,
                  float(old_schedule(start_step)))
  return changes


def _previous_launch(workdir: pathlib.Path, start_step: int) -> dict | None:
  """The launches.jsonl row of the launch that trained the steps resumed from: the last recorded
  launch that started before `start_step` (a later one that failed before its first save trained
  none of them; a review); None when there is no such readable row."""
  try:
    lines = (workdir / workdir_lib.LAUNCHES_FILE).read_text().splitlines()
  except (OSError, UnicodeDecodeError):
    return None
  for line in reversed(lines):
    try:
      row = json.loads(line)
    except (ValueError, RecursionError):  # A row torn by a full disk: the one before counts.
      continue
    if isinstance(row, dict) and isinstance(row.get('start_step'), int) and (
        row['start_step'] < start_step):
      return row
  return None


def _say_other_code_or_devices(workdir: pathlib.Path, start_step: int) -> None:
  """Warns when the launch that trained the steps resumed from ran other jax-cifar code (an
  upgrade between launches is allowed, but its changes apply from this step: an upgrade audit),
  or on other devices or processes (the same data and draws, but each step's sums across devices
  in another order: float rounding that Adam's updates amplify, 22-24 % of the weights' movement
  after 30 smoke steps, 2 or 4 devices against 1; an elastic-resume review). Neither had been said."""
  row = _previous_launch(workdir, start_step)
  if row is None:
    return
  before, now = row.get('jax_cifar', ''), code_digest.code_version()
  before = before if isinstance(before, str) else ''
  if before != now:
    logging.warning('Resuming at step %d with other jax-cifar code than the launch before (%s -> '
                    '%s): the run goes on, but is not bit-exact with one that ran on either code '
                    '(%s records each launch\'s).', start_step,
                    before or 'a version that recorded none', now, workdir_lib.LAUNCHES_FILE)
  before = [row.get(k) for k in ('devices', 'processes')]
  now = [jax.device_count(), jax.process_count()]
  if all(isinstance(v, int) and not isinstance(v, bool) for v in before) and before != now:
    logging.warning('Resuming at step %d on %d devices in %d process(es); the launch before ran '
                    'on %d in %d: the same data and random draws, but the sums across devices are '
                    'made in another order, so the run is not bit-exact with one that stayed as it '
                    'was (%s records each launch\'s devices and processes).', start_step, *now,
                    *before, workdir_lib.LAUNCHES_FILE)
  now_cpu = {k: v for k, v in launch_shape().items() if k in _CPU_SHAPE}
  differ = [f'{_CPU_SHAPE[k]} {row[k]!r} -> {v!r}' for k, v in now_cpu.items()
            if type(row.get(k)) is type(v) and row[k] != v]  # (Older rows have none.)
  if differ:
    logging.warning('Resuming at step %d with %s than the launch before: XLA:CPU splits its work '
                    'and orders its sums by these, so the run is not bit-exact with one that '
                    'stayed as it was (%s records each launch\'s).', start_step, ', '.join(differ),
                    workdir_lib.LAUNCHES_FILE)


# What else changes the numbers of a step on CPU devices (a determinism review: one core against
# two differed from the 5th step's gradient norm, and neither change had been said).
_CPU_SHAPE = {'cpu_threads': 'CPU threads', 'xla_defaults': 'JAX_CIFAR_XLA_DEFAULTS'}


def launch_shape() -> dict:
  """What launches.jsonl records of where a launch runs: its devices and processes, and on CPU
  devices the CPUs XLA may use (its thread pool follows the process's affinity: taskset, a
  cgroup's cpuset, Slurm's --cpus-per-task) and whether XLA's own CPU options were asked for."""
  shape = {'devices': jax.device_count(), 'processes': jax.process_count()}
  if jax.default_backend() == 'cpu':
    shape.update(cpu_threads=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                 else os.cpu_count(), xla_defaults=xla_options.xla_defaults())
  return shape


def _previous_steps_per_epoch(changes: dict, steps_per_epoch: int, num_train: int) -> int:
  """The previous launch's steps per epoch; 0 where this launch's data cannot tell it."""
  if any(k in changes and not resume_rules.is_safe_change(k, *changes[k])  # (local <-> tfds: same)
         for k in _EPOCH_SIZE_KEYS):
    return 0
  if 'train.batch_size' not in changes:
    return steps_per_epoch
  before = changes['train.batch_size'][0]
  if not num_train or not isinstance(before, int) or before <= 0:
    return 0
  return num_train // before  # (pipeline.steps_per_epoch; 0 if the old batch was larger.)


def cannot_resume_with(changes: dict, workdir: pathlib.Path,
                      e: checkpoints.StructureMismatch) -> checkpoints.CheckpointError:
  """The error of a resume whose allowed config changes altered what the train state holds."""
  changed = '; '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in changes.items()
                      if not resume_rules.is_safe_change(k, a, b) and k not in resume_rules.EXTENDABLE)
  if not changed:  # Only changes that leave the train state as it was: not the cause.
    return e
  keys = [k for k, (a, b) in changes.items() if not resume_rules.is_safe_change(k, a, b)]
  return checkpoints.CheckpointError(  # (orbax's own words had ended it: its advice does not fit.)
      f'checkpoint {e.step_dir} does not match this launch\'s train state: its changes ({changed}) '
      'alter what the run\'s checkpoints hold (the parameters, the optimizer\'s state or the EMA), '
      f'which train.allow_config_change cannot carry over. Undo them, or '
      f'{resume_rules.way_on(keys, workdir)}')


def record_launch(config, workdir: pathlib.Path, start_step: int, changes: dict, old_best: bool,
                  launch: dict) -> None:
  """Process 0: sets aside the files of a start over, and records the launch (launches.jsonl and
  config.json); `launch` gets what a failed start needs to give config.json back.

  A resumed launch's config becomes config.json only at its first committed checkpoint
  (`launch['deferred_config']`, for the trainer): until then the saved steps are of the config
  it resumed. A resumed launch with an allowed change that was killed before saving (out of
  memory) had left its own, and the next relaunch was compared with it (a kill review)."""
  as_json = json.loads(json.dumps(config.to_dict(), default=str))
  if start_step == 0 and (previous := workdir_lib.set_aside_previous(workdir, as_json,
                                                                     best=old_best)):
    tracking.say(f'{workdir} held {", ".join(sorted(p.name for p in previous.iterdir()))} but '
                 f'no latest checkpoint to resume: starting at step 0, they are kept in {previous}')
  launch.update(saved_before=workdir_lib.saved_steps(workdir),
                previous=workdir_lib.record_launch(
                    workdir, as_json, start_step, changes, write_config=start_step == 0,
                    shape=launch_shape()))
  if start_step:
    launch['deferred_config'] = as_json


def config_at_first_commit(ckpts: checkpoints.Checkpoints, workdir: pathlib.Path, config: dict,
                           start_step: int, step: int) -> None:
  """`ckpts.after_commit` of a resumed launch (process 0): its config becomes config.json once a
  step it trained is committed. A failed write is a warning: raised on process 0 alone, it would
  leave the others in orbax's barriers."""
  if step > start_step:  # (Not the restored step saved again at the start.)
    ckpts.after_commit = None
    try:
      workdir_lib.write_run_config(workdir, config)
    except OSError as e:
      logging.warning('Could not make this launch\'s config %s/%s (%s): it still holds the config '
                      'of the steps this launch resumed.', workdir, workdir_lib.CONFIG_FILE, e)
