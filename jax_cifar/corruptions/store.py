"""The output folder of `jax_cifar.corrupt`: a manifest of its options, atomic files, resume, stop.

What a reader can rely on, whatever happens to the writer (SIGKILL, SIGTERM, a full disk):
  - every `.npy` is complete: it is written to a hidden `.<name>.part` sibling, flushed to disk and
    only then renamed into place;
  - every output file in the folder belongs to one set of options: `corrupt_manifest.json`
    (replaced atomically) records them (format, seed, limit and image count, a hash of the source
    images and labels, the frost textures, chunk size, generator version) and each file's
    completion and sha256. A run with other options is refused unless `overwrite` is set, an
    output file the manifest records but not as complete is removed, and a run with the same
    options keeps the complete files and writes the rest (other corruptions add to the set);
  - a file the manifest does not record is never removed or replaced (with `overwrite` neither):
    the run is refused if it could write that name, and the other format's names are left alone.
One writer at a time: the folder is locked (flock on the folder itself) while a run uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import pathlib
import signal
import sys
import time
from typing import Any, Iterable, Iterator

import numpy as np

from jax_cifar import atomic_folder, errors
from jax_cifar.data.ood import CORRUPTIONS, LABELS_FILE, distortion_file

MANIFEST = 'corrupt_manifest.json'
# Options that decide the pixels: files made with different values must never share a folder.
# What the images of a set are made by: 2, glass blur as make_cifar_c.py's (2026-12-06). A set of
# an older one is still read, with a note (its numbers differ from a set made now).
GENERATOR_VERSION = 2
SET_OPTIONS = {'format': '--format', 'seed': '--seed', 'num_images': '--limit (image count)',
               'source_sha256': ('the source images and labels (--data_dir, --split, '
                                 '--val_fraction, --split_seed)'),
               'frost': '--frost_dir (the frost textures)', 'severities': 'severities',
               'chunk': 'chunk size', 'generator_version': 'generator version'}
# Test hook, 'EVENT:K:ACTION': at the K-th EVENT (block, part, renamed, recorded), ACTION is KILL,
# TERM or INT (that signal to this process) or PAUSE (print a line, wait up to 60 s for a signal).
HOOK_ENV = 'JAX_CIFAR_CORRUPT_TEST_HOOK'



def _check_manifest(manifest: Any) -> None:
  """Raises ValueError unless `manifest` has the form _save_manifest writes (a hand-edited or
  damaged one is then 'unreadable', never a traceback)."""
  if not isinstance(manifest, dict):
    raise ValueError(f'not a JSON object but {type(manifest).__name__}')
  missing = [k for k in (*SET_OPTIONS, 'corruptions', 'files') if k not in manifest]
  if missing:
    raise ValueError(f'keys missing: {", ".join(missing)}')
  files, corruptions = manifest['files'], manifest['corruptions']
  if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
    raise ValueError("'files' is not an object of file entries")
  if not isinstance(corruptions, list) or not all(isinstance(c, str) for c in corruptions):
    raise ValueError("'corruptions' is not a list of names")
  for name, entry in files.items():
    if entry.get('complete') and not (isinstance(entry.get('bytes'), int)
                                      and isinstance(entry.get('sha256'), str)):
      raise ValueError(f'complete file {name} has no bytes / sha256')


def _fresh_part(tmp: pathlib.Path) -> int:
  """A new temp file at `tmp` (its fixed name lets a rerun remove a killed run's): a stale one, or
  a link planted there, is removed first, never written through (a diff review found the
  manifest written into the file such a link led to)."""
  tmp.unlink(missing_ok=True)
  return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)


class OutputError(errors.UserError, ValueError):
  """The output folder cannot be used as asked: conflicting set, locked or unwritable."""


class Interrupted(BaseException):
  """SIGTERM or SIGINT arrived. Not an Exception, so `except Exception` never swallows it."""

  def __init__(self, signum: int):
    self.signum = signum
    super().__init__(f'stopped by {signal.Signals(signum).name}')


def all_output_names() -> set[str]:
  """Every file name this tool writes, in either format."""
  names = {distortion_file(i) for i in range(len(CORRUPTIONS))}
  return names | {f'{n}.npy' for n in CORRUPTIONS} | {LABELS_FILE, MANIFEST}


def output_names(fmt: str) -> set[str]:
  """The file names a set of format `fmt` may hold."""
  return {file_name(fmt, c) for c in CORRUPTIONS} | {LABELS_FILE}


def file_name(fmt: str, corruption: str) -> str:
  return distortion_file(CORRUPTIONS.index(corruption)) if fmt == 'ds542' else f'{corruption}.npy'


# ------------------------------------------------------------------ signals and the test hook
_state: dict[str, Any] = {'signum': None, 'defer': False, 'events': {}}


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
  """While active, SIGTERM/SIGINT raise Interrupted: at once, or inside `deferred_stop` at the
  next `check_stop` (between image blocks, so no file is left half-written)."""
  def handler(signum, _):
    first = _state['signum'] is None
    _state['signum'] = signum
    if first and not _state['defer']:  # A second signal while stopping changes nothing.
      raise Interrupted(signum)

  _state['signum'] = None
  old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for sig, h in old.items():
      signal.signal(sig, h)
    _state['signum'] = None


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
  _state['defer'] = True
  try:
    yield
  finally:
    _state['defer'] = False


def check_stop() -> None:
  if _state['signum'] is not None:
    raise Interrupted(_state['signum'])


def _hook(event: str) -> None:
  spec = os.environ.get(HOOK_ENV, '')
  if not spec:
    return
  at, k, action = spec.split(':')
  count = _state['events'][event] = _state['events'].get(event, 0) + 1
  if at != event or count != int(k):
    return
  if action == 'PAUSE':
    print(f'test hook: paused at {event} {k}', flush=True)
    deadline = time.monotonic() + 60
    while _state['signum'] is None and time.monotonic() < deadline:
      time.sleep(0.01)  # Polls for the signal the test sends; the wait is not the trigger.
  else:
    os.kill(os.getpid(), getattr(signal, f'SIG{action}'))


# ------------------------------------------------------------------ the folder
def fingerprint(*arrays: np.ndarray) -> str:
  """sha256 over the dtypes, shapes and bytes of `arrays`: identifies source images and textures."""
  digest = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    digest.update(f'{a.dtype.str}{a.shape}'.encode())
    digest.update(a.data)
  return digest.hexdigest()


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 22):
      digest.update(chunk)
  return digest.hexdigest()


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
  buf = io.BytesIO()  # Byte-identical to np.save's header.
  np.lib.format.write_array_header_1_0(
      buf, {'descr': np.lib.format.dtype_to_descr(dtype), 'fortran_order': False, 'shape': shape})
  return buf.getvalue()


class OutputDir:
  """An output folder opened for one run: locked, checked against `options`, cleaned of leftovers."""

  def __init__(self, out: str | os.PathLike, options: dict[str, Any], overwrite: bool = False):
    self.path = pathlib.Path(out).expanduser()  # (--out=~/ood had written into ./~/ood.)
    self._manifest_text = None  # As last read or written.
    self.options = {k: options[k] for k in SET_OPTIONS}
    self.info = {k: v for k, v in options.items() if k not in SET_OPTIONS}
    created = not os.path.lexists(self.path)
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
      raise OutputError(f'{self.path}: cannot use as output folder ({e.strerror})') from None
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      self._open(overwrite)
    except BlockingIOError:
      os.close(self._fd)
      raise OutputError(f'{self.path}: another jax_cifar.corrupt run is writing here; wait for it '
                        'to finish or use another --out folder') from None
    except BaseException:
      if created:  # A folder this run made and left empty (its manifest failed: a full disk),
        with contextlib.suppress(OSError):  # removed while still locked.
          self.path.rmdir()
      os.close(self._fd)
      raise

  def close(self) -> None:
    os.close(self._fd)  # Releases the lock.

  def __enter__(self) -> OutputDir:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _open(self, overwrite: bool) -> None:
    for name in all_output_names():  # Left by a killed run; never read by anyone.
      (self.path / f'.{name}.part').unlink(missing_ok=True)
    present = sorted(p.name for p in self.path.iterdir() if p.name in all_output_names())
    manifest = self._read_manifest(present, overwrite)
    # Files this tool did not record are never removed or replaced, --overwrite or not: they may be
    # the user's own data (the course's distortionXX.npy, a CIFAR-100-C download; an audit found
    # both deleted). Those of the other format are left alone; this format's are refused.
    if manifest is None:
      recorded = set(present) if MANIFEST in present else set()  # Unreadable, --overwrite: the set.
    else:
      recorded = set(manifest['files'])
    mine = output_names(self.options['format'])
    foreign = [n for n in present if n in mine and n not in recorded]
    if foreign:
      shown = ', '.join(foreign[:3]) + (' ...' if len(foreign) > 3 else '')
      raise OutputError(
          f'{self.path} already holds {shown}, which ' + (f'its {MANIFEST} does not record' if
                                                          MANIFEST in present else f'no {MANIFEST} records')
          + ': jax_cifar.corrupt did not write them and never replaces them (they may be your own '
          'data), --overwrite neither; move them away, or use a fresh --out folder')
    old = [n for n in present if n != MANIFEST and n in recorded]
    if manifest is not None and not overwrite:
      self._check_same_set(manifest)
    keep = manifest is not None and not overwrite
    self.files: dict[str, dict[str, Any]] = dict(manifest['files']) if keep else {}
    self.corruptions: list[str] = list(manifest['corruptions']) if keep else []
    for name, entry in self.files.items():  # Deleted or resized since: no longer complete.
      path = self.path / name
      if entry.get('complete') and not (path.is_file() and path.stat().st_size == entry['bytes']):
        self._mark_incomplete(name)
    self._save_manifest()  # From here on the folder belongs to these options.
    for name in old:  # The old set's (overwrite), or renamed by a run killed before recording them.
      if not self.files.get(name, {}).get('complete'):
        (self.path / name).unlink()

  def _read_manifest(self, present: list[str], overwrite: bool) -> dict[str, Any] | None:
    if MANIFEST not in present:
      return None
    try:
      text = (self.path / MANIFEST).read_text()
      manifest = json.loads(text)
      _check_manifest(manifest)
      self._manifest_text = text
      return manifest
    except (OSError, ValueError, RecursionError) as e:
      if overwrite:
        return None  # Replaced, with the output files beside it (a manifest says they are ours).
      raise OutputError(f'{self.path / MANIFEST}: unreadable ({e}); use --overwrite to replace '
                        'the set, or a fresh --out folder') from None

  def _check_same_set(self, manifest: dict[str, Any]) -> None:
    diffs = [k for k in SET_OPTIONS if manifest[k] != self.options[k]]
    split = (manifest.get('split', 'test'), self.info.get('split', 'test'))  # Test sets: unnamed.
    if ('num_images' in diffs or split[0] != split[1]) and 'source_sha256' in diffs:
      diffs.remove('source_sha256')  # Other images then, of course; that says nothing more.
    said = [f'--split: {split[0]!r} there, {split[1]!r} asked'] if split[0] != split[1] else []
    said += [f'{SET_OPTIONS[k]}: ' + ('differ' if k in ('source_sha256', 'frost')
                                     else f'{manifest[k]!r} there, {self.options[k]!r} asked')
             for k in diffs]
    if said:
      said = '; '.join(said)
      raise OutputError(f'{self.path} holds a set built with other options ({said}); '
                        'use --overwrite to replace it, or a fresh --out folder')

  def _save_manifest(self) -> None:
    """Records the set; writes nothing if the manifest already says so (a complete set rerun in a
    read-only folder then succeeds), and a failed write names the folder, never the temp file."""
    manifest = {**self.info, **self.options, 'corruptions': self.corruptions,
                'files': dict(sorted(self.files.items()))}
    text = json.dumps(manifest, indent=2) + '\n'
    if text == self._manifest_text:
      return
    tmp = self.path / f'.{MANIFEST}.part'
    try:
      with os.fdopen(_fresh_part(tmp), 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self.path / MANIFEST)
      atomic_folder.fsync(self._fd, self.path, folder=True)
    except OSError as e:
      tmp.unlink(missing_ok=True)
      reason = errors.os_reason(e.errno, e.strerror or str(e))
      raise OutputError(f'{self.path}: cannot write {MANIFEST} ({reason}); the files it recorded '
                        'complete are kept') from None
    self._manifest_text = text

  def request(self, corruptions: Iterable[str]) -> None:
    """Adds `corruptions` to the set (files not yet complete) and records the options now."""
    corruptions = set(corruptions)
    self.files.setdefault(LABELS_FILE, {'complete': False})  # Recorded before it is renamed in.
    for c in corruptions:
      self.files.setdefault(file_name(self.options['format'], c), {'corruption': c, 'complete': False})
    self.corruptions = [c for c in CORRUPTIONS if c in set(self.corruptions) | corruptions]
    self._save_manifest()

  def complete(self, name: str) -> bool:
    """Whether `name` is recorded complete and still matches its recorded size and sha256."""
    entry, path = self.files.get(name, {}), self.path / name
    if not entry.get('complete'):
      return False
    if path.is_file() and path.stat().st_size == entry['bytes'] and _sha256(path) == entry['sha256']:
      return True
    print(f'note: {path} does not match {MANIFEST}; writing it again', file=sys.stderr, flush=True)
    path.unlink(missing_ok=True)
    self._mark_incomplete(name)
    self._save_manifest()
    return False

  def _mark_incomplete(self, name: str) -> None:
    entry = self.files[name]
    self.files[name] = {**{k: v for k, v in entry.items() if k not in ('sha256', 'bytes')},
                        'complete': False}

  def write(self, name: str, shape: tuple[int, ...], dtype: np.dtype, blocks: Iterable[np.ndarray],
            corruption: str | None = None) -> pathlib.Path:
    """Streams `blocks` (rows in order) into `name` via a temporary sibling; records it complete."""
    path, tmp = self.path / name, self.path / f'.{name}.part'
    header, digest, rows = _npy_header(shape, np.dtype(dtype)), hashlib.sha256(), 0
    try:
      with os.fdopen(_fresh_part(tmp), 'wb') as f:
        f.write(header)
        digest.update(header)
        for block in blocks:
          block = np.ascontiguousarray(block)
          if block.dtype != dtype or block.shape[1:] != shape[1:]:
            raise ValueError(f'{name}: block {block.dtype} {block.shape}, expected {dtype} {shape}')
          f.write(block.data)
          digest.update(block.data)
          rows += len(block)
          _hook('block')
        if rows != shape[0]:
          raise ValueError(f'{name}: {rows} rows written, expected {shape[0]}')
        f.flush()
        os.fsync(f.fileno())
      _hook('part')
      os.replace(tmp, path)
    except BaseException as e:
      tmp.unlink(missing_ok=True)
      if isinstance(e, OSError):
        done, total = self.progress()
        raise OutputError(f'{path}: cannot write ({e.strerror or e}); nothing partial kept, '
                          f'{done} of {total} files complete: run again to finish') from None
      raise
    atomic_folder.fsync(self._fd, self.path, folder=True)
    _hook('renamed')
    self.files[name] = {**({'corruption': corruption} if corruption else {}), 'complete': True,
                        'bytes': path.stat().st_size, 'sha256': digest.hexdigest()}
    self._save_manifest()
    _hook('recorded')
    return path

  def progress(self) -> tuple[int, int]:
    """(complete, requested) counts of the set's image files."""
    images = [e for e in self.files.values() if 'corruption' in e]
    return sum(bool(e['complete']) for e in images), len(images)
