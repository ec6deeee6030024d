"""Unpickling that runs no code and builds only plain numeric numpy arrays (CIFAR's pickles).

The official `cifar-100-python` files are Python 2 pickles of dicts of numpy arrays. A crafted
file could name any global (`os.system`, ...), and `pickle.load` would call it. An allow-list of
numpy's own constructors is not enough either: numpy rebuilds an array from raw bytes plus a dtype
whose pickled state the file controls, so a file can ask for an *object* array of raw bytes,
whose elements are then attacker-chosen memory addresses (reading one crashes the process).

So `load` hands the pickle stand-ins instead of numpy's constructors. They record what the file
asks for; an array is built, with `np.frombuffer`, only after its dtype is checked to be a plain
number type (bool, int, uint, float, complex) with no fields or sub-arrays, and its shape against
its byte count. Anything else raises DisallowedGlobal before any array exists.
"""

from __future__ import annotations

import codecs
import math
import pickle
from typing import Any, BinaryIO

import numpy as np

# dtype codes numpy pickles for plain numbers: kind + item size.
PLAIN_DTYPES = frozenset(f'{k}{n}' for k, sizes in (('b', '1'), ('i', '1248'), ('u', '1248'),
                                                    ('f', '248'), ('c', '8'))
                         for n in sizes) | {'c16'}
MAX_DEPTH = 32  # Containers nested deeper than this (or a cycle) are refused.


class DisallowedGlobal(pickle.UnpicklingError):
  """A global, argument or array outside the allow-list: refused before anything is built."""


def _latin1_encode(text: str, encoding: str = 'latin1') -> bytes:
  """What Python 3 protocol-2 pickles use to store bytes; only the latin1 codec is allowed."""
  if encoding not in ('latin1', 'latin-1') or not isinstance(text, str):
    raise DisallowedGlobal(f'disallowed _codecs.encode(..., {encoding!r})')
  return codecs.encode(text, 'latin1')


def _text(value: Any) -> Any:
  """Python 2 strings arrive as bytes with encoding='bytes'."""
  return value.decode('latin1') if isinstance(value, bytes) else value


def _empty_bytes(*args: Any) -> bytes:
  """How Python 3 protocol-2 pickles store b'' (bytes()); bytes(n) and the like are refused."""
  if args:
    raise DisallowedGlobal('disallowed bytes(...) with arguments')
  return b''


class _Dtype:
  """Stands in for np.dtype(code, align, copy); its pickled state may only set the byte order."""

  def __init__(self, code: Any, align: Any = False, copy: Any = False):
    del align, copy
    code = _text(code)
    if code not in PLAIN_DTYPES:
      raise DisallowedGlobal(f'disallowed dtype {code!r} (plain numbers only)')
    self.dtype = np.dtype(code)

  def __setstate__(self, state: Any) -> None:
    # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
    if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
      raise DisallowedGlobal('disallowed dtype state (sub-arrays or fields)')
    order = _text(state[1])
    if order not in ('|', '<', '>', '='):
      raise DisallowedGlobal(f'disallowed dtype byte order {state[1]!r}')
    if order in ('<', '>') and self.dtype.itemsize > 1:
      self.dtype = self.dtype.newbyteorder(order)


def _dtype(value: Any) -> np.dtype:
  if not isinstance(value, _Dtype):
    raise DisallowedGlobal(f'disallowed dtype argument {type(value).__name__}')
  return value.dtype


