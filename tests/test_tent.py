"""Test-time entropy minimisation (--tent): PyTorch parity of the adapted BatchNorm parameters,
nothing else changes, padding never counts, chunks are independent, the entropy falls, clear errors.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import _adapt_model
from conftest import require_module
from jax_cifar import errors, parallel
from jax_cifar import state as state_lib
from jax_cifar.augment import pipeline as augment
from jax_cifar.evaluation import bn_adapt, inference, tent


_config, _images = _adapt_model.config, _adapt_model.images


@pytest.fixture(scope='module')
def small():
  return _adapt_model.small_model()


def _flat(tree) -> dict:
  return {k: np.asarray(v) for k, v in nnx.to_flat_state(jax.device_get(tree))}


def _is_bn_affine(path, bn_paths) -> bool:
  return tuple(path[:-1]) in bn_paths


def test_only_batchnorm_scales_and_biases_change_and_the_state_is_left_alone(small):
  config, state, graphdef, mesh = small
  before_params, before_stats = _flat(state.params), _flat(state.batch_stats)
  adapter = tent.TentAdapter(config, graphdef, mesh, tent.TentOptions(batch_size=32),
                             state.params, state.batch_stats)
  params, stats = adapter.adapt_model(state.params, state.batch_stats, _images(1, 50))
  bn_paths = set(bn_adapt.batchnorm_paths(nnx.merge(graphdef, state.params, state.batch_stats)))
  after = _flat(params)
  assert after.keys() == before_params.keys()
  changed = {k for k in after if not np.array_equal(after[k], before_params[k])}
  affine = {k for k in after if _is_bn_affine(k, bn_paths)}
  assert changed == affine and len(affine) == 2 * len(bn_paths) == 40, changed ^ affine
  # The statistics are the --bn_adapt ones of the adapted model: re-estimated on the chunk.
  expected = adapter.bn.adapt(params, state.batch_stats, _images(1, 50))
  for k, v in _flat(stats).items():
    np.testing.assert_allclose(v, _flat(expected)[k], rtol=1e-6, atol=1e-7)
  for k, v in _flat(state.params).items():  # The restored state itself is never modified.
    np.testing.assert_array_equal(v, before_params[k])
  for k, v in _flat(state.batch_stats).items():
    np.testing.assert_array_equal(v, before_stats[k])


def test_a_run_trained_with_remat_adapts_like_one_without(small):
  config, state, graphdef, mesh = small
  remat_config = copy.deepcopy(config)
  remat_config.model.remat = True
  remat_graphdef = nnx.split(nnx.eval_shape(lambda: state_lib.build_model(remat_config)),
                             nnx.Param, ...)[0]
  images, options = _images(2, 50), tent.TentOptions(batch_size=32)
  outs = [tent.TentAdapter(c, g, mesh, options, state.params, state.batch_stats).adapt_model(
      state.params, state.batch_stats, images) for c, g in ((config, graphdef),
                                                            (remat_config, remat_graphdef))]
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_padding_rows_never_count(small):
  """A chunk of 6 images is one batch of 32 with 26 padding rows: the adapted parameters equal one
  Adam step computed on the 6 images alone, with no padding at all."""
  config, state, graphdef, mesh = small
  adapter = tent.TentAdapter(config, graphdef, mesh, tent.TentOptions(batch_size=32),
                             state.params, state.batch_stats)
  images = _images(4, 6)
  params, _ = adapter.adapt_model(state.params, state.batch_stats, images)
  # Reference: the same Adam step on exactly those 6 rows, with no padding at all.
  affine, rest = adapter.split(state.params)
  tx = optax.adam(1e-3)
  batch = {'image': jnp.asarray(images), 'mask': jnp.ones(6, bool)}
  step = tent._step  # pylint: disable=protected-access
  ref, _, loss = step(affine, tx.init(affine), rest, state.batch_stats, batch, graphdef=graphdef,
                      config=config, tx=tx)
  got = _flat(adapter.split(params)[0])
  for k, v in _flat(ref).items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-7)
  # The parameters alone cannot show it (Adam's first step is a sign per parameter, blind to a
  # loss diluted by padding rows): the entropy the chunk reports is that of the 6 rows alone.
  assert adapter.last_entropy == [pytest.approx(float(loss), rel=1e-5)]
  logits = jnp.asarray([[0.0, 0.0], [50.0, 0.0]])
  assert float(tent.mean_entropy(logits, jnp.asarray([True, False]))) == pytest.approx(np.log(2))


def test_chunks_are_adapted_independently_a_b_a(small, monkeypatch):
  """... and the checkpoint is checked for non-finite values once, not once per chunk (a check
  compiled again at every chunk had made --tent 3.5x slower than --bn_adapt on 95 chunks)."""
  config, state, graphdef, mesh = small
  checks = []
  check = state_lib.check_finite
  monkeypatch.setattr(state_lib, 'check_finite', lambda *a: checks.append(check(*a)))
  a, b = _images(2, 40), _images(3, 40, contrast=0.2)
  predictor = inference.Predictor(
      state, mesh, 32, inference.make_predict(config, graphdef, mesh), None,
      tent.TentAdapter(config, graphdef, mesh, tent.TentOptions(batch_size=32), state.params,
                       state.batch_stats))
  out = predictor.run(np.concatenate([a, b, a]), desc='aba', chunk=40)
  np.testing.assert_allclose(out[80:], out[:40], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out[40:80], predictor.run(b, desc='b'), rtol=1e-6, atol=1e-6)
  assert len(checks) == 1  # 4 chunks (a, b, a, then b), one checkpoint.
  bn_only = inference.Predictor(
      state, mesh, 32, inference.make_predict(config, graphdef, mesh), None,
      bn_adapt.BNAdapter(config, graphdef, mesh, 32, state.params, state.batch_stats))
  assert np.abs(out[:40] - bn_only.run(a, desc='a')).max() > 1e-4  # Tent changed more than BN.


def test_a_tent_batch_larger_than_the_chunk_is_the_whole_chunk(small):
  """--tent_batch_size 100000 on a chunk of 40: one batch of the 40 images (rounded up to the
  device count), the same adaptation as a batch of exactly the chunk; each batch had been padded
  to the Tent batch, which ran out of memory (an audit)."""
  config, state, graphdef, mesh = small
  images, whole = _images(4, 40), -(-40 // jax.device_count()) * jax.device_count()
  results, sizes = [], []
  for batch_size in (100_000 * jax.device_count(), whole):
    adapter = tent.TentAdapter(config, graphdef, mesh, tent.TentOptions(batch_size=batch_size),
                               state.params, state.batch_stats)
    step = adapter._step  # pylint: disable=protected-access
    adapter._step = lambda *a, step=step: sizes.append(a[-1]['image'].shape[0]) or step(*a)
    results.append(_flat(adapter.adapt_model(state.params, state.batch_stats, images)[0]))
  assert sizes == [whole, whole]
  for k, v in results[0].items():
    np.testing.assert_array_equal(v, results[1][k])


def test_a_partial_last_batch_counts_its_own_images(small):
  """40 images in Tent batches of 16: the progress bar advances 16, 16, 8, and the chunk's mean
  entropy weighs each batch's mean by its real images (the last counted as a whole batch had
  passed every test: a mutation audit)."""
  config, state, graphdef, mesh = small
  adapter = tent.TentAdapter(config, graphdef, mesh, tent.TentOptions(batch_size=16),
                             state.params, state.batch_stats)
  losses, step = [], adapter._step  # pylint: disable=protected-access

  def recorded(*args):
    out = step(*args)
    losses.append(float(out[2]))
    return out

  adapter._step, progress = recorded, []  # pylint: disable=protected-access
  adapter.adapt_model(state.params, state.batch_stats, _images(4, 40), progress=progress.append)
  assert progress[:3] == [16, 16, 8] and sum(progress) == 40 * adapter.passes
  assert adapter.last_entropy[0] == pytest.approx(np.dot(losses, [16, 16, 8]) / 40, rel=1e-6)


def test_the_entropy_of_the_predictions_falls(small):
  """Three passes over one chunk: each pass's mean entropy is below the one before, and the
  adapted model's predictions are more confident than those of BN adaptation alone."""
  config, state, graphdef, mesh = small
  images = _images(5, 64, contrast=0.5)
  adapter = tent.TentAdapter(config, graphdef, mesh, tent.TentOptions(lr=1e-2, epochs=3,
                                                                      batch_size=32),
                             state.params, state.batch_stats)
  params, stats = adapter.adapt_model(state.params, state.batch_stats, images)
  e = adapter.last_entropy
  assert len(e) == 3 and e[0] > e[1] > e[2], e
  predict = inference.make_predict(config, graphdef, mesh)
  bn_stats = adapter.bn.adapt(state.params, state.batch_stats, images)
  batch = {'image': jnp.asarray(images)}
  mean_entropy = lambda log_p: float(-np.mean(np.sum(np.exp(log_p) * log_p, -1)))
  assert (mean_entropy(np.asarray(predict(params, stats, batch)))
          < mean_entropy(np.asarray(predict(state.params, bn_stats, batch))))


