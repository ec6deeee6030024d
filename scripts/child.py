"""Running the trainer or evaluate as a child of a measuring script, so that Ctrl-C stops it well.

The child has a session of its own, so a Ctrl-C (sent by the terminal to the script's whole
process group) reaches it from here exactly once per press: the trainer saves and stops at the
first, stops at once at the second, and a third press kills it. subprocess.run/call had killed it
at the first (SIGKILL, on the KeyboardInterrupt in the script), after the terminal's SIGINT had
already started its save. SIGTERM is passed on as it is, and SIGHUP (the terminal closed) as
SIGTERM, so the trainer saves then too.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess

INTERRUPTED = (75, 130, 143, -2, -15)  # The trainer's preemption exit, 128 + signal, or killed by one.


def run(cmd: list[str], log: pathlib.Path, cwd: pathlib.Path) -> tuple[int, bool]:
  """Runs `cmd` in `cwd` with its output in `log`: (its exit code, whether a stop was passed on).

  A stop passed on counts even when the child then exits 0 (the trainer does at its last step),
  so that the caller stops too rather than start the next run.
  """
  stopped = []
  with open(log, 'w') as f:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def pass_on(signum, _):
      stopped.append(signum)
      proc.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
      while True:
        try:
          return proc.wait(), bool(stopped)
        except KeyboardInterrupt:
          stopped.append(signal.SIGINT)
          presses = stopped.count(signal.SIGINT)
          proc.send_signal(signal.SIGINT if presses < 3 else signal.SIGKILL)
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def last_line(log: pathlib.Path) -> str:
  """The log's last line as a terminal shows it (progress bars redraw with carriage returns)."""
  return (log.read_text().strip().splitlines() or [''])[-1].split('\r')[-1].strip()
