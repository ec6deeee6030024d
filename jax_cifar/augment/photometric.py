"""ColorJitter, GaussianBlur and additive Gaussian noise on uint8 HWC images, on device.

ColorJitter and GaussianBlur follow torchvision 0.29's v2 transforms and uint8 tensor kernels:
factor ranges, the random op order, float32 arithmetic and the rounding back to uint8. Given the
same factors, order and sigma, ColorJitter's pixels are torchvision's bit for bit and blur's are
within one level (tests/test_photometric.py): the blur sums its taps in another order than
torch's convolution. Random draws are uniforms passed in by the caller (see pipeline.py).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_cifar.augment import autoaugment as aa
from jax_cifar.augment import exact

JITTER_OPS = ('brightness', 'contrast', 'saturation', 'hue')
JITTER_DRAWS = 2 * len(JITTER_OPS)  # the op order (argsort of 4 uniforms), then one factor each



def _product(a: jax.Array, b: jax.Array) -> jax.Array:
  """float32 a * b rounded once, as a sum of exact partial products: a sum that uses it cannot
  absorb it into a fused multiply-add (XLA CPU fuses through optimization barriers too)."""
  return exact.fma(a, b, jnp.zeros((), jnp.float32))


# ----------------------------------------------------------------------------- colour jitter

def jitter_ranges(strengths: Sequence[float]) -> list[tuple[float, float] | None]:
  """torchvision ColorJitter's factor ranges: [max(0, 1 - s), 1 + s] (hue: [-s, s]); None = off."""
  if len(strengths) != 4 or any(s < 0 for s in strengths) or strengths[3] > 0.5:
    raise ValueError('color_jitter must be 4 non-negative strengths (brightness, contrast, '
                     f'saturation, hue <= 0.5), got {tuple(strengths)}')
  ranges = [(max(0.0, 1.0 - s), 1.0 + s) if s else None for s in strengths[:3]]
  return ranges + [(-float(strengths[3]), float(strengths[3])) if strengths[3] else None]


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """F.adjust_brightness on uint8: x * f, clamped, truncated."""
  return exact.to_uint8(image.astype(jnp.float32) * factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """F.adjust_contrast on uint8: x.mul(f).add_(mean, alpha=1 - f) (one fused multiply-add) with
  the mean of the floored grayscale image, truncated; a 256-entry table of the pixel levels."""
  gray = aa.grayscale(image.astype(jnp.float32))
  # Integers below 2**24: their sum is exact in any order, and a dot product runs far faster on
  # CPU than a reduction with the grayscale arithmetic fused into it.
  total = jnp.dot(gray.reshape(-1), jnp.ones(gray.size, jnp.float32),
                  precision=jax.lax.Precision.HIGHEST)
  mean = exact.div(total, jnp.float32(gray.size))
  levels = jnp.arange(256, dtype=jnp.float32)
  lut = exact.to_uint8(exact.fma(mean, 1.0 - factor, exact.mul(levels, factor)))
  return lut[image]


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """F.adjust_saturation on uint8: x.mul(f).add_(gray, alpha=1 - f) with the floored grayscale."""
  x = image.astype(jnp.float32)
  gray = aa.grayscale(x)[..., None]
  return exact.to_uint8(exact.fma_small(gray, 1.0 - factor, exact.mul(x, factor)))


def _rgb_to_hsv(x: jax.Array) -> jax.Array:
  """torchvision's _rgb_to_hsv of a float32 [H,W,3] image in [0, 1]."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc, minc = jnp.max(x, axis=-1), jnp.min(x, axis=-1)
  eqc = maxc == minc
  channels_range = maxc - minc
  s = exact.div(channels_range, jnp.where(eqc, 1.0, maxc))
  divisor = jnp.where(eqc, 1.0, channels_range)
  rc, gc, bc = (exact.div(maxc - c, divisor) for c in (r, g, b))
  neq_r, eq_g = maxc != r, maxc == g
  hg = ((rc + 2.0) - bc) * (eq_g & neq_r)
  hr = (bc - gc) * ~neq_r
  hb = ((gc + 4.0) - rc) * (neq_r & ~eq_g)
  h = jnp.fmod(_product(hr + hg + hb, jnp.float32(1.0 / 6.0)) + 1.0, 1.0)
  return jnp.stack([h, s, maxc], axis=-1)


# torchvision's vpqt -> rgb selection by sector i.
_HSV_SELECT = np.array([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])


def _hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """torchvision's _hsv_to_rgb, products rounded before the sums that use them."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  h6 = exact.mul(jnp.float32(6.0), h)
  i = jnp.floor(h6)
  f = h6 - i
  sxf = _product(s, f)
  one_minus_s = 1.0 - s
  q = jnp.clip((1.0 - sxf) * v, 0.0, 1.0)
  t = jnp.clip((sxf + one_minus_s) * v, 0.0, 1.0)
  p = jnp.clip(one_minus_s * v, 0.0, 1.0)
  vpqt = jnp.stack([v, p, q, t], axis=-1)
  select = jnp.asarray(_HSV_SELECT.T)[jnp.remainder(i.astype(jnp.int32), 6)]  # [H, W, 3]
  return jnp.take_along_axis(vpqt, select, axis=-1)


def adjust_hue(image: jax.Array, factor: jax.Array) -> jax.Array:
  """F.adjust_hue on uint8: to float (x * (1/255)), HSV, h = (h + f) mod 1, back (x * 255.999)."""
  hsv = _rgb_to_hsv(exact.mul(image.astype(jnp.float32), jnp.float32(1.0 / 255.0)))
  hsv = hsv.at[..., 0].set(jnp.remainder(hsv[..., 0] + factor, 1.0))
  rgb = _hsv_to_rgb(hsv)
  return (rgb * jnp.float32(255.0 + 1.0 - 1e-3)).astype(jnp.uint8)


_ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def jitter_params(u: jax.Array, strengths: Sequence[float]) -> tuple[jax.Array, jax.Array]:
  """(order [4]: a uniformly random permutation as torch.randperm(4), factors [4] float32)."""
  ranges = jitter_ranges(strengths)
  lo = jnp.asarray([r[0] if r else 0.0 for r in ranges], jnp.float32)
  hi = jnp.asarray([r[1] if r else 0.0 for r in ranges], jnp.float32)
  return jnp.argsort(u[:4]), lo + (hi - lo) * u[4:JITTER_DRAWS]


def color_jitter(image: jax.Array, order: jax.Array, factors: jax.Array,
                 strengths: Sequence[float]) -> jax.Array:
  """ColorJitter.transform: the enabled adjustments in `order`, each with its factor."""
  enabled = [i for i, r in enumerate(jitter_ranges(strengths)) if r is not None]

  def slot(k, image):  # a loop, so each slot's image is materialised (fused, XLA recomputes it)
    out = image
    for i in enabled:  # disabled ops are never computed
      out = jnp.where(order[k] == i, _ADJUST[i](image, factors[i]), out)
    return out

  return jax.lax.fori_loop(0, len(JITTER_OPS), slot, image)


def color_jitter_draws(u: jax.Array, image: jax.Array, strengths: Sequence[float]) -> jax.Array:
  """ColorJitter(*strengths) of one uint8 image from JITTER_DRAWS uniforms."""
  order, factors = jitter_params(u, strengths)
  return color_jitter(image, order, factors, strengths)


# ----------------------------------------------------------------------------- blur and noise

def gaussian_kernel1d(kernel_size: int, sigma: jax.Array) -> jax.Array:
  """torchvision's _get_gaussian_kernel1d: softmax(-(linspace(-lim, lim) / sigma)^2), float32."""
  lim = (kernel_size - 1) / (2.0 * np.sqrt(2.0))
  x = jnp.asarray(aa.torch_linspace(-lim, lim, kernel_size))
  z = exact.div(x, jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape))
  return jax.nn.softmax(-(z * z))


