"""One run per workdir: a lock (own_files.Lock), its config and its launch log.

A workdir holds exactly one run. `train.resume=false` never touches a workdir that already has one;
a second launch into a workdir whose run is still going fails at once (an `flock` that dies with its
process, so a killed run never leaves it stuck); and a resumed run may change only what does not
alter its trajectory (`resume_rules`), unless `train.allow_config_change` says so. Every launch's
full config is appended to `launches.jsonl`; `config.json` is the config of the saved steps: a new
run's, written once the run is known to be valid, and a resumed launch's from its first committed
checkpoint (a launch killed before it leaves the config of the steps it resumed).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

from flax import traverse_util

from jax_cifar import atomic_folder, code_digest
from jax_cifar.errors import WorkdirError
from jax_cifar.own_files import LOCK_FILE, now, open_own_file

CONFIG_FILE = 'config.json'
LAUNCHES_FILE = 'launches.jsonl'
METRICS_FILE = 'metrics.jsonl'  # Written by tracking.MetricsWriter.

def flatten(d: dict) -> dict:
  """{'section.key': value} of a nested config dict; tuples become lists, as JSON gives them back,
  so a live config and its config.json compare equal."""
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in traverse_util.flatten_dict(d, sep='.').items()}


def orbax_cannot_use(path: str | os.PathLike) -> str | None:
  """None for a path orbax and tensorstore can use, else why not:
  - they take UTF-8 paths only, and a name of other bytes had trained up to its first save, then
    failed there (a bad-input review);
  - tensorstore reads a backslash as a folder separator: a run in `runs/a\\b` had its arrays
    written to `runs/a/b`, finished "Done", and its resume called the checkpoint damaged (a path
    review);
  - they encode the path as UTF-8 whatever this Python's file system encoding: under a Latin-1
    locale a run in `café` had its arrays written to `cafÃ©`, said "Done", and could not be
    resumed (a locale review)."""
  # The absolute path, which orbax hands to tensorstore: a relative one inside a folder named so
  # had trained, then failed at its first save (the diff review).
  text = os.path.abspath(os.fspath(path))
  try:
    raw = os.fsencode(text)
  except UnicodeEncodeError:  # (A name this locale cannot encode, given from Python.)
    raw, same = text.encode('utf-8', 'surrogateescape'), False
  else:
    try:
      same = text.encode('utf-8') == raw
    except UnicodeEncodeError:
      same = False
  if not same:
    try:
      raw.decode('utf-8')
    except UnicodeDecodeError:
      return (f'{raw!r} is not a UTF-8 path, and orbax and tensorstore (the checkpoint files) take '
              'only those: rename it')
    return (f'{raw!r}: this Python reads file names as {sys.getfilesystemencoding()} (its locale), '
            'orbax and tensorstore (the checkpoint files) as UTF-8, so the two would not name one '
            'folder: run with PYTHONUTF8=1 (or a UTF-8 locale, LC_ALL=C.UTF-8)')
  if '\\' in text:  # (Also in the current folder's path, for a relative one.)
    return (f'{text!r} holds a backslash, which tensorstore (the checkpoint '
            'files) reads as a folder separator, so the files would go to another folder: '
            'rename it')
  return None


def why_unwritable(folder: str | os.PathLike) -> str | None:
  """None if this process can create files in the existing `folder`, else why not (strerror).

  Tried by making and removing a probe file, which, unlike os.access, also answers for root on a
  read-only mount and for a full disk's quota."""
  try:
    fd, probe = tempfile.mkstemp(dir=folder, prefix='.write-probe-')
    os.close(fd)
    os.unlink(probe)
    return None
  except OSError as e:
    return e.strerror or str(e)


def is_step_number(text: str) -> bool:
  """A step folder's name: '40', '040'; ASCII digits only ('²' is a digit to str.isdigit but
  not to int(), and '٤' to int() but not to orbax)."""
  return text.isascii() and text.isdigit()