def _from_bytes(data: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
  """A writable array of `shape` over exactly as many raw bytes as it needs (one copy at most)."""
  if isinstance(data, str):  # A Python 2 str read with encoding='latin1'.
    data = bytearray(data, 'latin1')
  elif isinstance(data, bytes):
    data = bytearray(data)
  if not isinstance(data, bytearray):
    raise DisallowedGlobal(f'disallowed array data of type {type(data).__name__}')
  if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
    raise DisallowedGlobal(f'disallowed array shape {shape!r}')
  if len(data) != math.prod(shape) * dtype.itemsize:
    raise ValueError(f'array of shape {shape} and dtype {dtype} needs '
                     f'{math.prod(shape) * dtype.itemsize} bytes, the file has {len(data)}')
  return np.frombuffer(data, dtype).reshape(shape, order=order)


class _NdarrayName:
  """What the global `numpy.ndarray` resolves to: a name _reconstruct may be given, never a
  class a file could call to make an array of its choosing."""

  def __call__(self, *args: Any, **kwargs: Any):
    raise DisallowedGlobal('disallowed call of numpy.ndarray (only _reconstruct may name it)')


_NDARRAY = _NdarrayName()


class _Array:
  """Stands in for numpy's _reconstruct(ndarray, (0,), b'b'); __setstate__ builds the array."""

  def __init__(self, cls: Any, shape: Any = (0,), typecode: Any = b'b'):
    del shape, typecode
    if cls is not _NDARRAY:
      raise DisallowedGlobal(f'disallowed array class {cls!r}')
    self.array: np.ndarray | None = None

  def __setstate__(self, state: Any) -> None:
    # (version, shape, dtype, is_fortran, data)
    if not isinstance(state, tuple) or len(state) != 5:
      raise DisallowedGlobal('disallowed array state')
    _, shape, dtype, fortran, data = state
    self.array = _from_bytes(data, _dtype(dtype), shape, 'F' if fortran else 'C')


def _scalar(dtype: Any, data: Any) -> np.generic:
  """numpy's multiarray.scalar(dtype, raw bytes): one plain number."""
  return _from_bytes(data, _dtype(dtype), (), 'C')[()]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
  """numpy's protocol-5 form (`pickle.HIGHEST_PROTOCOL`): raw bytes, dtype, shape, order."""
  if order not in ('C', 'F', 'K'):
    raise DisallowedGlobal(f'disallowed array order {order!r}')
  if order == 'K' and axis_order is not None:  # The buffer holds a C array, transposed after.
    if (not isinstance(axis_order, tuple) or not isinstance(shape, tuple)
        or sorted(axis_order) != list(range(len(shape)))):
      raise DisallowedGlobal(f'disallowed axis order {axis_order!r}')
    return _from_bytes(buf, _dtype(dtype), shape, 'C').transpose(axis_order)
  return _from_bytes(buf, _dtype(dtype), shape, 'C' if order == 'K' else order)


# Every global the official (py2) and re-saved (py3, any protocol) files name, and its stand-in.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, '_reconstruct'): _Array for m in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(m, 'scalar'): _scalar for m in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(m, '_frombuffer'): _frombuffer for m in ('numpy.core.numeric', 'numpy._core.numeric')},
    ('numpy', 'ndarray'): _NDARRAY,
    ('numpy', 'dtype'): _Dtype,
    ('_codecs', 'encode'): _latin1_encode,
    ('__builtin__', 'bytes'): _empty_bytes,
    ('builtins', 'bytes'): _empty_bytes,
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


_ATOMS = {int, float, bool, str, bytes, type(None)}


def _resolve(obj: Any, depth: int = 0) -> Any:
  """The loaded structure with every stand-in replaced by what it built."""
  if depth > MAX_DEPTH:
    raise DisallowedGlobal(f'containers nested deeper than {MAX_DEPTH} (or a cycle)')
  if isinstance(obj, _Array):
    if obj.array is None:
      raise DisallowedGlobal('an array without its state')
    return obj.array
  if isinstance(obj, _Dtype):
    return obj.dtype
  if isinstance(obj, dict):
    return {_resolve(k, depth + 1): _resolve(v, depth + 1) for k, v in obj.items()}
  if isinstance(obj, (list, tuple, set, frozenset)):
    if set(map(type, obj)) <= _ATOMS:  # Labels and file names: nothing to replace inside.
      return obj
    items = [_resolve(v, depth + 1) for v in obj]
    return items if isinstance(obj, list) else type(obj)(items)
  return obj


def load(f: BinaryIO, encoding: str = 'latin1') -> Any:
  """pickle.load with the allow-list and checked arrays; DisallowedGlobal for anything else."""
  return _resolve(_RestrictedUnpickler(f, encoding=encoding).load())
