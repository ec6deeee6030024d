"""CIFAR-C corruptions: shapes, determinism, severity ordering and the on-disk layouts."""

import numpy as np
import pytest
from scipy import ndimage

from jax_cifar.corruptions import corrupt
from jax_cifar.corruptions import ops as corrupt_ops
from jax_cifar.data import cifar100, ood

# Mean |corrupted - clean| must grow strictly with severity for these. The others follow
# make_cifar_c.py's parameters, which are not monotone in this measure (saturate desaturates at
# 1-2 and oversaturates at 3-5; spatter switches from water to mud; glass blur trades sigma for
# iterations; motion blur 3 and 4 differ only in kernel taps of weight < 1e-9; elastic shrinks
# its affine part as its elastic part grows; frost blends random textures).
MONOTONE = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise', 'defocus_blur',
            'zoom_blur', 'gaussian_blur', 'snow', 'fog', 'brightness', 'contrast', 'pixelate',
            'jpeg_compression')
NOT_STRONGER_AT_5 = ('elastic_transform',)  # Severity 1's 2.6-pixel affine moves the most pixels.


@pytest.fixture(scope='module')
def images(cifar_dir):
  return cifar100.load_split(cifar_dir, 'test', download=False).images[:16]


def _distortions(images, name):
  return [np.abs(corrupt.corrupt(images, name, s, np.random.default_rng([7, s])).astype(float)
                 - images).mean() for s in range(1, 6)]


@pytest.mark.parametrize('name', ood.CORRUPTIONS)
def test_corruption_is_uint8_same_shape_deterministic_and_visible(images, name):
  a = corrupt.corrupt(images, name, 3, np.random.default_rng(0))
  b = corrupt.corrupt(images, name, 3, np.random.default_rng(0))
  assert a.shape == images.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - images).mean() > 0.5  # It changed the images.
  empty = corrupt.corrupt(images[:0], name, 3, np.random.default_rng(0))  # (7 had raised.)
  assert empty.shape == (0, 32, 32, 3) and empty.dtype == np.uint8
  # Each image is corrupted on its own: a batch of one gives the same image for deterministic ops.
  if name in ('defocus_blur', 'gaussian_blur', 'contrast', 'brightness', 'saturate', 'pixelate',
              'jpeg_compression', 'zoom_blur'):
    np.testing.assert_array_equal(corrupt.corrupt(images[3:4], name, 3, np.random.default_rng(1)),
                                  a[3:4])


def test_severity_increases_distortion(images):
  table = {name: _distortions(images, name) for name in ood.CORRUPTIONS}
  for name, d in table.items():
    if name in MONOTONE:
      assert all(np.diff(d) > 0), (name, d)
    if name not in NOT_STRONGER_AT_5:
      assert d[4] > d[0], (name, d)
  assert sum(all(np.diff(d) > 0) for d in table.values()) >= 13  # "Most" corruptions.


def test_clipped_zoom_equals_scipy_zoom_per_image():
  x = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
  for factor in np.arange(1, 1.26, 0.01):
    ch = int(np.ceil(32 / factor))
    top = (32 - ch) // 2
    ref = ndimage.zoom(x[0, top:top + ch, top:top + ch], (factor, factor, 1), order=1)
    trim = (ref.shape[0] - 32) // 2
    np.testing.assert_allclose(corrupt_ops.clipped_zoom(x, factor)[0],  # pylint: disable=protected-access
                               ref[trim:trim + 32, trim:trim + 32], atol=1e-5)


def test_synthetic_frost_is_deterministic_and_frost_like():
  a = corrupt_ops.synthetic_frost.__wrapped__(seed=0)
  b = corrupt_ops.synthetic_frost.__wrapped__(seed=0)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (5, 96, 96, 3) and a.dtype == np.uint8
  assert (a[..., 2] >= a[..., 0]).all()  # Bluish white.
  assert 0.25 < a.mean() / 255 < 0.6 and a.std() / 255 > 0.1


