"""jax_cifar.data.safe_pickle: CIFAR pickles load, crafted ones are refused before anything runs.

Needs no data: the payloads are built here, and cifar100.read_pickle is the reader under test.
"""

import os
import pathlib
import pickle

import numpy as np
import pytest

from jax_cifar.data import cifar100, safe_pickle
from jax_cifar.data.cifar100 import DataError


class _Evil:
  def __init__(self, func, arg):
    self.func, self.arg = func, arg

  def __reduce__(self):
    return self.func, (self.arg,)


def _payloads(marker: pathlib.Path) -> dict[str, bytes]:
  command = f'touch {marker}'
  return {
      'os_system_p2': pickle.dumps(_Evil(os.system, command), protocol=2),
      'os_system_p5': pickle.dumps(_Evil(os.system, command), protocol=5),
      'os_system_inside_dict': pickle.dumps({'data': _Evil(os.system, command)}, protocol=2),
      'builtins_eval_p2': pickle.dumps(_Evil(eval, f'open({str(marker)!r}, "w").close()'), protocol=2),
      'builtins_eval_p5': pickle.dumps(_Evil(eval, f'open({str(marker)!r}, "w").close()'), protocol=5),
      'codecs_encode_other_codec': b'c_codecs\nencode\n(Vx\nVrot13\ntR.',
      'py2_os_system_protocol0': f"cos\nsystem\n(S'{command}'\ntR.".encode(),
      'py2_posix_system_inst': f"(S'{command}'\niposix\nsystem\n.".encode(),
  }


@pytest.mark.parametrize('name', list(_payloads(pathlib.Path('x'))))
def test_malicious_pickle_is_rejected_without_running_it(tmp_path, name):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pkl'
  path.write_bytes(_payloads(marker)[name])
  for encoding in ('latin1', 'bytes'):
    with pytest.raises(DataError) as error:
      cifar100.read_pickle(path, encoding=encoding)
    message = str(error.value)
    assert '\n' not in message and str(path) in message and 'disallowed' in message, message
  assert not marker.exists()


def _load(data: bytes, encoding: str = 'latin1'):
  import io  # pylint: disable=import-outside-toplevel
  return safe_pickle.load(io.BytesIO(data), encoding=encoding)


ARRAYS = {
    'uint8': np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    'int64': np.array([-(2**62), 0, 7], dtype=np.int64),
    'float32_big_endian': np.array([1.5, -2.25], dtype='>f4'),
    'float64_fortran': np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    'transposed': np.arange(6, dtype=np.int16).reshape(2, 3).T,
    'bool': np.array([True, False, True]),
    'complex64': np.array([1 + 2j], dtype=np.complex64),
    'zero_d': np.array(3.0, dtype=np.float16),
    'empty': np.zeros((0, 3), dtype=np.uint32),
}


@pytest.mark.parametrize('protocol', [2, 4, 5])
@pytest.mark.parametrize('encoding', ['latin1', 'bytes'])
def test_plain_arrays_and_scalars_round_trip(protocol, encoding):
  """Every plain number type, byte order and memory order comes back equal, writable and of the
  same dtype, from each pickle protocol numpy uses (2 and 4: _reconstruct; 5: _frombuffer)."""
  content = {**ARRAYS, 'scalar_f32': np.float32(0.5), 'scalar_i64': np.int64(-3),
             'nested': [(np.arange(2, dtype=np.uint8), {'x': 1})]}
  loaded = _load(pickle.dumps(content, protocol=protocol), encoding)
  for name, array in ARRAYS.items():
    got = loaded[name]
    assert type(got) is np.ndarray and got.dtype == array.dtype and got.shape == array.shape, name
    assert np.array_equal(got, array) and got.flags.writeable, name
  assert loaded['scalar_f32'] == np.float32(0.5) and loaded['scalar_f32'].dtype == np.float32
  assert loaded['scalar_i64'] == -3 and loaded['scalar_i64'].dtype == np.int64
  (pair,) = loaded['nested']
  assert np.array_equal(pair[0], [0, 1]) and pair[1] == {'x': 1}


