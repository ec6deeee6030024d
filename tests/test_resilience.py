"""Never lose a run: SIGKILL at random points, SIGTERM preemption, bad configs (non-finite losses:
test_nonfinite.py)."""

import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jax_cifar.configs import default
from jax_cifar import interrupt, parallel, step_folders, tracking
from jax_cifar.training import stopping, trainer
from jax_cifar import state as state_lib
from _train_cli import the_error

ROOT = pathlib.Path(__file__).resolve().parent.parent
OVERRIDES = {
    'data.source': 'synthetic', 'data.synthetic_size': 640, 'data.val_fraction': 0.2,
    'model.name': 'simple_cnn',  # Checkpoint and loop mechanics: the quickest model to compile.
    'augment.mixup_alpha': 0.2, 'train.batch_size': 32, 'train.eval_batch_size': 64,
    'train.num_epochs': 2, 'train.log_every_steps': 2, 'train.eval_every_epochs': 0.5,
    'checkpoint.every_steps': 3,
}


def _config():
  c = default.get_config()
  for key, value in OVERRIDES.items():
    section, name = key.split('.')
    setattr(c[section], name, value)
  return c


def _launch(workdir, signal_at: str = '', *extra: str) -> subprocess.Popen:
  """Starts a training process; its stderr goes to WORKDIR.log (a pipe would fill and block it).

  `signal_at='STEP:SIGNAL'` makes it send itself SIGNAL right after that step (interrupt.at_event);
  'EVENT:INDEX:SIGNAL' at another event.
  """
  args = [f'--config.{k}={v}' for k, v in OVERRIDES.items()] + list(extra)
  workdir.parent.mkdir(parents=True, exist_ok=True)
  log = open(f'{workdir}.log', 'a')  # pylint: disable=consider-using-with
  hook = signal_at if signal_at.count(':') == 2 else f'train_step:{signal_at}'
  env = dict(os.environ, **({interrupt.TEST_HOOK_VAR: hook} if signal_at else {}))
  return subprocess.Popen(
      [sys.executable, '-m', 'jax_cifar.train', '--config', 'configs/default.py',
       '--workdir', str(workdir), *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env)


def _log(workdir) -> str:
  return pathlib.Path(f'{workdir}.log').read_text()


def _last_logged_step(workdir) -> int:
  rows = tracking.read_metrics(workdir)
  return max((r['step'] for r in rows), default=0)


def _final(workdir):
  state, _, step = state_lib.restore(_config(), str(workdir), 'latest', parallel.make_mesh())
  return step, jax.device_get((state.params, state.batch_stats, state.opt_state))


def _assert_same_run(a, b, stopped_at: tuple[int, ...] = ()):
  """`stopped_at`: the steps after which a signal stopped a launch of `b` (off the log cadence)."""
  step_a, tree_a = _final(a)
  step_b, tree_b = _final(b)
  assert step_a == step_b == 32  # 512 train images / 32 per batch * 2 epochs.
  for x, y in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    np.testing.assert_array_equal(x, y)  # Bitwise on CPU.
  rows_a, rows_b = tracking.read_metrics(a), tracking.read_metrics(b)
  evals = lambda rows: [r for r in rows if 'val_accuracy' in r]
  assert evals(rows_a) == evals(rows_b) and len(evals(rows_a)) == 4
  steps = lambda rows: [r['step'] for r in rows if 'train_loss' in r]
  assert steps(rows_a) == list(range(2, 33, 2))
  # No duplicates, no gaps: a signal's stop adds a row of the steps since the last one (they had
  # been in no row: a new-user walkthrough).
  assert steps(rows_b) == sorted(set(steps(rows_a)) | set(stopped_at))
  # Every train row equals the uninterrupted run's (timing aside), but a stop's and the first one
  # after a resume inside a log window: they average fewer steps, and say how many.
  timing = ('images_per_sec', 'first_step_seconds')
  untimed = lambda r: {k: v for k, v in r.items() if k not in timing}
  train_a = {r['step']: untimed(r) for r in rows_a if 'train_loss' in r}
  for row in (untimed(r) for r in rows_b if 'train_loss' in r):
    if 'window_steps' in row:
      assert 0 < row['window_steps'] < OVERRIDES['train.log_every_steps'], row
    else:
      assert row == train_a[row['step']]
  assert not any('window_steps' in r for r in train_a.values())


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight')
  trainer.train_and_evaluate(_config(), str(workdir))
  return workdir


@pytest.mark.slow
def test_resume_after_sigkill_at_random_points_matches_uninterrupted_run(tmp_path, uninterrupted):
  workdir = tmp_path / 'killed'
  kill_steps = sorted(random.Random(1234).sample(range(2, 32), 3))  # Between and on checkpoints.
  for step in kill_steps:
    proc = _launch(workdir, signal_at=f'{step}:SIGKILL')
    assert proc.wait() == -signal.SIGKILL, _log(workdir)[-2000:]  # Killed at that step, not before.
    assert _last_logged_step(workdir) <= step
  proc = _launch(workdir)
  assert proc.wait() == 0, _log(workdir)[-2000:]
  _assert_same_run(uninterrupted, workdir)


@pytest.mark.slow  # 20-40 s (a killed training run and its relaunch)
def test_sigterm_saves_exits_75_and_the_next_launch_resumes(tmp_path, uninterrupted):
  workdir = tmp_path / 'preempted'
  proc = _launch(workdir, signal_at='5:SIGTERM')
  assert proc.wait() == trainer.PREEMPTED_EXIT_CODE
  assert 'relaunch to resume' in _log(workdir)
  saved = sorted(int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir()
                 if p.name.isdigit())
  assert saved[-1] == 5  # Saved the step it was stopped at (checkpoints are every 3 steps).
  proc = _launch(workdir)
  assert proc.wait() == 0, _log(workdir)[-2000:]
  _assert_same_run(uninterrupted, workdir, stopped_at=(5,))


@pytest.mark.slow
def test_a_signal_at_the_last_step_ends_the_run_as_finished(tmp_path, uninterrupted):
  """SIGTERM during the last step's validation and save had saved that step again and exited 75
  ("relaunch to resume"), so a requeue-on-75 cluster job ran a finished run again (an audit)."""
  workdir = tmp_path / 'last'
  proc = _launch(workdir, signal_at='32:SIGTERM')
  assert proc.wait() == 0, _log(workdir)[-2000:]
  assert 'relaunch to resume' not in _log(workdir) and 'Done at step 32' in _log(workdir)
  _assert_same_run(uninterrupted, workdir)


def _files(workdir) -> dict:
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob('*'))
          if p.is_file() and p.name != '.lock'}


