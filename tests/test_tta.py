"""Test-time augmentation: each view is the claimed flip/translation, and predictions average them."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cifar.configs import default
from jax_cifar import evaluate, optim, parallel
from jax_cifar.evaluation import tta
from jax_cifar import state as state_lib
from jax_cifar.evaluation import inference
from jax_cifar.state import predict_step


def _numpy_view(x: np.ndarray, flip: int, dy: int, dx: int, pad_mode: str) -> np.ndarray:
  """out[:, i, j] = mirrored(x)[:, i - dy, j - dx]; outside the image: 0, or the mirror image
  across the border pixel (numpy's 'reflect': ... x[2], x[1] | x[0], x[1], ...)."""
  if flip:
    x = x[:, :, ::-1]
  h, w = x.shape[1:3]

  def source(index, size):
    if pad_mode == 'reflect':
      index = np.abs(index)
      return np.where(index >= size, 2 * (size - 1) - index, index), np.ones(size, bool)
    return np.clip(index, 0, size - 1), (index >= 0) & (index < size)

  rows, row_ok = source(np.arange(h) - dy, h)
  cols, col_ok = source(np.arange(w) - dx, w)
  out = x[:, rows][:, :, cols]
  return out * (row_ok[:, None] & col_ok[None, :])[None, :, :, None].astype(x.dtype)


def test_view_tables_list_the_documented_views():
  assert tta.view_table('none').tolist() == [[0, 0, 0]]
  assert tta.view_table('flip').tolist() == [[0, 0, 0], [1, 0, 0]]
  shifts = tta.view_table('shifts')
  assert len(shifts) == 18 and len({tuple(r) for r in shifts}) == 18
  assert {tuple(r) for r in shifts} == {(f, dy, dx) for f in (0, 1) for dy in (-2, 0, 2)
                                        for dx in (-2, 0, 2)}
  with pytest.raises(ValueError, match='none, flip, shifts'):
    tta.view_table('rotate')


@pytest.mark.parametrize('pad_mode', ['constant', 'reflect'])
def test_every_view_is_the_numpy_flip_and_shift_of_the_input(pad_mode):
  images = np.random.default_rng(0).integers(1, 256, (3, 32, 32, 3), np.uint8)  # No zeros.
  make = jax.jit(lambda x, f, dy, dx: tta.make_view(x, f, dy, dx, pad_mode))
  for flip, dy, dx in tta.view_table('shifts'):
    got = np.asarray(make(images, flip, dy, dx))
    np.testing.assert_array_equal(got, _numpy_view(images, flip, dy, dx, pad_mode),
                                  err_msg=str((flip, dy, dx)))
  # Direction: (dy, dx) = (2, -2) moves the content down 2 and left 2, zeros enter at the top.
  got = np.asarray(make(images, 0, 2, -2))
  np.testing.assert_array_equal(got[:, 2:, :30], images[:, :30, 2:])
  if pad_mode == 'constant':
    assert not got[:, :2].any() and not got[:, :, 30:].any()


def _random_model(config):
  """A randomly initialised model, no checkpoint: the averaging arithmetic, not the training."""
  mesh = parallel.make_mesh()
  tx, _ = optim.make_optimizer(config.optim, total_steps=1, steps_per_epoch=1)
  state, graphdef = state_lib.init_state(config, tx, mesh)
  return state, graphdef, mesh


@pytest.fixture(scope='module')
def small():
  config = default.get_config()
  config.model.name, config.model.stem, config.model.width = 'resnet18', 'cifar', 4
  config.train.eval_batch_size = 32
  return (config,) + _random_model(config)


def _shifts_and_numpy_views(config, state, graphdef, mesh, images, pad_mode, average='probs'):
  """(`--tta shifts`' log-probabilities, the softmax of each NumPy-made view [18, N, C])."""
  with jax.default_matmul_precision('highest'):
    predictor = inference.Predictor(state, mesh, 32, inference.make_predict(
        config, graphdef, mesh, tta_mode='shifts', tta_average=average), None)
    got = predictor.run(images, desc=f'shifts {pad_mode}')
    views = np.concatenate([_numpy_view(images, *row, pad_mode)
                            for row in tta.view_table('shifts')])
    logits = np.asarray(jax.jit(lambda s, x: predict_step(
        s.params, s.batch_stats, x, graphdef=graphdef, config=config))(state, views))
  return got, np.asarray(jax.nn.softmax(logits)).reshape(18, len(images), -1)


def test_shifts_prediction_is_the_mean_softmax_of_the_18_numpy_views(small):
  images = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), np.uint8)  # 2 batches.
  got, probs = _shifts_and_numpy_views(*small, images, 'constant')
  np.testing.assert_allclose(np.exp(got), probs.mean(0), rtol=1e-4, atol=1e-7)
  assert np.abs(np.exp(got) - probs[0]).max() > 1e-4  # The views differ: averaging did something.


