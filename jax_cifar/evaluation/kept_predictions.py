"""A long evaluation's finished files, kept until it ends: a stopped, killed or failed
`evaluate --ood_dir` / `--cifar100c_dir` resumes at the first file it had not finished.

Each distortion (or CIFAR-100-C) file's predicted labels go to WORKDIR/partial_<tag>/ as soon as
the file is predicted, with a record of what they were made with (the checkpoint, its step and
its folder's modification time, the weights, the test-time tools, the config keys that can change a
prediction (PREDICTION_KEYS), the device count,
the jax-cifar and JAX versions, each input file's resolved path, size and modification time) and
a checksum. The same command run again uses the files it can check and predicts the rest; other
settings or changed inputs start over (a note names what differs), and their files are removed
once the new evaluation keeps its first one. The folder is removed once the evaluation has written
its results. Process 0 reads and writes it, holding a lock (WORKDIR/.partial_<tag>.lock) so that a
second evaluation with the same tag keeps nothing rather than disturb the first; the other
processes receive process 0's labels (a broadcast), so every process holds the same predictions.
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

from jax_cifar import atomic_folder, code_digest, errors, own_files, parallel, tracking
from jax_cifar import workdir as workdir_lib
from jax_cifar.data import ood

RECORD = 'kept.json'
# The config keys a prediction depends on: the model, the crop mode of the shifted views, whether
# there is an EMA, and the batch (XLA's numbers may differ a little with it). Any other key (where
# the data lives, data.eval_limit, logging) had discarded hours of kept files (an evaluate review).
PREDICTION_KEYS = ('model', 'augment.crop_mode', 'ema.decay', 'train.eval_batch_size')
# What each part of the settings is, for the note that says why kept files are not used.
_PARTS = {'checkpoint': 'checkpoint', 'step': 'step', 'weights': 'weights',
          'step_saved_ns': 'save time of the step', 'prediction_config': 'model settings ('
          + ', '.join(PREDICTION_KEYS) + ')', 'devices': 'device count',
          'versions': 'jax-cifar or JAX code', 'files': 'input files (path, size or time)',
          'tta': '--tta', 'tta_average': '--tta_average', 'bn_adapt': '--bn_adapt',
          'bn_adapt_batch': "--bn_adapt's batch", 'tent': '--tent settings'}


def fingerprint(f: ood.ImageFile) -> list:
  """What identifies an input file's contents cheaply: its resolved path, size and mtime."""
  stat = f.path.stat()
  return [str(f.path.resolve()), stat.st_size, stat.st_mtime_ns]


def settings(result: dict, config, step_dir: pathlib.Path, files: list[ood.ImageFile]) -> dict:
  """What the kept labels depend on: `result`'s checkpoint, step, weights and tools so far, the
  config's PREDICTION_KEYS, the devices, the step's save time (a step saved again after a crash
  has other weights), jax-cifar's code (its version stays the same between releases) and jax's
  version, and the input files."""
  saved = workdir_lib.saved_at_ns(step_dir)  # (Kept by a copy of the run, unlike its mtime.)
  keys = {k: v for k, v in workdir_lib.flatten(config.to_dict()).items()
          if k in PREDICTION_KEYS or k.split('.')[0] in PREDICTION_KEYS}
  return {**result, 'prediction_config': parallel.digest(keys), 'devices': jax.device_count(),
          'step_saved_ns': saved, 'versions': [code_digest.code_version(), jax.__version__],
          'files': [fingerprint(f) for f in files]}


def _crc(labels: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(labels).tobytes())


