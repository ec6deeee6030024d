"""Shared fixtures: locating the real data, and requiring it under CI."""

import os
import pathlib

import pytest

# Compiled programs are cached on disk, so repeated compiles across tests and subprocesses are cheap.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(pathlib.Path.home() / '.cache' / 'jax_cifar' / 'xla'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')


def require_env_path(var: str, *parts: str) -> pathlib.Path:
  """The file/folder under $VAR; skipped with a reason outside CI, a failure under CI."""
  base = os.environ.get(var)
  path = pathlib.Path(base, *parts) if base else None
  if path is None or not path.exists():
    reason = f'{var} is unset' if base is None else f'{path} does not exist'
    if os.environ.get('CI'):
      pytest.fail(f'CI requires real data: {reason}')
    pytest.skip(reason)
  return path


@pytest.fixture(scope='session')
def cifar_dir() -> pathlib.Path:
  """Folder holding the real cifar-100-python/ (from $JAX_CIFAR_DATA_DIR)."""
  require_env_path('JAX_CIFAR_DATA_DIR', 'cifar-100-python')
  return pathlib.Path(os.environ['JAX_CIFAR_DATA_DIR'])
