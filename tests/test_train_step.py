"""Loss, mixup/CutMix targets and the optimizer chain against NumPy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import require_module
from jax_cifar.configs import default
from jax_cifar import errors, optim, parallel
from jax_cifar.augment import mixing
from jax_cifar.training import train_step
from jax_cifar import state as state_lib


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_mixup_with_label_smoothing_targets_sum_to_one_and_loss_matches_numpy():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 100, size=16)
  images = jnp.asarray(rng.normal(size=(16, 8, 8, 3)), jnp.float32)
  targets = mixing.smooth_one_hot(jnp.asarray(labels), 100, 0.1)
  mixed, mixed_targets, lam = mixing.mix_batch(jax.random.PRNGKey(3), images, targets,
                                               mixup_alpha=0.4, cutmix_alpha=0.0)
  lam = float(lam)
  assert 0.0 < lam < 1.0
  np.testing.assert_allclose(np.asarray(mixed_targets).sum(-1), 1.0, rtol=1e-6)
  # NumPy reference: smoothed one-hot, mixed with the mirrored batch.
  one_hot = np.eye(100)[labels] * 0.9 + 0.1 / 100
  ref_targets = lam * one_hot + (1 - lam) * one_hot[::-1]
  np.testing.assert_allclose(mixed_targets, ref_targets, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(mixed, lam * np.asarray(images) + (1 - lam) * np.asarray(images)[::-1],
                             rtol=1e-5, atol=1e-6)
  logits = rng.normal(size=(16, 100)).astype(np.float32) * 3
  loss = train_step.cross_entropy(jnp.asarray(logits), mixed_targets)
  ref_loss = -(ref_targets * _np_log_softmax(logits.astype(np.float64))).sum(-1)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)


@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.35])
def test_label_smoothing_loss_equals_torch_cross_entropy_with_label_smoothing(smoothing):
  """smooth_one_hot follows torch's convention: (1 - a) * one_hot + a / K over all K classes."""
  torch = require_module('torch')
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 100, size=32)
  logits = rng.normal(size=(32, 100)).astype(np.float32) * 3
  targets = mixing.smooth_one_hot(jnp.asarray(labels), 100, smoothing)
  np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, rtol=1e-6)
  ours = train_step.cross_entropy(jnp.asarray(logits), targets)
  ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels),
                                          label_smoothing=smoothing, reduction='none').numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_cutmix_lambda_equals_the_pasted_area():
  images = jnp.stack([jnp.full((32, 32, 3), float(i)) for i in range(4)])
  targets = mixing.smooth_one_hot(jnp.arange(4), 10, 0.0)
  for seed in range(20):
    mixed, mixed_targets, lam = mixing.mix_batch(jax.random.PRNGKey(seed), images, targets,
                                                 mixup_alpha=0.0, cutmix_alpha=1.0)
    pasted = float(np.mean(np.asarray(mixed[0, :, :, 0]) != 0.0))  # Partner of image 0 is image 3.
    assert float(lam) == pytest.approx(1.0 - pasted, abs=1e-6)
    np.testing.assert_allclose(mixed_targets[0, 0], lam, atol=1e-6)
    np.testing.assert_allclose(mixed_targets[0, 3], 1 - lam, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mixed_targets).sum(-1), 1.0, rtol=1e-6)


def test_cutmix_box_covers_about_one_minus_lam():
  """A box of side H * sqrt(1 - lam) (timm's rand_bbox): for lam = 0.9, 10 x 10 of 32 x 32, less
  only where the border clips it (sqrt(lam) instead, symmetric in Beta(a, a), had passed every
  test: a mutation audit)."""
  lams = [float(mixing.cutmix_box(jax.random.PRNGKey(s), jnp.float32(0.9), 32, 32)[1])
          for s in range(20)]
  assert min(lams) >= 0.9 and max(lams) <= 0.96
  assert lams.count(pytest.approx(1 - 100 / 1024)) >= 5  # Unclipped boxes: exactly 10 x 10.


