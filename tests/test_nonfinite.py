"""Non-finite losses and updates: train.on_nonfinite='stop' stops naming the step and keeps the
checkpoints before it; 'skip' counts and never applies them; a relaunch may switch between them."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_cifar import checkpoints, errors, optim, parallel, tracking
from jax_cifar import state as state_lib
from jax_cifar.training import stopping, trainer
from test_resilience import _config


def _bad_at(monkeypatch, bad):
  """An infinite learning rate at the updates whose 0-based index `bad(step)` selects."""
  real = optim.make_schedule
  monkeypatch.setattr(optim, 'make_schedule', lambda *a, **k: (
      lambda step: jnp.where(bad(step), jnp.inf, real(*a, **k)(step))))


def _diverge_from_step_5(monkeypatch):
  """An infinite learning rate from the 5th update on: its update (and all later losses) blow up."""
  _bad_at(monkeypatch, lambda step: step >= 4)


def test_nonfinite_update_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path, monkeypatch):
  _diverge_from_step_5(monkeypatch)
  c = _config()
  with pytest.raises(trainer.NonFiniteLossError,
                     match=r'at step 5\b.*; the checkpoint of step 3 is kept \('):
    trainer.train_and_evaluate(c, str(tmp_path))
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints' / 'latest').iterdir()
                 if p.name.isdigit())
  assert saved == [3]  # The checkpoint before the failure is kept; nothing after it is written.
  assert not list((tmp_path / 'checkpoints' / 'best').iterdir())
  state, _, step = state_lib.restore(c, str(tmp_path), 'latest', parallel.make_mesh())
  assert step == 3
  for leaf in jax.tree.leaves(jax.device_get(state.params)):
    assert np.all(np.isfinite(leaf))


def test_a_nonfinite_update_between_log_steps_stops_before_the_next_save(tmp_path, monkeypatch):
  # Only the 5th update is non-finite; rows are logged every 6 steps, checkpoints saved every
  # step. The check ran at log steps only: steps 5 and 6 were saved, the good ones rotated away,
  # and a run ending before its next log step returned as if nothing had happened.
  _bad_at(monkeypatch, lambda step: step == 4)
  c = _config()
  c.train.log_every_steps, c.checkpoint.every_steps, c.checkpoint.keep = 6, 1, 2
  with pytest.raises(trainer.NonFiniteLossError, match=r'at step 5\b.*the checkpoint of step 4'):
    trainer.train_and_evaluate(c, str(tmp_path))
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints' / 'latest').iterdir()
                 if p.name.isdigit())
  assert saved == [3, 4]


def test_a_nonfinite_update_before_any_save_does_not_claim_a_checkpoint(tmp_path, monkeypatch):
  """It had said 'the last saved checkpoint is kept' with checkpoints/latest empty (an audit)."""
  _diverge_from_step_5(monkeypatch)
  c = _config()
  c.checkpoint.every_steps = 100
  with pytest.raises(trainer.NonFiniteLossError, match=r'at step 5\b.*; no checkpoint was saved '
                                                       r'before it \('):
    trainer.train_and_evaluate(c, str(tmp_path))
  assert not [p for p in (tmp_path / 'checkpoints' / 'latest').iterdir() if p.name.isdigit()]


def test_a_nonfinite_update_stops_at_the_next_log_step_without_logging_its_row(tmp_path,
                                                                             monkeypatch):
  """Step 5 diverges, saves and validations far off: the run stops at log step 6, no row of it."""
  _diverge_from_step_5(monkeypatch)
  c = _config()
  c.checkpoint.every_steps = 100
  with pytest.raises(trainer.NonFiniteLossError, match=r'at step 5\b'):
    trainer.train_and_evaluate(c, str(tmp_path))
  assert [r['step'] for r in tracking.read_metrics(tmp_path)] == [2, 4]


def test_nonfinite_skip_mode_counts_and_never_applies_bad_updates(tmp_path, monkeypatch):
  _bad_at(monkeypatch, lambda step: (step >= 4) & (step % 2 == 0))  # Updates 5, 7, 9 and 11.
  c = _config()
  c.train.on_nonfinite = 'skip'
  c.train.max_steps = 12
  trainer.train_and_evaluate(c, str(tmp_path))
  state, _, _ = state_lib.restore(c, str(tmp_path), 'latest', parallel.make_mesh())
  assert int(state.nonfinite_steps) == 4 and int(state.first_nonfinite_step) == 4
  for leaf in jax.tree.leaves(jax.device_get(state.params)):
    assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize('log_every', [2, 1])
def test_skip_mode_stops_a_run_whose_every_update_of_a_log_window_is_skipped(tmp_path,
                                                                            monkeypatch, log_every):
  """Every update from step 5 on non-finite: under 'skip' the run had gone on to its end, trained
  nothing, and exited 0 (a bad-input review). A whole log window of 2 or more steps skipped stops
  it, before that step's save; a window of 1 step is one skipped update, as 'skip' promises."""
  _diverge_from_step_5(monkeypatch)
  c = _config()
  c.train.on_nonfinite, c.train.max_steps, c.train.log_every_steps = 'skip', 8, log_every
  if log_every == 1:
    assert trainer.train_and_evaluate(c, str(tmp_path))['step'] == 8
    return
  with pytest.raises(trainer.NonFiniteLossError, match=(
      r'^every update of steps 5-6 was non-finite and skipped \(train\.on_nonfinite=skip\): the '
      r'run no longer trains; the checkpoint of step 3 is kept\. Lower optim\.lr')):
    trainer.train_and_evaluate(c, str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints' / 'latest').iterdir()
                if p.name.isdigit()) == [3]
  assert [r['step'] for r in tracking.read_metrics(tmp_path) if 'train_loss' in r] == [2, 4]


