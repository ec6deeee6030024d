"""Archives of cifar-100-python/ that are not what they should be (a security audit): only files
and folders under the folder are extracted, none sparse, within CIFAR-100's size; nothing escapes
it; other top-level entries are skipped. The rest of the data files: test_cifar100_files.py."""

import io
import os
import shutil
import subprocess
import tarfile

import pytest

from jax_cifar.data import cifar100, fetch
from jax_cifar.data.cifar100 import DataError
from test_cifar100_files import (assert_one_line, data_dir, make_archive,  # noqa: F401 (fixtures)
                                 real_test_raw, small_tree)


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


@pytest.mark.parametrize('member', ['symlink', 'fifo', 'absolute', 'sparse'])
def test_an_archive_member_that_is_not_a_file_of_the_folder_is_refused(tmp_path, small_tree,
                                                                      member):
  """Only files and folders under cifar-100-python/ are extracted: a sparse member had declared
  1 TiB in a 320-byte archive, so the pickle's budget (twice the file) was no bound (a security
  audit). Links and pipes were refused by tarfile's filter already, in other words."""
  tree = tmp_path / 'tree' / 'cifar-100-python'
  shutil.copytree(small_tree, tree)
  extra = tree / 'extra'
  if member == 'symlink':
    extra.symlink_to('meta')
  elif member == 'fifo':
    os.mkfifo(extra)
  elif member == 'sparse':
    with open(extra, 'wb') as f:  # 4 KB of data after a 64 MB hole: GNU tar stores it sparse.
      f.seek(64 << 20)
      f.write(b'x' * 4096)
  inner = tmp_path / 'inner'
  inner.mkdir()
  archive = inner / 'cifar-100-python.tar.gz'
  if member == 'sparse':
    subprocess.run(['tar', '--sparse', '-czf', str(archive), '-C', str(tree.parent),
                    'cifar-100-python'], check=True)
  else:
    with tarfile.open(archive, 'w:gz') as tar:
      tar.add(tree, arcname='cifar-100-python')
      if member == 'absolute':  # (tar.add would strip the leading '/'.)
        info = tarfile.TarInfo('/tmp/escaped')
        info.size = 4
        tar.addfile(info, io.BytesIO(b'meta'))
  with pytest.raises(DataError) as error:
    cifar100.load_split(inner, 'test', download=False)
  expected = {'symlink': "'cifar-100-python/extra' is a link", 'fifo': 'is a device or pipe',
              'absolute': "holds '/tmp/escaped', outside its own folder",
              'sparse': "'cifar-100-python/extra' is a sparse file"}[member]
  assert_one_line(error, str(archive), expected)
  assert sorted(p.name for p in inner.iterdir()) == ['cifar-100-python.tar.gz']  # No folder left.


def test_other_top_level_entries_are_skipped_not_refused(tmp_path, small_tree):
  """`tar -czf A -C DIR .` adds a '.' entry and './' names, macOS tar a ._cifar-100-python file:
  both had extracted, and the filter must not refuse them (a review); only the folder is written."""
  for how in ('dot', 'appledouble'):
    where = tmp_path / how
    shutil.copytree(small_tree, where / 'tree' / 'cifar-100-python')
    archive = where / 'data' / 'cifar-100-python.tar.gz'
    archive.parent.mkdir()
    if how == 'dot':
      subprocess.run(['tar', '-czf', str(archive), '-C', str(where / 'tree'), '.'], check=True)
    else:
      (where / 'tree' / '._cifar-100-python').write_bytes(b'\x00\x05\x16\x07')
      with tarfile.open(archive, 'w:gz') as tar:
        tar.add(where / 'tree' / '._cifar-100-python', arcname='._cifar-100-python')
        tar.add(where / 'tree' / 'cifar-100-python', arcname='cifar-100-python')
    assert len(cifar100.load_split(archive.parent, 'test', download=False)) == 20, how
    assert sorted(p.name for p in archive.parent.iterdir()) == ['cifar-100-python', archive.name]


