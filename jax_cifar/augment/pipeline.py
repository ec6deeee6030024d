"""On-device, per-example data augmentation and model-input preparation.

`augment_batch` runs inside the jitted train step on uint8 NHWC batches, in this order per image:
random crop (with padding) -> horizontal flip -> RandomResizedCrop -> policy (AutoAugment /
RandAugment / TrivialAugmentWide, see `autoaugment.py`) -> AugMix (`augmix.py`) -> ColorJitter ->
GaussianBlur (`photometric.py`) -> JPEG-like compression (`jpeg.py`) -> Gaussian noise -> random
erasing. Every random draw of an example comes from its own key, `jax.random.split(key, B)[i]`,
so a batch gives the same pixels however it is sharded over devices or split into pieces. Images
stay uint8 between steps; each op rounds back as torchvision does for uint8 tensors.

The crop/flip/policy/erasing draws are one uniform vector per example, laid out as before the
robustness augmentations existed; those draw from keys folded off the example's key, and only
when enabled, so a config with them off gives bit-identical pixels to older versions.

Random erasing differs from torchvision's recipe in one deliberate way: torchvision erases after
normalisation with value 0 (i.e. the mean colour); here it runs on uint8 with value 0 (black),
because the model's normalisation is not known to the augmentation config.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_cifar import image_checks
from jax_cifar.augment import augmix, autoaugment, inputs, jpeg, photometric, resized_crop

NORMALIZATION = {
    'cifar': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NORMALIZE_CHOICES = (*NORMALIZATION, 'none')  # model.normalize
CROP_MODES = ('constant', 'reflect')  # augment.crop_mode: jnp.pad modes of the random crop.


ERASING_ATTEMPTS = 10
_ERASING_DRAWS = 3 + 2 * ERASING_ATTEMPTS


def crop_at(image: jax.Array, top: jax.Array, left: jax.Array, padding: int, mode: str) -> jax.Array:
  """Pads one HWC image by `padding` ('constant' zeros or 'reflect') and crops at (top, left)."""
  if mode not in CROP_MODES:
    raise ValueError(f'crop_mode must be one of {CROP_MODES}, got {mode!r}')
  h, w, c = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=mode)
  return jax.lax.dynamic_slice(padded, (top, left, 0), (h, w, c))


def _crop_draws(u: jax.Array, image: jax.Array, padding: int, mode: str) -> jax.Array:
  """torchvision RandomCrop(size=H, padding) on one HWC image, offsets from two uniforms `u`."""
  offsets = jnp.minimum(jnp.floor(u * (2 * padding + 1)).astype(jnp.int32), 2 * padding)
  return crop_at(image, offsets[0], offsets[1], padding, mode)


def _erase_draws(u: jax.Array, image: jax.Array, prob: float,
                 scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> jax.Array:
  """torchvision RandomErasing(p, scale, ratio, value=0) on one uint8 HWC image, for
  augment.erasing_prob: tries up to 10 rectangles and erases the first that fits (else no-op)."""
  h, w, _ = image.shape
  n = ERASING_ATTEMPTS
  area = h * w * (scale[0] + (scale[1] - scale[0]) * u[3:3 + n])
  log_r = np.log(ratio)
  aspect = jnp.exp(log_r[0] + (log_r[1] - log_r[0]) * u[3 + n:3 + 2 * n])
  eh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  ew = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (eh < h) & (ew < w)
  first = jnp.argmax(fits)
  eh, ew = eh[first], ew[first]
  top = jnp.floor(u[1] * (h - eh + 1)).astype(jnp.int32)
  left = jnp.floor(u[2] * (w - ew + 1)).astype(jnp.int32)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  erase = inside & fits[first] & (u[0] < prob)
  return jnp.where(erase[..., None], jnp.zeros_like(image), image)


# Keys folded off an example's key for the robustness augmentations, drawn only when enabled.
_ROBUST_STREAM, _AUGMIX_STREAM, _NOISE_STREAM, _SECOND_VIEW_STREAM = 1, 2, 3, 4
# Their uniform vector: (name, draws) in a fixed layout; the first draw of each is its gate.
_ROBUST = (('rrc', 1 + resized_crop.DRAWS), ('color_jitter', 1 + photometric.JITTER_DRAWS),
           ('blur', 2), ('jpeg', 2), ('noise', 2))
_ROBUST_OFFSETS = {name: int(offset) for (name, _), offset in zip(
    _ROBUST, np.cumsum([0] + [d for _, d in _ROBUST]))}
_ROBUST_DRAWS = sum(d for _, d in _ROBUST)


def _base_draws(key: jax.Array, cfg: Any) -> jax.Array:
  """The example's uniforms for crop, flip, policy and erasing (the layout of older versions)."""
  n_policy = autoaugment.num_draws(cfg.policy, int(cfg.get('randaugment_num_ops', 2)))
  return jax.random.uniform(key, (3 + n_policy + _ERASING_DRAWS,))


