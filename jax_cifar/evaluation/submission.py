"""The DS542 Kaggle submission CSV: an atomic writer and a validator.

The file is `id,label`, then one row per image in distortion, severity, index order:
`distortion{XX}_{S}_{I}` for XX in 00..18, S in 1..5 and I in 0..N/5-1, with labels in 0..99.
The validator also takes the rows in another order (Kaggle pairs them with answers by id) and
says so.

  python -m jax_cifar.submission check FILE.csv [--ood_dir D | --num_images N]
(N: the images per distortion file, 50000 for the course's set)
prints one line starting `OK`, or one `error:` line on stderr naming the first problem (status 1).
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import glob
import gzip
import os
import pathlib
import re
import sys
import tempfile
import zlib
from typing import Iterator

import numpy as np

from absl import logging

from jax_cifar import atomic_folder, cli, errors
from jax_cifar import workdir
from jax_cifar.data import ood
from jax_cifar.data.cifar100 import NUM_CLASSES

HEADER = 'id,label'
# The most a file to check may hold (read whole): a full submission is about 22 MB, and a 1 MB
# .csv.gz of zeros had decompressed to 1 GiB, 3.3 GB of memory (a security review).
MAX_CSV_BYTES = 256 << 20
_LABEL = re.compile(r'[0-9]{1,3}')
COMPRESSED = ('.gz', '.zip', '.bz2', '.xz', '.7z')  # Suffixes of compressed files.
KAGGLE_IMAGES = 10_000  # Test images per severity in the course's 950,000-row set.


class SubmissionError(errors.UserError, ValueError):
  """The CSV does not follow the submission format; the message names the file and first problem."""


def row_ids(distortion: int, num_images: int) -> list[str]:
  """Ids of one distortion file's N rows, in file (severity, index) order."""
  per = num_images // ood.SEVERITIES
  return [f'distortion{distortion:02d}_{s}_{i}'
          for s in range(1, ood.SEVERITIES + 1) for i in range(per)]


@functools.lru_cache(maxsize=2)
def _index_texts(per: int) -> tuple[str, ...]:
  return tuple(map(str, range(per)))


_LABEL_TEXTS = tuple(f',{label}\n' for label in range(NUM_CLASSES))


def _rows(distortion: int, labels: np.ndarray) -> str:
  """The CSV rows of one distortion file's labels (row_ids' ids, in order), from strings made
  once: an f-string per row had taken 0.55-1.0 s of the 950,000 rows (a host-side review)."""
  per, labels = len(labels) // ood.SEVERITIES, labels.tolist()
  index = _index_texts(per)
  return ''.join(''.join([prefix + i + _LABEL_TEXTS[label] for i, label in
                          zip(index, labels[s * per:(s + 1) * per])])
                 for s, prefix in enumerate(f'distortion{distortion:02d}_{s}_'
                                            for s in range(1, ood.SEVERITIES + 1)))


