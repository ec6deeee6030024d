"""Labelled OOD data: the 19 CIFAR-C corruptions x 5 severities of the CIFAR-100 test split.

The command line (`python -m jax_cifar.corrupt`) is jax_cifar/corruptions/cli.py; this module
makes the images (`corrupt`) and writes a set (`build`).

Severity parameters are the 32x32 (CIFAR-10-C / CIFAR-100-C) ones of Hendrycks & Dietterich,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations" (ICLR 2019), from
`ImageNet-C/create_c/make_cifar_c.py` in github.com/hendrycks/robustness (not ImageNet-C's values).
That script uses OpenCV and ImageMagick; here the same operations are written with numpy, scipy,
scikit-image and PIL, so pixels differ slightly while the distortion strengths match:
  - motion blur (and the snow streaks) re-implement ImageMagick's MotionBlurImage: a one-sided
    Gaussian-weighted line kernel of 2*radius+1 taps, edge pixels replicated;
  - spatter's Canny uses scikit-image (L2 gradient norm, and no edge on the image's outermost
    pixels; OpenCV's default is L1 and can mark them), its distance
    transform is exact (OpenCV's 5x5 mask approximates it), and its liquid layer is clipped to
    0..255 before the uint8 cast (the script's wraps around, rarely);
  - frost blends real photographs in the original. Those are not available offline, so unless
    `--frost_dir` holds frost1.png .. frost5.jpg (the files the `imagecorruptions` package ships),
    a frost-like texture (branching ice needles over fractal haze) is synthesised deterministically;
  - glass blur copies each neighbour as the script's view assignment does (its "swap"); a true swap
    (generator version 1, before 2026-12-06) was 10-44 % stronger.
Randomness comes from numpy Generators keyed by (seed, corruption, severity, chunk of 500 images):
each file is the same on every run, whichever other corruptions are made and in whatever order.
--limit changes the pixels of some corruptions (noise drawn per chunk), so it is part of a set.

The output folder is safe to interrupt and re-run (jax_cifar/corruptions/store.py): files appear
only complete (written beside, then renamed), corrupt_manifest.json records the options and each file's
completion; re-running the same command keeps complete files and writes the rest, other options
are refused unless --overwrite. SIGTERM/SIGINT stop between image blocks (exit 128 + signal).

Formats: `ds542` writes distortionXX.npy (XX = index in CORRUPTIONS, see jax_cifar/data/ood.py) and
`cifar100c` writes <name>.npy; both hold [5 * N, 32, 32, 3] uint8 (severity blocks of N) plus
labels.npy ([5 * N] uint8, as CIFAR-100-C's). The image helpers are in jax_cifar/corruptions/ops.py.
"""

from __future__ import annotations

import io
import os
import pathlib
import sys
from typing import Iterator

import numpy as np
import tqdm

from jax_cifar.corruptions import ops  # First: it names a missing 'corrupt' extra.

try:
  import skimage.feature
  from PIL import Image
  from scipy import ndimage
except ImportError as e:  # pragma: no cover  (the test environment has the extra)
  raise ImportError(f"jax_cifar.corruptions needs {str(e.name).split('.')[0]} (the 'corrupt' "
                    "extra): pip install 'jax-cifar[corrupt]'", name=e.name) from e
from jax_cifar.corruptions import store
from jax_cifar.data.ood import CORRUPTIONS, SEVERITIES, LABELS_FILE

# Bump when a change alters the pixels written, so older sets are not resumed with new files.
GENERATOR_VERSION = store.GENERATOR_VERSION  # (Defined there: evaluate reads it without PIL.)

