"""The converter (as `python -m jax_cifar.convert` runs it), with a Ctrl-C while the main thread
waits for orbax's background commit (the wait when the checkpointer closes) and that commit still
runs: a KeyboardInterrupt there had left orbax's threads writing into the temp folder the
converter deleted (it stayed, with ~100 lines of their tracebacks at exit). It says on stderr
whether that wait finished or was interrupted (tests/test_convert_safety.py)."""

import os
import signal
import sys
import threading
import time

import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity

from jax_cifar import convert_cli

_waiting = threading.Event()
_real_exit, _real_finalize = ocp.StandardCheckpointer.__exit__, atomicity.AtomicRenameTemporaryPath.finalize


def _exit(self, *args):
  _waiting.set()  # The main thread is about to wait for the commit.
  try:
    result = _real_exit(self, *args)
  except BaseException:
    sys.stderr.write('driver: the wait for the commit was interrupted\n')
    raise
  sys.stderr.write('driver: the commit finished\n')
  return result


async def _finalize(self, *args, **kwargs):  # (In orbax's commit thread.)
  if self._final_path.name == 'state':  # pylint: disable=protected-access  (the checkpoint itself)
    _waiting.wait(60)
    time.sleep(0.2)  # In the wait's join by now.
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)  # A commit that takes a while: still running when the main thread has the signal.
  return await _real_finalize(self, *args, **kwargs)


ocp.StandardCheckpointer.__exit__ = _exit
atomicity.AtomicRenameTemporaryPath.finalize = _finalize
if __name__ == '__main__':
  sys.exit(convert_cli.main(sys.argv[1:]))
