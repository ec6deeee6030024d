"""`python -m jax_cifar.submission`: the command line of jax_cifar/evaluation/submission.py."""

import sys

from jax_cifar.evaluation.submission import main

if __name__ == '__main__':
  sys.exit(main())
