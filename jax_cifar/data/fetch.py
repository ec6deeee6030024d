"""Where the `cifar-100-python` folder is, and getting it there: the configured folder or cache,
an archive next to it extracted (safely, with a bar), or the official archive downloaded and
md5-checked. Reading the folder's pickles: cifar100.py."""

from __future__ import annotations

import hashlib
import os
import pathlib
import posixpath
import shutil
import tarfile
import urllib.error
import urllib.request

from jax_cifar import atomic_folder, errors
from jax_cifar.errors import DataError

CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'
CIFAR100_MD5 = 'eb9058c3a382ffc7106e4002c42a8d85'
FOLDER = 'cifar-100-python'
ARCHIVES = (FOLDER + '.tar.gz', FOLDER + '.tar.xz', FOLDER + '.tar')


def resolve_data_dir(configured: str = '', setting: str = 'data.dir') -> pathlib.Path:
  """The configured folder, else $JAX_CIFAR_DATA_DIR, else a cache folder (created).

  A folder the user names must exist: a typo is an error, never a new folder to download into.
  `setting` is how the user gave `configured` (a command-line tool's own flag), for the error.
  """
  for path, name in ((configured, setting), (os.environ.get('JAX_CIFAR_DATA_DIR', ''),
                                                 '$JAX_CIFAR_DATA_DIR')):
    if path:
      folder = pathlib.Path(path).expanduser()
      if not folder.is_dir():
        # A relative one is read from the current folder: a run's config.json keeps it as given,
        # so a resume or evaluate started elsewhere had been told to download again (a walkthrough).
        where = ('' if folder.is_absolute() else
                 f', which is relative: read from the current folder {os.getcwd()}')
        raise DataError(f'{name} {folder} is not an existing folder{where} (create it to download '
                        'the data there, or point it at the folder holding cifar-100-python/'
                        + (', e.g. by its absolute path' if where else '') + ')')
      return folder
  cache = pathlib.Path('~/.cache/jax_cifar').expanduser()
  cache.mkdir(parents=True, exist_ok=True)
  return cache


_FOLDER_FILES = ('train', 'test', 'meta')


def _is_cifar_folder(path: pathlib.Path) -> bool:
  return all((path / name).is_file() for name in _FOLDER_FILES)


def download_archive(url: str, dest: pathlib.Path, md5: str) -> pathlib.Path:
  """Streams `url` into a temp file next to `dest`, checks its md5, then renames it into place."""
  dest.parent.mkdir(parents=True, exist_ok=True)
  atomic_folder.remove_stale_temps(str(dest))  # Partial downloads of killed processes.
  tmp = pathlib.Path(atomic_folder.temp_name(str(dest)))
  digest = hashlib.md5()
  try:
    import tqdm  # pylint: disable=g-import-not-at-top

    with open(tmp, 'xb') as out, urllib.request.urlopen(url, timeout=60) as response:
      total = int(response.headers.get('Content-Length') or 0) or None
      with tqdm.tqdm(total=total, unit='B', unit_scale=True, desc=f'Downloading {dest.name}') as bar:
        while chunk := response.read(1 << 20):
          out.write(chunk)
          digest.update(chunk)
          bar.update(len(chunk))
  except BaseException as e:  # A failed or stopped download leaves no partial file behind.
    tmp.unlink(missing_ok=True)
    if not isinstance(e, (urllib.error.URLError, OSError, ValueError)):
      raise
    reason = getattr(e, 'reason', e)
    raise DataError(
        f'{dest}: cannot download {url} ({reason}); put {FOLDER}/ or {ARCHIVES[0]} into '
        f'{dest.parent} (or set data.dir / JAX_CIFAR_DATA_DIR to a folder that holds it)'
    ) from None
  if digest.hexdigest() != md5:
    tmp.unlink(missing_ok=True)
    raise DataError(
        f'{dest}: md5 of the download from {url} is {digest.hexdigest()}, expected {md5}; removed it'
    )
  os.replace(tmp, dest)
  return dest