def test_log_probs_average_is_the_renormalised_mean_log_softmax_of_the_18_numpy_views(small):
  """--tta_average log_probs: the views' log-softmax averaged, then renormalised (the normalised
  geometric mean of their softmax), not the log of their mean softmax."""
  images = np.random.default_rng(4).integers(0, 256, (40, 32, 32, 3), np.uint8)
  got, probs = _shifts_and_numpy_views(*small, images, 'constant', average='log_probs')
  mean_log = np.log(probs.astype(np.float64)).mean(0)
  expected = mean_log - np.log(np.exp(mean_log).sum(-1, keepdims=True))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  assert np.abs(got - np.log(probs.mean(0))).max() > 1e-4  # Not the mean of the probabilities.
  with pytest.raises(ValueError, match=r"average must be one of probs, log_probs, got 'logits'"):
    tta.mean_log_probs(lambda x: x, jnp.zeros((1, 32, 32, 3)), 'flip', average='logits')


def test_flip_equals_the_old_tta_flip_formula_and_the_alias(small):
  config, state, graphdef, mesh = small
  images = np.random.default_rng(2).integers(0, 256, (32, 32, 32, 3), np.uint8)
  repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)

  def old_tta_flip(params, batch_stats, batch):  # evaluate._log_probs before --tta existed.
    log_p = jax.nn.log_softmax(predict_step(params, batch_stats, batch['image'],
                                            graphdef=graphdef, config=config))
    flipped = predict_step(params, batch_stats, batch['image'][:, :, ::-1], graphdef=graphdef,
                           config=config)
    return jnp.logaddexp(log_p, jax.nn.log_softmax(flipped)) - jnp.log(2.0)

  batch = parallel.to_global({'image': images}, data)
  old = np.asarray(jax.jit(old_tta_flip, in_shardings=(repl, repl, data))(
      state.params, state.batch_stats, batch))
  new = np.asarray(inference.make_predict(config, graphdef, mesh, tta_mode='flip')(
      state.params, state.batch_stats, batch))
  alias = np.asarray(inference.make_predict(config, graphdef, mesh, tta_flip=True)(
      state.params, state.batch_stats, batch))
  # Same float32 operations in a different XLA program (a scan over views): equal up to float32
  # rounding of log-probs of magnitude ~log(100) (measured on XLA:CPU: bitwise equal).
  np.testing.assert_allclose(new, old, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(alias, new)  # Its flag's rules: the test below.


def test_the_old_tta_flip_alias_agrees_with_none_and_flip_and_contradicts_the_rest():
  """--tta_flip means --tta flip: given with --tta flip (or the default none) it is flip, with
  shifts it is refused, and an unknown mode is named (a mutation audit: refusing `--tta flip
  --tta_flip`, which agree, passed every test)."""
  assert inference.resolve_tta('flip', True) == inference.resolve_tta('none', True) == 'flip'
  assert [inference.resolve_tta(m, False) for m in tta.MODES] == list(tta.MODES)
  with pytest.raises(ValueError, match=r'--tta_flip \(= --tta flip\) contradicts --tta shifts'):
    inference.resolve_tta('shifts', True)
  with pytest.raises(ValueError, match=r"--tta \(tta_mode\) must be one of .*, got 'flips'"):
    inference.resolve_tta('flips', False)
  for mode in ('flip', 'shifts'):
    for average in tta.AVERAGES:
      inference.check_tta_average(average, mode)
  inference.check_tta_average('probs', 'none')  # The default, whatever the views ...
  with pytest.raises(ValueError, match=r'^--tta_average probs: used only with --tta flip or'):
    inference.check_tta_average('probs', 'none', given=True)  # ... unless given on the command.
  with pytest.raises(ValueError, match=r'^--tta_average log_probs: used only with --tta flip or'):
    inference.check_tta_average('log_probs', 'none')
  with pytest.raises(ValueError, match=r"^--tta_average \(tta_average\) must be one of probs, "
                                       r"log_probs, got 'mean'$"):
    inference.check_tta_average('mean', 'shifts')


def test_views_a_run_never_trained_on_are_named():
  """Mirrors are new to a run trained without flips, 2-px shifts to one trained with neither a crop
  of padding >= 2 nor another translating augmentation (a review: the module's claim that shifted
  views are training crops held only for such runs, and configs resnet_basic and simple_cnn
  train without either)."""
  from jax_cifar.configs import ood_best, resnet152, resnet_basic, simple_cnn, smoke
  basic = resnet_basic.get_config().augment.to_dict()
  assert tta.unseen_views('none', basic) == []
  flip, = [line for line in tta.unseen_views('flip', basic) if line.startswith('--tta')]
  assert flip.startswith('--tta flip: this run trained with augment.flip=False')
  lines = tta.unseen_views('shifts', basic)
  assert [line.split(':')[0] for line in lines[:2]] == ['--tta shifts'] * 2
  assert 'augment.crop_padding=0 and nothing else that translates' in lines[1]
  assert lines[2] == 'compare the validation numbers with --tta none before relying on these views'
  assert len(tta.unseen_views('shifts', simple_cnn.get_config().augment.to_dict())) == 3
  for module in (smoke, resnet152, ood_best):  # Crops of padding 4 and flips: nothing to say.
    augment = module.get_config().augment.to_dict()
    assert [tta.unseen_views(m, augment) for m in tta.MODES] == [[]] * 3, module.__name__
  one_px = dict(basic, flip=True, crop_padding=1)
  assert len(tta.unseen_views('shifts', one_px)) == 2 and not tta.unseen_views('flip', one_px)
  for other in ({'rrc_prob': 0.5}, {'policy': 'autoaugment_cifar10'}, {'augmix': True}):
    assert not tta.unseen_views('shifts', {**one_px, **other}), other  # They translate too.


def test_output_tags_name_every_mode():
  tags = {evaluate.output_tag('best', m, a) for m in tta.MODES for a in (False, True)}
  assert len(tags) == 6
  assert evaluate.output_tag('best', 'shifts') == 'best_tta-shifts'
  assert evaluate.output_tag('best', 'shifts', tta_average='log_probs') == 'best_tta-shifts-logp'
  assert evaluate.output_tag('/x/ckpt/12', 'flip', True) == 'step12_tta-flip_bn-adapt'
  # A step folder (or its orbax item) is tagged by its step: two steps never share files.
  assert evaluate.output_tag('/x/ckpt/012/default') == 'step12'
  assert evaluate.output_tag('/x/my_export') == 'path'
  assert evaluate.output_tag('latest') == 'latest'


def test_shifts_of_a_reflect_padded_run_average_reflect_padded_views(small):
  """A run trained with augment.crop_mode='reflect' gets reflect-padded TTA views in every view
  of the scan, not only the first (zero-padded views would score the model on images unlike
  those it was trained on)."""
  config, state, graphdef, mesh = small
  config = copy.deepcopy(config)
  config.augment.crop_mode = 'reflect'
  images = np.random.default_rng(3).integers(0, 256, (32, 32, 32, 3), np.uint8)
  got, probs = _shifts_and_numpy_views(config, state, graphdef, mesh, images, 'reflect')
  np.testing.assert_allclose(np.exp(got), probs.mean(0), rtol=1e-4, atol=1e-7)


def test_predictions_of_many_batches_come_back_in_row_order(small):
  """Five batches of 8 (more than the prefetch queue holds) give, row by row, what one batch of
  40 gives: a batch yielded out of order would pair CSV rows with other images."""
  config, state, graphdef, mesh = small
  images = np.random.default_rng(4).integers(0, 256, (40, 32, 32, 3), np.uint8)
  predict = inference.make_predict(config, graphdef, mesh)
  with jax.default_matmul_precision('highest'):
    whole = inference.Predictor(state, mesh, 40, predict, None).run(images, desc='one batch')
    batched = inference.Predictor(state, mesh, 8, predict, None).run(images, desc='5 batches')
  np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-5)