@pytest.mark.parametrize('protocol', [2, 5])
def test_an_object_array_of_raw_bytes_is_refused_before_it_exists(protocol):
  """The attack an allow-list of numpy constructors lets through: a uint64 array's pickle with
  its dtype code changed to 'O8' would load as an object array whose elements are the file's raw
  bytes taken as memory addresses; reading one crashes Python. It must be refused instead."""
  data = pickle.dumps(np.array([0x4141414141414141], dtype=np.uint64), protocol=protocol)
  code = {2: b'X\x02\x00\x00\x00u8', 5: b'\x8c\x02u8'}[protocol]
  assert code in data
  with pytest.raises(safe_pickle.DisallowedGlobal, match="disallowed dtype 'O8'"):
    _load(data.replace(code, code[:-2] + b'O8'))


@pytest.mark.parametrize('value', [
    np.array(['a', 'b']),  # unicode
    np.array([1, None], dtype=object),
    np.zeros(2, dtype=[('a', 'u1'), ('b', 'f4')]),  # structured
    np.array(['2026-11-30'], dtype='datetime64[D]'),
], ids=['unicode', 'object', 'structured', 'datetime'])
@pytest.mark.parametrize('protocol', [2, 5])
def test_arrays_that_are_not_plain_numbers_are_refused(value, protocol):
  with pytest.raises(safe_pickle.DisallowedGlobal, match='disallowed'):
    _load(pickle.dumps({'x': value}, protocol=protocol))


def test_an_array_whose_bytes_do_not_match_its_shape_is_an_error(tmp_path):
  data = pickle.dumps(np.arange(4, dtype=np.uint8), protocol=2)
  assert data.count(b'\x00\x01\x02\x03') == 1
  path = tmp_path / 'test'
  path.write_bytes(data.replace(b'\x04\x00\x00\x00\x00\x01\x02\x03', b'\x03\x00\x00\x00\x00\x01\x02'))
  with pytest.raises(DataError, match='needs 4 bytes, the file has 3'):
    cifar100.read_pickle(path)


