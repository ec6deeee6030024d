"""Paths orbax and tensorstore cannot use, so each entry point names such a path before it trains,
converts or restores: paths that are not UTF-8 (a name of other bytes, as a shell passes it) and
paths with a backslash. A workdir of the first kind had trained up to its first save and failed
there, and a converter output had printed some 1,900 lines of orbax tracebacks (a bad-input
review); tensorstore reads a backslash as a folder separator, and a run in `a\\b` had written its
arrays into `a/b` and said "Done" (a path review)."""

import os
import pathlib

import pytest

from jax_cifar import converted, step_folders, workdir
from jax_cifar.configs import default
from jax_cifar.training import trainer


def _not_utf8(tmp_path: pathlib.Path) -> str:
  """tmp_path/bad<0xff>name as Python gives it from argv (a surrogate escape)."""
  return os.fsdecode(os.fsencode(tmp_path) + b'/bad\xffname')


def test_a_workdir_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path):
  c = default.get_config()
  c.data.source, c.model.name = 'synthetic', 'simple_cnn'
  with pytest.raises(workdir.WorkdirError, match=r"^workdir b'.*/bad\\xffname' is not a UTF-8 "
                                                 r'path, and orbax and tensorstore .*: rename it$'):
    trainer.train_and_evaluate(c, _not_utf8(tmp_path))
  assert os.listdir(tmp_path) == []


def test_a_converter_output_or_converted_weights_that_are_not_utf8_are_named(tmp_path):
  with pytest.raises(converted.OutputPathError, match=r"^output b'.*/bad\\xffname' is not a UTF-8"):
    converted.check_output(_not_utf8(tmp_path), overwrite=False)
  os.mkdir(os.fsencode(_not_utf8(tmp_path)))  # (It exists: still named, not "not converted".)
  with pytest.raises(converted.ConversionError, match=r"^converted checkpoint b'.*/bad\\xffname' "
                                                      r'is not a UTF-8'):
    converted.read_metadata(_not_utf8(tmp_path), 'resnet18')


def test_a_checkpoint_folder_that_is_not_utf8_is_not_called_damaged(tmp_path):
  step_dir = pathlib.Path(_not_utf8(tmp_path), 'checkpoints', 'latest', '3')
  with pytest.raises(step_folders.CheckpointError, match=r"^checkpoint b'.*/bad\\xffname/"
                                                         r"checkpoints/latest/3' is not a UTF-8"):
    step_folders.restore_step(step_dir, lambda: pytest.fail('restored'))
  assert workdir.orbax_cannot_use(tmp_path / 'fine name é') is None


def test_a_workdir_with_a_backslash_is_refused_before_anything_is_written(tmp_path):
  c = default.get_config()
  c.data.source, c.model.name = 'synthetic', 'simple_cnn'
  with pytest.raises(workdir.WorkdirError, match=r"^workdir '.*/runs\\\\a' holds a backslash, "
                     r'which tensorstore .* reads as a folder separator, .*: rename it$'):
    trainer.train_and_evaluate(c, str(tmp_path / 'runs\\a'))
  assert os.listdir(tmp_path) == []


def test_a_converter_output_or_checkpoint_with_a_backslash_is_named(tmp_path):
  with pytest.raises(converted.OutputPathError, match=r'^output .* holds a backslash'):
    converted.check_output(str(tmp_path / 'conv\\bs'), overwrite=False)
  os.mkdir(tmp_path / 'conv\\bs')
  with pytest.raises(converted.ConversionError,
                     match=r'^converted checkpoint .* holds a backslash'):
    converted.read_metadata(str(tmp_path / 'conv\\bs'), 'resnet18')
  with pytest.raises(step_folders.CheckpointError, match=r'^checkpoint .*/r\\\\un/checkpoints/'
                                                         r"latest/3' holds a backslash"):
    step_folders.restore_step(tmp_path / 'r\\un' / 'checkpoints' / 'latest' / '3',
                              lambda: pytest.fail('restored'))


