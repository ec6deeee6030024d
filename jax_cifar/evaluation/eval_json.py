"""WORKDIR/eval_<tag>.json: an evaluation's numbers, merged with what an earlier evaluation of the
same checkpoint wrote, under a lock that evaluations finishing together take in turn."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
from typing import Callable

from absl import logging

from jax_cifar import atomic_folder, own_files
from jax_cifar import workdir as workdir_lib


def _lock(folder: pathlib.Path) -> int:
  """A descriptor holding the exclusive flock of folder/.eval.lock. Made writable by everyone who
  may write the folder (a colleague's 644 lock file had failed their evaluation after all its
  inference: a review); where it still cannot be opened for writing, read-only (flock works so
  on a local disk), and where that cannot be locked either, the folder's own lock."""
  path = folder / '.eval.lock'
  try:  # Never through a link (a planted one had made its target writable by all: a review).
    try:
      fd = own_files.open_own_file(path, os.O_RDWR | os.O_CREAT, 0o666)
      if os.fstat(fd).st_nlink == 1:  # (Nor a hard link to another file.)
        try:
          os.fchmod(fd, 0o666)  # (The umask had cut the mode; only the owner may change it.)
        except OSError:
          pass
    except PermissionError:
      fd = own_files.open_own_file(path, os.O_RDONLY)
  except workdir_lib.WorkdirError as e:  # A link or no file: the evaluation's numbers are still
    logging.warning('%s; locking the folder instead.', e)  # written (after all its inference).
    fd = None
  if fd is not None:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      return fd
    except OSError:  # NFS locks a read-only descriptor only for reading.
      os.close(fd)
  fd = os.open(folder, os.O_RDONLY)
  fcntl.flock(fd, fcntl.LOCK_EX)
  return fd


def write(path: pathlib.Path, result: dict, checkpoint_dir: pathlib.Path | None = None,
          then: Callable[[], object] | None = None):
  """Writes an evaluation's numbers to `path` (eval_<tag>.json) losing none written before: what an
  earlier evaluation of the same checkpoint (name, step and weights, and not saved again since:
  `checkpoint_dir`'s time) computed and this one did not (its OOD or CIFAR-100-C numbers) is kept
  in the file (with its save's time, `step_saved_ns`, recorded to tell); a file of another
  checkpoint (or unreadable) is kept beside it as
  eval_<tag>.step<N>.json. Evaluations of one run that finish together take turns (a lock on
  WORKDIR/.eval.lock: a regular file's flock holds across NFS hosts, a folder's only within one
  host, where it had been taken (a cluster audit)).

  `then` (the evaluation's figures) runs under the same lock: drawn after it, two evaluations of
  one tag had left the numbers of one beside the figure of the other (a concurrency review)."""
  lock = _lock(path.parent)
  try:
    saved_ns = None if checkpoint_dir is None else workdir_lib.saved_at_ns(checkpoint_dir)
    merged = dict(result)
    if path.exists():
      try:
        old = json.loads(path.read_text())
      except (OSError, ValueError, RecursionError):
        old = None
      if isinstance(old, dict) and isinstance(old.get('step_saved_ns'), int) and saved_ns:
        # The step's save as recorded, not its time against the file's: a clock that had run fast
        # as the file was written had merged a step saved again since into its numbers (a clock
        # review), and a copy of the run (new times) had set its own step's numbers aside.
        saved_since = old['step_saved_ns'] != saved_ns
      else:  # (Files of versions before 2026-12-07, or no step folder given.)
        saved_since = (saved_ns is not None
                       and checkpoint_dir.stat().st_mtime > path.stat().st_mtime)
      if (isinstance(old, dict) and not saved_since
          and old.get('step') == result['step']
          # Versions before evaluate --weights (2026-11-30) evaluated the raw weights, unnamed: such
          # a file had been set aside as "another checkpoint's" (an upgrade audit).
          and old.get('weights', 'raw') == result['weights']
          and _same_checkpoint(old.get('checkpoint'), result['checkpoint'])):
        # An OOD or CIFAR-100-C evaluation replaces all of its kind: a set without labels had
        # kept another set's accuracy beside its own submission (an audit).
        for given, kind in (('ood_dir', ('ood_', 'submission')), ('cifar100c_dir', ('cifar100c',))):
          if given in result:
            old = {k: v for k, v in old.items() if not k.startswith(kind)}
        merged = {**old, **result}
      else:
        step = old.get('step') if isinstance(old, dict) else 'unknown'
        aside = workdir_lib.unused_path(path.parent, f'{path.stem}.step{step}', '.json')
        os.replace(path, aside)
        kept = ([aside.name] + _set_figures_aside(path, aside)
                + _set_submission_aside(old, result, path, aside))
        where = old.get('checkpoint') if isinstance(old, dict) else None
        logging.warning('%s held the numbers of another checkpoint (%sstep %s): kept as %s.',
                        path.name, f'{where}, ' if isinstance(where, str) else '', step,
                        ', '.join(kept))
    if saved_ns is not None:
      merged['step_saved_ns'] = saved_ns
    # Whole, under the lock; a killed writer's temp had stayed forever, one per kill (a kill
    # audit), and a full disk's had named only the temp.
    text = json.dumps(merged, indent=2) + '\n'
    atomic_folder.write_file(path, lambda tmp: pathlib.Path(tmp).write_text(text))
    if then is not None:
      then()
  finally:
    os.close(lock)  # Releases the lock.