# What an archive may extract to: the real one is 161 MB (train 155 MB). Each member's declared size
# is checked before it is written; a 9 MB .tar.gz had filled 2 GiB of disk (a security audit).
MAX_MEMBER_BYTES, MAX_TOTAL_BYTES = 1 << 29, 1 << 30
# ... and how many entries it may hold: the real one has 5 (a folder, 4 files); a 1.7 MB .tar.gz of
# 300,000 empty files had made as many files in 42 s before its refusal (a security review).
MAX_MEMBERS = 1000


def _members_filter(archive: pathlib.Path):
  """tarfile's 'data' filter (no paths out, no devices, no set-uid), and only files and folders
  under cifar-100-python/, none sparse (a sparse one had declared 1 TiB in 320 bytes), within the
  sizes above. Other top-level entries (`tar -C DIR .`'s '.', macOS's ._ files) are skipped."""
  total = members = 0

  def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    nonlocal total, members
    members += 1
    if members > MAX_MEMBERS:
      raise DataError(f'{archive}: holds more than {MAX_MEMBERS:,} entries (CIFAR-100: 5), reached '
                      f'at {member.name!r}: not extracted')
    name = posixpath.normpath(member.name)
    if name != FOLDER and not name.startswith(FOLDER + '/'):
      if name.startswith(('/', '..')):
        raise DataError(f'{archive}: holds {member.name!r}, outside its own folder: not extracted')
      return None  # Not written: only cifar-100-python/ is read.
    if not (member.isreg() or member.isdir()) or member.issparse():
      kind = 'sparse file' if member.issparse() else 'link' if member.issym() or member.islnk() \
          else 'device or pipe'
      raise DataError(f'{archive}: {member.name!r} is a {kind}, not a file or folder: not extracted')
    total += member.size
    if member.size > MAX_MEMBER_BYTES:
      raise DataError(f'{archive}: {member.name!r} is {member.size:,} bytes, more than any '
                      f'CIFAR-100 file ({MAX_MEMBER_BYTES >> 20} MiB at most): not extracted')
    if total > MAX_TOTAL_BYTES:
      raise DataError(f'{archive}: extracts to more than {MAX_TOTAL_BYTES >> 20} MiB (CIFAR-100: '
                      f'161 MB), reached at {member.name!r}: not extracted')
    return tarfile.data_filter(member, dest)
  return check


def _is_xz(archive: pathlib.Path) -> bool:
  """Whether the file starts as xz data does."""
  try:
    with open(archive, 'rb') as f:
      return f.read(6) == b'\xfd7zXZ\x00'
  except OSError:
    return False


