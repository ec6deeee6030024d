"""`python -m jax_cifar.corrupt`: the command line of jax_cifar/corruptions/cli.py."""

from jax_cifar import starting

if __name__ == '__main__':  # A signal while the libraries load: one line, no traceback.
  starting.install()

# pylint: disable=wrong-import-position
import sys

from jax_cifar.corruptions.cli import main

if __name__ == '__main__':
  starting.uninstall()  # Loaded: the command's own handling of SIGINT/SIGTERM from here.
  sys.exit(main())
