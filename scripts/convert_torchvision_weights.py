"""Converts torchvision weights: the same as `python -m jax_cifar.convert` (jax_cifar/convert_cli.py)."""

import sys

from jax_cifar.convert_cli import *  # noqa: F401,F403  (its functions, as before the move)
from jax_cifar.convert_cli import main

if __name__ == '__main__':
  sys.exit(main())