def existing_run(workdir: pathlib.Path) -> str | None:
  """A short description of the run already in `workdir`, or None if it holds none."""
  found = [name for name in (CONFIG_FILE, 'metrics.jsonl', LAUNCHES_FILE)
           if (workdir / name).exists()]
  ckpt = workdir / 'checkpoints'
  if ckpt.is_dir() and any(is_step_number(p.name) for sub in ckpt.iterdir() if sub.is_dir()
                           for p in sub.iterdir()):
    found.append('checkpoints/')
  return ', '.join(found) or None


def foreign_entries(workdir: pathlib.Path) -> list[str]:
  """The names in a workdir that holds no run which are no run's: a data or notes folder given
  as --workdir. Hidden files, a set-aside previous-* folder and the launch's own log (*.log,
  *.out, *.err: `| tee WORKDIR/train.log`, SLURM's --output) are a run's."""
  try:
    names = sorted(p.name for p in workdir.iterdir())
  except OSError:
    return []
  return [n for n in names if not n.startswith(('.', 'previous-')) and n != 'checkpoints'
          and not n.endswith(('.log', '.out', '.err'))]


def unused_path(folder: pathlib.Path, stem: str, suffix: str = '') -> pathlib.Path:
  """folder/STEMSUFFIX, or folder/STEM.N.SUFFIX for the first N = 1, 2, ... that does not exist,
  not even as a link (one leading nowhere had been written through: a diff review)."""
  path, n = folder / f'{stem}{suffix}', 1
  while os.path.lexists(path):
    path, n = folder / f'{stem}.{n}{suffix}', n + 1
  return path


def set_aside_previous(workdir: pathlib.Path, config: dict, *,
                       best: bool = False) -> pathlib.Path | None:
  """`config` as JSON values (what record_launch writes). At a run's step 0, moves the config.json
  and metrics.jsonl the workdir already holds (of a launch that saved no latest checkpoint, or
  files of something else) into WORKDIR/previous-TIME/ instead of overwriting them, and with
  `best` that launch's checkpoints/best steps into its best/ (a run of another config would have
  taken them for its own); returns that folder (None: nothing to keep, e.g. a relaunch of the
  same config after a start that failed before logging anything)."""
  found = [workdir / name for name in (CONFIG_FILE, METRICS_FILE) if (workdir / name).is_file()]
  best_dir = workdir / 'checkpoints' / 'best'
  steps = ([p for p in best_dir.iterdir() if is_step_number(p.name[:1])]
           if best and best_dir.is_dir() else [])
  metrics = workdir / METRICS_FILE
  if not steps and not (metrics.is_file() and metrics.stat().st_size) and all(
      p.name != CONFIG_FILE or _read_json(p) == config for p in found):
    return None
  found += steps
  folder = unused_path(workdir, f'previous-{datetime.datetime.now():%Y%m%d-%H%M%S}')
  folder.mkdir()
  for path in found:
    target = folder / 'best' / path.name if path.parent == best_dir else folder / path.name
    target.parent.mkdir(exist_ok=True)
    os.replace(path, target)
  return folder


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError, RecursionError):
    return None


def remove_if_untouched(workdir: pathlib.Path) -> bool:
  """Removes a workdir this launch created, when the launch failed before writing anything into
  it (it holds only its lock, empty checkpoint folders and empty record files), so a failed start
  leaves no folder. (A full disk had left an empty launches.jsonl, and the folder: a review.)"""
  folders = {'checkpoints', 'checkpoints/latest', 'checkpoints/best'}
  empty_files = {CONFIG_FILE, LAUNCHES_FILE, METRICS_FILE}
  try:
    entries = {str(p.relative_to(workdir)) for p in workdir.rglob('*')}
    if not (entries <= folders | empty_files | {LOCK_FILE}
            and all((workdir / e).is_dir() and not (workdir / e).is_symlink() for e in
                    entries & folders)
            and all((workdir / e).is_file() and not (workdir / e).is_symlink()
                    and (workdir / e).stat().st_size == 0 for e in entries & empty_files)):
      return False
  except OSError:
    return False
  shutil.rmtree(workdir, ignore_errors=True)
  return True


