"""Getting cifar-100-python/ in place, and what is refused on the way: archives (extracted next to
themselves), downloads (md5, Ctrl-C, offline), data folders one level off or mistyped, and broken
or hostile files (truncated pickles and archives, unsafe pickles, paths escaping the archive).

Made of real rows: a tiny tree cut from the real test split ($JAX_CIFAR_DATA_DIR; skipped without
it, a failure under CI). The real files themselves: test_cifar100.py.
"""

import functools
import hashlib
import http.server
import os
import pathlib
import pickle
import shutil
import socket
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest

from jax_cifar import atomic_folder
from jax_cifar.configs import default
from jax_cifar.data import cifar100, fetch, tfds_source
from jax_cifar.data.cifar100 import DataError
from conftest import needs_proc, TOO_LARGE


@pytest.fixture(scope='module')
def data_dir(cifar_dir) -> pathlib.Path:
  """The real data (conftest's `cifar_dir`: skipped without it, a failure under CI)."""
  return cifar_dir


@pytest.fixture(scope='module')
def real_test_raw(data_dir) -> dict:
  return cifar100.read_pickle(data_dir / 'cifar-100-python' / 'test')


@pytest.fixture(scope='module')
def small_tree(data_dir, real_test_raw, tmp_path_factory) -> pathlib.Path:
  """A folder with a tiny cifar-100-python/ made of real rows, pickled the way Python 3 re-saves them."""
  root = tmp_path_factory.mktemp('small') / 'cifar-100-python'
  root.mkdir()
  for name, rows in (('train', slice(0, 40)), ('test', slice(40, 60))):
    raw = {
        'batch_label': f'{name} batch',
        'filenames': real_test_raw['filenames'][rows],
        'fine_labels': real_test_raw['fine_labels'][rows],
        'coarse_labels': real_test_raw['coarse_labels'][rows],
        'data': real_test_raw['data'][rows],
    }
    (root / name).write_bytes(pickle.dumps(raw, protocol=2))
  shutil.copy(data_dir / 'cifar-100-python' / 'meta', root / 'meta')
  return root


