"""Stopping a long evaluation on SIGTERM/SIGINT: one line and a non-zero status, never a traceback.

The handlers only set a flag; the prediction loops poll it between batches (every batch with one
process; at chunk boundaries, agreed through one tiny all-gather, with several, so all processes
stop at the same point and none waits forever in a collective). The `Interrupted` exception then
unwinds through the submission writer, which deletes its temporary file, so a stopped run leaves
no CSV or the previous complete one. With one process a second signal stops at once (with
several it is only noted: one process raising alone would leave the others in a collective).

`JAX_CIFAR_TEST_SIGNAL=EVENT:INDEX:SIGNAL[:PROCESS]` (e.g. `ood_file:3:SIGKILL`, `train_step:3:SIGTERM:1`)
makes the process (only JAX process PROCESS, if given) send itself SIGNAL when `at_event(EVENT, INDEX)`
is reached: tests place faults at exact points, not after sleeps.
"""

from __future__ import annotations

import os
import signal

import jax

from jax_cifar import parallel

TEST_HOOK_VAR = 'JAX_CIFAR_TEST_SIGNAL'


class Interrupted(BaseException):
  """Raised by `StopFlag.check` after SIGTERM/SIGINT; `exit_code` follows the shell's 128 + signal.
  Not an Exception: raised at once by a second signal, it had been caught by the `except
  Exception` of whatever code it interrupted (a restore called it a damaged checkpoint, a kept
  file's check swallowed it: a review), as KeyboardInterrupt is not."""

  def __init__(self, name: str, signum: int):
    super().__init__(name)
    self.name, self.exit_code = name, 128 + signum


class StopFlag:
  """Set by SIGTERM/SIGINT once `install()`ed; never set otherwise (library and test use)."""

  def __init__(self):
    self.name: str | None = None
    self.signum = 0
    self.several = False  # Several processes (read at install(), never in the handler).

  def install(self) -> None:
    self.several = jax.distributed.is_initialized() and jax.process_count() > 1
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handler)

  def _handler(self, signum, _frame) -> None:
    if self.name is not None:  # A second signal: one process does not wait for the batch.
      # Not jax.process_count(), which may start the backends under a lock the interrupted
      # code holds: the handler had waited on it for good (the diff review).
      if not self.several:
        raise Interrupted(self.name, self.signum)
      return  # (Several: the next collective check stops them all.)
    self.name, self.signum = signal.Signals(signum).name, signum

  def check(self, collective: bool = False) -> None:
    """Raises `Interrupted` if a signal arrived. With several processes it only acts where every
    process calls it at the same point (`collective=True`), so they all stop together."""
    if jax.process_count() == 1:
      if self.name is not None:
        raise Interrupted(self.name, self.signum)
    elif collective and parallel.any_process(self.name is not None):
      raise Interrupted(self.name or 'a signal to another process', self.signum or signal.SIGTERM)


FLAG = StopFlag()


def at_event(event: str, index: int) -> None:
  """Test hook: signals this process if $JAX_CIFAR_TEST_SIGNAL names this event and index (and,
  with a fourth field `EVENT:INDEX:SIGNAL:PROCESS`, this JAX process index)."""
  spec = os.environ.get(TEST_HOOK_VAR)
  if not spec:
    return
  want_event, want_index, name, *process = spec.split(':')
  if process and int(process[0]) != jax.process_index():
    return
  if want_event == event and int(want_index) == index:
    os.kill(os.getpid(), signal.Signals[name])
