"""The config of a 1-step synthetic simple_cnn run, as a file for the command line and as a
ConfigDict: for tests of what evaluate does with files and faults, not of the model
(test_evaluate_faults.py, test_evaluate_resume.py), and small distortion files for it."""

import pathlib

import numpy as np

from jax_cifar.data import ood

CONFIG_FILE = '''
from jax_cifar.configs import default

def get_config():
  c = default.get_config()
  c.data.source = 'synthetic'
  c.data.synthetic_size = 64
  c.data.val_fraction = 0.0
  c.model.name = 'simple_cnn'
  c.train.batch_size = 32
  c.train.eval_batch_size = 32
  c.train.num_epochs = 1
  c.train.max_steps = 1
  return c
'''


def config(config_file: str = CONFIG_FILE):
  """The ConfigDict that a config file's text (by default the tiny run's) gives."""
  namespace = {}
  exec(config_file, namespace)  # pylint: disable=exec-used
  return namespace['get_config']()


def write_ood(folder: pathlib.Path, n: int, seed: int = 0) -> pathlib.Path:
  """`folder` with the 19 distortion files of `n` random images each."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(ood.NUM_DISTORTIONS):
    np.save(folder / ood.distortion_file(i), rng.integers(0, 256, (n, 32, 32, 3), np.uint8))
  return folder
