"""The submission CSV: exact format, atomic writes, and a validator that catches every kind of damage."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jax_cifar.evaluation import submission
from jax_cifar.data import ood
from jax_cifar.data.cifar100 import DataError
from conftest import TOO_LARGE

N = 20  # Images per distortion file: four per severity.


def _labels(d: int) -> np.ndarray:
  return (np.arange(N) * 7 + d) % 100


def _write(path, n=N):
  with submission.SubmissionWriter(path, n) as w:
    for d in range(ood.NUM_DISTORTIONS):
      w.add(d, (np.arange(n) * 7 + d) % 100)


def _expected_lines():
  lines = ['id,label']
  for d in range(19):
    for s in range(1, 6):
      for i in range(N // 5):
        lines.append(f'distortion{d:02d}_{s}_{i},{_labels(d)[(s - 1) * (N // 5) + i]}')
  return lines


def test_writer_produces_exact_rows_in_distortion_severity_index_order(tmp_path):
  path = tmp_path / 'sub.csv'
  _write(path)
  assert path.read_text() == '\n'.join(_expected_lines()) + '\n'
  assert len(path.read_text().splitlines()) == 1 + 19 * N
  assert not list(tmp_path.glob('.*'))  # No temp file left behind.


def test_finish_inside_the_block_completes_the_csv_once(tmp_path):
  """evaluate finishes the CSV inside the block (where the processes agree on a failure): the
  file is in place before the block ends, and leaving the block changes nothing."""
  path = tmp_path / 'sub.csv'
  with submission.SubmissionWriter(path, N) as w:
    for d in range(ood.NUM_DISTORTIONS):
      w.add(d, _labels(d))
    assert not path.exists()
    w.finish()
    assert path.read_text() == '\n'.join(_expected_lines()) + '\n'
    w.finish()  # A second call (and the block's end) is a no-op.
  assert [p.name for p in tmp_path.iterdir()] == ['sub.csv']
  with pytest.raises(ValueError, match='only 1 of 19 distortion files written'):
    with submission.SubmissionWriter(tmp_path / 'short.csv', N) as w:
      w.add(0, _labels(0))
      w.finish()
  assert [p.name for p in tmp_path.iterdir()] == ['sub.csv']


def test_real_size_ids_count_950000():
  ids = [i for d in range(19) for i in submission.row_ids(d, 50_000)]
  assert len(ids) == 950_000 and len(set(ids)) == 950_000
  assert ids[0] == 'distortion00_1_0' and ids[9_999] == 'distortion00_1_9999'
  assert ids[10_000] == 'distortion00_2_0' and ids[-1] == 'distortion18_5_9999'


def test_failure_midway_keeps_the_existing_csv_and_leaves_no_partial_file(tmp_path):
  path = tmp_path / 'sub.csv'
  path.write_text('id,label\nold,3\n')
  with pytest.raises(RuntimeError):
    with submission.SubmissionWriter(path, N) as w:
      w.add(0, _labels(0))
      raise RuntimeError('inference crashed')
  with pytest.raises(ValueError, match='only 1 of 19'):
    with submission.SubmissionWriter(path, N) as w:
      w.add(0, _labels(0))
  with pytest.raises(ValueError, match='outside'):
    with submission.SubmissionWriter(path, N) as w:
      w.add(0, np.full(N, 100))
  assert path.read_text() == 'id,label\nold,3\n'
  assert [p.name for p in tmp_path.iterdir()] == ['sub.csv']


_FULL_DISK = """
import pathlib, resource, signal, sys
import numpy as np
from jax_cifar.evaluation import submission
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes past the limit then fail with EFBIG.
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
  with submission.SubmissionWriter(pathlib.Path(sys.argv[1]), 50_000) as w:
    for d in range(19):
      w.add(d, np.zeros(50_000, np.int64))
except submission.SubmissionError as e:
  print(e)
