"""Runs `python -m jax_cifar.train ARGS`, SIGKILLing itself inside one checkpoint save.

Usage: _train_killed_in_save.py KIND STEP ARGS... with KIND 'latest' or 'best': when orbax is about
to commit WORKDIR/checkpoints/KIND/STEP (its temporary folder fully written, the rename not yet
done), the process kills itself, as a power cut or an OOM kill at that moment would.
"""

import os
import runpy
import signal
import sys

from orbax.checkpoint._src.path import atomicity

kind, step = sys.argv[1], sys.argv[2]
real_finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def finalize_or_die(self, *args, **kwargs):
  final = self._final_path  # pylint: disable=protected-access
  if final.name == step and final.parent.name == kind:
    os.kill(os.getpid(), signal.SIGKILL)
  return await real_finalize(self, *args, **kwargs)


atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
sys.argv = ['jax_cifar.train'] + sys.argv[3:]
runpy.run_module('jax_cifar.train', run_name='__main__')