def test_skip_mode_keeps_the_schedule_in_step_with_the_run(tmp_path, monkeypatch, caplog):
  # One non-finite learning-rate value (the 3rd update): only that update is skipped. The kept
  # optimizer state also kept the schedule's count, so the same bad value came back at every
  # later step (4 of 6 skipped) and the applied rate trailed the logged one.
  _bad_at(monkeypatch, lambda step: step == 2)
  c = _config()
  c.train.on_nonfinite, c.train.max_steps = 'skip', 6
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(c, str(tmp_path))
  # (BatchNorm statistics skip a step too: the warning had named the loss alone, the diff review.)
  assert ('1 updates skipped so far because of a non-finite loss, BatchNorm statistics or '
          'update.') in caplog.messages
  state, _, _ = state_lib.restore(c, str(tmp_path), 'latest', parallel.make_mesh())
  assert int(state.nonfinite_steps) == 1 and int(state.first_nonfinite_step) == 2
  counts = [int(x.count) for x in jax.tree.leaves(
      state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(x, optax.ScaleByScheduleState)]
  assert counts == [6]  # The schedule counts every step; Adam's count only the applied ones:
  adam = [x for x in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(x, optax.ScaleByAdamState)]
  assert [int(x.count) for x in adam] == [5]


def test_a_relaunch_with_stop_after_skipped_steps_goes_on_and_stops_at_its_own(tmp_path,
                                                                             monkeypatch):
  """on_nonfinite may change at a relaunch: steps skipped under 'skip' before it are history. The
  saved count had stopped the relaunch at its first check, for good (a review)."""
  _bad_at(monkeypatch, lambda step: (step == 4) | (step == 7))  # Updates 5 and 8.
  c = _config()
  c.train.on_nonfinite, c.train.max_steps = 'skip', 6
  trainer.train_and_evaluate(c, str(tmp_path))
  c.train.on_nonfinite, c.train.max_steps = 'stop', 7
  assert trainer.train_and_evaluate(c, str(tmp_path))['step'] == 7  # Goes on.
  state, _, _ = state_lib.restore(c, str(tmp_path), 'latest', parallel.make_mesh())
  assert int(state.nonfinite_steps) == 1 and int(state.first_nonfinite_step) == 4
  c.train.max_steps = 9
  with pytest.raises(trainer.NonFiniteLossError, match=r'update after step 7: it was not applied; '
                                                       r'the checkpoint of step 7 is kept'):
    trainer.train_and_evaluate(c, str(tmp_path))


def test_a_stop_whose_save_fails_is_no_preemption_for_wandb(tmp_path, monkeypatch):
  """A signal's stop saves first; when that save fails the process exits 1, and wandb had still
  been told 'preempted, 75' (a review)."""
  closed = []
  monkeypatch.setattr(tracking.MetricsWriter, 'close', lambda self, exit_code=0, preempted=False: (
      closed.append((exit_code, preempted)), self._file.close()))
  monkeypatch.setattr(stopping, 'requested', lambda stop, step, every: step == 4)
  saves = checkpoints.Checkpoints.save_latest

  def save_latest(self, state, step):
    if step == 4:
      raise checkpoints.CheckpointError('disk gone')
    saves(self, state, step)
  monkeypatch.setattr(checkpoints.Checkpoints, 'save_latest', save_latest)
  with pytest.raises(checkpoints.CheckpointError, match='disk gone'):
    trainer.train_and_evaluate(_config(), str(tmp_path))
  assert closed == [(1, False)]


def test_a_validation_of_non_finite_outputs_stops_the_run_and_is_never_best(tmp_path, monkeypatch):
  """A model whose training steps are finite but whose eval-mode outputs are not (a running
  statistic of -3e38, finite, read in eval mode only): its NaN validation (loss NaN, accuracy 1%:
  argmax reads NaN rows as class 0) had been saved as 'best', and the run ended "Done", exit 0 (a
  numerics review). The run now stops at that validation, naming it; 'best' is left alone."""
  from jax_cifar.evaluation import inference  # pylint: disable=import-outside-toplevel
  real = inference.predict_step
  monkeypatch.setattr(inference, 'predict_step', lambda *a, **k: real(*a, **k) * jnp.nan)
  c = _config()
  with pytest.raises(errors.UserError,
                     match=r"^val: the model's outputs are not finite \(NaN or inf\) for \d+ of "):
    trainer.train_and_evaluate(c, str(tmp_path))
  assert not list((tmp_path / 'checkpoints' / 'best').iterdir())
  assert not [line for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
              if 'val_loss' in line]
