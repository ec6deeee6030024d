"""A training run's non-finite guard, read by the loop at log steps and before each validation and
save: under train.on_nonfinite='stop' a non-finite update stops the run (it was not applied), and
under 'skip' a whole log window of skipped updates does (the run no longer trains)."""

from absl import logging

from jax_cifar import checkpoints, errors
from jax_cifar.state import TrainState


class NonFiniteLossError(errors.UserError, RuntimeError):
  """A non-finite loss, BatchNorm statistics or update with train.on_nonfinite='stop' (the step is
  named)."""


def check_finite(state: TrainState, config, ckpts: checkpoints.Checkpoints,
                 launch_start: tuple[int, int], warn: bool = True) -> None:
  """Stops (train.on_nonfinite='stop') once an update of this launch was non-finite; checked at
  every log step and before every validation and save, so no checkpoint after it replaces the ones
  before. `launch_start`: (the step this launch started from, the skipped updates counted then):
  steps skipped under 'skip' before a relaunch with 'stop' are history (they had stopped the
  relaunch at its first check, for good: a review)."""
  start_step, skipped_before = launch_start
  bad = int(state.nonfinite_steps)
  if bad > skipped_before and config.train.on_nonfinite == 'stop':
    first = int(state.first_nonfinite_step)  # The run's first; this launch's if none before.
    where = f'at step {first + 1}' if skipped_before == 0 else f'after step {start_step}'
    raise NonFiniteLossError(
        f'non-finite loss, BatchNorm statistics or update {where}: it was not applied; '
        f'{_kept(ckpts)} (set train.on_nonfinite=skip to skip such steps)')
  if bad and warn:
    logging.warning('%d updates skipped so far because of a non-finite loss, BatchNorm statistics '
                    'or update.', bad)


def check_window(state: TrainState, config, ckpts: checkpoints.Checkpoints, skipped: int,
                 steps: int, step: int) -> int:
  """Under train.on_nonfinite='skip', stops a run whose every update of a whole log window (of 2
  steps or more) was non-finite: it trains nothing any more (such a run had gone on to its end and
  exited 0: a bad-input review). `skipped`: the updates skipped before the window; returns the
  count after it."""
  bad = int(state.nonfinite_steps)
  if (config.train.on_nonfinite == 'skip' and steps == config.train.log_every_steps >= 2
      and bad - skipped == steps):
    raise NonFiniteLossError(
        f'every update of steps {step - steps + 1}-{step} was non-finite and skipped '
        f'(train.on_nonfinite=skip): the run no longer trains; {_kept(ckpts)}. Lower optim.lr, '
        'or look for non-finite inputs or config values')
  return bad


def _kept(ckpts: checkpoints.Checkpoints) -> str:
  saved = ckpts.latest.latest_step()  # (It had claimed a checkpoint where none was saved.)
  return ('no checkpoint was saved before it' if saved is None else
          f'the checkpoint of step {saved} is kept')
