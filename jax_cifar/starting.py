"""A signal while a command starts (its libraries loading; nothing written yet): one line, no
traceback, and the process ends at once.

Raising from the handler (SystemExit, KeyboardInterrupt) was not enough: in the middle of JAX's
imports the exception can surface inside a C++ callback, where it was swallowed (the command then
ran to the end and exited 0) or aborted the process with a page of traceback (an audit). So the
handler writes its line and calls os._exit. Only the standard library is imported here, so the
commands install it before they import JAX; they replace it before they write anything.

Also the garbage collector's setting while a command starts (below).
"""

import gc
import os
import signal


def _stop_at_once(signum, _frame) -> None:
  os.write(2, f'error: stopped by {signal.Signals(signum).name} while starting\n'.encode())
  os._exit(128 + signum)  # pylint: disable=protected-access


def install() -> None:
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, _stop_at_once)


def uninstall() -> None:
  """Python's own handlers again (SIGINT raises KeyboardInterrupt, SIGTERM ends the process), once
  the command is past its start and no longer "starting"."""
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


# CPython collects its oldest generation after every 10 collections of the middle one, and each
# such full collection walks every object it tracks. Tracing a model for jit makes hundreds of
# thousands of them, alive until the program is lowered: a ResNet-152 launch spent 2.2-2.5 s in
# full collections (2-core CPU, docs/benchmarks.md), 0.2 s at 1000. The younger generations keep
# CPython's thresholds, so short-lived cycles are freed as before, and once the command is past
# its start (model traced, first step compiled) CPython's thresholds are back: a long run's cycles
# are collected as usual. The commands' own processes only; a library user's interpreter is theirs.
FULL_COLLECTION_THRESHOLD = 1000
_usual_thresholds = None  # CPython's (or the process's) thresholds while they are deferred.


def defer_full_collections() -> None:
  """Raises the threshold of full collections to FULL_COLLECTION_THRESHOLD; keeps the rest."""
  global _usual_thresholds  # pylint: disable=global-statement
  if _usual_thresholds is None:
    _usual_thresholds = gc.get_threshold()
  gc.set_threshold(*_usual_thresholds[:2], FULL_COLLECTION_THRESHOLD)


def collect_as_usual() -> None:
  """The thresholds from before defer_full_collections (nothing to do where it was not called)."""
  global _usual_thresholds  # pylint: disable=global-statement
  if _usual_thresholds is not None:
    gc.set_threshold(*_usual_thresholds)
    _usual_thresholds = None