def _reflect_taps(size: int, kernel_size: int) -> np.ndarray:
  """[k, size, size] 0/1: tap t of output i reads input reflect(i + t - k // 2), as torch pads."""
  if kernel_size // 2 >= size:
    raise ValueError(f'blur kernel {kernel_size} too large for images of size {size}')
  idx = np.arange(size)[None, :] + np.arange(kernel_size)[:, None] - kernel_size // 2
  idx = np.abs(idx)
  idx = np.where(idx > size - 1, 2 * (size - 1) - idx, idx)
  return (idx[..., None] == np.arange(size)).astype(np.float32)


def gaussian_blur(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
  """F.gaussian_blur(kernel_size, sigma) on uint8: reflect padding, rounded half-even.

  The separable kernel runs as two [size, size] matrix products (any kernel size, one cost).
  """
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f'blur kernel size must be odd and positive, got {kernel_size}')
  h, w, _ = image.shape
  k = gaussian_kernel1d(kernel_size, sigma)
  hi = jax.lax.Precision.HIGHEST
  rows = jnp.einsum('t,tij->ij', k, _reflect_taps(h, kernel_size), precision=hi)
  cols = jnp.einsum('t,tij->ij', k, _reflect_taps(w, kernel_size), precision=hi)
  x = jnp.einsum('ij,jwc->iwc', rows, image.astype(jnp.float32), precision=hi)
  x = jnp.einsum('kw,iwc->ikc', cols, x, precision=hi)
  return jnp.clip(jnp.round(x), 0.0, 255.0).astype(jnp.uint8)


def gaussian_noise(image: jax.Array, std: jax.Array, normal: jax.Array) -> jax.Array:
  """x / 255 + std * normal, clipped to [0, 1], rounded back to uint8 (std in [0, 1] units)."""
  x = image.astype(jnp.float32) / 255.0 + std * normal
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def uniform_in(u: jax.Array, bounds: Sequence[float]) -> jax.Array:
  """low + (high - low) * u in float32 (torch's uniform_(low, high) for a given uniform u)."""
  low, high = (float(b) for b in bounds)
  return jnp.float32(low) + jnp.float32(high - low) * u
