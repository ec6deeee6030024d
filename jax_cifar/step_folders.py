"""A run's checkpoint steps read one folder at a time: which folder a step number names, restoring
a step folder with the damage and mismatch checks every restore gets, and the same step's intact
copy in the other of checkpoints/latest and checkpoints/best; which steps a folder holds (none of
them a link). `checkpoints.Checkpoints` restores 'latest' and 'best' through the same checks."""

import contextlib
import difflib
import json
import os
import pathlib
import re
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags, logging

from jax_cifar import errors
from jax_cifar import workdir as workdir_lib
from jax_cifar.workdir import is_step_number  # pylint: disable=unused-import  (re-exported)

# Files every committed orbax step of a StandardSave holds; one missing means the step is damaged.
_REQUIRED_FILES = ('_CHECKPOINT_METADATA', 'default/_METADATA', 'default/manifest.ocdbt')
# tensorstore's status codes for a file it cannot decode or find (as a ValueError, like a
# mismatch): NOT_FOUND is an array file missing from the step (a partly copied run folder).
_UNREADABLE = ('DATA_LOSS', 'OUT_OF_RANGE', 'NOT_FOUND')


class CheckpointError(errors.UserError):
  """A checkpoint exists but cannot be restored into this run's model/optimizer."""


class StructureMismatch(CheckpointError):
  """A step's complete files hold another train state (model, optimizer state or EMA) than the
  one restored into; `step_dir` and `detail` (orbax's first line, and the paths it lists) let
  callers say why."""

  def __init__(self, step_dir: pathlib.Path, detail: str, parts: tuple[str, ...] = ()):
    self.step_dir, self.detail = step_dir, detail
    # (Another model's optimizer moments and EMA differ with its parameters: the model alone.)
    parts = ('params',) if 'params' in parts else parts
    causes = [cause for part, cause in _PART_CAUSES if part in parts] or [_PART_CAUSES[0][1]]
    super().__init__(f'checkpoint {step_dir} does not match this config\'s '
                     f'{" or ".join(causes)}' + (f': {detail}' if detail else ''))


# What differs where orbax names a part of the train state (its first name) as not matching; the
# EMA's had read as "a different model.name/width/num_classes?" (an upgrade review).
_PART_CAUSES = (
    ('params', 'model (a different model.name/width/num_classes?)'),
    ('opt_state', 'optimizer (a different optim.name, grad_clip_norm or backbone_lr_mult/'
                  'freeze_backbone_steps?)'),
    ('ema', 'EMA of the weights (one of the two kept one and the other did not: ema.decay?)'),
)


def _mismatch(message: str) -> tuple[str, tuple[str, ...]]:
  """orbax's tree-mismatch message as one line naming the first paths it lists (`opt_state[1]`,
  `ema_params`; the first line alone had ended in a colon), and the parts of the train state they
  are in (_PART_CAUSES' names)."""
  paths = re.findall(r'^(\S+):$', '\n'.join(message.splitlines()[1:]), flags=re.MULTILINE)
  tops = {re.match(r'[A-Za-z_]*', p).group() for p in paths}
  parts = tuple({'batch_stats': 'params', 'ema_params': 'ema', 'ema_batch_stats': 'ema'}.get(t, t)
                for t in sorted(tops))
  line = message.splitlines()[0] if message else ''
  if paths:
    line += ' ' + ', '.join(paths[:4]) + (f' (and {len(paths) - 4} more)' if len(paths) > 4 else '')
  return line, parts


def one_line(e: BaseException, limit: int = 300) -> str:
  """First line of an error, shortened in the middle: storage errors put the cause at the end."""
  text = str(e).splitlines()[0] if str(e) else type(e).__name__
  cause = re.search(r"([^:\"]*?)\s*\[os_error_code='?(\d+)'?\]", text)  # tensorstore's OS error.
  # tensorstore's store spec ([tensorstore_spec='...'], at times [tensorstore_spec[1]='...']): JSON.
  text = re.sub(r"\s*\[(tensorstore_spec|source locations)(\[\d+\])?=.*$", '', text)
  if cause:
    return f'{text[:100]} ... {cause.group(1).strip()} (errno {cause.group(2)})'
  return text if len(text) <= limit else f'{text[:100]} ... {text[-(limit - 105):]}'


