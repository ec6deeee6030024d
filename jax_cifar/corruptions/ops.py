"""Image helpers of jax_cifar.corrupt: batched NumPy/SciPy blurs, zooms, kernels, textures.

Unless noted, x is float [B, 32, 32, 3] in [0, 1]. Each helper re-implements one OpenCV or
ImageMagick operation of make_cifar_c.py (see jax_cifar/corruptions/corrupt.py).
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np

try:  # The 'corrupt' extra: image libraries only this held-out evaluation tool needs.
  import skimage.color
  from PIL import Image
  from scipy import ndimage
except ImportError as e:  # pragma: no cover  (the test environment has the extra)
  raise ImportError(f"jax_cifar.corruptions needs {str(e.name).split('.')[0]} (the 'corrupt' "
                    "extra): pip install 'jax-cifar[corrupt]'", name=e.name) from e

from jax_cifar.data import cifar100


def blur(x: np.ndarray, sigma: float, mode: str = 'nearest', truncate: float = 4.0) -> np.ndarray:
  """skimage.filters.gaussian over the two image axes of [B, H, W(, C)]."""
  sigmas = (0, sigma, sigma) + (0,) * (x.ndim - 3)
  return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def linear_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of scipy.ndimage.zoom(order=1) along one axis (corners aligned)."""
  pos = np.arange(n_out) * (n_in - 1) / max(n_out - 1, 1)
  lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
  hi, frac = np.minimum(lo + 1, n_in - 1), pos - lo
  w = np.zeros((n_out, n_in))
  np.add.at(w, (np.arange(n_out), lo), 1 - frac)
  np.add.at(w, (np.arange(n_out), hi), frac)
  return w


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
  """Zooms the centre of [B, H, W, C] by `factor` (bilinear) and crops back to H x W.

  Equals scipy.ndimage.zoom(order=1) as make_cifar_c.py calls it, as two small matrix products.
  """
  h = x.shape[1]
  ch = int(np.ceil(h / factor))
  top = (h - ch) // 2
  n_out = int(round(ch * factor))
  trim = (n_out - h) // 2
  w = linear_zoom_matrix(ch, n_out)[trim:trim + h].astype(x.dtype)
  return np.einsum('oi,bijc,pj->bopc', w, x[:, top:top + ch, top:top + ch], w, optimize=True)