@pytest.fixture(scope='module')
def three_steps(tmp_path_factory):
  """A run stopped by train.max_steps=3 (its checkpoint of step 3), launched once: the tests that
  resume such a run each resume their own copy of it."""
  workdir = tmp_path_factory.mktemp('three_steps') / 'run'
  out = _run_cli(workdir, '--config.train.max_steps=3')
  assert out.returncode == 0 and 'Traceback' not in out.stderr, out.stderr[-3000:]
  return workdir


def _copy(run, workdir):
  shutil.copytree(run, workdir, symlinks=True, dirs_exist_ok=True)


@pytest.mark.slow
def test_a_signal_while_starting_stops_in_one_line_before_anything_is_written(tmp_path,
                                                                             three_steps):
  """Ctrl-C while the data loaded or the model initialised had printed a 44-line KeyboardInterrupt
  traceback (the handlers came only before the first step: an audit). SIGINT while a new run
  starts, SIGTERM (a cluster's preemption) while a resumed one starts: one handler serves both."""
  workdir = tmp_path / 'run'
  proc = _launch(workdir, 'train_start:0:SIGINT')
  assert proc.wait() == trainer.PREEMPTED_EXIT_CODE, _log(workdir)[-2000:]
  log = _log(workdir)
  assert 'Traceback' not in log and 'KeyboardInterrupt' not in log, log[-3000:]
  assert 'Received SIGINT while starting: nothing trained, nothing to save; relaunch to start' in log
  assert not workdir.exists()  # This launch made the folder and wrote nothing: removed.
  # A resumed run's launch stopped while starting leaves every file as it was.
  _copy(three_steps, workdir)
  before = _files(workdir)
  proc = _launch(workdir, 'train_start:0:SIGTERM')
  assert proc.wait() == trainer.PREEMPTED_EXIT_CODE, _log(workdir)[-2000:]
  last = _log(workdir).splitlines()[-1]
  assert 'Received SIGTERM while starting' in last and 'relaunch to resume.' in last, last
  assert 'Traceback' not in _log(workdir)
  assert _files(workdir) == before


