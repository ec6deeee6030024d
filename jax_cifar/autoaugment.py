"""AutoAugment (CIFAR10 policy), RandAugment and TrivialAugmentWide on uint8 HWC images.

A jittable re-implementation of torchvision 0.29's tensor kernels
(`transforms.v2.functional`) and policies (`transforms.autoaugment`): same magnitude bins, random
signs, nearest interpolation, fill 0, and the same float32 arithmetic, so single ops give
torchvision's pixels (bit-exact for the colour ops; see tests/test_augment.py for the geometric
ones). torch fuses `a + alpha * b` into one FMA on CPU; `_fma` reproduces that rounding with
error-free transformations so the result does not depend on what XLA contracts.
"""

import numpy as np
import jax
import jax.numpy as jnp

# Op order of torchvision's augmentation spaces (Identity first, as RandAugment/TrivialAugment).
OP_NAMES = ('Identity', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Brightness',
            'Color', 'Contrast', 'Sharpness', 'Posterize', 'Solarize', 'AutoContrast', 'Equalize',
            'Invert')
_GEOMETRIC = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate')

# torchvision AutoAugment(AutoAugmentPolicy.CIFAR10): 25 sub-policies of (op, probability, bin).
CIFAR10_POLICY = (
    (('Invert', 0.1, None), ('Contrast', 0.2, 6)),
    (('Rotate', 0.7, 2), ('TranslateX', 0.3, 9)),
    (('Sharpness', 0.8, 1), ('Sharpness', 0.9, 3)),
    (('ShearY', 0.5, 8), ('TranslateY', 0.7, 9)),
    (('AutoContrast', 0.5, None), ('Equalize', 0.9, None)),
    (('ShearY', 0.2, 7), ('Posterize', 0.3, 7)),
    (('Color', 0.4, 3), ('Brightness', 0.6, 7)),
    (('Sharpness', 0.3, 9), ('Brightness', 0.7, 9)),
    (('Equalize', 0.6, None), ('Equalize', 0.5, None)),
    (('Contrast', 0.6, 7), ('Sharpness', 0.6, 5)),
    (('Color', 0.7, 7), ('TranslateX', 0.5, 8)),
    (('Equalize', 0.3, None), ('AutoContrast', 0.4, None)),
    (('TranslateY', 0.4, 3), ('Sharpness', 0.2, 6)),
    (('Brightness', 0.9, 6), ('Color', 0.2, 8)),
    (('Solarize', 0.5, 2), ('Invert', 0.0, None)),
    (('Equalize', 0.2, None), ('AutoContrast', 0.6, None)),
    (('Equalize', 0.2, None), ('Equalize', 0.6, None)),
    (('Color', 0.9, 9), ('Equalize', 0.6, None)),
    (('AutoContrast', 0.8, None), ('Solarize', 0.2, 8)),
    (('Brightness', 0.1, 3), ('Color', 0.7, 0)),
    (('Solarize', 0.4, 5), ('AutoContrast', 0.9, None)),
    (('TranslateY', 0.9, 9), ('TranslateY', 0.7, 9)),
    (('AutoContrast', 0.9, None), ('Solarize', 0.8, 3)),
    (('Equalize', 0.8, None), ('Invert', 0.1, None)),
    (('TranslateY', 0.7, 9), ('AutoContrast', 0.9, None)),
)


# ----------------------------------------------------------------------------- magnitude bins

