"""AutoAugment (CIFAR10 policy), RandAugment and TrivialAugmentWide on uint8 HWC images.

A jittable re-implementation of torchvision 0.29's policies (`transforms.autoaugment`: tables,
magnitude bins, random signs, nearest interpolation, fill 0) over its uint8 tensor kernels
(`transforms.v2.functional`), float32 arithmetic included, so every op gives torchvision's pixels
bit for bit (tests/test_augment.py; also checked on an H100). torch fuses `a + alpha * b` into one
FMA on CPU and LLVM contracts products into sums unpredictably, so products that feed sums are
written as error-free transformations (`exact.py`) whose rounding cannot change.
Magnitudes follow the v1 classes (Solarize thresholds linspace(255, 0), not v2's 255 * linspace).
The v1 classes (`transforms.AutoAugment`, ...) apply the v1 kernels, which differ from v2's by one
level in a few percent of pixels for Sharpness, Color and AutoContrast (their blends round
differently); against those classes these ops are within one level (an audit measured it).
A script that applies the v1 classes to PIL images (before ToTensor) gets PIL's ImageEnhance
blends: Color and Contrast then differ by one level in 34 % and 26 % of the pixels (an audit).
"""
import functools

import numpy as np
import jax
import jax.numpy as jnp

from jax_cifar.augment import affine, exact, inputs

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
  """float32 torch.linspace on CPU: start + step * i for the first half, end - step * (n-1-i)
  after, each a fused multiply-add (emulated exactly in float64)."""
  start32, end32 = np.float32(start), np.float32(end)
  step = np.float64((end32 - start32) / np.float32(steps - 1))
  i = np.arange(steps)
  fwd = (np.float64(start32) + step * i).astype(np.float32)
  bwd = (np.float64(end32) - step * (steps - 1 - i)).astype(np.float32)
  return np.where(i < steps // 2, fwd, bwd)


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


# ----------------------------------------------------------------------------- grayscale

def _grayscale(x: jax.Array) -> jax.Array:
  """Floored float32 luma [H,W] of a float32 [H,W,3] image, as torchvision on uint8 input."""
  gray = exact.fma(x[..., 1], jnp.float32(0.587), exact.mul(x[..., 0], jnp.float32(0.2989)))
  return jnp.floor(exact.fma(x[..., 2], jnp.float32(0.114), gray))


# ----------------------------------------------------------------------------- geometric ops

def _thetas(m: jax.Array, h: int, w: int) -> jax.Array:
  """[5, 6] inverse matrices of ShearX, ShearY, TranslateX, TranslateY and Rotate by m.

  Shears use center=[0, 0] (the top-left corner) and tan(atan(m)) == m; translations truncate m
  to whole pixels; F.rotate(m) is an affine by -m about the centre.
  """
  z, one, t = jnp.zeros_like(m), jnp.ones_like(m), jnp.trunc(m)
  r = jnp.deg2rad(-m)
  cos, sin = jnp.cos(r), jnp.sin(r)
  return jnp.stack([jnp.stack(row) for row in (
      (one, m, m * (0.5 * h), z, one, z), (one, z, z, m, one, m * (0.5 * w)),
      (one, z, -t, z, one, z), (one, z, z, z, one, -t), (cos, sin, z, -sin, cos, z))])


# ----------------------------------------------------------------------------- colour ops
# The pointwise ops are 256-entry lookup tables per channel, built with torchvision's arithmetic.

_LEVELS = np.arange(256, dtype=np.float32)


def _apply_lut(image: jax.Array, lut: jax.Array) -> jax.Array:
  """image[..., c] -> lut[c, image[..., c]] for a [3, 256] (or [1, 256]) uint8 table."""
  lut = jnp.broadcast_to(lut, (image.shape[-1], 256))
  return jnp.take_along_axis(lut.T, image.reshape(-1, image.shape[-1]).astype(jnp.int32),
                             axis=0).reshape(image.shape)


def _histograms(image: jax.Array) -> jax.Array:
  """[3, 256] int32 pixel counts per channel."""
  flat = image.reshape(-1, image.shape[-1]).T.astype(jnp.int32)
  return jax.vmap(lambda c: jnp.zeros(256, jnp.int32).at[c].add(1))(flat)


def _brightness_lut(m: jax.Array) -> jax.Array:
  return exact.to_uint8(_LEVELS * (jnp.float32(1.0) + m))[None]


def _contrast_lut(m: jax.Array, gray: jax.Array) -> jax.Array:
  """Blend with the mean of the floored grayscale image.

  The mean is a sum of integers below 2**24, exact in any order; as a dot product it runs ~15x
  faster on CPU than a reduction with the grayscale arithmetic fused into it.
  """
  total = jnp.dot(gray.reshape(-1), jnp.ones(gray.size, jnp.float32),
                  precision=jax.lax.Precision.HIGHEST)
  scaled = exact.mul(_LEVELS, jnp.float32(1.0) + m)
  return exact.to_uint8(exact.fma(total / gray.size, -m, scaled))[None]


def _posterize_lut(bits: jax.Array) -> jax.Array:
  mask = jnp.left_shift(jnp.int32(0xFF), 8 - bits.astype(jnp.int32)) & 0xFF
  return (jnp.arange(256, dtype=jnp.int32) & mask).astype(jnp.uint8)[None]


def _solarize_lut(threshold: jax.Array) -> jax.Array:
  return jnp.where(_LEVELS >= threshold, 255.0 - _LEVELS, _LEVELS).astype(jnp.uint8)[None]


def _autocontrast_lut(hist: jax.Array) -> jax.Array:
  """(v - min) / ((max - min) / 255) per channel; identity for flat channels."""
  present = hist > 0
  lo = jnp.argmax(present, axis=1).astype(jnp.float32)[:, None]
  hi = (255 - jnp.argmax(present[:, ::-1], axis=1)).astype(jnp.float32)[:, None]
  flat = hi == lo
  inv_scale = jnp.where(flat, 1.0, exact.mul(hi - lo, jnp.float32(1.0 / 255.0)))
  diff = _LEVELS - jnp.where(flat, 0.0, lo)
  return exact.to_uint8(exact.div(diff, jnp.broadcast_to(inv_scale, diff.shape)))


def _equalize_lut(hist: jax.Array) -> jax.Array:
  """PIL's equalisation table, as torchvision's uint8 kernel (identity when step == 0)."""
  cum = jnp.cumsum(hist, axis=1)
  last = jnp.take_along_axis(hist, jnp.argmax(cum, axis=1)[:, None], axis=1)
  step = (cum[:, -1:] - last) // 255  # pixels outside the last non-empty bin, over 255
  lut = jnp.clip((cum[:, :-1] + step // 2) // jnp.maximum(step, 1), 0, 255)
  lut = jnp.concatenate([jnp.zeros_like(step), lut], axis=1)
  return jnp.where(step != 0, lut, jnp.arange(256)[None]).astype(jnp.uint8)


def _invert_lut() -> jax.Array:
  return (255 - jnp.arange(256, dtype=jnp.int32)).astype(jnp.uint8)[None]


def _sharpness_blur(x: jax.Array) -> jax.Array:
  """Rounded 3x3 smoothing (1s around a 5, over 13) of a float image, zero on the border."""
  h, w, _ = x.shape
  a, b = jnp.float32(1.0 / 13.0), jnp.float32(5.0 / 13.0)
  blurred = 0.0
  for dy in range(3):
    for dx in range(3):
      blurred = blurred + x[dy:dy + h - 2, dx:dx + w - 2] * (b if dy == dx == 1 else a)
  return jnp.pad(jnp.round(blurred), ((1, 1), (1, 1), (0, 0)))


def _border(h: int, w: int) -> jax.Array:
  rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
  return (rows == 0) | (rows == h - 1) | (cols == 0) | (cols == w - 1)


_LUT_OPS = ('Brightness', 'Contrast', 'Posterize', 'Solarize', 'AutoContrast', 'Equalize', 'Invert')


def apply_op(image: jax.Array, op: jax.Array, magnitude: jax.Array, bilinear: bool = False
             ) -> jax.Array:
  """Applies OP_NAMES[op] (a traced int) with a signed float32 magnitude to one image.

  Geometric ops interpolate nearest (the policies' default) or, with `bilinear`, bilinearly
  (AugMix's default).

  Under vmap every branch runs for every image, so branches share work: one warp for the five
  geometric ops, one table lookup for the seven pointwise ops, one fused blend for Color and
  Sharpness, and a single histogram and grayscale image.
  """
  h, w, _ = image.shape
  m = jnp.asarray(magnitude, jnp.float32)
  x = image.astype(jnp.float32)
  name = lambda n: OP_NAMES.index(n)
  warp = affine.bilinear if bilinear else affine.nearest
  warped = warp(image, _thetas(m, h, w)[jnp.clip(op - name('ShearX'), 0, 4)])
  gray, hist = _grayscale(x), _histograms(image)
  luts = jnp.stack([jnp.broadcast_to(lut, (3, 256)) for lut in (
      _brightness_lut(m), _contrast_lut(m, gray), _posterize_lut(m), _solarize_lut(m),
      _autocontrast_lut(hist), _equalize_lut(hist), _invert_lut())])
  lut_index = sum(jnp.where(op == name(n), i, 0) for i, n in enumerate(_LUT_OPS))
  looked_up = _apply_lut(image, luts[lut_index])
  is_color = op == name('Color')  # Color: fma(gray, -m, x (1 + m)); Sharpness: fma(-m, blur - x, x).
  blended = exact.to_uint8(exact.fma_small(
      jnp.where(is_color, gray[..., None], _sharpness_blur(x) - x), -m,
      jnp.where(is_color, exact.mul(x, jnp.float32(1.0) + m), x)))
  blended = jnp.where(_border(h, w) & ~is_color, image, blended)
  kind = jnp.where(op == 0, 0, jnp.where(op <= len(_GEOMETRIC), 1, 2))
  kind = jnp.where((op == name('Color')) | (op == name('Sharpness')), 3, kind)
  return jax.lax.select_n(kind, image, warped, looked_up, blended)


@functools.partial(jax.jit, static_argnames=('name', 'bilinear'))
def apply_named(image: jax.Array, name: str, magnitude: float | jax.Array = 0.0,
                bilinear: bool = False) -> jax.Array:
  """One op by torchvision name, as `_apply_op(img, name, magnitude)` with fill 0."""
  return apply_op(image, jnp.int32(OP_NAMES.index(name)), magnitude, bilinear)


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


def apply_ops(image: jax.Array, ops: jax.Array, magnitudes: jax.Array, bilinear: bool = False
              ) -> jax.Array:
  """Applies ops[i] with magnitudes[i] in turn; a loop, so `apply_op` is compiled once."""
  return jax.lax.fori_loop(0, ops.shape[0],
                           lambda i, x: apply_op(x, ops[i], magnitudes[i], bilinear), image)


def _randint(u: jax.Array, n: int) -> jax.Array:
  """A uniform integer in [0, n) from a uniform draw in [0, 1)."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _signed(u: jax.Array, magnitude: jax.Array, signed: jax.Array) -> jax.Array:
  """Negates a signed op's magnitude with probability 1/2."""
  return jnp.where(signed & (u < 0.5), -magnitude, magnitude)


POLICIES = ('none', 'autoaugment_cifar10', 'randaugment', 'trivialaugment')  # augment.policy


def _unknown(policy: str) -> ValueError:
  return ValueError(f'unknown augmentation policy {policy!r}: one of {", ".join(POLICIES)}')


def num_draws(policy: str, num_ops: int = 2) -> int:
  """How many uniform draws `apply_policy_draws` consumes per image."""
  if policy not in POLICIES:
    raise _unknown(policy)
  return dict(zip(POLICIES, (0, 5, 2 * num_ops, 3)))[policy]


def autoaugment_cifar10(u: jax.Array, image: jax.Array) -> jax.Array:
  """AutoAugment(AutoAugmentPolicy.CIFAR10): one of 25 sub-policies, each op with its probability."""
  names, mags, signed = _space_tables('autoaugment_cifar10', 10, image.shape[:2])
  table = lambda f: jnp.asarray(np.array([[f(*op) for op in sub] for sub in CIFAR10_POLICY]))
  sub = _randint(u[0], len(CIFAR10_POLICY))
  ops = jnp.where(u[1:3] <= table(lambda n, p, b: np.float32(p))[sub],
                  table(lambda n, p, b: OP_NAMES.index(n))[sub], 0)
  magnitudes = _signed(u[3:5], table(lambda n, p, b: mags[names.index(n), b or 0])[sub],
                       table(lambda n, p, b: signed[names.index(n)])[sub])
  return apply_ops(image, ops, magnitudes)


def randaugment(u: jax.Array, image: jax.Array, num_ops: int = 2, magnitude: int = 9,
                num_bins: int = 31) -> jax.Array:
  """RandAugment: `num_ops` uniformly drawn ops (Identity included), all at bin `magnitude`;
  `u` holds the 2 * num_ops uniforms of `num_draws` (two per op: which op, which sign)."""
  if u.shape != (2 * num_ops,):  # The op count had come from len(u) alone, num_ops unread (a review).
    raise ValueError(f'randaugment with num_ops={num_ops} takes {2 * num_ops} uniforms '
                     f'(num_draws), got an array of shape {tuple(u.shape)}')
  names, mags, signed = _space_tables('randaugment', num_bins, image.shape[:2])
  global_ops = jnp.asarray([OP_NAMES.index(n) for n in names], jnp.int32)
  i = _randint(u[0::2], len(names))
  m = _signed(u[1::2], jnp.asarray(mags[:, magnitude])[i], jnp.asarray(signed)[i])
  return apply_ops(image, global_ops[i], m)


def trivialaugment(u: jax.Array, image: jax.Array, num_bins: int = 31) -> jax.Array:
  """TrivialAugmentWide: one uniformly drawn op at a uniformly drawn bin."""
  names, mags, signed = _space_tables('trivialaugment', num_bins, image.shape[:2])
  global_ops = jnp.asarray([OP_NAMES.index(n) for n in names], jnp.int32)
  i, b = _randint(u[0], len(names)), _randint(u[1], num_bins)
  m = _signed(u[2], jnp.asarray(mags)[i, b], jnp.asarray(signed)[i])
  return apply_op(image, global_ops[i], m)


def apply_policy_draws(u: jax.Array, image: jax.Array, policy: str, *, num_ops: int = 2,
                       magnitude: int = 9) -> jax.Array:
  """Applies the named policy to one uint8 HWC image, driven by `num_draws` uniforms `u`."""
  if policy == 'none':
    return image
  if policy == 'autoaugment_cifar10':
    return autoaugment_cifar10(u, image)
  if policy == 'randaugment':
    return randaugment(u, image, num_ops, magnitude)
  if policy == 'trivialaugment':
    return trivialaugment(u, image)
  raise _unknown(policy)


def apply_policy(key: jax.Array, image: jax.Array, policy: str, *, num_ops: int = 2,
                 magnitude: int = 9) -> jax.Array:
  """Applies the named policy to one uint8 HWC image."""
  inputs.check_uint8(image, 'apply_policy', batch=False)
  u = jax.random.uniform(key, (num_draws(policy, num_ops),))
  return apply_policy_draws(u, image, policy, num_ops=num_ops, magnitude=magnitude)



grayscale, randint = _grayscale, _randint  # for augmix.py and photometric.py
