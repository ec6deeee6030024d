"""Tests of jax_cifar.data.cifar100 on the real CIFAR-100 files (no mocks).

The real data is found through $JAX_CIFAR_DATA_DIR (a folder holding cifar-100-python/). Without
it these tests skip, except under CI (env CI set), where missing data is a failure.
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

import ml_collections
import numpy as np
import pytest

from jax_cifar.configs import default
from jax_cifar import atomic_folder
from jax_cifar.data import cifar100, tfds_source
from jax_cifar.data.cifar100 import DataError

README_MEAN = np.array([0.5075, 0.4869, 0.4415])


@pytest.fixture(scope='module')
def data_dir(cifar_dir) -> pathlib.Path:
  """The real data (conftest's `cifar_dir`: skipped without it, a failure under CI)."""
  return cifar_dir


@pytest.fixture(scope='module')
def real_train(data_dir) -> cifar100.Split:
  return cifar100.load_split(data_dir, 'train', download=False)


@pytest.fixture(scope='module')
def real_test(data_dir) -> cifar100.Split:
  return cifar100.load_split(data_dir, 'test', download=False)


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


# ------------------------------------------------------------------ the real files


def test_real_splits_have_official_shapes_counts_and_statistics(real_train, real_test):
  for split, n, per_class in ((real_train, 50000, 500), (real_test, 10000, 100)):
    assert len(split) == n
    assert split.images.shape == (n, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.coarse_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(split.labels, minlength=100), per_class)
    assert 0 <= split.coarse_labels.min() and split.coarse_labels.max() == 19
  mean = real_train.images.reshape(-1, 3).mean(0, dtype=np.float64) / 255
  np.testing.assert_allclose(mean, README_MEAN, atol=1e-4)


def test_latin1_and_bytes_encodings_give_equal_results(data_dir, real_test, real_test_raw):
  as_bytes = cifar100.load_split(data_dir, 'test', download=False, encoding='bytes')
  np.testing.assert_array_equal(as_bytes.images, real_test.images)
  np.testing.assert_array_equal(as_bytes.labels, real_test.labels)
  np.testing.assert_array_equal(as_bytes.coarse_labels, real_test.coarse_labels)
  raw_bytes = cifar100.read_pickle(data_dir / 'cifar-100-python' / 'test', encoding='bytes')
  keys = ['batch_label', 'coarse_labels', 'data', 'filenames', 'fine_labels']
  assert sorted(raw_bytes) == sorted(real_test_raw) == keys
  assert raw_bytes['filenames'][:5] == real_test_raw['filenames'][:5]
  for encoding in ('latin1', 'bytes'):
    meta = cifar100.read_pickle(data_dir / 'cifar-100-python' / 'meta', encoding=encoding)
    assert meta['fine_label_names'][0] == 'apple'


def test_first_image_is_the_hwc_view_of_the_raw_planar_row(real_test, real_test_raw):
  raw, image = real_test_raw['data'][0], real_test.images[0]
  for channel in range(3):
    for row in (0, 13, 31):
      start = channel * 1024 + row * 32
      np.testing.assert_array_equal(image[row, :, channel], raw[start:start + 32])
  np.testing.assert_array_equal(image.transpose(2, 0, 1).reshape(-1), raw)
  assert real_test.labels[0] == real_test_raw['fine_labels'][0]


def test_class_names_come_from_meta(data_dir):
  fine, coarse = cifar100.class_names(data_dir)
  assert len(fine) == len(set(fine)) == 100 and len(coarse) == len(set(coarse)) == 20
  assert (fine[0], fine[-1], coarse[0]) == ('apple', 'worm', 'aquatic_mammals')


def test_class_names_find_the_data_as_the_trainer_does(data_dir, monkeypatch):
  """A run's config.data.dir is often '' ($JAX_CIFAR_DATA_DIR then): class_names('') had looked
  in the current folder (an audit)."""
  monkeypatch.setenv('JAX_CIFAR_DATA_DIR', str(data_dir))
  assert cifar100.class_names('') == cifar100.class_names() == cifar100.class_names(data_dir)


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


def test_a_split_of_no_images_is_named_so(tmp_path, small_tree):
  shutil.copytree(small_tree, tmp_path / 'cifar-100-python')
  raw = cifar100.read_pickle(small_tree / 'test')
  raw.update(data=raw['data'][:0], fine_labels=[], coarse_labels=[])
  (tmp_path / 'cifar-100-python' / 'test').write_bytes(pickle.dumps(raw, protocol=2))
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', download=False)
  assert_one_line(error, 'holds no images')


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
  assert message.startswith(f'ERROR {archive}: cannot extract it into {tmp_path} (File too '
                            'large (disk full)); free space there'), (out.stdout, out.stderr[-2000:])
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
  assert_one_line(error, str(folder), 'an incomplete cifar-100-python/ (no meta)')
  assert sorted(p.name for p in folder.iterdir()) == ['test', 'train']


def test_archive_escaping_its_folder_is_refused(tmp_path, small_tree):
  inner = tmp_path / 'inner'
  inner.mkdir()
  archive = inner / 'cifar-100-python.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(small_tree, arcname='cifar-100-python')
    tar.add(small_tree / 'meta', arcname='../escaped')
  with pytest.raises(DataError) as error:
    cifar100.load_split(inner, 'test', download=False)
  assert_one_line(error, str(archive))
  assert not (tmp_path / 'escaped').exists() and not (inner / 'cifar-100-python').exists()


# ------------------------------------------------------------------ downloads


def test_download_with_wrong_md5_fails_and_leaves_nothing(tmp_path, small_tree, http_dir):
  served, url = http_dir
  make_archive(small_tree, served / 'cifar-100-python.tar.gz')
  target = tmp_path / 'download'
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
    cifar100.download_archive(f'{url}/cifar-100-python.tar.gz', target / 'cifar-100-python.tar.gz',
                              '0' * 32)
  assert list(target.iterdir()) == []


def test_download_with_right_md5_is_kept_and_extracted(tmp_path, small_tree, http_dir):
  served, url = http_dir
  archive = make_archive(small_tree, served / 'cifar-100-python.tar.gz')
  md5 = hashlib.md5(archive.read_bytes()).hexdigest()
  target = tmp_path / 'download'
  split = cifar100.load_split(target, 'test', url=f'{url}/cifar-100-python.tar.gz', md5=md5)
  assert len(split) == 20
  assert (target / 'cifar-100-python.tar.gz').read_bytes() == archive.read_bytes()
  assert sorted(p.name for p in target.iterdir()) == ['cifar-100-python', 'cifar-100-python.tar.gz']


def test_get_splits_downloads_from_the_module_constants(tmp_path, small_tree, http_dir, monkeypatch):
  served, url = http_dir
  archive = make_archive(small_tree, served / 'cifar-100-python.tar.gz')
  monkeypatch.setattr(cifar100, 'CIFAR100_URL', f'{url}/cifar-100-python.tar.gz')
  monkeypatch.setattr(cifar100, 'CIFAR100_MD5', hashlib.md5(archive.read_bytes()).hexdigest())
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


# ------------------------------------------------------------------ splits and subsets


def test_stratified_split_is_stratified_disjoint_complete_and_deterministic(real_train):
  labels = real_train.labels
  train_idx, val_idx = cifar100.stratified_split(labels, 0.1, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[val_idx], minlength=100), 50)
  np.testing.assert_array_equal(np.bincount(labels[train_idx], minlength=100), 450)
  assert np.intersect1d(train_idx, val_idx).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(len(labels)))
  again = cifar100.stratified_split(labels, 0.1, seed=0)
  np.testing.assert_array_equal(again[1], val_idx)
  assert not np.array_equal(cifar100.stratified_split(labels, 0.1, seed=1)[1], val_idx)


