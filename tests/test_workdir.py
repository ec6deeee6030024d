"""One run per workdir: resume=false never overwrites a run, a live run's lock, and resuming with a
changed config (refused if it alters the trajectory, unless allowed; recorded in launches.jsonl)."""

import datetime
import errno
import fcntl
import json
import os
import pathlib
import re
import shutil
import shlex
import signal
import subprocess
import sys

import pytest

from _train_cli import ROOT, STEPS_PER_EPOCH, TINY, snapshot, the_error, train
from conftest import HAS_PROC
from jax_cifar import optim, own_files, tracking
from jax_cifar import workdir as workdir_lib
from jax_cifar.configs import default
from jax_cifar.training import claim


# A run that stopped at step 2 of 12 (checkpoints at steps 2): what every test resumes or guards.
FIRST_STEPS = 2


@pytest.fixture(scope='module')
def base_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp('base') / 'run'
  out = train(workdir, f'--config.train.max_steps={FIRST_STEPS}')
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


@pytest.fixture
def run(base_run, tmp_path) -> pathlib.Path:
  """A private copy of the base run, so each test may resume or damage it."""
  workdir = tmp_path / 'run'
  shutil.copytree(base_run, workdir, symlinks=True)
  return workdir


def _launches(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'launches.jsonl').read_text().splitlines()]


def _schedule(lr: float, epochs: float):
  c = default.get_config().optim
  c.lr, c.warmup_epochs = lr, TINY['optim.warmup_epochs']
  total = int(epochs * STEPS_PER_EPOCH)
  return optim.make_optimizer(c, total, STEPS_PER_EPOCH)[1]


def _logged(workdir: pathlib.Path, key: str) -> dict[int, float]:
  return {r['step']: r[key] for r in tracking.read_metrics(workdir) if key in r}


def test_base_run_records_its_launch(base_run):
  rows = _launches(base_run)
  assert len(rows) == 1 and rows[0]['start_step'] == 0 and rows[0]['changed'] == {}
  assert rows[0]['config'] == json.loads((base_run / 'config.json').read_text())
  assert sorted(_logged(base_run, 'train_loss')) == [1, 2]


def test_resume_false_refuses_a_workdir_with_a_run_and_touches_nothing(run):
  before = snapshot(run, skip=('.lock',))
  out = train(run, '--config.train.resume=false', '--config.train.max_steps=3')
  line = the_error(out)
  assert 'already holds a run' in line and 'train.resume=false' in line, line
  assert snapshot(run, skip=('.lock',)) == before


def test_second_launch_fails_fast_while_the_lock_is_held_and_succeeds_once_holder_is_killed(run):
  env_path = {'PYTHONPATH': str(ROOT)}  # The holder imports this checkout's jax_cifar.
  holder = subprocess.Popen([sys.executable, str(ROOT / 'tests' / '_hold_lock.py'), str(run)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env_path})
  try:
    assert holder.stdout.readline().strip() == 'locked'
    before = snapshot(run)  # .lock included: the refused launch must not even rewrite it.
    out = train(run, '--config.train.max_steps=3')
    line = the_error(out)
    assert 'in use' in line and str(run) in line and f'pid {holder.pid}' in line, line
    assert 'is down' not in line  # The holder is on this host.
    assert snapshot(run) == before
  finally:
    holder.send_signal(signal.SIGKILL)  # Dies without releasing anything itself.
    holder.wait()
  out = train(run, '--config.train.max_steps=3')
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(_logged(run, 'train_loss')) == [1, 2, 3]
  assert [r['start_step'] for r in _launches(run)] == [0, FIRST_STEPS]


def test_a_lock_held_from_another_host_says_how_to_clear_it_if_that_host_is_down(tmp_path):
  """On NFS (v3) a crashed node's lock lasts until that node comes back, so a requeued run on
  another node was refused with no way on (a cluster audit)."""
  (tmp_path / workdir_lib.LOCK_FILE).write_text('pid 4242 on node17, since 2026-12-04T10:00:00\n')
  held = os.open(tmp_path / workdir_lib.LOCK_FILE, os.O_RDWR)
  fcntl.flock(held, fcntl.LOCK_EX)  # Another open file: its lock conflicts, as another host's.
  try:
    with pytest.raises(workdir_lib.WorkdirError) as e:
      own_files.Lock(tmp_path).acquire()
  finally:
    os.close(held)
  assert str(e.value) == (
      f'workdir {tmp_path} is in use by another run (pid 4242 on node17, since '
      '2026-12-04T10:00:00); wait for it to end or use another --workdir; if node17 is down, its '
      f'lock can outlive it on a network filesystem: remove {tmp_path / workdir_lib.LOCK_FILE} then')