def test_an_archive_that_extracts_to_more_than_cifar_holds_is_refused_and_leaves_nothing(
    tmp_path, small_tree, monkeypatch):
  """A 9 MB .tar.gz had written 2 GiB before the pickle was found wrong (a security audit). The
  limits are lowered here so that the real rows of small_tree exceed them."""
  archive = make_archive(small_tree, tmp_path / 'cifar-100-python.tar.gz')
  largest = max(p.stat().st_size for p in small_tree.iterdir())
  monkeypatch.setattr(fetch, 'MAX_MEMBER_BYTES', largest - 1)
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', download=False)
  assert_one_line(error, f'is {largest:,} bytes, more than any CIFAR-100 file')
  monkeypatch.setattr(fetch, 'MAX_MEMBER_BYTES', largest)
  monkeypatch.setattr(fetch, 'MAX_TOTAL_BYTES', largest)
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', download=False)
  assert_one_line(error, 'extracts to more than 0 MiB')
  assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]
  monkeypatch.setattr(fetch, 'MAX_TOTAL_BYTES', 3 * largest)
  # More entries than CIFAR-100's 5: 300,000 empty files in 1.7 MB had all been made before the
  # archive was refused (a security review).
  members = len(tarfile.open(archive).getmembers())
  monkeypatch.setattr(fetch, 'MAX_MEMBERS', members - 1)
  with pytest.raises(DataError) as error:
    cifar100.load_split(tmp_path, 'test', download=False)
  assert_one_line(error, f'holds more than {members - 1:,} entries (CIFAR-100: 5), reached at')
  assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]
  monkeypatch.setattr(fetch, 'MAX_MEMBERS', members)  # Within every limit: extracted.
  assert len(cifar100.load_split(tmp_path, 'test', download=False)) == 20
  # The shipped limit (a mutation audit: 1,000,000 passed while every test lowered it).
  monkeypatch.undo()
  many = tmp_path / 'many'
  many.mkdir()
  with tarfile.open(many / 'cifar-100-python.tar.gz', 'w:gz') as tar:
    for i in range(1001):
      tar.addfile(tarfile.TarInfo(f'cifar-100-python/empty{i}'))
  with pytest.raises(DataError) as error:
    cifar100.load_split(many, 'test', download=False)
  assert_one_line(error, 'holds more than 1,000 entries (CIFAR-100: 5), reached at')


def test_an_archive_missing_a_file_is_refused_and_leaves_no_folder(tmp_path):
  """An archive without one of train, test and meta is refused, and no partial
  cifar-100-python/ folder is renamed into place beside it."""
  folder = tmp_path / 'src' / 'cifar-100-python'
  folder.mkdir(parents=True)
  for name in ('train', 'meta'):  # No 'test': a partly made archive.
    (folder / name).write_bytes(b'x')
  data = tmp_path / 'data'
  data.mkdir()
  with tarfile.open(data / 'cifar-100-python.tar.gz', 'w:gz') as tar:
    tar.add(folder, arcname='cifar-100-python')
  with pytest.raises(fetch.DataError, match='no cifar-100-python/ folder with train, test and meta'):
    fetch.find_or_fetch(data, download=False)
  assert [p.name for p in data.iterdir()] == ['cifar-100-python.tar.gz']


def test_a_python_without_lzma_says_so_and_does_not_call_the_archive_corrupt(tmp_path,
                                                                            monkeypatch):
  """A pyenv Python built without liblzma (no `brew install xz` first) had called the course's good
  cifar-100-python.tar.xz "corrupt, truncated or unsafe" (a portability review)."""
  folder = tmp_path / 'src' / 'cifar-100-python'
  folder.mkdir(parents=True)
  for name in ('train', 'test', 'meta'):
    (folder / name).write_bytes(b'x')
  data = tmp_path / 'data'
  data.mkdir()
  with tarfile.open(data / 'cifar-100-python.tar.xz', 'w:xz') as tar:
    tar.add(folder, arcname='cifar-100-python')

  def no_lzma(*args, **kwargs):
    raise tarfile.CompressionError('lzma module is not available')
  monkeypatch.setattr(tarfile.TarFile, 'xzopen', classmethod(lambda cls, *a, **k: no_lzma()))
  with pytest.raises(fetch.DataError) as error:
    fetch.find_or_fetch(data, download=False)
  archive = data / 'cifar-100-python.tar.xz'
  assert str(error.value) == (f'{archive}: this Python was built without the lzma module, so it '
                              f'cannot read .xz archives: extract it with `tar -xJf {archive} -C '
                              'DIR` and point data.dir to DIR')
  assert [p.name for p in data.iterdir()] == ['cifar-100-python.tar.xz']
  # Another file that no method opens (tarfile lists the missing module for it too) is still
  # called corrupt: an HTML error page saved as the .tar.gz (the diff review).
  (data / 'cifar-100-python.tar.xz').unlink()
  (data / 'cifar-100-python.tar.gz').write_text('<html>404 Not Found</html>')
  with pytest.raises(fetch.DataError, match='corrupt, truncated or unsafe archive'):
    fetch.find_or_fetch(data, download=False)
