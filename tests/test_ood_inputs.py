"""Bad input files of `evaluate --ood_dir` and `--cifar100c_dir` (stray, damaged after the check,
of another dtype or shape, truncated; bad labels): each named in one line, before the checkpoint is
read, and an existing CSV kept."""

import logging

import numpy as np
import pytest

from _tiny_run import config as _config, write_ood
from jax_cifar import evaluate
from jax_cifar.data import cifar100, ood


def test_stray_distortion_files_are_named_in_a_warning(tmp_path, caplog):
  folder = write_ood(tmp_path / 'ood', n=5)
  np.save(folder / 'distortion19.npy', np.zeros((5, 32, 32, 3), np.uint8))
  np.save(folder / 'distortion_extra.npy', np.zeros((5, 32, 32, 3), np.uint8))
  np.save(folder / 'labels.npy', np.zeros(5, np.uint8))  # Expected: not warned about.
  with caplog.at_level(logging.WARNING):
    files = ood.check_distortion_dir(folder)
  assert len(files) == 19
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1, warnings
  assert 'distortion19.npy' in warnings[0] and 'distortion_extra.npy' in warnings[0]
  assert 'labels.npy' not in warnings[0]
  caplog.clear()
  (folder / 'distortion19.npy').unlink()
  (folder / 'distortion_extra.npy').unlink()
  with caplog.at_level(logging.WARNING):
    ood.check_distortion_dir(folder)
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize('damage', ['truncated', 'replaced', 'retyped'])
def test_a_file_damaged_after_the_check_is_named_when_opened(tmp_path, damage):
  files = ood.check_distortion_dir(write_ood(tmp_path / 'ood', n=5))
  bad = files[7].path
  if damage == 'truncated':  # e.g. a copy still running, or a full disk.
    bad.write_bytes(bad.read_bytes()[:-100])
  elif damage == 'replaced':
    np.save(bad, np.zeros((10, 32, 32, 3), np.uint8))
  else:  # Same shape, other pixels' type (a mutation audit: only the shape had been re-checked).
    np.save(bad, np.zeros((5, 32, 32, 3), np.float32))
  with pytest.raises(cifar100.DataError) as e:
    files[7].open()
  assert '\n' not in str(e.value) and 'distortion07.npy' in str(e.value), str(e.value)
  assert files[6].open().shape == (5, 32, 32, 3)


@pytest.mark.parametrize('problem', ['missing', 'dtype', 'shape', 'not_multiple_of_5', 'truncated',
                                     'negative_count', 'version'])
def test_bad_ood_input_fails_in_one_line_naming_the_file_and_keeps_the_csv(tmp_path, problem):
  rng = np.random.default_rng(4)
  for i in range(ood.NUM_DISTORTIONS):
    np.save(tmp_path / ood.distortion_file(i), rng.integers(0, 256, (10, 32, 32, 3), np.uint8))
  bad = tmp_path / ood.distortion_file(7)
  if problem == 'missing':
    bad.unlink()
  elif problem == 'dtype':
    np.save(bad, rng.random((10, 32, 32, 3)).astype(np.float32))
  elif problem == 'shape':
    np.save(bad, rng.integers(0, 256, (10, 32, 32), np.uint8))
  elif problem == 'not_multiple_of_5':
    np.save(bad, rng.integers(0, 256, (12, 32, 32, 3), np.uint8))
  elif problem == 'negative_count':  # Passed as 'trailing bytes': -5 is a multiple of 5.
    bad.write_bytes(bad.read_bytes().replace(b'(10, 32', b'(-5, 32', 1))
  elif problem == 'version':  # Its message had not named the file (a security audit).
    data = bytearray(bad.read_bytes())
    data[6] = 9  # The format's major version.
    bad.write_bytes(bytes(data))
  else:
    data = bad.read_bytes()
    bad.write_bytes(data[:-100])  # np.load(mmap_mode='r') may or may not notice this.
  existing = tmp_path / 'sub.csv'
  existing.write_text('id,label\nprevious,1\n')
  with pytest.raises(cifar100.DataError) as e:
    evaluate.evaluate(_config(), str(tmp_path / 'no_run'), 'latest', ood_dir=str(tmp_path),
                      submission_csv=str(existing))
  message = str(e.value)
  assert '\n' not in message and 'distortion07.npy' in message, message
  assert existing.read_text() == 'id,label\nprevious,1\n'
  assert not list(tmp_path.glob('.sub.csv.*'))


