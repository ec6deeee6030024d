"""`python -m jax_cifar.corrupt`: the command line of jax_cifar/corruptions/cli.py."""

import sys

from jax_cifar.corruptions.cli import main

if __name__ == '__main__':
  sys.exit(main())