@pytest.mark.parametrize('key, value, before', [
    ('optim.lr', 0.002, 0.001),
    ('train.batch_size', 64, 32),
    ('model.normalize', 'imagenet', 'cifar'),  # (simple_cnn has no model.width to change)
])
def test_resume_with_a_trajectory_change_is_refused_naming_the_key(run, key, value, before):
  kept = snapshot(run, skip=('.lock',))
  out = train(run, f'--config.{key}={value}', '--config.train.max_steps=3')
  line = the_error(out)
  assert f'{key} {before!r} -> {value!r}' in line and 'allow_config_change' in line, line
  assert snapshot(run, skip=('.lock',)) == kept  # config.json, launches.jsonl, checkpoints.


def test_a_changed_config_is_refused_when_the_run_left_a_best_but_no_latest(run):
  # Killed after a validation but before its first `latest` save: a relaunch starts at step 0,
  # and with another model it took over the old run's `best` checkpoint and accuracy.
  shutil.rmtree(run / 'checkpoints' / 'latest' / str(FIRST_STEPS))
  assert list((run / 'checkpoints' / 'best').iterdir())
  kept = snapshot(run, skip=('.lock',))
  line = the_error(train(run, '--config.model.normalize=imagenet', '--config.train.max_steps=1'))
  assert "model.normalize 'cifar' -> 'imagenet'" in line and 'allow_config_change' in line, line
  assert 'nothing can be resumed' in line and 'from this step on' not in line, line
  assert snapshot(run, skip=('.lock',)) == kept
  # Following the advice starts over: the earlier launch's best checkpoint, config and metrics
  # are kept in previous-*/, and the new run's best is its own (it had inherited the old one's
  # step and accuracy: an audit).
  old_best = sorted(p.name for p in (run / 'checkpoints' / 'best').iterdir())
  out = train(run, '--config.model.normalize=imagenet', '--config.train.max_steps=1',
              '--config.train.allow_config_change=true')
  assert out.returncode == 0, out.stderr[-3000:]
  [previous] = run.glob('previous-*')
  assert sorted(p.name for p in (previous / 'best').iterdir()) == old_best
  assert {'config.json', 'metrics.jsonl'} <= {p.name for p in previous.iterdir()}
  assert [p.name for p in (run / 'checkpoints' / 'best').iterdir() if p.name.isdigit()] == ['1']
  assert f'Done at step 1: best val_accuracy {_logged(run, "val_accuracy")[1]:.4f}' in out.stderr
  # Where the curves are drawn (nothing had pointed to report: a figure review).
  assert f'(their curves: python -m jax_cifar.report {run} --out DIR)' in out.stderr, out.stderr


def test_a_same_config_start_over_sets_the_earlier_best_aside_with_its_metrics(run):
  """Relaunched as it was after a kill before its first latest save, the run starts at step 0:
  the earlier best went on as the new run's while its metrics row went to previous-*/ (a
  review), so --weights auto and the reports found no row for it. Both are kept there now."""
  shutil.rmtree(run / 'checkpoints' / 'latest' / str(FIRST_STEPS))
  old_best = sorted(p.name for p in (run / 'checkpoints' / 'best').iterdir() if p.name.isdigit())
  out = train(run, '--config.train.max_steps=1')
  assert out.returncode == 0, out.stderr[-3000:]
  [previous] = run.glob('previous-*')
  assert sorted(p.name for p in (previous / 'best').iterdir()) == old_best
  assert [p.name for p in (run / 'checkpoints' / 'best').iterdir() if p.name.isdigit()] == ['1']
  assert 1 in _logged(run, 'val_accuracy')