def check_output_path(path: str | os.PathLike, default: bool = False) -> pathlib.Path:
  """Fails with one line unless a CSV can be written at `path`: not a folder, nor a non-empty
  file other than a submission CSV (which it replaces, as an empty file), in an existing folder
  where this process can create files (tried by creating and deleting a probe file). A symbolic
  link, a device, a pipe or a socket is refused: the CSV is renamed into place, which had replaced
  /dev/null (as root), a pipe or a link with a regular file (an audit). `default`: the path is
  evaluate's own choice, named as such (a read-only run had been told of a --submission it was
  never given: an audit)."""
  given, path = os.fspath(path), pathlib.Path(path)
  name = (f'{path} (the default --submission: give --submission PATH to write it elsewhere)'
          if default else f'--submission {path}')
  if path.is_dir():
    raise SubmissionError(f'{name} is a folder; give a file path such as '
                          f'{path / "submission.csv"}')
  if given.endswith(('/', os.sep)):  # pathlib drops the slash: `newdir/` had become a file `newdir`.
    raise SubmissionError(f'--submission {given} ends in a folder separator, and there is no such '
                          f'folder; give a file path such as {path / "submission.csv"}')
  if path.suffix.lower() in COMPRESSED:  # (A plain CSV had been written under a .gz name.)
    raise SubmissionError(f'{name}: the CSV is written uncompressed, so its name ends in .csv; '
                          f'compress it afterwards if you like (submission check reads .gz)')
  if path.is_symlink():
    raise SubmissionError(f'{name} is a symbolic link (to {os.readlink(path)}), which '
                          'the CSV would replace; give the path of the file itself')
  if path.exists() and not path.is_file():
    raise SubmissionError(f'{name} is not a regular file (a device, pipe or socket), '
                          'which the CSV would replace; give a file path')
  if path.is_file() and path.stat().st_size:
    try:
      with open(path, 'rb') as f:
        first = f.read(64).split(b'\n', 1)[0]
    except OSError as e:
      raise SubmissionError(f'{name} exists and cannot be read ({e.strerror})') from None
    if first.removeprefix(b'\xef\xbb\xbf').rstrip(b'\r') != HEADER.encode():
      raise SubmissionError(f'{name} is an existing file that is not a submission CSV '
                            f'(it does not start with the line {HEADER!r}); it is kept: give another '
                            'path, or remove it first')
  parent = path.parent
  if not parent.is_dir():
    what = 'is not a folder' if parent.exists() else 'does not exist'
    raise SubmissionError(f'{name}: the folder {parent} {what}')
  why = workdir.why_unwritable(parent)
  if why:
    raise SubmissionError(f'{name}: cannot create files in {parent} ({why})')
  return path


def remove_stale_parts(path: str | os.PathLike) -> list[pathlib.Path]:
  """Deletes the temp files `.NAME.*.part` that killed writers of `path` left; returns them.

  A live writer holds an exclusive flock on its temp file, so only abandoned ones are removed.
  """
  path = pathlib.Path(path)
  removed = []
  parts = {p for base in {atomic_folder.temp_base(path.name), path.name}  # (Older writers': the
           for p in path.parent.glob(f'.{glob.escape(base)}.*.part')}  # whole name, 150-240 B.)
  for part in sorted(parts):
    try:
      fd = os.open(part, os.O_RDWR)
    except OSError:
      continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # Locked: another writer is using it.
      os.close(fd)
      continue
    try:
      part.unlink(missing_ok=True)
      removed.append(part)
    finally:
      os.close(fd)
  if removed:
    logging.warning('Removed %d temporary file(s) of an interrupted run: %s', len(removed),
                    ', '.join(p.name for p in removed))
  return removed


class SubmissionWriter:
  """Writes the CSV into a temp file next to `path` and renames it on success, so a failure never
  leaves a partial CSV (nor damages an existing one). Use as a context manager. The temp file is
  flock()ed while in use; temp files of killed writers (SIGKILL, power loss) are deleted on entry."""

  def __init__(self, path: str | os.PathLike, num_images: int):
    if (isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer))
        or num_images <= 0 or num_images % ood.SEVERITIES):
      raise ValueError(f'num_images must be a positive multiple of {ood.SEVERITIES} (images per '
                       f'distortion file, severity by severity), got {num_images!r}')
    self.path = pathlib.Path(path)
    self.num_images = int(num_images)
    self._next = 0
    self._file = None
    self._tmp = None
    self._done = False

  def __enter__(self) -> SubmissionWriter:
    fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix='.part',
                               prefix=f'.{atomic_folder.temp_base(self.path.name)}.')
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Marks it in use for remove_stale_parts.
    except OSError:  # A file system without locks: stale files are then kept, never ours removed.
      pass
    self._tmp = pathlib.Path(tmp)
    remove_stale_parts(self.path)
    self._file = os.fdopen(fd, 'w', newline='\n', buffering=1 << 20)
    self._file.write(HEADER + '\n')
    return self

  def add(self, distortion: int, labels: np.ndarray) -> None:
    """Appends one distortion file's predicted labels; files must come in order 00, 01, ..."""
    labels = np.asarray(labels)
    if distortion != self._next:
      raise ValueError(f'distortion {distortion:02d} out of order; expected {self._next:02d}')
    if labels.shape != (self.num_images,):
      raise ValueError(f'distortion {distortion:02d}: {labels.shape} labels, expected '
                       f'({self.num_images},)')
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f'distortion {distortion:02d}: labels must be integers, got {labels.dtype}')
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
      raise ValueError(f'distortion {distortion:02d}: labels outside [0, {NUM_CLASSES})')
    try:
      self._file.write(_rows(distortion, labels))
      self._file.flush()  # A full disk is found here, per file (evaluate agrees on it across hosts).
    except OSError as e:
      raise self._failed(e) from None
    self._next += 1

  def _failed(self, e: OSError) -> SubmissionError:
    """A failed write (a full disk) named by the CSV's path, not the temp file's or none."""
    reason = errors.os_reason(e.errno, e.strerror or str(e))
    return SubmissionError(f'{self.path}: {reason}: no CSV written' + (
        f'; the existing {self.path.name} is kept' if self.path.exists() else ''))

  def finish(self) -> None:
    """Completes the CSV: synced to disk and renamed into place (on leaving the `with` block if
    not called before; evaluate calls it where the processes agree on its failure)."""
    if self._done:
      return
    if self._next != ood.NUM_DISTORTIONS:
      raise ValueError(f'only {self._next} of {ood.NUM_DISTORTIONS} distortion files written')
    try:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()
      os.chmod(self._tmp, 0o644)  # mkstemp makes it 0600.
      os.replace(self._tmp, self.path)
    except OSError as e:
      raise self._failed(e) from None
    self._done = True

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      if exc_type is None:
        self.finish()
    finally:
      try:
        self._file.close()  # After a failed write its buffer cannot be flushed; the file closes.
      except OSError:
        pass
      self._tmp.unlink(missing_ok=True)