def previous_config(workdir: pathlib.Path) -> dict | None:
  path = workdir / CONFIG_FILE
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except (OSError, ValueError, RecursionError) as e:  # (A 5,000-digit int: ValueError; a
    # list nested 100k deep: RecursionError. Both had been tracebacks: a security audit.)
    raise WorkdirError(f'{path} is unreadable ({e}); it records the run\'s config, so the run '
                       'can neither be resumed nor loaded safely') from e
  if not isinstance(record, dict):  # `[]` had ended in ml_collections' bare AssertionError.
    raise WorkdirError(f'{path} holds a JSON {type(record).__name__}, not the object of a run\'s '
                       'config, so the run can neither be resumed nor loaded safely')
  return record


def _run_above(inside: pathlib.Path) -> str:
  """Where `inside` is a run's config.json, its checkpoints/ or a step folder: the run to give
  instead (they had been refused with "RUN/checkpoints/best/20/config.json not found")."""
  for parent in list(inside.absolute().parents)[:4]:
    if (parent / CONFIG_FILE).is_file():
      return (f' It is inside the run {parent}: give that folder (a step folder is '
              '`evaluate --checkpoint`, or load_model\'s checkpoint=)')
  return ''


def expanded(path):
  """A folder the user gave, with `~` as the home folder (a str, as os.path.expanduser gives);
  anything that is not a path (None, a step number) as it is, for the callers' own checks.

  A path with `..` is resolved as the OS reads it: `LINK/..` is the parent of LINK's target, while
  Python's abspath, mkstemp and tensorstore shorten it as text to the folder holding LINK, so a run
  in `LINK/../run` had been written in one folder and read from another ("cannot write
  checkpoints", an intact run "damaged": a path review)."""
  if not isinstance(path, (str, os.PathLike)):
    return path
  path = os.path.expanduser(path)
  parts = pathlib.PurePath(path).parts
  if os.pardir not in parts:
    return path
  last = len(parts) - parts[::-1].index(os.pardir)  # Resolved up to the last `..` only: what
  # follows stays as given (a link there is still the caller's to refuse or follow).
  return os.path.join(os.path.realpath(os.path.join(*parts[:last])), *parts[last:])


def run_config(run_dir: str | pathlib.Path):
  """The config a run was (last) launched with, from RUN_DIR/config.json, validated; keys the
  file lacks (added to jax-cifar since) take their defaults, as when that run was launched."""
  from jax_cifar import config_validation  # pylint: disable=g-import-not-at-top  (imports models)
  from jax_cifar.configs import default  # pylint: disable=g-import-not-at-top
  run_dir = pathlib.Path(run_dir).expanduser()
  path = run_dir / CONFIG_FILE
  if not run_dir.is_dir():  # (It had been "RUN/config.json not found": a review.)
    what = 'is not a folder' if run_dir.exists() else 'does not exist'
    above = _run_above(pathlib.Path(run_dir))
    raise WorkdirError(f'{run_dir} {what}: give the folder of a jax-cifar run (its --workdir)'
                       + (f'.{above}' if above else ''))
  if not path.exists():
    raise WorkdirError(f'{path} not found: is {run_dir} a jax-cifar run directory?'
                       f'{_run_above(pathlib.Path(run_dir))}')
  config = default.get_config()
  record, sections = previous_config(pathlib.Path(run_dir)), config.to_dict()
  for key, value in record.items():  # `"model": null` had been "unknown config key 'model'".
    if isinstance(sections.get(key), dict) and not isinstance(value, dict):
      raise WorkdirError(f'{path}: its {key!r} section is {json.dumps(value)}, not an object of '
                         'keys (the file was edited or damaged)')
  try:  # ConfigDict turns JSON's lists back into the defaults' tuples, and refuses a wrong type.
    config.update_from_flattened_dict(flatten(record))
  except (KeyError, TypeError) as e:
    raise WorkdirError(f'{path} does not fit the config of this jax-cifar ({e})') from e
  try:
    config_validation.validate(config, launch=False)  # It trained: loadable whatever newer checks say.
  except config_validation.ConfigError as e:
    raise WorkdirError(f'{path}: {e}') from e
  return config


def flat_defaults() -> dict:
  """The default config flattened as its config.json would hold it (JSON values, dotted keys)."""
  from jax_cifar.configs import default  # pylint: disable=g-import-not-at-top
  return flatten(json.loads(json.dumps(default.get_config().to_dict(), default=str)))


