"""JPEG-like compression of uint8 HWC images on device: what a JPEG round trip does to pixels.

Per image: RGB -> YCbCr and back with libjpeg's fixed-point tables (JFIF), 8x8 orthonormal DCT of
each plane, quantisation by the standard (Annex K) luminance/chrominance tables scaled by the
quality as libjpeg's `jpeg_set_quality` (baseline: entries clamped to [1, 255]), rounding half
away from zero, then the inverse. Chroma is kept at full resolution (4:4:4), or with
`subsampling='4:2:0'` (what PIL, libjpeg and CIFAR-100-C's JPEG use by default) averaged over 2x2
pixels before its DCT (libjpeg's h2v2_downsample) and brought back by libjpeg's triangle
("fancy") upsampling, which blurs colour edges as real JPEG files do. The DCT runs in float32
rather than libjpeg's integer DCT, so pixels differ from PIL's by about a level
(tests/test_photometric.py measures it); sizes that are not multiples of 8 (16 with 4:2:0) are
edge-padded as libjpeg does.
"""

import jax
import jax.numpy as jnp
import numpy as np

LUMINANCE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], np.int32)
CHROMINANCE = np.full((8, 8), 99, np.int32)
CHROMINANCE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]

_SCALEBITS = 16
_HALF = 1 << (_SCALEBITS - 1)


def _fix(x: float) -> int:
  return int(x * (1 << _SCALEBITS) + 0.5)


def _dct_matrix() -> np.ndarray:
  """[8, 8] orthonormal DCT-II: C[k, n] = a_k cos((2n + 1) k pi / 16) (JPEG's 8x8 DCT)."""
  k, n = np.arange(8)[:, None], np.arange(8)[None, :]
  c = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
  c[0] /= np.sqrt(2)
  return c.astype(np.float32)


def quant_tables(quality: jax.Array) -> jax.Array:
  """[2, 8, 8] int32 luminance and chrominance tables of a quality in [1, 100] (libjpeg)."""
  q = jnp.clip(jnp.asarray(quality, jnp.int32), 1, 100)
  scale = jnp.where(q < 50, 5000 // q, 200 - 2 * q)
  base = jnp.asarray(np.stack([LUMINANCE, CHROMINANCE]))
  return jnp.clip((base * scale + 50) // 100, 1, 255)


def rgb_to_ycbcr(image: jax.Array) -> jax.Array:
  """uint8 RGB -> int32 YCbCr in [0, 255], libjpeg's rgb_ycc_convert (rounding included)."""
  r, g, b = (image[..., i].astype(jnp.int32) for i in range(3))
  offset = (128 << _SCALEBITS) + _HALF - 1
  y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + _HALF) >> _SCALEBITS
  cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset) >> _SCALEBITS
  cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset) >> _SCALEBITS
  return jnp.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycc: jax.Array) -> jax.Array:
  """int32 YCbCr in [0, 255] -> uint8 RGB, libjpeg's ycc_rgb_convert (range-limited)."""
  y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
  r = y + ((_fix(1.402) * cr + _HALF) >> _SCALEBITS)
  g = y + ((-_fix(0.34414) * cb + _HALF - _fix(0.71414) * cr) >> _SCALEBITS)
  b = y + ((_fix(1.772) * cb + _HALF) >> _SCALEBITS)
  return jnp.clip(jnp.stack([r, g, b], axis=-1), 0, 255).astype(jnp.uint8)


SUBSAMPLINGS = ('4:4:4', '4:2:0')  # augment.jpeg_subsampling


