"""The persistent compilation cache that train and evaluate switch on (xla_options.py)."""

import os
import subprocess
import sys

import pytest

_SCRIPT = '''
import jax, jax.numpy as jnp
from jax_cifar import xla_options
xla_options.enable_compilation_cache()
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)  # Cache these small programs.
for k in range(3):
  jax.jit(lambda x: jnp.sin(x) @ x.T + k)(jnp.ones((20, 20))).block_until_ready()
print('cache', jax.config.jax_enable_compilation_cache)
'''


def _run(cache: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-c', _SCRIPT], env=env, capture_output=True, text=True,
                        timeout=300, check=True)


@pytest.mark.parametrize('kind', ['file', 'folder in a file'])
def test_a_cache_that_cannot_be_used_is_said_once_and_switched_off(tmp_path, kind):
  """JAX_COMPILATION_CACHE_DIR naming a file had warned at every compile (a screenful per launch:
  a review of the leftovers)."""
  cache = tmp_path / 'cache'
  if kind == 'file':
    cache.write_text('not a folder')
  else:  # (What root cannot make either, as it can write to a read-only folder.)
    (tmp_path / 'a_file').write_text('')
    cache = tmp_path / 'a_file' / 'cache'
  result = _run(str(cache))
  assert 'cache False' in result.stdout
  said = [line for line in result.stderr.splitlines() if 'compilation cache' in line]
  assert len(said) == 1 and str(cache) in said[0], result.stderr
  assert ('a file, not a folder' in said[0]) == (kind == 'file')
  assert 'persistent compilation cache' not in result.stderr  # JAX's own warnings, per compile.


def test_a_new_cache_folder_is_made_and_filled(tmp_path):
  cache = tmp_path / 'deep' / 'cache'
  result = _run(str(cache))
  assert 'cache True' in result.stdout and 'warning' not in result.stderr, result.stderr
  assert len(os.listdir(cache)) >= 3  # One entry (or more) per compiled program.