@pytest.mark.parametrize('problem', ['ood_labels_too_few', 'ood_labels_out_of_range',
                                     'c_labels_missing', 'c_labels_float', 'ood_labels_negative',
                                     'c_labels_negative', 'ood_labels_trailing_bytes',
                                     'ood_labels_below_zero', 'c_labels_a_column'])
def test_bad_labels_fail_before_the_checkpoint_is_read(tmp_path, problem):
  """labels.npy is checked with the images: found bad only after the 950,000 predictions, a
  run's clean and OOD numbers were lost. (The workdir holds no run: reaching it is a different
  error.)"""
  rng = np.random.default_rng(5)
  ood_dir, c_dir = tmp_path / 'ood', tmp_path / 'c'
  ood_dir.mkdir(), c_dir.mkdir()
  images = rng.integers(0, 256, (10, 32, 32, 3), np.uint8)
  for i in range(ood.NUM_DISTORTIONS):
    np.save(ood_dir / ood.distortion_file(i), images)
  np.save(c_dir / 'fog.npy', images)
  labels = {'ood_labels_too_few': (ood_dir, np.arange(3)),
            'ood_labels_out_of_range': (ood_dir, np.full(10, 100)),
            'c_labels_float': (c_dir, np.zeros(10, np.float32)),
            # A label of -1 and an [N, 1] column (compared with [N] predictions, it broadcasts to
            # N x N) had been read as labels (a mutation audit: neither check was tested).
            'ood_labels_below_zero': (ood_dir, np.full(10, -1)),
            'c_labels_a_column': (c_dir, np.zeros((10, 1), np.int64))}
  if problem in labels:
    np.save(labels[problem][0] / 'labels.npy', labels[problem][1])
  if problem.endswith('_negative'):  # A header claiming -1 labels had given a traceback.
    where = ood_dir if problem.startswith('ood') else c_dir
    np.save(where / 'labels.npy', np.zeros(10, np.int64))
    (where / 'labels.npy').write_bytes((where / 'labels.npy').read_bytes().replace(b'(10,)', b'(-1,)'))
  if problem == 'ood_labels_trailing_bytes':  # Read, the junk ignored (a security audit).
    np.save(ood_dir / 'labels.npy', np.zeros(10, np.int64))
    with open(ood_dir / 'labels.npy', 'ab') as f:
      f.write(b'junk' * 1000)
  if not problem.startswith('c_'):
    np.save(c_dir / 'labels.npy', np.zeros(2, np.int64))  # Valid: tiled over the 5 severities.
  with pytest.raises(cifar100.DataError, match='labels.npy') as e:
    evaluate.evaluate(_config(), str(tmp_path / 'no_run'), 'latest', ood_dir=str(ood_dir),
                      submission_csv=str(tmp_path / 'sub.csv'), cifar100c_dir=str(c_dir))
  assert str((ood_dir if problem.startswith('ood') else c_dir) / 'labels.npy') in str(e.value)
  assert not (tmp_path / 'sub.csv').exists()


def test_an_ood_dir_that_is_a_file_or_missing_is_named_so(tmp_path):
  folder = write_ood(tmp_path / 'ood', n=5)
  with pytest.raises(ood.DataError, match='is a file, expected the folder that holds it'):
    ood.check_distortion_dir(folder / ood.distortion_file(0))
  with pytest.raises(ood.DataError, match='directory not found'):
    ood.check_distortion_dir(tmp_path / 'no_such_folder')
