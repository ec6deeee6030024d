"""EMA of the weights: the update against a NumPy reference, exact resume, and what the trainer
records and picks as 'best' with it."""

import dataclasses
import functools
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cifar import checkpoints, errors, optim, parallel, tracking
from jax_cifar.training import trainer
from jax_cifar import state as state_lib
from jax_cifar.configs import default
from jax_cifar.training.train_step import ema_decay, train_step


def _config(decay=0.9, warmup_power=0.75):
  c = default.get_config()
  c.data.source, c.data.synthetic_size, c.data.val_fraction = 'synthetic', 256, 0.25
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'cifar', 4
  c.train.batch_size, c.train.eval_batch_size, c.train.num_epochs = 32, 64, 2
  c.train.log_every_steps, c.checkpoint.every_steps = 2, 3
  c.ema.decay, c.ema.warmup_power = decay, warmup_power
  return c


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(tree))]


def test_ema_decay_follows_timm_warmup_and_caps_at_decay():
  steps = np.arange(0, 2000, 7)
  got = np.asarray(jax.vmap(lambda s: ema_decay(s, 0.999, 0.75))(steps))
  np.testing.assert_allclose(got, np.minimum(0.999, 1 - (1.0 + steps) ** -0.75), rtol=1e-6)
  assert float(ema_decay(np.int32(5), 0.99, 0.0)) == pytest.approx(0.99)
  # The first update copies the weights, with warm-up or without (timm's ModelEmaV3.get_decay
  # returns 0 there either way; without warm-up it had used 0.99 from the start).
  assert float(ema_decay(np.int32(0), 0.99, 0.0)) == float(ema_decay(np.int32(0), 0.99, 0.75)) == 0


def test_ema_of_params_and_batch_stats_matches_numpy_over_several_steps():
  c = _config()
  mesh = parallel.make_mesh()
  tx, schedule = optim.make_optimizer(c.optim, 10, 10)
  state, graphdef = state_lib.init_state(c, tx, mesh)
  step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                                   config=c))
  rng = np.random.default_rng(0)
  ref = _leaves((state.params, state.batch_stats))
  for a, b in zip(ref, _leaves((state.ema_params, state.ema_batch_stats))):
    np.testing.assert_array_equal(a, b)
  for t in range(5):
    batch = {'image': rng.integers(0, 256, (32, 32, 32, 3), np.uint8),
             'label': rng.integers(0, 100, 32).astype(np.int32)}
    state, _ = step(state, batch)
    d = min(0.9, 1 - (1.0 + t) ** -0.75)
    raw = _leaves((state.params, state.batch_stats))
    ref = [d * e + (1 - d) * r for e, r in zip(ref, raw)]
    for got, want in zip(_leaves((state.ema_params, state.ema_batch_stats)), ref):
      np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
  # After 5 steps the EMA lags the raw weights: it is neither the start nor the current params.
  assert not all(np.allclose(a, b) for a, b in zip(_leaves(state.ema_params), _leaves(state.params)))