def test_while_starting_a_first_signal_is_noted_and_a_second_stops_at_once(tmp_path):
  """The first signal while a run starts (a download, the model's init) waits for the start-up
  to end, so a second one must not wait too (it had set the same flag again)."""
  stop, previous = stopping.install_handlers()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop['signal'] == 'SIGINT'  # Noted; the run goes on to its start-up check.
    with pytest.raises(stopping.StopNow, match='SIGTERM while starting'):
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(100):  # The handler runs between bytecodes of the main thread.
        pass
    # Not an Exception: a restore's "damaged step" check (except Exception) must let it through,
    # or the intact newest step would be set aside as damaged (a review).
    assert not issubclass(stopping.StopNow, Exception)
    def stopped():
      raise stopping.StopNow('SIGINT while starting')
    step_dir = tmp_path / 'step'
    for name in step_folders._REQUIRED_FILES:  # pylint: disable=protected-access
      (step_dir / name).parent.mkdir(parents=True, exist_ok=True)
      (step_dir / name).write_text('')
    with pytest.raises(stopping.StopNow):
      step_folders.restore_step(step_dir, stopped)  # pylint: disable=protected-access
    stop['starting'] = False  # Once training: a first signal only sets the flag ...
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop['signal'] == 'SIGTERM'
    with pytest.raises(stopping.StopNow, match='SIGINT again'):  # ... and a second stops at once
      os.kill(os.getpid(), signal.SIGINT)  # (validation or a save had to be waited for).
      for _ in range(100):
        pass
    os.kill(os.getpid(), signal.SIGINT)  # A third, while stopping (the unwinding, the handlers
    for _ in range(100):  # given back): no second StopNow, which would escape as a traceback.
      pass
  finally:
    stopping.restore_handlers(previous)
  assert signal.getsignal(signal.SIGTERM) is previous[signal.SIGTERM]


@pytest.mark.slow
@pytest.mark.parametrize('kind, step', [('latest', 6), ('best', 8)])
def test_kill_inside_a_checkpoint_save_resumes_from_the_last_committed_step(
    tmp_path, uninterrupted, kind, step):
  """SIGKILL after orbax wrote the step's temporary folder, before its commit (rename)."""
  workdir = tmp_path / 'killed'
  args = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  out = subprocess.run(
      [sys.executable, 'tests/_train_killed_in_save.py', kind, str(step), '--config',
       'configs/default.py', '--workdir', str(workdir), *args],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  folder = workdir / 'checkpoints' / kind
  assert any(p.name.startswith(f'{step}.orbax-checkpoint-tmp') for p in folder.iterdir())
  assert not (folder / str(step)).exists()  # Never committed.
  committed = [int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir()
               if p.name.isdigit()]
  assert committed
  if kind == 'latest':  # A 'latest' save waits for the previous one, so none came after it. A
    assert max(committed) < step  # 'best' commit runs on its own thread: later 'latest' saves may.
  proc = _launch(workdir)
  assert proc.wait() == 0, _log(workdir)[-2000:]
  _assert_same_run(uninterrupted, workdir)


def test_cli_bad_value_exits_nonzero_with_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'jax_cifar.train', '--config', 'configs/smoke.py', '--workdir',
       str(tmp_path), '--config.optim.lr=-3'], cwd=ROOT, capture_output=True, text=True)
  assert the_error(out, status=1) == "error: config key 'optim.lr' must be in (0.0, 10.0], got -3.0"
  assert not (tmp_path / 'checkpoints').exists()


def test_unwritable_workdir_is_a_one_line_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  out = subprocess.run(
      [sys.executable, '-m', 'jax_cifar.train', '--config', 'configs/smoke.py', '--workdir',
       str(blocker / 'run')], cwd=ROOT, capture_output=True, text=True)
  assert the_error(out, status=1) == (
      f'error: workdir {blocker / "run"} is not writable: Not a directory')
  assert blocker.read_text() == 'not a directory'


def _run_cli(workdir, *extra, prefix=()):
  args = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  cmd = [sys.executable, *prefix] if prefix else [sys.executable, '-m', 'jax_cifar.train']
  return subprocess.run([*cmd, '--config', 'configs/default.py', '--workdir', str(workdir), *args,
                         *extra], cwd=ROOT, capture_output=True, text=True)


def test_disk_full_during_checkpoint_save_keeps_the_earlier_checkpoint(tmp_path, three_steps):
  _copy(three_steps, tmp_path)
  # Resume with files capped at 64 KiB: the next checkpoint's arrays cannot be written.
  out = _run_cli(tmp_path, '--config.train.max_steps=6',
                 prefix=(str(ROOT / 'tests' / '_train_with_fsize_limit.py'), str(64 * 1024)))
  assert out.returncode != 0
  errors = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  # Resumed at 3, the save of step 6 fails: named exactly, with the OS cause, and no traceback
  # (orbax's failing write threads used to print 100-200 of them, splitting the error line).
  assert len(errors) == 1 and 'saving checkpoint step 6 ' in errors[0] and (
      'File too large' in errors[0]), f'status {out.returncode}\n{out.stderr[-6000:]}'  # (A str
  # is shown whole: a tuple's repr was cut in the middle, hiding a traceback seen once under load.)
  assert 'Traceback' not in out.stderr, out.stderr[-4000:]
  state, _, step = state_lib.restore(_config(), str(tmp_path), 'latest', parallel.make_mesh())
  assert step == 3  # The earlier checkpoint is intact and is still the latest.
  again = _run_cli(tmp_path, '--config.train.max_steps=6')  # With room again, the run continues.
  assert again.returncode == 0, again.stderr[-2000:]
  assert state_lib.restore(_config(), str(tmp_path), 'latest', parallel.make_mesh())[2] == 6


