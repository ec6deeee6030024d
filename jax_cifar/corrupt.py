"""`python -m jax_cifar.corrupt`: the command line of jax_cifar/corruptions/corrupt.py."""

import sys

from jax_cifar.corruptions.corrupt import main

if __name__ == '__main__':
  sys.exit(main())
