"""The one family of errors a user can fix (bad config, data, checkpoint, workdir, submission).

Command-line tools print these as one `error:` line (`user_message`); any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys

import numpy as np


class UserError(Exception):
  """A problem with the user's input or files, with a message that says what to do."""


class ConfigError(UserError, ValueError):
  """A config value or command-line option that cannot work (named, with what is allowed)."""


class LaunchSettingError(ConfigError):
  """A setting of how the processes are launched (JAX_*, SLURM_* variables, the devices), which the
  run's config does not hold."""


class WorkdirError(UserError):
  """A run folder (--workdir) or one of its files that a run cannot use as it is: in use by
  another launch, holding another run, a planted link, unreadable (the message says which)."""


class DataError(UserError):
  """Bad or missing input data; the message is one line naming the file and the problem."""

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split()))


def folder_arg(call: str, value) -> None:
  """TypeError naming `call` when a folder argument is not a path (None had ended in pathlib's
  traceback, frames deep; an audit)."""
  if not isinstance(value, (str, os.PathLike)):
    raise TypeError(f'{call}: give a folder (a str or pathlib.Path), got {value!r}')
  if not str(value).strip():
    raise ConfigError(f'{call}: the folder is empty ({value!r}): give the run\'s folder')


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# A file past a size limit (`ulimit -f` on a cluster, FAT32's 4 GiB): "disk full" had been said of
# it, with 57 GB free (a message review).
FILE_SIZE_LIMIT = ' (a file size limit: ulimit -f, or the largest file the file system takes)'


def os_error_code(e: BaseException) -> int | None:
  """The OS error number behind `e` (an OSError in its chain, or tensorstore's os_error_code in
  the ValueError orbax raises for a full disk)."""
  while e is not None:
    if isinstance(e, OSError) and e.errno:
      return e.errno
    found = re.search(r"os_error_code='?(\d+)", str(e))
    if found:
      return int(found.group(1))
    e = e.__cause__ or e.__context__
  return None


def os_reason(code: int | None, strerror: str) -> str:
  """`strerror`, with ' (disk full)' where `code` says the disk or a quota is full, the size limit
  where a file is past one, and the limit to raise where a process has too many files open (it had
  been the bare "Too many open files": a review)."""
  if code == errno.EFBIG:
    return strerror + FILE_SIZE_LIMIT
  if code == errno.EMFILE:
    return f'{strerror} (raise the limit on open files: ulimit -n)'
  if code == errno.ENFILE:
    return f'{strerror} (the whole system has too many files open)'
  return strerror + (' (disk full)' if code in DISK_FULL else '')


def user_message(e: BaseException) -> str | None:
  """The one line a command-line tool prints for `e`, or None if `e` is a bug.

  A UserError prints its message. An OSError from the operating system (a missing file, a
  permission, a full disk) is the user's environment, not a bug: it prints the file and the reason.
  """
  if isinstance(e, UserError):
    return ' '.join(str(e).split('\n'))
  if isinstance(e, OSError) and e.strerror:
    reason = os_reason(e.errno, e.strerror)
    return f'{e.filename}: {reason}' if e.filename else reason
  return None


def is_library_noise(unraisable) -> bool:
  """An exception Python could not raise (sys.unraisablehook's argument) that says nothing a failed
  save's or restore's error does not: tensorstore callbacks landing on orbax's already-closed event
  loop (hundreds after a failed save or restore), and orbax's pending array reads closed after a
  failed restore (each turns the GeneratorExit of its closing into an Exception holding a page of
  TensorStore spec)."""
  exc = unraisable.exc_value
  if isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed':
    return True
  code = getattr(unraisable.object, 'cr_code', None)  # A coroutine's code object.
  return (code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename
          and isinstance(getattr(exc, '__cause__', None), GeneratorExit))


def is_orbax_task_noise(record: logging.LogRecord) -> bool:
  """asyncio's "Task exception was never retrieved" for a task of orbax's (or "Future ..." of a
  tensorstore read of its): a failed read's array
  tasks, whose failure the restore has already raised (or retried: a step the trainer deleted as a
  notebook read it had printed pages of them after a load that worked, a concurrency review)."""
  message = record.getMessage()
  if message.startswith('Future exception was never retrieved'):
    # A tensorstore read of orbax's, awaited as a bare future: its line names no code, only the
    # exception, whose text holds tensorstore's spec (a notebook's load_model of a run with a
    # deleted array file had printed 223 lines of them after its one error, at random).
    return 'tensorstore_spec' in message
  return (message.startswith('Task exception was never retrieved')
          and f'{os.sep}orbax{os.sep}' in message)


class _DropOrbaxTasks(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not is_orbax_task_noise(record)


def drop_library_noise() -> None:
  """From now on this process's sys.unraisablehook skips is_library_noise's exceptions and passes
  every other one to the hook it replaces, and asyncio's logger drops is_orbax_task_noise's
  records. Installed once: by the commands at their start, and by jax_cifar.checkpoints before it
  saves or restores (a notebook's load_model of a damaged run printed 14,303 lines, some of them
  during the failed restore itself)."""
  asyncio_logger = logging.getLogger('asyncio')
  if not any(isinstance(f, _DropOrbaxTasks) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_DropOrbaxTasks())
  previous = sys.unraisablehook
  if getattr(previous, 'drops_library_noise', False):
    return

  def hook(unraisable):
    if not is_library_noise(unraisable):
      previous(unraisable)

  hook.drops_library_noise = True
  sys.unraisablehook = hook


def positive_int(what: str, value) -> int:
  """`value` as an int if it is a positive integer (numpy's too, never a bool); else ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{what} must be a positive int, got {value!r}')
  return int(value)
