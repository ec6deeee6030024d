"""Builds tfds `cifar100` as array_record (what data.source=tfds reads), online or from a file.

  python -m jax_cifar.data.prepare_tfds --data_dir ~/tensorflow_datasets [--manual_dir DIR]

With --manual_dir, DIR holds the official cifar-100-binary.tar.gz (tfds checks its sha256) and
nothing is downloaded. Building needs tensorflow (`pip install tensorflow-cpu`); reading does not.
`tfds build` does the same, but in tensorflow-datasets 4.9.10 it also needs apache-beam to start.
"""

from __future__ import annotations

import errno
import http.client
import importlib.util
import pathlib
import socket
import sys
import urllib.request

from absl import logging

from jax_cifar import cli, errors
from jax_cifar.data import cifar100, tfds_source

ARCHIVE = 'cifar-100-binary.tar.gz'
URL = 'https://www.cs.toronto.edu/~kriz/' + ARCHIVE
OFFLINE = (f'offline, download {ARCHIVE} elsewhere, put it into a folder M and add --manual_dir M '
           '(nothing is downloaded then)')


# What says "no way to the server" for certain; anything else (a TLS certificate urllib does not
# trust but requests, which tfds uses, may; an HTTP error) is left to tfds (a review).
_UNREACHABLE = (socket.gaierror, ConnectionRefusedError, TimeoutError)
_UNREACHABLE_ERRNOS = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN)


def _check_reachable(timeout_s: float = 20.0) -> None:
  """DataError at once where the archive's server cannot be reached (proxies as the environment
  says): tfds's own download retries for minutes, then ends in a traceback (an audit)."""
  try:
    urllib.request.urlopen(urllib.request.Request(URL, method='HEAD'), timeout=timeout_s).close()
  except (OSError, http.client.HTTPException, ValueError) as e:
    reason = getattr(e, 'reason', e)  # urllib's URLError wraps the socket's error.
    if isinstance(reason, _UNREACHABLE) or getattr(reason, 'errno', None) in _UNREACHABLE_ERRNOS:
      raise cifar100.DataError(f'cannot reach {URL} ({reason}); {OFFLINE}') from None


def _is_prepared(builder) -> bool:
  """tfds's is_prepared, without its warning that a folder not yet built has no dataset_info."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    return builder.is_prepared()
  finally:
    logging.set_verbosity(verbosity)


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
  if not manual_dir and not _is_prepared(builder):
    _check_reachable()  # Before tfds creates anything in data_dir.
  config = tfds.download.DownloadConfig(manual_dir=manual_dir or None, try_download_gcs=False)
  try:
    builder.download_and_prepare(file_format='array_record', download_config=config)
  except download_manager.NonMatchingChecksumError as e:
    found = ' '.join(str(e).split('To debug')[0].split())
    raise cifar100.DataError(f'{manual_dir or URL}: not the official {ARCHIVE} ({found})') from None
  except OSError as e:  # requests' errors are OSErrors without an errno: the download failed.
    if e.strerror:
      raise  # The operating system's (a data_dir that cannot be written): main names it.
    raise cifar100.DataError(f'cannot download {URL} ({" ".join(str(e).split())[:300]}); '
                             f'{OFFLINE}') from None
  for split in ('train', 'test'):  # tfds keeps a folder it built before as it is, even damaged:
    tfds_source.load_tfds(split, data_dir)  # read it back (a damaged one is named, with the way on).
  return str(builder.data_dir)


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(prog=cli.prog('jax_cifar.data.prepare_tfds'),
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', required=True, type=cli.nonempty('the tfds data_dir'),
                      help='tfds data_dir (data.tfds_data_dir)')
  # (Empty values are refused: an unset shell variable in --data_dir had built the dataset in the
  # current folder, and in --manual_dir had downloaded it: a flag audit.)
  parser.add_argument('--manual_dir', default=None,
                      type=cli.nonempty(f'the folder holding {ARCHIVE}'),
                      help=f'folder holding {ARCHIVE}; no download')
  args = parser.parse_args(argv)
  try:
    print(prepare(args.data_dir, args.manual_dir or ''))
  except Exception as e:  # pylint: disable=broad-except
    message = errors.user_message(e)  # Bad input or the environment's (an unwritable data_dir).
    if message is None:
      raise  # A bug: its traceback.
    print(f'error: {message}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