"""


def test_a_full_disk_names_the_csv_keeps_the_old_one_and_leaves_no_partial_file(tmp_path):
  """A write failing past a file-size limit (as on a full disk) had left the hidden .part file
  behind (the failed flush was retried in close(), which then raised before the unlink) and said
  only "File too large (disk full)", naming no file (an audit)."""
  path = tmp_path / 'sub.csv'
  path.write_text('id,label\nold,3\n')
  out = subprocess.run([sys.executable, '-c', _FULL_DISK, str(path)], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == (f'{path}: {TOO_LARGE}: no CSV written; the '
                                'existing sub.csv is kept'), out.stdout + out.stderr
  assert path.read_text() == 'id,label\nold,3\n'
  assert [p.name for p in tmp_path.iterdir()] == ['sub.csv']


def _run_check(path, *extra):
  proc = subprocess.run([sys.executable, '-m', 'jax_cifar.submission', 'check', str(path), *extra],
                        capture_output=True, text=True)
  return proc.returncode, proc.stdout + proc.stderr


def test_validator_accepts_a_good_file_from_the_command_line(tmp_path):
  path = tmp_path / 'sub.csv'
  _write(path)
  code, out = _run_check(path)
  assert code == 0 and out.startswith('OK') and out.count('\n') == 1, out


def _damage(lines, kind):
  lines = list(lines)
  if kind == 'swapped_rows':
    lines[5], lines[6] = lines[6], lines[5]
  elif kind == 'truncated':
    lines = lines[:-1]
  elif kind == 'truncated_block':  # Still 19 x N' rows for no N': caught by ids, not by count.
    lines = lines[:-19 * 5]
  elif kind == 'label_100':
    lines[10] = lines[10].split(',')[0] + ',100'
  elif kind == 'label_negative':
    lines[10] = lines[10].split(',')[0] + ',-1'
  elif kind == 'label_float':
    lines[10] = lines[10].split(',')[0] + ',3.0'
  elif kind == 'header':
    lines[0] = 'ID,Label'
  elif kind == 'extra_column':
    lines[3] += ',1'
  elif kind == 'reversed_block':
    lines[1:1 + N] = lines[1:1 + N][::-1]
  elif kind == 'sorted_by_label':  # pandas' sort_values('label')
    lines[1:] = sorted(lines[1:], key=lambda line: int(line.split(',')[1]))
  elif kind == 'duplicated_row':  # Row count still right; one id twice, another missing.
    lines[5] = lines[9]
  elif kind == 'duplicate_in_another_order':
    lines[1:1 + N] = lines[1:1 + N][::-1]
    lines[-1] = lines[3]
  elif kind == 'foreign_id':  # An id of a 1-based index, in an otherwise reordered file.
    lines[1], lines[2] = lines[2], lines[1]
    lines[5] = lines[5].replace('_0,', f'_{N // 5},')
  return lines


@pytest.mark.parametrize('kind', ['truncated', 'truncated_block', 'label_100', 'label_negative',
                                  'label_float', 'header', 'extra_column', 'duplicated_row',
                                  'duplicate_in_another_order', 'foreign_id'])
def test_validator_rejects_damaged_files(tmp_path, kind):
  path = tmp_path / 'sub.csv'
  path.write_text('\n'.join(_damage(_expected_lines(), kind)) + '\n')
  with pytest.raises(submission.SubmissionError) as e:
    submission.check_submission(path)
  assert '\n' not in str(e.value) and str(path) in str(e.value)
  assert submission.main(['check', str(path)]) == 1


@pytest.mark.parametrize('kind', ['swapped_rows', 'reversed_block', 'sorted_by_label'])
def test_validator_takes_every_id_once_in_another_order_and_says_so(tmp_path, kind):
  """Kaggle pairs rows with answers by id, so a CSV sorted or merged elsewhere scores the same;
  it had been refused ("line 6: id ..., expected ...")."""
  path = tmp_path / 'sub.csv'
  path.write_text('\n'.join(_damage(_expected_lines(), kind)) + '\n')
  summary = submission.check_submission(path, num_images=N)
  assert summary.startswith('OK') and 'another order' in summary and 'by id' in summary
  inferred = submission.check_submission(path)  # Both notes (the second had replaced the first).
  assert 'another order' in inferred and 'N from the row count' in inferred, inferred
  path.write_text('\n'.join(_expected_lines()) + '\n')
  assert 'order' not in submission.check_submission(path, num_images=N)


def test_a_file_cut_inside_its_last_label_is_pointed_out(tmp_path):
  """`..._5_9999,42` cut to `..._5_9999,4` had passed every check (an audit): the summary says the
  file does not end in a newline, which every complete CSV does (this writer's and pandas')."""
  path = tmp_path / 'sub.csv'
  lines = _expected_lines()
  lines[-1] = lines[-1].rsplit(',', 1)[0] + ',42'
  path.write_text('\n'.join(lines) + '\n')
  assert 'newline' not in submission.check_submission(path, num_images=N)
  path.write_bytes(path.read_bytes()[:-2])
  summary = submission.check_submission(path, num_images=N)
  assert summary.startswith('OK') and 'no newline after the last row: if the file was cut short, ' \
      'its last label may be cut too' in summary, summary


@pytest.mark.parametrize('kind,match', [
    ('duplicated_row', r"line 10: id 'distortion00_3_0' again \(first on line 6\)"),
    ('duplicate_in_another_order', rf"line {19 * N + 1}: id '.*' again \(first on line"),
    ('foreign_id', r"line 6: id 'distortion00_2_4' is not one of this set's ids "
                   r"\(distortion00..18_1..5_0..3\)")])
def test_a_repeated_or_foreign_id_is_named_with_its_line(tmp_path, kind, match):
  path = tmp_path / 'sub.csv'
  path.write_text('\n'.join(_damage(_expected_lines(), kind)) + '\n')
  with pytest.raises(submission.SubmissionError, match=match):
    submission.check_submission(path, num_images=N)


def test_validator_takes_n_from_the_ood_dir(tmp_path):
  path = tmp_path / 'sub.csv'
  _write(path)
  ood_dir = tmp_path / 'ood'
  ood_dir.mkdir()
  for i in range(19):
    np.save(ood_dir / ood.distortion_file(i), np.zeros((N, 32, 32, 3), np.uint8))
  assert submission.check_submission(path, ood_dir).startswith('OK')
  for i in range(19):
    np.save(ood_dir / ood.distortion_file(i), np.zeros((2 * N, 32, 32, 3), np.uint8))
  with pytest.raises(submission.SubmissionError, match='expected 19 x 40'):
    submission.check_submission(path, ood_dir)
  code, out = _run_check(path, '--ood_dir', str(ood_dir))
  assert code == 1 and out.startswith('error: ') and 'expected 19 x 40' in out, out
  assert out.count('\n') == 1, out


def test_without_a_count_the_summary_says_it_was_inferred_and_num_images_checks_it(tmp_path):
  """The last image of every severity block dropped: 19 x 5 x (N/5 - 1) rows, every id in order.
  Without --ood_dir this had read 'OK' with nothing to say the count was only inferred."""
  lines = _expected_lines()
  per = N // ood.SEVERITIES
  kept = [lines[0]] + [row for row in lines[1:] if not row.split(',')[0].endswith(f'_{per - 1}')]
  path = tmp_path / 'sub.csv'
  path.write_text('\n'.join(kept) + '\n')
  summary = submission.check_submission(path)
  # The hint's count is the flag's unit (a user who gave its 10,000 per severity was refused).
  assert summary.startswith('OK') and 'N from the row count' in summary and (
      '--num_images with the images per distortion file, 50000 for that set' in summary), summary
  with pytest.raises(submission.SubmissionError, match=f'expected 19 x {N} = {19 * N} '
                                                       rf'\(from --num_images {N}, the images per '
                                                       r'distortion file\)'):
    submission.check_submission(path, num_images=N)
  code, out = _run_check(path, '--num_images', str(N))
  assert code == 1 and out.startswith('error: ') and out.count('\n') == 1, out
  _write(path)
  assert submission.check_submission(path, num_images=N) == (
      f'OK: {path}: {19 * N} rows = 19 distortions x 5 severities x {per} images')
  with pytest.raises(submission.SubmissionError, match='positive multiple of 5'):
    submission.check_submission(path, num_images=7)


def test_trailing_blank_lines_are_tolerated_and_rows_split_only_at_newlines(tmp_path):
  path = tmp_path / 'sub.csv'
  lines = _expected_lines()
  path.write_text('\r\n'.join(lines) + '\r\n\n\n')  # CRLF and blank lines after the last row
  assert submission.check_submission(path, num_images=N).startswith('OK')
  lines[4] = lines[4] + '\u2028'  # str.splitlines() had split the row here: 'not 19 x N rows'
  path.write_text('\n'.join(lines) + '\n')
  with pytest.raises(submission.SubmissionError, match=r'line 5: label .* is not an integer'):
    submission.check_submission(path, num_images=N)


def test_a_byte_order_mark_before_the_header_is_read_past_but_not_elsewhere(tmp_path):
  path = tmp_path / 'sub.csv'
  lines = _expected_lines()
  path.write_bytes(b'\xef\xbb\xbf' + '\r\n'.join(lines).encode() + b'\r\n')  # Excel's "CSV UTF-8"
  assert submission.check_submission(path, num_images=N).startswith('OK')
  lines[1] = '\ufeff' + lines[1]  # a mark inside the file is still a damaged id
  path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  with pytest.raises(submission.SubmissionError, match=r'line 2: id'):
    submission.check_submission(path, num_images=N)


@pytest.mark.parametrize('problem,match', [
    ('missing', 'missing 1 of the 19 distortion files: distortion11.npy$'),
    ('dtype', 'dtype float32'), ('shape', 'shape'),
    ('not_multiple_of_5', 'multiple of 5'), ('truncated', 'truncated'), ('trailing', 'trailing'),
    ('not_npy', 'not a readable .npy'), ('different_n', 'same N'),
    ('fortran', 'Fortran-ordered'), ('empty', r'0 images, expected a positive multiple of 5'),
    ('negative_count', r'negative dimension \(-5, 32, 32, 3\)')])
def test_each_bad_distortion_file_gives_one_line_naming_it(tmp_path, problem, match):
  for i in range(19):
    np.save(tmp_path / ood.distortion_file(i), np.zeros((10, 32, 32, 3), np.uint8))
  bad = tmp_path / 'distortion11.npy'
  if problem == 'missing':
    bad.unlink()
  elif problem == 'dtype':
    np.save(bad, np.zeros((10, 32, 32, 3), np.float32))
  elif problem == 'shape':
    np.save(bad, np.zeros((10, 3, 32, 32), np.uint8))
  elif problem == 'not_multiple_of_5':
    np.save(bad, np.zeros((11, 32, 32, 3), np.uint8))
  elif problem == 'truncated':
    bad.write_bytes(bad.read_bytes()[:-1])
  elif problem == 'trailing':
    bad.write_bytes(bad.read_bytes() + b'\0')
  elif problem == 'not_npy':
    bad.write_bytes(b'id,label\n')
  elif problem == 'fortran':
    np.save(bad, np.asfortranarray(np.zeros((10, 32, 32, 3), np.uint8)))
  elif problem == 'empty':  # (A mutation audit: a file of no images had passed its check.)
    np.save(bad, np.zeros((0, 32, 32, 3), np.uint8))
  elif problem == 'negative_count':  # (A mutation audit: it had been named 'trailing bytes'.)
    bad.write_bytes(bad.read_bytes().replace(b'(10, 32', b'(-5, 32', 1))
  else:
    np.save(bad, np.zeros((15, 32, 32, 3), np.uint8))
  with pytest.raises(DataError, match=match) as e:
    ood.check_distortion_dir(tmp_path)
  assert '\n' not in str(e.value) and 'distortion11.npy' in str(e.value)


def test_missing_distortion_files_are_named_together_with_what_the_folder_holds(tmp_path):
  """Only distortion00.npy: file not found was named, one file per run, whatever the folder held
  (files one level down, other capitals, broken links: an audit)."""
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(DataError, match=r'missing 19 of the 19 distortion files: distortion00\.npy '
                                      r'\.\. distortion18\.npy; the folder holds notes\.txt$'):
    ood.check_distortion_dir(tmp_path)
  c_dir = tmp_path / 'c100c'  # The other format given to --ood_dir.
  c_dir.mkdir()
  for name in ('fog', 'gaussian_noise', 'labels'):
    np.save(c_dir / f'{name}.npy', np.zeros((5,), np.uint8))
  with pytest.raises(DataError, match=r"missing 19 of the 19 .*; it holds CIFAR-100-C's "
                                      r'<corruption>\.npy files instead, which evaluate takes as '
                                      r'--cifar100c_dir$'):
    ood.check_distortion_dir(c_dir)
  inner = tmp_path / 'kaggle ood'  # (Quoted in the flag it offers: pasted, a space had split it.)
  inner.mkdir()
  for i in range(19):
    np.save(inner / ood.distortion_file(i), np.zeros((5, 32, 32, 3), np.uint8))
  with pytest.raises(DataError, match=rf"; they are in {inner}: give --ood_dir '{inner}'$"):
    ood.check_distortion_dir(tmp_path)
  (inner / 'distortion03.npy').rename(inner / 'Distortion03.npy')
  (inner / 'distortion07.npy').unlink()
  (inner / 'distortion07.npy').symlink_to(tmp_path / 'gone.npy')
  with pytest.raises(DataError) as e:
    ood.check_distortion_dir(inner)
  assert str(e.value) == (f'{inner}: missing 2 of the 19 distortion files: distortion03.npy '
                          '(found Distortion03.npy), distortion07.npy (a broken link)')


def test_a_file_of_another_extension_and_four_missing_or_present_files_are_named(tmp_path):
  """np.savez writes distortion03.npz: it is named beside the missing .npy. Up to four missing files
  are each named; with four present, those four (a mutation audit: the .npz lookup and both
  limits of four could change with every test passing)."""
  for i in range(19):
    np.save(tmp_path / ood.distortion_file(i), np.zeros((5, 32, 32, 3), np.uint8))
  (tmp_path / 'distortion03.npy').unlink()
  np.savez(tmp_path / 'distortion03', np.zeros((5, 32, 32, 3), np.uint8))
  for i in (5, 6, 7):
    (tmp_path / ood.distortion_file(i)).unlink()
  (tmp_path / 'distortion06.npy.gz').write_bytes(b'')  # Compressed (a review: not named).
  with pytest.raises(DataError) as e:
    ood.check_distortion_dir(tmp_path)
  assert str(e.value) == (f'{tmp_path}: missing 4 of the 19 distortion files: distortion03.npy '
                          '(found distortion03.npz), distortion05.npy, distortion06.npy '
                          '(found distortion06.npy.gz), distortion07.npy')
  (tmp_path / 'distortion06.npy.gz').unlink()
  for i in range(4, 18):
    (tmp_path / ood.distortion_file(i)).unlink(missing_ok=True)
  with pytest.raises(DataError) as e:
    ood.check_distortion_dir(tmp_path)
  assert str(e.value) == (f'{tmp_path}: missing 15 of the 19 distortion files: every one but '
                          'distortion00.npy, distortion01.npy, distortion02.npy, distortion18.npy')


@pytest.mark.parametrize('layout', ['distortion_dir', 'cifar100c_dir'])
def test_the_last_file_of_a_set_must_have_the_same_n_too(tmp_path, layout):
  """Every file is compared with the first, the last one and CIFAR-100-C's included: a set whose
  last file was cut short had been predicted with misaligned severity blocks (a mutation audit:
  skipping the last file, or CIFAR-100-C's check altogether, passed every test)."""
  if layout == 'distortion_dir':
    for i in range(19):
      n = 10 if i < 18 else 5
      np.save(tmp_path / ood.distortion_file(i), np.zeros((n, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r'distortion18\.npy: 5 images, but distortion00\.npy has '
                                        r'10; every file must have the same N$'):
      ood.check_distortion_dir(tmp_path)
  else:
    for i, name in enumerate(ood.CORRUPTIONS):
      n = 10 if i < 18 else 5
      np.save(tmp_path / f'{name}.npy', np.zeros((n, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r'jpeg_compression\.npy: 5 images, but gaussian_noise\.npy '
                                        r'has 10; every file must have the same N$'):
      ood.check_cifar100c_dir(tmp_path)


def test_an_unfinished_or_partial_corrupt_set_is_named_as_such(tmp_path):
  """A set of one distortion (corrupt --corruptions fog) had been 'missing 18 of the 19 distortion
  files: distortion00.npy, ..., distortion18.npy', a range holding the file it has (a review)."""
  from jax_cifar.corruptions import store  # pylint: disable=import-outside-toplevel
  assert ood.CORRUPT_MANIFEST == store.MANIFEST
  np.save(tmp_path / 'distortion05.npy', np.zeros((5, 32, 32, 3), np.uint8))
  with pytest.raises(DataError) as e:
    ood.check_distortion_dir(tmp_path)
  assert str(e.value) == (f'{tmp_path}: missing 18 of the 19 distortion files: every one but '
                          'distortion05.npy')
  (tmp_path / store.MANIFEST).write_text(json.dumps({'corruptions': ['fog']}))
  with pytest.raises(DataError, match=r'but distortion05\.npy; python -m jax_cifar\.corrupt made '
                     r'it with --corruptions fog, and the Kaggle layout needs all 19 \(a subset is '
                     r'scored as CIFAR-100-C files: corrupt --format cifar100c, then evaluate '
                     r'--cifar100c_dir\)$'):
    ood.check_distortion_dir(tmp_path)
  (tmp_path / store.MANIFEST).write_text(json.dumps({'corruptions': list(ood.CORRUPTIONS)}))
  for i in range(6, 12):
    np.save(tmp_path / ood.distortion_file(i), np.zeros((5, 32, 32, 3), np.uint8))
  with pytest.raises(DataError, match=r': missing 12 of the 19 distortion files: distortion00\.npy, '
                     r'distortion01\.npy, distortion02\.npy and 9 more; python -m '
                     r'jax_cifar\.corrupt has not finished it: run the same command again$'):
    ood.check_distortion_dir(tmp_path)
  # Unreadable, or nested too deep for json (a RecursionError traceback: a security review): no
  # hint, the same error otherwise.
  for damaged in ('[', '[' * 200_000):
    (tmp_path / store.MANIFEST).write_text(damaged)
    with pytest.raises(DataError, match=r'and 9 more$'):
      ood.check_distortion_dir(tmp_path)


@pytest.mark.parametrize('n', [7, 0, -5, 2.5, True])
def test_writer_refuses_image_counts_that_are_not_whole_severity_blocks(tmp_path, n):
  """7 images per file had written 5 rows each, the labels paired with the wrong severities."""
  with pytest.raises(ValueError, match=f'positive multiple of {ood.SEVERITIES}'):
    submission.SubmissionWriter(tmp_path / 'sub.csv', n)
  assert not list(tmp_path.iterdir())


def test_writer_refuses_float_labels_instead_of_truncating_them(tmp_path):
  with pytest.raises(ValueError, match='labels must be integers, got float64'):
    with submission.SubmissionWriter(tmp_path / 'sub.csv', 5) as w:
      w.add(0, np.array([1.0, 2.0, 7.9, 3.0, 4.0]))
  assert not list(tmp_path.iterdir())  # No CSV, no temporary file left.


def test_writer_refuses_a_repeated_or_skipped_distortion_file(tmp_path):
  """Rows of a file written twice (or one skipped) would give duplicate (or missing) ids that the
  19-file count in finish() cannot see."""
  for order, bad in (([0, 0], 'distortion 00 out of order; expected 01'),
                     ([1], 'distortion 01 out of order; expected 00'),
                     ([0, 2], 'distortion 02 out of order; expected 01')):
    with pytest.raises(ValueError, match=bad):
      with submission.SubmissionWriter(tmp_path / 'sub.csv', N) as w:
        for d in order:
          w.add(d, _labels(d))
  assert not list(tmp_path.iterdir())


def test_a_home_relative_csv_is_checked(tmp_path, monkeypatch):
  """'~/sub.csv' from Python (or quoted) had been "cannot read ... '~/sub.csv'" (a path review)."""
  _write(tmp_path / 'sub.csv')
  monkeypatch.setenv('HOME', str(tmp_path))
  assert submission.check_submission('~/sub.csv', num_images=N).startswith('OK')
  assert submission.main(['check', '~/sub.csv', '--num_images', str(N)]) == 0


@pytest.mark.parametrize('argv', [['check', ''], ['check', 'sub.csv', '--ood_dir=']])
def test_an_empty_csv_or_ood_dir_is_refused_as_empty(argv, capsys):
  """An unset shell variable had been the current folder: "error: .: cannot read (Is a
  directory)", or its files counted as the OOD set's (a flag audit)."""
  with pytest.raises(SystemExit) as e:
    submission.main(argv)
  assert e.value.code == 2 and 'is empty' in capsys.readouterr().err
