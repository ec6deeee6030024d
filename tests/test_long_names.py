"""Names near the 255-byte limit of a file name: the temp files that make writes whole carry a
shortened name, so a name the file system takes is never refused for its temp's name (a 244-byte
converter output and a 248-byte submission CSV had been refused after all their work: a path
review)."""

import os
import subprocess
import sys

import numpy as np

from jax_cifar import atomic_folder
from jax_cifar.data import ood
from jax_cifar.evaluation import submission

LONG = 'é' * 120 + 'x' * 4 + '.csv'  # 248 bytes.


def test_a_long_name_is_written_whole_through_a_temp_of_a_shorter_name(tmp_path):
  assert len(LONG.encode()) == 248
  path = tmp_path / LONG
  names = []
  atomic_folder.write_file(path, lambda tmp: (names.append(os.path.basename(tmp)),
                                              open(tmp, 'w').write('ok')))
  assert path.read_text() == 'ok' and os.listdir(tmp_path) == [LONG]
  assert len(names[0].encode()) <= 255 - len('.old')
  short = 'a' * 150
  assert atomic_folder.temp_base(short) == short  # Names of 150 bytes or fewer are kept whole.
  assert atomic_folder.temp_base(LONG) != atomic_folder.temp_base(LONG[:-5] + 'y.csv')


def test_a_killed_writers_temp_of_a_long_name_is_still_removed(tmp_path):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  pid = int(dead.stdout)
  stale = tmp_path / os.path.basename(atomic_folder.temp_name(str(tmp_path / LONG)))
  stale = stale.with_name(stale.name.replace(f'-{os.getpid()}-', f'-{pid}-'))
  stale.write_text('cut')
  atomic_folder.write_file(tmp_path / LONG, lambda tmp: open(tmp, 'w').write('ok'))
  assert os.listdir(tmp_path) == [LONG]


def test_a_temp_an_older_version_named_by_the_whole_long_name_is_still_removed(tmp_path):
  """Before the shortening, temps of 151-200 byte names carried the whole name (the diff
  review): they are still known as this name's."""
  name = 'n' * 175
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  old = tmp_path / f'.{name}.tmp-{atomic_folder.HOST}-{int(dead.stdout)}-deadbeef'
  old.write_text('cut')
  part = tmp_path / f'.{name}.abcd1234.part'  # An older submission writer's, not locked.
  part.write_text('cut')
  atomic_folder.write_file(tmp_path / name, lambda tmp: open(tmp, 'w').write('ok'))
  assert sorted(os.listdir(tmp_path)) == sorted([name, part.name])
  assert submission.remove_stale_parts(tmp_path / name) == [part]


def test_a_submission_of_a_long_name_is_written(tmp_path):
  path = tmp_path / LONG
  n = 10
  with submission.SubmissionWriter(path, n) as w:
    for d in range(ood.NUM_DISTORTIONS):
      w.add(d, np.full(n, d % 100))
  lines = path.read_text().splitlines()
  assert lines[0] == 'id,label' and len(lines) == 1 + ood.NUM_DISTORTIONS * n
  assert lines[-1] == f'distortion18_5_{n // 5 - 1},18'
  assert os.listdir(tmp_path) == [LONG]