def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """float32 torch.linspace: forward from `start` for the first half, backward from `end` after."""
  start32, end32 = np.float32(start), np.float32(end)
  step = (end32 - start32) / np.float32(steps - 1)
  i = np.arange(steps)
  fwd = start32 + step * i.astype(np.float32)
  bwd = end32 - step * (steps - 1 - i).astype(np.float32)
  return np.where(i < steps // 2, fwd, bwd).astype(np.float32)


def augmentation_space(policy: str, num_bins: int, image_size: tuple[int, int]
                       ) -> dict[str, tuple[np.ndarray | None, bool]]:
  """op -> (float32 magnitudes per bin or None, signed), as torchvision's `_augmentation_space`."""
  h, w = image_size
  wide = policy == 'trivialaugment'
  top = 0.99 if wide else 0.9
  posterize_span = 6 if wide else 4
  space = {
      'Identity': (None, False),
      'ShearX': (torch_linspace(0.0, 0.99 if wide else 0.3, num_bins), True),
      'ShearY': (torch_linspace(0.0, 0.99 if wide else 0.3, num_bins), True),
      'TranslateX': (torch_linspace(0.0, 32.0 if wide else 150.0 / 331.0 * w, num_bins), True),
      'TranslateY': (torch_linspace(0.0, 32.0 if wide else 150.0 / 331.0 * h, num_bins), True),
      'Rotate': (torch_linspace(0.0, 135.0 if wide else 30.0, num_bins), True),
      'Brightness': (torch_linspace(0.0, top, num_bins), True),
      'Color': (torch_linspace(0.0, top, num_bins), True),
      'Contrast': (torch_linspace(0.0, top, num_bins), True),
      'Sharpness': (torch_linspace(0.0, top, num_bins), True),
      'Posterize': (8 - np.round(np.arange(num_bins, dtype=np.float32)
                                 / np.float32((num_bins - 1) / posterize_span)).astype(np.float32), False),
      'Solarize': (torch_linspace(255.0, 0.0, num_bins), False),
      'AutoContrast': (None, False),
      'Equalize': (None, False),
  }
  if policy == 'autoaugment_cifar10':
    del space['Identity']
    space['Invert'] = (None, False)
  return space


# ----------------------------------------------------------------------------- float helpers

def _split(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """a == hi + lo exactly, each with at most 12 significant bits (so their products are exact)."""
  hi = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(a, jnp.uint32) & jnp.uint32(0xFFFFF000), jnp.float32)
  return hi, a - hi


def _fma(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
  """float32 a * b + c with one rounding, like torch's fused `add_(b, alpha=a)` on CPU."""
  p = a * b
  ah, al = _split(a)
  bh, bl = _split(b)
  p_err = ((ah * bh - p) + ah * bl + al * bh) + al * bl  # Dekker: a * b == p + p_err exactly.
  s = p + c
  bb = s - p
  s_err = (p - (s - bb)) + (c - bb)  # Knuth: p + c == s + s_err exactly.
  return s + (s_err + p_err)


def _div(a: jax.Array, b: jax.Array) -> jax.Array:
  """Correctly rounded float32 a / b (b > 0).

  XLA rewrites `x / broadcast(y)` into `x * (1 / y)`, which can be an ulp off; pick the neighbour
  of that quotient with the smallest exact residual a - q * b.
  """
  q0 = a / b
  bh, bl = _split(b)

  def residual(q):
    p = q * b
    qh, ql = _split(q)
    return jnp.abs((a - p) - (((qh * bh - p) + qh * bl + ql * bh) + ql * bl))

  best, best_r = q0, residual(q0)
  for q in (jnp.nextafter(q0, -jnp.inf), jnp.nextafter(q0, jnp.inf)):
    r = residual(q)
    best, best_r = jnp.where(r < best_r, q, best), jnp.minimum(r, best_r)
  return best


def _to_uint8(x: jax.Array) -> jax.Array:
  """torch's `.clamp_(0, 255).to(torch.uint8)`: clamp, then truncate."""
  return jnp.clip(x, 0.0, 255.0).astype(jnp.uint8)


def _grayscale(x: jax.Array) -> jax.Array:
  """Floored float32 luma [H,W] of a float32 [H,W,3] image, as torchvision on uint8 input."""
  gray = _fma(x[..., 1], jnp.float32(0.587), x[..., 0] * jnp.float32(0.2989))
  return jnp.floor(_fma(x[..., 2], jnp.float32(0.114), gray))


def _blend(x: jax.Array, other: jax.Array, m: jax.Array) -> jax.Array:
  """torchvision `_blend` with ratio 1 + m: x * ratio + other * (1 - ratio), fused, truncated.

  torch computes 1 - ratio in float64 from the exact 1 + m, which is exactly -m.
  """
  return _to_uint8(_fma(other, -m, x * (jnp.float32(1.0) + m)))


# ----------------------------------------------------------------------------- geometric ops

def affine_nearest(image: jax.Array, theta: jax.Array) -> jax.Array:
  """Nearest-neighbour warp with torchvision's inverse matrix `theta` (6,), fill 0.

  Mirrors `_affine_grid` + `grid_sample(align_corners=False)`: output pixel centres relative to
  the image centre, mapped by theta, normalised by half the size, unnormalised, rounded half-even.
  """
  h, w, _ = image.shape
  t = theta.astype(jnp.float32) / jnp.float32(0.5 * w)
  t = t.at[3:].set(theta[3:].astype(jnp.float32) / jnp.float32(0.5 * h))
  x = (jnp.arange(w, dtype=jnp.float32) - jnp.float32((w - 1) / 2))[None, :]
  y = (jnp.arange(h, dtype=jnp.float32) - jnp.float32((h - 1) / 2))[:, None]
  gx = (x * t[0] + y * t[1]) + t[2]
  gy = (x * t[3] + y * t[4]) + t[5]
  ix = jnp.round(((gx + 1.0) * w - 1.0) / 2.0)
  iy = jnp.round(((gy + 1.0) * h - 1.0) / 2.0)
  valid = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)
  ixi = jnp.clip(ix, 0, w - 1).astype(jnp.int32)
  iyi = jnp.clip(iy, 0, h - 1).astype(jnp.int32)
  return jnp.where(valid[..., None], image[iyi, ixi], jnp.zeros((), image.dtype))


def _shear_x_theta(m: jax.Array, h: int, w: int) -> jax.Array:
  # F.affine(shear=[degrees(atan(m)), 0], center=[0, 0]): x_src = x + m * y around the top-left.
  z, one = jnp.zeros_like(m), jnp.ones_like(m)
  return jnp.stack([one, m, m * (0.5 * h), z, one, z])


def _shear_y_theta(m: jax.Array, h: int, w: int) -> jax.Array:
  z, one = jnp.zeros_like(m), jnp.ones_like(m)
  return jnp.stack([one, z, z, m, one, m * (0.5 * w)])


def _translate_theta(tx: jax.Array, ty: jax.Array) -> jax.Array:
  z, one = jnp.zeros_like(tx), jnp.ones_like(tx)
  return jnp.stack([one, z, -jnp.trunc(tx), z, one, -jnp.trunc(ty)])


def _rotate_theta(angle: jax.Array) -> jax.Array:
  # F.rotate(angle) == affine with -angle about the centre; inverse matrix [cos, sin; -sin, cos].
  r = jnp.deg2rad(-angle)
  c, s, z = jnp.cos(r), jnp.sin(r), jnp.zeros_like(r)
  return jnp.stack([c, s, z, -s, c, z])


def shear_x(image: jax.Array, m: jax.Array) -> jax.Array:
  return affine_nearest(image, _shear_x_theta(jnp.float32(m), *image.shape[:2]))


def shear_y(image: jax.Array, m: jax.Array) -> jax.Array:
  return affine_nearest(image, _shear_y_theta(jnp.float32(m), *image.shape[:2]))


def translate_x(image: jax.Array, m: jax.Array) -> jax.Array:
  m = jnp.float32(m)
  return affine_nearest(image, _translate_theta(m, jnp.zeros_like(m)))


def translate_y(image: jax.Array, m: jax.Array) -> jax.Array:
  m = jnp.float32(m)
  return affine_nearest(image, _translate_theta(jnp.zeros_like(m), m))


def rotate(image: jax.Array, angle: jax.Array) -> jax.Array:
  return affine_nearest(image, _rotate_theta(jnp.float32(angle)))


# ----------------------------------------------------------------------------- colour ops

def brightness(image: jax.Array, m: jax.Array) -> jax.Array:
  """F.adjust_brightness(1 + m)."""
  return _to_uint8(image.astype(jnp.float32) * (jnp.float32(1.0) + jnp.float32(m)))


def color(image: jax.Array, m: jax.Array) -> jax.Array:
  """F.adjust_saturation(1 + m): blend with the floored grayscale image."""
  x = image.astype(jnp.float32)
  return _blend(x, _grayscale(x)[..., None], jnp.float32(m))


def contrast(image: jax.Array, m: jax.Array) -> jax.Array:
  """F.adjust_contrast(1 + m): blend with the mean of the floored grayscale image."""
  x = image.astype(jnp.float32)
  return _blend(x, jnp.mean(_grayscale(x)), jnp.float32(m))


def sharpness(image: jax.Array, m: jax.Array) -> jax.Array:
  """F.adjust_sharpness(1 + m): blend the interior with a rounded 3x3 smoothing; borders kept."""
  x = image.astype(jnp.float32)
  h, w, _ = x.shape
  a, b = jnp.float32(1.0 / 13.0), jnp.float32(5.0 / 13.0)
  blurred = jnp.zeros((h - 2, w - 2, x.shape[2]), jnp.float32)
  for dy in range(3):
    for dx in range(3):
      blurred = blurred + x[dy:dy + h - 2, dx:dx + w - 2] * (b if dy == dx == 1 else a)
  inner = x[1:-1, 1:-1]
  inner = _fma(-jnp.float32(m), jnp.round(blurred) - inner, inner)  # alpha = 1 - (1 + m) = -m
  return _to_uint8(x.at[1:-1, 1:-1].set(inner))


def posterize(image: jax.Array, bits: jax.Array) -> jax.Array:
  """F.posterize(int(bits)): keep the top `bits` bits."""
  shift = 8 - jnp.asarray(bits).astype(jnp.int32)
  mask = jnp.left_shift(jnp.int32(0xFF), shift) & 0xFF
  return image & mask.astype(jnp.uint8)


def solarize(image: jax.Array, threshold: jax.Array) -> jax.Array:
  """F.solarize(threshold): invert pixels >= threshold."""
  return jnp.where(image.astype(jnp.float32) >= jnp.float32(threshold), 255 - image, image)


def autocontrast(image: jax.Array, m: jax.Array | None = None) -> jax.Array:
  """F.autocontrast: stretch each channel to [0, 255] (unchanged where flat)."""
  del m
  x = image.astype(jnp.float32)
  lo = jnp.min(x, axis=(0, 1))
  hi = jnp.max(x, axis=(0, 1))
  flat = hi == lo
  inv_scale = jnp.where(flat, 1.0, (hi - lo) * jnp.float32(1.0 / 255.0))
  lo = jnp.where(flat, 0.0, lo)
  return _to_uint8(_div(x - lo, jnp.broadcast_to(inv_scale, x.shape)))


def _equalize_channel(c: jax.Array) -> jax.Array:
  hist = jnp.zeros(256, jnp.int32).at[c].add(1)
  cum = jnp.cumsum(hist)
  n = c.size
  step = (n - hist[jnp.argmax(cum)]) // 255  # pixels not in the last non-empty bin, over 255
  lut = jnp.clip((cum[:-1] + step // 2) // jnp.maximum(step, 1), 0, 255)
  lut = jnp.concatenate([jnp.zeros(1, jnp.int32), lut]).astype(jnp.uint8)
  return jnp.where(step != 0, lut[c], c)


def equalize(image: jax.Array, m: jax.Array | None = None) -> jax.Array:
  """F.equalize: PIL-style histogram equalisation per channel."""
  del m
  return jnp.moveaxis(jax.vmap(_equalize_channel, in_axes=2)(image), 0, 2)


def invert(image: jax.Array, m: jax.Array | None = None) -> jax.Array:
  del m
  return 255 - image


def identity(image: jax.Array, m: jax.Array | None = None) -> jax.Array:
  del m
  return image


OPS = {
    'Identity': identity, 'ShearX': shear_x, 'ShearY': shear_y, 'TranslateX': translate_x,
    'TranslateY': translate_y, 'Rotate': rotate, 'Brightness': brightness, 'Color': color,
    'Contrast': contrast, 'Sharpness': sharpness, 'Posterize': posterize, 'Solarize': solarize,
    'AutoContrast': autocontrast, 'Equalize': equalize, 'Invert': invert,
}


def apply_op(image: jax.Array, op: jax.Array, magnitude: jax.Array) -> jax.Array:
  """Applies OP_NAMES[op] (a traced int) with a signed float32 magnitude to one image.

  The five geometric ops share one warp: their inverse matrices are selected, not their images.
  """
  h, w, _ = image.shape
  m = jnp.asarray(magnitude, jnp.float32)
  thetas = jnp.stack([_shear_x_theta(m, h, w), _shear_y_theta(m, h, w),
                      _translate_theta(m, jnp.zeros_like(m)), _translate_theta(jnp.zeros_like(m), m),
                      _rotate_theta(m)])
  geo = jnp.clip(op - OP_NAMES.index('ShearX'), 0, len(_GEOMETRIC) - 1)
  warped = affine_nearest(image, thetas[geo])
  branches = [identity] + [lambda x, _: warped] + [OPS[n] for n in OP_NAMES[6:]]
  index = jnp.where(op == 0, 0, jnp.where(op <= len(_GEOMETRIC), 1, op - len(_GEOMETRIC) + 1))
  return jax.lax.switch(index, branches, image, m)


# ----------------------------------------------------------------------------- policies

def _space_tables(policy: str, num_bins: int, image_size: tuple[int, int]
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Op names, [ops, bins] float32 magnitudes (0 for ops without one) and signed flags."""
  space = augmentation_space(policy, num_bins, image_size)
  names = list(space)
  mags = np.zeros((len(names), num_bins), np.float32)
  for i, (bins, _) in enumerate(space.values()):
    if bins is not None:
      mags[i] = bins
  return names, mags, np.array([signed for _, signed in space.values()])


def _signed(key: jax.Array, magnitude: jax.Array, signed: jax.Array) -> jax.Array:
  """Negates a signed op's magnitude with probability 1/2."""
  return jnp.where(signed & jax.random.bernoulli(key), -magnitude, magnitude)


def autoaugment_cifar10(key: jax.Array, image: jax.Array) -> jax.Array:
  """AutoAugment(AutoAugmentPolicy.CIFAR10): one of 25 sub-policies, each op with its probability."""
  names, mags, signed = _space_tables('autoaugment_cifar10', 10, image.shape[:2])
  ops = np.array([[OP_NAMES.index(n) for n, _, _ in sub] for sub in CIFAR10_POLICY], np.int32)
  probs = np.array([[p for _, p, _ in sub] for sub in CIFAR10_POLICY], np.float32)
  sub_mags = np.array([[mags[names.index(n), b or 0] for n, _, b in sub] for sub in CIFAR10_POLICY])
  sub_signed = np.array([[signed[names.index(n)] for n, _, _ in sub] for sub in CIFAR10_POLICY])
  k_sub, k_apply, k_sign = jax.random.split(key, 3)
  sub = jax.random.randint(k_sub, (), 0, len(CIFAR10_POLICY))
  apply = jax.random.uniform(k_apply, (2,)) <= jnp.asarray(probs)[sub]
  for i, k in enumerate(jax.random.split(k_sign, 2)):
    op = jnp.where(apply[i], jnp.asarray(ops)[sub, i], 0)
    m = _signed(k, jnp.asarray(sub_mags)[sub, i], jnp.asarray(sub_signed)[sub, i])
    image = apply_op(image, op, m)
  return image


def randaugment(key: jax.Array, image: jax.Array, num_ops: int = 2, magnitude: int = 9,
                num_bins: int = 31) -> jax.Array:
  """RandAugment: `num_ops` uniformly drawn ops (Identity included), all at bin `magnitude`."""
  names, mags, signed = _space_tables('randaugment', num_bins, image.shape[:2])
  global_ops = jnp.asarray([OP_NAMES.index(n) for n in names], jnp.int32)
  for k in jax.random.split(key, num_ops):
    k_op, k_sign = jax.random.split(k)
    i = jax.random.randint(k_op, (), 0, len(names))
    m = _signed(k_sign, jnp.asarray(mags[:, magnitude])[i], jnp.asarray(signed)[i])
    image = apply_op(image, global_ops[i], m)
  return image


def trivialaugment(key: jax.Array, image: jax.Array, num_bins: int = 31) -> jax.Array:
  """TrivialAugmentWide: one uniformly drawn op at a uniformly drawn bin."""
  names, mags, signed = _space_tables('trivialaugment', num_bins, image.shape[:2])
  global_ops = jnp.asarray([OP_NAMES.index(n) for n in names], jnp.int32)
  k_op, k_bin, k_sign = jax.random.split(key, 3)
  i = jax.random.randint(k_op, (), 0, len(names))
  b = jax.random.randint(k_bin, (), 0, num_bins)
  m = _signed(k_sign, jnp.asarray(mags)[i, b], jnp.asarray(signed)[i])
  return apply_op(image, global_ops[i], m)


def apply_policy(key: jax.Array, image: jax.Array, policy: str, *, num_ops: int = 2,
                 magnitude: int = 9) -> jax.Array:
  """Applies the named policy to one uint8 HWC image."""
  if policy == 'autoaugment_cifar10':
    return autoaugment_cifar10(key, image)
  if policy == 'randaugment':
    return randaugment(key, image, num_ops, magnitude)
  if policy == 'trivialaugment':
    return trivialaugment(key, image)
  raise ValueError(f'unknown augmentation policy {policy!r}')
