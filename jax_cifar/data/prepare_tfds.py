"""Builds tfds `cifar100` as array_record (what data.source=tfds reads), online or from a file.

  python -m jax_cifar.data.prepare_tfds --data_dir ~/tensorflow_datasets [--manual_dir DIR]

With --manual_dir, DIR holds the official cifar-100-binary.tar.gz (tfds checks its sha256) and
nothing is downloaded. Building needs tensorflow (`pip install tensorflow-cpu`); reading does not.
`tfds build` does the same, but in tensorflow-datasets 4.9.10 it also needs apache-beam to start.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys

from jax_cifar import cli
from jax_cifar.data import cifar100, tfds_source

ARCHIVE = 'cifar-100-binary.tar.gz'
URL = 'https://www.cs.toronto.edu/~kriz/' + ARCHIVE


def prepare(data_dir: str, manual_dir: str = '') -> str:
  """Builds cifar100 into `data_dir` (a folder or gs:// path); returns the dataset's folder.

  Reads `manual_dir`/cifar-100-binary.tar.gz when given; an already built dataset is kept, and
  read back either way (a damaged one raises DataError naming the folder to remove).
  """
  if '://' not in data_dir:  # pathlib would turn gs://b into gs:/b
    data_dir = str(pathlib.Path(data_dir).expanduser())
  if manual_dir:
    manual_dir = str(pathlib.Path(manual_dir).expanduser())
    if not (pathlib.Path(manual_dir) / ARCHIVE).is_file():  # else tfds would silently download
      raise cifar100.DataError(f'{manual_dir}: no {ARCHIVE} here (download {URL} into it)')
  if importlib.util.find_spec('tensorflow') is None:  # tfds extracts and encodes with it
    raise cifar100.DataError('building tfds cifar100 needs tensorflow: pip install tensorflow-cpu '
                             '(reading it with data.source=tfds does not)')
  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.download import download_manager
  # pylint: enable=g-import-not-at-top

  if '://' not in data_dir:
    tfds_source.check_data_dir(data_dir)
  try:
    builder = tfds.builder('cifar100', data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    tfds_source.raise_if_damaged(data_dir, e)
    raise
  config = tfds.download.DownloadConfig(manual_dir=manual_dir or None, try_download_gcs=False)
  try:
    builder.download_and_prepare(file_format='array_record', download_config=config)
  except download_manager.NonMatchingChecksumError as e:
    found = ' '.join(str(e).split('To debug')[0].split())
    raise cifar100.DataError(f'{manual_dir or URL}: not the official {ARCHIVE} ({found})') from None
  for split in ('train', 'test'):  # tfds keeps a folder it built before as it is, even damaged:
    tfds_source.load_tfds(split, data_dir)  # read it back (a damaged one is named, with the way on).
  return str(builder.data_dir)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=cli.prog('jax_cifar.data.prepare_tfds'),
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', required=True, help='tfds data_dir (data.tfds_data_dir)')
  parser.add_argument('--manual_dir', default='', help=f'folder holding {ARCHIVE}; no download')
  args = parser.parse_args(argv)
  try:
    print(prepare(args.data_dir, args.manual_dir))
  except cifar100.DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