def _crop_flip(u: jax.Array, image: jax.Array, cfg: Any) -> jax.Array:
  if cfg.crop_padding:
    image = _crop_draws(u[0:2], image, int(cfg.crop_padding), cfg.crop_mode)
  if cfg.flip:
    image = jnp.where(u[2] < 0.5, image[:, ::-1], image)
  return image


# The interval both ends of each (low, high) pair of config.augment must lie in: (lowest,
# highest, whether lowest itself is excluded). config_validation checks the same limits.
PAIR_LIMITS = {'rrc_scale': (0.0, 1.0, True), 'rrc_ratio': (0.0, float('inf'), True),
               'blur_sigma': (0.0, 100.0, True), 'jpeg_quality': (1, 100, False),
               'noise_std': (0.0, 1.0, False)}


def _range(cfg: Any, key: str, default: tuple[float, float]) -> tuple[float, float]:
  """A static (low, high) range of the config, checked against its PAIR_LIMITS."""
  low, high, low_open = PAIR_LIMITS[key]
  a, b = (float(v) for v in cfg.get(key, default))
  if not (low < a if low_open else low <= a) or not a <= b <= high:
    raise ValueError(f'augment.{key} must be a range within {"(" if low_open else "["}{low}, '
                     f'{high}], got {(a, b)}')
  return a, b


def _jpeg_quality(u: jax.Array, cfg: Any) -> jax.Array:
  """A uniformly drawn integer quality in the configured inclusive range."""
  q0, q1 = (int(q) for q in _range(cfg, 'jpeg_quality', (20, 95)))
  return jnp.minimum(q0 + jnp.floor(u * (q1 - q0 + 1)).astype(jnp.int32), q1)


def _after_crop_flip(key: jax.Array, u: jax.Array, image: jax.Array, cfg: Any) -> jax.Array:
  """Everything after crop/flip, in the documented order; `u` from `_base_draws(key, cfg)`."""
  num_ops = int(cfg.get('randaugment_num_ops', 2))
  n_policy = autoaugment.num_draws(cfg.policy, num_ops)
  probs = {name: float(cfg.get(f'{name}_prob', 0.0)) for name, _ in _ROBUST}
  v = None
  if any(p > 0 for p in probs.values()):
    v = jax.random.uniform(jax.random.fold_in(key, _ROBUST_STREAM), (_ROBUST_DRAWS,))

  def maybe(name, image, op):  # op(draws after the gate) with the configured probability
    if probs[name] <= 0:
      return image
    d = v[_ROBUST_OFFSETS[name]:_ROBUST_OFFSETS[name] + dict(_ROBUST)[name]]
    return jnp.where(d[0] < probs[name], op(d[1:]), image)

  image = maybe('rrc', image, lambda d: resized_crop.random_resized_crop_draws(
      d, image, _range(cfg, 'rrc_scale', (0.35, 1.0)),
      _range(cfg, 'rrc_ratio', (0.75, 1.3333333))))
  image = autoaugment.apply_policy_draws(u[3:3 + n_policy], image, cfg.policy, num_ops=num_ops,
                                         magnitude=int(cfg.get('randaugment_magnitude', 9)))
  if cfg.get('augmix', False):
    image = augmix.augmix_from_config(jax.random.fold_in(key, _AUGMIX_STREAM), image, cfg)
  image = maybe('color_jitter', image, lambda d: photometric.color_jitter_draws(
      d, image, tuple(cfg.get('color_jitter', (0.4, 0.4, 0.4, 0.1)))))
  image = maybe('blur', image, lambda d: photometric.gaussian_blur(
      image, photometric.uniform_in(d[0], _range(cfg, 'blur_sigma', (0.1, 2.0))),
      int(cfg.get('blur_kernel', 3))))
  image = maybe('jpeg', image, lambda d: jpeg.jpeg(image, _jpeg_quality(d[0], cfg),
                                                   cfg.get('jpeg_subsampling', '4:4:4')))
  image = maybe('noise', image, lambda d: photometric.gaussian_noise(
      image, photometric.uniform_in(d[0], _range(cfg, 'noise_std', (0.0, 0.1))),
      jax.random.normal(jax.random.fold_in(key, _NOISE_STREAM), image.shape)))
  if cfg.get('erasing_prob', 0.0) > 0:
    image = _erase_draws(u[3 + n_policy:], image, float(cfg.erasing_prob))
  return image