def test_switch_prob_is_the_probability_of_cutmix():
  """With mixup and CutMix both on, each batch takes CutMix with probability switch_prob (timm's
  meaning; the inverted comparison passed at the default 0.5: a mutation audit)."""
  images = jnp.stack([jnp.full((8, 8, 3), float(i)) for i in range(4)])
  targets = mixing.smooth_one_hot(jnp.arange(4), 10, 0.0)

  @jax.jit
  def is_cutmix(key, switch_prob):  # CutMix pastes pixels (image 0 holds only 0 and 3).
    mixed = mixing.mix_batch(key, images, targets, mixup_alpha=1.0, cutmix_alpha=1.0,
                             switch_prob=switch_prob)[0]
    return jnp.all((mixed[0] == 0.0) | (mixed[0] == 3.0))

  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  share = lambda p: float(np.mean([is_cutmix(k, p) for k in keys]))
  assert share(1.0) == 1.0 and share(0.0) == 0.0
  assert abs(share(0.9) - 0.9) < 0.05  # 400 batches: a standard error of 0.015.


def test_mix_batch_refuses_integer_labels_and_uint8_images():
  """timm's Mixup takes integer labels; mix_batch had mixed them as numbers (3 and 42 -> 12.9)."""
  images, soft = jnp.zeros((4, 8, 8, 3)), mixing.smooth_one_hot(jnp.array([3, 7, 11, 42]), 50, 0.1)
  mix = functools.partial(mixing.mix_batch, jax.random.PRNGKey(0), mixup_alpha=0.2, cutmix_alpha=0.0)
  with pytest.raises(TypeError, match=r'soft targets \[B, K\] for the 4 images .*got int32 \[4\]'):
    mix(images, jnp.array([3, 7, 11, 42]))
  with pytest.raises(TypeError, match=r'got float32 \[3, 50\]'):
    mix(images, soft[:3])
  with pytest.raises(TypeError, match=r'float images \[B, H, W, C\].*got uint8'):
    mix(images.astype(jnp.uint8), soft)
  assert mix(images, soft)[1].shape == (4, 50)


def test_mix_batch_is_identity_when_disabled():
  images = jnp.ones((4, 8, 8, 3))
  targets = mixing.smooth_one_hot(jnp.arange(4), 10, 0.1)
  out_images, out_targets, lam = mixing.mix_batch(jax.random.PRNGKey(0), images, targets,
                                                  mixup_alpha=0.0, cutmix_alpha=0.0)
  assert out_images is images and out_targets is targets and float(lam) == 1.0


def _tiny_params():
  from jax_cifar import models
  model = models.create_model('resnet18', 10, stem='cifar', width=4, rngs=nnx.Rngs(0))
  return nnx.split(model, nnx.Param, ...)[1]


def test_weight_decay_skips_batchnorm_and_biases():
  params = _tiny_params()
  mask = optim.decay_mask(params)
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert any('bn1' in k for k in flat) and any("'fc'" in k for k in flat)
  for key, decayed in flat.items():
    is_kernel = 'kernel' in key
    assert decayed == is_kernel, key


def test_backbone_freeze_keeps_backbone_and_trains_head():
  c = default.get_config().optim
  c.freeze_backbone_steps = 3
  c.backbone_lr_mult = 0.1
  c.warmup_epochs = 0.0
  params = _tiny_params()
  tx, _ = optim.make_optimizer(c, total_steps=10, steps_per_epoch=10)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, state, params)  # One program, not one per leaf op.
  groups = optim.param_groups(params)
  for update, group in zip(jax.tree.leaves(updates), jax.tree.leaves(groups)):
    if group == 'backbone':
      assert float(jnp.abs(update).max()) == 0.0
    else:
      assert float(jnp.abs(update).max()) > 0.0


def test_head_settings_refuse_a_model_without_an_fc_head_and_a_whole_config_is_named():
  """A model of one's own whose classifier is not `fc` was silently all backbone: the freeze froze
  its head too. And make_optimizer(config) had been AttributeError: 'lr'."""
  class Own(nnx.Module):
    def __init__(self, rngs):
      self.body, self.classifier = nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)

  c = default.get_config()
  c.optim.freeze_backbone_steps, c.optim.warmup_epochs = 3, 0.0
  tx, _ = optim.make_optimizer(c.optim, total_steps=10, steps_per_epoch=10)
  with pytest.raises(errors.ConfigError, match="this model has none .name its classifier 'fc'"):
    tx.init(nnx.split(Own(nnx.Rngs(0)), nnx.Param, ...)[1])
  tx.init(_tiny_params())  # jax_cifar's own models name it fc.
  c.optim.freeze_backbone_steps = 0  # Without head settings, any model.
  optim.make_optimizer(c.optim, 10, 10)[0].init(nnx.split(Own(nnx.Rngs(0)), nnx.Param, ...)[1])
  with pytest.raises(TypeError, match=r'optim section of a config \(config.optim\), not the whole'):
    optim.make_optimizer(c, 10, 10)


