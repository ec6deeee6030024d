"""A long evaluation's finished files, kept until it ends: a stopped, killed or failed
`evaluate --ood_dir` / `--cifar100c_dir` resumes at the first file it had not finished.

Each distortion (or CIFAR-100-C) file's predicted labels go to WORKDIR/partial_<tag>/ as soon as
the file is predicted, with a record of what they were made with (the checkpoint and its step,
the weights, the test-time tools, the config, the device count, each input file's path, size and
modification time) and a checksum. The same command run again uses the files it can check and
predicts the rest; other settings or changed inputs start over. The folder is removed once the
evaluation has written its results. Process 0 reads and writes it; the other processes receive
its labels (a broadcast), so every process holds the same predictions.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import zlib

import jax
import numpy as np

from jax_cifar import errors, tracking
from jax_cifar.data import ood

RECORD = 'kept.json'


def fingerprint(f: ood.ImageFile) -> list:
  """What identifies an input file's contents cheaply: its resolved path, size and mtime."""
  stat = f.path.stat()
  return [str(f.path.resolve()), stat.st_size, stat.st_mtime_ns]


def _crc(labels: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(labels).tobytes())


class KeptPredictions:
  """Predicted labels by name ('ood_distortion03', 'c_fog'), in `folder` (None: nothing is kept,
  e.g. a read-only workdir). `settings` must be JSON-able; any difference starts over."""

  def __init__(self, folder: pathlib.Path | None, settings: dict):
    self.folder = folder
    self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    self._done: dict[str, int] = {}  # name -> checksum of its saved labels (process 0)
    if folder is not None and jax.process_index() == 0:
      self._done = self._read_record()

  def _read_record(self) -> dict[str, int]:
    if not self.folder.is_dir():
      return {}
    for part in self.folder.glob('.*.part'):
      with contextlib.suppress(OSError):
        part.unlink()  # A write that a kill cut short.
    try:
      record = json.loads((self.folder / RECORD).read_text())
    except FileNotFoundError:
      return {}
    except (OSError, ValueError, RecursionError):
      record = None
    if isinstance(record, dict) and record.get('settings') == self.settings and isinstance(
        record.get('done'), dict):
      return {str(k): v for k, v in record['done'].items()}
    tracking.say(f'note: {self.folder} holds the predictions of a stopped evaluation with other '
                 'settings or input files: not used, starting over')
    shutil.rmtree(self.folder, ignore_errors=True)
    return {}

  def count(self, names: list[str]) -> int:
    """How many of `names` are recorded as kept (process 0's view; 0 on the others)."""
    return sum(n in self._done for n in names)

  def get(self, name: str, num_images: int) -> np.ndarray | None:
    """`name`'s kept labels, or None if it is to be predicted. Every process calls it for the same
    names in the same order (with several processes it is a collective)."""
    labels = self._load(name, num_images) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if not int(multihost_utils.broadcast_one_to_all(np.int32(labels is not None))):
        return None
      labels = np.asarray(multihost_utils.broadcast_one_to_all(
          labels if labels is not None else np.zeros(num_images, np.int32)))
    return labels

  def _load(self, name: str, num_images: int) -> np.ndarray | None:
    if self.folder is None or name not in self._done:
      return None
    path = self.folder / f'{name}.npy'
    try:
      labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
      labels = None
    if (labels is None or labels.shape != (num_images,) or labels.dtype != np.int32
        or _crc(labels) != self._done[name]):
      tracking.say(f'note: {path} is damaged or does not match {RECORD}; predicting {name} again')
      del self._done[name]
      return None
    return labels

  def keep(self, name: str, labels: np.ndarray) -> None:
    """Saves `name`'s labels (process 0). A failure (a full disk) costs only the resumption."""
    if self.folder is None or jax.process_index() != 0:
      return
    labels = np.asarray(labels, np.int32)
    tmp = self.folder / f'.{name}.npy.part'
    try:
      self.folder.mkdir(exist_ok=True)
      with open(tmp, 'wb') as f:
        np.save(f, labels, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self.folder / f'{name}.npy')
      self._done[name] = _crc(labels)
      self._write_record()
    except OSError as e:
      with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
      tracking.say(f'note: cannot keep predictions in {self.folder} '
                   f'({errors.os_reason(e.errno, e.strerror or str(e))}): if this evaluation '
                   'stops, it starts over')
      self.folder = None

  def _write_record(self) -> None:
    tmp = self.folder / f'.{RECORD}.part'
    with open(tmp, 'w') as f:
      json.dump({'settings': self.settings, 'done': self._done}, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.folder / RECORD)

  def stop_note(self) -> str:
    """For the stop line: where the finished files wait ('' if none were kept)."""
    if self.folder is None or not self._done:
      return ''
    n = len(self._done)
    return (f'; the predictions of {n} finished file{"s" * (n != 1)} are kept in {self.folder}: '
            'the same command resumes after them')

  def clear(self) -> None:
    """Removes the folder (process 0), once the evaluation's results are written."""
    if self.folder is not None and jax.process_index() == 0:
      shutil.rmtree(self.folder, ignore_errors=True)
