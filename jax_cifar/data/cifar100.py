"""CIFAR-100 sources (official pickles, synthetic; tfds in tfds_source.py) and deterministic splits.

Everything here returns uint8 NHWC arrays on the host; augmentation and arithmetic on pixels
happen later, on the accelerator.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import reprlib
from typing import Any

import numpy as np

from jax_cifar import errors
from jax_cifar.data import safe_pickle
# Finding (downloading, extracting) the folder: fetch.py. DataError: every data problem's one line.
from jax_cifar.data.fetch import find_or_fetch, resolve_data_dir
from jax_cifar.errors import DataError

NUM_CLASSES = 100
NUM_COARSE_CLASSES = 20
TEST_SIZE = 10_000  # Images of the official test split.
SOURCES = ('local', 'tfds', 'synthetic')  # data.source
SPLITS = ('train', 'test')
_KEYS = reprlib.Repr()  # A file's keys in a message, each shortened (the file chose them).
_KEYS.maxstring, _KEYS.maxother = 40, 40


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
  except OSError as e:  # Permission denied, a folder, an I/O error: the file may well be intact.
    raise DataError(f'{path}: cannot be read ({e.strerror or e})') from None
  except safe_pickle.DisallowedGlobal as e:
    raise DataError(f'{path}: refused unsafe pickle ({e})') from None
  except MemoryError as e:  # It had read "corrupt or truncated pickle (MemoryError: )" (a review).
    if _size(path) < LARGE_PICKLE:  # A small file declaring a huge object: the file is at fault.
      raise DataError(f'{path}: corrupt pickle (it declares more data than memory holds: '
                      'MemoryError)') from None
    raise DataError(f'{path}: out of memory while reading it (the file is not at fault; about '
                    f'{_size(path) / 2**20:.0f} MiB of images): free some memory or raise the '
                    'limit (ulimit -v)') from None
  except Exception as e:  # truncated files raise EOFError, ValueError, TypeError, ...
    raise DataError(f'{path}: corrupt or truncated pickle ({type(e).__name__}: {e})') from None
  if not isinstance(obj, dict):
    raise DataError(f'{path}: expected a dict, got {type(obj).__name__}')
  done = {}
  return {_to_str(k, done): _to_str(v, done) for k, v in obj.items()}


LARGE_PICKLE = 16 * 2**20  # Bytes: the real files are 150 (train) and 30 MB (test).


def _size(path: pathlib.Path) -> int:
  try:
    return path.stat().st_size
  except OSError:
    return 0


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


def _check_batch_label(path: pathlib.Path, label: Any) -> None:
  """Refuses a `train` file that the official files label the test split, and the reverse:
  swapped or copied files had trained on the 10,000 test images, without a word (a bad-input
  review). The official labels are 'training batch 1 of 1' and 'testing batch 1 of 1'."""
  if not isinstance(label, str) or path.name not in SPLITS:
    return
  holds = next((s for s in SPLITS if label.strip().lower().startswith(s)), None)
  if holds and holds != path.name:
    raise DataError(f'{path}: holds the {holds} split (its batch_label is {label[:40]!r}), not the '
                    f'{path.name} split: are the files swapped or copied? The official '
                    'cifar-100-python/ has train (50,000 images) and test (10,000)')


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
  _check_batch_label(path, raw.get('batch_label'))
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


# The names of the official `meta` file, by label index: what class_names() gives without a folder
# (every copy's meta is checked against them: tests/test_cifar100.py).
FINE_LABEL_NAMES = (
    'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle',
    'bottle', 'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle',
    'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch',
    'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin', 'elephant', 'flatfish', 'forest', 'fox',
    'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp', 'lawn_mower', 'leopard', 'lion',
    'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain', 'mouse', 'mushroom',
    'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear', 'pickup_truck', 'pine_tree',
    'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road',
    'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake',
    'spider', 'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank',
    'telephone', 'television', 'tiger', 'tractor', 'train', 'trout', 'tulip', 'turtle',
    'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman', 'worm')
COARSE_LABEL_NAMES = (
    'aquatic_mammals', 'fish', 'flowers', 'food_containers', 'fruit_and_vegetables',
    'household_electrical_devices', 'household_furniture', 'insects', 'large_carnivores',
    'large_man-made_outdoor_things', 'large_natural_outdoor_scenes',
    'large_omnivores_and_herbivores', 'medium_mammals', 'non-insect_invertebrates', 'people',
    'reptiles', 'small_mammals', 'trees', 'vehicles_1', 'vehicles_2')


def class_names(data_dir: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
  """(fine, coarse) class names, indexed by label. Without `data_dir`, CIFAR-100's official names
  (no data needed: a run's config.data.dir is '' when $JAX_CIFAR_DATA_DIR named the data, and a
  notebook without that variable had found none: a walkthrough). With one, those of its `meta`
  file, the folder found as the trainer finds it ('': $JAX_CIFAR_DATA_DIR, else the cache)."""
  if data_dir is None:
    return list(FINE_LABEL_NAMES), list(COARSE_LABEL_NAMES)
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
      few = (f' (data.synthetic_size={data_cfg.synthetic_size} makes that few: a larger size '
             'holds out more)' if source == 'synthetic' else '')  # (It had named only val_fraction.)
      raise errors.ConfigError(
          f'data.val_fraction={data_cfg.val_fraction} holds out no validation images: each class '
          f'gives round(val_fraction x its images), and the largest class has {largest}{few}; '
          f'give more than 1/{2 * max(largest, 1)}, or 0 to train on every image (the best '
          'checkpoint is then picked on the test split). A run that trained with this value '
          '(versions before 2026-12-02 allowed it, and it trained on every image) resumes with '
          '--config.data.val_fraction=0 --config.train.allow_config_change=true')
    train, val = full_train.subset(train_idx), full_train.subset(val_idx)
  if data_cfg.train_limit:
    train = train.subset(balanced_subset(train.labels, data_cfg.train_limit))
  if data_cfg.eval_limit:
    test = test.subset(balanced_subset(test.labels, data_cfg.eval_limit))
    if val is not None:
      val = val.subset(balanced_subset(val.labels, data_cfg.eval_limit))
  return {'train': train, 'val': val, 'test': test}


def limit_notes(data_cfg: Any, num_classes: int, train: Split, val: Split) -> list[str]:
  """Warnings for data limits the data could not meet or that leave classes out of validation
  (they had been taken without a word: a flag audit). `train`, `val`: the splits trained and
  validated on."""
  notes = []
  if data_cfg.train_limit > len(train):
    notes.append(f'data.train_limit={data_cfg.train_limit} is more than the {len(train)} training '
                 f'images (after the validation hold-out): all {len(train)} are used')
  if data_cfg.eval_limit > len(val):  # (Only train_limit's had been said: a fuzz.)
    notes.append(f'data.eval_limit={data_cfg.eval_limit} is more than the {len(val)} validation '
                 f'images: all {len(val)} are used')
  if 0 < data_cfg.eval_limit < num_classes:
    notes.append(f'data.eval_limit={data_cfg.eval_limit} is fewer than the {num_classes} classes: '
                 f'validation (and the best checkpoint) rests on {len(val)} images of '
                 f'{len(np.unique(val.labels))} classes')
  return notes
