"""`python -m jax_cifar.report`: the command line of jax_cifar/evaluation/report.py."""

import sys

from jax_cifar.evaluation.report import main

if __name__ == '__main__':
  sys.exit(main())