def test_matches_a_pytorch_tent_on_torchvision_resnet18():
  """torchvision ResNet-18 in train mode, Adam (lr 1e-2) on every BatchNorm weight and bias, mean
  softmax entropy, batches of 32, 32, 6 (torch runs the short batch as it is; ours is padded and
  masked), two passes: the adapted scales and biases agree with torch's float64 run."""
  torch, torchvision = require_module('torch'), require_module('torchvision')
  from jax_cifar.convert import torch_to_flax  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  tmodel = torchvision.models.resnet18(num_classes=10).double()
  config = _config(stem='imagenet', width=64, num_classes=10)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: state_lib.build_model(config)))
  nnx.replace_by_pure_dict(state, jax.tree.map(
      jnp.asarray, torch_to_flax({k: v.float() for k, v in tmodel.state_dict().items()},
                                 'resnet18')))
  graphdef, params, stats = nnx.split(nnx.merge(graphdef, state), nnx.Param, ...)
  images = _images(6, 70)
  options = tent.TentOptions(lr=1e-2, epochs=2, batch_size=32)
  adapter = tent.TentAdapter(config, graphdef, parallel.make_mesh(), options, params, stats)
  with jax.default_matmul_precision('float32'):
    adapted, _ = adapter.adapt_model(params, stats, images)
  ours = nnx.merge(graphdef, adapted, stats)

  x = np.asarray(augment.to_model_input(jnp.asarray(images), image_size=32, normalize='cifar',
                                        dtype=jnp.float32)).transpose(0, 3, 1, 2)

  def reference(model):
    """Tent in PyTorch: the BatchNorm weights and biases after two passes, one array per layer."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    opt = torch.optim.Adam([p for m in bns for p in (m.weight, m.bias)], lr=1e-2)
    model.train()
    dtype = next(model.parameters()).dtype
    for _ in range(2):
      for start in (0, 32, 64):
        log_p = torch.log_softmax(model(torch.from_numpy(x[start:start + 32].copy()).to(dtype)), -1)
        loss = -(log_p.exp() * log_p).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().double().numpy() for m in bns for p in (m.weight, m.bias)]

  ref64, ref32 = reference(copy.deepcopy(tmodel)), reference(copy.deepcopy(tmodel).float())
  got = [np.asarray(x, np.float64) for path in bn_adapt.batchnorm_paths(ours)
         for x in (bn_adapt._child(ours, path).scale[...],  # pylint: disable=protected-access
                   bn_adapt._child(ours, path).bias[...])]  # pylint: disable=protected-access
  assert len(got) == len(ref64) == 40
  moved = max(np.abs(r - (1.0 if i % 2 == 0 else 0.0)).max() for i, r in enumerate(ref64))
  worst = max(np.abs(g - r).max() for g, r in zip(got, ref64))
  worst32 = max(np.abs(r32 - r).max() for r32, r in zip(ref32, ref64))
  mean = np.mean(np.concatenate([np.abs(g - r) for g, r in zip(got, ref64)]))
  mean32 = np.mean(np.concatenate([np.abs(r32 - r) for r32, r in zip(ref32, ref64)]))
  print(f'\nlargest change {moved:.2g}; error vs torch float64, worst / mean: ours {worst:.2g} / '
        f'{mean:.2g}, torch float32 {worst32:.2g} / {mean32:.2g}')
  assert moved > 1e-2  # Six Adam steps at lr 1e-2 did move the parameters.
  # Adam divides each gradient by its own size, so a near-zero gradient's float32 rounding can
  # move its parameter by up to 2 lr (torch's own float32 run does): the worst case is held to
  # torch float32's, the mean (which a wrong gradient or mask would move everywhere) tightly.
  assert worst <= 4 * worst32 + 1e-6, (worst, worst32)
  assert mean <= 4 * mean32 + 1e-3 * moved, (mean, mean32)


def test_bad_settings_are_refused_by_name():
  for kwargs, name in (({'lr': 0.0}, '--tent_lr'), ({'lr': float('nan')}, '--tent_lr'),
                       ({'epochs': 0}, '--tent_epochs'), ({'batch_size': 0}, '--tent_batch_size'),
                       # A fuzz: 1e6 adapted to nonsense, 2**40 epochs ran for good.
                       ({'lr': 1e6}, '--tent_lr must be a positive float32 number of at most 10'),
                       ({'lr': 1e-40}, '--tent_lr'),
                       ({'epochs': 2**40}, '--tent_epochs must be 1 to 1000')):
    with pytest.raises(errors.ConfigError, match=name):
      tent.TentOptions(**kwargs)
  tent.TentOptions(lr=10.0, epochs=1000)  # The limits themselves are allowed.
  if jax.device_count() > 1:
    with pytest.raises(errors.ConfigError, match='--tent_batch_size'):
      tent.TentOptions(batch_size=jax.device_count() + 1)


def test_tags_name_the_settings_that_differ_from_the_defaults():
  assert tent.TentOptions().tag() == '_tent'
  assert tent.TentOptions(lr=1e-2, epochs=3).tag() == '_tent-lr0.01-e3'
  assert tent.TentOptions(batch_size=64).tag() == '_tent-b64'


def test_a_model_without_batchnorm_is_refused_by_name():
  config = _config()
  config.model.name = 'simple_cnn'
  model = state_lib.build_model(config)
  graphdef, params, stats = nnx.split(model, nnx.Param, ...)
  assert not bn_adapt.batchnorm_paths(model)  # The premise: simple_cnn has no BatchNorm.
  with pytest.raises(errors.ConfigError, match='--tent needs a model with BatchNorm'):
    tent.TentAdapter(config, graphdef, parallel.make_mesh(), tent.TentOptions(), params, stats)


def test_a_non_finite_entropy_stops_with_a_clear_error(small):
  """A checkpoint with a NaN in one BatchNorm bias: the adapter stops with one line naming the
  causes instead of predicting the chunk with NaN parameters."""
  config, state, graphdef, mesh = small
  params = nnx.from_flat_state([
      (k, v.replace(v[...].at[0].set(jnp.nan)) if k == ('bn1', 'bias') else v)
      for k, v in nnx.to_flat_state(state.params)])
  adapter = tent.TentAdapter(config, graphdef, mesh, tent.TentOptions(batch_size=32), params,
                             state.batch_stats)
  with pytest.raises(errors.UserError, match='non-finite values in the checkpoint'):
    adapter.adapt_model(params, state.batch_stats, _images(7, 40))

