"""Orbax checkpoints in WORKDIR/checkpoints/: 'latest' (every N steps, resume) and 'best' (by val accuracy).

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact and the next start ignores the debris.
"""

import contextlib
import functools
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jax_cifar import errors, parallel
# CheckpointError and StructureMismatch are also this module's (checkpoints.CheckpointError).
from jax_cifar.step_folders import READ_ATTEMPTS, Replaced, open_manager, vanished
from jax_cifar.step_folders import has_other_step, move_aside, refuse_linked_steps
from jax_cifar.step_folders import unranked_best_steps
from jax_cifar.step_folders import (CheckpointError, Damaged, StructureMismatch,  # pylint: disable=unused-import
                                    is_step_number, one_line, restore_step, restore_twin)


WEIGHTS = ('raw', 'ema')  # checkpoint.best_weights, evaluate --weights: the raw weights or their EMA.
READ_WEIGHTS = (*WEIGHTS, 'auto')  # evaluate --weights / load_model: 'auto' picks on validation.


def _save_failed(what: str, e: BaseException, kept: bool = True) -> CheckpointError:
  code = errors.os_error_code(e)
  cause = one_line(e) if code is None else errors.os_reason(code, os.strerror(code))
  after = 'earlier checkpoints are kept' if kept else 'there is no earlier one there'
  return CheckpointError(f'saving {what} failed: {cause}; {after}')


def check_writable(directory: pathlib.Path) -> None:
  """Fails at once, naming the OS cause, if checkpoints cannot be written (before any training)."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=directory, prefix='.write_probe_')  # (Never a planted link.)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise CheckpointError(f'cannot write checkpoints in {directory}: {e.strerror}') from e


def save_whole_arrays_on_cpu() -> None:
  """On CPU devices, orbax saves each replicated array whole (from one device), as it does where
  JAX_PLATFORMS names a GPU.

  Otherwise orbax's default is replica-parallel saving (it reads JAX_PLATFORMS, not the devices): each replicated array is cut into one slice
  per device, so that the hosts holding the replicas share the writing. Every slice is an eager
  slice op (a compiled program per shape): CPU devices share the host's memory, so there they only
  cost time. The smoke model's first save on 4 CPU devices took 4.4-5.2 s with them and 0.5-0.6 s
  without, later saves 0.7-1.1 s and 0.5-0.7 s (docs/benchmarks.md). TPUs keep orbax's default.
  orbax takes an ArrayHandler's options through its global type-handler registry: this process's
  saves (and orbax's one-line notice of the override, dropped here) are all affected."""
  if jax.default_backend() != 'cpu':
    return
  default = ocp.type_handlers.get_type_handler(jax.Array)
  if not getattr(default, '_use_replica_parallel', True):
    return
  if not hasattr(default, '_array_metadata_store'):  # (orbax's private name: were it renamed, a
    logging.warning('orbax %s: its ArrayHandler has no _array_metadata_store; keeping its '
                    'replica-parallel saves (slower on CPU devices)', ocp.__version__)
    return  # handler without it would save no array metadata: a library-usage audit.)
  store = default._array_metadata_store  # pylint: disable=protected-access
  handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False, array_metadata_store=store)
  notice = lambda record: 'overriding' not in record.getMessage()  # pylint: disable=unnecessary-lambda-assignment
  absl_logger = logging.get_absl_logger()
  absl_logger.addFilter(notice)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.removeFilter(notice)


_POLL_LIMIT_S = 3600.0  # Checkpoints._finish's poll of a save under way, before orbax's join.


