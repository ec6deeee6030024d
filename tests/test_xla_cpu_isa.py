"""jax_cifar caps XLA:CPU at AVX2 before JAX starts (jax_cifar/xla_cpu.py): XLA's AVX-512 code
gave 1-4 % wrong BatchNorm gradients on an Intel Xeon with AMX (test_tent's parity test)."""

import os
import subprocess
import sys

import pytest

from jax_cifar import xla_cpu


def test_the_cap_is_added_to_the_users_flags_on_x86_only():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  assert xla_cpu.cap_isa(env, 'x86_64')
  assert env['XLA_FLAGS'] == '--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX2'
  env = {}
  assert xla_cpu.cap_isa(env, 'AMD64') and env['XLA_FLAGS'] == '--xla_cpu_max_isa=AVX2'
  for machine in ('aarch64', 'arm64'):  # AVX2 means nothing there.
    env = {}
    assert not xla_cpu.cap_isa(env, machine) and env == {}


def test_the_users_own_choice_wins():
  env = {'XLA_FLAGS': '--xla_cpu_max_isa=AVX512'}
  assert not xla_cpu.cap_isa(env, 'x86_64') and env['XLA_FLAGS'] == '--xla_cpu_max_isa=AVX512'
  env = {'JAX_CIFAR_XLA_DEFAULTS': '1'}
  assert not xla_cpu.cap_isa(env, 'x86_64') and 'XLA_FLAGS' not in env


def _python(code: str, **env) -> subprocess.CompletedProcess:
  base = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_CIFAR_XLA_DEFAULTS')}
  return subprocess.run([sys.executable, '-W', 'always', '-c', code], env={**base, **env},
                        capture_output=True, text=True, check=True, timeout=120)


@pytest.mark.skipif(xla_cpu.platform.machine().lower() not in ('x86_64', 'amd64'),
                    reason='the cap is for x86-64')
def test_importing_jax_cifar_first_caps_the_backend_and_after_jax_started_it_warns():
  out = _python('import jax_cifar, os, jax; jax.numpy.ones(2).block_until_ready(); '
                'print(os.environ["XLA_FLAGS"])')
  assert out.stdout.strip() == '--xla_cpu_max_isa=AVX2' and 'RuntimeWarning' not in out.stderr
  late = _python('import jax, os; jax.numpy.ones(2).block_until_ready(); import jax_cifar; '
                 'print(os.environ.get("XLA_FLAGS"))')
  assert late.stdout.strip() == 'None'
  assert 'imported after JAX started its CPU backend' in late.stderr, late.stderr[-2000:]
