"""scripts/transfer_experiment.py's command line (its runs are the trainer's, tested elsewhere)."""

import os

import pytest

from conftest import load_script


@pytest.fixture(scope='module')
def script():
  return load_script('transfer_experiment')


def test_trailing_config_flags_reach_both_runs_as_the_docs_say(script):
  args = script.parse_args(['--weights', 'w', '--out', 'o', '--config.train.seed=3',
                            '--num_epochs', '2', '--config.optim.lr=0.01'])
  assert args.overrides == ['--config.train.seed=3', '--config.optim.lr=0.01']
  assert args.num_epochs == 2.0 and args.weights == os.path.abspath('w')
  assert script.parse_args(['--weights', 'w', '--out', 'o']).overrides == []


@pytest.mark.parametrize('extra', [['--learning_rate=3'], ['stray']])
def test_other_unknown_arguments_are_refused_naming_them(script, extra, capsys):
  with pytest.raises(SystemExit) as e:
    script.parse_args(['--weights', 'w', '--out', 'o', *extra])
  assert e.value.code == 2
  assert f'unrecognized arguments: {extra[0]}' in capsys.readouterr().err


def test_paths_are_the_callers_though_the_runs_start_in_the_repository(script, tmp_path,
                                                                        monkeypatch):
  monkeypatch.chdir(tmp_path)
  args = script.parse_args(['--state_dict', 'r50.pth', '--out', 'runs/x'])
  assert args.state_dict == str(tmp_path / 'r50.pth') and args.out == str(tmp_path / 'runs' / 'x')
  assert args.weights is None
