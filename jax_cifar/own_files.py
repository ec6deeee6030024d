"""Files of a run's own: opened never through a planted link or onto a FIFO, and the exclusive
`flock` on one that keeps a second launch out of a running workdir."""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import pathlib
import stat

from jax_cifar.errors import WorkdirError

LOCK_FILE = '.lock'


def now() -> str:
  """The local time with its offset from UTC (2026-12-07T14:25:33+01:00): a run resumed on a host
  in another time zone had recorded its second launch 8 hours before its first (a clock review)."""
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def open_own_file(path: pathlib.Path, flags: int, mode: int = 0o644) -> int:
  """os.open of a file of the run's own (a lock, an appended record), never through a symbolic
  link: one planted in a shared run folder had made a launch overwrite, append to or open to
  everyone the file it led to (a security review). Refused with a WorkdirError naming it."""
  try:  # (O_NONBLOCK: a FIFO planted there had hung the open, waiting for a writer.)
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
  except OSError as e:
    if e.errno == errno.ELOOP and path.is_symlink():
      raise WorkdirError(f'{path} is a symbolic link (to {os.readlink(path)}); jax-cifar writes '
                         'only files of its own there: remove the link') from None
    raise
  if not stat.S_ISREG(os.fstat(fd).st_mode):  # (A FIFO or a device planted in its place.)
    os.close(fd)
    raise WorkdirError(f'{path} is not a regular file: move it away (a launch makes it anew)')
  os.set_blocking(fd, True)
  return fd


class NoFileLocks(OSError):
  """flock itself failed (not another holder): a filesystem without file locks, such as Lustre
  without its flock mount option (ENOSYS)."""


class Lock:
  """An exclusive, non-blocking `flock` on WORKDIR/.lock (or another file `name` in the folder),
  released when the process ends; the file names its holder."""

  def __init__(self, workdir: pathlib.Path, name: str = LOCK_FILE):
    self.path = workdir / name
    self._fd = None
    self.holder = ''  # Who held it, when try_acquire found it held.

  def try_acquire(self) -> bool:
    """Takes the lock, or returns False (and sets `holder`) when another process holds it; an
    OSError when the file cannot be opened."""
    try:
      fd = open_own_file(self.path, os.O_RDWR | os.O_CREAT)
    except OSError:  # (It had read "workdir ... is not writable: Is a directory": a review.)
      if self.path.is_dir() and not self.path.is_symlink():  # (Links: open_own_file says.)
        raise WorkdirError(f'{self.path}, the file a run holds its lock on, is a folder: move it '
                           'away (a launch makes the file anew)') from None
      raise
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'another process'
      os.close(fd)
      return False
    except OSError as e:  # (Its descriptor had been left open.)
      os.close(fd)
      raise NoFileLocks(e.errno, e.strerror) from None
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f'pid {os.getpid()} on {os.uname().nodename}, since {now()}\n'.encode(), 0)
    except OSError:  # (A full disk: the lock is not taken, its file not held open.)
      os.close(fd)
      raise
    self._fd = fd
    return True

  def acquire(self) -> None:
    """Takes the workdir's lock, or raises WorkdirError naming the run that holds it."""
    if self.try_acquire():
      return
    holder = self.holder
    host = holder.split(' on ', 1)[1].split(',', 1)[0] if ' on ' in holder else None
    # On NFS (v3) a crashed client's lock lasts until that host comes back (a cluster audit).
    dead = (f'; if {host} is down, its lock can outlive it on a network filesystem: remove '
            f'{self.path} then' if host and host != os.uname().nodename else '')
    raise WorkdirError(f'workdir {self.path.parent} is in use by another run ({holder}); '
                       f'wait for it to end or use another --workdir{dead}')

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Closing the descriptor drops the flock; the file stays, harmlessly.
      self._fd = None