# Per corruption, the parameters of severities 1..5 (make_cifar_c.py).
PARAMS = {
    'gaussian_noise': [0.04, 0.06, .08, .09, .10],
    'shot_noise': [500, 250, 100, 75, 50],
    'impulse_noise': [.01, .02, .03, .05, .07],
    'speckle_noise': [.06, .1, .12, .16, .2],
    'defocus_blur': [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    'glass_blur': [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    'motion_blur': [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    'zoom_blur': [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
    'gaussian_blur': [.4, .6, 0.7, .8, 1],
    'snow': [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    'frost': [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    'fog': [(.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75)],
    'spatter': [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
    'brightness': [.05, .1, .15, .2, .3],
    'contrast': [.75, .5, .4, .3, 0.15],
    'saturate': [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    'elastic_transform': [tuple(32 * v for v in c) for c in [
        (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)]],
    'pixelate': [0.95, 0.9, 0.85, 0.75, 0.65],
    'jpeg_compression': [80, 65, 58, 50, 40],
}


# ---------------------------------------------------------------------------------------------
# The corruptions: f(x uint8 [B, 32, 32, 3], c, rng, frost) -> float [B, 32, 32, 3] in [0, 255]
# ---------------------------------------------------------------------------------------------
def _f(u8: np.ndarray) -> np.ndarray:
  return u8.astype(np.float64) / 255.0


def gaussian_noise(u8, c, rng, _):
  x = _f(u8)
  return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(u8, c, rng, _):
  return np.clip(rng.poisson(_f(u8) * c) / c, 0, 1) * 255


def impulse_noise(u8, c, rng, _):  # skimage random_noise(mode='s&p', amount=c): per value.
  x = _f(u8)
  flipped, salt = rng.random(x.shape) < c, rng.random(x.shape) < 0.5
  return np.where(flipped, salt.astype(np.float64), x) * 255


def speckle_noise(u8, c, rng, _):
  x = _f(u8)
  return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(u8, c, rng, _):
  return np.clip(ops.blur(_f(u8), c), 0, 1) * 255


def glass_blur(u8, c, rng, _):
  sigma, delta, iterations = c
  x = (ops.blur(_f(u8), sigma) * 255).astype(np.uint8)
  b = np.arange(len(x))
  # Locally shuffle pixels, batched over images: make_cifar_c.py's "swap",
  # `x[h, w], x[h', w'] = x[h', w'], x[h, w]`, assigns numpy views, so it copies the neighbour
  # into (h, w) and leaves the neighbour as it was. A true swap (generator 1) carried pixels on
  # over later steps, up to 17 px a pass: its glass blur was 10-44 % stronger (an audit).
  for _ in range(iterations):
    shifts = rng.integers(-delta, delta, size=((32 - 2 * delta) ** 2, len(x), 2))
    k = 0
    for h in range(32 - delta, delta, -1):
      for w in range(32 - delta, delta, -1):
        x[b, h, w] = x[b, h + shifts[k, :, 1], w + shifts[k, :, 0]]
        k += 1
  return np.clip(ops.blur(x / 255.0, sigma), 0, 1) * 255


def defocus_blur(u8, c, rng, _):
  kernel = ops.disk(*c)[None, :, :, None]
  return np.clip(ndimage.correlate(_f(u8), kernel, mode='mirror'), 0, 1) * 255


def motion_blur(u8, c, rng, _):
  angles = rng.uniform(-45, 45, len(u8))
  return np.clip(np.stack([ops.motion_blur(img, c[0], c[1], a) for img, a in zip(u8, angles)]), 0, 255)


def zoom_blur(u8, c, rng, _):
  x = _f(u8).astype(np.float32)
  out = np.zeros_like(x)
  for factor in c:
    out += ops.clipped_zoom(x, factor)
  return np.clip((x + out) / (len(c) + 1), 0, 1) * 255


def snow(u8, c, rng, _):
  x = _f(u8).astype(np.float32)
  layer = rng.normal(size=x.shape[:3], loc=c[0], scale=c[1])
  layer = ops.clipped_zoom(layer[..., None], c[2])[..., 0]
  layer[layer < c[3]] = 0
  layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
  angles = rng.uniform(-135, -45, len(x))
  layer = np.stack([ops.motion_blur(l, c[4], c[5], a) for l, a in zip(layer, angles)])[..., None] / 255
  gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
  x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
  return np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1) * 255


def frost(u8, c, rng, textures):
  idx = rng.integers(0, len(textures), len(u8))
  crops = []
  for i in idx:
    t = textures[i]
    y, x = rng.integers(0, t.shape[0] - 32), rng.integers(0, t.shape[1] - 32)
    crops.append(t[y:y + 32, x:x + 32])
  return np.clip(c[0] * u8.astype(np.float64) + c[1] * np.stack(crops), 0, 255)


def fog(u8, c, rng, _):
  x = _f(u8)
  peak = x.max(axis=(1, 2, 3), keepdims=True)
  x = x + c[0] * ops.plasma(rng, len(x), c[1])[..., None]
  return np.clip(x * peak / (peak + c[0]), 0, 1) * 255


def _water(liquid: np.ndarray, scale: float) -> np.ndarray:
  """Per image: the water-drop mask of make_cifar_c's spatter (Canny, distance, equalisation)."""
  liquid = np.clip(liquid * 255, 0, 255).astype(np.uint8)
  edges = skimage.feature.canny(liquid.astype(np.float64), sigma=0, low_threshold=50,
                                high_threshold=150)
  dist = ndimage.distance_transform_edt(~edges) if edges.any() else np.full(liquid.shape, 20.0)
  dist = ops.box3(np.minimum(dist, 20)).astype(np.uint8)
  dist = ops.equalize_hist(dist)
  ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float64)
  dist = np.clip(np.rint(ndimage.correlate(dist.astype(np.float64), ker, mode='mirror')), 0, 255)
  dist = np.rint(ops.box3(dist))
  m = liquid * dist
  return m / m.max() * scale if m.max() > 0 else m


def spatter(u8, c, rng, _):
  x = _f(u8).astype(np.float32)
  liquid = ops.blur(rng.normal(size=x.shape[:3], loc=c[0], scale=c[1]), c[2])
  liquid[liquid < c[3]] = 0
  if c[5] == 0:  # Water: pale turquoise drops.
    m = np.stack([_water(l, c[4]) for l in liquid])[..., None]
    return np.clip(x + m * (np.array([175, 238, 238]) / 255.0), 0, 1) * 255
  m = ops.blur((liquid > c[3]).astype(np.float32), c[4])  # Mud: brown blots.
  m[m < 0.8] = 0
  mud = np.array([63, 42, 20]) / 255.0 * m[..., None]
  return np.clip(x * (1 - m[..., None]) + mud, 0, 1) * 255


def brightness(u8, c, rng, _):
  return np.clip(ops.hsv_map(_f(u8), 2, lambda v: v + c), 0, 1) * 255


def contrast(u8, c, rng, _):
  x = _f(u8)
  means = x.mean(axis=(1, 2), keepdims=True)
  return np.clip((x - means) * c + means, 0, 1) * 255


def saturate(u8, c, rng, _):
  return np.clip(ops.hsv_map(_f(u8), 1, lambda s: s * c[0] + c[1]), 0, 1) * 255


def _elastic_one(img: np.ndarray, c, rng) -> np.ndarray:
  pts1 = np.float32([[26, 26], [26, 6], [6, 6]])  # centre 16 +- 32 // 3, as (x, y).
  pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
  m = np.linalg.solve(np.c_[pts1, np.ones(3)], pts2).T  # cv2.getAffineTransform: src -> dst.
  inv = np.linalg.inv(np.r_[m, [[0, 0, 1]]])  # warpAffine samples src at inv @ dst.
  matrix = np.array([[inv[1, 1], inv[1, 0], 0], [inv[0, 1], inv[0, 0], 0], [0, 0, 1]])
  img = ndimage.affine_transform(img, matrix, offset=(inv[1, 2], inv[0, 2], 0), order=1,
                                 mode='mirror')
  dx, dy = (ops.blur(rng.uniform(-1, 1, size=(1, 32, 32)), c[1], mode='reflect', truncate=3)[0] * c[0]
            for _ in range(2))
  y, x, z = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing='ij')
  coords = [y + dy[..., None], x + dx[..., None], z]
  return ndimage.map_coordinates(img, coords, order=1, mode='reflect')


def elastic_transform(u8, c, rng, _):
  return np.clip(np.stack([_elastic_one(img, c, rng) for img in _f(u8)]), 0, 1) * 255


def _pil_roundtrip(u8, fn):
  return np.stack([np.asarray(fn(Image.fromarray(img))) for img in u8]).astype(np.float64)


def pixelate(u8, c, rng, _):
  small = (int(32 * c), int(32 * c))
  return _pil_roundtrip(u8, lambda im: im.resize(small, Image.BOX).resize((32, 32), Image.BOX))


def jpeg_compression(u8, c, rng, _):
  def roundtrip(im):
    buf = io.BytesIO()
    im.save(buf, 'JPEG', quality=c)
    return Image.open(buf).convert('RGB')
  return _pil_roundtrip(u8, roundtrip)


FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator,
            frost_textures: list[np.ndarray] | np.ndarray | None = None) -> np.ndarray:
  """uint8 [B, 32, 32, 3] images -> the same images corrupted by `name` at `severity` (1..5)."""
  if name not in FUNCTIONS:
    raise ValueError(f'unknown corruption {name!r}; known: {", ".join(CORRUPTIONS)}')
  if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
      or not 1 <= severity <= SEVERITIES):
    raise ValueError(f'severity must be an int in 1..{SEVERITIES}, got {severity!r}')
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
    # The corruptions' parameters are CIFAR-10-C's, for 32x32 pixels of 0..255; a cast would
    # silently wrap values or turn [0, 1] floats black.
    raise ValueError(f'corrupt expects uint8 images [B, 32, 32, 3], got {images.dtype} '
                     f'{images.shape}')
  if not isinstance(rng, np.random.Generator):
    raise TypeError(f'rng must be a numpy Generator (np.random.default_rng(seed)), got '
                    f'{type(rng).__name__}')
  if not len(images):  # (7 of the 19 had raised numpy's "need at least one array to stack".)
    return images.copy()
  textures = ops.synthetic_frost() if frost_textures is None else frost_textures
  out = FUNCTIONS[name](images, PARAMS[name][severity - 1], rng, textures)
  return np.clip(out, 0, 255).astype(np.uint8)  # Truncation, as np.uint8 in make_cifar_c.py.


def _blocks(images: np.ndarray, name: str, seed: int, chunk: int, frost_textures,
            bar: tqdm.tqdm) -> Iterator[np.ndarray]:
  """The rows of one file in order: severity blocks of N, each in chunks with their own RNG."""
  index, n = CORRUPTIONS.index(name), len(images)
  for severity in range(1, SEVERITIES + 1):
    bar.set_postfix_str(f'{name} s{severity}', refresh=False)
    for start in range(0, n, chunk):
      store.check_stop()
      rng = np.random.default_rng([seed, index, severity, start // chunk])
      block = corrupt(images[start:start + chunk], name, severity, rng, frost_textures)
      bar.update(len(block))
      yield block


def build(out: str | os.PathLike, images: np.ndarray, labels: np.ndarray, fmt: str = 'ds542',
          seed: int = 0, names: tuple[str, ...] = CORRUPTIONS, chunk: int = 500,
          frost_textures=None, overwrite: bool = False, limit: int = 0,
          split: str = 'test') -> list[pathlib.Path]:
  """Writes one [5 * N, 32, 32, 3] file per corruption (severity blocks of N) and labels.npy.

  Resumes a folder made with the same options (keeps its complete files); refuses other options
  with store.OutputError unless `overwrite`. Returns the paths of `names`' files, then labels.npy.
  """
  if fmt not in ('ds542', 'cifar100c'):
    raise ValueError(f"format must be 'ds542' or 'cifar100c', got {fmt!r}")
  names = tuple(dict.fromkeys(names))
  for name in names:
    if name not in CORRUPTIONS:
      raise ValueError(f'unknown corruption {name!r}; known: {", ".join(CORRUPTIONS)}')
  images, n = np.asarray(images, np.uint8), len(images)
  if n == 0 or len(labels) != n:
    raise ValueError(f'need at least one image and one label per image, got {n} and {len(labels)}')
  frost = 'synthetic' if frost_textures is None else 'sha256:' + store.fingerprint(*frost_textures)
  options = {'format': fmt, 'seed': int(seed), 'limit': int(limit), 'num_images': n,
             'severities': SEVERITIES, 'chunk': int(chunk), 'frost': frost,
             'source_sha256': store.fingerprint(images, np.asarray(labels, np.int64)),
             'generator_version': GENERATOR_VERSION}
  if split != 'test':  # Named in the manifest; test sets keep the manifests they always had.
    options['split'] = split
  paths = []
  with store.deferred_stop(), store.OutputDir(out, options, overwrite) as folder:
    folder.request(names)
    if not folder.complete(LABELS_FILE):  # First, so every complete image file has its labels.
      tiled = np.tile(np.asarray(labels), SEVERITIES).astype(np.uint8)
      folder.write(LABELS_FILE, tiled.shape, np.uint8, [tiled])
    with tqdm.tqdm(total=len(names) * SEVERITIES * n, desc='corrupting', unit='img',
                   mininterval=1.0, disable=None) as bar:
      for name in names:
        file = store.file_name(fmt, name)
        if folder.complete(file):
          bar.update(SEVERITIES * n)
          bar.write(f'{file}: already complete, kept', file=sys.stdout)  # Above the bar.
        else:
          store.check_stop()
          folder.write(file, (SEVERITIES * n, 32, 32, 3), np.uint8,
                       _blocks(images, name, seed, chunk, frost_textures, bar), corruption=name)
          bar.write(f'{file}: written ({"%d of %d" % folder.progress()} files complete)',
                    file=sys.stdout)
        paths.append(folder.path / file)
  return paths + [folder.path / LABELS_FILE]
