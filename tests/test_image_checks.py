"""What predictions take as images: uint8 [N, H, W, 3], and the hint for what is not."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from jax_cifar import image_checks
from jax_cifar.augment import pipeline

IMAGES = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize('images, hint', [
    (IMAGES[0], '; one image is images[None]'),
    (IMAGES[..., 0], '; grayscale images become RGB as np.repeat('),
    (IMAGES[..., :1], '; grayscale images become RGB as np.repeat('),
    (IMAGES.transpose(0, 3, 1, 2), 'images.permute(0, 2, 3, 1).numpy()'),
    (IMAGES.astype(np.int64), '; these pixels fit: images.astype(np.uint8)'),
    (IMAGES / 255.0, '; float images in [0, 1] become uint8 as (images * 255).round()'),
    (IMAGES * 1.0, '; float pixels of 0-255 become uint8 as images.round().clip(0, 255)'),
    (IMAGES / 127.5 - 1, '; these look normalised already'),
    (np.full((2, 8, 8, 3), np.nan), '; these hold NaN'),
])
def test_each_wrong_form_is_refused_with_the_way_to_uint8(images, hint):
  with pytest.raises(ValueError, match=r'^mine expects uint8 images \[N, H, W, 3\], got') as e:
    image_checks.uint8_images(images, 'mine')
  assert hint in str(e.value), str(e.value)


GREY = np.repeat(IMAGES[..., :1], 3, -1)


@pytest.mark.parametrize('images, expected', [
    (IMAGES[..., 0], GREY), (IMAGES[..., :1], GREY), (IMAGES / 255.0, IMAGES),
    (IMAGES * 1.0, IMAGES), (IMAGES.transpose(0, 3, 1, 2), IMAGES), (IMAGES.astype(np.int64), IMAGES)])
def test_the_hints_code_makes_the_images_that_pass(images, expected):
  code = image_checks.hint(images).split(': ', 1)[-1].split(' as ', 1)[-1].split(' (or, ')[0]
  fixed = eval(code, {'np': np, 'images': images})  # pylint: disable=eval-used
  np.testing.assert_array_equal(image_checks.uint8_images(fixed, 'mine'), expected)


def test_uint8_images_pass_as_they_are():
  assert image_checks.uint8_images(IMAGES, 'mine') is IMAGES


def test_unscaled_pixels_warn_and_a_black_image_says_it_may_be_one():
  """Float [0, 1] images cast to uint8 unscaled are all 0 or 1; an all-black test image is too,
  and its warning had read as if it were a mistake (an audit)."""
  with pytest.warns(UserWarning, match=r'mine: every pixel of these 2 uint8 images is 0 or 1: '
                                       r'were float'):
    image_checks.warn_if_scaled_down((IMAGES > 128).astype(np.uint8), 'mine')
  with pytest.warns(UserWarning, match='if they are black images on purpose, ignore this'):
    image_checks.warn_if_scaled_down(np.zeros_like(IMAGES), 'mine')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    image_checks.warn_if_scaled_down(IMAGES, 'mine')
    image_checks.warn_if_scaled_down(IMAGES[:0], 'mine')


def test_to_model_input_refuses_float_pixels_it_would_scale_twice():
  kw = dict(image_size=8, normalize='cifar', dtype=jnp.float32)
  assert pipeline.to_model_input(IMAGES, **kw).shape == (2, 8, 8, 3)
  with pytest.raises(ValueError, match=r'to_model_input expects uint8 images \[B, H, W, 3\], got '
                                       r'float64 \(2, 8, 8, 3\); float images in \[0, 1\]'):
    pipeline.to_model_input(IMAGES / 255.0, **kw)
  with pytest.raises(ValueError, match=r'got float32 \(2, 8, 8, 3\)$'):
    pipeline.to_model_input(jnp.asarray(IMAGES / 255.0, jnp.float32), **kw)


@pytest.mark.parametrize('images, hint', [
    (IMAGES[0].transpose(2, 0, 1), 'one channels-first (PyTorch) image becomes '
                                   'images.transpose(1, 2, 0)[None]'),
    (np.concatenate([IMAGES, IMAGES[..., :1]], -1), 'RGBA images become RGB as images[..., :3]'),
    (np.concatenate([IMAGES, IMAGES[..., :1]], -1)[0], 'RGBA images become RGB as '
                                                      'images[..., :3][None]')])
def test_a_single_torch_image_or_rgba_is_not_taken_for_grayscale(images, hint):
  """A torch image [3, H, W] had been given the grayscale hint, whose line made 3 images of it
  that passed every check (a review)."""
  assert image_checks.hint(images) == f'; {hint}'
  code = hint.split(' as ' if ' as ' in hint else ' becomes ')[-1]
  fixed = eval(code, {'images': images})  # pylint: disable=eval-used
  assert image_checks.uint8_images(fixed, 'mine').shape[1:] == (8, 8, 3)