def test_stratified_split_rounds_per_class_and_checks_fraction():
  labels = np.repeat(np.array([4, 0, 7]), [3, 7, 10])
  labels = np.random.default_rng(0).permutation(labels)
  _, val_idx = cifar100.stratified_split(labels, 0.3, seed=5)
  counts = dict(zip(*np.unique(labels[val_idx], return_counts=True)))
  assert counts == {0: round(0.3 * 7), 4: round(0.3 * 3), 7: round(0.3 * 10)}
  train_idx, val_idx = cifar100.stratified_split(labels, 0.0, seed=5)
  assert val_idx.size == 0 and np.array_equal(train_idx, np.arange(len(labels)))
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError):
      cifar100.stratified_split(labels, bad, seed=0)


def test_balanced_subset_takes_classes_round_robin_in_file_order(real_train):
  labels = real_train.labels
  first = cifar100.balanced_subset(labels, 100)
  expected = np.sort([np.flatnonzero(labels == c)[0] for c in range(100)])
  np.testing.assert_array_equal(first, expected)
  ten_each = cifar100.balanced_subset(labels, 1000)
  np.testing.assert_array_equal(np.bincount(labels[ten_each], minlength=100), 10)
  counts = np.bincount(labels[cifar100.balanced_subset(labels, 150)], minlength=100)
  assert counts.sum() == 150 and set(counts) == {1, 2}
  np.testing.assert_array_equal(cifar100.balanced_subset(labels, 0), np.arange(len(labels)))


# ------------------------------------------------------------------ get_splits


def _cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = default.get_config().data
  cfg.update(overrides)
  return cfg


def test_get_splits_without_validation_uses_all_training_images(data_dir):
  splits = cifar100.get_splits(_cfg(dir=str(data_dir), download=False, val_fraction=0.0))
  assert splits['val'] is None
  assert (len(splits['train']), len(splits['test'])) == (50000, 10000)


def test_get_splits_limits_are_class_balanced_and_val_is_held_out(data_dir, real_train):
  cfg = _cfg(dir=str(data_dir), val_fraction=0.1, train_limit=1000, eval_limit=500)
  splits = cifar100.get_splits(cfg)
  train, val, test = splits['train'], splits['val'], splits['test']
  assert (len(train), len(val), len(test)) == (1000, 500, 500)
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=100), 10)
  np.testing.assert_array_equal(np.bincount(val.labels, minlength=100), 5)
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=100), 5)
  # Validation images come from the held-out part: same images as the split's val indices.
  _, val_idx = cifar100.stratified_split(real_train.labels, 0.1, seed=0)
  held_out = {img.tobytes() for img in real_train.images[val_idx]}
  assert all(img.tobytes() in held_out for img in val.images)
  assert not any(img.tobytes() in held_out for img in train.images[:200])


def test_get_splits_synthetic_and_unknown_source():
  splits = cifar100.get_splits(_cfg(source='synthetic', synthetic_size=1000, val_fraction=0.1))
  assert (len(splits['train']), len(splits['val']), len(splits['test'])) == (900, 100, 1000)
  for split in splits.values():
    assert split.images.shape[1:] == (32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.labels.max() < 100
  np.testing.assert_array_equal(np.bincount(splits['test'].labels), 10)
  again = cifar100.get_splits(_cfg(source='synthetic', synthetic_size=1000, val_fraction=0.1))
  np.testing.assert_array_equal(again['train'].images, splits['train'].images)
  with pytest.raises(ValueError, match='data.source'):
    cifar100.get_splits(_cfg(source='imagenet'))