class KeptPredictions:
  """Predicted labels by name ('ood_distortion03', 'c_fog'), in `folder` (None: nothing is kept,
  e.g. a read-only workdir). `settings` must be JSON-able; any difference starts over."""

  def __init__(self, folder: pathlib.Path | None, settings: dict):
    self.folder = folder
    self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    self._done: dict[str, int] = {}  # name -> checksum of its saved labels (process 0)
    self._stale = False  # The folder holds another evaluation's files, removed at the first keep.
    self._keeping = folder is not None and jax.process_index() == 0
    self._lock = None
    if self._keeping and folder.is_symlink():  # Its files had gone where it led (a review).
      tracking.say(f'note: {folder} is a symbolic link (to {os.readlink(folder)}): this evaluation '
                   'keeps no finished files; remove the link to keep them')
      self._keeping = False
    if self._keeping:
      self._keeping = self._take_lock()
    if self._keeping:
      self._done = self._read_record()

  def _take_lock(self) -> bool:
    """Whether this run may read and write the folder: not while another evaluation with the
    same tag does (its temp files, its clear() and its rmtree had broken each other's files)."""
    self._lock = own_files.Lock(self.folder.parent, f'.{self.folder.name}.lock')
    try:
      if self._lock.try_acquire():
        return True
      why = f'another evaluation with the same settings is using it ({self._lock.holder})'
    except OSError as e:
      why = errors.os_reason(e.errno, e.strerror or str(e))
    except workdir_lib.WorkdirError as e:  # A link or no file (process 0 alone: not raised).
      why = str(e)
    self._lock = None
    tracking.say(f'note: {self.folder}: {why}; this evaluation keeps no finished files')
    return False

  def _read_record(self) -> dict[str, int]:
    if not self.folder.is_dir():
      return {}
    try:
      record = json.loads((self.folder / RECORD).read_text())
    except FileNotFoundError:
      record = {'settings': self.settings, 'done': {}}  # Files a kill left before any record.
    except (OSError, ValueError, RecursionError):
      record = None
    if isinstance(record, dict) and record.get('settings') == self.settings and isinstance(
        record.get('done'), dict):
      return {str(k): v for k, v in record['done'].items()}
    tracking.say(f'note: {self.folder} holds the predictions of a stopped evaluation with other '
                 f'settings or input files ({self._differences(record)}): not used, starting '
                 'over; they are removed when this evaluation finishes its first file')
    self._stale = True
    return {}

  def _differences(self, record) -> str:
    """What differs from a record's settings, in words (what the note says: which parts, or that
    the record cannot be read, is damaged or is from an older jax-cifar)."""
    old = record.get('settings') if isinstance(record, dict) else None
    if not isinstance(old, dict):
      return f'its {RECORD} cannot be read'
    if 'prediction_config' not in old:  # (Its 'config' was a digest of every key.)
      return 'a record of an older jax-cifar'
    differ = [k for k in sorted(set(old) | set(self.settings))
              if old.get(k) != self.settings.get(k)]
    if not differ:  # The same settings, but no list of finished files (a review).
      return f'its {RECORD} is damaged'
    return 'other ' + ', '.join(_PARTS.get(k, f'{k!r}') for k in differ)

  def count(self, names: list[str]) -> int:
    """How many of `names` are recorded as kept (process 0's view; 0 on the others)."""
    return sum(n in self._done for n in names)

  def get(self, name: str, num_images: int) -> np.ndarray | None:
    """`name`'s kept labels, or None if it is to be predicted. Every process calls it for the same
    names in the same order (with several processes it is a collective)."""
    labels = self._load(name, num_images) if self._keeping else None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if not int(multihost_utils.broadcast_one_to_all(np.int32(labels is not None))):
        return None
      labels = np.asarray(multihost_utils.broadcast_one_to_all(
          labels if labels is not None else np.zeros(num_images, np.int32)))
    return labels

  def _load(self, name: str, num_images: int) -> np.ndarray | None:
    """Never raises (process 0 alone calls it, between collectives): a file it cannot check is
    predicted again."""
    if name not in self._done:
      return None
    path = self.folder / f'{name}.npy'
    try:
      labels = np.load(path, allow_pickle=False)
      ok = (isinstance(labels, np.ndarray) and labels.shape == (num_images,)
            and labels.dtype == np.int32 and _crc(labels) == self._done[name])
    except Exception:  # pylint: disable=broad-except  (an .npz or any other damage)
      ok = False
    if not ok:
      tracking.say(f'note: {path} is damaged or does not match {RECORD}; predicting {name} again')
      del self._done[name]
      return None
    return labels

  def keep(self, name: str, labels: np.ndarray) -> None:
    """Saves `name`'s labels (process 0). A failure (a full disk) costs only the resumption of
    the files after it."""
    if not self._keeping:
      return
    labels = np.asarray(labels, np.int32)

    def save(tmp: str) -> None:
      with open(tmp, 'wb') as f:  # (np.save(path) would add .npy to the temp's name.)
        np.save(f, labels, allow_pickle=False)

    try:
      if self._stale:  # (Left until now: a stop before this file keeps the other evaluation's.)
        shutil.rmtree(self.folder, ignore_errors=True)
        self._stale = False
      self.folder.mkdir(exist_ok=True)
      atomic_folder.write_file(self.folder / f'{name}.npy', save)
      self._done[name] = _crc(labels)
      atomic_folder.write_file(self.folder / RECORD, lambda tmp: pathlib.Path(tmp).write_text(
          json.dumps({'settings': self.settings, 'done': self._done}, indent=1)))
    except OSError as e:
      self._done.pop(name, None)
      self._keeping = False
      tracking.say(f'note: cannot keep predictions in {self.folder} '
                   f'({errors.os_reason(e.errno, e.strerror or str(e))}): files finished from '
                   'now on are not kept')

  def stop_note(self) -> str:
    """For the stop line: where the finished files wait ('' if none were kept)."""
    if not self._done:
      return ''
    n = len(self._done)
    return (f'; the predictions of {n} finished file{"s" * (n != 1)} are kept in {self.folder}: '
            'the same command resumes after them')

  def clear(self) -> None:
    """Removes the folder and its lock (process 0), once the evaluation's results are written."""
    if self._lock is None:
      return
    shutil.rmtree(self.folder, ignore_errors=True)
    with contextlib.suppress(OSError):
      os.unlink(self._lock.path)
    self.close()

  def close(self) -> None:
    """Lets the next evaluation in (the folder stays): what a stopped process's exit does, for a
    caller that evaluates again in the same process."""
    if self._lock is not None:
      self._lock.release()
      self._lock, self._keeping = None, False