def record_launch(workdir: pathlib.Path, config: dict, start_step: int,
                  changes: dict[str, tuple[Any, Any]], *, write_config: bool = True,
                  shape: dict[str, int] | None = None) -> str | None:
  """Appends this launch to launches.jsonl and (`write_config`) makes its config the run's
  config.json; returns the config.json it held (its text, None if there was none), for
  `restore_config`. `shape`: the launch's device and process counts."""
  row = {'time': now(), 'start_step': start_step,
         'changed': {k: list(v) for k, v in changes.items()},
         'jax_cifar': code_digest.code_version(), **(shape or {}), 'config': config}
  path = workdir / LAUNCHES_FILE
  try:
    with os.fdopen(open_own_file(path, os.O_RDWR | os.O_APPEND | os.O_CREAT), 'a+b') as f:
      # A row torn by a full disk stays a line of its own, not the start of this one (an audit).
      torn = f.tell() and os.pread(f.fileno(), 1, f.tell() - 1) != b'\n'
      f.write((b'\n' if torn else b'') + json.dumps(row, default=str).encode() + b'\n')
  except OSError as e:  # A failed write() names no file.
    raise OSError(e.errno, e.strerror, str(path)) from e
  previous = (workdir / CONFIG_FILE).read_text() if (workdir / CONFIG_FILE).exists() else None
  if write_config:
    write_run_config(workdir, config)
  return previous


def write_run_config(workdir: pathlib.Path, config: dict) -> None:
  """Makes `config` (JSON values) the run's config.json, whole (a temp file renamed)."""
  _write_config(workdir, json.dumps(config, indent=2, default=str) + '\n')


def _write_config(workdir: pathlib.Path, text: str) -> None:
  # A temp of its own (a fixed config.json.tmp had been written through a link planted there;
  # one that older code left is removed, or only the link).
  atomic_folder.write_file(workdir / CONFIG_FILE, lambda tmp: pathlib.Path(tmp).write_text(text))
  (workdir / (CONFIG_FILE + '.tmp')).unlink(missing_ok=True)


def saved_at_ns(step_dir: str | os.PathLike) -> int | None:
  """Which save a step folder holds: orbax's commit time in its _CHECKPOINT_METADATA, which a copy
  of the run (cp -r, scp, a synced drive) keeps. The folder's own time, which such a copy resets,
  had made a copied run's own step "another checkpoint" and its eval JSON's OOD numbers dropped
  (a longevity review). That time where the file has none; None where there is no folder."""
  try:
    value = json.loads((pathlib.Path(step_dir) / '_CHECKPOINT_METADATA').read_bytes()).get(
        'commit_timestamp_nsecs')
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  except (OSError, ValueError, AttributeError, RecursionError):
    pass
  try:
    return os.stat(step_dir).st_mtime_ns
  except OSError:
    return None


def saved_steps(workdir: pathlib.Path) -> set[tuple[str, str, int, int]]:
  """The step folders of checkpoints/latest and best, each as (kind, step, inode, mtime): a step
  saved again (a `best` of the same number) is a new folder, so it differs."""
  found = set()
  for kind in ('latest', 'best'):
    folder = workdir / 'checkpoints' / kind
    for p in (folder.iterdir() if folder.is_dir() else ()):
      if is_step_number(p.name):
        st = p.stat()
        found.add((kind, p.name, st.st_ino, st.st_mtime_ns))
  return found


def restore_config(workdir: pathlib.Path, previous: str | None,
                   saved_before: set[tuple[str, str, int, int]]) -> bool:
  """After a launch failed: if it saved no checkpoint (latest or best) of its own, config.json
  goes back to `previous`, the config of every step that is saved (a resumed launch that failed
  before its first save had made its own config the run's, and relaunching the run as it was
  then counted as a change). `saved_before` is `saved_steps` at the launch's start: a `best`
  step newer than the resumed `latest` belongs to an earlier launch (it had kept the failed
  launch's config). launches.jsonl keeps the failed launch's row. Returns whether config.json
  changed."""
  if previous is None or saved_steps(workdir) - saved_before:
    return False
  if (workdir / CONFIG_FILE).exists() and (workdir / CONFIG_FILE).read_text() == previous:
    return False
  _write_config(workdir, previous)
  return True