def test_a_relative_workdir_in_a_folder_with_a_backslash_is_refused(tmp_path, monkeypatch):
  """`train ... --workdir run` from inside `a\\b` had trained, its arrays in a/b/run (the diff
  review): the absolute path is the one tensorstore sees."""
  (tmp_path / 'a\\b').mkdir()
  monkeypatch.chdir(tmp_path / 'a\\b')
  c = default.get_config()
  c.data.source, c.model.name = 'synthetic', 'simple_cnn'
  with pytest.raises(workdir.WorkdirError, match=r"^workdir '.*/a\\\\b/run' holds a backslash"):
    trainer.train_and_evaluate(c, 'run')
  assert os.listdir(tmp_path / 'a\\b') == []


def test_a_utf8_workdir_under_a_locale_that_is_not_utf8_is_refused_and_says_what_to_set(tmp_path):
  """Python encodes file names with the locale's encoding, tensorstore with UTF-8: under a Latin-1
  locale a run in `café` had written its arrays into `cafÃ©`, said "Done", and its resume called
  the checkpoint damaged; under LC_ALL=C (UTF-8 mode off) the name had been called "not a UTF-8
  path" (a locale review). The train CLI, under the C locale with Python's UTF-8 mode off."""
  from _train_cli import ROOT, the_error, train  # pylint: disable=import-outside-toplevel
  env = {**os.environ, 'LC_ALL': 'C', 'PYTHONUTF8': '0', 'PYTHONCOERCECLOCALE': '0'}
  line = the_error(train(tmp_path / 'café', env=env))
  assert line.endswith(r"workdir b'" + str(tmp_path) + r"/caf\xc3\xa9': this Python reads file "
                       'names as ascii (its locale), orbax and tensorstore (the checkpoint files) '
                       'as UTF-8, so the two would not name one folder: run with PYTHONUTF8=1 (or '
                       'a UTF-8 locale, LC_ALL=C.UTF-8)'), line
  assert os.listdir(tmp_path) == []
  # A relative workdir inside such a folder: it had trained, then failed at its first save (the
  # diff review). Orbax hands tensorstore the absolute path.
  (tmp_path / 'été').mkdir()
  line = the_error(train('runs/a', env=env, cwd=tmp_path / 'été',
                         config=str(ROOT / 'configs' / 'default.py')))
  assert line.endswith(r"workdir b'" + str(tmp_path) + r"/\xc3\xa9t\xc3\xa9/runs/a': this Python "
                       'reads file names as ascii (its locale), orbax and tensorstore (the '
                       'checkpoint files) as UTF-8, so the two would not name one folder: run with '
                       'PYTHONUTF8=1 (or a UTF-8 locale, LC_ALL=C.UTF-8)'), line
  assert os.listdir(tmp_path / 'été') == []


def test_under_a_latin1_locale_a_utf8_name_is_refused_and_a_latin1_name_is_not_utf8(monkeypatch):
  """The Latin-1 case itself (this machine may have no such locale): Python's own encoding of the
  name stands in for the locale's."""
  monkeypatch.setattr(workdir.os, 'fsencode', lambda p: os.fspath(p).encode('latin-1'))
  # `café` typed in a UTF-8 terminal reaches such a Python as 'cafÃ©' (bytes c3 a9).
  assert 'so the two would not name one folder' in workdir.orbax_cannot_use('/runs/caf\xc3\xa9')
  # A name in Latin-1 itself (byte e9) is no UTF-8 path at all.
  assert 'is not a UTF-8 path' in workdir.orbax_cannot_use('/runs/café')
  assert workdir.orbax_cannot_use('/runs/plain') is None
  # A name the locale cannot encode at all (given from Python): said, not raised (the diff review).
  assert 'so the two would not name one folder' in workdir.orbax_cannot_use('/runs/実験')
