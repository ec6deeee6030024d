"""The suite's XLA optimisation level (tests/conftest.py): tests compile with most of XLA's
optimisation off unless JAX_DISABLE_MOST_OPTIMIZATIONS says otherwise; tests marked
`optimized_xla`, and the processes they start, compile with all of it."""

import os
import subprocess
import sys

import jax
import pytest


def _environment_says_off() -> bool:
  return os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'].lower() not in ('0', 'false')


def _in_a_subprocess() -> bool:
  out = subprocess.run(
      [sys.executable, '-c', 'import jax; print(jax.config.read("jax_disable_most_optimizations"))'],
      check=True, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  return {'True': True, 'False': False}[out.stdout.strip()]


def test_unmarked_tests_and_their_subprocesses_follow_the_environment():
  assert jax.config.read('jax_disable_most_optimizations') is _environment_says_off()
  assert _in_a_subprocess() is _environment_says_off()


@pytest.mark.optimized_xla
def test_marked_tests_and_their_subprocesses_compile_with_full_optimisation():
  assert jax.config.read('jax_disable_most_optimizations') is False
  assert _in_a_subprocess() is False


def test_the_marker_is_undone_after_its_test():
  assert jax.config.read('jax_disable_most_optimizations') is _environment_says_off()
