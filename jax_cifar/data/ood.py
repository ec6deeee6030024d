"""Out-of-distribution image sets on disk: the DS542 distortion files and the CIFAR-100-C layout.

Both hold uint8 [N, 32, 32, 3] `.npy` arrays whose rows are five equal severity blocks (severity s is
rows (s-1)*N/5 .. s*N/5). Every file is checked from its header and size before any inference
starts, then read memory-mapped, so a 150 MB file never has to fit in memory twice.

DS542 `distortionXX.npy` <-> corruption name (the order `jax_cifar.corrupt` writes them in):
  00 gaussian_noise   01 shot_noise      02 impulse_noise   03 speckle_noise   04 defocus_blur
  05 glass_blur       06 motion_blur     07 zoom_blur       08 gaussian_blur   09 snow
  10 frost            11 fog             12 spatter         13 brightness      14 contrast
  15 saturate         16 elastic_transform 17 pixelate      18 jpeg_compression
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex

import numpy as np
from absl import logging

from jax_cifar.data.cifar100 import NUM_CLASSES, DataError

CORRUPTIONS = (
    'gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise', 'defocus_blur',
    'glass_blur', 'motion_blur', 'zoom_blur', 'gaussian_blur', 'snow', 'frost', 'fog', 'spatter',
    'brightness', 'contrast', 'saturate', 'elastic_transform', 'pixelate', 'jpeg_compression')
# The 15 corruptions of Hendrycks & Dietterich's benchmark (the other 4 are its held-out extras).
STANDARD_CORRUPTIONS = (
    'gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur',
    'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate',
    'jpeg_compression')
NUM_DISTORTIONS = len(CORRUPTIONS)
SEVERITIES = 5
IMAGE_SHAPE = (32, 32, 3)
LABELS_FILE = 'labels.npy'
# What `python -m jax_cifar.corrupt` records of a set it makes (corruptions/store.py; a test keeps
# the two names equal): read here only to word the error of an incomplete set.
CORRUPT_MANIFEST = 'corrupt_manifest.json'


def distortion_file(index: int) -> str:
  return f'distortion{index:02d}.npy'


@dataclasses.dataclass(frozen=True)
class ImageFile:
  """A checked image `.npy`: N rows of uint8 32x32x3, N a multiple of 5, size matching its header."""
  path: pathlib.Path
  num_images: int

  @property
  def per_severity(self) -> int:
    return self.num_images // SEVERITIES

  def open(self) -> np.memmap:
    """Read-only memory map; drop the reference when done so its pages leave this process.

    Re-checked here: a file truncated or replaced since the check is named, not a bare mmap error.
    """
    try:
      array = np.load(self.path, mmap_mode='r')
    except (OSError, ValueError, EOFError) as e:
      raise DataError(f'{self.path}: changed since it was checked and is no longer readable '
                      f'({e})') from None
    if array.shape != (self.num_images,) + IMAGE_SHAPE or array.dtype != np.uint8:
      raise DataError(f'{self.path}: changed since it was checked: now {array.dtype} '
                      f'{array.shape}, was uint8 ({self.num_images}, 32, 32, 3)')
    return array


def read_npy_header(path: pathlib.Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
  """(shape, dtype, fortran_order, data offset) of a .npy file, without reading its data."""
  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
      elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
      else:
        raise DataError(f'{path}: unsupported .npy version {version}')
      if any(d < 0 for d in shape):  # numpy reads the header; a negative size passes its checks.
        raise DataError(f'{path}: header gives a negative dimension {tuple(shape)}')
      return shape, dtype, fortran, f.tell()
  except FileNotFoundError:
    raise DataError(f'{path}: file not found') from None
  except IsADirectoryError:
    raise DataError(f'{path}: is a directory, expected a .npy file') from None
  except (ValueError, EOFError, SyntaxError) as e:
    raise DataError(f'{path}: not a readable .npy file ({e})') from None


def check_image_file(path: str | os.PathLike) -> ImageFile:
  """Validates one image file from its header and size; raises DataError naming the file."""
  path = pathlib.Path(path)
  shape, dtype, fortran, offset = read_npy_header(path)
  if dtype != np.uint8:
    raise DataError(f'{path}: dtype {dtype}, expected uint8')
  if len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE:
    raise DataError(f'{path}: shape {tuple(shape)}, expected (N, 32, 32, 3)')
  if fortran:
    raise DataError(f'{path}: Fortran-ordered array, expected C order')
  n = shape[0]
  if n == 0 or n % SEVERITIES:
    raise DataError(f'{path}: {n} images, expected a positive multiple of {SEVERITIES} '
                    f'(five equal severity blocks)')
  expected = offset + n * int(np.prod(IMAGE_SHAPE))
  size = path.stat().st_size
  if size < expected:
    raise DataError(f'{path}: truncated: {size} bytes, its header needs {expected}')
  if size > expected:
    raise DataError(f'{path}: {size - expected} unexpected trailing bytes after the array')
  return ImageFile(path, n)


def _check_dir(directory: str | os.PathLike) -> pathlib.Path:
  directory = pathlib.Path(directory)
  if directory.exists() and not directory.is_dir():
    raise DataError(f'{directory}: is a file, expected the folder that holds it')
  if not directory.is_dir():
    raise DataError(f'{directory}: directory not found')
  return directory


def _same_size(files: list[ImageFile]) -> None:
  for f in files[1:]:
    if f.num_images != files[0].num_images:
      raise DataError(f'{f.path}: {f.num_images} images, but {files[0].path.name} has '
                      f'{files[0].num_images}; every file must have the same N')


def _missing_files_message(directory: pathlib.Path, missing: list[str]) -> str:
  """Names every missing distortion file, with what the folder holds instead where that helps."""
  entries = sorted(p.name for p in directory.iterdir())
  by_lower = {name.lower(): name for name in entries}
  by_stem = {pathlib.Path(name).stem.lower(): name for name in entries}

  def one(name: str) -> str:
    if (directory / name).is_symlink():
      return f'{name} (a broken link)'
    near = (by_lower.get(name.lower()) or by_stem.get(pathlib.Path(name).stem)
            or by_stem.get(name.lower()))  # (distortion03.npy.gz, compressed: a review.)
    return f'{name} (found {near})' if near else name

  present = [distortion_file(i) for i in range(NUM_DISTORTIONS) if distortion_file(i) not in missing]
  if len(missing) <= 4:
    shown = ', '.join(one(m) for m in missing)
  elif not present:
    shown = f'{missing[0]} .. {missing[-1]}'
  elif len(present) <= 4:  # ("distortion00.npy, ..., distortion18.npy" had included these.)
    shown = 'every one but ' + ', '.join(present)
  else:
    shown = ', '.join(missing[:3]) + f' and {len(missing) - 3} more'
  text = (f'{directory}: missing {len(missing)} of the {NUM_DISTORTIONS} distortion files: '
          + shown)
  if present:
    text += _unfinished_set_hint(directory)
  if len(missing) == NUM_DISTORTIONS:
    deeper = sorted({p.parent for p in directory.glob(f'*/{distortion_file(0)}')})
    if deeper:
      text += f'; they are in {deeper[0]}: give --ood_dir {shlex.quote(str(deeper[0]))}'
    elif {pathlib.Path(name).stem for name in entries} & set(CORRUPTIONS):
      # (Also said by `submission check`, which has no --cifar100c_dir: an audit.)
      text += ('; it holds CIFAR-100-C\'s <corruption>.npy files instead, which evaluate '
               'takes as --cifar100c_dir')
    else:
      text += f'; the folder holds {", ".join(entries[:6]) or "nothing"}'
      text += ', ...' if len(entries) > 6 else ''
  return text


def _unfinished_set_hint(directory: pathlib.Path) -> str:
  """Why a set that jax_cifar.corrupt made lacks files, from its manifest ('' without one)."""
  try:
    asked = json.loads((directory / CORRUPT_MANIFEST).read_text()).get('corruptions')
  except (OSError, ValueError, AttributeError, RecursionError):  # (Nested deep: a review.)
    return ''
  if not isinstance(asked, list):
    return ''
  if len(asked) < NUM_DISTORTIONS:
    return ('; python -m jax_cifar.corrupt made it with --corruptions '
            f'{",".join(map(str, asked))}, and the Kaggle layout needs all {NUM_DISTORTIONS} (a '
            'subset is scored as CIFAR-100-C files: corrupt --format cifar100c, then evaluate '
            '--cifar100c_dir)')
  return '; python -m jax_cifar.corrupt has not finished it: run the same command again'


def check_distortion_dir(directory: str | os.PathLike) -> list[ImageFile]:
  """The 19 checked files distortion00.npy .. distortion18.npy, all with the same N."""
  directory = _check_dir(directory)
  missing = [distortion_file(i) for i in range(NUM_DISTORTIONS)
             if not (directory / distortion_file(i)).exists()]
  if missing:  # All named at once (they had been reported one per run).
    raise DataError(_missing_files_message(directory, missing))
  files = [check_image_file(directory / distortion_file(i)) for i in range(NUM_DISTORTIONS)]
  _same_size(files)
  expected = {f.path.name for f in files}
  stray = sorted(p.name for p in directory.glob('distortion*.npy') if p.name not in expected)
  if stray:
    logging.warning('%s: ignoring %s: only %s .. %s are predicted', directory, ', '.join(stray),
                    distortion_file(0), distortion_file(NUM_DISTORTIONS - 1))
  return files


def check_cifar100c_dir(directory: str | os.PathLike) -> dict[str, ImageFile]:
  """{corruption name: checked file} for every CIFAR-100-C `<corruption>.npy`, in CORRUPTIONS'
  order; other .npy files but labels.npy are named in a warning and left out."""
  directory = _check_dir(directory)
  hidden = sorted(p.name for p in directory.glob('.*npy'))  # macOS' ._fog.npy, a stray '.npy'
  if hidden:
    logging.warning('%s: ignoring hidden files %s', directory, ', '.join(hidden))
  found = sorted(p.stem for p in directory.glob('*.npy')
                 if p.name != LABELS_FILE and not p.name.startswith('.'))
  names = [n for n in CORRUPTIONS if n in found]
  course = {distortion_file(i)[:-4] for i in range(NUM_DISTORTIONS)}
  if course & set(found) and not names:  # Had been scored as corruptions.
    raise DataError(f'{directory} holds the course\'s distortionXX.npy files, not CIFAR-100-C\'s '
                    '<corruption>.npy: give it as --ood_dir')
  if not names:
    shown = ', '.join(f'{n}.npy' for n in found[:4]) + (', ...' if len(found) > 4 else '')
    raise DataError(f'{directory}: no CIFAR-100-C <corruption>.npy files (expected e.g. '
                    f'gaussian_noise.npy)' + (f'; it holds {shown}' if found else ''))
  other = [f'{n}.npy' for n in found if n not in CORRUPTIONS]
  if other:  # A course file or a copy (`fog (1).npy`) had been scored into the means (an audit).
    logging.warning('%s: ignoring %s: not CIFAR-100-C corruption names', directory,
                    ', '.join(other))
  files = {name: check_image_file(directory / f'{name}.npy') for name in names}
  _same_size(list(files.values()))
  return files


def load_labels(path: str | os.PathLike, num_images: int) -> np.ndarray:
  """int32 [num_images] labels: a file of N labels, or of N/5 (one per image, tiled per severity)."""
  path = pathlib.Path(path)
  shape, dtype, _, offset = read_npy_header(path)
  if len(shape) != 1 or not np.issubdtype(dtype, np.integer):
    raise DataError(f'{path}: shape {tuple(shape)} / dtype {dtype}, expected 1-D integer labels')
  size, want = path.stat().st_size, offset + shape[0] * dtype.itemsize
  if size < want:
    raise DataError(f'{path}: truncated')
  if size > want:  # (As the image files are checked: it had been read, junk ignored.)
    raise DataError(f'{path}: {size - want:,} bytes after its {shape[0]:,} labels: not a .npy '
                    'file as numpy writes it')
  try:
    labels = np.load(path, allow_pickle=False).astype(np.int64)
  except (ValueError, OSError) as e:
    raise DataError(f'{path}: not a readable .npy file ({e})') from None
  if len(labels) == num_images // SEVERITIES:
    labels = np.tile(labels, SEVERITIES)
  if len(labels) != num_images:
    raise DataError(f'{path}: {len(labels)} labels, expected {num_images} '
                    f'(or {num_images // SEVERITIES}, one per image)')
  if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise DataError(f'{path}: labels outside [0, {NUM_CLASSES})')
  return labels.astype(np.int32)


def severity_accuracy(predictions: np.ndarray, labels: np.ndarray) -> list[float]:
  """Accuracy of each of the five severity blocks, in order."""
  correct = (np.asarray(predictions) == np.asarray(labels)).reshape(SEVERITIES, -1)
  return [float(x) for x in correct.mean(axis=1)]
