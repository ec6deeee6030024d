"""XLA:CPU's instruction set, capped at AVX2 before JAX starts (imported by jax_cifar/__init__).

On an Intel Xeon with AMX and AVX512-FP16 (2026-12-01), XLA:CPU's own AVX-512 code, in the fused
programs of a ResNet-18 train-mode backward with the trainer's CPU options, gave BatchNorm
gradients 1-4 % off (torch float32 and XLA's AVX2 code: 6e-6); test_tent's PyTorch parity failed.
The same programs compiled for AVX2 are exact to float32 rounding and as fast (the heavy
convolutions and dots run in YNNPACK/Eigen kernels, not in this generated code): smoke 827 vs 870
img/s, ResNet-50 at 32 px 181 vs 185 (docs/benchmarks.md). `XLA_FLAGS=--xla_cpu_max_isa=...` or
JAX_CIFAR_XLA_DEFAULTS=1 set by the user win.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

FLAG = '--xla_cpu_max_isa=AVX2'


def _backend_started() -> bool:
  bridge = sys.modules.get('jax._src.xla_bridge')
  return bool(getattr(bridge, '_backends', None))


def cap_isa(environ=os.environ, machine: str | None = None) -> bool:
  """Adds FLAG to XLA_FLAGS on x86-64 unless the user chose otherwise; True if it did."""
  machine = (machine or platform.machine()).lower()
  flags = environ.get('XLA_FLAGS', '')
  if (machine not in ('x86_64', 'amd64') or environ.get('JAX_CIFAR_XLA_DEFAULTS')
      or 'xla_cpu_max_isa' in flags):
    return False
  if environ is os.environ and _backend_started():
    warnings.warn('jax_cifar was imported after JAX started its CPU backend, so XLA:CPU keeps '
                  f'its AVX-512 code (inexact on some Intel CPUs); import jax_cifar first or set '
                  f'XLA_FLAGS={FLAG}', RuntimeWarning, stacklevel=3)
    return False
  environ['XLA_FLAGS'] = f'{flags} {FLAG}'.strip()
  return True