def test_a_skipped_update_leaves_the_ema_alone_and_its_decay_counts_applied_updates(monkeypatch):
  """train.on_nonfinite='skip': the first update is non-finite and skipped. The EMA had still been
  updated then, spending its copy of the weights (decay 0) on the unchanged initial ones, and the
  warm-up had counted the skipped step (an audit). Now the skip leaves it alone, and the first
  applied update copies."""
  real = optim.make_schedule
  monkeypatch.setattr(optim, 'make_schedule', lambda *a, **k: (
      lambda step: jnp.where(step == 0, jnp.inf, real(*a, **k)(step))))
  c = _config()
  c.train.on_nonfinite = 'skip'
  tx, schedule = optim.make_optimizer(c.optim, 10, 10)
  state, graphdef = state_lib.init_state(c, tx, parallel.make_mesh())
  step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                                   config=c))
  rng = np.random.default_rng(1)
  ref = _leaves((state.ema_params, state.ema_batch_stats))
  for t in range(4):
    batch = {'image': rng.integers(0, 256, (32, 32, 32, 3), np.uint8),
             'label': rng.integers(0, 100, 32).astype(np.int32)}
    state, _ = step(state, batch)
    assert int(state.nonfinite_steps) == 1  # Step 0's update only.
    if t > 0:  # t - 1 updates applied before this one: the first of them copies (decay 0).
      d = 0.0 if t == 1 else min(0.9, 1 - (1.0 + t - 1) ** -0.75)
      ref = [d * e + (1 - d) * r for e, r in zip(ref, _leaves((state.params, state.batch_stats)))]
    for got, want in zip(_leaves((state.ema_params, state.ema_batch_stats)), ref, strict=True):
      np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    if t == 1:  # The copy: the EMA is the weights of the first applied update exactly.
      for a, b in zip(_leaves(state.ema_params), _leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ema_disabled_keeps_no_copy():
  c = _config(decay=0.0)
  tx, _ = optim.make_optimizer(c.optim, 10, 10)
  state, _ = state_lib.init_state(c, tx, parallel.make_mesh())
  assert state.ema_params is None and state.ema_batch_stats is None
  # Every reader (validation, evaluate --weights ema, api.load_model) gets the same answer.
  from jax_cifar import checkpoints  # pylint: disable=g-import-not-at-top
  with pytest.raises(checkpoints.CheckpointError, match='runs/x was trained without an EMA'):
    state_lib.with_weights(state, 'ema', 'runs/x')
  with pytest.raises(checkpoints.CheckpointError, match="weights must be one of"):
    state_lib.with_weights(state, 'best', 'runs/x')
  assert state_lib.with_weights(state, 'raw', 'runs/x') is state


def test_with_weights_ema_swaps_in_the_averages_and_keeps_the_rest():
  c = _config()
  tx, _ = optim.make_optimizer(c.optim, 10, 10)
  state, _ = state_lib.init_state(c, tx, parallel.make_mesh())
  state = state.replace(ema_params=jax.tree.map(lambda x: x + 1.0, state.params),
                        ema_batch_stats=jax.tree.map(lambda x: x + 2.0, state.batch_stats))
  ema = state_lib.with_weights(state, 'ema', 'runs/x')
  for a, b in zip(_leaves((ema.params, ema.batch_stats)),
                  _leaves((state.ema_params, state.ema_batch_stats))):
    np.testing.assert_array_equal(a, b)
  assert ema.opt_state is state.opt_state and ema.step is state.step


def _restored(workdir, c):
  from jax_cifar import checkpoints  # pylint: disable=g-import-not-at-top
  tx, _ = optim.make_optimizer(c.optim, 1, 1)
  target, _ = state_lib.init_state(c, tx, parallel.make_mesh())
  return checkpoints.Checkpoints(workdir, create=False).restore('latest', target)


def test_resume_with_ema_matches_uninterrupted_run_bitwise(tmp_path):
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  run = lambda d, n: trainer.train_and_evaluate(_with_max_steps(n), str(d))
  run(straight, 10)
  run(split, 5)
  run(split, 10)
  (a, step_a), (b, step_b) = _restored(straight, _config()), _restored(split, _config())
  assert step_a == step_b == 10
  for x, y in zip(_leaves((a.ema_params, a.ema_batch_stats)), _leaves((b.ema_params, b.ema_batch_stats)), strict=True):
    np.testing.assert_array_equal(x, y)


def _with_max_steps(n):
  c = _config()
  c.train.max_steps = n
  return c


def test_trainer_validates_the_ema_and_picks_best_by_it(tmp_path, caplog):
  c = _config(decay=0.5, warmup_power=0.0)
  c.checkpoint.best_weights = 'ema'
  result = trainer.train_and_evaluate(c, str(tmp_path))
  rows = [r for r in tracking.read_metrics(tmp_path) if 'val_accuracy' in r]
  assert rows and all('val_accuracy_ema' in r and 'val_loss_ema' in r for r in rows)
  assert any(r['val_loss_ema'] != r['val_loss'] for r in rows)  # Two different sets of weights.
  assert result['best_val_accuracy'] == pytest.approx(max(r['val_accuracy_ema'] for r in rows))
  # ... and says so: the CLI's "Done" line and `report` had shown it as (or the raw weights' best
  # as) "best val_accuracy" (a review).
  assert result['best_metric'] == 'val_accuracy_ema'
  from jax_cifar.evaluation import report  # pylint: disable=g-import-not-at-top
  summary = report.summary_rows([report.load_run(tmp_path)])[0]
  assert summary['best_val_accuracy'] == result['best_val_accuracy']
  assert f"| {summary['best_val_accuracy'] * 100:.2f}% (EMA) |" in report.markdown_table([summary])
  # evaluate --weights ema|raw reproduces both validation numbers of the best step.
  from jax_cifar import evaluate  # pylint: disable=g-import-not-at-top
  best = max(rows, key=lambda r: r['val_accuracy_ema'])
  for weights, key in (('ema', 'val_accuracy_ema'), ('raw', 'val_accuracy')):
    caplog.clear()
    with caplog.at_level('WARNING'):
      out = evaluate.evaluate(c, str(tmp_path), 'best', weights=weights)
    assert out['step'] == best['step'] and out['weights'] == weights
    assert out['val_accuracy'] == pytest.approx(best[key], abs=1e-9), weights
    # The raw weights of a best the EMA ranked: said, as load_model and init_from say it (evaluate
    # had said nothing: an upgrade audit).
    ranked = [r for r in caplog.records if "chosen by its EMA weights' accuracy" in r.getMessage()]
    assert len(ranked) == (weights == 'raw'), weights
  assert (tmp_path / 'eval_best_ema.json').exists() and (tmp_path / 'eval_best.json').exists()
  # --weights auto takes whichever of the two was better on validation at that (best) step.
  out = evaluate.evaluate(c, str(tmp_path), 'best', weights='auto')
  expected = 'ema' if best['val_accuracy_ema'] > best['val_accuracy'] else 'raw'
  assert out['weights'] == expected and (tmp_path / 'eval_best_auto.json').exists()
  assert out['val_accuracy'] == pytest.approx(best[f"val_accuracy{'_ema' if expected == 'ema' else ''}"])
  # Relaunched with the other choice: allowed, and said that the kept best is not re-ranked.
  c.checkpoint.best_weights = 'raw'
  with caplog.at_level('WARNING'):
    trainer.train_and_evaluate(c, str(tmp_path))
  assert any("checkpoint.best_weights 'ema' -> 'raw'" in r.getMessage()
             and "chosen by the ema weights' val_accuracy" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_best_is_ranked_by_the_weights_checkpoint_best_weights_names(tmp_path, monkeypatch):
  """Raw and EMA weights that rank two steps differently: 'best' follows checkpoint.best_weights.
  (In the trainer test above both rank the steps alike, so ranking by the raw weights under 'ema'
  had passed: a mutation audit.) The validation numbers are given, per step and weights."""
  @dataclasses.dataclass
  class Validator:
    state: object = None

  c = _config(decay=0.5)
  tx, _ = optim.make_optimizer(c.optim, 10, 10)
  state, _ = state_lib.init_state(c, tx, parallel.make_mesh())
  accuracy, now = {1: (0.5, 0.7), 2: (0.8, 0.6)}, {}  # step: (raw, EMA)

  def split_metrics(validator, split, name):
    acc = accuracy[now['step']][0 if validator.state is state else 1]
    return {'loss': 1.0 - acc, 'accuracy': acc, 'top5_accuracy': acc}, None

  monkeypatch.setattr(trainer.inference, 'split_metrics', split_metrics)
  for best_weights, want in (('ema', 1), ('raw', 2)):
    c.checkpoint.best_weights = best_weights
    ckpts, rows, summary = checkpoints.Checkpoints(tmp_path / best_weights), [], {}
    writer = types.SimpleNamespace(write=lambda step, row, rows=rows: rows.append(row),
                                   set_summary=summary.update)
    for step in (1, 2):
      now['step'] = step
      trainer._validate(Validator(), state, None, c, ckpts, writer, step, step / 10)  # pylint: disable=protected-access
    ckpts.wait()
    assert ckpts.best.best_step() == want, best_weights
    assert [r['val_accuracy_ema'] for r in rows] == [0.7, 0.6]
    # wandb's runs table gets the best of the accuracy that ranks the steps.
    assert summary == ({'best_val_accuracy_ema': 0.7} if best_weights == 'ema'
                       else {'best_val_accuracy': 0.8}), summary
    ckpts.close()


def test_auto_weights_decide_at_the_checkpoints_step_not_the_last(tmp_path, capsys):
  """A run whose EMA led at the best step and trailed at the last (as in the H200 run of
  configs/ood_best.py): 'auto' must read the row of the step being evaluated."""
  c = _config()
  tx, _ = optim.make_optimizer(c.optim, 10, 10)
  state, _ = state_lib.init_state(c, tx, parallel.make_mesh())
  rows = [{'step': 7371, 'val_accuracy': 0.8406, 'val_accuracy_ema': 0.8450},
          {'step': 7400, 'train_loss': 1.0},
          {'step': 10530, 'val_accuracy': 0.8426, 'val_accuracy_ema': 0.8418}]
  (tmp_path / tracking.METRICS_FILE).write_text(''.join(json.dumps(r) + '\n' for r in rows))
  assert state_lib.resolve_weights('auto', state, tmp_path, 7371) == 'ema'
  assert state_lib.resolve_weights('auto', state, tmp_path, 10530) == 'raw'
  assert state_lib.resolve_weights('auto', state, tmp_path, 5) == 'raw'  # No row: the raw weights.
  assert state_lib.resolve_weights('ema', state, tmp_path, 10530) == 'ema'  # Explicit stays.
  # A non-finite accuracy is written as null, and a hand-edited row may hold anything: such a value
  # counts as none (a TypeError traceback before, or NaN that lost every comparison: a review).
  odd = [{'step': 1, 'val_accuracy': None, 'val_accuracy_ema': 0.5},
         {'step': 2, 'val_accuracy': 0.4, 'val_accuracy_ema': 'high'},
         {'step': 3, 'val_accuracy': float('nan'), 'val_accuracy_ema': 0.5},
         {'step': 4, 'val_accuracy': 0.4, 'val_accuracy_ema': None},
         # Beyond float's range: an OverflowError traceback before (a security review).
         {'step': 5, 'val_accuracy': 10**400, 'val_accuracy_ema': 0.5}]
  (tmp_path / tracking.METRICS_FILE).write_text(''.join(json.dumps(r) + '\n' for r in odd))
  capsys.readouterr()
  assert [state_lib.resolve_weights('auto', state, tmp_path, s) for s in (1, 2, 3, 4, 5)] == [
      'ema', 'raw', 'ema', 'raw', 'ema']
  said = capsys.readouterr().err
  assert ("weights auto: ema (step 1: val_accuracy not recorded, val_accuracy_ema 0.5000)"
          in said), said
  assert "val_accuracy 0.4000, val_accuracy_ema 'high', not a number)" in said, said
  assert 'val_accuracy nan, not a number, val_accuracy_ema 0.5000' in said, said
  assert '(step 5: val_accuracy inf, not a number, val_accuracy_ema 0.5000)' in said, said
  (tmp_path / tracking.METRICS_FILE).write_text(''.join(json.dumps(r) + '\n' for r in rows))
  no_ema = state.replace(ema_params=None, ema_batch_stats=None)
  capsys.readouterr()
  assert state_lib.resolve_weights('auto', no_ema, tmp_path, 7371) == 'raw'
  # Said, as every other choice of 'auto' is (it had been silent; an audit).
  assert capsys.readouterr().err == 'weights auto: raw (the run kept no EMA: ema.decay was 0)\n'


def test_auto_weights_read_the_last_validation_row_of_the_step_and_need_the_ema_to_beat_raw(
    tmp_path):
  """A resumed run logs a step's validation again: the last row is of the weights the checkpoint
  holds. A tie keeps the raw weights (the EMA must beat them, as documented)."""
  c = _config()
  tx, _ = optim.make_optimizer(c.optim, 10, 10)
  state, _ = state_lib.init_state(c, tx, parallel.make_mesh())
  rows = [{'step': 20, 'val_accuracy': 0.50, 'val_accuracy_ema': 0.60},  # Before the resume.
          {'step': 20, 'val_accuracy': 0.55, 'val_accuracy_ema': 0.52},
          {'step': 30, 'val_accuracy': 0.60, 'val_accuracy_ema': 0.60}]
  (tmp_path / tracking.METRICS_FILE).write_text(''.join(json.dumps(r) + '\n' for r in rows))
  assert state_lib.resolve_weights('auto', state, tmp_path, 20) == 'raw'
  assert state_lib.resolve_weights('auto', state, tmp_path, 30) == 'raw'  # A tie.


def test_one_non_finite_value_in_a_leaf_is_named():
  """check_finite names a leaf with a single NaN or inf among finite values, not only one that is
  all NaN (a mutation audit: `.any()` for `.all()` passed every test)."""
  params = {'conv': {'kernel': np.array([1.0, np.nan, 2.0], np.float32)},
            'fc': {'bias': np.zeros(3, np.float32)}}
  stats = {'bn': {'var': np.array([1.0, np.inf], np.float32)}}
  with pytest.raises(errors.UserError, match=r"^step 3: non-finite values in the checkpoint: "
                     r"params\['conv'\]\['kernel'\], batch_stats\['bn'\]\['var'\] "
                     r"\(batch_stats: the BatchNorm running statistics\)$"):
    state_lib.check_finite(params, stats, 'step 3')
  state_lib.check_finite({'w': np.ones(2, np.float32)}, {}, 'fine')
  with pytest.raises(errors.UserError, match=r"^step 4: non-finite values in the checkpoint: "
                     r"params\['conv'\]\['kernel'\]$"):  # (No BatchNorm note: a parameter alone.)
    state_lib.check_finite(params, {'bn': {'var': np.ones(2, np.float32)}}, 'step 4')
