"""Holds WORKDIR's run lock like a live training run: prints 'locked', then waits on stdin.

Usage: python tests/_hold_lock.py WORKDIR (test_workdir SIGKILLs it to show the lock dies with it).
"""

import pathlib
import sys

from jax_cifar import own_files


def main(folder: str) -> None:
  own_files.Lock(pathlib.Path(folder)).acquire()
  print('locked', flush=True)
  sys.stdin.read()


if __name__ == '__main__':
  main(sys.argv[1])
