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


def test_no_validation_hold_out_is_refused(script, capsys):
  """With data.val_fraction=0 the trainer validates on the test split, and the script's "val"
  columns had been test numbers (a review)."""
  with pytest.raises(SystemExit):
    script.parse_args(['--weights', 'w', '--out', 'o', '--config.data.val_fraction=0.0'])
  assert 'compared on validation images' in capsys.readouterr().err


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


class _FakeChild:
  """subprocess.Popen for child.run: wait() is interrupted `presses` times by Ctrl-C (or calls
  `during_wait`) before the child exits with `code`."""

  def __init__(self, presses=0, code=0, during_wait=None):
    self.presses, self.code, self.during_wait, self.sent = presses, code, during_wait, []

  def __call__(self, cmd, **kw):
    assert kw['start_new_session'] is True  # Ctrl-C reaches it through child.run only.
    return self

  def wait(self):
    if self.during_wait:
      self.during_wait()
      self.during_wait = None
    if self.presses:
      self.presses -= 1
      raise KeyboardInterrupt
    return self.code

  def send_signal(self, sig):
    self.sent.append(sig)


def test_child_passes_each_ctrl_c_on_kills_at_the_third_and_restores_handlers(script, tmp_path,
                                                                            monkeypatch):
  """As the module says: the trainer saves at the first press, stops at the second, and the third
  kills it; a hang-up reaches it as SIGTERM (a mutation audit: none was tested)."""
  child = script.child
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
  fake = _FakeChild(presses=3, code=-9)
  monkeypatch.setattr(child.subprocess, 'Popen', fake)
  assert child.run(['x'], tmp_path / 'log', tmp_path) == (-9, True)
  assert fake.sent == [signal.SIGINT, signal.SIGINT, signal.SIGKILL]
  assert {s: signal.getsignal(s) for s in before} == before
  fake = _FakeChild(code=0, during_wait=lambda: signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None))
  monkeypatch.setattr(child.subprocess, 'Popen', fake)
  assert child.run(['x'], tmp_path / 'log', tmp_path) == (0, True)  # A stop, though it exited 0.
  assert fake.sent == [signal.SIGTERM]
  fake = _FakeChild(code=0)
  monkeypatch.setattr(child.subprocess, 'Popen', fake)
  assert child.run(['x'], tmp_path / 'log', tmp_path) == (0, False) and fake.sent == []


@pytest.mark.parametrize('code', [75, 130, 143])
def test_an_arm_stopped_by_a_signal_of_its_own_says_the_command_resumes(script, tmp_path, code):
  """The trainer's preemption exit (75) or death by SIGINT/SIGTERM sent to it alone, no Ctrl-C
  through the script: still a resumable stop, not 'failed'."""
  log = tmp_path / 'arm.log'
  with pytest.raises(SystemExit) as e:
    script.run('random', [sys.executable, '-c', f'import sys; sys.exit({code})'], log)
  assert str(e.value) == f'random: interrupted (exit {code}); the same command resumes it. Log: {log}'


def _fake_arms(script, monkeypatch, rows_for):
  """script.run replaced by one that writes the arm's metrics.jsonl; the commands it got."""
  cmds = []

  def run(name, cmd, log):
    cmds.append((name, cmd))
    workdir = pathlib.Path(next(a for a in cmd if a.startswith('--workdir=')).split('=', 1)[1])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows_for(name)))

  monkeypatch.setattr(script, 'run', run)
  return cmds


def test_results_are_the_last_evaluation_and_training_loss_with_the_wall_time_summed(
    script, tmp_path, monkeypatch, capsys):
  """What docs/transfer.md's table is made of, without training (a mutation audit: the first
  train loss, the weights of the wrong arm, a wall time not summed over invocations and the
  printed columns all passed)."""
  rows = {'pretrained': [{'step': 10, 'train_loss': 4.0}, {'step': 20, 'val_accuracy': 0.1,
                                                              'val_loss': 4.1, 'val_top5_accuracy': 0.3},
                         {'step': 30, 'train_loss': 2.5},
                         {'step': 40, 'val_accuracy': 0.4567, 'val_loss': 2.2,
                          'val_top5_accuracy': 0.789}],
          'random': [{'step': 40, 'train_loss': 4.4},
                     {'step': 40, 'val_accuracy': 0.05, 'val_loss': 4.3, 'val_top5_accuracy': 0.2}]}
  cmds = _fake_arms(script, monkeypatch, rows.get)
  out = tmp_path / 'out'
  (out / 'results').mkdir(parents=True)
  (out / 'results' / 'pretrained.seconds').write_text('100.0\n')  # An interrupted invocation's.
  weights = tmp_path / 'w'
  assert script.main(['--weights', str(weights), '--out', str(out), '--image_size', '48',
                      '--batch_size', '8', '--train_limit', '64', '--eval_limit', '32',
                      '--num_epochs', '2', '--config.seed=3']) == 0
  assert [n for n, _ in cmds] == ['pretrained', 'random']
  for name, cmd in cmds:
    assert f'--config.model.pretrained={weights if name == "pretrained" else ""}' in cmd
    for flag in ('--config.model.image_size=48', '--config.train.batch_size=8',
                 '--config.data.train_limit=64', '--config.data.eval_limit=32',
                 '--config.train.num_epochs=2.0', '--config.seed=3'):
      assert flag in cmd, (flag, cmd)
  pre, rand = json.loads((out / 'results.json').read_text())
  assert (pre['arm'], pre['steps'], pre['val_accuracy'], pre['val_top5_accuracy'], pre['val_loss'],
          pre['final_train_loss']) == ('pretrained', 40, 0.4567, 0.789, 2.2, 2.5)
  assert (pre['image_size'], pre['batch_size'], pre['train_images'], pre['val_images']) == (
      48, 8, 64, 32)
  assert 100.0 <= pre['wall_s'] < 200.0 and rand['wall_s'] < 100.0
  assert rand['final_train_loss'] == 4.4 and rand['pretrained'] == ''
  table = capsys.readouterr().out.splitlines()[-2:]
  assert table == ['| pretrained | 0.457 | 0.789 | 40 | 48 | ' + str(pre['wall_s']) + ' |',
                   '| random | 0.050 | 0.200 | 40 | 48 | ' + str(rand['wall_s']) + ' |']


@pytest.mark.parametrize('change', [
    ['--image_size', '64'], ['--train_limit', '99'], ['--eval_limit', '99'], ['--batch_size', '4'],
    ['--num_epochs', '3'], ['--config.seed=4'], ['--weights', 'other']])
def test_each_setting_of_a_kept_arm_is_held_to_its_out_folder(script, tmp_path, monkeypatch, change):
  rows = [{'step': 4, 'train_loss': 1.0}, {'step': 4, 'val_accuracy': 0.5, 'val_loss': 1.0,
                                           'val_top5_accuracy': 0.9}]
  _fake_arms(script, monkeypatch, lambda _: rows)
  base = ['--weights', str(tmp_path / 'w'), '--out', str(tmp_path / 'out'), '--only', 'random',
          '--image_size', '48', '--train_limit', '64', '--eval_limit', '32', '--batch_size', '8',
          '--num_epochs', '2']
  assert script.main(base) == 0
  with pytest.raises(SystemExit, match='holds runs made with other settings'):
    script.main([*base, *change])
