"""CIFAR-100 sources (official pickles, synthetic; tfds in tfds_source.py) and deterministic splits.

Everything here returns uint8 NHWC arrays on the host; augmentation and arithmetic on pixels
happen later, on the accelerator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import reprlib
import shutil
import tarfile
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from jax_cifar import atomic_folder, errors
from jax_cifar.data import safe_pickle

CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'
CIFAR100_MD5 = 'eb9058c3a382ffc7106e4002c42a8d85'
FOLDER = 'cifar-100-python'
ARCHIVES = (FOLDER + '.tar.gz', FOLDER + '.tar.xz', FOLDER + '.tar')
NUM_CLASSES = 100
NUM_COARSE_CLASSES = 20
TEST_SIZE = 10_000  # Images of the official test split.
SOURCES = ('local', 'tfds', 'synthetic')  # data.source
SPLITS = ('train', 'test')
_KEYS = reprlib.Repr()  # A file's keys in a message, each shortened (the file chose them).
_KEYS.maxstring, _KEYS.maxother = 40, 40


class DataError(errors.UserError):
  """Bad or missing input data; the message is one line naming the file and the problem."""

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split()))


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, 32, 32, 3] NHWC
  labels: np.ndarray  # int32 [N] fine labels
  coarse_labels: np.ndarray | None  # int32 [N]

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, indices: np.ndarray) -> Split:
    coarse = None if self.coarse_labels is None else self.coarse_labels[indices]
    return Split(self.images[indices], self.labels[indices], coarse)


def _to_str(value: Any, done: dict[int, tuple[Any, Any]]) -> Any:
  """bytes as str, in lists too. An object the file shares between places is converted once
  (`done`, by id): copied per place, 1 MB named 5,000 times had filled the memory (a security
  audit). The nesting is bounded by safe_pickle."""
  if id(value) in done:
    return done[id(value)][1]
  if isinstance(value, bytes):
    out = value.decode('latin1')
  elif isinstance(value, list):
    out = [_to_str(v, done) for v in value]
  else:
    return value
  done[id(value)] = (value, out)  # value kept alive, so its id is not reused during this walk.
  return out


def read_pickle(path: str | os.PathLike, encoding: str = 'latin1') -> dict[str, Any]:
  """Reads a CIFAR pickle safely; keys (and lists of names) come back as str for either encoding."""
  path = pathlib.Path(path)
  try:
    with open(path, 'rb') as f:
      obj = safe_pickle.load(f, encoding=encoding)
  except FileNotFoundError:
    raise DataError(f'{path}: file not found') from None
  except safe_pickle.DisallowedGlobal as e:
    raise DataError(f'{path}: refused unsafe pickle ({e})') from None
  except Exception as e:  # truncated files raise EOFError, ValueError, TypeError, ...
    raise DataError(f'{path}: corrupt or truncated pickle ({type(e).__name__}: {e})') from None
  if not isinstance(obj, dict):
    raise DataError(f'{path}: expected a dict, got {type(obj).__name__}')
  done = {}
  return {_to_str(k, done): _to_str(v, done) for k, v in obj.items()}


# ------------------------------------------------------------------ locating, downloading, extracting


def resolve_data_dir(configured: str = '', setting: str = 'data.dir') -> pathlib.Path:
  """The configured folder, else $JAX_CIFAR_DATA_DIR, else a cache folder (created).

  A folder the user names must exist: a typo is an error, never a new folder to download into.
  `setting` is how the user gave `configured` (a command-line tool's own flag), for the error.
  """
  for path, name in ((configured, setting), (os.environ.get('JAX_CIFAR_DATA_DIR', ''),
                                                 '$JAX_CIFAR_DATA_DIR')):
    if path:
      folder = pathlib.Path(path).expanduser()
      if not folder.is_dir():
        raise DataError(f'{name} {folder} is not an existing folder (create it to download the '
                        'data there, or point it at the folder holding cifar-100-python/)')
      return folder
  cache = pathlib.Path('~/.cache/jax_cifar').expanduser()
  cache.mkdir(parents=True, exist_ok=True)
  return cache


_FOLDER_FILES = ('train', 'test', 'meta')


def _is_cifar_folder(path: pathlib.Path) -> bool:
  return all((path / name).is_file() for name in _FOLDER_FILES)


def download_archive(url: str, dest: pathlib.Path, md5: str) -> pathlib.Path:
  """Streams `url` into a temp file next to `dest`, checks its md5, then renames it into place."""
  dest.parent.mkdir(parents=True, exist_ok=True)
  atomic_folder.remove_stale_temps(str(dest))  # Partial downloads of killed processes.
  tmp = pathlib.Path(atomic_folder.temp_name(str(dest)))
  digest = hashlib.md5()
  try:
    import tqdm  # pylint: disable=g-import-not-at-top

    with open(tmp, 'xb') as out, urllib.request.urlopen(url, timeout=60) as response:
      total = int(response.headers.get('Content-Length') or 0) or None
      with tqdm.tqdm(total=total, unit='B', unit_scale=True, desc=f'Downloading {dest.name}') as bar:
        while chunk := response.read(1 << 20):
          out.write(chunk)
          digest.update(chunk)
          bar.update(len(chunk))
  except BaseException as e:  # A failed or stopped download leaves no partial file behind.
    tmp.unlink(missing_ok=True)
    if not isinstance(e, (urllib.error.URLError, OSError, ValueError)):
      raise
    reason = getattr(e, 'reason', e)
    raise DataError(
        f'{dest}: cannot download {url} ({reason}); put {FOLDER}/ or {ARCHIVES[0]} into '
        f'{dest.parent} (or set data.dir / JAX_CIFAR_DATA_DIR to a folder that holds it)'
    ) from None
  if digest.hexdigest() != md5:
    tmp.unlink(missing_ok=True)
    raise DataError(
        f'{dest}: md5 of the download from {url} is {digest.hexdigest()}, expected {md5}; removed it'
    )
  os.replace(tmp, dest)
  return dest


def extract_archive(archive: pathlib.Path) -> pathlib.Path:
  """Extracts into a temp folder next to the archive, then renames, so a crash leaves no half folder."""
  target = archive.parent / FOLDER
  try:
    atomic_folder.remove_stale_temps(str(target))  # Half extractions of killed processes.
    tmp = pathlib.Path(atomic_folder.temp_name(str(target)))
    tmp.mkdir()
  except OSError as e:
    raise DataError(
        f'{archive}: cannot extract next to it ({e.strerror}); extract it elsewhere '
        f'(tar -xf {archive} -C DIR) and point data.dir to DIR'
    ) from None
  try:
    import tqdm  # pylint: disable=g-import-not-at-top
    import tqdm.utils  # pylint: disable=g-import-not-at-top

    # A bar over the archive's bytes: the first run had sat silent for ~9 s on the .tar.xz.
    with open(archive, 'rb') as f, tqdm.tqdm(
        total=archive.stat().st_size, unit='B', unit_scale=True, desc=f'Extracting {archive.name}',
        leave=False, mininterval=1.0) as bar, tarfile.open(
            fileobj=tqdm.utils.CallbackIOWrapper(bar.update, f, 'read')) as tar:
      tar.extractall(tmp, filter='data')
    if not _is_cifar_folder(tmp / FOLDER):
      raise DataError(f'{archive}: archive has no {FOLDER}/ folder with train, test and meta')
    try:
      os.rename(tmp / FOLDER, target)
    except OSError as e:
      if not _is_cifar_folder(target):  # else a concurrent process won the race: fine
        raise DataError(
            f'{target}: cannot put the extracted {archive.name} here ({e.strerror}); '
            'remove the incomplete folder and retry'
        ) from None
  except DataError:
    raise
  except OSError as e:
    if not e.errno:  # gzip's BadGzipFile: the archive.
      raise DataError(f'{archive}: corrupt or truncated archive ({type(e).__name__}: {e})') from None
    full = e.errno in errors.DISK_FULL  # The disk's fault, not the archive's (an audit).
    raise DataError(
        f'{archive}: cannot extract it into {archive.parent} '
        f'({errors.os_reason(e.errno, e.strerror or str(e))}); {"free space there, or " if full else ""}'
        f'extract it elsewhere (tar -xf {archive} -C DIR) and point data.dir to DIR') from None
  except Exception as e:  # truncated or unsafe archives: TarError, EOFError, LZMAError, zlib.error
    problem = f'{type(e).__name__}: {e}'
    raise DataError(f'{archive}: corrupt, truncated or unsafe archive ({problem})') from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def find_or_fetch(
    data_dir: str | os.PathLike, *, download: bool = True, url: str | None = None, md5: str | None = None
) -> pathlib.Path:
  """Returns the `cifar-100-python` folder, extracting or downloading it when needed."""
  data_dir = pathlib.Path(data_dir).expanduser()
  if _is_cifar_folder(data_dir / FOLDER):
    return data_dir / FOLDER
  if _is_cifar_folder(data_dir):  # the user pointed at the folder itself
    return data_dir
  if data_dir.is_dir() and any((data_dir / n).is_file() for n in _FOLDER_FILES):
    missing = [n for n in _FOLDER_FILES if not (data_dir / n).is_file()]  # The folder itself, part
    raise DataError(f'{data_dir}: an incomplete {FOLDER}/ (no {", ".join(missing)}); put the '
                    'missing files there, or give its parent folder to have it extracted or '
                    'downloaded')  # (It had said no folder was there, or downloaded into it.)
  if (data_dir / FOLDER).is_dir():  # Extracting or downloading would end on this folder anyway.
    missing = [n for n in _FOLDER_FILES if not (data_dir / FOLDER / n).is_file()]
    raise DataError(f'{data_dir / FOLDER}: incomplete (no {", ".join(missing)}); remove it to '
                    'have it extracted or downloaded again, or put the missing files there')
  for name in ARCHIVES:
    if (data_dir / name).is_file():
      return extract_archive(data_dir / name)
  below = sorted(p.parent for name in (FOLDER, *ARCHIVES) for p in data_dir.glob(f'*/{name}')
                 if not p.parent.name.startswith('.') and (_is_cifar_folder(p) or p.is_file())
                 ) if data_dir.is_dir() else []  # (Not a hidden temp of an extraction.)
  if below:  # One level too high: not a download into the wrong folder (an audit).
    raise DataError(f'{data_dir}: no {FOLDER}/ or {"/".join(ARCHIVES)} here, but {below[0]} '
                    f'holds one: give {below[0]} as the data folder')
  if not download:
    raise DataError(f'{data_dir}: no {FOLDER}/ or {"/".join(ARCHIVES)} here and download is off')
  archive = download_archive(url or CIFAR100_URL, data_dir / ARCHIVES[0], md5 or CIFAR100_MD5)
  return extract_archive(archive)


# ------------------------------------------------------------------ loading


def _labels(path: pathlib.Path, raw: dict[str, Any], key: str, n: int, num: int) -> np.ndarray:
  labels = raw[key]
  # A flat list of ints or an array: np.asarray had expanded nested lists the file shares to
  # gigabytes, and raised on ragged ones (a security audit).
  if isinstance(labels, (list, tuple)):
    if len(labels) != n or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                   for v in labels):
      raise DataError(f'{path}: {key} is a {type(labels).__name__} of {len(labels)} items, '
                      f'expected {n} ints')
    labels = np.asarray(labels)
  elif not isinstance(labels, np.ndarray):
    raise DataError(f'{path}: {key} is a {type(labels).__name__}, expected a list of {n} ints')
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{path}: {key} has shape {labels.shape} / dtype {labels.dtype}, expected {n} ints')
  if n and (labels.min() < 0 or labels.max() >= num):
    raise DataError(f'{path}: {key} outside [0, {num})')
  return labels.astype(np.int32)


def _split_from_pickle(path: pathlib.Path, encoding: str = 'latin1') -> Split:
  raw = read_pickle(path, encoding)
  for key in ('data', 'fine_labels'):
    if key not in raw:
      keys = sorted(map(_KEYS.repr, raw))  # Bounded, whatever the keys' types.
      keys = ', '.join(keys[:12]) + (f', ... ({len(keys):,} in all)' if len(keys) > 12 else '')
      raise DataError(f'{path}: missing key {key!r} (has {keys})')
  data = raw['data']
  if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)):
    desc = f'{data.dtype} {data.shape}' if isinstance(data, np.ndarray) else type(data).__name__
    raise DataError(f'{path}: data is {desc}, expected uint8 [N, 3072]')
  n = data.shape[0]
  if not n:  # (Its empty label list had been "dtype float64, expected 0 ints".)
    raise DataError(f'{path}: holds no images (data is [0, 3072])')
  labels = _labels(path, raw, 'fine_labels', n, NUM_CLASSES)
  coarse = _labels(path, raw, 'coarse_labels', n, NUM_COARSE_CLASSES) if 'coarse_labels' in raw else None
  # Rows are 1024 R, 1024 G, 1024 B planes (row-major 32x32): CHW -> HWC.
  images = np.ascontiguousarray(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
  return Split(images, labels, coarse)


def load_split(
    data_dir: str | os.PathLike,
    split: str,
    *,
    download: bool = True,
    url: str | None = None,
    md5: str | None = None,
    encoding: str = 'latin1',
) -> Split:
  """Loads 'train' or 'test' from the official python layout (folder, archive or download).

  `data_dir` is found as the trainer finds config.data.dir: '' is $JAX_CIFAR_DATA_DIR, else the
  cache folder, and a folder that does not exist is an error, never a new folder to download into.
  (Give '' itself: pathlib.Path('') is '.', the current folder.)
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  # (A run's config.data.dir is '' when the data came from $JAX_CIFAR_DATA_DIR: that had been
  # os.listdir('') deep in the download code, and a typo a new folder with a download in it.)
  folder = find_or_fetch(resolve_data_dir(os.fspath(data_dir), 'data_dir'), download=download,
                         url=url, md5=md5)
  return _split_from_pickle(folder / split, encoding)


def class_names(data_dir: str | os.PathLike = '') -> tuple[list[str], list[str]]:
  """(fine, coarse) class names from `meta`, indexed by label; the folder found as the trainer
  finds it (config.data.dir, else $JAX_CIFAR_DATA_DIR, else the cache folder)."""
  folder = find_or_fetch(resolve_data_dir(str(data_dir)), download=False)
  raw = read_pickle(folder / 'meta')
  try:
    names = list(raw['fine_label_names']), list(raw['coarse_label_names'])
  except KeyError as e:
    raise DataError(f'{folder / "meta"}: missing key {e}') from None
  except TypeError:  # Not a sequence.
    raise DataError(f'{folder / "meta"}: label names are not lists of names') from None
  for key, got, want in zip(('fine_label_names', 'coarse_label_names'), names,
                            (NUM_CLASSES, NUM_COARSE_CLASSES)):
    if len(got) != want:  # (zip had cut the per-class table short.)
      raise DataError(f'{folder / "meta"}: {key} holds {len(got)} names, expected {want}')
    odd = next((n for n in got if not isinstance(n, str)), None)
    if odd is not None:
      raise DataError(f'{folder / "meta"}: {key} holds {type(odd).__name__} {odd!r}, expected '
                      f'{want} names (str)')
  return names


# Each class's superclass: CIFAR-100's fixed table (every pair of the pickles' fine and coarse
# labels agrees with it: tests/test_cifar100_files.py).
FINE_TO_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15,
    3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4,
    2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13], np.int32)


