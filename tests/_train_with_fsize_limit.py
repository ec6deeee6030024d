"""Runs `python -m jax_cifar.train ARGS` with a per-file size limit: a disk that fills mid-save."""

import resource
import runpy
import signal
import sys

import jax

limit = int(sys.argv[1])
# Reads the shared compilation cache but writes nothing to it: JAX writes a cache entry in place,
# so one cut short at this limit would stay there, and every later compile of that program, in
# every test, would warn that it cannot read it (and compile again).
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 2**62)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes past the limit fail with EFBIG instead.
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ['jax_cifar.train'] + sys.argv[2:]
runpy.run_module('jax_cifar.train', run_name='__main__')
