"""How the commands' log lines reach the console: absl's INFO lines and orbax's own error logs
hidden unless --verbosity is given, warnings as `warning: MESSAGE`, and every line written above
tqdm's progress bars."""

from __future__ import annotations

import logging as std_logging

from absl import flags, logging


def quiet_libraries() -> None:
  """Unless --verbosity was given: INFO logs hidden, and orbax's own error logs too (a failed save
  reaches the user as one `error:` line naming its cause; --verbosity=0 shows everything)."""
  if flags.FLAGS['verbosity'].present:
    return
  logging.set_verbosity(logging.WARNING)
  handler = logging.get_absl_handler().python_handler
  if not isinstance(handler.formatter, PlainWarnings):
    handler.setFormatter(PlainWarnings(handler.formatter))
  hide_orbax_logs()


def hide_orbax_logs() -> None:
  """orbax's own error logs off (below CRITICAL): a failed save's cause reaches the user in the
  tool's one `error:` line, where orbax had logged each failed write thread's traceback first
  (`_SignalingThread.run() raised an exception`, ~200 lines from `convert` on a full disk)."""
  absl_logger = logging.get_absl_logger()
  if not any(getattr(f, 'hides_orbax', False) for f in absl_logger.filters):
    absl_logger.addFilter(_hide_orbax)
  # orbax's failed write tasks, reported again by asyncio when they are garbage collected.
  std_logging.getLogger('asyncio').setLevel(std_logging.CRITICAL)


def _hide_orbax(record: std_logging.LogRecord) -> bool:
  return '/orbax/' not in record.pathname or record.levelno >= std_logging.CRITICAL


_hide_orbax.hides_orbax = True


class PlainWarnings(std_logging.Formatter):
  """A warning as `warning: MESSAGE`, like report's: absl's `W1205 12:13:54.363783 1405671848
  relaunch.py:94] ` before each had buried it (a review). Other levels keep absl's form (`error:`
  lines are the one-line errors); --verbosity=0 shows absl's form for all."""

  def __init__(self, absl_formatter: std_logging.Formatter):
    super().__init__()
    self._absl = absl_formatter

  def format(self, record: std_logging.LogRecord) -> str:
    if record.levelno == std_logging.WARNING:
      return f'warning: {record.getMessage()}'
    return self._absl.format(record)


class AboveProgressBars:
  """The stream of absl's log lines: each written with tqdm.write, on a line of its own above any
  progress bar (a warning during training had been glued to the bar's line; an audit)."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> None:
    import tqdm  # pylint: disable=import-outside-toplevel
    for line in text.rstrip('\n').split('\n'):
      tqdm.tqdm.write(line, file=self._stream)

  def __getattr__(self, name):  # flush, fileno, isatty, ...
    return getattr(self._stream, name)


def above_progress_bars() -> None:
  """absl's log lines from now on written through AboveProgressBars (once per process)."""
  handler = logging.get_absl_handler().python_handler
  if not isinstance(handler.stream, AboveProgressBars):
    handler.stream = AboveProgressBars(handler.stream)
