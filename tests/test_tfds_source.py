"""data.source=tfds end to end: a real tfds cifar100 built offline, read as the pickles read.

The archive is the official binary layout (per record: coarse label byte, fine label byte, 3072 CHW
pixel bytes) holding the first images of the real pickles; tfds builds it from its manual_dir in
a subprocess (tests/_build_tfds_offline.py) that refuses every network call. Only its size/sha256
differ from the official file, so that script registers those with tfds.
"""

import errno
import io
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
from _build_tfds_offline import no_network
from conftest import require_module

from jax_cifar import errors
from jax_cifar.configs import default
from jax_cifar.data import cifar100, prepare_tfds, tfds_source

N_TRAIN, N_TEST = 200, 100

# tensorflow hidden as if not installed (find_spec -> None): reading works, building says why not.
_READ_WITHOUT_TF = '''
import sys
import numpy as np

class Hide:
  def __init__(self, finder):
    self.finder = finder
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] == 'tensorflow':
      return None
    return self.finder.find_spec(name, path, target)
  def invalidate_caches(self):
    getattr(self.finder, 'invalidate_caches', lambda: None)()

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
from jax_cifar.data import cifar100, tfds_source
split = tfds_source.load_tfds('test', sys.argv[1])
assert not [m for m in sys.modules if m.split('.')[0] == 'tensorflow'], 'tensorflow was imported'
np.savez(sys.argv[2], images=split.images, labels=split.labels, coarse=split.coarse_labels)
from jax_cifar.data import prepare_tfds
try:
  prepare_tfds.prepare(sys.argv[2] + '.tfds')
except cifar100.DataError as e:
  assert 'building tfds cifar100 needs tensorflow: pip install tensorflow-cpu' in str(e), e
else:
  raise AssertionError('prepare ran without tensorflow')
'''


def _records(pickle_path: pathlib.Path, n: int) -> bytes:
  raw = cifar100.read_pickle(pickle_path)
  coarse = np.asarray(raw['coarse_labels'][:n], np.uint8)[:, None]
  fine = np.asarray(raw['fine_labels'][:n], np.uint8)[:, None]
  return np.concatenate([coarse, fine, raw['data'][:n]], axis=1).tobytes()