def make_archive(tree: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
  mode = {'.gz': 'w:gz', '.xz': 'w:xz', '.tar': 'w'}[dest.suffix]
  with tarfile.open(dest, mode) as tar:
    tar.add(tree, arcname='cifar-100-python')
  return dest


def assert_one_line(error: pytest.ExceptionInfo, *needles: str) -> None:
  message = str(error.value)
  assert message and '\n' not in message, message
  for needle in needles:
    assert needle in message, message


@pytest.fixture
def http_dir(tmp_path):
  """Serves a folder over HTTP on 127.0.0.1; yields (folder, base url)."""
  served = tmp_path / 'served'
  served.mkdir()

  class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  handler = functools.partial(QuietHandler, directory=str(served))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield served, f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()
  server.server_close()


@pytest.mark.parametrize('problem', ['short_fine', 'short_coarse', 'not_names'])
def test_meta_with_the_wrong_number_of_names_is_named(tmp_path, small_tree, problem):
  """Fewer names than classes had silently shortened the per-class table (zip) and broken the
  confusion figure after prediction (an audit)."""
  shutil.copytree(small_tree, tmp_path / 'cifar-100-python')
  meta_path = tmp_path / 'cifar-100-python' / 'meta'
  meta = cifar100.read_pickle(meta_path)
  key = 'coarse_label_names' if problem == 'short_coarse' else 'fine_label_names'
  meta[key] = meta[key][:-1] if problem != 'not_names' else list(range(100))
  meta_path.write_bytes(pickle.dumps(meta, protocol=2))
  with pytest.raises(DataError) as error:
    cifar100.class_names(tmp_path)
  assert_one_line(error, str(meta_path), key, 'expected')


@pytest.mark.parametrize('what', ['folder', 'archive'])
def test_a_data_folder_one_level_too_high_names_the_one_below_before_any_download(
    tmp_path, small_tree, what):
  (tmp_path / 'cifar').mkdir()
  if what == 'folder':
    shutil.copytree(small_tree, tmp_path / 'cifar' / 'cifar-100-python')
  else:
    make_archive(small_tree, tmp_path / 'cifar' / 'cifar-100-python.tar.gz')
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', url='http://127.0.0.1:9/never', md5='x')
  assert_one_line(error, f'but {tmp_path / "cifar"} holds one: give {tmp_path / "cifar"}')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['cifar']  # Nothing downloaded.


def test_load_split_finds_the_data_as_the_trainer_does_and_never_creates_a_mistyped_folder(
    tmp_path, small_tree, monkeypatch):
  """A run's config.data.dir is '' when $JAX_CIFAR_DATA_DIR gave the data: load_split('') had been
  a traceback from os.listdir(''), and a mistyped folder a new folder to download into (an audit)."""
  shutil.copytree(small_tree, tmp_path / 'cifar-100-python')
  monkeypatch.setenv('JAX_CIFAR_DATA_DIR', str(tmp_path))
  assert len(cifar100.load_split('', 'test', download=False)) == 20
  typo = tmp_path / 'typo' / 'data'
  with pytest.raises(DataError) as error:
    cifar100.load_split(typo, 'test', url='http://127.0.0.1:9/never', md5='x')
  assert_one_line(error, f'data_dir {typo} is not an existing folder (create it')
  assert not (tmp_path / 'typo').exists()
  # A relative one says from where it was read: a run's config.json keeps data.dir as given, and
  # a resume from another folder had only been told to download again (a new-user walkthrough).
  monkeypatch.chdir(tmp_path)
  with pytest.raises(DataError) as error:
    cifar100.load_split('typo/data', 'test', url='http://127.0.0.1:9/never', md5='x')
  assert_one_line(error, f'data_dir typo/data is not an existing folder, which is relative: read '
                  f'from the current folder {tmp_path} (create it', 'e.g. by its absolute path)')


def test_a_split_of_no_images_is_named_so(tmp_path, small_tree):
  shutil.copytree(small_tree, tmp_path / 'cifar-100-python')
  raw = cifar100.read_pickle(small_tree / 'test')
  raw.update(data=raw['data'][:0], fine_labels=[], coarse_labels=[])
  (tmp_path / 'cifar-100-python' / 'test').write_bytes(pickle.dumps(raw, protocol=2))
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', download=False)
  assert_one_line(error, 'holds no images')


@pytest.mark.parametrize('name, label', [('train', 'testing batch 1 of 1'),
                                         ('test', 'training batch 1 of 1')])
def test_a_split_file_labelled_as_the_other_split_is_refused(tmp_path, small_tree, name, label):
  """train and test swapped (or one copied over the other) had trained on the test images without
  a word (a bad-input review); the official files say which split they hold in batch_label."""
  shutil.copytree(small_tree, tmp_path / 'cifar-100-python')
  raw = cifar100.read_pickle(small_tree / name)
  (tmp_path / 'cifar-100-python' / name).write_bytes(pickle.dumps(dict(raw, batch_label=label)))
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, name, download=False)
  other = 'test' if name == 'train' else 'train'
  assert_one_line(error, f'holds the {other} split', f'not the {name} split', 'swapped or copied')
  raw = cifar100.read_pickle(small_tree / other)  # The right label passes.
  (tmp_path / 'cifar-100-python' / other).write_bytes(pickle.dumps(dict(raw, batch_label=label)))
  assert len(cifar100.load_split(tmp_path, other, download=False)) == len(raw['fine_labels'])


# ------------------------------------------------------------------ hostile and broken input
# (every unsafe-pickle payload: tests/test_safe_pickle.py)


def test_malicious_split_file_in_a_folder_is_rejected(tmp_path, small_tree):
  folder = tmp_path / 'cifar-100-python'
  shutil.copytree(small_tree, folder)
  marker = tmp_path / 'pwned'  # {'data': os.system('touch MARKER')} as a protocol-0 pickle:
  (folder / 'test').write_bytes(f"(dp0\nS'data'\np1\ncos\nsystem\n(S'touch {marker}'\ntRs.".encode())
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', download=False)
  assert_one_line(error, str(folder / 'test'))
  assert not marker.exists()


@pytest.mark.parametrize('keep', [1, 100, 0.5, -1])
def test_truncated_pickle_gives_one_line_error(tmp_path, small_tree, keep):
  content = (small_tree / 'test').read_bytes()
  cut = int(len(content) * keep) if isinstance(keep, float) else keep % len(content)
  path = tmp_path / 'test'
  path.write_bytes(content[:cut])
  with pytest.raises(DataError) as error:
    cifar100.read_pickle(path)
  assert_one_line(error, str(path))


