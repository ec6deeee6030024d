"""The suite's XLA optimisation level (tests/conftest.py): tests compile with most of XLA's
optimisation off unless JAX_DISABLE_MOST_OPTIMIZATIONS says otherwise; tests marked
`optimized_xla`, and the processes they start, compile with all of it; tests marked
`large_programs` compile the steps with XLA:CPU's newer fusion emitters."""

import os
import subprocess
import sys

import jax
import pytest

import conftest


def _in_a_subprocess() -> bool:
  """What JAX itself makes of this test's environment, in a fresh process (no conftest there)."""
  out = subprocess.run(
      [sys.executable, '-c', 'import jax; print(jax.config.read("jax_disable_most_optimizations"))'],
      check=True, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  return {'True': True, 'False': False}[out.stdout.strip()]


def test_unmarked_tests_and_their_subprocesses_follow_the_environment():
  assert 'JAX_DISABLE_MOST_OPTIMIZATIONS' in os.environ  # conftest's default, or the user's.
  assert jax.config.read('jax_disable_most_optimizations') is _in_a_subprocess()


@pytest.mark.optimized_xla
def test_marked_tests_and_their_subprocesses_compile_with_full_optimisation():
  assert jax.config.read('jax_disable_most_optimizations') is False
  assert _in_a_subprocess() is False


def test_the_marker_is_undone_after_its_test():
  assert jax.config.read('jax_disable_most_optimizations') is _in_a_subprocess()


def test_the_probe_for_the_fast_compile_flag_accepts_it_and_refuses_an_unknown_flag():
  """conftest's XLA_FLAGS for quicker compiles: an unknown flag would end every JAX process of
  the suite (jaxlib aborts on it), so it is probed first; the probe tells one from the other."""
  accepts = conftest._xla_accepts  # pylint: disable=protected-access
  assert accepts(conftest.FAST_COMPILE_XLA_FLAGS)
  assert not accepts('--xla_cpu_no_such_flag=true')


@pytest.mark.large_programs
def test_large_program_tests_compile_the_steps_with_the_newer_fusion_emitters():
  """Where the suite uses the older emitters (quadratic in a module's size), a test marked
  `large_programs` gets the newer ones for the steps it compiles; it compiles with them."""
  from jax_cifar import xla_options  # pylint: disable=import-outside-toplevel
  if os.environ.get('XLA_FLAGS') != conftest.FAST_COMPILE_XLA_FLAGS:
    pytest.skip('the suite runs with XLA_FLAGS of its own')
  options = xla_options.step_compiler_options()
  assert options.get('xla_cpu_use_fusion_emitters') is True
  assert jax.jit(lambda x: x * 2.0, compiler_options=options)(1.0) == 2.0


def test_the_large_programs_marker_is_undone_after_its_test():
  from jax_cifar import xla_options  # pylint: disable=import-outside-toplevel
  assert 'xla_cpu_use_fusion_emitters' not in (xla_options.step_compiler_options() or {})