FIGURE_KINDS = ('confusion', 'cifar100c', 'ood')  # Their <kind>_<tag>.png beside eval_<tag>.json.


def _set_figures_aside(path: pathlib.Path, aside: pathlib.Path) -> list[str]:
  """The figures of eval_<tag>.json's evaluation, renamed as its numbers were (`aside`,
  eval_<tag>.step<N>[.K].json): an evaluation without CIFAR-100-C or OOD files draws no such
  figure, and the earlier checkpoint's had stayed under the current one's name, titled as its
  (a figure review). The names given to them."""
  tag, mark = path.stem[len('eval_'):], aside.name[len(path.stem):-len('.json')]
  names = []
  for kind in FIGURE_KINDS:
    figure = path.parent / f'{kind}_{tag}.png'
    if figure.is_file() and not figure.is_symlink():
      to = workdir_lib.unused_path(path.parent, f'{kind}_{tag}{mark}', '.png')
      os.replace(figure, to)
      names.append(to.name)
  return names


def _set_submission_aside(old, result: dict, path: pathlib.Path, aside: pathlib.Path) -> list[str]:
  """The default submission CSV (WORKDIR/submission_<tag>.csv) of the numbers set aside as `aside`,
  renamed as they were, and named so in them, unless this evaluation wrote it anew: it had stayed
  under the current name beside numbers of another step, to be uploaded as the current
  checkpoint's (a longevity review). The names given."""
  csv = old.get('submission') if isinstance(old, dict) else None
  default = path.parent / f'submission_{path.stem[len("eval_"):]}.csv'
  if (not isinstance(csv, str) or csv == result.get('submission') or not default.is_file()
      or pathlib.Path(csv) != default.resolve()):
    return []
  mark = aside.name[len(path.stem):-len('.json')]
  to = workdir_lib.unused_path(path.parent, f'{default.stem}{mark}', '.csv')
  os.replace(default, to)
  text = json.dumps({**old, 'submission': str(to.resolve())}, indent=2) + '\n'
  atomic_folder.write_file(aside, lambda tmp: pathlib.Path(tmp).write_text(text))
  return [to.name]


def _same_checkpoint(a, b) -> bool:
  """Whether two eval files' `checkpoint` values name one checkpoint: 'best', 'latest', or a step
  folder, given by number, by folder or by its default/ item (they had been taken for two, and the
  earlier numbers set aside as another checkpoint's). Two absolute folders (evaluate records them
  so) are compared whole: another run's latest/300, evaluated with this run's config, had merged
  into this run's eval_step300.json (a review); a relative one (older versions) by its kind and
  step."""
  if not (isinstance(a, str) and isinstance(b, str)):
    return a == b
  if a in ('best', 'latest') or b in ('best', 'latest'):
    return a == b
  a, b = (pathlib.PurePath(x) for x in (a, b))
  a, b = (x.parent if x.name == 'default' else x for x in (a, b))
  if a.is_absolute() and b.is_absolute():  # (Real paths: a link's spelling is the same folder.)
    return os.path.realpath(a) == os.path.realpath(b)
  return a.parts[-2:] == b.parts[-2:]