@needs_proc  # (And RLIMIT_AS, which macOS does not enforce.)
def test_running_out_of_memory_while_reading_is_not_called_a_corrupt_file(tmp_path):
  """Under `ulimit -v`, evaluate had said "corrupt or truncated pickle (MemoryError: )", which
  would have a user delete good data (a resource review)."""
  path = tmp_path / 'train'
  with open(path, 'wb') as f:  # 300 MB of images, as the real train file's 150 MB.
    pickle.dump({'data': np.zeros((100_000, 3072), np.uint8), 'fine_labels': [0]}, f, protocol=2)
  code = ('import resource, sys\nfrom jax_cifar.data import cifar100\n'
          'usage = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()\n'
          'resource.setrlimit(resource.RLIMIT_AS, (usage + 150 * 2**20, resource.RLIM_INFINITY))\n'
          'try:\n  cifar100.read_pickle(sys.argv[1])\n'
          'except cifar100.DataError as e:\n  print(e)\n')
  out = subprocess.run([sys.executable, '-c', code, str(path)], capture_output=True, text=True,
                       timeout=120)
  assert out.stdout.strip() == (
      f'{path}: out of memory while reading it (the file is not at fault; about 293 MiB of '
      'images): free some memory or raise the limit (ulimit -v)'), (out.stdout, out.stderr[-1500:])
  assert cifar100.read_pickle(path)['data'].shape == (100_000, 3072)  # With memory: it reads.


def test_a_small_file_that_declares_a_huge_object_is_corrupt_not_short_of_memory(tmp_path):
  """14 bytes declaring a 1 TiB string had been "out of memory ... the file is not at fault"
  (the diff review)."""
  path = tmp_path / 'test'
  path.write_bytes(b'\x80\x04\x8e' + (2**40).to_bytes(8, 'little') + b'abc')
  with pytest.raises(DataError, match=r'corrupt pickle \(it declares more data than memory '
                                      r'holds: MemoryError\)$'):
    cifar100.read_pickle(path)


@pytest.mark.parametrize('suffix', ['.tar.gz', '.tar.xz', '.tar'])
def test_archive_is_extracted_next_to_itself(tmp_path, small_tree, suffix):
  archive = make_archive(small_tree, tmp_path / f'cifar-100-python{suffix}')
  split = cifar100.load_split(tmp_path, 'test', download=False)
  assert len(split) == 20 and split.images.shape == (20, 32, 32, 3)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['cifar-100-python', archive.name])


@pytest.mark.parametrize('suffix', ['.tar.gz', '.tar.xz', '.tar'])
def test_truncated_archive_gives_one_line_error_and_no_folder(tmp_path, small_tree, suffix):
  archive = make_archive(small_tree, tmp_path / f'cifar-100-python{suffix}')
  archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'train', download=False)
  assert_one_line(error, str(archive))
  assert [p.name for p in tmp_path.iterdir()] == [archive.name]  # no half folder, no temp folder


def test_extraction_on_a_full_disk_blames_the_disk_not_the_archive(tmp_path, small_tree):
  """A file-size limit (as a full disk, EFBIG) had been 'corrupt, truncated or unsafe archive'
  (an audit). A fresh process, so that the limit binds only it."""
  archive = make_archive(small_tree, tmp_path / 'cifar-100-python.tar.xz')
  code = ('import resource, sys\n'
          'resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n'
          'from jax_cifar.data import cifar100\n'
          'try:\n  cifar100.load_split(sys.argv[1], "test", download=False)\n'
          'except cifar100.DataError as e:\n  print("ERROR", e)\n')
  out = subprocess.run([sys.executable, '-c', code, str(tmp_path)], capture_output=True,
                       text=True, timeout=120, check=False)
  message = out.stdout.strip()
  assert message.startswith(f'ERROR {archive}: cannot extract it into {tmp_path} ({TOO_LARGE}); '
                            'extract it elsewhere'), (out.stdout, out.stderr[-2000:])
  assert 'corrupt' not in message
  assert [p.name for p in tmp_path.iterdir()] == [archive.name]  # No half folder, no temp.


def test_temps_of_killed_downloads_and_extractions_are_removed_and_live_ones_kept(
    tmp_path, small_tree, http_dir):
  """A killed extraction had left a hidden 113 MB folder each time, never removed; a killed
  download its .part file (an audit)."""
  served, url = http_dir
  archive = make_archive(small_tree, served / 'cifar-100-python.tar.gz')
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  target = tmp_path / 'download'
  target.mkdir()
  host = atomic_folder.HOST
  stale_folder = target / f'.cifar-100-python.tmp-{host}-{dead}-0123abcd'
  stale_folder.mkdir()
  (stale_folder / 'train').write_bytes(b'half')
  (target / f'.cifar-100-python.tar.gz.tmp-{host}-{dead}-4567cdef').write_bytes(b'half a download')
  live = target / f'.cifar-100-python.tmp-{host}-{os.getppid()}-0123abcd'  # pytest's parent.
  live.mkdir()
  # Another host of a multi-host run, extracting into the shared folder: its pid means nothing here.
  elsewhere = target / f'.cifar-100-python.tmp-{host}x-{dead}-0123abcd'
  elsewhere.mkdir()
  split = cifar100.load_split(target, 'test', url=f'{url}/cifar-100-python.tar.gz',
                              md5=hashlib.md5(archive.read_bytes()).hexdigest())
  assert len(split) == 20
  assert sorted(p.name for p in target.iterdir()) == sorted(
      ['cifar-100-python', 'cifar-100-python.tar.gz', live.name, elsewhere.name])


