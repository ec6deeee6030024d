"""Where a launch starts: the latest step saved when resuming, else a new state (with the
pretrained or init_from weights), after the relaunch's config checks and the launch's warnings."""

import contextlib
import logging as std_logging
import pathlib

import jax
from absl import logging

from jax_cifar import checkpoints, config_validation, convert, interrupt, optim, parallel
from jax_cifar import state as state_lib
from jax_cifar import resume_rules, step_folders, tracking
from jax_cifar.training import relaunch, stopping


def check_pretrained(config, workdir: pathlib.Path) -> None:
  """model.pretrained is a converted checkpoint of this arch, model.init_from a run of this model:
  checked before the workdir is made or any data read (a run that will resume never reads them,
  so then they are not checked)."""
  if not (config.model.pretrained or config.model.init_from):
    return
  latest = workdir / 'checkpoints' / 'latest'
  if config.train.resume and latest.is_dir() and any(
      step_folders.is_step_number(p.name) for p in latest.iterdir()):
    return
  if config.model.init_from:
    state_lib.init_from_source(config)
    return
  with convert.naming('model.pretrained'):
    convert.read_metadata(config.model.pretrained, config.model.name)


def random_backbone_note(config, resume_step: int) -> str | None:
  """The warning of a run that treats a randomly initialised backbone as a pretrained one (a
  transfer config launched without its weights trained it at a tenth of the rate, or frozen)."""
  o = config.optim
  if resume_step or config.model.pretrained or config.model.init_from or (
      not optim.splits_backbone(o)):
    return None
  how = ' and '.join(
      ([f'trains at optim.backbone_lr_mult={o.backbone_lr_mult:g} x the head\'s rate']
       if o.backbone_lr_mult != 1.0 else []) +
      ([f'stays frozen for the first {o.freeze_backbone_steps} steps']
       if o.freeze_backbone_steps else []))
  return (f'The backbone starts from random weights (no model.pretrained or model.init_from) yet '
          f'{how}, as if it were pretrained. To train from scratch, set '
          '--config.optim.backbone_lr_mult=1 --config.optim.freeze_backbone_steps=0; for transfer, '
          'give --config.model.pretrained.')


@contextlib.contextmanager
def _quiet():
  """absl's warnings off for the block (a first pass of checks whose notes come later)."""
  logger = std_logging.getLogger('absl')
  disabled, logger.disabled = logger.disabled, True
  try:
    yield
  finally:
    logger.disabled = disabled


def resume_or_init(config, workdir: pathlib.Path, ckpts: checkpoints.Checkpoints, tx, mesh,
                   num_train: int, steps_per_epoch: int, total_steps: int, launch: dict,
                   stop: dict):
  """(state, graphdef, its step) to train from: the latest step when resuming, else a new state;
  on the way the config change is checked, the notes said, an old best set aside and the launch
  recorded."""
  resume_step = parallel.same_on_every_process(
      (ckpts.latest.latest_step() or 0) if config.train.resume else 0, 'the latest step saved')
  # Resuming restores every weight: model.pretrained / model.init_from are read at step 0 only.
  state, graphdef = state_lib.init_state(config, tx, mesh, pretrained=not resume_step)
  has_best = ckpts.best.best_step() is not None
  # The restore comes first: a damaged newest step falls back to an older one, and the config's
  # checks and notes are of the step the run goes on from (they had described the newest one, a
  # review). Nothing is written before the checks; a refused change is the error that is raised,
  # also when the restore failed (another model's arrays do not fit this state).
  step, restore_error = resume_step, None
  if resume_step:
    # The refusals that do not depend on the step come before the restore, quietly (a refused
    # relaunch had first restored a whole step, GBs for ResNet-152: the diff review).
    with parallel.fail_together('checking the relaunch'), _quiet():
      try:
        relaunch.check_config_change(config, workdir, resume_step, steps_per_epoch, total_steps,
                                     has_best=has_best, num_train=num_train)
      except resume_rules.EndsBeforeTheStep:
        pass  # (An older intact step may be early enough: checked after the restore.)
    try:
      state, step = ckpts.restore('latest', state, fallback=True)
    except checkpoints.CheckpointError as e:
      restore_error = e
    step = parallel.same_on_every_process(step, 'the intact step to resume from')
  with parallel.fail_together('checking the relaunch'):  # (One process alone had raised.)
    changes = relaunch.check_config_change(config, workdir, step, steps_per_epoch, total_steps,
                                           has_best=has_best, num_train=num_train)
    if restore_error is not None:
      error = (relaunch.cannot_resume_with(changes, workdir, restore_error)
               if isinstance(restore_error, checkpoints.StructureMismatch) else restore_error)
      if error is restore_error:
        raise restore_error
      raise error from restore_error
  # At step 0 the run starts clean: an earlier launch's best checkpoint (of this config or, when
  # allowed, another) is set aside with that launch's metrics, whose rows it needs (kept, its
  # validation row had gone to previous-*/ without it). Agreed, as it decides a collective below.
  old_best = parallel.any_process(not resume_step and has_best)
  for note in optim.schedule_warnings(config.optim, total_steps, steps_per_epoch):
    logging.warning('%s.', note)  # After a refused change's error, which is the one that matters.
  if note := random_backbone_note(config, resume_step):
    logging.warning('%s', note)
  for note in config_validation.ignored_notes(config) + config_validation.input_notes(config):
    logging.warning('%s.', note)
  if resume_step:
    ckpts.set_aside_damaged('latest')  # Retraining saves those steps again.
    # A step restored from its copy in best/ is in latest/ no more: saved there again at once, or
    # a kill before the next save would find no latest step and start the run over (a review).
    ckpts.save_latest(state, step)
    ckpts.tidy_best_on_resume(step)  # Best steps of the discarded training after it: set aside.
    tracking.say(f'Resumed from step {step}.')
  start_step = int(state.step)
  interrupt.at_event('train_start', 0)  # Test hook: a signal while starting.
  stopping.check_while_starting(stop, resuming=bool(resume_step))
  stop['starting'] = False  # From here a signal is read after each step, which saves and stops.
  parallel.sync('config checked')  # No process writes before every process has read.
  with parallel.fail_together(f'recording the launch in {workdir}'):
    if jax.process_index() == 0:
      relaunch.record_launch(config, workdir, start_step, changes, old_best, launch)
  if old_best:  # Every process's manager forgets the moved steps (moved before the agreement).
    ckpts.best.reload()
  return state, graphdef, start_step