def superclass_table(source: str, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """int32 [num_classes]: each class's superclass, CIFAR-100's for its images (local, tfds) and
  synthetic_split's rule for synthetic ones. Not read from a split's labels: a part of a split
  lacks classes (evaluate had counted a prediction of a missing class as superclass 0)."""
  if source == 'synthetic':
    return (np.arange(num_classes) * NUM_COARSE_CLASSES // num_classes).astype(np.int32)
  return FINE_TO_COARSE


def synthetic_split(n: int, seed: int, num_classes: int = NUM_CLASSES) -> Split:
  """Random pixels with balanced labels: shape-correct data for benchmarks and smoke tests."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
  return Split(images, labels, superclass_table('synthetic', num_classes)[labels])


# ------------------------------------------------------------------ splits and subsets


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """(train_idx, val_idx), both sorted; each class gives round(val_fraction * its count) to val."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f'val_fraction must be in [0, 1), got {val_fraction}')
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {labels.shape}')
  rng = np.random.default_rng(seed)
  val_parts = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    n_val = int(round(val_fraction * len(members)))
    val_parts.append(rng.permutation(members)[:n_val])
  val_idx = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
  in_val = np.zeros(len(labels), bool)
  in_val[val_idx] = True
  return np.flatnonzero(~in_val), val_idx


def balanced_subset(labels: np.ndarray, n: int) -> np.ndarray:
  """Sorted indices of n images taken round-robin over classes in file order; n=0 keeps all."""
  labels = np.asarray(labels)
  if n < 0:
    raise ValueError(f'n must be >= 0, got {n}')
  if n == 0 or n >= len(labels):
    return np.arange(len(labels))
  order = np.argsort(labels, kind='stable')
  sorted_labels = labels[order]
  rank = np.empty(len(labels), np.int64)  # position of each image within its class
  rank[order] = np.arange(len(labels)) - np.searchsorted(sorted_labels, sorted_labels, side='left')
  picked = np.lexsort((labels, rank))[:n]  # all first images, then all second images, ...
  return np.sort(picked)


def get_splits(data_cfg: Any, *, require_val: bool = False) -> dict[str, Split | None]:
  """'train', 'val' (None when val_fraction is 0) and 'test' for the `data` section of a config.

  `require_val` (training): a positive val_fraction that holds out no image is a ConfigError;
  otherwise 'val' is then empty (evaluation skips it).
  """
  source = data_cfg.source
  if source == 'local':
    data_dir = resolve_data_dir(data_cfg.dir)
    full_train = load_split(data_dir, 'train', download=data_cfg.download)
    test = load_split(data_dir, 'test', download=False)
  elif source == 'tfds':
    from jax_cifar.data import tfds_source  # pylint: disable=g-import-not-at-top  (it imports this)
    full_train = tfds_source.load_tfds('train', data_cfg.tfds_data_dir)
    test = tfds_source.load_tfds('test', data_cfg.tfds_data_dir)
  elif source == 'synthetic':
    full_train = synthetic_split(data_cfg.synthetic_size, seed=data_cfg.split_seed)
    test = synthetic_split(data_cfg.synthetic_size, seed=data_cfg.split_seed + 1)
  else:
    raise ValueError(f'data.source must be one of {SOURCES}, got {source!r}')

  val = None
  train = full_train
  if data_cfg.val_fraction > 0:
    train_idx, val_idx = stratified_split(full_train.labels, data_cfg.val_fraction, data_cfg.split_seed)
    if not len(val_idx) and require_val:  # Training: not silently validated on test instead.
      largest = int(np.bincount(full_train.labels).max()) if len(full_train) else 0
      raise errors.ConfigError(
          f'data.val_fraction={data_cfg.val_fraction} holds out no validation images: each class '
          f'gives round(val_fraction x its images), and the largest class has {largest}; give '
          f'more than 1/{2 * max(largest, 1)}, or 0 to train on every image (the best checkpoint '
          'is then picked on the test split)')
    train, val = full_train.subset(train_idx), full_train.subset(val_idx)
  if data_cfg.train_limit:
    train = train.subset(balanced_subset(train.labels, data_cfg.train_limit))
  if data_cfg.eval_limit:
    test = test.subset(balanced_subset(test.labels, data_cfg.eval_limit))
    if val is not None:
      val = val.subset(balanced_subset(val.labels, data_cfg.eval_limit))
  return {'train': train, 'val': val, 'test': test}
