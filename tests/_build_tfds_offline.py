"""Runs prepare_tfds.prepare with every network call refused and recorded; prints a JSON result.

  python tests/_build_tfds_offline.py DATA_DIR MANUAL_DIR [--register_archive]

A separate process keeps tensorflow (which tfds builds with) out of the pytest worker.
--register_archive: tfds accepts the archive's own size/sha256 in place of the official file's
(the test's archive is a subset built from the pickles; nothing else about tfds is changed).
"""

import contextlib
import json
import socket
import sys

import pytest


class NetworkRefused(RuntimeError):
  """Not an OSError, so no HTTP client retries it: a download attempt fails at once."""


@contextlib.contextmanager
def no_network():
  """Every socket connection or name lookup fails and is recorded (tfds must need neither)."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise NetworkRefused('network is disabled in this test')

  with pytest.MonkeyPatch.context() as patch:
    for target, name in ((socket.socket, 'connect'), (socket.socket, 'connect_ex'),
                         (socket, 'getaddrinfo'), (socket, 'create_connection')):
      patch.setattr(target, name, refuse)
    yield attempts


def main(data_dir: str, manual_dir: str, register_archive: bool) -> dict:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core.download import checksums  # pylint: disable=import-outside-toplevel

  from jax_cifar.data import cifar100, prepare_tfds  # pylint: disable=import-outside-toplevel

  result = {'built': None, 'error': None}
  with no_network() as attempts, pytest.MonkeyPatch.context() as patch:
    if register_archive:
      found = checksums.compute_url_info(f'{manual_dir}/{prepare_tfds.ARCHIVE}')
      ours = checksums.UrlInfo(size=found.size, checksum=found.checksum,
                               filename=prepare_tfds.ARCHIVE)
      patch.setattr(tfds.builder_cls('cifar100'), 'url_infos', {prepare_tfds.URL: ours})
    try:
      result['built'] = str(prepare_tfds.prepare(data_dir, manual_dir))
    except cifar100.DataError as e:
      result['error'] = str(e)
  result['network_attempts'] = attempts
  return result


if __name__ == '__main__':
  print('RESULT ' + json.dumps(main(sys.argv[1], sys.argv[2], '--register_archive' in sys.argv)))
