"""On-device, per-example data augmentation and model-input preparation.

`augment_batch` runs inside the jitted train step on uint8 NHWC batches, in torchvision's usual
order: random crop (with padding) -> horizontal flip -> policy (AutoAugment / RandAugment /
TrivialAugmentWide, see `autoaugment.py`) -> random erasing. Every random draw of an example comes
from its own key, `jax.random.split(key, B)[i]` (one vector of uniforms per example), so a batch
gives the same pixels however it is sharded over devices or split into pieces.

Random erasing differs from torchvision's recipe in one deliberate way: torchvision erases after
normalisation with value 0 (i.e. the mean colour); here it runs on uint8 with value 0 (black),
because the model's normalisation is not known to the augmentation config.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_cifar import autoaugment

NORMALIZATION = {
    'cifar': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


ERASING_ATTEMPTS = 10
_ERASING_DRAWS = 3 + 2 * ERASING_ATTEMPTS


def crop_at(image: jax.Array, top: jax.Array, left: jax.Array, padding: int, mode: str) -> jax.Array:
  """Pads one HWC image by `padding` ('constant' zeros or 'reflect') and crops at (top, left)."""
  if mode not in ('constant', 'reflect'):
    raise ValueError(f'crop_mode must be constant or reflect, got {mode!r}')
  h, w, c = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=mode)
  return jax.lax.dynamic_slice(padded, (top, left, 0), (h, w, c))


def _crop_draws(u: jax.Array, image: jax.Array, padding: int, mode: str) -> jax.Array:
  offsets = jnp.minimum(jnp.floor(u * (2 * padding + 1)).astype(jnp.int32), 2 * padding)
  return crop_at(image, offsets[0], offsets[1], padding, mode)


def random_crop(key: jax.Array, image: jax.Array, padding: int, mode: str = 'constant') -> jax.Array:
  """torchvision RandomCrop(size=H, padding) on one HWC image: pad every side, crop H x W back."""
  return _crop_draws(jax.random.uniform(key, (2,)), image, padding, mode)


def random_flip(key: jax.Array, image: jax.Array) -> jax.Array:
  """Horizontal flip of one HWC image with probability 0.5."""
  return jnp.where(jax.random.uniform(key) < 0.5, image[:, ::-1], image)


def _erase_draws(u: jax.Array, image: jax.Array, prob: float,
                 scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> jax.Array:
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


def random_erasing(key: jax.Array, image: jax.Array, prob: float,
                   scale: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> jax.Array:
  """torchvision RandomErasing(p, scale, ratio, value=0) on one uint8 HWC image.

  Like torchvision, tries up to 10 rectangles and erases the first that fits (none fits: no-op).
  """
  return _erase_draws(jax.random.uniform(key, (_ERASING_DRAWS,)), image, prob, scale, ratio)


def augment_example(key: jax.Array, image: jax.Array, cfg: Any) -> jax.Array:
  """All augmentations of one uint8 HWC image, driven by its own key.

  One uniform vector per image feeds every draw (each jax.random call is a threefry program that
  XLA compiles separately: fewer calls, faster compiles).
  """
  num_ops = int(cfg.get('randaugment_num_ops', 2))
  n_policy = autoaugment.num_draws(cfg.policy, num_ops)
  u = jax.random.uniform(key, (3 + n_policy + _ERASING_DRAWS,))
  if cfg.crop_padding:
    image = _crop_draws(u[0:2], image, int(cfg.crop_padding), cfg.crop_mode)
  if cfg.flip:
    image = jnp.where(u[2] < 0.5, image[:, ::-1], image)
  image = autoaugment.apply_policy_draws(u[3:3 + n_policy], image, cfg.policy, num_ops=num_ops,
                                         magnitude=int(cfg.get('randaugment_magnitude', 9)))
  if cfg.get('erasing_prob', 0.0) > 0:
    image = _erase_draws(u[3 + n_policy:], image, float(cfg.erasing_prob))
  return image


def augment_examples(keys: jax.Array, images: jax.Array, cfg: Any) -> jax.Array:
  """Augments uint8 [B,H,W,3] images with one key per example (keys: [B] key array)."""
  return jax.vmap(lambda k, x: augment_example(k, x, cfg))(keys, images)


def augment_batch(key: jax.Array, images: jax.Array, cfg: Any) -> jax.Array:
  """Augments a uint8 [B,H,W,3] batch; example i uses `jax.random.split(key, B)[i]`.

  `cfg` is the `augment` config section, read as static Python values (jit-safe).
  """
  if images.dtype != jnp.uint8:
    raise TypeError(f'augment_batch expects uint8 images, got {images.dtype}')
  return augment_examples(jax.random.split(key, images.shape[0]), images, cfg)


def to_model_input(images: jax.Array, *, image_size: int, normalize: str, dtype: Any) -> jax.Array:
  """uint8 [B,H,W,3] -> [B,S,S,3] of `dtype`: scale to [0,1], bilinear resize, normalise."""
  x = images.astype(jnp.float32) / 255.0
  b, h, w, c = x.shape
  if (h, w) != (image_size, image_size):
    x = jax.image.resize(x, (b, image_size, image_size, c), method='bilinear')
  if normalize != 'none':
    if normalize not in NORMALIZATION:
      raise ValueError(f'normalize must be one of {sorted(NORMALIZATION)} or none, got {normalize!r}')
    mean, std = NORMALIZATION[normalize]
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)
