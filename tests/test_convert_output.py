"""The converted folder (convert.save_converted / read_converted): --overwrite replaces only a
previous converter output, atomically, and never a folder of other files; a damaged output is one
error naming it; temps of dead converters are removed, live ones kept."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import TOO_LARGE
from jax_cifar import atomic_folder, convert

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tiny(value: float) -> dict:
  return {'fc': {'kernel': np.full((2, 3), value, np.float32), 'bias': np.zeros(3, np.float32)}}


def _snapshot(root) -> dict:
  """Every path under `root` (and `root` itself) with its bytes, to show nothing changed."""
  if os.path.isfile(root):
    with open(root, 'rb') as f:
      return {'.': f.read()}
  snap = {}
  for folder, dirs, names in os.walk(root):
    for d in dirs:
      snap[os.path.relpath(os.path.join(folder, d), root)] = 'dir'
    for n in names:
      with open(os.path.join(folder, n), 'rb') as f:
        snap[os.path.relpath(os.path.join(folder, n), root)] = f.read()
  return snap


def test_overwrite_replaces_a_previous_output_or_an_empty_folder(tmp_path):
  out = str(tmp_path / 'out')
  convert.save_converted(_tiny(1.0), 'resnet18', out)
  with pytest.raises(FileExistsError, match='exists'):
    convert.save_converted(_tiny(2.0), 'resnet18', out)
  convert.save_converted(_tiny(2.0), 'resnet18', out, overwrite=True)
  assert convert.read_converted(out)[1]['fc.kernel'][0, 0] == 2.0
  assert os.listdir(tmp_path) == ['out']  # neither the temp folder nor the old output is left
  empty = tmp_path / 'empty'
  empty.mkdir()
  convert.save_converted(_tiny(3.0), 'resnet18', str(empty), overwrite=True)
  assert convert.read_converted(str(empty))[1]['fc.kernel'][0, 0] == 3.0


@pytest.mark.parametrize('how', ['no_state', 'cut_arrays', 'cut_orbax_metadata', 'flipped_bit',
                                 'other_conversions_state'])
def test_a_damaged_converted_checkpoint_is_one_error_naming_it(tmp_path, how):
  """model.pretrained naming a damaged converter output (a partly copied folder) had ended in
  46-83 lines of orbax/tensorstore traceback (an audit). A flipped bit in the array data, or the
  state of another conversion under this one's metadata, had been read without a word (other
  weights: the sha256 the converter records now)."""
  out = tmp_path / 'out'
  rng = np.random.default_rng(0)  # Random values: orbax stores them as they are, uncompressed.
  weights = {'fc': {'kernel': rng.standard_normal((512, 100)).astype(np.float32),
                    'bias': np.zeros(100, np.float32)}}
  convert.save_converted(weights, 'resnet18', str(out))
  np.testing.assert_array_equal(convert.read_converted(str(out))[1]['fc.kernel'],
                                weights['fc']['kernel'])
  state = out / 'state'
  if how == 'flipped_bit':
    data = max((p for p in state.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 1
    data.write_bytes(bytes(flipped))
  elif how == 'other_conversions_state':
    weights['fc']['kernel'][0, 0] += 1
    convert.save_converted(weights, 'resnet18', str(tmp_path / 'other'))
    shutil.rmtree(state)
    shutil.copytree(tmp_path / 'other' / 'state', state)
  elif how == 'no_state':
    shutil.rmtree(state)
  elif how == 'cut_arrays':
    for f in [p for p in state.rglob('*') if p.is_file() and '/d/' in str(p)]:
      f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  else:
    f = state / '_METADATA'
    f.write_bytes(f.read_bytes()[:10])
  with pytest.raises(convert.ConversionError) as e:
    convert.read_converted(str(out), 'resnet18')
  message = str(e.value)
  assert '\n' not in message and len(message) < 600, message
  assert message.startswith(f'{out} is a damaged converted checkpoint') and '--overwrite' in message
  # tensorstore ends its errors with the store's JSON spec (a page): the cause before it is kept.
  assert 'tensorstore_spec' not in message and 'recheck_cached' not in message, message
  if how == 'cut_arrays':
    assert 'not valid for value of size' in message, message
  if how in ('flipped_bit', 'other_conversions_state'):
    assert 'its arrays are not the ones converted' in message, message


def test_a_converted_checkpoint_is_found_under_a_home_relative_path(tmp_path, monkeypatch):
  """'~/weights/r18' had been 'no such converted checkpoint' (data.dir expands ~; an audit)."""
  convert.save_converted(_tiny(4.0), 'resnet18', str(tmp_path / 'weights' / 'r18'))
  monkeypatch.setenv('HOME', str(tmp_path))
  assert convert.read_metadata('~/weights/r18', 'resnet18')['arch'] == 'resnet18'
  assert convert.read_converted('~/weights/r18')[1]['fc.kernel'][0, 0] == 4.0
  # ... and written there: --output=~/w had written ./~/w, which model.pretrained=~/w never found.
  monkeypatch.chdir(tmp_path / 'weights')
  convert.save_converted(_tiny(5.0), 'resnet18', '~/written')
  assert not (tmp_path / 'weights' / '~').exists()
  assert convert.read_converted(str(tmp_path / 'written'))[1]['fc.kernel'][0, 0] == 5.0


def test_overwrite_without_an_atomic_swap_falls_back_to_two_renames(tmp_path, monkeypatch):
  out = str(tmp_path / 'out')
  convert.save_converted(_tiny(1.0), 'resnet18', out)
  monkeypatch.setattr(atomic_folder, 'exchange', lambda a, b: False)  # as on macOS or odd file systems
  convert.save_converted(_tiny(2.0), 'resnet18', out, overwrite=True)
  assert convert.read_converted(out)[1]['fc.kernel'][0, 0] == 2.0
  assert os.listdir(tmp_path) == ['out']


def test_temp_folders_of_dead_converters_are_removed_and_live_ones_kept(tmp_path):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  pid, host = dead.stdout.strip(), atomic_folder.HOST
  stale = [f'.out.tmp-{host}-{pid}-0123abcd', f'.out.tmp-{host}-{pid}-0123abcd.old']
  live = f'.out.tmp-{host}-{os.getppid()}-0123abcd'  # pytest's parent is alive: its write goes on
  other = f'.other.tmp-{host}-{pid}-0123abcd'  # another output's
  elsewhere = f'.out.tmp-{host}x-{pid}-0123abcd'  # Another host's: its pid says nothing here.
  # Named by versions before hosts were: possibly another host's, so removed only when a day old.
  unnamed_old, unnamed_recent = f'.out.tmp-{pid}-4567abcd', f'.out.tmp-{pid}-89abcdef'
  for name in stale + [live, other, elsewhere, unnamed_old, unnamed_recent]:
    (tmp_path / name).mkdir()
  day_ago = time.time() - atomic_folder.UNNAMED_HOST_STALE_S - 60
  os.utime(tmp_path / unnamed_old, (day_ago, day_ago))
  convert.save_converted(_tiny(1.0), 'resnet18', str(tmp_path / 'out'))
  assert sorted(os.listdir(tmp_path)) == sorted([live, other, elsewhere, unnamed_recent, 'out'])


def _foreign_outputs(tmp_path) -> dict[str, str]:
  """name -> an --output path holding something the converter did not write."""
  paths = {}
  notes = tmp_path / 'notes'
  notes.mkdir()
  (notes / 'notes.txt').write_text('my thesis')
  paths['notes.txt'] = str(notes)
  mixed = tmp_path / 'mixed'
  convert.save_converted(_tiny(1.0), 'resnet18', str(mixed))
  (mixed / 'notes.txt').write_text('my thesis')
  paths['mixed'] = str(mixed)
  other = tmp_path / 'other'
  (other / 'state').mkdir(parents=True)
  (other / 'state' / 'data').write_text('x')
  (other / 'metadata.json').write_text('{"format": "something else"}')
  paths['other'] = str(other)
  afile = tmp_path / 'afile'
  afile.write_text('my thesis')
  paths['afile'] = str(afile)
  return paths


def test_overwrite_replaces_an_output_that_finder_has_opened(tmp_path):
  """macOS's Finder leaves .DS_Store (and ._NAME on other file systems) in a folder it shows: they
  had been "files the converter did not write", refusing --overwrite (a portability review)."""
  out = tmp_path / 'out'
  convert.save_converted(_tiny(1.0), 'resnet18', str(out))
  (out / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1' + bytes(32))
  (out / '._metadata.json').write_bytes(b'\x00\x05\x16\x07\x00\x02\x00\x00' + bytes(32))
  convert.save_converted(_tiny(2.0), 'resnet18', str(out), overwrite=True)
  assert convert.read_converted(str(out))[1]['fc.kernel'][0, 0] == 2.0
  finder_only = tmp_path / 'finder_only'  # Finder's file alone: as an empty folder.
  finder_only.mkdir()
  (finder_only / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1' + bytes(32))
  convert.save_converted(_tiny(3.0), 'resnet18', str(finder_only), overwrite=True)
  # A user's own `._` file or folder is no Finder file: refused, kept (the diff review).
  for name, make in (('._notes.txt', lambda p: p.write_text('mine')),
                     ('._mine', pathlib.Path.mkdir)):
    make(out / name)
    with pytest.raises(FileExistsError, match=re.escape(name)):
      convert.save_converted(_tiny(4.0), 'resnet18', str(out), overwrite=True)
    assert (out / name).exists()


@pytest.mark.parametrize('name, needle', [('notes.txt', 'notes.txt'), ('mixed', 'notes.txt'),
                                          ('other', 'not a converted checkpoint'),
                                          ('afile', 'not a folder')])
def test_overwrite_refuses_an_output_with_files_the_converter_did_not_write(tmp_path, name,
                                                                           needle):
  path = _foreign_outputs(tmp_path)[name]
  before = _snapshot(path)
  with pytest.raises(FileExistsError, match=needle):
    convert.save_converted(_tiny(2.0), 'resnet18', path, overwrite=True)
  assert _snapshot(path) == before
  assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]  # no temp folder left


def _declaring(tmp_path, shape, meta) -> str:
  """A converter-like folder (zarr layout, no OCDBT) whose one array's .zarray declares `shape`
  over no stored chunks, as a few KB of crafted files can."""
  import json  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'crafted'
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False)) as ckptr:
    ckptr.save(out / 'state', _tiny(1.0))
  (out / 'metadata.json').write_text(json.dumps({'format': 'jax_cifar.convert/1', **meta}))
  zarray = out / 'state' / 'fc.kernel' / '.zarray'
  spec = json.loads(zarray.read_text())
  spec.update(shape=list(shape), fill_value=0.0)
  zarray.write_text(json.dumps(spec))
  for chunk in zarray.parent.iterdir():
    if not chunk.name.startswith('.') and tuple(shape) != (2, 3):
      chunk.unlink()
  return str(out)


def test_a_checkpoint_declaring_more_values_than_its_arch_holds_is_refused_before_reading(
    tmp_path):
  """orbax reads each array whole at the shape its files declare: 54 KB had declared 1.6 GiB,
  and a larger shape crashed the process in C++ (std::bad_alloc), with no error naming the
  folder (a security audit)."""
  out = _declaring(tmp_path, (100_000, 100_000), {'arch': 'resnet18', 'num_classes': 3})
  with pytest.raises(convert.ConversionError) as e:
    convert.read_converted(out, 'resnet18')
  assert str(e.value) == (f'{out}: its arrays declare 10,000,000,003 values, more than a resnet18 '
                          "with a head of 3 classes holds (11,187,651): not a converter's output")
  for num_classes in (10**9, 0, '3', 2.5):
    out = _declaring(tmp_path / str(num_classes), (2, 3), {'arch': 'resnet18',
                                                           'num_classes': num_classes})
    with pytest.raises(convert.ConversionError, match=r'gives num_classes .*, not null or '
                       r'1\.\.100,000'):
      convert.read_converted(out, 'resnet18')
  out = _declaring(tmp_path / 'ok', (2, 3), {'arch': 'resnet18', 'num_classes': 3})
  assert convert.read_converted(out, 'resnet18')[1]['fc.kernel'].shape == (2, 3)  # Within: read.


def test_publish_checks_again_before_replacing_a_folder_that_appeared_meanwhile(tmp_path):
  """A folder that appears at the output path while the converter writes is checked again
  before the swap: refused, it is left as it is, and no temporary folder stays."""
  out = tmp_path / 'out'

  def refuse():
    raise RuntimeError('not a converted output')

  with pytest.raises(RuntimeError, match='not a converted output'):
    with atomic_folder.publish(str(out), refuse) as tmp:
      pathlib.Path(tmp, 'state').write_text('converted')
      out.mkdir()  # Another writer's folder appears while this one writes.
      (out / 'notes.txt').write_text('mine')
  assert sorted(p.name for p in out.iterdir()) == ['notes.txt']
  assert (out / 'notes.txt').read_text() == 'mine'
  assert [p.name for p in tmp_path.iterdir()] == ['out']  # No temp stays.


def test_the_declared_size_limit_is_the_arch_s_own_size(tmp_path):
  """The limit is exact: one value more than the arch holds is refused, as many as it holds is
  read (and then found damaged, its chunks being gone)."""
  # torchvision's resnet18 with a 3-class head: 11,178,051 parameters, + 9,600 BatchNorm
  # running means and variances. _declaring's fc.bias declares 3 more values.
  limit = 11_178_051 + 9_600
  meta = {'arch': 'resnet18', 'num_classes': 3}
  out = _declaring(tmp_path / 'over', (limit - 2, 1), meta)
  with pytest.raises(convert.ConversionError, match=f'declare {limit + 1:,} values'):
    convert.read_converted(out, 'resnet18')
  out = _declaring(tmp_path / 'at', (limit - 3, 1), meta)
  with pytest.raises(convert.ConversionError, match='is a damaged converted checkpoint'):
    convert.read_converted(out, 'resnet18')


def test_a_full_disk_while_writing_is_one_error_and_leaves_no_output(tmp_path):
  """A file-size limit stands for the full disk: orbax's write failed as tensorstore's ValueError
  ([os_error_code=27]), which the converter printed as a bug's 650-line traceback (a review). It
  is one ConversionError naming the output and the reason, and nothing is left there."""
  code = (
      'import resource, signal, sys\n'
      'import numpy as np\n'
      'from jax_cifar import convert\n'
      'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
      'resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n'
      'rng = np.random.default_rng(0)\n'
      'tree = {"fc": {"kernel": rng.random((512, 1000), np.float32), "bias": np.zeros(1000)}}\n'
      'try:\n'
      '  convert.save_converted(tree, "resnet18", sys.argv[1])\n'
      'except convert.ConversionError as e:\n'
      '  print("ERROR", e)\n')
  out = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'r18')], capture_output=True,
                       text=True, timeout=120, check=False, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == (f'ERROR writing {tmp_path / "r18"} failed: {TOO_LARGE}; nothing '
                                'was written there'), out.stdout + out.stderr[-3000:]
  assert 'Event loop is closed' not in out.stderr, out.stderr[-3000:]
  assert sorted(os.listdir(tmp_path)) == []  # No output, no temp folder.


def test_a_sha256_that_is_no_digest_names_the_metadata(tmp_path):
  """A crafted or hand-edited sha256 value had been called damaged arrays (the diff review)."""
  out = tmp_path / 'out'
  convert.save_converted(_tiny(1.0), 'resnet18', str(out))
  meta = json.loads((out / 'metadata.json').read_text())
  assert len(meta['sha256']) == 64
  for bad in (12, 'abc', None):
    (out / 'metadata.json').write_text(json.dumps({**meta, 'sha256': bad}))
    if bad is None:  # (As a folder of a converter before digests: read unchecked.)
      assert convert.read_converted(str(out))[1]['fc.kernel'][0, 0] == 1.0
      continue
    with pytest.raises(convert.ConversionError, match=rf"gives sha256 {bad!r}, not a digest"):
      convert.read_converted(str(out))


def test_a_file_system_that_cannot_fsync_a_folder_still_gets_the_conversion(tmp_path, monkeypatch):
  """A folder's fsync answered EINVAL (SMB/CIFS, WSL's DrvFs): the whole conversion had run, then
  "error: Invalid argument", naming no path, and nothing was kept (a portability review)."""
  import errno  # pylint: disable=import-outside-toplevel
  import stat  # pylint: disable=import-outside-toplevel
  real = os.fsync

  def fsync(fd):
    if stat.S_ISDIR(os.fstat(fd).st_mode):
      raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return real(fd)
  monkeypatch.setattr(os, 'fsync', fsync)
  out = str(tmp_path / 'out')
  convert.save_converted(_tiny(1.0), 'resnet18', out)
  assert convert.read_converted(out)[1]['fc.kernel'][0, 0] == 1.0
  # Another error is not let be, and names the folder.
  monkeypatch.setattr(os, 'fsync', lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, 'I/O')))
  with pytest.raises(OSError) as e:
    convert.save_converted(_tiny(2.0), 'resnet18', str(tmp_path / 'other'))
  assert e.value.errno == errno.EIO and str(tmp_path) in str(e.value.filename)
