"""Running the trainer or evaluate as a child of a measuring script, so that Ctrl-C stops it well.

The child has a session of its own, so a Ctrl-C (sent by the terminal to the script's whole
process group) reaches it from here exactly once per press: the trainer saves and stops at the
first, stops at once at the second. subprocess.run/call had killed it instead (SIGKILL, on the
KeyboardInterrupt in the script), after the terminal's SIGINT had already started its save.
SIGTERM is passed on the same way.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess

INTERRUPTED = (75, 130, 143, -2, -15)  # The trainer's preemption exit, 128 + signal, or killed by one.


def run(cmd: list[str], log: pathlib.Path, cwd: pathlib.Path) -> int:
  """Runs `cmd` in `cwd` with its output in `log`; returns its exit code."""
  with open(log, 'w') as f:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
      while True:
        try:
          return proc.wait()
        except KeyboardInterrupt:
          proc.send_signal(signal.SIGINT)
    finally:
      signal.signal(signal.SIGTERM, previous)


def last_line(log: pathlib.Path) -> str:
  """The log's last line as a terminal shows it (progress bars redraw with carriage returns)."""
  return (log.read_text().strip().splitlines() or [''])[-1].split('\r')[-1].strip()
