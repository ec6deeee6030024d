"""WORKDIR/.lock that is not a file: named as the lock, not as an unwritable workdir (it had read
"workdir RUN is not writable: Is a directory", of a folder that takes files: a bad-input review)."""

import os

import pytest

from jax_cifar import workdir
from jax_cifar.configs import default
from jax_cifar.training import trainer


@pytest.mark.parametrize('kind', ['folder', 'dangling link'])
def test_a_lock_path_that_is_no_file_is_named_as_the_lock(tmp_path, kind):
  run = tmp_path / 'run'
  run.mkdir()
  if kind == 'folder':
    (run / '.lock').mkdir()
  else:
    os.symlink(tmp_path / 'gone' / 'lock', run / '.lock')
  c = default.get_config()
  c.data.source, c.model.name = 'synthetic', 'simple_cnn'
  # (A link, leading anywhere, is refused as one: tests/test_planted_links.py.)
  said = (rf'^{run}/\.lock, the file a run holds its lock on, is a folder: move it away'
          if kind == 'folder' else
          rf'^{run}/\.lock is a symbolic link \(to {tmp_path}/gone/lock\); jax-cifar writes only '
          'files of its own there: remove the link$')
  with pytest.raises(workdir.WorkdirError, match=said):
    trainer.train_and_evaluate(c, str(run))
  assert sorted(p.name for p in run.iterdir()) == ['.lock']  # Nothing else written.


def test_a_lock_that_a_full_disk_cannot_write_leaves_no_new_workdir(tmp_path, monkeypatch):
  """A first launch on a full disk said "not writable: No space left on device" but left the
  folder it made behind, holding an empty .lock (a kill review); an existing folder is kept."""
  def full(*_):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(os, 'pwrite', full)
  c = default.get_config()
  c.data.source, c.model.name = 'synthetic', 'simple_cnn'
  with pytest.raises(workdir.WorkdirError, match='is not writable: No space left on device'):
    trainer.train_and_evaluate(c, str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()
  (tmp_path / 'mine').mkdir()
  with pytest.raises(workdir.WorkdirError, match='is not writable: No space left on device'):
    trainer.train_and_evaluate(c, str(tmp_path / 'mine'))
  assert (tmp_path / 'mine').is_dir()  # Not made by this launch: kept.