@pytest.mark.parametrize('fmt', ['ds542', 'cifar100c'])
def test_build_writes_checked_files_and_tiled_labels(tmp_path, images, fmt):
  labels = np.arange(len(images[:5])) * 11
  names = ('gaussian_noise', 'frost', 'jpeg_compression')
  paths = corrupt.build(tmp_path / 'a', images[:5], labels, fmt, seed=3, names=names, chunk=2)
  corrupt.build(tmp_path / 'b', images[:5], labels, fmt, seed=3, names=names, chunk=2)
  expected = ([ood.distortion_file(ood.CORRUPTIONS.index(n)) for n in names] if fmt == 'ds542'
              else [f'{n}.npy' for n in names])
  assert [p.name for p in paths] == expected + ['labels.npy']
  for name in expected:
    info = ood.check_image_file(tmp_path / 'a' / name)
    assert info.num_images == 25
    np.testing.assert_array_equal(np.load(tmp_path / 'a' / name), np.load(tmp_path / 'b' / name))
  saved = np.load(tmp_path / 'a' / 'labels.npy')
  assert saved.dtype == np.uint8 and list(saved) == list(labels) * 5
  # Severity s is rows (s-1)*N .. s*N: row 0 is image 0 at severity 1, row 5 image 0 at severity 2.
  noisy = np.load(tmp_path / 'a' / expected[0]).astype(int)
  assert np.abs(noisy[0] - images[0]).mean() < np.abs(noisy[20] - images[0]).mean()
  assert not list((tmp_path / 'a').glob('.*'))


@pytest.mark.parametrize('bad, match', [
    (lambda x: x / 255.0, 'uint8 images'),  # [0, 1] floats had become a near-black image
    (lambda x: x.astype(np.int64) + 44, 'uint8 images'),  # 300 had wrapped to 44
    (lambda x: x.transpose(0, 3, 1, 2), r'\[B, 32, 32, 3\]'),  # NCHW
    (lambda x: np.repeat(np.repeat(x, 2, 1), 2, 2), r'\(4, 64, 64, 3\)'),  # pixelate shrank it
    (lambda x: x[0], r'\(32, 32, 3\)'),
])
def test_corrupt_refuses_images_it_would_silently_damage(images, bad, match):
  with pytest.raises(ValueError, match=match):
    corrupt.corrupt(bad(images[:4]), 'brightness', 1, np.random.default_rng(0))


def test_corrupt_names_a_bad_severity_or_rng(images):
  for severity in (0, 6, 2.5, True):
    with pytest.raises(ValueError, match='severity must be an int in 1..5'):
      corrupt.corrupt(images[:2], 'contrast', severity, np.random.default_rng(0))
  with pytest.raises(TypeError, match='numpy Generator'):
    corrupt.corrupt(images[:2], 'gaussian_noise', 1, 0)
  out = corrupt.corrupt(images[:2], 'contrast', np.int64(3), np.random.default_rng(0))
  assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8


