"""The training loop: data parallelism, exact resume, and the real smoke run."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import with_cpu_devices
from jax_cifar.configs import default, smoke
from jax_cifar import optim, tracking
from jax_cifar.evaluation import inference
from jax_cifar.training import trainer
from jax_cifar import state as state_lib
from jax_cifar.data import cifar100

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def one_step_results(tmp_path_factory):
  """{devices: {'options'/'defaults': arrays}}: one subprocess per device count takes the step
  with the trainer's CPU compiler options and with XLA's defaults."""
  out = tmp_path_factory.mktemp('one_step')
  results = {}
  for devices in (1, 8):
    env = with_cpu_devices(dict(os.environ, JAX_PLATFORMS='cpu'), devices)
    subprocess.run([sys.executable, str(ROOT / 'tests' / '_one_step.py'), str(out / f'step_{devices}'),
                    str(ROOT)], check=True, env=env, cwd=ROOT)
    results[devices] = {name: dict(np.load(out / f'step_{devices}_{name}.npz'))
                        for name in ('options', 'defaults')}
  return results


# Tolerances on parameters and BN statistics after one SGD step (lr 0.1): with XLA's default CPU
# pipeline 1e-4 relative / 1e-5 absolute; with the CPU compiler options the trainer uses
# (algsimp off), reductions are ordered differently and differences reach 2e-5 absolute.
@pytest.mark.parametrize('xla_defaults, atol', [(True, 1e-5), (False, 5e-5)])
def test_train_step_on_8_devices_equals_1_device(one_step_results, xla_defaults, atol):
  name = 'defaults' if xla_defaults else 'options'
  one, eight = one_step_results[1][name], one_step_results[8][name]
  assert int(one['__devices']) == 1 and int(eight['__devices']) == 8
  assert one.keys() == eight.keys()
  # Same global batch, same keys: only the order of floating-point reductions differs.
  np.testing.assert_allclose(one['__loss'], eight['__loss'], rtol=1e-5)
  for key in set(one) - {'__devices', '__val_batch'}:
    np.testing.assert_allclose(one[key], eight[key], rtol=1e-4, atol=atol, err_msg=key)
  # The two settings compile different programs (else this test would check one of them twice).
  other = one_step_results[1]['options' if xla_defaults else 'defaults']
  # (Over the keys both hold, in order: only the trainer's options validate, and iterating a set
  # had reached '__val_log_probs' first in some processes' hash order, a KeyError.)
  shared = sorted(set(one) & set(other) - {'__devices'})
  assert any(not np.array_equal(one[k], other[k]) for k in shared)


def test_an_eval_batch_the_devices_do_not_divide_is_rounded_up_and_predicts_the_same(
    one_step_results, monkeypatch):
  """Every shipped config's eval batch (500) had been refused on 8, 16 or 32 devices. The
  validator with an eval batch of 12 on 8 devices runs batches of 16 (the padding masked) and
  predicts what 1 device predicts in batches of 12."""
  one, eight = one_step_results[1]['options'], one_step_results[8]['options']
  assert int(one['__val_batch']) == 12 and int(eight['__val_batch']) == 16
  assert one['__val_log_probs'].shape == eight['__val_log_probs'].shape == (20, 10)
  np.testing.assert_allclose(eight['__val_log_probs'], one['__val_log_probs'], rtol=0, atol=1e-4)
  monkeypatch.setattr(trainer.parallel.jax, 'device_count', lambda: 8)
  assert [trainer.parallel.eval_batch_size(b) for b in (500, 512, 3, 8)] == [504, 512, 8, 8]


def test_micro_batches_that_would_span_devices_are_warned_about(monkeypatch):
  """2 hosts x 8 GPUs, batch 128, 16 micro-batches: each device holds 8 images, so micro-batch i
  (examples i, i + 16, ...) is on half the devices. 8 micro-batches keep every share local."""
  monkeypatch.setattr(trainer.parallel.jax, 'device_count', lambda: 16)
  warn = trainer.parallel.micro_batch_warning
  assert warn(128, 1) is None and warn(128, 8) is None and warn(256, 16) is None
  assert 'does not divide the 8 images each of the 16 devices holds' in warn(128, 16)


def test_validation_more_often_than_every_step_is_said(caplog):
  """train.eval_every_epochs=1e-6 had validated after every step without a word (a fuzz)."""
  with caplog.at_level('WARNING'):
    assert trainer.eval_every_steps(0.5, 78) == 39 and trainer.eval_every_steps(0.007, 78) == 1
    assert not caplog.records
    assert trainer.eval_every_steps(1e-6, 78) == 1
  assert [r.getMessage() for r in caplog.records] == [
      'train.eval_every_epochs=1e-06 is under half a step of the 78 in an epoch: validating '
      'after every step.']


def test_a_launch_closes_its_input_when_it_ends(tmp_path, monkeypatch):
  """The trainer closes the device prefetch (and with it grain's workers, data.worker_count > 0):
  their batches still buffered at exit had ended a SIGTERM-stopped run in "leaked shared_memory
  objects". The generator is held here, so only the trainer's close can end it."""
  import inspect  # pylint: disable=import-outside-toplevel
  from _tiny_run import config as tiny  # pylint: disable=import-outside-toplevel
  made, prefetch = [], trainer.parallel.prefetch_to_device
  monkeypatch.setattr(trainer.parallel, 'prefetch_to_device',
                      lambda *a, **k: made.append(prefetch(*a, **k)) or made[-1])
  trainer.train_and_evaluate(tiny(), str(tmp_path / 'run'))
  assert made and all(inspect.getgeneratorstate(g) == inspect.GEN_CLOSED for g in made)  # (And
  # validation's, done.)


def test_processes_that_read_different_steps_are_refused_before_training_apart(monkeypatch):
  """Each process lists and reads the checkpoint files itself: a host seeing a lagging shared
  filesystem would resume from another step than the others (a multi-host review). The gathered
  values of two processes, one of which saw an older step."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(trainer.parallel.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'process_allgather', lambda x: np.asarray([[6], [4]]))
  with pytest.raises(trainer.errors.UserError,
                     match=r'^the processes disagree on the latest step saved \(process 0: 6, '
                           r'process 1: 4\): each must see the same checkpoint files'):
    trainer.parallel.same_on_every_process(6, 'the latest step saved')
  monkeypatch.setattr(multihost_utils, 'process_allgather', lambda x: np.asarray([[6], [6]]))
  assert trainer.parallel.same_on_every_process(6, 'the latest step saved') == 6


def _synthetic_config(max_steps: int):
  c = default.get_config()
  c.data.source = 'synthetic'
  c.data.synthetic_size = 256
  c.data.val_fraction = 0.25
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'cifar', 8
  c.augment.mixup_alpha = 0.2
  c.train.batch_size = 32
  c.train.eval_batch_size = 64
  c.train.num_epochs = 2
  c.train.log_every_steps = 2
  c.train.max_steps = max_steps
  c.checkpoint.every_steps = 3
  return c


def _final_params(workdir):
  c = _synthetic_config(0)
  state, _, step = state_lib.restore(c, str(workdir), 'latest', trainer.parallel.make_mesh())
  return step, jax.tree.leaves(jax.device_get((state.params, state.batch_stats, state.opt_state)))


def test_resume_matches_uninterrupted_run(tmp_path):
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  trainer.train_and_evaluate(_synthetic_config(12), str(straight))
  trainer.train_and_evaluate(_synthetic_config(7), str(split))
  trainer.train_and_evaluate(_synthetic_config(12), str(split))
  step_a, leaves_a = _final_params(straight)
  step_b, leaves_b = _final_params(split)
  assert step_a == step_b == 12
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)  # Bitwise on CPU: same batches, keys and programs.
  rows_a, rows_b = tracking.read_metrics(straight), tracking.read_metrics(split)
  # The run stopped by max_steps=7 ended with an evaluation (an extra val row at step 7) and a
  # train row of step 7 alone (it had been in no row: a new-user walkthrough); apart from them the
  # evaluation rows are identical, and every step is in exactly one train row. The first train
  # row after the restart (step 8) averages only the steps run since the restart.
  evals = lambda rows: [r for r in rows if 'val_accuracy' in r]
  assert [r['step'] for r in evals(rows_a)] == [6, 12]
  assert [r['step'] for r in evals(rows_b)] == [6, 7, 12]
  assert evals(rows_a) == [r for r in evals(rows_b) if r['step'] != 7]
  train_steps = lambda rows: [r['step'] for r in rows if 'train_loss' in r]
  assert train_steps(rows_a) == [2, 4, 6, 8, 10, 12]
  assert train_steps(rows_b) == [2, 4, 6, 7, 8, 10, 12]
  windows = [(r['step'], int(r.get('window_steps', 2))) for r in rows_b if 'train_loss' in r]
  assert sorted(s for step, n in windows for s in range(step - n + 1, step + 1)) == list(
      range(1, 13))
  timing = ('images_per_sec', 'first_step_seconds')
  strip = lambda rows: [{k: v for k, v in r.items() if k not in timing}
                        for r in rows if r['step'] not in (7, 8)]
  assert strip(rows_a) == strip(rows_b)


def test_run_stopped_by_max_steps_ends_with_an_evaluation_equal_to_evaluates(tmp_path):
  """max_steps=5 (not an evaluation step) still validates and saves 'best'; `evaluate` on the
  'latest' checkpoint (the same weights) gives exactly the trainer's val numbers."""
  from jax_cifar import evaluate  # pylint: disable=g-import-not-at-top
  c = _synthetic_config(5)
  result = trainer.train_and_evaluate(c, str(tmp_path))
  rows = [r for r in tracking.read_metrics(tmp_path) if 'val_accuracy' in r]
  assert [r['step'] for r in rows] == [5]
  assert result['step'] == 5 and result['best_val_accuracy'] == rows[0]['val_accuracy']
  assert result['best_metric'] == 'val_accuracy'
  out = evaluate.evaluate(c, str(tmp_path), 'latest')
  assert out['step'] == 5
  for key in ('val_loss', 'val_accuracy', 'val_top5_accuracy'):
    assert out[key] == rows[0][key], key  # Exactly: one prediction path, one metrics function.


@pytest.fixture(scope='module')
def one_and_a_half_epochs(tmp_path_factory):
  """(config, workdir, result) of a simple_cnn run of num_epochs=1.5 at 6 steps per epoch (9 steps,
  logged every 2); the two tests below only read it."""
  c = _synthetic_config(0)
  c.model.name, c.train.num_epochs, c.checkpoint.every_steps = 'simple_cnn', 1.5, 100
  workdir = tmp_path_factory.mktemp('one_and_a_half_epochs')
  return c, workdir, trainer.train_and_evaluate(c, str(workdir))


def test_a_fractional_number_of_epochs_trains_its_last_partial_epoch(one_and_a_half_epochs,
                                                                       tmp_path):
  """num_epochs=1.5 of 6 steps per epoch is 9 steps: the data stream must hold a second epoch for
  the last 3 (rounding the epochs down passed every other test: a mutation audit)."""
  c, workdir, result = one_and_a_half_epochs
  assert result['step'] == 9 and [r['step'] for r in tracking.read_metrics(workdir)
                                  if 'val_accuracy' in r][-1] == 9
  # 1.16 epochs of 25 steps are 29 steps; int(1.16 * 25) is 28 (a test audit).
  c = c.copy_and_resolve_references()
  c.data.synthetic_size, c.data.val_fraction, c.train.batch_size = 250, 0.2, 8
  c.train.num_epochs, c.train.log_every_steps, c.train.eval_every_epochs = 1.16, 100, 100
  assert trainer.train_and_evaluate(c, str(tmp_path / 'fraction'))['step'] == 29


def test_the_last_step_logs_a_train_row_even_off_the_log_cadence(one_and_a_half_epochs):
  """9 steps logged every 2: the last train row is step 9, averaging its 1 step (window_steps)."""
  c, workdir, _ = one_and_a_half_epochs
  rows = [r for r in tracking.read_metrics(workdir) if 'train_loss' in r]
  assert [r['step'] for r in rows] == [2, 4, 6, 8, 9]
  assert rows[-1]['window_steps'] == 1 and 'window_steps' not in rows[-2]
  # A row's learning rate is its last step's, so Figure 3 draws the schedule (the window's mean
  # had drawn the warm-up's peak lower and later: a visual review). Step s's update used
  # schedule(s - 1).
  _, schedule = optim.make_optimizer(c.optim, 9, 6)
  np.testing.assert_allclose([r['learning_rate'] for r in rows],
                             [float(schedule(r['step'] - 1)) for r in rows], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.optimized_xla  # The evaluation of 4,000 real images (the training: conftest.smoke_run).
def test_smoke_run_on_real_data_learns_and_evaluate_reproduces_it(smoke_run, cifar_dir):
  """README's first command (conftest.smoke_run; tests/test_bn_adapt.py adapts the same run)."""
  workdir = smoke_run
  env = dict(os.environ, JAX_CIFAR_DATA_DIR=str(cifar_dir))
  rows = tracking.read_metrics(workdir)
  val = [r['val_accuracy'] for r in rows if 'val_accuracy' in r]
  assert len(val) == smoke.get_config().train.num_epochs
  # Measured 0.121 best validation accuracy (2026-11-27, this CPU); chance is 0.01.
  assert max(val) > SMOKE_MIN_VAL_ACCURACY, val
  def evaluate(*overrides):  # README's way: no --config, the run's own config.json.
    out = subprocess.run([sys.executable, '-m', 'jax_cifar.evaluate', '--workdir', str(workdir),
                          '--checkpoint', 'best', *overrides],
                         check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr
  result, stderr = evaluate()
  assert result['val_accuracy'] == pytest.approx(max(val), abs=1e-6)
  assert result['test_accuracy'] > SMOKE_MIN_VAL_ACCURACY - 0.03
  assert result['test_count'] == smoke.get_config().data.eval_limit
  # Said to be a part of the test set (only test_count had said so: a new-user audit), with what
  # evaluates all of it; that advice, followed, does (an override of the run's own config).
  assert (f'test: {result["test_count"]} class-balanced test images, not all of them (the run\'s '
          f'data.eval_limit={result["test_count"]}; every image: add '
          '--config.data.eval_limit=0)') in stderr, stderr[-2000:]
  every, stderr = evaluate('--config.data.eval_limit=0')
  assert every['test_count'] == cifar100.TEST_SIZE and 'not all of them' not in stderr, stderr
  assert every['test_accuracy'] > SMOKE_MIN_VAL_ACCURACY - 0.03
  assert json.loads((workdir / 'config.json').read_text())['data']['eval_limit'] == 2_000  # Kept.


SMOKE_MIN_VAL_ACCURACY = 0.08  # Measured 0.121 (val) / test 0.12 region; margin for seeds and XLA options.


def test_a_validation_fraction_that_rounds_to_zero_images_is_refused_before_a_step(tmp_path):
  """It fell back to validating, and picking the best checkpoint, on the TEST split with only a
  warning: a run that asked for a validation split is refused instead, naming the fraction that
  holds one out; 0 (train on every image) still validates on test, as documented."""
  c = _synthetic_config(2)
  c.model.name = 'simple_cnn'  # The data split is the point: the quickest model to compile.
  c.data.synthetic_size = 128  # One or two images per class: 25% of them rounds to 0 per class.
  c.train.num_epochs = 1
  c.train.eval_every_epochs = 0.5
  with pytest.raises(trainer.errors.ConfigError, match=r'data.val_fraction=0.25 holds out no '
                     r'validation images.*largest class has 2 \(data.synthetic_size=128 makes '
                     r'that few: a larger size holds out more\); give more than 1/4, or 0 to train'):
    trainer.train_and_evaluate(c, str(tmp_path / 'refused'))
  assert not (tmp_path / 'refused' / 'checkpoints').exists()
  assert len(cifar100.get_splits(c.data)['val']) == 0  # Evaluation reads such a run's splits.
  c.data.val_fraction = 0.3  # 0.3 x 2 rounds to 1: classes of two give one image to validation.
  splits = cifar100.get_splits(c.data, require_val=True)
  assert len(splits['val']) == 28 and len(splits['train']) == 100
  c.data.val_fraction, c.train.max_steps = 0.0, 1
  assert trainer.train_and_evaluate(c, str(tmp_path / 'all'))['step'] == 1
  # A run that trained with 0.25 (versions before 2026-12-02 allowed it: every image trained, best
  # on test) had no way on: its own value refused, and 0 refused as a change (an upgrade audit).
  # The error names the relaunch that resumes it.
  saved = json.loads((tmp_path / 'all' / 'config.json').read_text())
  saved['data']['val_fraction'] = 0.25
  (tmp_path / 'all' / 'config.json').write_text(json.dumps(saved))
  c.data.val_fraction, c.train.max_steps = 0.25, 2
  with pytest.raises(trainer.errors.ConfigError, match='A run that trained with this value .* '
                     'resumes with --config.data.val_fraction=0 '
                     '--config.train.allow_config_change=true$'):
    trainer.train_and_evaluate(c, str(tmp_path / 'all'))
  c.data.val_fraction, c.train.allow_config_change = 0.0, True
  assert trainer.train_and_evaluate(c, str(tmp_path / 'all'))['step'] == 2
  launches = (tmp_path / 'all' / 'launches.jsonl').read_text().splitlines()
  assert json.loads(launches[-1])['start_step'] == 1  # Resumed, not started over.


def test_fewer_classes_than_the_labels_is_refused_before_a_step(tmp_path):
  # one_hot of a label >= num_classes is all zeros: those images trained on nothing, then the
  # first validation crashed with an IndexError.
  c = _synthetic_config(2)
  c.model.num_classes = 10
  with pytest.raises(trainer.errors.ConfigError, match='model.num_classes is 10 but the labels go '
                     'up to 99: set it to at least 100'):
    trainer.train_and_evaluate(c, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists() and not (tmp_path / 'config.json').exists()


def test_validation_counts_every_image_once_whatever_the_batch_size():
  """100 images in batches of 64 (a padded last batch) give the same per-image predictions as
  batches of 20 (no padding): padding rows are dropped, no image is counted twice."""
  c = _synthetic_config(0)
  mesh = trainer.parallel.make_mesh()
  tx, _ = trainer.optim.make_optimizer(c.optim, 1, 1)
  state, graphdef = state_lib.init_state(c, tx, mesh)
  split = cifar100.synthetic_split(100, seed=0)
  results = {}
  for batch in (64, 20):
    c.train.eval_batch_size = batch
    validator = dataclasses.replace(trainer.make_validator(c, graphdef, mesh), state=state)
    results[batch] = inference.split_metrics(validator, split, 'val')
  (m64, p64), (m20, p20) = results[64], results[20]
  assert p64.shape == p20.shape == (100, c.model.num_classes)
  assert m64['count'] == m20['count'] == 100
  np.testing.assert_allclose(p64, p20, rtol=1e-5, atol=1e-5)  # Other shapes: other summation order.
  np.testing.assert_allclose(m64['loss'], m20['loss'], rtol=1e-5)


@pytest.mark.parametrize('ema', [0.0, 0.9])
def test_the_flat_step_the_loop_uses_equals_the_step_over_the_train_state(ema):
  """compile_train_step with a treedef (the loop's: the state as a flat list between steps) gives
  the state and metrics of the step over the TrainState exactly, with and without the EMA."""
  from jax_cifar import optim, parallel  # pylint: disable=g-import-not-at-top
  from jax_cifar import state as state_lib  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width, c.model.num_classes = 'resnet18', 'cifar', 8, 10
  c.augment.mixup_alpha, c.augment.policy, c.ema.decay = 0.4, 'autoaugment_cifar10', ema
  c.optim.name = 'adamw'
  mesh = parallel.make_mesh()
  tx, schedule = optim.make_optimizer(c.optim, total_steps=10, steps_per_epoch=10)
  state, graphdef = state_lib.init_state(c, tx, mesh)
  assert (state.ema_params is None) == (ema == 0.0)
  treedef = jax.tree.structure(state)
  tree_step = trainer.compile_train_step(c, graphdef, tx, schedule, mesh)
  flat_step = trainer.compile_train_step(c, graphdef, tx, schedule, mesh, treedef)
  rng = np.random.default_rng(0)
  leaves = [x.copy() for x in jax.tree.leaves(state)]  # Both steps donate their state.
  for _ in range(2):
    batch = parallel.to_global({'image': rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                                'label': rng.integers(0, 10, 16).astype(np.int32)},
                               parallel.batch_sharded(mesh))
    state, metrics = tree_step(state, batch)
    leaves, flat_metrics = flat_step(leaves, batch)
    assert jax.tree.structure(jax.tree.unflatten(treedef, leaves)) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), leaves, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert {k: float(v) for k, v in metrics.items()} == {k: float(v)
                                                       for k, v in flat_metrics.items()}
  assert int(jax.tree.unflatten(treedef, leaves).step) == 2


def test_images_per_sec_leaves_out_validation_and_compile_but_not_the_steps_before_them(
    tmp_path, monkeypatch):
  """On a fake clock where each step takes 10 s and validation 1,000 s: the log window holding a
  validation (steps 5-8, validated after step 6) has the same throughput as one without
  (steps 1-4), 4 steps x 32 images / 40 s. Restarting the window at validation counted only
  steps 7-8 (twice the rate: the progress bar showed 2,620 img/s after a validation in a 700
  img/s smoke run); counting the validation would give 0.12."""
  clock = [0.0]
  monkeypatch.setattr(trainer, 'time', type('FakeTime', (), {
      'perf_counter': staticmethod(lambda: clock[0])}))
  compile_step, validate = trainer.compile_train_step, trainer._validate  # pylint: disable=protected-access

  def timed_compile(*args, **kwargs):
    step, calls = compile_step(*args, **kwargs), []

    def run(*a):
      clock[0] += 10.0 + (500.0 if not calls else 0.0)  # The first call compiles.
      calls.append(1)
      return step(*a)
    return run

  def slow_validate(*args, **kwargs):
    clock[0] += 1000.0
    return validate(*args, **kwargs)

  monkeypatch.setattr(trainer, 'compile_train_step', timed_compile)
  monkeypatch.setattr(trainer, '_validate', slow_validate)
  c = _synthetic_config(8)
  c.train.log_every_steps = 4  # 6 steps per epoch: validation after step 6, inside the 2nd window
  trainer.train_and_evaluate(c, str(tmp_path / 'run'))
  rows = tracking.read_metrics(tmp_path / 'run')
  assert [r['step'] for r in rows if 'val_accuracy' in r] == [6, 8]
  rates = {r['step']: r['images_per_sec'] for r in rows if 'train_loss' in r}
  # The first window leaves out its first step, which compiles (500 s here): that had counted
  # as training (a short run's rate, and the report's train time, were mostly compile).
  assert rates == {4: 3 * 32 / 30, 8: 4 * 32 / 40}
  assert [r.get('first_step_seconds') for r in rows if 'train_loss' in r] == [510.0, None]
