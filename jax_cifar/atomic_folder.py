"""Publishing a folder atomically: written into a temp sibling, fsynced, then renamed (or, over a
previous version, swapped) into place, so a kill at any point leaves the old folder or the new
one, never a part. The converter writes its output this way (`convert.save_converted`)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from typing import Callable, Iterator


def kill_point(env_var: str, name: str) -> None:
  """Test hook: SIGKILLs this process when $env_var is `name` (a kill between two steps), or
  sends it SIGNAL when $env_var is `name:SIGNAL` (e.g. `writing:SIGINT`)."""
  point, _, signal_name = os.environ.get(env_var, '').partition(':')
  if point == name:
    os.kill(os.getpid(), signal.Signals[signal_name or 'SIGKILL'])


def exchange(a: str, b: str) -> bool:
  """Swaps two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False if the OS or
  file system cannot, so the caller falls back to two renames."""
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (AttributeError, OSError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                        ctypes.c_uint]
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
    return False
  raise OSError(err, os.strerror(err), b)


def fsync_tree(root: str, recursive: bool = True) -> None:
  """fsyncs every file and folder under `root` (or only `root` itself); an error names the path."""
  walk = os.walk(root) if recursive else [(root, [], [])]
  for folder, _, names in walk:
    for p in [os.path.join(folder, n) for n in names] + [folder]:
      fd = os.open(p, os.O_RDONLY)
      try:
        fsync(fd, p, folder=p == folder)
      finally:
        os.close(fd)


# What a file system that cannot fsync a folder answers (SMB/CIFS, WSL's DrvFs, VirtualBox's
# shared folders): git and borg take it as done, the entries as safe there as it can make them.
_FOLDER_FSYNC_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def fsync(fd: int, path, folder: bool = False) -> None:
  """fsync of a file's or folder's descriptor; an error names `path`. A folder's (its entries on
  disk) is let be where the file system cannot: convert and corrupt had failed there after all
  their work, "error: Invalid argument" naming no path (a portability review)."""
  try:
    os.fsync(fd)
  except OSError as e:
    if not (folder and e.errno in _FOLDER_FSYNC_UNSUPPORTED):
      raise OSError(e.errno, e.strerror, str(path)) from None


# This machine in temp names: a pid says whether its writer lives only on the host that ran it
# (several hosts of a multi-host run share the folder and fetch the data at once; a review).
HOST = re.sub(r'[^A-Za-z0-9]', '', socket.gethostname())[:40] or 'host'


def temp_base(name: str) -> str:
  """`name` as temp files of it carry it: a long name is cut (at a character) and a digest of the
  whole added, so that the temp's own name stays within the 255 bytes a file name may have. A
  244-byte --output had been converted, then refused with "File name too long" for the temp's name
  (a path review)."""
  raw = name.encode('utf-8', 'surrogateescape')
  if len(raw) <= _LONG_NAME:
    return name
  digest = hashlib.sha1(raw).hexdigest()[:8]
  return raw[:_LONG_NAME - 10].decode('utf-8', 'ignore') + f'~{digest}'


_LONG_NAME = 150  # Bytes; a temp adds at most ~70 to it (.tmp-HOST-PID-RANDOM.old).


def temp_name(path: str) -> str:
  """A fresh temp sibling of `path` (.NAME.tmp-HOST-PID-RANDOM) that remove_stale_temps knows."""
  parent, base = os.path.split(path)
  return os.path.join(parent,
                      f'.{temp_base(base)}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}')


# Temps named before hosts were (.NAME.tmp-PID-RANDOM) may be another host's: removed only once
# older than any write (a conversion or extraction takes minutes).
UNNAMED_HOST_STALE_S = 24 * 3600


def _dead(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    pass  # alive, another user's
  return False


def remove_stale_temps(path: str) -> None:
  """Deletes the temp files and folders that killed writers on this host left next to `path`
  (their pid is gone); another host's are left alone."""
  parent, base = os.path.split(os.path.abspath(path))  # ('x.json' alone: its dirname is ''.)
  names = f'(?:{re.escape(temp_base(base))}|{re.escape(base)})'  # (Older writers': the whole name.)
  pattern = re.compile(rf'^\.{names}\.tmp-(?:([A-Za-z0-9]+)-)?(\d+)-[0-9a-f]{{8}}(\.old)?$')
  for name in os.listdir(parent):
    m = pattern.match(name)
    stale = os.path.join(parent, name)
    if not m or int(m.group(2)) == os.getpid() or m.group(1) not in (HOST, None):
      continue
    try:
      if m.group(1) is None and time.time() - os.lstat(stale).st_mtime < UNNAMED_HOST_STALE_S:
        continue
    except OSError:
      continue
    if _dead(int(m.group(2))):
      if os.path.isdir(stale) and not os.path.islink(stale):
        shutil.rmtree(stale, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.unlink(stale)


def write_file(path: str | os.PathLike, write: Callable[[str], object]) -> None:
  """Writes one file whole: `write(temp)` fills a temp sibling, renamed over `path`, so a kill
  leaves the old file or the new one (a killed writer's temp is reaped by the next write). An
  OSError names `path`, not the temp, and leaves no temp."""
  path = os.fspath(path)
  remove_stale_temps(path)
  tmp = temp_name(path)
  try:
    write(tmp)
    os.replace(tmp, path)
  except OSError as e:
    raise OSError(e.errno, e.strerror, path) from None
  finally:
    with contextlib.suppress(OSError):
      os.remove(tmp)


class Held:
  """What `sigint_held` yields: whether a Ctrl-C came, and `check()` to stop there if one did."""

  def __init__(self):
    self.asked = False

  def check(self) -> None:
    if self.asked:
      raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_held(note: str) -> Iterator[Held]:
  """Holds a Ctrl-C (SIGINT) that arrives in the block: `note` is written to stderr, the block goes
  on, and KeyboardInterrupt is raised where it calls `check()` or, at the latest, when it ends
  (unless it ends with an exception of its own, which then wins). A second Ctrl-C raises at once.
  For writes by library threads that a KeyboardInterrupt leaves running: orbax's went on writing
  into the temp folder `publish` had deleted (it stayed) and printed about 100 lines of
  tracebacks at exit (a kill review). Only in the main thread with Python's own SIGINT handler;
  elsewhere nothing is held."""
  held = Held()
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
    yield held
    return

  def hold(_signum, _frame):
    if held.asked:
      raise KeyboardInterrupt
    held.asked = True
    os.write(2, f'{note}\n'.encode())  # (print() is not safe in a signal handler.)

  signal.signal(signal.SIGINT, hold)
  try:
    yield held
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  held.check()


@contextlib.contextmanager
def publish(path: str, check_replace: Callable[[], None], kill_env: str = '',
            published: Callable[[], None] = lambda: None) -> Iterator[str]:
  """Yields a fresh temp folder next to absolute `path` to write into; when the block ends, puts
  it at `path` (over a previous folder only after `check_replace()` passes again, as it may have
  changed meanwhile: swapped in one step where the OS can), then calls `published()`. The temp
  folder never stays."""
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  remove_stale_temps(path)
  tmp = temp_name(path)
  try:
    os.makedirs(tmp)
    yield tmp
    fsync_tree(tmp)  # on disk before the rename publishes it (a power cut, not only a kill)
    kill_point(kill_env, 'before_rename')
    if not os.path.lexists(path):
      os.rename(tmp, path)
    else:
      check_replace()
      # Afterwards the old folder lies at `tmp` and is deleted below.
      if not exchange(tmp, path):
        os.rename(path, f'{tmp}.old')  # no atomic swap here: a kill in between leaves no output
        os.rename(tmp, path)
        os.rename(f'{tmp}.old', tmp)
    published()
    fsync_tree(parent, recursive=False)
    kill_point(kill_env, 'after_rename')
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
