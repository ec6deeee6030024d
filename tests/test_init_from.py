"""model.init_from: a new run starts from another run's weights (params + BN statistics; raw, EMA
or the better on validation), with a fresh optimizer at step 0; a head of another size is
replaced, another model is refused."""

import logging

import jax
import numpy as np
import pytest

from jax_cifar import checkpoints, config_validation, optim, parallel, tracking
from jax_cifar.training import trainer
from jax_cifar import state as state_lib
from jax_cifar import workdir as workdir_lib
from jax_cifar.configs import default


def _config(**model):
  c = default.get_config()
  c.data.source, c.data.synthetic_size, c.data.val_fraction = 'synthetic', 256, 0.25
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'cifar', 4
  c.train.batch_size, c.train.eval_batch_size, c.train.num_epochs = 32, 64, 1
  c.train.max_steps, c.checkpoint.every_steps = 3, 2
  c.ema.decay, c.checkpoint.best_weights = 0.5, 'ema'  # 'best' ranked by the EMA's accuracy.
  for k, v in model.items():
    c.model[k] = v
  return c


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A 3-step run with an EMA (checkpoints at steps 2 and 3)."""
  run = tmp_path_factory.mktemp('source')
  trainer.train_and_evaluate(_config(), str(run))
  return run


def _init(config):
  tx, _ = optim.make_optimizer(config.optim, 10, 10)
  return state_lib.init_state(config, tx, parallel.make_mesh())[0]


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_equal(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def fresh():
  """The state a run of _config() starts from without init_from (read only: built once)."""
  return _init(_config())


@pytest.mark.parametrize('spec, which', [('', 'best'), (':best', 'best'), (':latest', 'latest'),
                                         (':2', 'step 2')])
def test_new_run_starts_from_the_runs_weights_with_a_fresh_optimizer(source, fresh, spec, which):
  state = _init(_config(init_from=f'{source}{spec}'))
  path = str(source / 'checkpoints' / 'latest' / '2') if which == 'step 2' else which
  expected, _, step = state_lib.restore(_config(), source, path)
  assert step == (2 if which == 'step 2' else 3)
  _assert_equal(state.params, expected.params)
  _assert_equal(state.batch_stats, expected.batch_stats)
  assert int(state.step) == 0
  _assert_equal(state.opt_state, fresh.opt_state)  # Zero moments, count 0.
  assert not np.array_equal(_leaves(state.params)[0], _leaves(fresh.params)[0])


def test_the_processes_agree_on_the_step_they_start_from(source, monkeypatch):
  """Each process lists the source run itself: one that was still saving had let hosts start from
  different steps, silently (a review). The step goes through parallel.same_on_every_process,
  which refuses a disagreement (test_trainer.py)."""
  agreed, real = [], parallel.same_on_every_process
  monkeypatch.setattr(parallel, 'same_on_every_process',
                      lambda value, what: agreed.append((value, what)) or real(value, what))
  _init(_config(init_from=f'{source}:latest'))
  assert agreed == [(3, f'the step of model.init_from={source}:latest')]


def test_a_head_of_another_size_is_replaced_by_a_fresh_one(source):
  state = _init(_config(init_from=str(source), num_classes=10))
  own = _init(_config(num_classes=10))  # What this run's head is without init_from.
  expected, _, _ = state_lib.restore(_config(), source, 'best')
  got, want = dict(state.params), dict(expected.params)
  _assert_equal(got['fc'], own.params['fc'])
  assert sorted(x.shape for x in jax.tree.leaves(got['fc'])) == [(10,), (32, 10)]
  _assert_equal({k: v for k, v in got.items() if k != 'fc'},
                {k: v for k, v in want.items() if k != 'fc'})


def test_another_model_or_a_missing_run_is_refused(source, tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="model.width 4 vs 8"):
    _init(_config(init_from=str(source), width=8))
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'^model\.init_from=.*nope: .*nope does not exist'):
    _init(_config(init_from=str(tmp_path / 'nope')))
  with pytest.raises(config_validation.ConfigError,  # The steps it kept, as evaluate says them.
                     match=r'^model\.init_from=.*:99: checkpoint 99: .* kept no step 99 .*it kept latest: '):
    _init(_config(init_from=f'{source}:99'))
  # A bad selector after a real run folder had been reported as 'RUN:bogus/config.json not found'.
  with pytest.raises(config_validation.ConfigError,
                     match=r'model.init_from=.*:bogus: after the run folder give :best, :latest or :STEP'):
    _init(_config(init_from=f'{source}:bogus'))
  with pytest.raises(config_validation.ConfigError, match='both set'):
    config_validation.validate(_config(init_from=str(source), pretrained='/some/weights'))


def test_a_missing_or_other_model_run_is_refused_before_the_data_is_read(source, tmp_path):
  """model.init_from's mistakes had been found after the data was loaded (a fuzz); like
  model.pretrained's, they are now named first. The data folder here does not exist: its error
  would come first otherwise."""
  for init_from, message in ((str(tmp_path / 'nope'), 'nope does not exist'),
                             (str(source), 'that run has another model')):
    config = _config(init_from=init_from, width=8 if init_from == str(source) else 4)
    config.data.source, config.data.dir = 'local', str(tmp_path / 'no_data')
    with pytest.raises((workdir_lib.WorkdirError, checkpoints.CheckpointError),
                       match=f'^model.init_from=.*{message}'):
      trainer.train_and_evaluate(config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()  # Before the run's folder was made.


def test_a_run_started_from_another_trains_from_step_0_and_resumes_without_reloading(source,
                                                                                   tmp_path):
  c = _config(init_from=str(source))
  result = trainer.train_and_evaluate(c, str(tmp_path / 'b'))
  assert result['step'] == 3
  launches = (tmp_path / 'b' / workdir_lib.LAUNCHES_FILE).read_text().splitlines()
  assert len(launches) == 1 and '"start_step": 0' in launches[0]
  # Resuming must not need the source run any more: its weights are in the checkpoint.
  c.train.max_steps = 4
  c.model.init_from = str(tmp_path / 'gone')  # Would fail if read again; changing it is safe.
  assert trainer.train_and_evaluate(c, str(tmp_path / 'b'))['step'] == 4


def test_init_from_weights_takes_the_ema_or_the_better_on_validation_and_raw_warns(source, caplog):
  """A run whose 'best' was ranked by its EMA had started others from its raw weights, without
  a word (an audit): init_from_weights picks, and taking the raw ones says what was ranked."""
  expected, _, step = state_lib.restore(_config(), source, 'best')
  assert not np.array_equal(_leaves(expected.params)[0], _leaves(expected.ema_params)[0])
  state = _init(_config(init_from=str(source), init_from_weights='ema'))
  _assert_equal(state.params, expected.ema_params)
  _assert_equal(state.batch_stats, expected.ema_batch_stats)
  _assert_equal(state.ema_params, expected.ema_params)  # The new run's EMA starts from them.
  row = [r for r in tracking.read_metrics(source) if r.get('step') == step and 'val_accuracy' in r][-1]
  better = 'ema' if row['val_accuracy_ema'] > row['val_accuracy'] else 'raw'
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    state = _init(_config(init_from=str(source), init_from_weights='auto'))
  _assert_equal(state.params, getattr(expected, 'ema_params' if better == 'ema' else 'params'))
  assert 'init_from_weights=ema' not in caplog.text  # 'auto' chose on validation (a review).
  for spec, warned in ((str(source), True), (f'{source}:latest', False)):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      _init(_config(init_from=spec))
    assert ("chosen by its EMA weights' accuracy" in caplog.text
            and '--config.model.init_from_weights=ema' in caplog.text) == warned, caplog.text


def test_init_from_weights_is_checked_and_ignored_without_init_from():
  with pytest.raises(config_validation.ConfigError, match="'model.init_from_weights' must be one of"):
    config_validation.validate(_config(init_from='runs/a', init_from_weights='best'))
  assert config_validation.ignored_notes(_config(init_from_weights='ema')) == [
      "config key 'model.init_from_weights'='ema' is ignored: model.init_from is not set"]