def test_numpy_ndarray_cannot_be_called_directly(tmp_path):
  """`numpy.ndarray` is allowed as the name _reconstruct is given; calling it would make an array
  (here an object array) outside the checked path."""
  path = tmp_path / 'p'
  path.write_bytes(b"cnumpy\nndarray\n((I1\ntS'O'\ntR.")  # numpy.ndarray((1,), 'O')
  with pytest.raises(DataError, match='refused unsafe pickle .disallowed call of numpy.ndarray'):
    cifar100.read_pickle(path)
  with pytest.raises(safe_pickle.DisallowedGlobal, match='array class'):  # another "class"
    _load(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\ndtype\n(S'u1'\ntR(I0\ntS'b'\ntR.")


def test_bytes_may_only_be_empty():
  assert _load(pickle.dumps({'e': b''}, protocol=2)) == {'e': b''}
  with pytest.raises(safe_pickle.DisallowedGlobal, match='bytes'):
    _load(b"c__builtin__\nbytes\n(I1000000000000\ntR.")  # bytes(10**12): memory, refused


def test_a_list_that_contains_itself_is_refused():
  cycle = []
  cycle.append(cycle)
  with pytest.raises(safe_pickle.DisallowedGlobal, match='nested deeper'):
    _load(pickle.dumps(cycle, protocol=2))


@pytest.mark.parametrize('protocol', [2, 5])
def test_numpy_arrays_and_names_round_trip(tmp_path, protocol):
  """What the official (protocol 2, py2 byte strings) and re-saved files hold loads unchanged."""
  rng = np.random.default_rng(0)
  content = {b'data': rng.integers(0, 256, (4, 3072), dtype=np.uint8),
             b'fine_labels': [3, 1, 4, 1], b'filenames': [b'a.png', b'b.png'],
             'labels64': np.arange(4, dtype=np.int64), 'scalar': np.float32(0.5)}
  path = tmp_path / 'part'
  path.write_bytes(pickle.dumps(content, protocol=protocol))
  with open(path, 'rb') as f:
    raw = safe_pickle.load(f, encoding='bytes')
  assert np.array_equal(raw[b'data'], content[b'data']) and raw[b'data'].dtype == np.uint8
  assert raw['labels64'].dtype == np.int64 and raw['scalar'] == np.float32(0.5)
  loaded = cifar100.read_pickle(path)  # keys and names as str for either encoding
  assert loaded['fine_labels'] == [3, 1, 4, 1] and loaded['filenames'] == ['a.png', 'b.png']


def test_numpy_globals_outside_the_allow_list_are_refused(tmp_path):
  """Being inside numpy is not enough: only the array constructors are allowed."""
  path = tmp_path / 'p'
  path.write_bytes(b"cnumpy\nload\n(S'/etc/passwd'\ntR.")
  with open(path, 'rb') as f, pytest.raises(safe_pickle.DisallowedGlobal, match='numpy.load'):
    safe_pickle.load(f)


# Hand-written pickles (protocol 4 opcodes) for the attacks below, found in a review.
PROTO = b'\x80\x04'
FROMBUFFER = b'\x8c\x13numpy._core.numeric\x94\x8c\x0b_frombuffer\x94\x93'
ENCODE = b'c_codecs\nencode\n'
EMPTY_BYTES = b'cbuiltins\nbytes\n'


def _u(text: str) -> bytes:
  return b'\x8c' + bytes([len(text)]) + text.encode()


def _shared_lists(n: int) -> bytes:
  """L0 = [(1,)]; L_i = [L_{i-1}, L_{i-1}]: n+1 small lists that stand for 2**n leaves."""
  out = b']K\x01\x85aq\x000'
  for i in range(1, n + 1):
    out += b']h' + bytes([i - 1]) + b'ah' + bytes([i - 1]) + b'aq' + bytes([i]) + b'0'
  return out + b'h' + bytes([n])


@pytest.mark.timeout(120)  # Walked as a tree, it does not fail: it runs for hours.
def test_shared_objects_are_resolved_once():
  """Resolving stand-ins must not walk a shared structure as a tree (2**30 lists here)."""
  loaded = _load(PROTO + _shared_lists(30) + b'.')
  for _ in range(30):
    assert loaded[0] is loaded[1]  # still shared, as plain pickle.load would give it
    loaded = loaded[0]
  assert loaded == [(1,)]


def test_naming_one_large_string_many_times_cannot_multiply_memory():
  """A 1 MB string stored once and encoded 3,000 times would need 3 GB; refused at twice the
  file's size."""
  big = b'X\x00\x00\x10\x00' + b'A' * (1 << 20) + b'r\x01\x00\x00\x00' + b'0'
  one = ENCODE + b'(' + b'j\x01\x00\x00\x00' + _u('latin1') + b'tR'
  with pytest.raises(safe_pickle.DisallowedGlobal, match='more than 2x its own size'):
    _load(PROTO + b']' + big + b'(' + one * 3000 + b'e.')


def test_allowed_functions_and_names_cannot_be_changed_or_returned():
  """pickle's BUILD sets attributes on objects without __setstate__; the module's own functions
  and names must not be among them, and no function or class comes back as data."""
  set_defaults = (PROTO + EMPTY_BYTES + b'N}' + _u('__defaults__') + b'(K\x01ts\x86b0'
                  + EMPTY_BYTES + b'(tR.')
  with pytest.raises(safe_pickle.DisallowedGlobal, match='allowed function'):
    _load(set_defaults)
  assert _load(pickle.dumps({'e': b''}, protocol=2)) == {'e': b''}  # bytes() still takes no args
  with pytest.raises(safe_pickle.DisallowedGlobal, match='state for numpy.ndarray'):
    _load(PROTO + b'cnumpy\nndarray\nN}' + _u('x') + b'K\x01s\x86b.')
  for name in (FROMBUFFER, b'cnumpy\ndtype\n', b'cnumpy\nndarray\n'):
    with pytest.raises(safe_pickle.DisallowedGlobal, match='disallowed object of type'):
      _load(PROTO + name + b'.')


def test_shapes_and_messages_stay_small():
  """Dimensions are machine-sized ints (no 20,000-digit products), and an error message shows a
  bounded excerpt of what the file gave, not all of it."""
  u1 = b'cnumpy\ndtype\n(' + _u('u1') + b'\x89\x88tR'
  huge = (1 << 200).to_bytes(26, 'little')
  with pytest.raises(safe_pickle.DisallowedGlobal, match='disallowed array shape'):
    _load(PROTO + FROMBUFFER + b'(C\x00' + u1 + b'\x8a\x1a' + huge + b'\x85' + _u('C') + b'tR.')
  order = b'X\x00\x00\x10\x00' + b'O' * (1 << 20)
  with pytest.raises(safe_pickle.DisallowedGlobal, match='disallowed array order') as error:
    _load(PROTO + FROMBUFFER + b'(C\x00' + u1 + b'K\x00\x85' + order + b'tR.')
  assert len(str(error.value)) < 200


def test_names_the_file_shares_stay_shared_when_made_str(tmp_path):
  """cifar100.read_pickle makes bytes str: it had decoded a shared object once per place, so 1 MB
  named 5,000 times (or lists of lists shared 6 deep) filled the memory (a security audit)."""
  big, nest = b'n' * 100_000, [b'leaf']
  for _ in range(20):
    nest = [nest, nest]  # 2**20 leaves, 21 lists.
  path = tmp_path / 'test'
  path.write_bytes(pickle.dumps({b'filenames': [big] * 5000, b'nest': nest}, protocol=2))
  raw = cifar100.read_pickle(path)
  names = raw['filenames']
  assert names[0] == 'n' * 100_000 and all(name is names[0] for name in names)
  nest = raw['nest']
  for _ in range(20):
    assert nest[0] is nest[1]
    nest = nest[0]
  assert nest == ['leaf']


def _split_folder(tmp_path: pathlib.Path, labels) -> pathlib.Path:
  folder = tmp_path / 'cifar-100-python'
  folder.mkdir(parents=True)
  split = {b'data': np.zeros((2, 3072), np.uint8), b'fine_labels': labels}
  for name in ('train', 'test'):
    (folder / name).write_bytes(pickle.dumps(split, protocol=2))
  (folder / 'meta').write_bytes(pickle.dumps({b'fine_label_names': [b'x'] * 100,
                                              b'coarse_label_names': [b'y'] * 20}, protocol=2))
  return tmp_path


def _shared_tuples(depth: int, width: int):
  out = 0
  for _ in range(depth):
    out = (out,) * width
  return out


@pytest.mark.parametrize('labels,expected', [
    ([[1, 2], [3]], 'fine_labels is a list of 2 items, expected 2 ints'),  # Ragged: a ValueError.
    (_shared_tuples(4, 60), 'fine_labels is a tuple of 60 items, expected 2 ints'),  # 13M ints.
    ([1, 'x'], 'fine_labels is a list of 2 items, expected 2 ints'),
    ([True, False], 'fine_labels is a list of 2 items, expected 2 ints'),
    ({1: 2}, 'fine_labels is a dict, expected a list of 2 ints'),
])
def test_labels_are_a_flat_list_of_ints_or_an_array(tmp_path, labels, expected):
  """np.asarray had expanded labels the file shares (tuples of tuples of one tuple) to gigabytes,
  and raised a traceback on ragged lists (a security audit)."""
  with pytest.raises(DataError) as error:
    cifar100.load_split(_split_folder(tmp_path, labels), 'test', download=False)
  assert expected in str(error.value) and '\n' not in str(error.value), error.value
  ok = cifar100.load_split(_split_folder(tmp_path / 'ok', [3, np.int64(4)]), 'test', download=False)
  assert ok.labels.tolist() == [3, 4]


def test_a_missing_key_lists_a_bounded_few_of_any_type(tmp_path):
  path = tmp_path / 'cifar-100-python'
  _split_folder(tmp_path, [1, 2])
  (path / 'test').write_bytes(pickle.dumps({1: 1, b'a' * 1000: 2, **{f'k{i}': i for i in range(50)}},
                                           protocol=2))
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', download=False)
  message = str(error.value)  # sorted() of int and str keys had been a TypeError (an audit).
  assert "missing key 'data' (has " in message and '(52 in all)' in message, message
  assert len(message) < 600 and '\n' not in message


@pytest.mark.parametrize('split,expected', [
    ({b'data': np.zeros((2, 3072), np.uint8), b'fine_labels': [3, 100]},
     'fine_labels outside [0, 100)'),
    ({b'data': np.zeros((2, 3072), np.uint8), b'fine_labels': [-1, 3]},
     'fine_labels outside [0, 100)'),
    ({b'data': np.zeros((2, 3072), np.uint8), b'fine_labels': [3, 4], b'coarse_labels': [0, 20]},
     'coarse_labels outside [0, 20)'),
    ({b'data': np.zeros((2, 3072), np.float32), b'fine_labels': [3, 4]},
     'data is float32 (2, 3072), expected uint8 [N, 3072]'),
    ({b'data': np.zeros((2, 3, 32, 32), np.uint8), b'fine_labels': [3, 4]},
     'data is uint8 (2, 3, 32, 32), expected uint8 [N, 3072]'),
])
def test_labels_out_of_range_and_pixels_not_uint8_rows_are_refused(tmp_path, split, expected):
  """Label 100 would index past a 100-way output; float pixels would be cast, not refused."""
  folder = _split_folder(tmp_path, [1, 2]) / 'cifar-100-python'
  (folder / 'test').write_bytes(pickle.dumps(split, protocol=2))
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', download=False)
  assert expected in str(error.value) and '\n' not in str(error.value), error.value


@pytest.mark.parametrize('module, name', [
    *(('builtins', n) for n in ('getattr', 'setattr', '__import__', 'exec', 'compile', 'open',
                                'type', 'object', 'globals', 'memoryview')),
    ('__builtin__', 'getattr'), ('copyreg', '_reconstructor'), ('functools', 'partial')])
def test_every_global_outside_the_allow_list_is_refused(module, name):
  """A GLOBAL opcode alone, what any gadget chain (getattr -> __subclasses__ -> ...) starts with,
  is refused by name: one more allowed global would be enough to reach code execution."""
  with pytest.raises(safe_pickle.DisallowedGlobal, match=f'disallowed global {module}.{name}'):
    _load(f'c{module}\n{name}\n.'.encode())


class _View:
  """Pickles as numpy's _frombuffer over `data`: one bytes object, memoised once by pickle."""

  def __init__(self, data: bytes):
    self.data = data

  def __reduce__(self):
    return (np._core.numeric._frombuffer,  # pylint: disable=protected-access
            (self.data, np.dtype('u1'), (len(self.data),), 'C'))


def test_arrays_sharing_one_large_buffer_cannot_multiply_memory():
  """100 arrays over one memoised 1 MB buffer would build 100 MB from a 1 MB file: refused."""
  big = b'A' * (1 << 20)
  payload = pickle.dumps([_View(big) for _ in range(100)], protocol=4)
  assert len(payload) < 2 << 20
  with pytest.raises(safe_pickle.DisallowedGlobal, match='more than 2x its own size'):
    _load(payload)
  assert _load(pickle.dumps([_View(big)], protocol=4))[0].size == 1 << 20


def test_a_file_that_cannot_be_read_is_not_called_corrupt(tmp_path, monkeypatch):
  """A pickle the user may not read had been reported as 'corrupt or truncated pickle
  (PermissionError ...)': a reason to download again, for a file that is intact (a review)."""
  (tmp_path / 'train').mkdir()
  with pytest.raises(DataError, match=r'/train: cannot be read \(Is a directory\)$'):
    cifar100.read_pickle(tmp_path / 'train')
  path = tmp_path / 'test'
  path.write_bytes(pickle.dumps({'a': 1}, protocol=2))

  def denied(file, *args, **kwargs):
    raise PermissionError(13, 'Permission denied', str(file))

  monkeypatch.setattr(cifar100, 'open', denied, raising=False)  # Found before the builtin.
  with pytest.raises(DataError, match=r'/test: cannot be read \(Permission denied\)$'):
    cifar100.read_pickle(path)
  monkeypatch.undo()
  assert cifar100.read_pickle(path) == {'a': 1}