def test_schedule_warms_up_then_decays_to_end_value():
  c = default.get_config().optim
  c.lr, c.warmup_epochs, c.end_lr_factor = 1.0, 2.0, 0.0
  sched = optim.make_schedule(c.lr, c, total_steps=100, steps_per_epoch=10)
  assert float(sched(0)) == 0.0
  assert float(sched(20)) == pytest.approx(1.0)
  assert float(sched(10)) == pytest.approx(0.5)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)
  assert float(sched(60)) < float(sched(30))


def test_a_warmup_or_freeze_the_run_is_too_short_for_is_said_and_what_it_becomes():
  """Both had been cut silently (an audit: warmup_epochs=10 on a 4-epoch run ramped the rate up
  for the whole run). The head's schedule spans the run; a frozen backbone's starts after it."""
  c = default.get_config().optim
  c.lr, c.warmup_epochs, c.end_lr_factor = 1.0, 10.0, 0.0
  [note] = optim.schedule_warnings(c, total_steps=40, steps_per_epoch=10)
  assert note.startswith('optim.warmup_epochs=10 is 100 steps, not shorter than the 40 steps')
  assert 'cut to 39 steps' in note and 'rises until the last step' in note
  sched = optim.make_schedule(c.lr, c, total_steps=40, steps_per_epoch=10)
  assert float(sched(39)) == pytest.approx(1.0) and float(sched(20)) < 1.0  # What the note says.
  c.freeze_backbone_steps = 40  # Frozen throughout, and the head's warm-up cut as well.
  notes = optim.schedule_warnings(c, total_steps=40, steps_per_epoch=10)
  assert len(notes) == 2 and 'freeze_backbone_steps=40 is not shorter than the run (40 steps)' in notes[0]
  assert 'cut to 39 steps' in notes[1] and 'backbone' not in notes[1]
  c.warmup_epochs, c.freeze_backbone_steps = 1.0, 25  # 15 steps left for a 10-step warm-up: fine.
  assert optim.schedule_warnings(c, total_steps=40, steps_per_epoch=10) == []
  c.freeze_backbone_steps = 30  # 10 left: the backbone's warm-up takes them all, the head's not.
  [note] = optim.schedule_warnings(c, 40, 10)
  assert "the 10 steps the backbone's learning rate runs: the backbone's warm-up is cut to 9" in note
  tx_sched = optim.make_schedule(c.lr, c, 40, 10, delay_steps=30)
  assert float(tx_sched(39)) == pytest.approx(1.0)  # The backbone's rate still rising at the end.
  assert float(optim.make_schedule(c.lr, c, 40, 10)(39)) < 0.01  # The head's decayed.
  c.freeze_backbone_steps, c.warmup_epochs = 0, 0.0
  assert optim.schedule_warnings(c, total_steps=40, steps_per_epoch=10) == []


def test_the_logged_learning_rate_is_the_one_the_update_used():
  """metrics['learning_rate'] of step s is schedule(s), the rate of that step's update: 0 at the
  first step of a warm-up, whose update is then zero (logging schedule(s + 1) passed every test:
  a mutation audit)."""
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width, c.model.num_classes = 'resnet18', 'cifar', 4, 10
  c.train.batch_size, c.optim.warmup_epochs = 8, 1.0
  tx, schedule = optim.make_optimizer(c.optim, total_steps=20, steps_per_epoch=4)
  state, graphdef = state_lib.init_state(c, tx, parallel.make_mesh())
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (8, 32, 32, 3), np.uint8),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  step = jax.jit(lambda s, b: train_step.train_step(s, b, graphdef=graphdef, tx=tx,
                                                    schedule=schedule, config=c))
  for s in range(3):
    state, metrics = step(state, batch)
    # To float32 rounding: XLA may compute the schedule inside the step in another order (jax
    # 0.12 differs in the last bit); the next step's rate is at least 1.5 times this one.
    np.testing.assert_allclose(float(metrics['learning_rate']), float(schedule(s)), rtol=1e-6,
                               err_msg=f'step {s}')
    assert (float(metrics['update_norm']) == 0.0) == (s == 0), (s, float(metrics['update_norm']))
  assert float(schedule(1)) > 0


