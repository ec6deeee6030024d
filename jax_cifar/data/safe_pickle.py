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

A small file must not cost much either: everything built counts against twice the file's size,
objects the file shares are resolved once, dimensions are machine-sized ints, messages quote a
bounded excerpt of what the file gave, and the allowed functions cannot be given attributes or
state (pickle's BUILD) nor come back as data. Long doubles ('f16', 'c32') are refused: their
layout differs between platforms, and CIFAR files never hold them.
"""

from __future__ import annotations

import codecs
import contextvars
import io
import math
import os
import pickle
import reprlib
from typing import Any, BinaryIO

import numpy as np

# dtype codes numpy pickles for plain numbers: kind + item size.
PLAIN_DTYPES = frozenset(f'{k}{n}' for k, sizes in (('b', '1'), ('i', '1248'), ('u', '1248'),
                                                    ('f', '248'), ('c', '8'))
                         for n in sizes) | {'c16'}
MAX_DEPTH = 32  # Containers nested deeper than this (or a cycle) are refused.
MAX_DIMS = 64  # numpy's own limit on an array's number of dimensions.
# What a load may build (arrays, bytes) in all: twice the file, plus some slack for small files.
BUDGET_FACTOR, BUDGET_SLACK = 2, 1 << 20

_REPR = reprlib.Repr()  # Bounded: the file chose the values these messages show.
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40
_BUDGET: contextvars.ContextVar[list[int]] = contextvars.ContextVar('safe_pickle_budget')


class DisallowedGlobal(pickle.UnpicklingError):
  """A global, argument or array outside the allow-list: refused before anything is built."""


def _spend(nbytes: int) -> None:
  """Counts what this load builds; a few KB naming one large string many times is refused."""
  left = _BUDGET.get()
  left[0] -= nbytes
  if left[0] < 0:
    raise DisallowedGlobal(f'the file builds more than {BUDGET_FACTOR}x its own size in data')


def _latin1_encode(text: str, encoding: str = 'latin1') -> bytes:
  """What Python 3 protocol-2 pickles use to store bytes; only the latin1 codec is allowed."""
  if encoding not in ('latin1', 'latin-1') or not isinstance(text, str):
    raise DisallowedGlobal(f'disallowed _codecs.encode(..., {_REPR.repr(encoding)})')
  _spend(len(text))
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
    if not isinstance(code, str) or code not in PLAIN_DTYPES:
      raise DisallowedGlobal(f'disallowed dtype {_REPR.repr(code)} (plain numbers only)')
    self.dtype = np.dtype(code)

  def __setstate__(self, state: Any) -> None:
    # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
    if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
      raise DisallowedGlobal('disallowed dtype state (sub-arrays or fields)')
    order = _text(state[1])
    if order not in ('|', '<', '>', '='):
      raise DisallowedGlobal(f'disallowed dtype byte order {_REPR.repr(state[1])}')
    if order in ('<', '>') and self.dtype.itemsize > 1:
      self.dtype = self.dtype.newbyteorder(order)


def _dtype(value: Any) -> np.dtype:
  if not isinstance(value, _Dtype) or getattr(value, 'dtype', None) is None:  # NEWOBJ: no __init__
    raise DisallowedGlobal(f'disallowed dtype argument {type(value).__name__}')
  return value.dtype


def _from_bytes(data: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
  """A writable array of `shape` over exactly as many raw bytes as it needs (one copy at most)."""
  if not isinstance(data, (str, bytes, bytearray)):
    raise DisallowedGlobal(f'disallowed array data of type {type(data).__name__}')
  if (not isinstance(shape, tuple) or len(shape) > MAX_DIMS
      or not all(type(n) is int and 0 <= n < 2**62 for n in shape)):  # pylint: disable=unidiomatic-typecheck
    raise DisallowedGlobal(f'disallowed array shape {_REPR.repr(shape)}')
  _spend(len(data))
  # A Python 2 str read with encoding='latin1' holds the bytes as latin1 characters.
  data = bytearray(data, 'latin1') if isinstance(data, str) else bytearray(data)
  if len(data) != math.prod(shape) * dtype.itemsize:
    raise ValueError(f'array of shape {shape} and dtype {dtype} needs '
                     f'{math.prod(shape) * dtype.itemsize} bytes, the file has {len(data)}')
  return np.frombuffer(data, dtype).reshape(shape, order=order)


class _NdarrayName:
  """What the global `numpy.ndarray` resolves to: a name _reconstruct may be given, never a
  class a file could call to make an array of its choosing."""

  __slots__ = ()

  def __call__(self, *args: Any, **kwargs: Any):
    raise DisallowedGlobal('disallowed call of numpy.ndarray (only _reconstruct may name it)')

  def __setstate__(self, state: Any) -> None:
    raise DisallowedGlobal('disallowed state for numpy.ndarray')


_NDARRAY = _NdarrayName()


class _Array:
  """Stands in for numpy's _reconstruct(ndarray, (0,), b'b'); __setstate__ builds the array."""

  def __init__(self, cls: Any, shape: Any = (0,), typecode: Any = b'b'):
    del shape, typecode
    if cls is not _NDARRAY:
      raise DisallowedGlobal(f'disallowed array class {_REPR.repr(cls)}')
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
    raise DisallowedGlobal(f'disallowed array order {_REPR.repr(order)}')
  if order == 'K' and axis_order is not None:  # The buffer holds a C array, transposed after.
    if (not isinstance(axis_order, tuple) or not isinstance(shape, tuple)
        or sorted(axis_order) != list(range(len(shape)))):
      raise DisallowedGlobal(f'disallowed axis order {_REPR.repr(axis_order)}')
    return _from_bytes(buf, _dtype(dtype), shape, 'C').transpose(axis_order)
  return _from_bytes(buf, _dtype(dtype), shape, 'C' if order == 'K' else order)


class _Allowed:
  """An allowed function as the pickle sees it: callable, but no attribute or state of it can
  be set (pickle's BUILD would otherwise set attributes on the module's own functions)."""
  __slots__ = ('_fn',)

  def __init__(self, fn):
    object.__setattr__(self, '_fn', fn)

  def __call__(self, *args: Any) -> Any:
    return self._fn(*args)

  def __setattr__(self, name: str, value: Any) -> None:
    raise DisallowedGlobal('disallowed attribute on an allowed function')

  def __setstate__(self, state: Any) -> None:
    raise DisallowedGlobal('disallowed state for an allowed function')


# Every global the official (py2) and re-saved (py3, any protocol) files name, and its stand-in.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, '_reconstruct'): _Array for m in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(m, 'scalar'): _Allowed(_scalar) for m in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(m, '_frombuffer'): _Allowed(_frombuffer) for m in ('numpy.core.numeric', 'numpy._core.numeric')},
    ('numpy', 'ndarray'): _NDARRAY,
    ('numpy', 'dtype'): _Dtype,
    ('_codecs', 'encode'): _Allowed(_latin1_encode),
    ('__builtin__', 'bytes'): _Allowed(_empty_bytes),
    ('builtins', 'bytes'): _Allowed(_empty_bytes),
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


_ATOMS = {int, float, complex, bool, str, bytes, bytearray, type(None)}
_DATA = (np.ndarray, np.generic, np.dtype)


def _resolve(obj: Any, depth: int = 0, done: dict | None = None) -> Any:
  """The loaded structure with every stand-in replaced by what it built. An object the file
  shares between places is resolved once (`done`, by id), so sharing cannot multiply the work;
  anything that is not data (a function, a class, a stand-in name) is refused."""
  done = {} if done is None else done
  if id(obj) in done:
    return done[id(obj)][1]
  if depth > MAX_DEPTH:
    raise DisallowedGlobal(f'containers nested deeper than {MAX_DEPTH} (or a cycle)')
  if type(obj) in _ATOMS or isinstance(obj, _DATA):
    return obj
  if isinstance(obj, (_Array, _Dtype)):
    out = getattr(obj, 'array' if isinstance(obj, _Array) else 'dtype', None)
    if out is None:  # Never given its state, or made without __init__ (NEWOBJ).
      name = type(obj).__name__[1:].lower()  # 'array' or 'dtype'
      raise DisallowedGlobal(f'{"an" if name == "array" else "a"} {name} made without its '
                             'arguments or state')
  elif isinstance(obj, dict):
    out = {_resolve(k, depth + 1, done): _resolve(v, depth + 1, done) for k, v in obj.items()}
  elif isinstance(obj, (list, tuple, set, frozenset)):
    if set(map(type, obj)) <= _ATOMS:  # Labels and file names: nothing to replace inside.
      out = obj
    else:
      items = [_resolve(v, depth + 1, done) for v in obj]
      out = items if isinstance(obj, list) else type(obj)(items)
  else:
    raise DisallowedGlobal(f'disallowed object of type {type(obj).__name__} in the data')
  done[id(obj)] = (obj, out)  # obj kept alive, so its id is not reused during this walk.
  return out


def _file_size(f: BinaryIO) -> int:
  """Bytes from f's position to its end (0 when it cannot tell: only the slack is allowed)."""
  try:
    return max(0, os.fstat(f.fileno()).st_size - f.tell())
  except (AttributeError, OSError, io.UnsupportedOperation):
    pass
  try:
    here = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(here)
    return max(0, end - here)
  except (AttributeError, OSError, io.UnsupportedOperation):
    return 0


def load(f: BinaryIO, encoding: str = 'latin1') -> Any:
  """pickle.load with the allow-list and checked arrays; DisallowedGlobal for anything else."""
  token = _BUDGET.set([BUDGET_FACTOR * _file_size(f) + BUDGET_SLACK])
  try:
    return _resolve(_RestrictedUnpickler(f, encoding=encoding).load())
  finally:
    _BUDGET.reset(token)
