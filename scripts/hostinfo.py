"""The machine a benchmark or experiment ran on: CPU model, cores, and the instruction-set flags
that change XLA:CPU's numerics and speed (AVX2 / AVX-512 / AVX512_BF16 / AMX), so that numbers
from two machines are never compared as if they came from one."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform

ISA_FLAGS = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16')


def machine(cpuinfo: str | None = None) -> dict:
  """CPU model, ISA flags, cores, date, platform and load (Linux; fewer keys elsewhere)."""
  info = {'date': datetime.date.today().isoformat(), 'cores': os.cpu_count(),
          'platform': platform.platform(), 'python': platform.python_version()}
  try:
    text = cpuinfo if cpuinfo is not None else pathlib.Path('/proc/cpuinfo').read_text()
    lines = text.splitlines()
    info['cpu'] = next(l.split(':', 1)[1].strip() for l in lines if l.startswith('model name'))
    flags = set(next(l for l in lines if l.startswith('flags')).split(':', 1)[1].split())
    info['isa'] = [f for f in ISA_FLAGS if f in flags]
  except (OSError, StopIteration):
    pass
  try:
    info['load_average'] = [round(v, 2) for v in os.getloadavg()]
  except OSError:
    pass
  return info


def describe(info: dict) -> str:
  """One line: 'AMD EPYC, 2 cores, ISA avx2 avx512f avx512_bf16, load 1.3'."""
  isa = info.get('isa')
  parts = [info.get('cpu', 'CPU model unknown'), f'{info.get("cores")} cores',
           'ISA ' + (' '.join(isa) if isa else ('none of ' + '/'.join(ISA_FLAGS) if isa == []
                                                 else 'unknown'))]
  if info.get('load_average'):
    parts.append(f'load {info["load_average"][0]:.1f}')
  return ', '.join(parts)