def test_incomplete_folder_next_to_an_archive_is_reported_not_overwritten(tmp_path, small_tree):
  make_archive(small_tree, tmp_path / 'cifar-100-python.tar.gz')
  (tmp_path / 'cifar-100-python').mkdir()
  (tmp_path / 'cifar-100-python' / 'train').write_bytes(b'partial')
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', download=False)
  assert_one_line(error, str(tmp_path / 'cifar-100-python'), 'incomplete')
  assert (tmp_path / 'cifar-100-python' / 'train').read_bytes() == b'partial'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['cifar-100-python', 'cifar-100-python.tar.gz']


@pytest.mark.parametrize('download', [False, True])
def test_incomplete_folder_alone_is_named_with_its_missing_files_before_any_download(
    tmp_path, small_tree, download):
  # A folder without `meta` read as "no data here", or started a 169 MB download that then
  # failed on the folder.
  folder = tmp_path / 'cifar-100-python'
  folder.mkdir()
  for name in ('train', 'test'):
    (folder / name).write_bytes((small_tree / name).read_bytes())
  with pytest.raises(DataError) as error:  # An unreachable URL: a download attempt would say so.
    cifar100.load_split(tmp_path, 'train', download=download, url='http://127.0.0.1:9/x.tar.gz')
  assert_one_line(error, str(folder), 'incomplete (no meta)')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['cifar-100-python']
  # Given the folder itself, it had said that no folder was there, or downloaded into it.
  with pytest.raises(DataError) as error:
    cifar100.load_split(folder, 'train', download=download, url='http://127.0.0.1:9/x.tar.gz')
  assert_one_line(error, str(folder), 'an incomplete cifar-100-python/ (no meta)',
                  'or remove it and give its parent folder')  # (Not the parent alone: a review.)
  assert sorted(p.name for p in folder.iterdir()) == ['test', 'train']


# ------------------------------------------------------------------ downloads


def test_download_with_wrong_md5_fails_and_leaves_nothing(tmp_path, small_tree, http_dir):
  served, url = http_dir
  make_archive(small_tree, served / 'cifar-100-python.tar.gz')
  target = tmp_path / 'download'
  target.mkdir()  # The user's folder: one that does not exist is refused, not created.
  with pytest.raises(DataError) as error:
    cifar100.load_split(target, 'test', url=f'{url}/cifar-100-python.tar.gz', md5='0' * 32)
  assert_one_line(error, 'md5', str(target / 'cifar-100-python.tar.gz'))
  assert list(target.iterdir()) == []


def test_a_download_stopped_by_ctrl_c_leaves_no_partial_file(tmp_path, small_tree, http_dir,
                                                              monkeypatch):
  """Only network and file errors removed the temporary .part file: a Ctrl-C left up to 170 MB
  under a random name that nothing reused or removed (a review)."""
  served, url = http_dir
  make_archive(small_tree, served / 'cifar-100-python.tar.gz')
  import tqdm  # pylint: disable=import-outside-toplevel  (a dependency)

  def interrupted(self, n=1):
    raise KeyboardInterrupt

  monkeypatch.setattr(tqdm.tqdm, 'update', interrupted)  # After the first chunk is written.
  target = tmp_path / 'download'
  with pytest.raises(KeyboardInterrupt):
    fetch.download_archive(f'{url}/cifar-100-python.tar.gz', target / 'cifar-100-python.tar.gz',
                              '0' * 32)
  assert list(target.iterdir()) == []