def _expected_ids(num_images: int) -> Iterator[str]:
  for d in range(ood.NUM_DISTORTIONS):
    yield from row_ids(d, num_images)


def check_submission(path: str | os.PathLike, ood_dir: str | os.PathLike | None = None,
                     num_images: int | None = None) -> str:
  """Checks header, row count, ids (each once; another order is noted) and labels; returns a
  one-line summary or raises.

  The images per distortion file come from `ood_dir`'s files, or `num_images`; with neither they
  are inferred from the row count, which then cannot show whole images missing (the summary says
  so)."""
  path = pathlib.Path(path).expanduser()  # (From Python, a quoted '~/s.csv': no shell expands.)
  if ood_dir is not None:
    ood_dir = pathlib.Path(ood_dir).expanduser()
  try:
    # Rows end in '\n' (or '\r\n'); str.splitlines would also split inside a row at \x0b,
    # \x1c, \u2028 and the like. Blank lines after the last row are tolerated.
    # utf-8-sig: a leading byte-order mark (Excel's "CSV UTF-8") is read past, as pandas does.
    with open(path, 'rb') as f:
      data = f.read(MAX_CSV_BYTES + 1)
    if data[:2] == b'\x1f\x8b':  # gzip (Kaggle takes a .csv.gz): it had been "can't decode 0x8b".
      with gzip.open(path) as f:
        data = f.read(MAX_CSV_BYTES + 1)
    if len(data) > MAX_CSV_BYTES:
      raise SubmissionError(f'{path}: holds more than {MAX_CSV_BYTES >> 20} MiB of text (a full '
                            'submission is about 22 MB): not a submission of this task')
    text = data.decode('utf-8-sig')
    lines = [line.rstrip('\r') for line in text.split('\n')]
  except (OSError, UnicodeDecodeError, EOFError, zlib.error) as e:  # (EOFError: a cut gzip.)
    raise SubmissionError(f'{path}: cannot read ({e})') from None
  while lines and not lines[-1]:
    lines.pop()
  if not lines or lines[0].rstrip('\r') != HEADER:
    got = lines[0][:40] if lines else '<empty file>'
    raise SubmissionError(f'{path}: header is {got!r}, expected {HEADER!r}')
  rows = lines[1:]
  inferred = ood_dir is None and num_images is None
  if not inferred:
    if ood_dir is not None:
      num_images, source = ood.check_distortion_dir(ood_dir)[0].num_images, str(ood_dir)
    else:
      source = f'--num_images {num_images}, the images per distortion file'
      if num_images < 1 or num_images % ood.SEVERITIES:
        raise SubmissionError(f'--num_images {num_images}: expected a positive multiple of '
                              f'{ood.SEVERITIES}')
    if len(rows) != ood.NUM_DISTORTIONS * num_images:
      raise SubmissionError(f'{path}: {len(rows)} rows, expected {ood.NUM_DISTORTIONS} x '
                            f'{num_images} = {ood.NUM_DISTORTIONS * num_images} (from {source})')
  else:
    num_images = len(rows) // ood.NUM_DISTORTIONS
    if (not rows or len(rows) % ood.NUM_DISTORTIONS or num_images % ood.SEVERITIES):
      raise SubmissionError(f'{path}: {len(rows)} rows is not {ood.NUM_DISTORTIONS} x N with N a '
                            f'positive multiple of {ood.SEVERITIES}')
  in_order = True
  for line_no, (row, want) in enumerate(zip(rows, _expected_ids(num_images)), start=2):
    parts = row.rstrip('\r').split(',')
    if len(parts) != 2:
      raise SubmissionError(f'{path}: line {line_no}: {row[:60]!r} is not "id,label"')
    in_order = in_order and parts[0] == want
    if not _LABEL.fullmatch(parts[1]) or int(parts[1]) >= NUM_CLASSES:
      raise SubmissionError(f'{path}: line {line_no}: label {parts[1]!r} is not an integer in '
                            f'0..{NUM_CLASSES - 1}')
  if not in_order:  # Sorted or merged elsewhere (pandas): fine if each id is there once.
    problem = _id_problem(rows, num_images)
    if problem:
      raise SubmissionError(f'{path}: {problem}')
  per = num_images // ood.SEVERITIES
  note = '' if in_order else (' (rows in another order than distortion, severity, index; Kaggle '
                              'pairs rows with answers by id, so it scores the same)')
  if not text.endswith('\n'):  # `..._5_9999,42` cut to `..._5_9999,4` passed every check (an audit).
    note += (' (no newline after the last row: if the file was cut short, its last label may be '
             'cut too; a complete CSV ends in one)')
  if inferred and per != KAGGLE_IMAGES:
    note += (f' (N from the row count; the course\'s set has {KAGGLE_IMAGES:,} per severity: '
             'pass --ood_dir, or --num_images with the images per distortion file, '
             f'{ood.SEVERITIES * KAGGLE_IMAGES} for that set, to check the count)')
  return (f'OK: {path}: {len(rows)} rows = {ood.NUM_DISTORTIONS} distortions x '
          f'{ood.SEVERITIES} severities x {per} images{note}')