def _block_round_trip(planes: jax.Array, tables: jax.Array) -> jax.Array:
  """int32 [H, W, C] planes (H, W multiples of 8) -> quantised in 8x8 DCT blocks with the [C, 8,
  8] tables and back, rounded and clamped to [0, 255] as libjpeg's decoder does."""
  hh, ww, ch = planes.shape
  blocks = (planes.astype(jnp.float32) - 128.0).reshape(hh // 8, 8, ww // 8, 8, ch)
  c = jnp.asarray(_dct_matrix())
  hi = jax.lax.Precision.HIGHEST
  coef = jnp.einsum('uy,aybxc,vx->aubvc', c, blocks, c, precision=hi)
  q = tables.astype(jnp.float32).transpose(1, 2, 0)[None, :, None, :, :]  # [1, 8, 1, 8, C]
  levels = jnp.sign(coef) * jnp.floor(jnp.abs(coef) / q + 0.5)
  rec = jnp.einsum('uy,aubvc,vx->aybxc', c, levels * q, c, precision=hi)
  return jnp.clip(jnp.round(rec + 128.0), 0, 255).astype(jnp.int32).reshape(hh, ww, ch)


def downsample_2x2(planes: jax.Array) -> jax.Array:
  """int32 [H, W, C] -> [H/2, W/2, C]: libjpeg's h2v2_downsample (the 2x2 mean, its rounding
  bias alternating 1, 2 along each row)."""
  s = planes[0::2, 0::2] + planes[0::2, 1::2] + planes[1::2, 0::2] + planes[1::2, 1::2]
  bias = jnp.where(jnp.arange(s.shape[1]) % 2 == 0, 1, 2)[None, :, None]
  return (s + bias) >> 2


def upsample_2x2(planes: jax.Array) -> jax.Array:
  """int32 [h, w, C] -> [2h, 2w, C]: libjpeg's h2v2_fancy_upsample (each output pixel 9/16 of its
  sample, 3/16 of each nearer neighbour, 1/16 of the diagonal one; edges replicated)."""
  h, w, ch = planes.shape
  above = jnp.concatenate([planes[:1], planes[:-1]], 0)
  below = jnp.concatenate([planes[1:], planes[-1:]], 0)
  rows = jnp.stack([3 * planes + above, 3 * planes + below], 1).reshape(2 * h, w, ch)
  left = jnp.concatenate([rows[:, :1], rows[:, :-1]], 1)
  right = jnp.concatenate([rows[:, 1:], rows[:, -1:]], 1)
  return jnp.stack([(3 * rows + left + 8) >> 4, (3 * rows + right + 7) >> 4],
                   2).reshape(2 * h, 2 * w, ch)


def jpeg(image: jax.Array, quality: jax.Array, subsampling: str = '4:4:4') -> jax.Array:
  """One uint8 HWC RGB image through JPEG-like compression at `quality` (traced int, 1-100), with
  the chroma `subsampling` of SUBSAMPLINGS."""
  if subsampling not in SUBSAMPLINGS:
    raise ValueError(f'subsampling must be one of {SUBSAMPLINGS}, got {subsampling!r}')
  h, w, _ = image.shape
  tables = quant_tables(quality)
  if subsampling == '4:4:4':
    ycc = rgb_to_ycbcr(jnp.pad(image, ((0, -h % 8), (0, -w % 8), (0, 0)), mode='edge'))
    return ycbcr_to_rgb(_block_round_trip(ycc, tables[jnp.asarray([0, 1, 1])])[:h, :w])
  # libjpeg's edges: columns repeated at full resolution up to the 16-pixel MCU before the 2x2
  # means (jcsample), rows only up to an even count, the chroma's last row then repeated
  # (jcprepct); the decoder upsamples the real chroma samples only, repeating the last one.
  ycc = rgb_to_ycbcr(jnp.pad(image, ((0, h % 2), (0, -w % 16), (0, 0)), mode='edge'))
  hp = h + (-h % 16)
  luma = _block_round_trip(jnp.pad(ycc[..., :1], ((0, hp - ycc.shape[0]), (0, 0), (0, 0)),
                                   mode='edge'), tables[:1])
  chroma = downsample_2x2(ycc[..., 1:])
  chroma = jnp.pad(chroma, ((0, hp // 2 - chroma.shape[0]), (0, 0), (0, 0)), mode='edge')
  chroma = _block_round_trip(chroma, tables[jnp.asarray([1, 1])])[:(h + 1) // 2, :(w + 1) // 2]
  return ycbcr_to_rgb(jnp.concatenate([luma[:h, :w], upsample_2x2(chroma)[:h, :w]], -1))