def test_download_with_right_md5_is_kept_and_extracted(tmp_path, small_tree, http_dir):
  served, url = http_dir
  archive = make_archive(small_tree, served / 'cifar-100-python.tar.gz')
  md5 = hashlib.md5(archive.read_bytes()).hexdigest()
  target = tmp_path / 'download'
  target.mkdir()  # The user's folder: one that does not exist is refused, not created.
  split = cifar100.load_split(target, 'test', url=f'{url}/cifar-100-python.tar.gz', md5=md5)
  assert len(split) == 20
  assert (target / 'cifar-100-python.tar.gz').read_bytes() == archive.read_bytes()
  assert sorted(p.name for p in target.iterdir()) == ['cifar-100-python', 'cifar-100-python.tar.gz']


def test_get_splits_downloads_from_the_module_constants(tmp_path, small_tree, http_dir, monkeypatch):
  served, url = http_dir
  archive = make_archive(small_tree, served / 'cifar-100-python.tar.gz')
  monkeypatch.setattr(fetch, 'CIFAR100_URL', f'{url}/cifar-100-python.tar.gz')
  monkeypatch.setattr(fetch, 'CIFAR100_MD5', hashlib.md5(archive.read_bytes()).hexdigest())
  cfg = default.get_config().data
  (tmp_path / 'cache').mkdir()  # A folder the user names must exist; the download fills it.
  cfg.dir, cfg.val_fraction = str(tmp_path / 'cache'), 0.0
  splits = cifar100.get_splits(cfg)
  assert (len(splits['train']), splits['val'], len(splits['test'])) == (40, None, 20)


def test_offline_download_says_where_to_put_the_data(tmp_path):
  with socket.socket() as sock:  # a port with nobody listening
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'train', url=f'http://127.0.0.1:{port}/cifar-100-python.tar.gz')
  assert_one_line(error, 'cifar-100-python', str(tmp_path))
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'train', download=False)
  assert_one_line(error, str(tmp_path), 'download is off')


def test_resolve_data_dir_prefers_config_then_env_then_cache(tmp_path, monkeypatch):
  (tmp_path / 'env').mkdir()
  (tmp_path / 'cfg').mkdir()
  monkeypatch.setenv('JAX_CIFAR_DATA_DIR', str(tmp_path / 'env'))
  assert cifar100.resolve_data_dir(str(tmp_path / 'cfg')) == tmp_path / 'cfg'
  assert cifar100.resolve_data_dir() == tmp_path / 'env'
  monkeypatch.delenv('JAX_CIFAR_DATA_DIR')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  cache = cifar100.resolve_data_dir()
  assert cache == tmp_path / 'home' / '.cache' / 'jax_cifar' and cache.is_dir()


def test_mistyped_data_dir_is_an_error_and_creates_nothing(tmp_path, monkeypatch):
  for configured, env in ((str(tmp_path / 'typo' / 'cifar'), ''), ('', str(tmp_path / 'typo'))):
    monkeypatch.setenv('JAX_CIFAR_DATA_DIR', env)
    with pytest.raises(DataError) as error:
      cifar100.resolve_data_dir(configured)
    assert_one_line(error, 'is not an existing folder', str(tmp_path / 'typo'))
    assert not (tmp_path / 'typo').exists()


def test_unprepared_tfds_gives_one_line_error_how_to_prepare(tmp_path):
  with pytest.raises(DataError) as error:
    tfds_source.load_tfds('train', str(tmp_path))
  assert_one_line(error, 'tfds build cifar100', str(tmp_path))
  assert not (tmp_path / 'downloads').exists()


def test_the_superclass_table_is_cifar100s_own(data_dir):
  """cifar100.FINE_TO_COARSE (evaluate's superclasses, whatever classes a split holds) agrees with
  every image's fine and coarse labels in the real pickles, and names all 20 superclasses."""
  for split in ('train', 'test'):
    s = cifar100.load_split(data_dir, split)
    np.testing.assert_array_equal(cifar100.superclass_table('local')[s.labels], s.coarse_labels)
  assert sorted(set(cifar100.FINE_TO_COARSE.tolist())) == list(range(cifar100.NUM_COARSE_CLASSES))


def test_an_extraction_temp_below_the_data_folder_is_not_named_as_the_data_folder(
    tmp_path, small_tree):
  """The hint for a data folder one level too high leaves out hidden folders: an extraction's
  temp holds a complete cifar-100-python/ just before its rename, and is no data folder to give
  (a mutation audit)."""
  temp = tmp_path / f'.cifar-100-python.tmp-{atomic_folder.HOST}-{os.getpid()}-0123abcd'
  shutil.copytree(small_tree, temp / 'cifar-100-python')
  with pytest.raises(DataError) as error:
    fetch.find_or_fetch(tmp_path, download=False)
  assert_one_line(error, 'here and download is off')
  assert 'holds one' not in str(error.value)