class Checkpoints:

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2, create: bool = True):
    root = pathlib.Path(workdir).absolute() / 'checkpoints'
    save_whole_arrays_on_cpu()
    errors.drop_library_noise()  # A failed save's or restore's leftovers print pages otherwise.
    with parallel.fail_together(f'checking {root}'):
      if create and jax.process_index() == 0:
        for folder in (root, root / 'latest', root / 'best'):  # The first unusable one is named.
          check_writable(folder)
          refuse_linked_steps(folder)
    # Training removes orbax's temp folders of steps killed mid-save (they had stayed forever when
    # the resumed run did not save that step again: a kill audit); evaluation changes nothing.
    # (orbax does it in the background on process 0 and waits for it before the first save.)
    opts = dict(create=create, enable_async_checkpointing=True, cleanup_tmp_directories=create)
    self._in_flight = {}  # id(manager) -> step of its asynchronous save not yet waited for.
    self._saved_best = None  # The accuracy of this process's last `best` save (see best_accuracy).
    self.after_commit = None  # Called with the step of each save once it is committed.
    self._damaged = {}  # 'latest' / 'best' -> damaged steps newer than the one restored.
    # Which steps stay: orbax's preservation policies (its max_to_keep is deprecated for them).
    policies = ocp.checkpoint_managers
    # A reader of a run another process may be training (step_folders.Replaced). One process
    # only: processes that each retried on their own could restore different steps.
    self._reader = not create and jax.process_count() == 1
    self._open_latest = functools.partial(
        ocp.CheckpointManager, root / 'latest', options=ocp.CheckpointManagerOptions(
            preservation_policy=policies.LatestN(n=keep), **opts))
    self.latest = open_manager(self._open_latest, self._reader)
    self._best, self._best_problem = None, None
    ranked_by = lambda metrics: metrics['val_accuracy']  # pylint: disable=unnecessary-lambda-assignment
    self._open_best = functools.partial(  # (best_fn: what best_step() ranks by.)
        ocp.CheckpointManager, root / 'best', options=ocp.CheckpointManagerOptions(
            best_fn=ranked_by, best_mode='max',
            preservation_policy=policies.BestN(get_metric_fn=ranked_by, n=1), **opts))
    unranked = unranked_best_steps(root / 'best')
    # Every process has looked before process 0 moves anything: the agreement is a collective.
    if parallel.any_process(bool(unranked)):
      if create:  # Training: set them aside (kept), and rank the new run's own.
        with parallel.fail_together(f'setting aside unranked steps of {root / "best"}'):
          if jax.process_index() == 0 and unranked:
            moved = [move_aside(root / 'best', 'best', step) for step in unranked]
            logging.warning('Moved best checkpoints whose metrics file is missing or unreadable '
                            '(%s) to %s; their weights are kept there, restorable by path.',
                            '; '.join(unranked.values()), ', '.join(str(m) for m in moved))
      else:  # Evaluation: 'latest' stays usable; 'best' is named as damaged when used.
        self._best_problem = (
            f'damaged checkpoint in {root / "best"}: '
            f'{"; ".join(unranked.values()) or "see process 0"} (orbax ranks best steps by it); '
            "its weights may be intact: restore the step by path, or use the 'latest' checkpoint "
            '(nothing was deleted)')
    if create:  # Training opens both at once on every process (orbax's own barriers).
      self._best = open_manager(self._open_best, reader=False)

  @property
  def best(self):
    """The 'best' CheckpointManager (opened on first use: see unranked_best_steps)."""
    if self._best_problem:
      raise CheckpointError(self._best_problem)
    if self._best is None:
      self._best = open_manager(self._open_best, self._reader)
    return self._best

  def _save(self, manager, step: int, state: Any, **kwargs) -> None:
    """Saves (asynchronously); a failed write raises CheckpointError, earlier checkpoints stay."""
    # Surfaces a failure of the previous asynchronous save, naming its step. Both managers'
    # saves are waited for: a validation's `best` still in flight when the same step's `latest`
    # committed was lost to a kill between the two, for good, as the resume from that step
    # validates it no more (a kill review). And orbax's multi-host saves of two managers share
    # barrier names: 'best' starting while 'latest' of the same step was still in flight failed
    # ('Barrier ThreadSaveMultiHostValueHolder:set_value_start is already ongoing';
    # test_multiprocess, two of three runs on a 2-core Intel Xeon).
    for pending in (self.latest, self.best if jax.process_count() > 1 else self._best):
      if pending is not None:  # ('best' opens on first use when evaluating.)
        self._finish(pending)
    try:
      manager.save(step, args=ocp.args.StandardSave(state), **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      raise _save_failed(f'checkpoint step {step} in {manager.directory}', e,
                         has_other_step(manager.directory, step)) from e
    self._in_flight[id(manager)] = step

  def _finish(self, manager) -> None:
    # One process: polled before orbax's wait joins its thread. A join that an exception
    # interrupts (a second SIGTERM's StopNow) leaves the thread looking finished before Python
    # 3.13, so the trainer's next wait returned at once and the save under way died with the
    # process, though the run said it was finished (a kill review). An interrupted poll leaves
    # nothing behind. Only for a save that started (orbax's flag stays set when its save() failed
    # before its background part: a review), and at most _POLL_LIMIT_S, then the join.
    if id(manager) in self._in_flight and jax.process_count() == 1:
      deadline = time.monotonic() + _POLL_LIMIT_S
      while manager.is_saving_in_progress() and time.monotonic() < deadline:
        time.sleep(0.02)
    step = self._in_flight.pop(id(manager), None)
    try:
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      what = f'checkpoint step {step}' if step is not None else 'a checkpoint'
      raise _save_failed(f'{what} in {manager.directory}', e,
                         has_other_step(manager.directory, step)) from e
    if step is not None and self.after_commit is not None:
      self.after_commit(step)

  def note_commits(self) -> None:
    """Calls `after_commit` for saves committed since, without waiting, raising or any collective
    (process 0 of several, at each step: their saves are waited for only at the next save)."""
    for manager in (self.latest, self._best):
      step = None if manager is None else self._in_flight.get(id(manager))
      if (step is not None and self.after_commit is not None
          and not manager.is_saving_in_progress() and (manager.directory / str(step)).is_dir()):
        self.after_commit(step)

  def check_saves(self) -> None:
    """Raises CheckpointError if an asynchronous save finished with an error, without waiting
    for one still running (a failed save had gone unnoticed until the next one)."""
    for manager in (self.latest, self._best):
      # (orbax's check_for_errors misses them: the manager's finalize thread holds the error.)
      if (manager is not None and id(manager) in self._in_flight
          and not manager.is_saving_in_progress()):
        self._finish(manager)  # Done: returns at once, or raises the save's error.

  def save_latest(self, state: Any, step: int) -> None:
    if self.latest.latest_step() != step:
      self._save(self.latest, step, state)

  def best_accuracy(self) -> float | None:
    """The best step's recorded accuracy, or that of this process's last `best` save if higher:
    a save still being written has no metrics on disk yet (two validations in quick succession had
    read no best at all, a test of wandb's summary found)."""
    step = self.best.best_step()
    metrics = None if step is None else self.best.metrics(step)
    found = [float(metrics['val_accuracy'])] if metrics else []
    return max(found + ([self._saved_best] if self._saved_best is not None else []), default=None)

  def maybe_save_best(self, state: Any, step: int, val_accuracy: float) -> bool:
    """Saves when `val_accuracy` beats the best so far; a non-finite accuracy never counts."""
    if not np.isfinite(val_accuracy):
      return False
    best = self.best_accuracy()
    if best is not None and val_accuracy <= best:
      return False
    if step in self.best.all_steps():  # A resumed run scoring higher at a step saved before its
      self._finish(self.best)  # kill (e.g. after switching checkpoint.best_weights): orbax
      self.best.delete(step)  # refuses to save an existing step.
    self._save(self.best, step, state, metrics={'val_accuracy': val_accuracy}, force=True)
    self._saved_best = float(val_accuracy)
    return True

  def restore(self, which: str, target: Any, *, fallback: bool = False) -> tuple[Any, int] | None:
    """Restores 'latest' or 'best' into the structure/shardings of `target`; None if absent.

    A damaged step (a missing metadata file, a truncated or empty array file) is named in a
    CheckpointError, or with `fallback` skipped with a warning for the newest intact older step.
    Nothing is deleted. A reader (create=False) whose step the run's trainer deleted while it read
    it lists the steps again and reads the newest then.
    """
    for attempt in range(READ_ATTEMPTS):
      try:
        return self._restore(which, target, fallback)
      except Replaced as e:
        if attempt == READ_ATTEMPTS - 1:
          raise CheckpointError(f'{e}, {READ_ATTEMPTS} times: the run is training and deletes '
                                'old steps faster than they can be read here; evaluate a step by '
                                'number (one the run keeps), or once it has stopped') from None
        # Opened afresh: a manager whose read failed so had refused the next step's ("Must
        # provide `args` of type `Composite`").
        failed = self.latest if which == 'latest' else self._best
        if which == 'latest':
          self.latest = open_manager(self._open_latest, reader=True)
        else:
          self._best = None  # (Opened again on its next use.)
        if failed is not None:
          with contextlib.suppress(Exception):  # (A reader's: nothing of its own to finish.)
            failed.close()

  def _restore(self, which: str, target: Any, fallback: bool) -> tuple[Any, int] | None:
    manager = self.latest if which == 'latest' else self.best  # (opens 'best' only if asked)
    self._damaged.pop(which, None)  # (Only this restore's damaged steps are set aside.)
    newest = manager.latest_step() if which == 'latest' else manager.best_step()
    if newest is None:
      return None
    steps = [newest] + (sorted((s for s in manager.all_steps() if s < newest), reverse=True)
                        if fallback else [])
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    damaged, twin_used = [], False
    for step in steps:
      try:
        restored = restore_step(
            manager.directory / str(step),
            lambda step=step: manager.restore(step, args=ocp.args.StandardRestore(abstract)))
      except (Damaged, CheckpointError) as e:
        if self._reader and vanished(manager.directory / str(step)):
          raise Replaced(f'step {step} of {manager.directory} was deleted while it was read') from e
        if not isinstance(e, Damaged):
          raise
        restored = restore_twin(manager.directory / str(step), abstract, e)
        if restored is None:
          damaged.append(f'step {step} ({e})')
          continue
        twin_used = True
      if damaged:
        logging.warning('Damaged checkpoint %s in %s; restored step %d instead.',
                        '; '.join(damaged), manager.directory, step)
      if damaged or twin_used:  # (a resume moves them aside: set_aside_damaged)
        self._damaged[which] = [s for s in steps if s > step or (twin_used and s == step)]
      return restored, step
    others = sorted({int(p.name) for p in manager.directory.parent.glob('*/*')
                     if p.parent.name in ('latest', 'best') and is_step_number(p.name)}
                    - set(steps))
    kept = (f' (the run also kept step{"s" if len(others) > 1 else ""} '
            f'{", ".join(map(str, others))}: evaluate --checkpoint N, load_model(run, N))'
            if others else '')
    raise CheckpointError(
        f'damaged checkpoint in {manager.directory}: {"; ".join(damaged)}; '
        + ('no intact step is left' if fallback else 'restore an intact step by number or path'
           + kept) + ' (nothing was deleted)')

  def set_aside_damaged(self, which: str) -> list[pathlib.Path]:
    """Moves the damaged steps the last `restore` skipped to checkpoints/damaged/ (kept, not
    deleted): left in place, the manager counted them as the newest steps, so retraining never
    saved those steps again and the kept-steps policy could remove the intact ones instead."""
    manager = self.latest if which == 'latest' else self.best  # (opens 'best' only if asked)
    steps, moved = self._damaged.pop(which, []), []
    with parallel.fail_together(f'setting aside damaged steps of {manager.directory}'):
      if steps and jax.process_index() == 0:
        moved = [move_aside(manager.directory, which, step) for step in steps]
        logging.warning('Moved the damaged %s to %s.', ', '.join(t.name for t in moved),
                        moved[0].parent)
    # Every process reloads when any moved steps (a collective): the save that follows runs only
    # where the listing lacks the step, and a process that had not reloaded skipped orbax's
    # collective save while the others waited in it (a review).
    if parallel.any_process(bool(steps)):
      manager.reload()
    return moved

  def tidy_best_on_resume(self, step: int) -> list[pathlib.Path]:
    """What a kill left in checkpoints/best, before a resume from `step` (a kill audit); returns
    the step folders moved to checkpoints/discarded/ (kept there, restorable by path):
    - steps ranked below the best, which orbax was deleting when the kill came (it keeps one;
      a new best is saved only when strictly better), leave checkpoints/best: they had stayed,
      and a half deleted one became best once a later step was set aside (a review). Deleted, as
      orbax would have, but for one when the best is set aside (next point): the best-ranked of
      them up to `step`, the best of the training the resume keeps, may be intact and had been
      deleted for good (a review), so it is set aside;
    - steps after `step`, of training the resume repeats, are set aside: they had stayed best and
      ranked the retrained run's saves.
    Each agreement is a collective: every process has looked before process 0 changes anything."""
    manager = self.best
    self._saved_best = None  # What is left in checkpoints/best is the best from here on.
    top = manager.best_step()
    superseded = [s for s in manager.all_steps()
                  if top is not None and s != top and manager.metrics(s)]  # (Ranked ones only.)

    def delete(steps):
      for s in steps:
        shutil.rmtree(pathlib.Path(manager.directory) / str(s))
      logging.warning('Deleted best checkpoint(s) %s of %s, ranked below step %d: a kill had '
                      'stopped their deletion.', ', '.join(map(str, steps)), manager.directory, top)

    def set_aside(why, steps):
      moved = [move_aside(manager.directory, 'best', s, into='discarded', replace_same=True)
               for s in steps]
      logging.warning('Moved best checkpoint(s) %s to %s (kept there, restorable by path).', why,
                      ', '.join(str(m) for m in moved))
      return moved

    kept = []  # The best of the kept training, where the best goes aside: the top one to `step`.
    if top is not None and top > step:
      kept = sorted((s for s in superseded if s <= step),
                    key=lambda s: manager.metrics(s)['val_accuracy'])[-1:]
    # Every process makes each call (each is a collective), whatever its own look found.
    moved = _agreed_change(manager, kept, f'setting aside a superseded step of '
                           f'{manager.directory}', functools.partial(set_aside, (
                               f'ranked below step {top} (set aside next), which a kill had '
                               'stopped orbax deleting,'))) or []
    _agreed_change(manager, [s for s in superseded if s not in kept],
                   f'deleting superseded steps of {manager.directory}', delete)
    return moved + (_agreed_change(
        manager, [s for s in manager.all_steps() if s > step],
        f'setting aside steps of {manager.directory} after {step}',
        functools.partial(set_aside, f'of the training after step {step}, which this resume '
                                     'repeats,')) or [])

  def wait(self) -> None:
    for manager in (self.latest, self._best):
      if manager is not None:
        self._finish(manager)

  def close(self) -> None:
    self.latest.close()
    if self._best is not None:
      self._best.close()


def _agreed_change(manager, steps: list[int], what: str, change: Callable[[list[int]], Any]) -> Any:
  """Process 0 applies `change` to `steps` (each process's own look, agreed by a collective first,
  so every process has looked before anything moves); then every process's manager reloads.
  Returns what `change` returned on process 0 (None elsewhere, or when nothing changed)."""
  out = None
  if parallel.any_process(bool(steps)):
    with parallel.fail_together(what):
      if jax.process_index() == 0 and steps:
        out = change(steps)
    manager.reload()
  return out
