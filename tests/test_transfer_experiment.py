"""scripts/transfer_experiment.py's command line (its runs are the trainer's, tested elsewhere)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from conftest import load_script

ROOT = pathlib.Path(__file__).resolve().parent.parent


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


TINY = ['--weights', 'unused', '--only', 'random', '--image_size', '32', '--train_limit', '48',
        '--eval_limit', '16', '--batch_size', '16', '--config.data.source=synthetic',
        '--config.data.synthetic_size=400', '--config.data.val_fraction=0.5',
        '--config.model.name=simple_cnn']


def test_the_same_command_keeps_a_finished_arm_and_other_settings_are_refused(script, tmp_path,
                                                                              capsys):
  """A rerun had failed with a CalledProcessError traceback (the arm's workdir refused
  resume=false), and `--only` invocations had overwritten each other's results.json (an audit)."""
  out = tmp_path / 'out'
  assert script.main([*TINY, '--out', str(out), '--num_epochs', '1']) == 0
  first = json.loads((out / 'results.json').read_text())
  assert [r['arm'] for r in first] == ['random'] and first[0]['steps'] == 3
  capsys.readouterr()
  assert script.main([*TINY, '--out', str(out), '--num_epochs', '1']) == 0
  assert '[random] kept from' in capsys.readouterr().out
  assert json.loads((out / 'results.json').read_text()) == first
  with pytest.raises(SystemExit, match=r'out holds runs made with other settings '
                                       r'\(num_epochs 1\.0 -> 2\.0\): use another --out'):
    script.main([*TINY, '--out', str(out), '--num_epochs', '2'])
  # The other arm alone, with other settings: refused too (they had sat side by side; a review).
  with pytest.raises(SystemExit, match=r'other settings \(num_epochs 1\.0 -> 2\.0\)'):
    script.main([*TINY[:3], 'pretrained', *TINY[4:], '--out', str(out), '--num_epochs', '2'])
  assert float((out / 'results' / 'random.seconds').read_text()) == first[0]['wall_s']


def test_a_failed_arm_is_one_line_naming_its_log(script, tmp_path):
  with pytest.raises(SystemExit) as e:
    script.main([*TINY, '--out', str(tmp_path), '--config.data.val_fraction=0.1'])
  message = str(e.value)
  assert message.startswith('error: random failed (exit 1): error: data.val_fraction=0.1 holds '
                            'out no validation images'), message
  assert message.endswith(f'(whole log: {tmp_path / "random.log"})') and '\n' not in message


CHILD = '''
import pathlib, signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda *_: got.append(1))
print('ready', flush=True)
end = time.time() + 30
while not got and time.time() < end:
  time.sleep(0.05)
time.sleep(1.0)  # A second SIGINT would arrive here.
pathlib.Path(sys.argv[1]).write_text(str(len(got)))
sys.exit(int(sys.argv[2]) if got else 0)
'''


@pytest.mark.parametrize('exit_code', [75, 0])
def test_ctrl_c_reaches_the_arm_once_and_says_the_command_resumes(tmp_path, exit_code):
  """Ctrl-C had reached the trainer twice (its process group, then subprocess.run's kill), so it
  died without saving; the script then ended in a traceback (an audit). A trainer stopped at its
  last step exits 0: the script stops all the same, not going on to the next arm (a review)."""
  count, log = tmp_path / 'count', tmp_path / 'arm.log'
  code = ('import pathlib, signal, sys\n'
          # As an interactive shell starts it: a suite started in the background (CI) has SIGINT
          # ignored, inherited, and Python then installs no KeyboardInterrupt handler.
          'signal.signal(signal.SIGINT, signal.default_int_handler)\n'
          f'sys.path.insert(0, {str(ROOT / "scripts")!r})\n'
          'import transfer_experiment\n'
          f'transfer_experiment.run("pretrained", [sys.executable, "-c", {CHILD!r}, {str(count)!r}, '
          f'"{exit_code}"], '
          f'pathlib.Path({str(log)!r}))\n')
  parent = subprocess.Popen([sys.executable, '-c', code], stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # A terminal's foreground group of its own.
  end = time.time() + 60
  while not (log.exists() and 'ready' in log.read_text()) and time.time() < end:
    time.sleep(0.05)
  if not (log.exists() and 'ready' in log.read_text()):  # Said so, not a signal at a wrong time.
    os.killpg(parent.pid, signal.SIGKILL)
    pytest.fail(f'the arm never got ready in 60 s: {parent.communicate()[1][-2000:]}')
  os.killpg(parent.pid, signal.SIGINT)  # What Ctrl-C does: the whole foreground group.
  _, err = parent.communicate(timeout=60)
  assert count.read_text() == '1'  # Once, through the script; the arm stopped its own way.
  assert err.strip() == (f'pretrained: interrupted (exit {exit_code}); the same command resumes it. '
                         f'Log: {log}'), err
  assert parent.returncode == 1


def test_another_state_dict_for_a_converted_out_folder_is_refused(script, tmp_path):
  """--state_dict was ignored once OUT/weights/resnet50 existed: another file's weights were
  fine-tuned without a word (an audit)."""
  with pytest.raises(SystemExit, match=r'--state_dict .*absent\.pth: no such file'):
    script.convert(str(tmp_path / 'absent.pth'), tmp_path)
  (tmp_path / 'weights' / 'resnet50').mkdir(parents=True)
  old = tmp_path / 'old.pth'
  old.write_bytes(b'old weights')
  # A folder converted before sources were recorded is taken as it is (a review: it had been
  # refused), and its source recorded; a copy of that file is the same source.
  assert script.convert(str(old), tmp_path) == tmp_path / 'weights' / 'resnet50'
  copy = tmp_path / 'copy.pth'
  copy.write_bytes(b'old weights')
  assert script.convert(str(copy), tmp_path) == tmp_path / 'weights' / 'resnet50'
  new = tmp_path / 'new.pth'
  new.write_bytes(b'new weights')
  with pytest.raises(SystemExit, match=r'converted from .*old\.pth, whose content differs from '
                                       r'.*new\.pth'):
    script.convert(str(new), tmp_path)
