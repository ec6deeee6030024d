"""Edges of the command-line parsing that a mutation audit of cli.py found unpinned: a blank value,
`--config` as the last word, a run's config in capitals, the packaged-config hint only for a file
that is missing."""

import argparse
import subprocess
import sys

import pytest

from _train_cli import ROOT, the_error, train
from jax_cifar import cli


def test_a_blank_value_is_refused_like_an_empty_one(tmp_path):
  """An unset shell variable in quotes can leave spaces: `--workdir " "` would train into a folder
  named by spaces, `--out " "` write there."""
  check = cli.nonempty('the folder to write')
  assert check('out') == 'out'
  for blank in ('', ' ', '\t '):
    with pytest.raises(argparse.ArgumentTypeError, match='^is empty: give the folder to write$'):
      check(blank)
  line = the_error(train(None, '--workdir= ', config=str(ROOT / 'configs' / 'smoke.py'),
                         overrides={}, cwd=tmp_path), status=2)
  assert line == ("error: --workdir is empty: give the run's folder (--helpshort lists the "
                  'flags)'), line
  assert not list(tmp_path.iterdir())
  # Two blank flags: one line naming both (absl gives a line each, and the second had been a
  # line of its own after the error line: a review).
  out = subprocess.run([sys.executable, '-m', 'jax_cifar.evaluate', '--workdir=', '--ood_dir= '],
                       cwd=tmp_path, capture_output=True, text=True, check=False)
  line = the_error(out, status=2)
  assert line.startswith("error: --workdir is empty: give the training run's folder; --ood_dir "
                         'is empty: give the folder of distortion00.npy'), line
  assert out.stderr.strip() == line, out.stderr


def test_config_as_the_last_word_is_one_error_line(tmp_path):
  """`--config` with no value after it (the file name lost to a line break) is absl's error line,
  not an IndexError while cli looks for the config's name; so is evaluate's `--workdir` as the
  last word, which cli reads to find the run whose config the overrides change."""
  line = the_error(train(tmp_path / 'run', '--config', config=None, overrides={}), status=2)
  assert line == 'error: Missing value for flag --config (--helpshort lists the flags)', line
  out = subprocess.run([sys.executable, '-m', 'jax_cifar.evaluate', '--config.seed=1',
                        '--workdir'], cwd=ROOT, capture_output=True, text=True, check=False)
  line = the_error(out, status=2)
  assert 'overrides without --config change the config of the run in --workdir, which is not '\
         'given' in line, line
  assert not (tmp_path / 'run').exists()


def test_a_runs_config_json_in_capitals_is_refused_too(tmp_path):
  line = the_error(train(tmp_path / 'run', config='RUN/CONFIG.JSON', overrides={}), status=2)
  assert 'not RUN/CONFIG.JSON: give the one the run started from' in line, line


def test_the_packaged_config_hint_is_only_for_a_file_that_is_missing(tmp_path):
  """A smoke.py of the user's own that reads a missing file is not the packaged smoke config: the
  error names the missing file and offers no `jax_cifar:smoke`."""
  own = tmp_path / 'smoke.py'
  own.write_text('def get_config():\n  return open("/no/such/folder/values.txt").read()\n')
  line = the_error(train(tmp_path / 'run', config=str(own), overrides={}), status=2)
  assert '/no/such/folder/values.txt' in line and 'jax_cifar:' not in line, line
  own.unlink()
  line = the_error(train(tmp_path / 'run', config=str(own), overrides={}), status=2)
  assert line.endswith('(the packaged config of that name, from any folder: --config '
                       'jax_cifar:smoke)'), line


def test_too_many_open_files_says_which_limit_to_raise(tmp_path):
  """`ulimit -n 12` had ended in the bare "error: Too many open files" (a resource review)."""
  code = ('import resource, sys\nfrom jax_cifar import errors\n'
          'files = []\nresource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n'
          'try:\n  while True:\n    files.append(open(sys.argv[1], "rb"))\n'
          'except OSError as e:\n  print(errors.user_message(e))\n')
  (tmp_path / 'f').write_text('x')
  out = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'f')], capture_output=True,
                       text=True, timeout=60)
  assert out.stdout.strip() == (f'{tmp_path / "f"}: Too many open files (raise the limit on open '
                                'files: ulimit -n)'), out.stdout + out.stderr


def test_the_whole_systems_file_table_full_is_not_told_to_raise_ulimit():
  import errno  # pylint: disable=import-outside-toplevel
  from jax_cifar import errors  # pylint: disable=import-outside-toplevel
  assert errors.os_reason(errno.ENFILE, 'Too many open files in system') == (
      'Too many open files in system (the whole system has too many files open)')