def test_a_missing_corrupt_extra_is_an_import_error_naming_the_install(tmp_path):
  """A library import raises ImportError (SystemExit went past `except Exception`); the command
  line still ends with one error line."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  block = "import sys; sys.modules['scipy'] = None; "
  out = subprocess.run([sys.executable, '-c', block + (
      'import jax_cifar.corruptions.corrupt\n')], capture_output=True, text=True, check=False)
  assert out.returncode == 1 and 'ImportError' in out.stderr, out.stderr[-800:]
  assert "needs scipy (the 'corrupt' extra): pip install 'jax-cifar[corrupt]'" in out.stderr
  out = subprocess.run([sys.executable, '-c', block + (
      "import runpy; sys.argv = ['corrupt', '--out', 'x']; "
      "runpy.run_module('jax_cifar.corrupt', run_name='__main__')")], cwd=tmp_path,
                       capture_output=True, text=True, check=False)
  assert out.returncode != 0 and 'Traceback' not in out.stderr, out.stderr[-800:]
  assert out.stderr.strip().splitlines()[-1].startswith('error: jax_cifar.corruptions needs scipy')


def test_motion_blur_smears_along_its_angle_toward_positive_x():
  """Pixel p averages p + i * (cos, sin) of the angle (ImageMagick's MotionBlurImage): at 0 degrees
  a vertical edge is smeared leftwards from the bright side and a horizontal edge is untouched,
  at 90 degrees the other way round (x and y swapped passed every test: a mutation audit)."""
  vertical = np.zeros((9, 16), np.uint8)
  vertical[:, 10:] = 255  # The 7 taps of pixel 0 reach pixel 6 only.
  out = corrupt_ops.motion_blur(vertical, radius=3, sigma=2, angle=0)
  assert (out[:, 9] > 0).all() and (out[:, 10:] == 255).all() and (out[:, :4] == 0).all()
  np.testing.assert_array_equal(corrupt_ops.motion_blur(vertical.T, radius=3, sigma=2, angle=0),
                                vertical.T)
  np.testing.assert_array_equal(corrupt_ops.motion_blur(vertical.T, radius=3, sigma=2, angle=90),
                                out.T)


def test_hsv_map_clips_the_channel_before_converting_back():
  """Brightening a pixel already at full value leaves it as it is, hue kept (the channel is
  clipped in HSV; clipping RGB afterwards would wash out its other channels)."""
  x = np.array([[[[1.0, 0.5, 0.2]]]])
  np.testing.assert_allclose(corrupt_ops.hsv_map(x, 2, lambda v: v + 0.3), x, atol=1e-6)
  saturated = corrupt_ops.hsv_map(x, 1, lambda s: s * 2 + 0.5)  # Saturation 1 at most: no
  np.testing.assert_allclose(saturated, [[[[1.0, 0.375, 0.0]]]], atol=1e-6)  # negative blue.


def test_box3_borders_and_equalize_hist_rounding_follow_opencv():
  """cv2.blur's default border reflects without repeating the edge (numpy's 'reflect' pad), and
  cv2.equalizeHist rounds its lookup table to the nearest level."""
  x = np.arange(30, dtype=np.float64).reshape(5, 6) ** 2
  p = np.pad(x, 1, mode='reflect')  # = cv2.BORDER_REFLECT_101, cv2.blur's default.
  ref = sum(p[i:i + 5, j:j + 6] for i in range(3) for j in range(3)) / 9
  np.testing.assert_allclose(corrupt_ops.box3(x), ref, rtol=1e-12)
  img = np.array([0, 1, 1, 2, 2, 2, 3, 3], np.uint8).reshape(2, 4)
  np.testing.assert_array_equal(corrupt_ops.equalize_hist(img).ravel(),
                                [0, 73, 73, 182, 182, 182, 255, 255])


@pytest.mark.parametrize('name', ood.CORRUPTIONS)
def test_each_image_is_corrupted_by_its_own_pixels_only(images, name):
  """The first image of a batch comes out the same whatever image follows it (same seed): no
  corruption reads, swaps or scales by another image of the batch."""
  dark = (images[5] // 3).astype(np.uint8)  # A peak below the others' (fog scales by it).
  a = corrupt.corrupt(np.stack([dark, images[1]]), name, 3, np.random.default_rng(4))
  b = corrupt.corrupt(np.stack([dark, np.zeros_like(dark)]), name, 3, np.random.default_rng(4))
  np.testing.assert_array_equal(a[0], b[0])


def test_snow_adds_its_layer_turned_half_round_on_the_same_image():
  """On black images the snow is symmetric under a 180-degree turn of each image (make_cifar_c
  adds the layer and its np.rot90(k=2) over the image axes, not the batch's)."""
  black = np.zeros((3, 32, 32, 3), np.uint8)
  out = corrupt.corrupt(black, 'snow', 3, np.random.default_rng(0)).astype(int)
  np.testing.assert_allclose(out, np.rot90(out, k=2, axes=(1, 2)), atol=1)


def test_shot_noise_is_poisson_counts_over_c_in_0_255():
  """Severity 5: every pixel is floor(255 * min(n / c, 1)) for a Poisson count n (c=50)."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  out = corrupt.corrupt(x, 'shot_noise', 5, np.random.default_rng(1))
  c = corrupt.PARAMS['shot_noise'][4]
  allowed = np.floor(np.minimum(np.arange(2 * c) / c, 1) * 255).astype(np.uint8)
  assert np.isin(out, allowed).all()


@pytest.mark.parametrize('severity', [1, 4])
def test_glass_blur_shuffles_as_make_cifar_c_does(images, severity):
  """make_cifar_c.py's loop, transcribed as it is written, on the same draws: its "swap" assigns
  numpy views, so each step copies the neighbour into (h, w) and leaves the neighbour as it was.
  A true swap had made this glass blur 10-44 % stronger than the reference's (an audit)."""
  sigma, delta, iterations = corrupt.PARAMS['glass_blur'][severity - 1]
  got = corrupt.corrupt(images, 'glass_blur', severity, np.random.default_rng(5))
  rng = np.random.default_rng(5)  # The same draws, one array per pass, as glass_blur takes them.
  draws = [rng.integers(-delta, delta, size=((32 - 2 * delta) ** 2, len(images), 2))
           for _ in range(iterations)]
  blurred = (corrupt_ops.blur(images / 255.0, sigma) * 255).astype(np.uint8)
  for i, x in enumerate(blurred):
    for shifts in draws:
      k = 0
      for h in range(32 - delta, delta, -1):
        for w in range(32 - delta, delta, -1):
          dx, dy = shifts[k, i]
          h_prime, w_prime = h + dy, w + dx
          x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]  # As the reference writes it.
          k += 1
  want = np.clip(corrupt_ops.blur(blurred / 255.0, sigma), 0, 1) * 255
  np.testing.assert_array_equal(got, np.clip(want, 0, 255).astype(np.uint8))