def test_checkpoint_of_another_model_is_a_clear_error_and_is_kept(tmp_path, three_steps):
  _copy(three_steps, tmp_path)
  # The run's config.json names the change before anything is restored ...
  other = ('--config.model.name=resnet18', '--config.model.width=4', '--config.train.max_steps=6')
  out = _run_cli(tmp_path, *other)
  errors = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert out.returncode != 0 and len(errors) == 1 and (
      "model.name 'simple_cnn' -> 'resnet18'" in errors[0]), (out.returncode, out.stderr[-4000:])
  # ... and a change accepted on purpose still cannot load weights of another shape.
  out = _run_cli(tmp_path, *other, '--config.train.allow_config_change=true')
  assert out.returncode != 0
  errors = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and 'does not match' in errors[0], (out.returncode, out.stderr[-4000:])
  assert state_lib.restore(_config(), str(tmp_path), 'latest', parallel.make_mesh())[2] == 3


def test_wandb_failing_to_start_degrades_to_metrics_jsonl(tmp_path, monkeypatch, caplog):
  import wandb  # pylint: disable=import-outside-toplevel  (a dependency)

  def broken_init(*args, **kwargs):
    raise RuntimeError('wandb backend unreachable')

  monkeypatch.setattr(wandb, 'init', broken_init)  # Fault injection: the tracker cannot start.
  c = _config()
  c.wandb.mode = 'online'
  c.train.max_steps = 2
  trainer.train_and_evaluate(c, str(tmp_path))
  rows = tracking.read_metrics(tmp_path)  # The train row and the final (max_steps) evaluation.
  assert [r['step'] for r in rows] == [2, 2] and 'train_loss' in rows[0] and 'val_accuracy' in rows[1]
  assert any('wandb could not start' in r.message for r in caplog.records)


def test_with_several_processes_signals_while_starting_never_stop_one_process_alone(monkeypatch):
  """With several processes a second signal while starting must not raise StopNow on the one
  process that got it (the others would wait for it in their start-up check); they all stop
  together at that check. Once training, a stop is agreed only at log steps, where every process
  makes the all-gather (a mutation audit; the all-gather is replaced by what it returns)."""
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  stop, previous = stopping.install_handlers()
  try:
    for sig in (signal.SIGINT, signal.SIGTERM):
      os.kill(os.getpid(), sig)
      for _ in range(100):  # The handler runs between bytecodes of the main thread.
        pass
    assert stop['signal'] == 'SIGTERM'
    stop['starting'] = False
    for sig in (signal.SIGTERM, signal.SIGINT):  # Nor while training: the next log step stops.
      os.kill(os.getpid(), sig)
      for _ in range(100):
        pass
  finally:
    stopping.restore_handlers(previous)
  gathered = []
  monkeypatch.setattr(parallel, 'any_process', lambda v: gathered.append(v) or v)
  assert [stopping.requested(stop, step, 4) for step in (5, 6, 7, 8)] == [False] * 3 + [True]
  assert gathered == [True]  # One all-gather, at the log step.
  monkeypatch.setattr(jax, 'process_count', lambda: 1)
  assert stopping.requested(stop, 5, 4)  # One process: after any step.


def test_a_signal_after_the_stop_was_saved_keeps_the_exit_status_of_a_preemption(tmp_path):
  """SIGTERM, saved, "relaunch to resume": a second signal while the process shut down had ended
  it with 143 (or 130, or a KeyboardInterrupt from JAX's atexit hook) instead of 75, which a
  scheduler that requeues on 75 reads as a failure (a kill review)."""
  workdir = tmp_path / 'run'
  args = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  env = dict(os.environ, **{interrupt.TEST_HOOK_VAR: 'train_step:2:SIGTERM'})
  out = subprocess.run([sys.executable, str(ROOT / 'tests' / '_train_signal_at_exit.py'),
                        '--config', 'configs/default.py', '--workdir', str(workdir), *args],
                       cwd=ROOT, capture_output=True, text=True, env=env)
  assert out.returncode == trainer.PREEMPTED_EXIT_CODE, (out.returncode, out.stderr[-3000:])
  assert 'saved step 2' in out.stderr and 'Traceback' not in out.stderr, out.stderr[-3000:]