def motion_blur(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
  """ImageMagick's MotionBlurImage on one [H, W(, C)] image: pixel p averages p + i*(cos, sin)."""
  width = 2 * int(np.ceil(radius)) + 1
  kernel = np.exp(-np.arange(width) ** 2 / (2.0 * sigma ** 2))
  kernel /= kernel.sum()
  h, w = img.shape[:2]
  pad = width
  padded = np.pad(img.astype(np.float64), ((pad, pad), (pad, pad)) + ((0, 0),) * (img.ndim - 2),
                  mode='edge')
  out = np.zeros(img.shape, np.float64)
  a = np.deg2rad(angle)
  for i, k in enumerate(kernel):
    dx, dy = int(np.ceil(i * np.cos(a) - 0.5)), int(np.ceil(i * np.sin(a) - 0.5))
    out += k * padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
  return np.round(out)  # ImageMagick hands back 8-bit pixels.


def disk(radius: float, alias_blur: float) -> np.ndarray:
  """Anti-aliased disk kernel, as make_cifar_c.py builds it (17x17 for radius <= 8), its zero
  margins trimmed (3x3 or 5x5 at CIFAR's radii): the blur is the same."""
  r = np.arange(-8, 9) if radius <= 8 else np.arange(-int(radius), int(radius) + 1)
  ksize = 3 if radius <= 8 else 5
  xx, yy = np.meshgrid(r, r)
  k = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
  k /= k.sum()
  g = np.exp(-(np.arange(ksize) - ksize // 2) ** 2 / (2 * alias_blur ** 2))  # cv2.GaussianBlur
  g /= g.sum()
  k = ndimage.correlate1d(k, g, axis=0, mode='mirror')
  k = ndimage.correlate1d(k, g, axis=1, mode='mirror')
  trim = int(np.flatnonzero(k.sum(axis=0) > 0)[0])  # Zero margins change nothing; drop them.
  return k[trim:len(k) - trim, trim:len(k) - trim]


def plasma(rng: np.random.Generator, batch: int, decay: float, size: int = 32) -> np.ndarray:
  """Diamond-square fractal heightmaps in [0, 1], [batch, size, size] (make_cifar_c's fog)."""
  m = np.zeros((batch, size, size))
  step, wibble = size, 100.0
  while step >= 2:
    half = step // 2
    noisy = lambda a, w=wibble: a / 4 + w * rng.uniform(-w, w, a.shape)
    corner = m[:, 0::step, 0::step]
    square = corner + np.roll(corner, -1, axis=1)
    m[:, half::step, half::step] = noisy(square + np.roll(square, -1, axis=2))
    dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
    m[:, 0::step, half::step] = noisy(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2))
    m[:, half::step, 0::step] = noisy(dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1))
    step, wibble = half, wibble / decay
  m -= m.min(axis=(1, 2), keepdims=True)
  return m / m.max(axis=(1, 2), keepdims=True)


def hsv_map(x: np.ndarray, channel: int, fn) -> np.ndarray:
  hsv = skimage.color.rgb2hsv(x)
  hsv[..., channel] = np.clip(fn(hsv[..., channel]), 0, 1)
  return skimage.color.hsv2rgb(hsv)


def equalize_hist(img: np.ndarray) -> np.ndarray:
  """cv2.equalizeHist on uint8."""
  hist = np.bincount(img.ravel(), minlength=256)
  first = int(np.flatnonzero(hist)[0])
  if hist[first] == img.size:
    return np.full_like(img, first)
  lut = np.rint((np.cumsum(hist) - hist[first]) * 255.0 / (img.size - hist[first]))
  return np.clip(lut, 0, 255).astype(np.uint8)[img]


def box3(x: np.ndarray) -> np.ndarray:
  return ndimage.uniform_filter(x.astype(np.float64), size=3, mode='mirror')  # cv2.blur 3x3


@functools.lru_cache(maxsize=4)
def synthetic_frost(seed: int = 0, count: int = 5, size: int = 96) -> np.ndarray:
  """uint8 [count, size, size, 3] frost-like textures, deterministic in `seed`.

  Stand-in for the photographs make_cifar_c.py blends in: bluish-white branching ice needles
  (a main needle with side branches at +-60 degrees) over low-frequency fractal haze, tileable.
  """
  rng = np.random.default_rng([seed, 0xF057])
  out = np.zeros((count, size, size, 3), np.uint8)
  for t in range(count):
    haze = sum(ndimage.zoom(rng.random((o, o)), size / o, order=3, mode='grid-wrap', grid_mode=True)
               / np.sqrt(o) for o in (4, 8, 16, 32))
    haze = (haze - haze.min()) / (haze.max() - haze.min())
    pts = []
    for _ in range(40):
      y0, x0, theta, length = *rng.uniform(0, size, 2), rng.uniform(0, 2 * np.pi), rng.uniform(6, 24)
      segments = [(y0, x0, theta, length)]
      for s in np.arange(3, length, rng.uniform(2.5, 4.5)):
        for side in (-1, 1):
          segments.append((y0 + s * np.sin(theta), x0 + s * np.cos(theta),
                           theta + side * np.pi / 3, (length - s) * rng.uniform(0.2, 0.5)))
      for y, x, a, n in segments:
        d = np.arange(0, n, 0.5)
        pts.append(np.stack([y + d * np.sin(a), x + d * np.cos(a)], 1))
    pts = np.rint(np.concatenate(pts)).astype(np.int64) % size
    needles = np.zeros((size, size))
    np.add.at(needles, (pts[:, 0], pts[:, 1]), 1.0)
    needles = np.clip(ndimage.gaussian_filter(needles, 0.5, mode='wrap'), 0, 1)
    tex = np.clip(0.6 * haze ** 1.2 + 0.8 * needles, 0, 1)
    out[t] = np.clip(tex[..., None] * np.array([0.86, 0.93, 1.0]) * 255, 0, 255).astype(np.uint8)
  return out


def load_frost_dir(frost_dir: str | os.PathLike) -> list[np.ndarray]:
  """The first five official frost photographs, shrunk by 0.2 (bilinear) as make_cifar_c.py does
  (truncated to uint8 where OpenCV rounds: up to one level darker)."""
  names = ['frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg']
  out = []
  for name in names:
    path = pathlib.Path(frost_dir) / name
    if not path.exists():
      raise cifar100.DataError(f'{path}: file not found (need {", ".join(names)})')
    try:
      with Image.open(path) as opened:
        img = np.asarray(opened.convert('RGB'), np.float64)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      raise cifar100.DataError(f'{path}: not a readable image ({type(e).__name__})') from None
    h, w = round(img.shape[0] * 0.2), round(img.shape[1] * 0.2)
    if min(h, w) <= 32:  # frost() cuts a random 32x32 patch out of the shrunk photograph.
      raise cifar100.DataError(f'{path}: {img.shape[1]}x{img.shape[0]} pixels, {w}x{h} after the '
                               '0.2 shrink; the frost photographs must give more than 32x32')
    ys = np.clip((np.arange(h) + 0.5) / 0.2 - 0.5, 0, img.shape[0] - 1)
    xs = np.clip((np.arange(w) + 0.5) / 0.2 - 0.5, 0, img.shape[1] - 1)
    yy, xx = np.meshgrid(ys, xs, indexing='ij')
    out.append(np.stack([ndimage.map_coordinates(img[..., c], [yy, xx], order=1)
                         for c in range(3)], -1).astype(np.uint8))
  return out