def root_cause(e: BaseException) -> str:
  """The innermost message of an exception chain (tensorstore wraps the file's error twice)."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  return one_line(e, 240)


class Damaged(Exception):
  """A step folder whose files are missing or unreadable (the message says which)."""


def restore_step(step_dir: pathlib.Path, restore_fn) -> Any:
  """Runs `restore_fn` for one step folder, sorting failures: Damaged (missing or unreadable
  files) or CheckpointError (complete files of another model/optimizer structure)."""
  if why := workdir_lib.orbax_cannot_use(step_dir):  # (Not damage: orbax cannot open such a path.)
    raise CheckpointError(f'checkpoint {why}')
  missing = [f for f in _REQUIRED_FILES if not (step_dir / f).exists()]
  if missing:
    raise Damaged(f'missing {", ".join(missing)}')
  errors.drop_library_noise()  # A failed read's leftovers print pages, some during the restore.
  try:
    return restore_fn()
  except Exception as e:  # pylint: disable=broad-except  (tensorstore: unreadable array data)
    cause = root_cause(e)
    if why := _not_the_files(e, cause):
      raise CheckpointError(f'cannot read the checkpoint {step_dir}: {why} ({one_line(e, 200)}); '
                            'its files are not damaged and were left as they are') from e
    if not isinstance(e, (ValueError, KeyError, TypeError)):
      raise Damaged(cause) from e
    if isinstance(e, json.JSONDecodeError) or str(e).startswith(_UNREADABLE):  # A file is cut.
      raise Damaged(f'unreadable file: {one_line(e, 240)}') from e
    raise StructureMismatch(step_dir, *_mismatch(str(e))) from e  # Complete files, another tree.


# Failures of a read that say nothing about the files: permission, open files, memory. They had
# been taken as damage, and a resume moved an intact newest step aside and trained on from an
# older one, exiting 0 (a resource review).
_NOT_THE_FILES = (
    (('PERMISSION_DENIED', 'Permission denied', 'errno 13)', "os_error_code='13'"),
     'permission denied: give this user read access to its files'),
    (('Too many open files', 'errno 24)', "os_error_code='24'"),
     'too many open files: raise the limit (ulimit -n)'),
    (('RESOURCE_EXHAUSTED', 'Cannot allocate memory', 'errno 12)', "os_error_code='12'",
      'out of memory'),
     'out of memory: free some, or use a machine with more'))


def _not_the_files(e: BaseException, cause: str) -> str | None:
  if isinstance(e, MemoryError) or isinstance(e.__cause__ or e.__context__, MemoryError):
    return _NOT_THE_FILES[2][1]
  if isinstance(e, PermissionError):
    return _NOT_THE_FILES[0][1]
  text = f'{e} {cause}'
  return next((why for marks, why in _NOT_THE_FILES if any(m in text for m in marks)), None)


def step_folder(workdir: str | pathlib.Path, step: int) -> pathlib.Path:
  """WORKDIR's folder of a step number: in checkpoints/latest, else in checkpoints/best (latest's
  path when it is in neither, for restore_path's 'does not exist')."""
  folders = [pathlib.Path(workdir, 'checkpoints', kind, str(step)) for kind in ('latest', 'best')]
  return next((f for f in folders if f.is_dir()), folders[0])


def step_numbers(folder: pathlib.Path) -> list[int]:
  """The steps of the step folders in `folder` (checkpoints/latest or best), in order."""
  return sorted(int(p.name) for p in folder.iterdir() if is_step_number(p.name) and p.is_dir())


def kept_step_folder(workdir: str | pathlib.Path, checkpoint: Any,
                     error: type[Exception] = CheckpointError) -> str | None:
  """The folder of the step `checkpoint` names (an int, a numpy int or a digit string), None when
  it names no step ('best', 'latest', a path); `error` when the run kept no such step."""
  if isinstance(checkpoint, bool) or not (isinstance(checkpoint, (int, np.integer)) or (
      isinstance(checkpoint, str) and is_step_number(checkpoint))):
    return None
  folder = step_folder(workdir, int(checkpoint))
  if not folder.is_dir():
    kept = {}
    for kind in ('latest', 'best'):
      with contextlib.suppress(OSError):
        kept[kind] = step_numbers(pathlib.Path(workdir, 'checkpoints', kind))
    listed = '; '.join(f'{kind}: {", ".join(map(str, steps)) or "none"}'
                       for kind, steps in kept.items())
    raise error(f'checkpoint {checkpoint}: {workdir} kept no step {int(checkpoint)} (in '
                f'checkpoints/latest or checkpoints/best{"; it kept " + listed if kept else ""})')
  return str(folder)


