"""The robustness augmentations inside `augment.augment_batch`: off means the pipeline of before
(same pixels, same program), each is gated by its probability, everything on gives the same
pixels on 8 devices as on 1, and no training augmentation shares code with the held-out
corruptions of jax_cifar.corrupt."""

import os
import pickle
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cifar.configs import default
from jax_cifar.augment import pipeline as augment
from jax_cifar.augment import autoaugment as aa

NUM_IMAGES = 64
ROBUST_KEYS = ('augmix', 'augmix_severity', 'augmix_width', 'augmix_depth', 'augmix_alpha',
               'augmix_jsd_weight', 'rrc_prob', 'rrc_scale', 'rrc_ratio', 'color_jitter_prob',
               'color_jitter', 'blur_prob', 'blur_kernel', 'blur_sigma', 'jpeg_prob',
               'jpeg_quality', 'noise_prob', 'noise_std')
EVERYTHING_ON = dict(crop_mode='reflect', policy='autoaugment_cifar10', erasing_prob=0.25,
                     augmix=True, augmix_width=2, rrc_prob=0.5, color_jitter_prob=0.8,
                     blur_prob=0.5, jpeg_prob=0.5, noise_prob=0.5)


@pytest.fixture(scope='module')
def images(cifar_dir) -> np.ndarray:
  with open(cifar_dir / 'cifar-100-python' / 'test', 'rb') as f:
    data = pickle.load(f, encoding='latin1')['data'][400:400 + NUM_IMAGES]
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _cfg(**overrides):
  cfg = default.get_config().augment
  cfg.update(overrides)
  return cfg


def _run(cfg, key, images):
  f = jax.jit(lambda k, x: augment.augment_batch(k, x, cfg))
  return np.asarray(f(key, jnp.asarray(images)))


def _as_before(key, images, cfg):
  """The pipeline before the robustness augmentations: one uniform vector per example for crop,
  flip, policy and erasing, in that layout (what exact resume of older runs relies on)."""
  def one(k, x):
    n_policy = aa.num_draws(cfg.policy, cfg.randaugment_num_ops)
    u = jax.random.uniform(k, (3 + n_policy + augment._ERASING_DRAWS,))  # pylint: disable=protected-access
    if cfg.crop_padding:
      x = augment._crop_draws(u[0:2], x, cfg.crop_padding, cfg.crop_mode)  # pylint: disable=protected-access
    if cfg.flip:
      x = jnp.where(u[2] < 0.5, x[:, ::-1], x)
    x = aa.apply_policy_draws(u[3:3 + n_policy], x, cfg.policy, num_ops=cfg.randaugment_num_ops,
                              magnitude=cfg.randaugment_magnitude)
    if cfg.erasing_prob > 0:
      x = augment._erase_draws(u[3 + n_policy:], x, cfg.erasing_prob)  # pylint: disable=protected-access
    return x
  return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)


def test_robustness_augmentations_off_leave_pixels_and_program_as_before(images):
  cfg = _cfg(crop_mode='reflect', policy='randaugment', erasing_prob=0.5)
  key, x = jax.random.key(0), jnp.asarray(images)
  new = jax.make_jaxpr(lambda k, x: augment.augment_batch(k, x, cfg))(key, x)
  old = jax.make_jaxpr(lambda k, x: _as_before(k, x, cfg))(key, x)
  assert str(new) == str(old)  # disabled augmentations compile to nothing
  np.testing.assert_array_equal(_run(cfg, key, images), jax.jit(
      lambda k, x: _as_before(k, x, cfg))(key, x))
  older = _cfg(crop_mode='reflect', policy='randaugment', erasing_prob=0.5)
  for k in ROBUST_KEYS:  # a config written before these keys existed
    del older[k]
  assert str(jax.make_jaxpr(lambda k, x: augment.augment_batch(k, x, older))(key, x)) == str(new)


@pytest.mark.parametrize('name,on', [
    ('blur', dict(blur_prob=0.5)), ('rrc', dict(rrc_prob=0.5)), ('jpeg', dict(jpeg_prob=0.5)),
    ('noise', dict(noise_prob=0.5)), ('color_jitter', dict(color_jitter_prob=0.5))])
def test_each_augmentation_applies_to_about_its_probability_of_images(images, name, on):
  """Crop/flip draws are untouched by turning one on, so an image is either the crop/flip output
  or changed; about half change. For blur: the changed ones are exactly those of probability 1."""
  key = jax.random.key(1)
  base, half = _run(_cfg(), key, images), _run(_cfg(**on), key, images)
  changed = np.array([not np.array_equal(a, b) for a, b in zip(base, half)])
  assert 12 <= changed.sum() <= 52, changed.sum()
  if name == 'blur':
    full = _run(_cfg(blur_prob=1.0), key, images)
    np.testing.assert_array_equal(half[changed], full[changed])
    assert np.mean([not np.array_equal(a, b) for a, b in zip(base, full)]) > 0.9


