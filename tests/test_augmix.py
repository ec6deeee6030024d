"""AugMix: pixel parity with torchvision's v2.AugMix given the same draws, its tables and weights,
the Jensen-Shannon loss against NumPy and the reference code, and the JSD views.

torchvision's own AugMix.forward runs with its random calls scripted from our draws
(`_sample_dirichlet` is the hook torchvision keeps for tests; torch.randint/rand are replaced
for the call), so its op table, chain loop, op kernels and float32 mixing are the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import real_test_images, require_torch
from jax_cifar.configs import default
from jax_cifar.augment import augmix
from jax_cifar.augment import pipeline as augment
from jax_cifar.augment import autoaugment as aa

NUM_IMAGES = 24


@pytest.fixture(scope='module')
def images(cifar_dir) -> np.ndarray:
  return real_test_images(cifar_dir, 100, NUM_IMAGES)


def _torchvision_augmix(torch, image, severity, width, depth, choices, m, w):
  """v2.AugMix(severity, width, depth)(image) with its random calls answered from our draws."""
  from torchvision.transforms import v2  # pylint: disable=import-outside-toplevel
  t = v2.AugMix(severity=severity, mixture_width=width, chain_depth=depth)
  space = t._AUGMENTATION_SPACE  # pylint: disable=protected-access
  names = list(space)
  depths, ops, bins, negate = choices
  script = []  # (callee, range it must be asked for, answer)
  for c in range(width):
    if depth <= 0:
      script.append(('randint', (1, 4), int(depths[c])))
    for k in range(int(depths[c])):
      script.append(('randint', len(names), int(ops[c, k])))
      magnitudes_fn, signed = space[names[int(ops[c, k])]]
      if magnitudes_fn(10, 32, 32) is not None:
        script.append(('randint', severity, int(bins[c, k])))
        if signed:
          script.append(('rand', None, 0.25 if negate[c, k] else 0.75))

  def randint(*args, **kwargs):
    callee, expected, answer = script.pop(0)
    assert callee == 'randint'
    if 'low' in kwargs:
      assert (kwargs['low'], kwargs['high']) == expected
      return torch.tensor([answer])
    assert args[0] == expected, (args, expected)
    return torch.tensor(answer)

  def rand(*args, **kwargs):
    callee, _, answer = script.pop(0)
    assert callee == 'rand'
    return torch.tensor(answer)

  dirichlet = [torch.tensor(np.array(m)[None]), torch.tensor(np.array(w)[None])]
  t._sample_dirichlet = lambda params: dirichlet.pop(0)  # pylint: disable=protected-access
  real = torch.randint, torch.rand
  torch.randint, torch.rand = randint, rand
  try:
    out = t(torch.from_numpy(image.transpose(2, 0, 1).copy()))
  finally:
    torch.randint, torch.rand = real
  assert not script and not dirichlet, 'torchvision drew differently from our choices'
  return out.numpy().transpose(1, 2, 0)


@pytest.mark.parametrize('severity,width,depth', [
    (3, 3, -1), pytest.param(10, 2, 2, marks=pytest.mark.slow)])
def test_augmix_matches_torchvision_given_the_same_draws(images, severity, width, depth):
  """Bit-exact on this machine (every pixel of every image); the bound leaves room for torch's
  grid_sample being compiled without FMA elsewhere (a level on <0.1% of a warp's pixels, which a
  later Posterize or Solarize can widen)."""
  torch = require_torch()
  keys = jax.random.split(jax.random.key(severity), NUM_IMAGES)
  u = jax.vmap(lambda k: jax.random.uniform(k, (augmix.num_draws(width, depth),)))(keys)
  m, w = jax.vmap(lambda k: augmix.mixing_weights(jax.random.fold_in(k, 1), width, 1.0))(keys)
  run = jax.jit(jax.vmap(lambda u, m, w, x: augmix.augmix_draws(
      u, m, w, x, severity=severity, width=width, depth=depth)))
  ours = np.asarray(run(u, m, w, jnp.asarray(images)))
  choices = [np.asarray(c) for c in jax.vmap(lambda u: augmix.choices(
      u, severity=severity, width=width, depth=depth))(u)]
  assert set(np.unique(choices[1])) == set(range(len(augmix.ALL_OPS))) or width * NUM_IMAGES < 40
  diff = np.stack([np.abs(ours[i].astype(int) - _torchvision_augmix(
      torch, images[i], severity, width, depth, [c[i] for c in choices], m[i], w[i]).astype(int))
                   for i in range(NUM_IMAGES)])
  assert (diff == 0).mean() >= 0.995, ((diff == 0).mean(), diff.max())
  assert np.mean([d.max() == 0 for d in diff]) >= 0.75


@pytest.mark.optimized_xla  # As training compiles it: LLVM then contracts products into FMAs.
def test_the_mix_of_the_chains_is_torchvisions_bit_for_bit_as_training_compiles_it(images):
  """The bound of the test above leaves room for grid_sample; the mix itself has none, and there a
  product written without `exact` (0.03 % of that test's pixels, an audit) went unseen. With
  chains that keep most pixels, plain products change 6 % of these; compiled as a run compiles it."""
  torch = require_torch()
  width = 3
  keys = jax.random.split(jax.random.key(7), NUM_IMAGES)
  m, w = jax.vmap(lambda k: augmix.mixing_weights(k, width, 1.0))(keys)
  # Chains that left most pixels as they were (as mild ops do): there the mix is the pixel times
  # weights summing to 1, and a single rounding decides the level it truncates to.
  rng = np.random.default_rng(0)
  chains = np.stack([np.where(rng.random(images.shape[:3] + (1,)) < 0.8, images,
                              np.roll(images, i + 1, axis=0)) for i in range(width)], axis=1)
  ours = np.asarray(jax.jit(jax.vmap(augmix.mix_chains))(
      jnp.asarray(images), jnp.asarray(chains), m, w))
  x, c = torch.from_numpy(images).float(), torch.from_numpy(chains).float()
  tm, tw = torch.from_numpy(np.array(m)), torch.from_numpy(np.array(w))  # Writable copies.
  combined = tw * tm[:, 1:2]  # v2.AugMix: combined_weights = dirichlet * m[:, 1]
  mix = tm[:, 0].reshape(-1, 1, 1, 1) * x
  for i in range(width):
    mix.add_(combined[:, i].reshape(-1, 1, 1, 1) * c[:, i])
  np.testing.assert_array_equal(ours, mix.to(torch.uint8).numpy())


def test_augmentation_space_matches_torchvision():
  require_torch()
  from torchvision.transforms import v2  # pylint: disable=import-outside-toplevel
  theirs = v2.AugMix._AUGMENTATION_SPACE  # pylint: disable=protected-access
  ours = augmix.augmentation_space((32, 32))
  assert list(ours) == list(theirs) == list(augmix.ALL_OPS)
  assert list(augmix.augmentation_space((32, 32), all_ops=False)) == list(
      v2.AugMix._PARTIAL_AUGMENTATION_SPACE)  # pylint: disable=protected-access
  for name, (fn, signed) in theirs.items():
    mags = fn(10, 32, 32)
    assert ours[name][1] == signed, name
    if mags is None:
      assert ours[name][0] is None, name
    elif name == 'Solarize':  # v2 thresholds at 255 * m, compared with uint8 pixels in float32
      np.testing.assert_array_equal(ours[name][0], np.float32(255.0 * mags.double().numpy()))
    else:
      np.testing.assert_array_equal(ours[name][0], mags.numpy().astype(np.float32), err_msg=name)


def test_bilinear_geometric_ops_match_torchvision(images):
  """AugMix warps bilinearly: the bilinear kernel alone, bit-exact here (bound as above)."""
  torch = require_torch()
  import torchvision.transforms.v2.functional as F  # pylint: disable=import-outside-toplevel
  from torchvision.transforms import InterpolationMode  # pylint: disable=import-outside-toplevel
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  bil = dict(interpolation=InterpolationMode.BILINEAR)
  cases = [('ShearX', 0.2, lambda: F.affine(x, 0.0, [0, 0], 1.0, [np.degrees(np.arctan(0.2)), 0.0],
                                            center=[0, 0], **bil)),
           ('ShearY', -0.3, lambda: F.affine(
               x, 0.0, [0, 0], 1.0, [0.0, np.degrees(np.arctan(-0.3))], center=[0, 0], **bil)),
           ('TranslateY', -7.5, lambda: F.affine(x, 0.0, [0, -7], 1.0, [0.0, 0.0], **bil)),
           ('Rotate', 13.3, lambda: F.rotate(x, 13.3, **bil))]
  warp = jax.jit(jax.vmap(lambda im, op, m: aa.apply_op(im, op, m, bilinear=True), (0, None, None)))
  for name, m, reference in cases:
    ours = np.asarray(warp(jnp.asarray(images), aa.OP_NAMES.index(name), np.float32(m)))
    diff = np.abs(ours.astype(int) - reference().numpy().transpose(0, 2, 3, 1).astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.995, (name, (diff == 0).mean())


def test_mixing_weights_are_dirichlet():
  keys = jax.random.split(jax.random.key(0), 4000)
  m, w = jax.jit(jax.vmap(lambda k: augmix.mixing_weights(k, 3, 1.0)))(keys)
  m, w = np.asarray(m), np.asarray(w)
  assert m.dtype == np.float32 and m.shape == (4000, 2) and w.shape == (4000, 3)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
  assert (m >= 0).all() and (w >= 0).all()
  # Beta(1, 1) is uniform: mean 1/2, variance 1/12; Dirichlet(1,1,1) marginals: mean 1/3.
  assert abs(m[:, 0].mean() - 0.5) < 0.02 and abs(m[:, 0].var() - 1 / 12) < 0.01
  np.testing.assert_allclose(w.mean(0), 1 / 3, atol=0.02)
  # m and w are independent draws (one key for both had correlated the image's share with the
  # chains' weights: a mutation audit). 4000 pairs: a correlation's noise is about 0.016.
  share = w[:, 0] / (w[:, 0] + w[:, 1])
  assert abs(np.corrcoef(m[:, 0], share)[0, 1]) < 0.06


def test_choices_cover_every_op_depth_and_bin():
  u = jax.random.uniform(jax.random.key(1), (3000, augmix.num_draws(3, -1)))
  depths, ops, bins, negate = (np.asarray(a) for a in jax.jit(jax.vmap(
      lambda u: augmix.choices(u, severity=3, width=3, depth=-1)))(u))
  assert set(np.unique(depths)) == {1, 2, 3}
  assert set(np.unique(ops)) == set(range(13)) and set(np.unique(bins)) == {0, 1, 2}
  assert 0.45 < negate.mean() < 0.55


def test_augmix_checks_its_arguments(images):
  x = jnp.asarray(images[0])
  with pytest.raises(ValueError, match='severity'):
    augmix.augmix(jax.random.key(0), x, severity=11)
  with pytest.raises(ValueError, match='depth'):
    augmix.augmix(jax.random.key(0), x, depth=0)


# ----------------------------------------------------------------------------- JSD loss

def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _jsd_numpy(lc, l1, l2):
  ps = [_softmax(np.asarray(l, np.float64)) for l in (lc, l1, l2)]
  log_m = np.log(np.clip(sum(ps) / 3, 1e-7, 1))
  kl = lambda p: np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - log_m), 0), -1)
  return np.mean(kl(ps[0]) + kl(ps[1]) + kl(ps[2])) / 3


def test_jsd_loss_matches_numpy_and_the_reference_code():
  rng = np.random.default_rng(0)
  logits = [rng.normal(0, 3, (16, 100)).astype(np.float32) for _ in range(3)]
  ours = float(augmix.jsd_loss(*map(jnp.asarray, logits)))
  np.testing.assert_allclose(ours, _jsd_numpy(*logits), rtol=1e-5)
  torch = require_torch()
  F = torch.nn.functional
  p_c, p_1, p_2 = (F.softmax(torch.from_numpy(l), dim=1) for l in logits)
  p_m = torch.clamp((p_c + p_1 + p_2) / 3., 1e-7, 1).log()
  ref = (F.kl_div(p_m, p_c, reduction='batchmean') + F.kl_div(p_m, p_1, reduction='batchmean')
         + F.kl_div(p_m, p_2, reduction='batchmean')) / 3.
  np.testing.assert_allclose(ours, ref.item(), rtol=1e-5)
  assert ours > 0.05
  # Where the mean softmax nears the reference's clamp (1e-7): confident views whose other classes
  # sit at ~1.1e-7, so the clamp at 1e-7 leaves them and JSD is 0 (a clamp at 1e-6 gave -2.4e-5;
  # the views above are too mild to reach it: a mutation audit).
  confident = np.full((4, 100), -16.0, np.float32)
  confident[:, 0] = 0.0
  near = [confident, confident + np.float32(0.01) * np.eye(4, 100, 1, dtype=np.float32), confident]
  p_c, p_1, p_2 = (F.softmax(torch.from_numpy(l), dim=1) for l in near)
  p_m = torch.clamp((p_c + p_1 + p_2) / 3., 1e-7, 1).log()
  ref = (F.kl_div(p_m, p_c, reduction='batchmean') + F.kl_div(p_m, p_1, reduction='batchmean')
         + F.kl_div(p_m, p_2, reduction='batchmean')) / 3.
  assert abs(float(augmix.jsd_loss(*map(jnp.asarray, near))) - ref.item()) < 2e-6


def test_jsd_loss_is_zero_for_equal_views_and_has_finite_gradients():
  z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 10)), jnp.float32)
  assert abs(float(augmix.jsd_loss(z, z, z))) < 1e-6
  saturated = z.at[:, 0].set(200.0)  # its softmax underflows to exact zeros
  grads = jax.grad(lambda a, b: augmix.jsd_loss(a, b, z), argnums=(0, 1))(saturated, z)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  assert float(jnp.abs(grads[1]).sum()) > 0


# ----------------------------------------------------------------------------- JSD views

@pytest.fixture(scope='module')
def augmix_cfg():
  cfg = default.get_config().augment
  cfg.update(augmix=True, augmix_width=2, augmix_depth=1, crop_mode='reflect')
  return cfg


def test_jsd_views_share_the_crop_flip_and_view_1_is_augment_batch(images, augmix_cfg):
  views = jax.jit(lambda k, x: augment.jsd_views(k, x, augmix_cfg))
  key, x = jax.random.key(5), jnp.asarray(images)
  clean, v1, v2 = (np.asarray(v) for v in views(key, x))
  plain = default.get_config().augment
  plain.update(crop_mode='reflect')
  np.testing.assert_array_equal(  # the same base draws, nothing after them
      clean, jax.jit(lambda k, x: augment.augment_batch(k, x, plain))(key, x))
  np.testing.assert_array_equal(
      v1, jax.jit(lambda k, x: augment.augment_batch(k, x, augmix_cfg))(key, x))
  differs = [not np.array_equal(a, b) for a, b in zip(v1, v2)]
  assert np.mean(differs) > 0.8 and all(v.dtype == np.uint8 for v in (clean, v1, v2))
  again, other = views(key, x), views(jax.random.key(6), x)
  for a, b in zip(again, (clean, v1, v2)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(other[1], v1)