def test_clipping_bounds_the_global_norm():
  c = default.get_config().optim
  c.name, c.grad_clip_norm, c.weight_decay, c.momentum = 'sgd', 0.5, 0.0, 0.0
  c.schedule, c.warmup_epochs, c.lr = 'constant', 0.0, 1.0
  params = {'w': jnp.zeros((3, 3))}
  tx, _ = optim.make_optimizer(c, total_steps=10, steps_per_epoch=10)
  updates, _ = tx.update({'w': jnp.full((3, 3), 10.0)}, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)


def test_augmix_jsd_step_loss_is_clean_cross_entropy_plus_weighted_jsd_over_one_bn_batch():
  """The step's loss with augment.augmix_jsd_weight: CE on the clean view + w * JSD of the three
  views' logits, all three views through BatchNorm as one batch (as the AugMix paper)."""
  from jax_cifar import parallel  # pylint: disable=g-import-not-at-top
  from jax_cifar.augment import augmix
  from jax_cifar.augment import pipeline as augment
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width, c.model.num_classes = 'resnet18', 'cifar', 4, 10
  c.augment.augmix, c.augment.augmix_jsd_weight = True, 12.0
  c.optim.label_smoothing = 0.1
  c.train.batch_size = 8
  mesh = parallel.make_mesh()
  tx, schedule = optim.make_optimizer(c.optim, 10, 10)
  state, graphdef = state_lib.init_state(c, tx, mesh)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (8, 32, 32, 3), np.uint8),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  _, metrics = jax.jit(lambda s, b: train_step.train_step(
      s, b, graphdef=graphdef, tx=tx, schedule=schedule, config=c))(state, batch)
  # Reference: the same views and model, assembled by hand.
  key = jax.random.split(jax.random.fold_in(state.rng, state.step))[0]
  views = augment.jsd_views(key, jnp.asarray(batch['image']), c.augment)
  assert not np.array_equal(views[1], views[2])  # Two different AugMix draws.
  model = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)
  logits = model(state_lib.model_input(jnp.concatenate(views), c, jnp.float32), train=True)
  clean, one, two = jnp.split(logits, 3)
  targets = mixing.smooth_one_hot(jnp.asarray(batch['label']), 10, 0.1)
  want = train_step.cross_entropy(clean, targets).mean() + 12.0 * augmix.jsd_loss(clean, one, two)
  np.testing.assert_allclose(metrics['train_loss'], want, rtol=1e-5)
  jsd_part = float(want - train_step.cross_entropy(clean, targets).mean())
  assert jsd_part > 1e-4  # The views disagree, so the consistency term is really there.


def test_the_steps_keys_are_not_the_initialisers_keys():
  """The base key was key(seed), and nnx.Rngs(seed) hands the i-th initialiser fold_in(key(seed),
  i): step s drew its augmentation and mixup bits from the s-th parameter initialiser's key (an
  audit). The steps' keys now come from a stream of their own."""
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width, c.model.num_classes = 'resnet18', 'cifar', 4, 10
  tx, _ = optim.make_optimizer(c.optim, 10, 10)
  state = state_lib._new_state(c, tx, {}, {})  # pylint: disable=protected-access
  rngs = nnx.Rngs(c.seed)
  init_keys = {tuple(np.asarray(jax.random.key_data(rngs.params()))) for _ in range(64)}
  base = np.asarray(state_lib.train_key(c.seed))
  step_keys = {tuple(np.asarray(jax.random.fold_in(base, s))) for s in range(64)}
  assert len(init_keys) == len(step_keys) == 64 and not init_keys & step_keys
  assert not init_keys & {tuple(base)}
  np.testing.assert_array_equal(state.rng, base)  # The key a new run's state stores.