def test_bad_static_ranges_name_the_key(images):
  for overrides, key in ((dict(jpeg_prob=1.0, jpeg_quality=(0, 50)), 'jpeg_quality'),
                         (dict(blur_prob=1.0, blur_sigma=(0.0, 1.0)), 'blur_sigma'),
                         (dict(rrc_prob=1.0, rrc_scale=(0.5, 1.5)), 'rrc_scale')):
    with pytest.raises(ValueError, match=key):
      augment.augment_batch(jax.random.key(0), jnp.asarray(images[:2]), _cfg(**overrides))


def test_entry_points_name_a_batch_a_single_image_or_float_pixels_and_list_the_policies():
  """A batch given to a one-image op had failed inside it ("too many values to unpack"), float
  pixels with a lax.select dtype error, and an unknown policy with KeyError: 'autoaugment'."""
  from jax_cifar.augment import augmix  # pylint: disable=import-outside-toplevel
  key = jax.random.key(0)
  batch = jax.random.randint(key, (2, 32, 32, 3), 0, 256).astype(jnp.uint8)  # (No data needed.)
  one_image = r'uint8 images \[H, W, 3\] \(one image: jax.vmap it over a batch'
  with pytest.raises(ValueError, match=one_image + r'.*got shape \[2, 32, 32, 3\]'):
    augmix.augmix(key, batch)
  with pytest.raises(ValueError, match=one_image):
    aa.apply_policy(key, batch, 'randaugment')
  with pytest.raises(TypeError, match='apply_policy takes uint8 images .*got float32'):
    aa.apply_policy(key, batch[0].astype(jnp.float32), 'randaugment')
  with pytest.raises(ValueError, match="policy 'autoaugment': one of none, autoaugment_cifar10"):
    aa.apply_policy(key, batch[0], 'autoaugment')
  with pytest.raises(ValueError, match=r'augment_batch takes uint8 images \[B, H, W, 3\], got '
                     r'shape \[32, 32, 3\]'):
    augment.augment_batch(key, batch[0], _cfg())
  with pytest.raises(TypeError, match='jsd_views takes uint8 images'):
    augment.jsd_views(key, batch.astype(jnp.float32), _cfg())
  assert augmix.augmix(key, batch[0]).shape == (32, 32, 3)  # One image, as documented.


# ----------------------------------------------------------------------------- sharding

_SHARDED = textwrap.dedent('''
    import json, sys, numpy as np, jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jax_cifar.configs import default
    from jax_cifar.augment import pipeline as augment
    cfg = default.get_config().augment
    cfg.update(json.loads(sys.argv[3]))
    x = np.load(sys.argv[2])
    assert jax.device_count() == 8, jax.devices()
    f = jax.jit(lambda k, x: augment.augment_batch(k, x, cfg))
    views = jax.jit(lambda k, x: augment.jsd_views(k, x, cfg))
    one = f(jax.random.key(11), jax.device_put(x, jax.devices()[0]))
    one_views = views(jax.random.key(11), jax.device_put(x, jax.devices()[0]))
    xs = jax.device_put(x, NamedSharding(Mesh(np.array(jax.devices()), ('data',)), P('data')))
    many = f(jax.random.key(11), xs)
    assert len(many.sharding.device_set) == 8, many.sharding
    np.testing.assert_array_equal(np.asarray(one), np.asarray(many))
    for a, b in zip(one_views, views(jax.random.key(11), xs)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(one), np.asarray(one_views[1]))
    print('OK', float((np.asarray(one) != x).mean()))
''')


@pytest.mark.slow
def test_everything_on_gives_the_same_pixels_on_8_devices_as_on_1(images, tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  np.save(tmp_path / 'x.npy', images[:32])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # XLA's own flags, as users' runs have: under the suite's FAST_COMPILE_XLA_FLAGS (the older
  # fusion emitters) 11 of 98,304 pixels differed by 1 between 8 devices and 1.
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  run = subprocess.run([sys.executable, '-c', _SHARDED, root, str(tmp_path / 'x.npy'),
                        json.dumps(EVERYTHING_ON)], env=env, capture_output=True, text=True,
                       timeout=600, check=False)
  assert run.returncode == 0 and 'OK' in run.stdout, run.stderr[-3000:]
  assert float(run.stdout.split()[-1]) > 0.5  # the images did change


def test_the_jpeg_quality_is_drawn_uniformly_from_the_whole_inclusive_range():
  """Both ends of augment.jpeg_quality are drawn, each integer equally often (the top one had
  never been drawn with an off-by-one that passed every test: a mutation audit)."""
  cfg = default.get_config().augment
  cfg.jpeg_quality = (20, 22)
  u = jnp.linspace(0.0, 1.0, 3000, endpoint=False)
  quality = np.asarray(jax.vmap(lambda x: augment._jpeg_quality(x, cfg))(u))  # pylint: disable=protected-access
  values, counts = np.unique(quality, return_counts=True)
  assert values.tolist() == [20, 21, 22] and counts.tolist() == [1000, 1000, 1000]