def _which_name(given: str) -> str:
  """'; did you mean best?' for a mistyped checkpoint name (bset: a path that did not exist)."""
  close = difflib.get_close_matches(given, ('best', 'latest'), n=1, cutoff=0.6)
  return f'; did you mean {close[0]}?' if close and '/' not in given else ''


def restore_path(path: str | pathlib.Path, target: Any) -> Any:
  """Restores a step folder given by path (WORKDIR/checkpoints/best/12, or its default/ item)
  into the structure of `target`, with the same damage and mismatch checks as a run's steps."""
  original, path = path, pathlib.Path(path).absolute()
  step_dir = path.parent if path.name == 'default' else path
  if not step_dir.is_dir():  # (A file or a negative number had been said not to exist.)
    given = pathlib.Path(original)
    what = (f'checkpoint path {path} is a file, not a step folder' if step_dir.exists() else
            f'checkpoint {given.name} is not a step number (steps count from 0)'  # (evaluate
            # gives it joined to the current folder: '/tmp/-1' had been named: a review.)
            if given.name[:1] == '-' and is_step_number(given.name[1:]) else
            f'checkpoint path {path} does not exist' + _which_name(str(original)))
    raise CheckpointError(f'{what} (give best, latest, a step number or a step folder, e.g. '
                          'WORKDIR/checkpoints/best/12)')
  steps = step_numbers(step_dir)[::-1]
  if steps and not (step_dir / 'default').exists():  # checkpoints/best (or latest) itself.
    raise CheckpointError(f'{path} holds step folders ({", ".join(map(str, steps))}), not one '
                          f'checkpoint: give one of them, e.g. {step_dir / str(steps[0])}')
  if not any((step_dir / name).exists() for name in ('default', '_CHECKPOINT_METADATA')):
    # Nothing of a step at all (a run folder, checkpoints/, converted weights): not "damaged".
    hint = (' (converted torchvision weights: give them as model.pretrained)'
            if (step_dir / 'metadata.json').exists() and (step_dir / 'state').is_dir() else '')
    raise CheckpointError(f'{path} is not a checkpoint step folder{hint}: give best, latest, a '
                          'step number or a step folder, e.g. WORKDIR/checkpoints/best/12')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    return _restore_folder(step_dir, abstract)
  except Damaged as e:
    restored = restore_twin(step_dir, abstract, e)
    if restored is None:
      raise CheckpointError(f'damaged checkpoint {step_dir}: {e} (nothing was deleted)') from e
    return restored


def _restore_folder(step_dir: pathlib.Path, abstract: Any) -> Any:
  def read() -> Any:
    with ocp.StandardCheckpointer() as checkpointer:  # Closed, as orbax's docstring has it.
      return checkpointer.restore(step_dir / 'default', abstract)
  return restore_step(step_dir, read)


def restore_twin(step_dir: pathlib.Path, abstract: Any, damage: Damaged) -> Any | None:
  """The same step from the other of checkpoints/latest and checkpoints/best (the trainer saves
  the same state into each), for a damaged `step_dir`; None when there is no intact twin."""
  twin = _twin_step_folder(step_dir)
  if twin is None:
    return None
  try:
    restored = _restore_folder(twin, abstract)
  except Damaged:
    return None
  logging.warning('Damaged checkpoint %s (%s); restored the same step from %s.',
                  step_dir, damage, twin)
  return restored


def _twin_step_folder(step_dir: pathlib.Path) -> pathlib.Path | None:
  """WORKDIR/checkpoints/best/N for WORKDIR/checkpoints/latest/N and the other way round, when the
  run kept that step in both (the trainer saves the same state into each); else None."""
  kinds = {'latest': 'best', 'best': 'latest'}
  if step_dir.parent.name not in kinds or step_dir.parent.parent.name != 'checkpoints':
    return None
  twin = step_dir.parent.parent / kinds[step_dir.parent.name] / step_dir.name
  return twin if twin.is_dir() else None


# A reader of a run that is training: the trainer's keep policy deletes a step (orbax removes its
# folder in the background) while the reader restores it, or lists the steps. That had been
# "damaged checkpoint ... Truncated Zstd-compressed stream", "does not match this config's model",
# or a bare ENOENT of another step, in about 1 in 8 loads of a run's latest step during training
# (a concurrency review). Readers wait briefly, list the steps again and read the newest then.
READ_ATTEMPTS = 4
VANISH_WAIT_S = 1.0


class Replaced(Exception):
  """A step a reader restored was deleted by the run's trainer while it read it."""


def vanished(step_dir: pathlib.Path) -> bool:
  """Whether `step_dir`, whose read just failed, is gone within VANISH_WAIT_S (being deleted)."""
  deadline = time.monotonic() + VANISH_WAIT_S
  while step_dir.exists():
    if time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