def test_train_accuracy_scores_each_mixed_image_against_its_larger_label_share():
  """Under mixup, an image that is mostly its partner counts as right when the model names the
  partner's label. It had been scored against its own label: in a batch drawn with lam < 1/2,
  every such prediction counted as wrong (a fidelity audit). The labels are chosen from the
  model's predictions on the step's own mixed images, so only the partner's reading scores 1."""
  from jax_cifar import parallel  # pylint: disable=g-import-not-at-top
  from jax_cifar.augment import pipeline as augment
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width, c.model.num_classes = 'resnet18', 'cifar', 4, 10
  c.augment.mixup_alpha, c.train.batch_size = 0.4, 8
  tx, schedule = optim.make_optimizer(c.optim, 10, 10)
  state, graphdef = state_lib.init_state(c, tx, parallel.make_mesh())
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
  targets = mixing.smooth_one_hot(jnp.zeros(8, jnp.int32), 10, 0.0)  # lam does not depend on them.
  for step in range(20):  # A step whose draw mixes each image mostly with its partner.
    k_aug, k_mix = jax.random.split(jax.random.fold_in(state.rng, step))
    x = state_lib.model_input(augment.augment_batch(k_aug, jnp.asarray(images), c.augment), c,
                              jnp.float32)
    mixed, _, lam = mixing.mix_batch(k_mix, x, targets, mixup_alpha=0.4, cutmix_alpha=0.0)
    if float(lam) < 0.4:
      break
  assert float(lam) < 0.4
  model = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)
  predicted = np.asarray(jnp.argmax(model(mixed, train=True), -1))
  labels = predicted[::-1].astype(np.int32)  # Image i is mostly image 7-i: labelled as predicted.
  assert not np.array_equal(labels, predicted)  # Its own label would score below 1.
  _, metrics = jax.jit(lambda s, b: train_step.train_step(
      s, b, graphdef=graphdef, tx=tx, schedule=schedule, config=c))(
          state.replace(step=jnp.asarray(step, state.step.dtype)),
          {'image': images, 'label': labels})
  assert float(metrics['train_accuracy']) == 1.0


@pytest.mark.parametrize('scale', [np.nan, 1e20, 'one_channel'],
                         ids=['nan', 'overflowing_statistics', 'one_overflowing_channel'])
def test_a_skipped_step_keeps_the_batchnorm_statistics_and_their_ema(monkeypatch, scale):
  """A step whose forward pass is non-finite is skipped whole: its NaN BatchNorm statistics never
  reach the running ones (nor their EMA), which evaluation would then read as a model of NaNs.
  Inputs of 1e20 (as a weight of that size makes them): the batch variance overflows to inf while
  the normalised outputs, the loss and the gradients stay finite. That step had been applied, and
  the run saved a `best` whose running variance was inf, which evaluate then refused (a numerics
  review). It is now a non-finite step like any other: skipped, counted; also when one channel of
  one BatchNorm overflows (a kernel's output channel of 1e20: every other statistic finite)."""
  from jax_cifar import parallel  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'cifar', 4
  c.ema.decay = 0.9
  tx, schedule = optim.make_optimizer(c.optim, 10, 10)
  state, graphdef = state_lib.init_state(c, tx, parallel.make_mesh())
  if scale == 'one_channel':
    grow = lambda path, v: (v.at[..., 0].multiply(1e20) if jax.tree_util.keystr(path).startswith(
        "['conv1']['kernel']") else v)
    state = state.replace(params=jax.tree_util.tree_map_with_path(grow, state.params))
  else:
    real = train_step.model_input
    monkeypatch.setattr(train_step, 'model_input', lambda *a: real(*a) * scale)
  step = jax.jit(functools.partial(train_step.train_step, graphdef=graphdef, tx=tx,
                                   schedule=schedule, config=c))
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 32, 32, 3), np.uint8),
           'label': rng.integers(0, 100, 16).astype(np.int32)}
  new, metrics = step(state, batch)
  if isinstance(scale, str) or not np.isnan(scale):
    assert np.isfinite(float(metrics['train_loss'])) and np.isfinite(float(metrics['grad_norm']))
  assert int(new.nonfinite_steps) == 1 and int(new.first_nonfinite_step) == 0
  for before, after in ((state.batch_stats, new.batch_stats),
                        (state.ema_batch_stats, new.ema_batch_stats)):
    for a, b in zip(jax.tree.leaves(jax.device_get(before)), jax.tree.leaves(jax.device_get(after)),
                    strict=True):
      np.testing.assert_array_equal(a, b)
