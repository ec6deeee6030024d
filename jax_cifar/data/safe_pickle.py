"""Unpickling that runs no code: only the constructors numpy arrays in CIFAR pickles need.

The official `cifar-100-python` files are Python 2 pickles of dicts of numpy arrays; a crafted
file could name any global (`os.system`, ...), and `pickle.load` would call it. `load` resolves
globals from a fixed allow-list instead and refuses everything else before it runs.
"""

from __future__ import annotations

import codecs
import pickle
from typing import Any, BinaryIO

import numpy as np

try:  # numpy >= 2
  from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
  from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]


class DisallowedGlobal(pickle.UnpicklingError):
  """A global or argument outside the allow-list: refused before anything runs."""


def _latin1_encode(text: str, encoding: str = 'latin1') -> bytes:
  """What Python 3 protocol-2 pickles use to store bytes; only the latin1 codec is allowed."""
  if encoding not in ('latin1', 'latin-1') or not isinstance(text, str):
    raise DisallowedGlobal(f'disallowed _codecs.encode(..., {encoding!r})')
  return codecs.encode(text, 'latin1')


# Exactly the constructors that numpy arrays in the official (py2) and re-saved (py3) files need.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ('numpy.core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy.core.multiarray', 'scalar'): _multiarray.scalar,
    ('numpy._core.multiarray', 'scalar'): _multiarray.scalar,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Refuses every global outside the allow-list, so a crafted file cannot run code."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise DisallowedGlobal(f'disallowed global {module}.{name}') from None

  def persistent_load(self, pid: Any) -> Any:
    raise DisallowedGlobal('disallowed persistent id')


def load(f: BinaryIO, encoding: str = 'latin1') -> Any:
  """pickle.load with the allow-list; DisallowedGlobal for anything outside it."""
  return _RestrictedUnpickler(f, encoding=encoding).load()
