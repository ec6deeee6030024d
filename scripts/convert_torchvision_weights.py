"""Converts torchvision weights: the same as `python -m jax_cifar.convert` (jax_cifar/convert_cli.py)."""

from jax_cifar.convert_cli import *  # noqa: F401,F403  (its functions, as before the move)
from jax_cifar.convert_cli import main, run_as_command  # noqa: F401  (main: tests call it)

if __name__ == '__main__':
  run_as_command()