def has_other_step(directory, step: int | None) -> bool:
  """Whether `directory` holds a committed step folder other than `step`."""
  folder = pathlib.Path(directory)
  return folder.is_dir() and any(is_step_number(p.name) and p.name != str(step) and p.is_dir()
                                 for p in folder.iterdir())


def refuse_linked_steps(folder: pathlib.Path) -> None:
  """A training run's checkpoints/latest or best holds no step that is a symbolic link: orbax
  deletes a step the run no longer keeps by walking into it, and had deleted the files a planted
  link led to (a security review)."""
  if folder.name not in ('latest', 'best'):
    return
  for entry in folder.iterdir():
    if entry.is_symlink() and is_step_number(entry.name):
      raise CheckpointError(f'{entry} is a symbolic link (to {os.readlink(entry)}); a run keeps '
                            'its steps as folders of its own, and deletes old ones: remove the '
                            'link (or copy the step it leads to in its place)')


def open_manager(factory: Callable[[], Any], reader: bool) -> Any:
  """`factory()` (a CheckpointManager), tried again where a step folder vanished while it listed
  the steps (a reader's; the trainer's own steps do not move under it). orbax's warning for each
  step it lists without a _CHECKPOINT_METADATA file is left out: a restore of that step names it
  as damaged (`missing _CHECKPOINT_METADATA`), and the warnings had come first, as absl's raw
  lines, in a notebook's load_model too (the commands hide orbax's logs anyway; with --verbosity
  they show them all, this one included)."""
  absl_logger = logging.get_absl_logger()
  if not flags.FLAGS['verbosity'].present:
    absl_logger.addFilter(_no_missing_metadata_warning)
  try:
    for attempt in range(READ_ATTEMPTS):
      try:
        return factory()
      except FileNotFoundError:
        if not reader or attempt == READ_ATTEMPTS - 1:
          raise
        time.sleep(0.1)
  finally:
    absl_logger.removeFilter(_no_missing_metadata_warning)


def _no_missing_metadata_warning(record) -> bool:
  return not ('/orbax/' in record.pathname
              and record.getMessage().startswith('Metadata file does not exist:'))


def move_aside(directory: pathlib.Path, which: str, step: int, into: str = 'damaged',
               replace_same: bool = False) -> pathlib.Path:
  """Moves step folder `directory/step` to checkpoints/<into>/<which>-<step>[.n]; returns it.
  `replace_same`: a copy set aside before under that name whose recorded metrics are the same
  (a run killed again and again before its next save retrains the step it set aside to the same
  accuracy: each kill had added a whole checkpoint, a GB for ResNet-152, a longevity review) is
  replaced; one of other metrics is kept beside it."""
  aside = pathlib.Path(directory).parent / into
  aside.mkdir(exist_ok=True)
  earlier, metrics = aside / f'{which}-{step}', pathlib.Path('metrics', 'metrics')
  if replace_same and earlier.is_dir() and not earlier.is_symlink():
    try:
      same = (earlier / metrics).read_bytes() == (pathlib.Path(directory) / str(step) / metrics
                                                  ).read_bytes()
    except OSError:
      same = False
    if same:
      shutil.rmtree(earlier)
  target = workdir_lib.unused_path(aside, f'{which}-{step}')
  os.replace(directory / str(step), target)
  return target


def unranked_best_steps(folder: pathlib.Path) -> dict[int, str]:
  """{step: why} for the committed steps of checkpoints/best whose metrics file (which orbax ranks
  them by) is missing or unreadable: orbax's manager fails to open with an unreadable one, and
  ranks a step without one below every other (so a worse model became 'best')."""
  found = {}
  steps = ([p for p in folder.iterdir() if is_step_number(p.name) and p.is_dir()]
           if folder.is_dir() else [])
  for step_dir in steps:
    path = step_dir / 'metrics' / 'metrics'
    try:
      value = json.loads(path.read_text()).get('val_accuracy')
      why = None if isinstance(value, (int, float)) else f'{path} holds no val_accuracy'
    except FileNotFoundError:
      if not (step_dir / '_CHECKPOINT_METADATA').exists():  # Being deleted (a newer best saved
        continue  # by a run in progress), not damaged.
      why = f'{path} is missing'
    except (OSError, ValueError, AttributeError, RecursionError) as e:
      why = f'{path} is unreadable ({type(e).__name__})'
    if why:
      found[int(step_dir.name)] = why
  return found
