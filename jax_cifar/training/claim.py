"""Claiming a run's workdir before training: process 0 creates and locks it, every process checks
that the folder is one they share, and a folder that already holds a run (or other files) is
refused (or named)."""

import pathlib
import secrets
import time

import jax
from absl import logging

from jax_cifar import own_files, parallel
from jax_cifar import workdir as workdir_lib


def claim_workdir(config, workdir: pathlib.Path, created: bool) -> own_files.Lock | None:
  """Creates and locks the workdir (process 0; all processes agree on failure); refuses a workdir
  the processes do not share, and to start over in one that already holds a run. A folder this
  launch `created` is removed when it is refused."""
  lock = None
  if why := workdir_lib.orbax_cannot_use(workdir):  # (Every process: before the first collective.)
    raise workdir_lib.WorkdirError(f'workdir {why}')
  with parallel.fail_together(f'claiming the workdir {workdir}'):
    if jax.process_index() == 0:
      try:
        workdir.mkdir(parents=True, exist_ok=True)
        lock = own_files.Lock(workdir)
        lock.acquire()
      except OSError as e:  # (A file there had read "not writable: File exists": an audit; a
        # filesystem without locks, Lustre without -o flock, "not writable: Function not
        # implemented": a cluster review.)
        no_locks = isinstance(e, own_files.NoFileLocks)
        why = ('is a file, not a folder' if workdir.exists() and not workdir.is_dir() else
               f'is on a filesystem without file locks (flock: {e.strerror}), which a run takes '
               'so that no two launches write one run: on Lustre mount it with -o flock, or use '
               'a folder on a filesystem that has them' if no_locks else
               f'is not writable: {e.strerror}')
        if created and workdir.is_dir():  # (A full disk had left it, holding an empty .lock:
          workdir_lib.remove_if_untouched(workdir)  # a kill review.)
        raise workdir_lib.WorkdirError(f'workdir {workdir} {why}') from None
  try:
    check_shared(workdir)  # Before any process's own verdict on the folder's contents.
  except BaseException:
    if lock:
      if created:
        workdir_lib.remove_if_untouched(workdir)
      lock.release()
    raise
  existing = workdir_lib.existing_run(workdir)
  if existing and not config.train.resume:
    if lock:
      lock.release()
    raise workdir_lib.WorkdirError(
        f'workdir {workdir} already holds a run ({existing}) and train.resume=false never '
        'overwrites one: choose a fresh --workdir, or resume it with train.resume=true')
  foreign = [] if existing or not lock else workdir_lib.foreign_entries(workdir)
  if foreign:  # A data or notes folder as --workdir had been written into without a word.
    logging.warning('workdir %s holds no run but %d other entr%s (%s%s): the run writes its files '
                    'beside them', workdir, len(foreign), 'y' if len(foreign) == 1 else 'ies',
                    ', '.join(foreign[:5]), ', ...' if len(foreign) > 5 else '')
  return lock


def check_shared(workdir: pathlib.Path) -> None:
  """Refuses, on every process, a workdir that is not one shared folder: every process must see a
  file of a fresh name that process 0 writes into it (a fresh name: no host has a stale cache
  entry of it). With a folder of its own per host, process 0 had hung in its first save, without
  a word, until killed (a cluster walkthrough)."""
  if jax.process_count() == 1:
    return
  probe = workdir / f'.shared-check-{parallel.every_process(secrets.randbelow(2**31))[0]:08x}'
  with parallel.fail_together(f'writing {probe}'):
    if jax.process_index() == 0:
      probe.touch()
  # Looked for again after 0.5, 1, 2, ... s: a network filesystem's metadata cache (NFS's
  # acdirmin/lookupcache, gcsfuse's stat cache) may show other hosts a new file late.
  total, waits = parallel.shared_wait_s(), [0.0]
  while sum(waits) < total:
    waits.append(min(0.5 * 2 ** (len(waits) - 1), total - sum(waits)))
  try:
    for wait in waits:
      time.sleep(wait)
      seen_by = parallel.every_process(int(probe.exists()))  # Also a barrier: all have looked.
      if all(seen_by):
        return
  finally:
    if jax.process_index() == 0:
      probe.unlink(missing_ok=True)
  apart = [i for i, seen in enumerate(seen_by) if not seen]
  raise workdir_lib.WorkdirError(
      f'workdir {workdir} is not shared: process{"es" if len(apart) > 1 else ""} '
      f'{", ".join(map(str, apart))} do{"" if len(apart) > 1 else "es"} not see a file process 0 '
      f'wrote into it, after {total} s; every process must use the same folder on a filesystem '
      "all hosts share (NFS, Lustre, GCS FUSE) and whose caches show other hosts' new files "
      f'within that time (${parallel.SHARED_WAIT_VAR} sets other whole seconds)')
