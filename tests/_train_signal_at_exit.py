"""Runs `python -m jax_cifar.train ARGS`, sending itself SIGTERM once the interpreter shuts down
(an atexit callback): a second signal after the run said it saved and stops."""

import atexit
import os
import runpy
import signal
import sys

atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))
sys.argv = ['jax_cifar.train'] + sys.argv[1:]
runpy.run_module('jax_cifar.train', run_name='__main__')
