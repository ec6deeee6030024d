"""A signal while a command starts (its libraries loading; nothing written yet): one line, no
traceback, and the process ends at once.

Raising from the handler (SystemExit, KeyboardInterrupt) was not enough: in the middle of JAX's
imports the exception can surface inside a C++ callback, where it was swallowed (the command then
ran to the end and exited 0) or aborted the process with a page of traceback (an audit). So the
handler writes its line and calls os._exit. Only the standard library is imported here, so the
commands install it before they import JAX; they replace it before they write anything.
"""

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
