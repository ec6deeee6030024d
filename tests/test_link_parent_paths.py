"""`LINK/..` in a path: the OS reads it as the parent of LINK's target, while Python's abspath,
mkstemp and tensorstore shorten it as text to the folder that holds LINK. Every command reads
such a path as the OS does: a run in `LINK/../run` had its checkpoint probe fail ("cannot write
checkpoints"), an intact run was called damaged, and a report and a conversion were written to
another folder than the one they named (a path review)."""

import os

import numpy as np
import pytest

from jax_cifar import convert, evaluate, workdir
from jax_cifar.evaluation import report
from jax_cifar.training import trainer
import jax_cifar
from _tiny_run import config as tiny_config


def test_train_evaluate_load_report_and_convert_read_link_parent_as_the_os_does(
    tmp_path, monkeypatch):
  (tmp_path / 'deep' / 'a' / 'b').mkdir(parents=True)
  (tmp_path / 'lnk').symlink_to(tmp_path / 'deep' / 'a' / 'b')
  monkeypatch.chdir(tmp_path)
  assert workdir.expanded('lnk/../run') == str(tmp_path / 'deep' / 'a' / 'run')
  assert workdir.expanded('lnk/run') == 'lnk/run'  # Without `..`: as given.
  c = tiny_config()
  c.data.synthetic_size, c.data.val_fraction, c.train.max_steps = 320, 0.2, 2
  assert trainer.train_and_evaluate(c, 'lnk/../run')['step'] == 2
  run = tmp_path / 'deep' / 'a' / 'run'
  assert (run / 'checkpoints' / 'latest' / '2').is_dir() and not (tmp_path / 'run').exists()
  result = evaluate.evaluate(c, workdir.expanded('lnk/../run'), 'latest')
  assert result['step'] == 2 and (run / 'eval_latest.json').is_file()
  model, _ = jax_cifar.load_model('lnk/../run', 'latest')
  assert model is not None
  report.write_report(['lnk/../run'], 'lnk/../rep')
  assert (tmp_path / 'deep' / 'a' / 'rep' / 'summary.md').is_file()
  assert not (tmp_path / 'rep').exists()
  tree = {'fc': {'kernel': np.ones((2, 3), np.float32), 'bias': np.zeros(3, np.float32)}}
  convert.save_converted(tree, 'resnet18', 'lnk/../w')
  assert sorted(os.listdir(tmp_path / 'deep' / 'a')) == ['b', 'rep', 'run', 'w']
  assert convert.read_converted('lnk/../w')[1]['fc.kernel'].shape == (2, 3)


def test_only_the_part_up_to_the_last_dotdot_is_resolved(tmp_path, monkeypatch):
  """A link after the last `..` stays a link: convert refuses an --output that is one, and
  resolving it had written the conversion at the link's target (the diff review)."""
  (tmp_path / 'd').mkdir()
  (tmp_path / 'target').mkdir()
  (tmp_path / 'lnk').symlink_to(tmp_path / 'target')
  monkeypatch.chdir(tmp_path)
  assert workdir.expanded('d/../lnk') == str(tmp_path / 'lnk')
  assert workdir.expanded('d/../lnk/x') == str(tmp_path / 'lnk' / 'x')
  with pytest.raises(convert.OutputExistsError, match='not a folder but a file or link'):
    convert.check_output(workdir.expanded('d/../lnk'), overwrite=True)
