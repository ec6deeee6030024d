"""Affine warps of uint8 HWC images as torchvision's (`F.affine` / `grid_sample`, fill 0):
nearest for the policies' geometric ops (autoaugment.py), bilinear for AugMix's (augmix.py). The
grid and the bilinear blend round as torch's CPU kernels do (exact.py), so pixels match bit for
bit (tests/test_augment.py, tests/test_augmix.py)."""
import jax
import jax.numpy as jnp

from jax_cifar.augment import exact


def _source_coords(theta: jax.Array, h: int, w: int) -> tuple[jax.Array, jax.Array]:
  """Input coordinates (x [H,W], y [H,W]) each output pixel samples, as torchvision's grid.

  Mirrors `_affine_grid` + `grid_sample(align_corners=False)`: output pixel centres relative to
  the image centre, mapped by the inverse matrix theta (6,), normalised by half the size and
  unnormalised again.
  """
  t = exact.div(theta.astype(jnp.float32), jnp.asarray([w, w, w, h, h, h], jnp.float32) / 2)
  x = (jnp.arange(w, dtype=jnp.float32) - jnp.float32((w - 1) / 2))[None, :]
  y = (jnp.arange(h, dtype=jnp.float32) - jnp.float32((h - 1) / 2))[:, None]
  # Pixel centres have few bits, so exact.mul keeps torch's unfused rounding of the grid.
  ix = (((exact.mul(x, t[0]) + exact.mul(y, t[1])) + t[2] + 1.0) * w - 1.0) / 2.0
  iy = (((exact.mul(x, t[3]) + exact.mul(y, t[4])) + t[5] + 1.0) * h - 1.0) / 2.0
  return ix, iy


def _taps(image: jax.Array, iy: jax.Array, ix: jax.Array) -> jax.Array:
  """image[iy, ix] (the image's dtype) for integral float coordinates, 0 outside it (fill 0)."""
  h, w, _ = image.shape
  valid = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)
  ixi = jnp.clip(ix, 0, w - 1).astype(jnp.int32)
  iyi = jnp.clip(iy, 0, h - 1).astype(jnp.int32)
  return jnp.where(valid[..., None], image[iyi, ixi], jnp.zeros((), image.dtype))


def nearest(image: jax.Array, theta: jax.Array) -> jax.Array:
  """Nearest-neighbour warp with torchvision's inverse matrix `theta` (6,), fill 0 (half-even)."""
  h, w, _ = image.shape
  ix, iy = _source_coords(theta, h, w)
  return _taps(image, jnp.round(iy), jnp.round(ix))


def bilinear(image: jax.Array, theta: jax.Array) -> jax.Array:
  """Bilinear warp of a uint8 image, fill 0 (zeros padding), rounded half-even back to uint8.

  As torch's CPU grid_sample kernel: corner weights (1 - dy)(1 - dx) ..., the NW product rounded,
  then NE, SW and SE each added with one fused multiply-add (as torch's compiled kernel does).
  """
  h, w, _ = image.shape
  ix, iy = _source_coords(theta, h, w)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  dx, dy = ix - x0, iy - y0
  ex, sy = 1.0 - dx, 1.0 - dy

  def tap(yy, xx):
    return _taps(image, yy, xx).astype(jnp.float32)

  out = exact.mul(tap(y0, x0), (sy * ex)[..., None])
  for yy, xx, weight in ((y0, x0 + 1, sy * dx), (y0 + 1, x0, dy * ex), (y0 + 1, x0 + 1, dy * dx)):
    out = exact.fma_small(tap(yy, xx), weight[..., None], out)
  return jnp.clip(jnp.round(out), 0.0, 255.0).astype(jnp.uint8)
