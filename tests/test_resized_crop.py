"""RandomResizedCrop: torchvision's sampled box given the same uniforms (its 10-attempt loop and
fallback run with its random calls answered from our draws), and the bilinear resize back."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import real_test_images, require_torch
from jax_cifar.augment import resized_crop as rc

NUM_IMAGES = 64


@pytest.fixture(scope='module')
def images(cifar_dir) -> np.ndarray:
  return real_test_images(cifar_dir, 300, NUM_IMAGES)


def _torchvision_box(torch, transform, size, area_fractions, log_ratios, u_top, u_left):
  """RandomResizedCrop.make_params with uniform_ answering our values and randint floor(u * n)."""
  values = [v for pair in zip(area_fractions, log_ratios) for v in pair]
  positions = [u_top, u_left]

  class _Draw:
    def uniform_(self, low, high):  # pylint: disable=unused-argument
      return torch.tensor([float(values.pop(0))], dtype=torch.float32)

  real = torch.empty, torch.randint
  torch.empty = lambda *args, **kwargs: _Draw()
  torch.randint = lambda low, high, size: torch.tensor(
      [low + math.floor(positions.pop(0) * (high - low))])
  try:
    p = transform.make_params([torch.zeros((3,) + size, dtype=torch.uint8)])
  finally:
    torch.empty, torch.randint = real
  return p['top'], p['left'], p['height'], p['width'], len(positions) == 2  # fell back


@pytest.mark.parametrize('size,scale,ratio', [
    ((32, 32), (0.08, 1.0), (3 / 4, 4 / 3)),
    ((32, 32), (0.35, 1.0), (0.75, 1.3333333)),
    ((32, 32), (0.9, 1.0), (0.2, 5.0)),  # mostly too wide or tall: the fallback
    ((24, 40), (0.9, 1.0), (1.0, 1.2)),  # wider than the ratio range: clamped fallback
])
def test_crop_box_matches_torchvision_given_the_same_uniforms(size, scale, ratio):
  torch = require_torch()
  from torchvision.transforms import v2  # pylint: disable=import-outside-toplevel
  n = 1500
  u = jax.random.uniform(jax.random.key(0), (n, rc.DRAWS))
  boxes = np.stack([np.asarray(b) for b in jax.jit(jax.vmap(
      lambda u: rc.crop_box(u, size, scale, ratio)))(u)], axis=1)
  transform = v2.RandomResizedCrop(size, scale=scale, ratio=ratio)
  # The float32 values our draws stand for, handed to torchvision as its uniform_ results.
  u = np.asarray(u)
  fractions = np.float32(scale[0]) + np.float32(scale[1] - scale[0]) * u[:, :rc.ATTEMPTS]
  log_r = transform._log_ratio.numpy()  # pylint: disable=protected-access
  log_ratios = log_r[0] + (log_r[1] - log_r[0]) * u[:, rc.ATTEMPTS:2 * rc.ATTEMPTS]
  fallbacks = 0
  for i in range(n):
    *box, fell_back = _torchvision_box(torch, transform, size, fractions[i], log_ratios[i],
                                       u[i, -2], u[i, -1])
    fallbacks += fell_back
    assert tuple(boxes[i]) == tuple(box), (i, boxes[i], box)
  if scale[0] == 0.9 or size == (24, 40):
    assert fallbacks > n // 4
  else:
    assert fallbacks == 0


def test_resize_matches_torchvision_float_exactly_and_uint8_within_a_level(images):
  """torchvision's float bilinear resize: the same pixels (measured exact); its uint8 CPU
  kernel (RandomResizedCrop on uint8 tensors) is fixed-point: a level on ~15% of the pixels."""
  torch = require_torch()
  import torchvision.transforms.v2.functional as F  # pylint: disable=import-outside-toplevel
  u = jax.random.uniform(jax.random.key(1), (NUM_IMAGES, rc.DRAWS))
  boxes = jax.vmap(lambda u: rc.crop_box(u, (32, 32), (0.08, 1.0), (3 / 4, 4 / 3)))(u)
  ours = np.asarray(jax.jit(jax.vmap(rc.resized_crop))(jnp.asarray(images), *boxes)).astype(int)
  boxes = np.stack([np.asarray(b) for b in boxes], axis=1)
  float_diff, uint8_diff = [], []
  for image, out, (top, left, h, w) in zip(images, ours, boxes):
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())
    args = (int(top), int(left), int(h), int(w), [32, 32])
    ref_float = F.resized_crop(x.float(), *args, antialias=True).round().clamp(0, 255)
    ref_uint8 = F.resized_crop(x, *args, antialias=True)
    float_diff.append(np.abs(out - ref_float.numpy().transpose(1, 2, 0).astype(int)))
    uint8_diff.append(np.abs(out - ref_uint8.numpy().transpose(1, 2, 0).astype(int)))
  float_diff, uint8_diff = np.stack(float_diff), np.stack(uint8_diff)
  assert float_diff.max() <= 1 and (float_diff == 0).mean() >= 0.999
  assert uint8_diff.max() <= 1 and (uint8_diff == 0).mean() >= 0.7


def test_full_box_is_identity_and_crops_upsample(images):
  x = jnp.asarray(images[0])
  np.testing.assert_array_equal(rc.resized_crop(x, 0, 0, 32, 32), images[0])
  quarter = np.asarray(rc.resized_crop(x, 8, 8, 16, 16)).astype(int)
  # Upsampling 2x: output pixels 2i+1 and 2i+2 blend input pixels i and i+1 (3/4, 1/4) and back.
  assert np.abs(quarter[1:-1:2, 1:-1:2] - images[0][8:23, 8:23]).mean() < np.abs(
      quarter[1:-1:2, 1:-1:2] - images[0][8:23, 9:24]).mean()


def test_bad_ranges_are_rejected():
  with pytest.raises(ValueError, match='scale'):
    rc.crop_box(jnp.zeros(rc.DRAWS), (32, 32), (0.0, 1.0), (0.75, 1.33))