def test_failed_resume_with_another_config_file_keeps_config_json(run):
  kept = snapshot(run, skip=('.lock',))
  not_model = {k: v for k, v in TINY.items() if not k.startswith('model.')}
  refused = train(run, '--config.train.max_steps=3', config='configs/smoke.py',
                  overrides=not_model)
  assert "model.name 'simple_cnn' -> 'resnet18'" in the_error(refused)
  assert snapshot(run, skip=('.lock',)) == kept
  # Allowed to change, it still cannot restore a CNN checkpoint into a ResNet: config.json stays
  # the run's (the one its checkpoints belong to), and no launch is recorded.
  mismatch = train(run, '--config.train.max_steps=3', '--config.train.allow_config_change=true',
                   '--config.model.width=4', config='configs/smoke.py', overrides=not_model)
  assert 'does not match' in the_error(mismatch)
  assert json.loads((run / 'config.json').read_text())['model']['name'] == 'simple_cnn'
  assert len(_launches(run)) == 1
  assert sorted(_logged(run, 'train_loss')) == [1, 2]


def test_an_allowed_change_of_the_train_states_contents_names_the_change_and_the_way_on(
    run, tmp_path):
  """allow_config_change let a change of what the checkpoints hold (here EMA on) through, and the
  restore then blamed model.name/width/num_classes, which had not changed (an audit)."""
  kept = snapshot(run, skip=('.lock',))
  line = the_error(train(run, '--config.train.max_steps=3', '--config.ema.decay=0.9',
                         '--config.train.allow_config_change=true'))
  assert 'does not match' in line and 'ema.decay 0.0 -> 0.9' in line, line
  assert 'model.name/width' not in line and f'model.init_from={run}' in line, line
  assert snapshot(run, skip=('.lock',)) == kept
  # The way on that the error names: a new run from this one's weights, with the change.
  new = tmp_path / 'new'
  out = train(new, '--config.train.max_steps=1', '--config.ema.decay=0.9',
              f'--config.model.init_from={run}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(_logged(new, 'train_loss')) == [1]


def test_a_mismatch_with_only_safe_changes_is_not_blamed_on_them(tmp_path):
  """With only max_steps (or a longer num_epochs) changed, the message had said "its changes ()"
  or blamed num_epochs, which leave the train state as it was (a review)."""
  from jax_cifar import checkpoints  # pylint: disable=import-outside-toplevel
  from jax_cifar.training import relaunch  # pylint: disable=import-outside-toplevel
  e = checkpoints.StructureMismatch(tmp_path / '3', 'trees differ')
  for changes in ({'train.max_steps': (3, 6)}, {'train.num_epochs': (2.0, 4.0)}, {}):
    assert relaunch.cannot_resume_with(changes, tmp_path, e) is e
  both = {'train.max_steps': (3, 6), 'ema.decay': (0.0, 0.9)}
  message = str(relaunch.cannot_resume_with(both, tmp_path, e))
  assert '(ema.decay 0.0 -> 0.9)' in message, message
  assert 'trees differ' not in message, message  # orbax's words (or advice: strict=False) do not fit.
  assert f'model.init_from={tmp_path}' in message
  # Another model cannot start from this run's weights either (init_from refuses it): not offered.
  width = {'model.width': (8, 16)}
  message = str(relaunch.cannot_resume_with(width, tmp_path, e))
  assert 'init_from' not in message and 'a different model starts a new run' in message, message


def test_a_resumed_launch_that_fails_before_its_first_save_gives_config_json_back(run, monkeypatch):
  """A resume with an allowed change that fails before it saves (here its first step runs out of
  memory) had left its own config as the run's config.json, so relaunching the run as it was
  was refused as a change (an audit)."""
  from jax_cifar.training import trainer  # pylint: disable=import-outside-toplevel
  kept = (run / 'config.json').read_text()
  config = default.get_config()
  config.update_from_flattened_dict({**TINY, 'optim.lr': 0.002, 'train.max_steps': 3,
                                     'train.allow_config_change': True})

  def out_of_memory(*args, **kwargs):
    def step(*step_args):
      raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate (a test)')
    return step

  monkeypatch.setattr(trainer, 'compile_train_step', out_of_memory)
  with pytest.raises(RuntimeError, match='RESOURCE_EXHAUSTED'):
    trainer.train_and_evaluate(config, str(run))
  assert (run / 'config.json').read_text() == kept
  assert [r['start_step'] for r in _launches(run)] == [0, FIRST_STEPS]  # The launch is logged.
  monkeypatch.undo()
  out = train(run, '--config.train.max_steps=3')  # The run as it was: resumes.
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(_logged(run, 'train_loss')) == [1, 2, 3]
  # A launch that did save keeps its own config: config.json is that of the saved steps.
  assert workdir_lib.restore_config(run, kept.replace('0.001', '0.5'), set()) is False


def test_restore_config_counts_only_the_launchs_own_steps_and_says_what_it_changed(tmp_path):
  """A failed launch that saved a best step (validation runs more often than latest saves)
  keeps its config: that step is its own. A best step newer than the resumed latest that was
  there before the launch is not (it had kept the failed launch's config: an audit), nor is any
  other step saved before it; a best step saved again under the same number is."""
  (tmp_path / 'checkpoints' / 'latest' / '2').mkdir(parents=True)
  (tmp_path / 'checkpoints' / 'best' / '5').mkdir(parents=True)  # An earlier launch's.
  before = workdir_lib.saved_steps(tmp_path)
  assert {(kind, step) for kind, step, *_ in before} == {('latest', '2'), ('best', '5')}
  (tmp_path / 'config.json').write_text('new')
  assert workdir_lib.restore_config(tmp_path, 'old', before) is True
  assert (tmp_path / 'config.json').read_text() == 'old'
  assert workdir_lib.restore_config(tmp_path, 'old', before) is False  # Nothing to change.
  (tmp_path / 'config.json').write_text('new')
  (tmp_path / 'checkpoints' / 'latest' / '4').mkdir()  # The launch's own.
  assert workdir_lib.restore_config(tmp_path, 'old', before) is False
  assert (tmp_path / 'config.json').read_text() == 'new'
  (tmp_path / 'checkpoints' / 'latest' / '4').rmdir()
  # Saved again by the launch: a new folder, written later than the old one. Its inode may be the
  # old one's, and a save takes longer than the file clock's tick, which this mkdir does not.
  best5 = tmp_path / 'checkpoints' / 'best' / '5'
  mtime = best5.stat().st_mtime_ns
  shutil.rmtree(best5)
  best5.mkdir()
  os.utime(best5, ns=(mtime + 10**8, mtime + 10**8))
  assert workdir_lib.restore_config(tmp_path, 'old', before) is False
  assert workdir_lib.restore_config(tmp_path, None, set()) is False  # Nothing to go back to.


def test_a_fresh_start_over_files_without_a_checkpoint_keeps_them_in_a_previous_folder(run):
  """A workdir holding a config.json and metrics.jsonl but no checkpoint to resume (its
  checkpoints deleted, or another project's files): the run starts at step 0 and the old files are
  moved aside, never overwritten."""
  shutil.rmtree(run / 'checkpoints')
  old = {name: (run / name).read_bytes() for name in ('config.json', 'metrics.jsonl')}
  out = train(run, '--config.train.max_steps=1')
  assert out.returncode == 0, out.stderr[-3000:]
  previous = [p for p in run.iterdir() if p.name.startswith('previous-')]
  assert len(previous) == 1 and f'kept in {previous[0]}' in out.stdout + out.stderr
  assert {p.name: p.read_bytes() for p in previous[0].iterdir()} == old
  assert sorted(_logged(run, 'train_loss')) == [1]  # The new run's own rows.


def test_nothing_is_set_aside_that_a_relaunch_would_only_rewrite_the_same(tmp_path):
  config = {'model': {'name': 'simple_cnn'}, 'seed': 0}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  (tmp_path / 'metrics.jsonl').write_text('')  # A start that failed before its first log row.
  assert workdir_lib.set_aside_previous(tmp_path, config) is None
  assert workdir_lib.set_aside_previous(tmp_path, {**config, 'seed': 1}).name.startswith('previous-')
  assert not (tmp_path / 'config.json').exists() and not (tmp_path / 'metrics.jsonl').exists()


def test_why_unwritable_answers_from_a_real_probe(tmp_path):
  """The one write probe behind evaluate's, the converter's and --submission's up-front checks:
  a folder that takes files gives None and keeps no probe; /proc (which refuses files even to root)
  and a missing folder give the reason."""
  assert workdir_lib.why_unwritable(tmp_path) is None and not list(tmp_path.iterdir())
  if HAS_PROC:
    assert workdir_lib.why_unwritable('/proc')
  assert workdir_lib.why_unwritable(tmp_path / 'missing') == 'No such file or directory'


def test_a_failed_start_leaves_no_workdir_behind_but_never_removes_an_existing_one(tmp_path):
  # Found once the workdir is claimed (when the data is read): the folder had been made.
  bad = ('--config.data.source=local', f'--config.data.dir={tmp_path / "no_data"}')
  assert 'no_data' in the_error(train(tmp_path / 'new_run', *bad))
  assert not (tmp_path / 'new_run').exists()
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('mine')
  (tmp_path / 'mine' / 'train.log').write_text('')  # `| tee mine/train.log`: the run's own.
  out = train(tmp_path / 'mine', *bad)
  the_error(out)
  assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'mine'  # Not created by this launch: kept.
  # Files of no run in it are named (a folder of notes had been written into silently: a walkthrough).
  assert 'holds no run but 1 other entry (notes.txt): the run writes its files beside them' in out.stderr
  (tmp_path / 'a_file').write_text('mine')  # Had read "is not writable: File exists" (an audit).
  assert the_error(train(tmp_path / 'a_file')).endswith(f'{tmp_path / "a_file"} is a file, not a folder')
  assert (tmp_path / 'a_file').read_text() == 'mine'


def test_allowed_config_change_resumes_and_launches_jsonl_records_it(run):
  first = json.loads((run / 'config.json').read_text())
  # Relaunched on a host in another time zone: its launch had been recorded 8 hours before the
  # first one (local times without their offset: a clock review).
  out = train(run, '--config.optim.lr=0.002', '--config.train.allow_config_change=true',
              '--config.train.max_steps=3', env={**os.environ, 'TZ': 'PST8'})
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'optim.lr changed: 0.001 -> 0.002' in out.stderr
  rows = _launches(run)
  first_time, second_time = (datetime.datetime.fromisoformat(r['time']) for r in rows)
  assert second_time.utcoffset() == datetime.timedelta(hours=-8) and second_time >= first_time
  assert len(rows) == 2 and rows[0]['config'] == first
  assert rows[1]['start_step'] == FIRST_STEPS
  assert rows[1]['changed']['optim.lr'] == [0.001, 0.002]
  assert rows[1]['changed']['train.allow_config_change'] == [False, True]
  assert json.loads((run / 'config.json').read_text()) == rows[1]['config']
  assert rows[1]['config']['optim']['lr'] == 0.002
  # Step 3 (the first after the resume) used the new peak rate: schedule(2) of a 12-step cosine.
  assert _logged(run, 'learning_rate')[3] == pytest.approx(float(_schedule(0.002, 2)(2)), rel=1e-5)


def test_extending_num_epochs_resumes_with_a_warning_naming_the_new_schedule(run):
  out = train(run, '--config.train.num_epochs=3', '--config.train.max_steps=3')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'train.num_epochs changed: 2.0 -> 3.0' in out.stderr
  new, old = _schedule(0.001, 3), _schedule(0.001, 2)
  assert float(new(2)) != pytest.approx(float(old(2)))
  assert (f'The schedule now ends at step {3 * STEPS_PER_EPOCH} (was {2 * STEPS_PER_EPOCH}): the '
          f'learning rate at step {FIRST_STEPS} is {float(new(2)):.3g} (was {float(old(2)):.3g})'
          in out.stderr), out.stderr[-3000:]
  assert _logged(run, 'learning_rate')[3] == pytest.approx(float(new(2)), rel=1e-5)
  assert _launches(run)[1]['changed']['train.num_epochs'] == [2, 3]


def test_changing_a_safe_key_resumes_silently(run):
  out = train(run, '--config.train.log_every_steps=3', '--config.train.max_steps=3')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Resuming at step' not in out.stderr and 'changed' not in out.stderr
  assert sorted(_logged(run, 'train_loss')) == [1, 2, 3]
  assert _launches(run)[1]['changed'] == {'train.log_every_steps': [1, 3],
                                          'train.max_steps': [2, 3]}


def test_a_resume_without_config_json_is_refused_unless_allowed(run):
  """With config.json deleted, a resume had taken any change without a word (an audit): the
  launch cannot be checked against the run, so it is refused, naming the file and the way on."""
  (run / 'config.json').unlink()
  kept = snapshot(run, skip=('.lock',))
  line = the_error(train(run, '--config.optim.lr=0.01', '--config.train.max_steps=3'))
  assert f'{run / "config.json"} is missing' in line and 'launches.jsonl' in line, line
  assert 'allow_config_change' in line and snapshot(run, skip=('.lock',)) == kept
  out = train(run, '--config.train.max_steps=3', '--config.train.allow_config_change=true')
  assert out.returncode == 0 and 'config.json is missing' in out.stderr, out.stderr[-3000:]
  assert sorted(_logged(run, 'train_loss')) == [1, 2, 3]  # Resumed, not restarted.


@pytest.mark.parametrize('text,why', [('[' * 100_000, 'maximum recursion depth'),
                                      ('{"seed": ' + '7' * 5000 + '}', 'integer string')])
def test_a_crafted_json_file_of_a_run_is_one_error_or_skipped(tmp_path, text, why):
  """JSON nested 100k deep (RecursionError) or a 5,000-digit int (a ValueError that is no
  JSONDecodeError) had been tracebacks from config.json and metrics.jsonl (a security audit)."""
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(text)
  with pytest.raises(workdir_lib.WorkdirError, match=f'is unreadable .*{why}'):
    workdir_lib.previous_config(tmp_path)
  (tmp_path / 'metrics.jsonl').write_text(json.dumps({'step': 1, 'train_loss': 2.0}) + '\n'
                                          + text + '\n' + json.dumps({'step': 2}) + '\n')
  assert [r['step'] for r in tracking.read_metrics(tmp_path)] == [1, 2]


def test_a_same_config_relaunch_at_step_0_keeps_the_earlier_launch_s_metrics(tmp_path):
  """A relaunch at step 0 moves the earlier launch's logged rows to previous-*, where the new
  launch's MetricsWriter cannot truncate them; an empty metrics.jsonl is nothing to keep."""
  config = {'optim': {'learning_rate': 0.1}}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  (tmp_path / 'metrics.jsonl').write_text('{"step": 3, "train_loss": 2.0}\n')
  previous = workdir_lib.set_aside_previous(tmp_path, config)
  assert previous is not None and not (tmp_path / 'metrics.jsonl').exists()
  assert (previous / 'metrics.jsonl').read_text() == '{"step": 3, "train_loss": 2.0}\n'
  fresh = tmp_path / 'fresh'
  fresh.mkdir()
  (fresh / 'config.json').write_text(json.dumps(config))
  (fresh / 'metrics.jsonl').write_text('')
  assert workdir_lib.set_aside_previous(fresh, config) is None


def test_a_workdir_holding_only_checkpoints_holds_a_run(tmp_path):
  """Checkpoints alone (config.json deleted) still make a run that train.resume=false refuses
  to train into; a save killed before its first commit does not."""
  (tmp_path / 'checkpoints' / 'latest' / '6').mkdir(parents=True)
  assert workdir_lib.existing_run(tmp_path) == 'checkpoints/'
  empty = tmp_path / 'empty'
  (empty / 'checkpoints' / 'latest' / '6.orbax-checkpoint-tmp').mkdir(parents=True)
  assert workdir_lib.existing_run(empty) is None


def test_a_filesystem_without_file_locks_is_named_as_such(tmp_path, monkeypatch):
  """Lustre without its flock mount option answers flock with ENOSYS, which had been reported as
  'workdir ... is not writable: Function not implemented' (a cluster review). The folder the
  launch made is removed again."""
  def no_locks(fd, operation):
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
  monkeypatch.setattr(own_files.fcntl, 'flock', no_locks)
  run = tmp_path / 'run'
  with pytest.raises(workdir_lib.WorkdirError, match=(
      rf'^workdir {re.escape(str(run))} is on a filesystem without file locks \(flock: '
      r'Function not implemented\), .* on Lustre mount it with -o flock')):
    claim.claim_workdir(default.get_config(), run, created=True)
  assert not run.exists()
  def lock_files_open():  # (Not a count of every descriptor: other threads may open files.)
    fds = pathlib.Path('/proc/self/fd')
    targets = []
    for fd in fds.iterdir():
      try:
        targets.append(os.readlink(fd))
      except OSError:  # Closed meanwhile.
        pass
    return [t for t in targets if t.startswith(str(run / workdir_lib.LOCK_FILE))]
  if HAS_PROC:
    assert not lock_files_open()  # Its descriptor had been left open.
  # Only flock's own failure is called that (a folder that cannot be made is "not writable").
  monkeypatch.undo()
  def no_folders(*args, **kwargs):
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
  monkeypatch.setattr(pathlib.Path, 'mkdir', no_folders)
  with pytest.raises(workdir_lib.WorkdirError, match=(
      rf'^workdir {re.escape(str(run))} is not writable: Function not implemented$')):
    claim.claim_workdir(default.get_config(), run, created=True)


def test_refusing_a_workdir_that_holds_a_run_releases_its_lock(tmp_path):
  """train.resume=false refuses a workdir with a run and lets its lock go: a notebook's next call
  in the same process (say with train.resume=true) is not told the run is 'in use'."""
  (tmp_path / 'metrics.jsonl').write_text('')
  config = default.get_config()
  config.train.resume = False
  with pytest.raises(workdir_lib.WorkdirError, match='already holds a run'):
    claim.claim_workdir(config, tmp_path, created=False)
  lock = own_files.Lock(tmp_path)
  assert lock.try_acquire(), lock.holder
  lock.release()


def test_resuming_a_run_does_not_call_its_own_files_foreign(tmp_path, caplog):
  """The 'holds no run but N other entries' warning is for a folder without a run: a resumed
  run's own config.json and metrics.jsonl are not named as someone else's files."""
  (tmp_path / 'config.json').write_text('{}')
  (tmp_path / 'metrics.jsonl').write_text('')
  config = default.get_config()
  config.train.resume = True
  lock = claim.claim_workdir(config, tmp_path, created=False)
  lock.release()
  assert not [r for r in caplog.records if 'other entr' in r.getMessage()], caplog.text


def _fresh_folder(tmp_path: pathlib.Path) -> pathlib.Path:
  workdir = tmp_path / 'new'
  for sub in ('checkpoints/latest', 'checkpoints/best'):
    (workdir / sub).mkdir(parents=True)
  (workdir / workdir_lib.LOCK_FILE).write_text('pid 1 on host')
  return workdir


@pytest.mark.parametrize('empty', [(), (workdir_lib.LAUNCHES_FILE,),
                                   (workdir_lib.LAUNCHES_FILE, workdir_lib.CONFIG_FILE,
                                    workdir_lib.METRICS_FILE)])
def test_a_created_folder_holding_only_empty_records_is_removed(tmp_path, empty):
  """A full disk stops a first launch at its first record, left empty (launches.jsonl): the
  folder it had created stayed behind (a resource review)."""
  workdir = _fresh_folder(tmp_path)
  for name in empty:
    (workdir / name).touch()
  assert workdir_lib.remove_if_untouched(workdir) and not workdir.exists()


@pytest.mark.parametrize('how', ['launches_with_a_line', 'metrics_link', 'other_empty_file',
                                 'file_in_checkpoints', 'checkpoints_link'])
def test_a_created_folder_holding_anything_written_is_kept(tmp_path, how):
  workdir = _fresh_folder(tmp_path)
  if how == 'launches_with_a_line':
    (workdir / workdir_lib.LAUNCHES_FILE).write_text('{}\n')
  elif how == 'metrics_link':
    (tmp_path / 'elsewhere').touch()
    (workdir / workdir_lib.METRICS_FILE).symlink_to(tmp_path / 'elsewhere')
  elif how == 'other_empty_file':
    (workdir / 'notes.txt').touch()
  elif how == 'file_in_checkpoints':
    (workdir / 'checkpoints' / 'latest' / '3').touch()
  else:
    shutil.rmtree(workdir / 'checkpoints' / 'best')
    (tmp_path / 'best').mkdir()
    (workdir / 'checkpoints' / 'best').symlink_to(tmp_path / 'best')
  assert not workdir_lib.remove_if_untouched(workdir) and workdir.exists()


def test_the_commands_the_done_line_suggests_can_be_pasted_into_a_shell(tmp_path):
  """A workdir of spaces and quotes had been printed bare in `python -m jax_cifar.report DIR`,
  and a trailing slash as `DIR//checkpoints` (a path review)."""
  run = tmp_path / "my run, it's é"
  out = train(pathlib.Path(f'{run}/'), '--config.train.max_steps=1')
  assert out.returncode == 0, out.stderr[-3000:]
  done = [l for l in out.stderr.splitlines() if l.startswith('Done at step 1')][0]
  assert f'checkpoints in {run}/checkpoints, metrics in {run}/metrics.jsonl' in done, done
  command = done[done.index('python -m jax_cifar.report'):done.index(' --out DIR')]
  assert shlex.split(command)[3:] == [str(run)], command