def _id_problem(rows: list[str], num_images: int) -> str | None:
  """The first row (by line) whose id is not one of the set's or repeats an earlier row's, else
  None: with as many rows as ids, every id is then there exactly once."""
  wanted, first_line = set(_expected_ids(num_images)), {}
  for line_no, row in enumerate(rows, start=2):
    row_id = row.split(',', 1)[0]
    if row_id not in wanted:
      return (f'line {line_no}: id {row_id!r} is not one of this set\'s ids (distortion00..'
              f'{ood.NUM_DISTORTIONS - 1}_1..{ood.SEVERITIES}_0..'
              f'{num_images // ood.SEVERITIES - 1})')
    if row_id in first_line:
      return f'line {line_no}: id {row_id!r} again (first on line {first_line[row_id]})'
    first_line[row_id] = line_no
  return None


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(prog=cli.prog('jax_cifar.submission'), description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  check = sub.add_parser('check', help='validate a submission CSV')
  check.add_argument('csv', type=cli.nonempty('the submission CSV'))
  where = check.add_mutually_exclusive_group()
  where.add_argument('--ood_dir', default=None, type=cli.nonempty('the folder of the OOD files'),
                     help='folder of distortion00..18.npy: take N from it instead of the row count')
  where.add_argument('--num_images', type=int, default=None,
                     help='images per distortion file (the course\'s Kaggle set: 50000)')
  args = parser.parse_args(argv)
  try:
    print(check_submission(args.csv, args.ood_dir, args.num_images))
  except Exception as e:  # pylint: disable=broad-except
    message = errors.user_message(e)
    if message is None:
      raise  # A bug keeps its traceback.
    print(f'error: {message}', file=sys.stderr)  # As every other tool: one `error:` line.
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
