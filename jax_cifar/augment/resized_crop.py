"""RandomResizedCrop on uint8 HWC images, on device: torchvision 0.29 v2 semantics.

The box is torchvision's `RandomResizedCrop.make_params` driven by uniforms: up to 10 attempts of
(area fraction ~ U(scale), log aspect ratio ~ U(log ratio)), the first whose rounded size fits
wins and is placed uniformly; none fits: the centre crop of the ratio-clamped image. The crop is
resized back to the input size bilinearly (align_corners=False, edges clamped) in float32 and
rounded half-even; crops never exceed the input, so this only upsamples and antialiasing has
nothing to do. torchvision resizes uint8 with a fixed-point kernel, so pixels may differ from
its by one level (tests/test_resized_crop.py measures it).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

ATTEMPTS = 10
DRAWS = 2 * ATTEMPTS + 2  # area fraction and log-ratio per attempt, then top and left


def _fallback(h: int, w: int, ratio: Sequence[float]) -> tuple[int, int]:
  """torchvision's fallback size (height, width) when no attempt fits."""
  in_ratio = w / h
  if in_ratio < min(ratio):
    return int(round(w / min(ratio))), w
  if in_ratio > max(ratio):
    return h, int(round(h * max(ratio)))
  return h, w


def crop_box(u: jax.Array, size: tuple[int, int], scale: Sequence[float], ratio: Sequence[float]
             ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(top, left, height, width) int32 from DRAWS uniforms, as RandomResizedCrop.make_params."""
  if not (0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
    raise ValueError(f'RandomResizedCrop needs ranges 0 < low <= high of scale and ratio, got '
                     f'{scale}, {ratio}')
  h, w = size
  fraction = jnp.float32(scale[0]) + jnp.float32(scale[1] - scale[0]) * u[:ATTEMPTS]
  area = jnp.float32(h * w) * fraction
  log_ratio = np.log(np.asarray(ratio, np.float32).astype(np.float64)).astype(np.float32)
  aspect = jnp.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[ATTEMPTS:2 * ATTEMPTS])
  cw = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  ch = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = jnp.argmax(fits)
  fh, fw = _fallback(h, w, ratio)
  found = fits[first]
  ch, cw = jnp.where(found, ch[first], fh), jnp.where(found, cw[first], fw)
  top = jnp.minimum(jnp.floor(u[-2] * (h - ch + 1)).astype(jnp.int32), h - ch)
  left = jnp.minimum(jnp.floor(u[-1] * (w - cw + 1)).astype(jnp.int32), w - cw)
  return (jnp.where(found, top, (h - ch) // 2), jnp.where(found, left, (w - cw) // 2), ch, cw)


def _resize_matrix(start: jax.Array, length: jax.Array, out_size: int, in_size: int) -> jax.Array:
  """[out, in] bilinear weights resampling input[start:start + length] to out_size samples."""
  length = jnp.asarray(length, jnp.int32)
  scale = length.astype(jnp.float32) / jnp.float32(out_size)
  src = jnp.maximum((jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5, 0.0)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), length - 1)
  i1 = jnp.minimum(i0 + 1, length - 1)
  l1 = src - i0.astype(jnp.float32)
  cols = jnp.arange(in_size)[None, :]
  return ((1.0 - l1)[:, None] * (cols == (start + i0)[:, None])
          + l1[:, None] * (cols == (start + i1)[:, None]))


def resized_crop(image: jax.Array, top: jax.Array, left: jax.Array, height: jax.Array,
                 width: jax.Array) -> jax.Array:
  """F.resized_crop(image, top, left, height, width, size=input size, bilinear) on uint8."""
  h, w, _ = image.shape
  rows = _resize_matrix(top, height, h, h)
  cols = _resize_matrix(left, width, w, w)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('ij,jwc->iwc', rows, image.astype(jnp.float32), precision=hi)
  x = jnp.einsum('kw,iwc->ikc', cols, x, precision=hi)
  return jnp.clip(jnp.round(x), 0.0, 255.0).astype(jnp.uint8)


def random_resized_crop_draws(u: jax.Array, image: jax.Array, scale: Sequence[float],
                              ratio: Sequence[float]) -> jax.Array:
  """RandomResizedCrop(size=input size, scale, ratio) of one uint8 image from DRAWS uniforms."""
  return resized_crop(image, *crop_box(u, image.shape[:2], scale, ratio))