def augment_example(key: jax.Array, image: jax.Array, cfg: Any) -> jax.Array:
  """All augmentations of one uint8 HWC image, driven by its own key.

  One uniform vector per image feeds crop, flip, policy and erasing, and one more (only if any
  is on) the robustness augmentations: each jax.random call is a threefry program that XLA
  compiles separately, so fewer calls compile faster.
  """
  u = _base_draws(key, cfg)
  return _after_crop_flip(key, u, _crop_flip(u, image, cfg), cfg)


def augment_examples(keys: jax.Array, images: jax.Array, cfg: Any) -> jax.Array:
  """Augments uint8 [B,H,W,3] images with one key per example (keys: [B] key array)."""
  return jax.vmap(lambda k, x: augment_example(k, x, cfg))(keys, images)


def augment_batch(key: jax.Array, images: jax.Array, cfg: Any) -> jax.Array:
  """Augments a uint8 [B,H,W,3] batch; example i uses `jax.random.split(key, B)[i]`.

  `cfg` is the `augment` config section, read as static Python values (jit-safe).
  """
  inputs.check_uint8(images, 'augment_batch', batch=True)
  return augment_examples(jax.random.split(key, images.shape[0]), images, cfg)


def jsd_views(key: jax.Array, images: jax.Array, cfg: Any
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(clean, view_1, view_2) uint8 [B,H,W,3] batches for AugMix's Jensen-Shannon loss.

  clean: crop/flip only; view_1 == augment_batch(key, images, cfg); view_2: the same crop/flip,
  then an independent draw of everything after it (AugMix and the rest of the pipeline).
  """
  inputs.check_uint8(images, 'jsd_views', batch=True)

  def views(k, x):
    u = _base_draws(k, cfg)
    clean = _crop_flip(u, x, cfg)
    keys = jnp.stack([k, jax.random.fold_in(k, _SECOND_VIEW_STREAM)])
    # One vmap over the two views: the pipeline is traced and compiled once.
    augmented = jax.vmap(lambda kv: _after_crop_flip(
        kv, _base_draws(kv, cfg), clean, cfg))(keys)
    return clean, augmented[0], augmented[1]

  return jax.vmap(views)(jax.random.split(key, images.shape[0]), images)


def to_model_input(images: jax.Array, *, image_size: int, normalize: str, dtype: Any) -> jax.Array:
  """uint8 [B,H,W,3] -> [B,S,S,3] of `dtype`: scale to [0,1], bilinear resize, normalise."""
  if images.dtype != jnp.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    # Float pixels in [0, 1] had been divided by 255 again, silently (an audit).
    raise ValueError(f'to_model_input expects uint8 images [B, H, W, 3], got {images.dtype} '
                     f'{images.shape}' + (image_checks.hint(np.asarray(images)) if isinstance(
                         images, np.ndarray) else ''))
  x = images.astype(jnp.float32) / 255.0
  b, h, w, c = x.shape
  if (h, w) != (image_size, image_size):
    x = jax.image.resize(x, (b, image_size, image_size, c), method='bilinear')
  if normalize != 'none':
    if normalize not in NORMALIZATION:
      raise ValueError(f'normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}')
    mean, std = NORMALIZATION[normalize]
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)
