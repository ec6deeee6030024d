"""metrics.jsonl on a full disk (/dev/full: every flush fails with ENOSPC): each error names the
file, and closing after a failed write does not replace that error with a nameless one."""

import os
import pathlib

import pytest

from jax_cifar import tracking
from jax_cifar.configs import default

@pytest.fixture(autouse=True)
def _dev_full():
  """Skipped outside CI where there is no /dev/full; under CI (Linux) a failure, never a skip."""
  if not os.path.exists('/dev/full'):
    if os.environ.get('CI'):
      pytest.fail('CI requires /dev/full (Linux) for the full-disk tests')
    pytest.skip('needs /dev/full (Linux)')


def _writer(workdir: pathlib.Path) -> tracking.MetricsWriter:
  config = default.get_config()
  config.wandb.mode = 'disabled'
  return tracking.MetricsWriter(workdir, config, resume_step=0)


def test_a_failed_row_is_named_and_the_close_after_it_does_not_replace_that_error(tmp_path):
  """The trainer's `finally` closes the writer after the failed write: that close flushed the row
  again and raised a bare "No space left on device", which replaced the error naming the file
  (a kill review)."""
  writer = _writer(tmp_path)
  writer._file.close()  # pylint: disable=protected-access
  writer._file = open('/dev/full', 'a')  # pylint: disable=protected-access,consider-using-with
  with pytest.raises(OSError, match='No space left on device') as failed:
    writer.write(3, {'train_loss': 1.0})
  assert failed.value.filename == str(tmp_path / 'metrics.jsonl')
  writer.close(exit_code=1)  # After the failure: a warning, not a second error.
  (tmp_path / 'again').mkdir()
  writer = _writer(tmp_path / 'again')
  writer._file.close()  # pylint: disable=protected-access
  writer._file = open('/dev/full', 'a')  # pylint: disable=protected-access,consider-using-with
  writer._file.write('{"step": 1}\n')  # pylint: disable=protected-access  (Buffered, unflushed.)
  with pytest.raises(OSError) as closing:  # A close that is the first to fail names the file.
    writer.close(exit_code=0)
  assert closing.value.filename == str(tmp_path / 'again' / 'metrics.jsonl')


def test_a_resume_that_cannot_rewrite_the_rows_names_the_file_and_leaves_no_temp(tmp_path,
                                                                               monkeypatch):
  """The relaunch on a still full disk had failed with a nameless error, leaving its temp file
  (then metrics.tmp; now a temp of its own, atomic_folder.temp_name's)."""
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "train_loss": 4.0}\n')
  real_write_text = pathlib.Path.write_text

  def full(self, *args, **kwargs):
    if self.name.startswith('.metrics.jsonl.tmp-'):
      with open(self, 'w'):  # The file is made, then its write fails.
        pass
      raise OSError(28, 'No space left on device')
    return real_write_text(self, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, 'write_text', full)
  with pytest.raises(OSError, match='No space left on device') as failed:
    _writer(tmp_path)
  assert failed.value.filename == str(tmp_path / 'metrics.jsonl')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['metrics.jsonl']
