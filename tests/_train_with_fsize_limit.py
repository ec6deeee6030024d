"""Runs `python -m jax_cifar.train ARGS` with a per-file size limit: a disk that fills mid-save."""

import resource
import runpy
import signal
import sys

limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes past the limit fail with EFBIG instead.
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ['jax_cifar.train'] + sys.argv[2:]
runpy.run_module('jax_cifar.train', run_name='__main__')
