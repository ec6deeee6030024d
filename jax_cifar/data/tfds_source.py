"""CIFAR-100 from an already prepared tensorflow-datasets build (`data.source='tfds'`), in the
official files' order so that splits and subsets match `source='local'`; never downloads
(`python -m jax_cifar.data.prepare_tfds` prepares it)."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
from typing import Any

import numpy as np

from jax_cifar.data.cifar100 import DataError, Split


def _tfds_order(records: list[dict[str, Any]], where: str) -> np.ndarray:
  """Indices sorting tfds records into the official files' order, from their ids ('train_00042')."""
  ids = [r['id'].decode() if isinstance(r['id'], bytes) else str(r['id']) for r in records]
  try:
    index = np.asarray([int(i.rsplit('_', 1)[1]) for i in ids], np.int64)
  except (IndexError, ValueError):
    raise DataError(f'tfds cifar100 in {where}: unexpected example ids such as {ids[0]!r}') from None
  order = np.argsort(index, kind='stable')
  if not np.array_equal(index[order], np.arange(len(index))):
    raise DataError(f'tfds cifar100 in {where}: example ids are not 0..{len(index) - 1} (a partial '
                    'or foreign build); rebuild it')
  return order


def load_tfds(split: str, data_dir: str = '') -> Split:
  """Reads an already prepared (array_record) tfds `cifar100`; never downloads.

  tfds stores examples in a hash-shuffled order; they come back in the official files' order (by
  `id`), which is the pickles' order, so splits and subsets match `source='local'`.
  """
  if data_dir and '://' not in data_dir:  # (gs://: pathlib would make it gs:/)
    data_dir = str(pathlib.Path(data_dir).expanduser())  # As data.dir and prepare_tfds do.
    check_data_dir(data_dir)
    if not pathlib.Path(data_dir).exists():  # A typo: not "build it here".
      raise DataError(f'tfds data_dir {data_dir} does not exist (to build cifar100 there: `python '
                      f'-m jax_cifar.data.prepare_tfds --data_dir={shlex.quote(str(data_dir))}`)')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)

  try:
    builder = tfds.builder('cifar100', data_dir=data_dir or None)
    # The folder tfds looks in: data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    where = str(builder.data_dir).rsplit('/', 2)[0]
  except Exception as e:  # pylint: disable=broad-except
    # As tfds itself: $TFDS_DATA_DIR before the default (it had been skipped here: a review).
    where = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
    builder, problem = None, e
    raise_if_damaged(where, e)
    if 'install gcsfs' in str(e):  # Without tensorflow, etils reads gs:// through fsspec's gcsfs.
      raise DataError(f'tfds data_dir {data_dir}: reading gs:// without tensorflow needs gcsfs: '
                      "pip install gcsfs (jax-cifar's `tpu` and `gcs` extras include it)") from None
  hint = (
      f'tfds cifar100 is not prepared as array_record in {where}: run `python -m '
      f'jax_cifar.data.prepare_tfds --data_dir={shlex.quote(str(where))}` (`tfds build cifar100 '
      f'--file_format=array_record` without apache-beam; needs tensorflow; online, or offline with '
      f'--manual_dir=DIR holding cifar-100-binary.tar.gz)'
  )
  if builder is None:
    raise DataError(f'{hint} ({type(problem).__name__}: {problem})') from None
  if not builder.is_prepared():
    raise DataError(hint)
  formats = sorted(str(getattr(f, 'value', f)) for f in builder.info.available_file_formats())
  if 'array_record' not in formats:  # tfds' default build: no random access (not damaged).
    raise DataError(f'tfds cifar100 in {builder.data_dir} is prepared as {", ".join(formats)}, '
                    'not array_record, which random access needs: give another '
                    'data.tfds_data_dir, or remove that folder and run `python -m '
                    f'jax_cifar.data.prepare_tfds --data_dir={shlex.quote(str(where))}`')
  try:
    source = tfds.data_source('cifar100', split=split, data_dir=data_dir or None, download=False)
    records = source.__getitems__(range(len(source)))
  except Exception as e:  # A shard missing or cut short: preparing again reuses the folder as is.
    raise DataError(f'tfds cifar100 in {builder.data_dir} is damaged ({type(e).__name__}: '
                    f'{" ".join(str(e).split())[:300]}): remove {builder.data_dir} and run `python -m '
                    f'jax_cifar.data.prepare_tfds --data_dir={shlex.quote(str(where))}` '
                    'again') from None
  records = [records[i] for i in _tfds_order(records, where)]
  images = np.zeros((len(records), 32, 32, 3), np.uint8)
  for i, record in enumerate(records):
    images[i] = record['image']
  labels = np.asarray([r['label'] for r in records], np.int32)
  coarse = np.asarray([r['coarse_label'] for r in records], np.int32)
  return Split(images, labels, coarse)


def check_data_dir(data_dir: str) -> None:
  """DataError for a local `data_dir` that cannot hold a tfds build: a file, or a folder one or
  two levels too deep (the dataset's own cifar100/ or cifar100/VERSION/: building there would nest
  a second copy)."""
  path = pathlib.Path(data_dir)
  if path.is_file():
    raise DataError(f'tfds data_dir {data_dir} is a file, not a folder')
  if path.name == 'cifar100' and any(path.glob('*/dataset_info.json')):
    above = path.parent
  elif path.parent.name == 'cifar100' and (path / 'dataset_info.json').is_file():
    above = path.parent.parent
  else:
    return
  raise DataError(f'tfds data_dir {data_dir} is the prepared dataset\'s own folder, not the tfds '
                  f'data_dir that holds it: give {above}')


def raise_if_damaged(where: str, e: Exception) -> None:
  """DataError naming the build to remove when tfds could not even open a cifar100 build that is
  there because its dataset_info.json does not parse (cut short): preparing again would fail the
  same way. Other failures are left to the caller."""
  if '://' in where:
    return
  for info in pathlib.Path(where).expanduser().glob('cifar100/*/dataset_info.json'):
    try:
      json.loads(info.read_text())
    except (OSError, ValueError, RecursionError):
      built = info.parent
      reason = ' '.join(str(e).split())[:200]
      raise DataError(f'tfds cifar100 in {built} is damaged ({type(e).__name__}: {reason}): '
                      f'remove {built} and run `python -m jax_cifar.data.prepare_tfds '
                      f'--data_dir={shlex.quote(str(where))}` again') from None