def extract_archive(archive: pathlib.Path) -> pathlib.Path:
  """Extracts into a temp folder next to the archive, then renames, so a crash leaves no half folder."""
  target = archive.parent / FOLDER
  try:
    atomic_folder.remove_stale_temps(str(target))  # Half extractions of killed processes.
    tmp = pathlib.Path(atomic_folder.temp_name(str(target)))
    tmp.mkdir()
  except OSError as e:
    raise DataError(
        f'{archive}: cannot extract next to it ({e.strerror}); extract it elsewhere '
        f'(tar -xf {archive} -C DIR) and point data.dir to DIR'
    ) from None
  try:
    import tqdm  # pylint: disable=g-import-not-at-top
    import tqdm.utils  # pylint: disable=g-import-not-at-top

    # A bar over the archive's bytes: the first run had sat silent for ~9 s on the .tar.xz.
    with open(archive, 'rb') as f, tqdm.tqdm(
        total=archive.stat().st_size, unit='B', unit_scale=True, desc=f'Extracting {archive.name}',
        leave=False, mininterval=1.0) as bar, tarfile.open(
            fileobj=tqdm.utils.CallbackIOWrapper(bar.update, f, 'read')) as tar:
      tar.extractall(tmp, filter=_members_filter(archive))
    if not _is_cifar_folder(tmp / FOLDER):
      raise DataError(f'{archive}: archive has no {FOLDER}/ folder with train, test and meta')
    try:
      os.rename(tmp / FOLDER, target)
    except OSError as e:
      if not _is_cifar_folder(target):  # else a concurrent process won the race: fine
        raise DataError(
            f'{target}: cannot put the extracted {archive.name} here ({e.strerror}); '
            'remove the incomplete folder and retry'
        ) from None
  except DataError:
    raise
  except OSError as e:
    if not e.errno:  # gzip's BadGzipFile: the archive.
      raise DataError(f'{archive}: corrupt or truncated archive ({type(e).__name__}: {e})') from None
    full = e.errno in errors.DISK_FULL  # The disk's fault, not the archive's (an audit).
    raise DataError(
        f'{archive}: cannot extract it into {archive.parent} '
        f'({errors.os_reason(e.errno, e.strerror or str(e))}); {"free space there, or " if full else ""}'
        f'extract it elsewhere (tar -xf {archive} -C DIR) and point data.dir to DIR') from None
  except Exception as e:  # truncated or unsafe archives: TarError, EOFError, LZMAError, zlib.error
    if 'lzma module is not available' in str(e) and _is_xz(archive):  # Not the archive's fault:
      # this Python's (built without liblzma, as pyenv without xz installed): a good .tar.xz had
      # been called corrupt. (tarfile lists the missing module for any archive it cannot open.)
      raise DataError(f'{archive}: this Python was built without the lzma module, so it cannot '
                      f'read .xz archives: extract it with `tar -xJf {archive} -C DIR` and point '
                      'data.dir to DIR') from None
    problem = f'{type(e).__name__}: {e}'
    raise DataError(f'{archive}: corrupt, truncated or unsafe archive ({problem})') from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def find_or_fetch(
    data_dir: str | os.PathLike, *, download: bool = True, url: str | None = None, md5: str | None = None
) -> pathlib.Path:
  """Returns the `cifar-100-python` folder, extracting or downloading it when needed."""
  data_dir = pathlib.Path(data_dir).expanduser()
  if _is_cifar_folder(data_dir / FOLDER):
    return data_dir / FOLDER
  if _is_cifar_folder(data_dir):  # the user pointed at the folder itself
    return data_dir
  if data_dir.is_dir() and any((data_dir / n).is_file() for n in _FOLDER_FILES):
    missing = [n for n in _FOLDER_FILES if not (data_dir / n).is_file()]  # The folder itself, part
    # (It had said no folder was there, or downloaded into it. And "give its parent folder" had
    # led to "incomplete, remove it": the parent's copy is this one, a message review.)
    raise DataError(f'{data_dir}: an incomplete {FOLDER}/ (no {", ".join(missing)}); put the '
                    'missing files there, or remove it and give its parent folder to have it '
                    'extracted or downloaded there')
  if (data_dir / FOLDER).is_dir():  # Extracting or downloading would end on this folder anyway.
    missing = [n for n in _FOLDER_FILES if not (data_dir / FOLDER / n).is_file()]
    raise DataError(f'{data_dir / FOLDER}: incomplete (no {", ".join(missing)}); remove it to '
                    'have it extracted or downloaded again, or put the missing files there')
  for name in ARCHIVES:
    if (data_dir / name).is_file():
      return extract_archive(data_dir / name)
  below = sorted(p.parent for name in (FOLDER, *ARCHIVES) for p in data_dir.glob(f'*/{name}')
                 if not p.parent.name.startswith('.') and (_is_cifar_folder(p) or p.is_file())
                 ) if data_dir.is_dir() else []  # (Not a hidden temp of an extraction.)
  if below:  # One level too high: not a download into the wrong folder (an audit).
    raise DataError(f'{data_dir}: no {FOLDER}/ or {"/".join(ARCHIVES)} here, but {below[0]} '
                    f'holds one: give {below[0]} as the data folder')
  if not download:
    raise DataError(f'{data_dir}: no {FOLDER}/ or {"/".join(ARCHIVES)} here and download is off')
  archive = download_archive(url or CIFAR100_URL, data_dir / ARCHIVES[0], md5 or CIFAR100_MD5)
  return extract_archive(archive)