def write_binary_archive(pickles: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  """cifar-100-binary.tar.gz in the official layout, from the first images of each pickle."""
  fine, coarse = cifar100.class_names(pickles.parent)
  members = {
      'train.bin': _records(pickles / 'train', N_TRAIN),
      'test.bin': _records(pickles / 'test', N_TEST),
      'fine_label_names.txt': ('\n'.join(fine) + '\n').encode(),
      'coarse_label_names.txt': ('\n'.join(coarse) + '\n').encode(),
  }
  archive = out / prepare_tfds.ARCHIVE
  with tarfile.open(archive, 'w:gz') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo('cifar-100-binary/' + name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return archive


@pytest.fixture(scope='module')
def manual_dir(cifar_dir, tmp_path_factory) -> pathlib.Path:
  folder = tmp_path_factory.mktemp('manual')
  write_binary_archive(cifar_dir / 'cifar-100-python', folder)
  return folder


def build_offline(data_dir: pathlib.Path, manual: pathlib.Path, *flags: str) -> dict:
  """prepare_tfds.prepare in a fresh process with the network refused: its JSON result."""
  require_module('tensorflow')  # tfds needs it to extract and encode; reading does not
  require_module('tensorflow_datasets')
  script = pathlib.Path(__file__).with_name('_build_tfds_offline.py')
  result = subprocess.run([sys.executable, str(script), str(data_dir), str(manual), *flags],
                          env=_env(), capture_output=True, text=True, timeout=300, check=False)
  lines = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')]
  assert result.returncode == 0 and lines, result.stderr[-3000:]
  return json.loads(lines[-1][len('RESULT '):])


def _env() -> dict:
  paths = [str(pathlib.Path(__file__).parents[1]), os.environ.get('PYTHONPATH', '')]
  return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


@pytest.fixture(scope='module')
def tfds_dir(manual_dir, tmp_path_factory) -> pathlib.Path:
  """tfds cifar100 built by prepare_tfds from manual_dir, with every network call refused."""
  data_dir = tmp_path_factory.mktemp('tfds')
  result = build_offline(data_dir, manual_dir, '--register_archive')
  assert result == {'built': str(data_dir / 'cifar100' / '3.0.2'), 'error': None,
                    'network_attempts': []}
  built = pathlib.Path(result['built'])
  assert sorted(p.name for p in built.glob('*.array_record*')) == [
      'cifar100-test.array_record-00000-of-00001', 'cifar100-train.array_record-00000-of-00001']
  return data_dir


def test_tfds_source_gives_the_pickles_images_and_labels_in_file_order(cifar_dir, tfds_dir):
  cfg = default.get_config().data
  cfg.update(source='tfds', tfds_data_dir=str(tfds_dir), val_fraction=0.0)
  splits = cifar100.get_splits(cfg)
  assert splits['val'] is None
  for name, n in (('train', N_TRAIN), ('test', N_TEST)):
    local = cifar100.load_split(cifar_dir, name, download=False).subset(np.arange(n))
    got = splits[name]
    assert got.images.dtype == np.uint8 and got.images.shape == (n, 32, 32, 3)
    np.testing.assert_array_equal(got.images, local.images)
    np.testing.assert_array_equal(got.labels, local.labels)
    np.testing.assert_array_equal(got.coarse_labels, local.coarse_labels)
    assert got.labels.dtype == got.coarse_labels.dtype == np.int32


def test_tfds_source_holds_out_the_same_validation_images_as_local(cifar_dir, tfds_dir):
  cfg = default.get_config().data
  cfg.update(source='tfds', tfds_data_dir=str(tfds_dir), val_fraction=0.5, split_seed=3)
  splits = cifar100.get_splits(cfg)
  local = cifar100.load_split(cifar_dir, 'train', download=False).subset(np.arange(N_TRAIN))
  train_idx, val_idx = cifar100.stratified_split(local.labels, 0.5, seed=3)
  assert len(val_idx) > 0
  np.testing.assert_array_equal(splits['val'].images, local.images[val_idx])
  np.testing.assert_array_equal(splits['train'].labels, local.labels[train_idx])


def test_reading_the_tfds_source_needs_no_tensorflow(cifar_dir, tfds_dir, tmp_path):
  out = tmp_path / 'read.npz'
  result = subprocess.run([sys.executable, '-c', _READ_WITHOUT_TF, str(tfds_dir), str(out)],
                          env=_env(), capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  local = cifar100.load_split(cifar_dir, 'test', download=False).subset(np.arange(N_TEST))
  with np.load(out) as read:
    np.testing.assert_array_equal(read['images'], local.images)
    np.testing.assert_array_equal(read['labels'], local.labels)
    np.testing.assert_array_equal(read['coarse'], local.coarse_labels)


@pytest.mark.parametrize('damage', ['missing', 'cut'])
def test_a_damaged_build_is_named_with_the_folder_to_remove(tfds_dir, manual_dir, tmp_path, damage):
  """A shard deleted or cut short had been called 'not prepared', and preparing again (as told)
  kept the folder as it was, so the user went round in a circle (an audit)."""
  data_dir = tmp_path / 'tfds'
  shutil.copytree(tfds_dir, data_dir)
  built = data_dir / 'cifar100' / '3.0.2'
  shard = built / 'cifar100-train.array_record-00000-of-00001'
  if damage == 'missing':
    shard.unlink()
  else:
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
  with pytest.raises(cifar100.DataError) as error:
    tfds_source.load_tfds('train', str(data_dir))
  message = str(error.value)
  assert f'tfds cifar100 in {built} is damaged' in message and f'remove {built} and run' in message
  assert '\n' not in message and 'not prepared' not in message
  tfds_source.load_tfds('test', str(data_dir))  # The intact split still reads.
  result = build_offline(data_dir, manual_dir, '--register_archive')  # Preparing again says so.
  assert result['built'] is None and f'remove {built}' in result['error'], result


def test_a_cut_dataset_info_is_named_with_the_folder_to_remove(tfds_dir, manual_dir, tmp_path):
  """A cut dataset_info.json had been 'not prepared: run prepare_tfds', and prepare_tfds then
  ended in a 57-line protobuf traceback (an audit)."""
  data_dir = tmp_path / 'tfds'
  shutil.copytree(tfds_dir, data_dir)
  built = data_dir / 'cifar100' / '3.0.2'
  info = built / 'dataset_info.json'
  info.write_bytes(info.read_bytes()[:200])
  with pytest.raises(cifar100.DataError) as error:
    tfds_source.load_tfds('train', str(data_dir))
  with pytest.raises(cifar100.DataError) as again:
    prepare_tfds.prepare(str(data_dir), str(manual_dir))
  for message in (str(error.value), str(again.value)):
    assert f'tfds cifar100 in {built} is damaged' in message and f'remove {built} and run' in message
    assert '\n' not in message and 'not prepared' not in message


def test_a_tfds_data_dir_too_deep_or_missing_is_named_not_built_into(tfds_dir, manual_dir,
                                                                     tmp_path, monkeypatch):
  """The dataset's own folder (cifar100/ or cifar100/3.0.2/) had been told to run prepare_tfds
  there, which builds a nested second copy; a typo had been told the same; '~/...' was not
  expanded, though prepare_tfds expands it (an audit)."""
  data_dir = tmp_path / 'tfds'  # A copy: a regressed guard would build into it, not the fixture.
  shutil.copytree(tfds_dir, data_dir)
  for deep in (data_dir / 'cifar100', data_dir / 'cifar100' / '3.0.2'):
    for read in (lambda d: tfds_source.load_tfds('test', d),
                 lambda d: prepare_tfds.prepare(d, str(manual_dir))):
      with no_network(), pytest.raises(
          cifar100.DataError, match=f"is the prepared dataset's own folder, .*: give {data_dir}$"):
        read(str(deep))
  with pytest.raises(cifar100.DataError, match=f'tfds data_dir {tmp_path / "typo"} does not exist'):
    tfds_source.load_tfds('test', str(tmp_path / 'typo'))
  assert not (tmp_path / 'typo').exists()
  monkeypatch.setenv('HOME', str(tmp_path))
  home = tfds_source.load_tfds('test', '~/tfds')
  np.testing.assert_array_equal(home.labels, tfds_source.load_tfds('test', str(tfds_dir)).labels)


def test_a_tfrecord_build_is_named_as_such_not_as_damaged(tfds_dir, tmp_path):
  """tfds' default format has no random access: a good tfrecord build must not be called damaged
  (a review). Its dataset_info.json is what tfds reads the format from."""
  data_dir = tmp_path / 'tfds'
  shutil.copytree(tfds_dir, data_dir)
  info = data_dir / 'cifar100' / '3.0.2' / 'dataset_info.json'
  meta = json.loads(info.read_text())
  assert meta['fileFormat'] == 'array_record'
  info.write_text(json.dumps({**meta, 'fileFormat': 'tfrecord'}))
  with pytest.raises(cifar100.DataError) as error:
    tfds_source.load_tfds('train', str(data_dir))
  assert 'is prepared as tfrecord, not array_record' in str(error.value), error.value
  assert 'damaged' not in str(error.value)


def test_a_cut_dataset_info_under_tfds_data_dir_is_named_there(tfds_dir, tmp_path):
  """Without data.tfds_data_dir tfds reads $TFDS_DATA_DIR; the damaged-build check had looked in
  ~/tensorflow_datasets instead (a review). A fresh process: tfds reads it when imported."""
  data_dir = tmp_path / 'tfds'
  shutil.copytree(tfds_dir, data_dir)
  built = data_dir / 'cifar100' / '3.0.2'
  info = built / 'dataset_info.json'
  info.write_bytes(info.read_bytes()[:200])
  code = ('from jax_cifar.data import cifar100, tfds_source\n'
          'try:\n  tfds_source.load_tfds("train", "")\n'
          'except cifar100.DataError as e:\n  print("ERROR", e)\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                       env={**_env(), 'TFDS_DATA_DIR': str(data_dir)})
  assert f'tfds cifar100 in {built} is damaged' in out.stdout, (out.stdout, out.stderr[-2000:])


def test_the_not_prepared_hint_names_the_folder_tfds_looked_in(tmp_path):
  """With $TFDS_DATA_DIR set, the hint had named ~/tensorflow_datasets (an audit). A fresh
  process: tfds reads the variable when it is imported."""
  require_module('tensorflow_datasets')
  code = ('from jax_cifar.data import cifar100, tfds_source\n'
          'try:\n  tfds_source.load_tfds("train", "")\n'
          'except cifar100.DataError as e:\n  print("ERROR", e)\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                       env={**_env(), 'TFDS_DATA_DIR': str(tmp_path / 'elsewhere')})
  assert f'prepare_tfds --data_dir={tmp_path / "elsewhere"}`' in out.stdout, (
      out.stdout, out.stderr[-2000:])


def test_a_gs_folder_without_gcsfs_says_so_not_that_the_dataset_is_not_prepared():
  """README's TPU recipe reads a gs:// tfds folder; without tensorflow (EPATH_USE_TF=0: etils'
  path then) that needs gcsfs, and the message had said "not prepared" (a cluster audit). A fresh
  process in which gcsfs cannot be imported, as where it is not installed."""
  code = ('import sys\nsys.modules["gcsfs"] = None\n'
          'from jax_cifar.data import cifar100, tfds_source\n'
          'try:\n  tfds_source.load_tfds("test", "gs://some-bucket/tensorflow_datasets")\n'
          'except cifar100.DataError as e:\n  print("ERROR", e)\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                       env={**_env(), 'EPATH_USE_TF': '0'})
  assert out.stdout.startswith('ERROR tfds data_dir gs://some-bucket/tensorflow_datasets: reading '
                               'gs:// without tensorflow needs gcsfs: pip install gcsfs'), (
      out.stdout, out.stderr[-2000:])
  assert 'not prepared as' not in out.stdout


def test_prepare_refuses_an_unofficial_archive_without_downloading(manual_dir, tmp_path):
  result = build_offline(tmp_path / 'tfds', manual_dir)  # tfds's own checksum of the real file
  assert result['built'] is None and result['network_attempts'] == []
  assert 'not the official cifar-100-binary.tar.gz' in result['error']
  assert '58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec' in result['error']
  assert '\n' not in result['error']
  assert not list((tmp_path / 'tfds').glob('cifar100/*/*.array_record*'))


def test_prepare_with_an_empty_manual_dir_is_an_error_not_a_download(tmp_path):
  with no_network() as attempts, pytest.raises(cifar100.DataError) as error:
    prepare_tfds.prepare(str(tmp_path / 'tfds'), str(tmp_path))
  assert attempts == []
  assert f'{tmp_path}: no cifar-100-binary.tar.gz here' in str(error.value)
  assert not (tmp_path / 'tfds').exists()


def test_prepare_command_line_prints_one_error_line_and_fails(tmp_path, capsys):
  with no_network() as attempts:
    code = prepare_tfds.main(['--data_dir', str(tmp_path / 'tfds'), '--manual_dir', str(tmp_path)])
  assert code == 1 and attempts == []
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1 and 'cifar-100-binary.tar.gz' in err


@pytest.mark.parametrize('flag', ['--data_dir', '--manual_dir'])
def test_prepare_refuses_an_empty_folder_flag_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                                 flag):
  """An unset shell variable: `--data_dir=` had built the dataset in the current folder, and
  `--manual_dir=` downloaded it (a flag audit)."""
  monkeypatch.chdir(tmp_path)
  argv = {'--data_dir': str(tmp_path / 'tfds'), '--manual_dir': str(tmp_path)}
  argv[flag] = ''
  with no_network() as attempts, pytest.raises(SystemExit) as e:
    prepare_tfds.main([f'{k}={v}' for k, v in argv.items()])
  assert e.value.code == 2 and attempts == [] and list(tmp_path.iterdir()) == []
  assert f'{flag}: is empty' in capsys.readouterr().err


def test_prepare_without_a_way_to_the_server_fails_at_once_in_one_line_and_creates_nothing(
    tmp_path):
  """Offline without --manual_dir, tfds's download had retried for minutes, then ended in a
  traceback and left empty folders (an audit). A proxy that refuses connections (as the
  environment's proxy settings are honoured) stands for a machine with no network."""
  with socket.socket() as probe:  # A free port, closed again: connecting to it is refused.
    probe.bind(('127.0.0.1', 0))
    proxy = f'http://127.0.0.1:{probe.getsockname()[1]}'
  env = {**_env(), 'HTTPS_PROXY': proxy, 'https_proxy': proxy, 'NO_PROXY': '', 'no_proxy': ''}
  out = subprocess.run([sys.executable, '-m', 'jax_cifar.data.prepare_tfds', '--data_dir',
                        str(tmp_path / 'tfds')], capture_output=True, text=True, timeout=120,
                       env=env)
  assert out.returncode == 1, out.stderr[-3000:]
  assert out.stderr == (f'error: cannot reach {prepare_tfds.URL} ([Errno {errno.ECONNREFUSED}] '
                        f'{os.strerror(errno.ECONNREFUSED)}); {prepare_tfds.OFFLINE}\n')
  assert not (tmp_path / 'tfds').exists()


def test_a_server_that_answers_badly_is_left_to_tfds_not_called_unreachable():
  """Only a refused connection, a failed name lookup, a timeout or no route says "offline": a
  proxy that answers nonsense (or a TLS certificate urllib does not trust but requests may) had
  been reported as unreachable, or escaped as a traceback (a review). A fresh process, as urllib
  reads the proxy settings once."""
  with socket.socket() as server:
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    proxy = f'http://127.0.0.1:{server.getsockname()[1]}'

    def answer_badly():
      conn, _ = server.accept()
      with conn:
        conn.recv(4096)
        conn.sendall(b'not http at all\r\n\r\n')
    thread = threading.Thread(target=answer_badly, daemon=True)
    thread.start()
    code = 'from jax_cifar.data import prepare_tfds\nprepare_tfds._check_reachable(10)\nprint("ok")\n'
    env = {**_env(), 'HTTPS_PROXY': proxy, 'https_proxy': proxy, 'NO_PROXY': '', 'no_proxy': ''}
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60,
                         env=env)
    thread.join(timeout=10)
  assert out.returncode == 0 and out.stdout == 'ok\n', out.stderr[-2000:]


def test_prepare_into_a_folder_that_cannot_be_made_is_one_line(manual_dir, tmp_path):
  """An OS error of the data_dir (here: a folder inside a file) had been a traceback."""
  (tmp_path / 'file').write_text('')
  code = subprocess.run([sys.executable, '-m', 'jax_cifar.data.prepare_tfds', '--data_dir',
                         str(tmp_path / 'file' / 'tfds'), '--manual_dir', str(manual_dir)],
                        capture_output=True, text=True, timeout=120, env=_env())
  assert code.returncode == 1 and code.stderr.startswith('error: '), code.stderr[-3000:]
  assert 'Traceback' not in code.stderr and code.stderr.count('\n') == 1, code.stderr


def test_records_are_put_in_file_order_and_a_build_with_missing_or_repeated_ids_is_refused():
  """Records come back sorted by the number in their id; ids that are not exactly 0..N-1 (a partial
  or foreign build) are a DataError, not a silently shifted split."""
  order = tfds_source._tfds_order  # pylint: disable=protected-access
  records = [{'id': b'train_00002'}, {'id': 'train_00000'}, {'id': b'train_00001'}]
  np.testing.assert_array_equal(order(records, 'here'), [1, 2, 0])
  for ids in (['train_00000', 'train_00002'], ['train_00000', 'train_00000'], ['train_00001']):
    with pytest.raises(cifar100.DataError, match='not 0..'):
      order([{'id': i} for i in ids], 'here')
  with pytest.raises(cifar100.DataError, match="unexpected example ids such as 'x'"):
    order([{'id': 'x'}], 'here')


def test_an_os_error_while_building_is_named_as_the_os_says_not_as_a_failed_download(
    manual_dir, tmp_path, monkeypatch):
  """A full disk while tfds writes the build is the OS's error (disk full), not 'cannot
  download'."""
  from tensorflow_datasets.core import dataset_builder  # pylint: disable=g-import-not-at-top

  def disk_full(self, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / 'tfds'))

  monkeypatch.setattr(dataset_builder.DatasetBuilder, 'download_and_prepare', disk_full)
  with no_network() as attempts, pytest.raises(OSError) as error:
    prepare_tfds.prepare(str(tmp_path / 'tfds'), str(manual_dir))
  assert attempts == [] and not isinstance(error.value, cifar100.DataError)
  assert errors.user_message(error.value) == (
      f'{tmp_path / "tfds"}: {os.strerror(errno.ENOSPC)} (disk full)')


def test_prepare_expands_a_home_relative_data_dir_before_checking_it(tfds_dir, manual_dir,
                                                                     tmp_path, monkeypatch):
  """prepare_tfds --data_dir ~/...: the dataset's own folder given that way is refused as given
  absolutely, and an existing build is found where ~ points, not under a './~' of the current
  folder (a mutation audit: the expansion had been untested)."""
  shutil.copytree(tfds_dir, tmp_path / 'tfds')
  monkeypatch.setenv('HOME', str(tmp_path))
  (tmp_path / 'cwd').mkdir()
  monkeypatch.chdir(tmp_path / 'cwd')
  for deep in ('~/tfds/cifar100', '~/tfds/cifar100/3.0.2'):
    with no_network(), pytest.raises(
        cifar100.DataError, match=f"is the prepared dataset's own folder, .*: give {tmp_path / 'tfds'}$"):
      prepare_tfds.prepare(deep, str(manual_dir))
  result = build_offline('~/tfds', manual_dir, '--register_archive')  # (HOME and cwd: inherited.)
  assert result == {'built': str(tmp_path / 'tfds' / 'cifar100' / '3.0.2'), 'error': None,
                    'network_attempts': []}
  assert list((tmp_path / 'cwd').iterdir()) == []
