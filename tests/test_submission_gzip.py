"""Compressed submissions: `submission check` reads a .csv.gz (Kaggle takes one; it had said only
"'utf-8' codec can't decode byte 0x8b"), and evaluate refuses to write its plain CSV under a
compressed name (`--submission out.csv.gz` had done so: a bad-input review)."""

import gzip

import pytest

from jax_cifar.evaluation import submission
from test_submission import _write


def test_check_reads_a_gzipped_csv_as_the_csv_and_names_a_cut_one(tmp_path):
  plain = tmp_path / 'sub.csv'
  _write(plain)
  packed = tmp_path / 'sub.csv.gz'
  packed.write_bytes(gzip.compress(plain.read_bytes()))
  assert submission.check_submission(packed) == submission.check_submission(plain).replace(
      str(plain), str(packed))
  packed.write_bytes(packed.read_bytes()[:-30])
  with pytest.raises(submission.SubmissionError, match=rf'^{packed}: cannot read \('):
    submission.check_submission(packed)


def test_a_file_larger_than_any_submission_is_refused_before_it_is_read_whole(tmp_path,
                                                                              monkeypatch):
  """A 1 MB .csv.gz of zeros had decompressed to 1 GiB in memory (3.3 GB at its peak: a security
  review). The limit is lowered here so that a real submission file exceeds it."""
  plain = tmp_path / 'sub.csv'
  _write(plain)
  packed = tmp_path / 'sub.csv.gz'
  packed.write_bytes(gzip.compress(plain.read_bytes()))
  monkeypatch.setattr(submission, 'MAX_CSV_BYTES', plain.stat().st_size - 1)
  reads, real_open = [], gzip.open

  class Counted:  # The sizes asked of the decompressed stream: bounded, not the whole file.
    def __init__(self, *args):
      self.f = real_open(*args)

    def read(self, size=-1):
      reads.append(size)
      return self.f.read(size)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

  monkeypatch.setattr(submission.gzip, 'open', Counted)
  for path in (plain, packed):
    with pytest.raises(submission.SubmissionError, match=(
        rf'^{path}: holds more than 0 MiB of text \(a full submission is about 22 MB\): not a '
        'submission of this task$')):
      submission.check_submission(path)
  # Refused after at most the limit + 1 bytes were inflated (a mutation audit: a whole read of
  # the stream, the memory blow-up this limit exists for, had passed).
  assert reads == [submission.MAX_CSV_BYTES + 1]
  monkeypatch.setattr(submission, 'MAX_CSV_BYTES', plain.stat().st_size)
  assert submission.check_submission(packed) == submission.check_submission(plain).replace(
      str(plain), str(packed))


@pytest.mark.parametrize('name', ['out.csv.gz', 'out.zip', 'OUT.CSV.XZ'])
def test_a_compressed_name_for_the_written_csv_is_refused(tmp_path, name):
  with pytest.raises(submission.SubmissionError, match=(
      rf'^--submission {tmp_path / name}: the CSV is written uncompressed, so its name ends in '
      r'\.csv')):
    submission.check_output_path(tmp_path / name)
  assert not (tmp_path / name).exists()
