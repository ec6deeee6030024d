"""Checkpoint mechanics without a trained run: the restore target, a better `best` at a step it
already holds, which folder a step number means, replicated arrays on CPU devices saved whole,
a failed background save found at once, and storage errors cut to their cause. (Damaged steps of
a trained run: test_checkpoints.py.)"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from flax import nnx

from jax_cifar import checkpoints, errors, optim, parallel, step_folders
from jax_cifar import state as state_lib
from jax_cifar.configs import default
from conftest import TOO_LARGE
from test_checkpoints import _damage


@pytest.mark.parametrize('ema', [0.0, 0.9])
def test_the_restore_target_is_init_states_structure_without_computing_it(ema, monkeypatch):
  """restore() reads into abstract_state: every leaf of init_state, same shape, dtype and sharding,
  as ShapeDtypeStructs (no weights are initialised just to be overwritten). Each traces the model
  once: their GraphDef comes from that trace (a trace of its own had cost ResNet-152 launches
  1.5 s more)."""
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'cifar', 4  # BatchNorm statistics too.
  c.ema.decay = ema
  tx, _ = optim.make_optimizer(c.optim, 1, 1)
  mesh = parallel.make_mesh()
  builds, build = [], state_lib.build_model
  monkeypatch.setattr(state_lib, 'build_model', lambda config: builds.append(1) or build(config))
  (real, real_def), (abstract, abstract_def) = (state_lib.init_state(c, tx, mesh, pretrained=False),
                                                state_lib.abstract_state(c, tx, mesh))
  assert len(builds) == 2
  assert jax.tree.structure(abstract) == jax.tree.structure(real) and abstract_def == real_def
  own_trace = nnx.split(nnx.eval_shape(lambda: build(c)), nnx.Param, ...)[0]
  assert real_def == own_trace and hash(real_def) == hash(own_trace)
  assert (abstract.ema_params is None) == (ema == 0.0)
  for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(real), strict=True):
    assert isinstance(a, jax.ShapeDtypeStruct)
    assert (a.shape, a.dtype, a.sharding) == (r.shape, r.dtype, r.sharding)


def test_a_higher_accuracy_at_a_step_best_already_holds_replaces_it(tmp_path):
  # 'best' holds step 9 from before a kill; the resumed run validates step 9 again and scores
  # higher (another checkpoint.best_weights, an allowed config change): orbax refused the save of
  # an existing step and the run died at every relaunch.
  first = checkpoints.Checkpoints(tmp_path)
  assert first.maybe_save_best({'w': np.ones(3, np.float32)}, 9, 0.02)
  first.wait()
  first.close()
  relaunch = checkpoints.Checkpoints(tmp_path)
  assert not relaunch.maybe_save_best({'w': np.full(3, 5, np.float32)}, 9, 0.01)
  assert relaunch.maybe_save_best({'w': np.zeros(3, np.float32)}, 9, 0.05)
  relaunch.wait()
  assert relaunch.best.all_steps() == [9] and relaunch.best_accuracy() == 0.05
  # A tie is no improvement: the earlier step stays best (a mutation audit: `<` passed elsewhere).
  assert not relaunch.maybe_save_best({'w': np.ones(3, np.float32)}, 12, 0.05)
  restored, step = relaunch.restore('best', {'w': np.ones(3, np.float32)})
  assert step == 9
  np.testing.assert_array_equal(restored['w'], np.zeros(3))
  relaunch.close()


def test_a_step_number_is_latest_s_folder_else_best_s(tmp_path):
  """load_model(run, N) and model.init_from=RUN:N: a step kept only among the best ones loads too."""
  for kind, step in (('latest', 4), ('best', 4), ('best', 3)):
    (tmp_path / 'checkpoints' / kind / str(step)).mkdir(parents=True)
  assert step_folders.step_folder(tmp_path, 4) == tmp_path / 'checkpoints' / 'latest' / '4'
  assert step_folders.step_folder(tmp_path, 3) == tmp_path / 'checkpoints' / 'best' / '3'
  assert step_folders.step_folder(tmp_path, 9) == tmp_path / 'checkpoints' / 'latest' / '9'  # Neither.
  assert state_lib.parse_init_from(f'{tmp_path}:3') == (str(tmp_path), str(tmp_path / 'checkpoints' / 'best' / '3'))
  with pytest.raises(errors.ConfigError, match=rf'model.init_from={tmp_path}:9: checkpoint 9: '
                     rf'{tmp_path} kept no step 9 .*it kept latest: 4; best: 3, 4\)'):
    state_lib.parse_init_from(f'{tmp_path}:9')


_SAVE_ON_4_DEVICES = '''
import json, sys
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jax_cifar import checkpoints, parallel
mesh = parallel.make_mesh()
state = {f'w{i}': jax.device_put(np.arange(64 * (i + 1), dtype=np.float32), NamedSharding(mesh, P()))
         for i in range(5)}
import orbax.checkpoint as ocp
store = ocp.type_handlers.get_type_handler(jax.Array)._array_metadata_store
slices = []
slice_in_dim = jax.lax.slice_in_dim
jax.lax.slice_in_dim = lambda *a, **k: slices.append(1) or slice_in_dim(*a, **k)
ckpts = checkpoints.Checkpoints(sys.argv[1])
ckpts.save_latest(state, 1)
ckpts.wait()
restored, step = ckpts.restore('latest', state)
ckpts.close()
handler = ocp.type_handlers.get_type_handler(jax.Array)  # The override keeps orbax's store.
same_store = store is not None and handler._array_metadata_store is store
print(json.dumps({'devices': len(jax.devices()), 'slices': len(slices), 'step': step,
                  'equal': all(np.array_equal(restored[k], state[k]) for k in state),
                  'same_store': same_store}))
'''


def test_replicated_arrays_on_cpu_devices_are_saved_whole_not_sliced_per_device(tmp_path):
  """orbax's replica-parallel saving cut each replicated array into one eager slice per device
  (3 of a short 4-device run's 13 CPU-seconds); on CPU devices they are saved whole, and restore."""
  env = dict(os.environ)  # (Its XLA_FLAGS too: JAX_NUM_CPU_DEVICES below wins over a count.)
  env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='4')
  proc = subprocess.run([sys.executable, '-c', _SAVE_ON_4_DEVICES, str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.splitlines()[-1])
  assert result == {'devices': 4, 'slices': 0, 'step': 1, 'equal': True, 'same_store': True}


def test_a_failed_background_save_is_found_without_waiting_for_the_next_save(tmp_path):
  """A save that failed in the background had gone unnoticed until the next save, up to
  checkpoint.every_steps later, and the error then said earlier checkpoints were kept when there
  were none (an audit). check_saves (the loop calls it at log steps) finds it once the save has
  ended, and the error says what is left. A real write past a per-file size limit."""
  code = f'''
import resource, signal, time
import numpy as np
from jax_cifar import checkpoints
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
ckpts = checkpoints.Checkpoints({str(tmp_path)!r})
ckpts.save_latest({{'w': np.random.default_rng(0).random((256, 1024), np.float32)}}, 10)
for _ in range(600):
  try:
    ckpts.check_saves()
  except checkpoints.CheckpointError as e:
    print('ERROR', e)
    break
  time.sleep(0.1)
'''
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).resolve().parent.parent, timeout=300)
  line = next((l for l in out.stdout.splitlines() if l.startswith('ERROR ')), None)
  assert line is not None, (out.stdout[-2000:], out.stderr[-3000:])
  assert 'saving checkpoint step 10 in' in line and TOO_LARGE in line, line
  assert line.endswith('there is no earlier one there'), line


def test_storage_errors_keep_their_cause_and_drop_tensorstores_json_spec():
  """tensorstore ends an error with its store's spec, `[tensorstore_spec='{...}']` or, at times,
  `[tensorstore_spec[1]='{...}']`: a page of JSON that had crowded out the cause (an audit)."""
  cause = ('OUT_OF_RANGE: Error reading "step/.zarray": Requested byte range [0, 35569) is not '
           'valid for value of size 0')
  for spec in ('tensorstore_spec', 'tensorstore_spec[1]', 'source locations'):
    e = ValueError(f"{cause} [{spec}='{{\"context\":{{\"cache_pool\":{{}}}},\"driver\":\"zarr\"}}']")
    assert step_folders.one_line(e) == cause
  assert [step_folders.is_step_number(t) for t in ('40', '040', '²', '٤٠', '4.0', '')] == [
      True, True, False, False, False, False]


def test_a_non_finite_accuracy_never_becomes_best(tmp_path):
  """A NaN val_accuracy (a diverged evaluation) never ranks as best: as best it would have made
  every later comparison false, so each later score would have replaced it."""
  ckpts = checkpoints.Checkpoints(tmp_path)
  state = {'w': np.ones(3, np.float32)}
  assert not ckpts.maybe_save_best(state, 1, float('nan'))
  assert ckpts.maybe_save_best(state, 2, 0.1)
  assert not ckpts.maybe_save_best(state, 3, float('nan'))
  ckpts.wait()
  assert ckpts.best.all_steps() == [2] and ckpts.best_accuracy() == 0.1
  ckpts.close()


def test_fallback_restores_the_newest_intact_step_and_sets_aside_only_the_damaged(tmp_path):
  """checkpoint.keep=3, newest step's array file emptied (tensorstore: OUT_OF_RANGE): the resume
  takes the newest intact step (6, not the oldest), and only step 9 goes to damaged/."""
  ckpts = checkpoints.Checkpoints(tmp_path, keep=3)
  weights = {s: np.random.default_rng(s).standard_normal(4096).astype(np.float32)
             for s in (3, 6, 9)}  # (Random: orbax compresses constant arrays into its manifest.)
  for step, w in weights.items():
    ckpts.save_latest({'w': w}, step)
  ckpts.wait()
  latest = tmp_path / 'checkpoints' / 'latest'
  _damage(latest / '9', 'empty')
  restored, step = ckpts.restore('latest', {'w': np.zeros(4096, np.float32)}, fallback=True)
  assert step == 6
  np.testing.assert_array_equal(restored['w'], weights[6])
  assert [p.name for p in ckpts.set_aside_damaged('latest')] == ['latest-9']
  assert sorted(p.name for p in latest.iterdir()) == ['3', '6']
  ckpts.close()


def test_a_step_damaged_again_is_set_aside_beside_its_earlier_damaged_copy(tmp_path):
  """The same step number damaged twice: the second copy gets a name of its own in damaged/
  (a fixed name would fail to move onto the first and stop the resume)."""
  ckpts = checkpoints.Checkpoints(tmp_path)
  w = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
  latest = tmp_path / 'checkpoints' / 'latest'
  ckpts.save_latest({'w': w}, 6)
  for _ in range(2):  # Step 9 saved, damaged, set aside, saved again and damaged again.
    ckpts.save_latest({'w': w + 9}, 9)
    ckpts.wait()
    _damage(latest / '9', 'empty')
    assert ckpts.restore('latest', {'w': w}, fallback=True)[1] == 6
    ckpts.set_aside_damaged('latest')
  assert sorted(p.name for p in (tmp_path / 'checkpoints' / 'damaged').iterdir()) == [
      'latest-9', 'latest-9.1']
  ckpts.close()


def test_a_best_step_whose_metrics_hold_no_accuracy_is_named_then_set_aside(tmp_path):
  """A best step whose saved metrics have no val_accuracy cannot be ranked: an evaluation names
  it, and a training run sets it aside rather than keeping an unrankable best."""
  ckpts = checkpoints.Checkpoints(tmp_path)
  assert ckpts.maybe_save_best({'w': np.ones(3, np.float32)}, 4, 0.5)
  ckpts.wait()
  ckpts.close()
  (tmp_path / 'checkpoints' / 'best' / '4' / 'metrics' / 'metrics').write_text('{"val_loss": 1.0}')
  with pytest.raises(checkpoints.CheckpointError, match='holds no val_accuracy'):
    checkpoints.Checkpoints(tmp_path, create=False).best  # pylint: disable=expression-not-assigned
  resumed = checkpoints.Checkpoints(tmp_path)
  assert resumed.best.all_steps() == []
  assert (tmp_path / 'checkpoints' / 'damaged' / 'best-4' / 'metrics').is_dir()
  resumed.close()


def test_a_best_step_being_deleted_by_a_running_training_is_not_called_damaged(tmp_path):
  """An evaluation beside a training run that is deleting its superseded best step (metrics and
  metadata already gone) restores the current best, instead of calling 'best' damaged."""
  ckpts = checkpoints.Checkpoints(tmp_path)
  w = np.arange(8, dtype=np.float32)
  assert ckpts.maybe_save_best({'w': w}, 9, 0.5)
  ckpts.wait()
  ckpts.close()
  best = tmp_path / 'checkpoints' / 'best'
  shutil.copytree(best / '9', best / '4')  # The superseded best, as orbax's rmtree leaves it
  shutil.rmtree(best / '4' / 'metrics')    # half way: metrics and metadata already gone.
  (best / '4' / '_CHECKPOINT_METADATA').unlink()
  evaluating = checkpoints.Checkpoints(tmp_path, create=False)
  restored, step = evaluating.restore('best', {'w': np.zeros(8, np.float32)})
  assert step == 9
  np.testing.assert_array_equal(restored['w'], w)
  evaluating.close()


@pytest.mark.parametrize('verbosity', [False, True])
def test_steps_without_their_checkpoint_metadata_are_named_by_the_restore_not_by_orbax_warnings(
    tmp_path, caplog, monkeypatch, verbosity):
  """orbax warned 'Metadata file does not exist: PATH' for each such step as it opened the run's
  checkpoints, before the restore's own error named it (notebooks saw absl's raw lines from
  load_model). Its other logs, and the absl logger's filters after the restore, are unchanged;
  with --verbosity given (the commands' "show every library log") the warnings are shown."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(flags.FLAGS['verbosity'], 'present', int(verbosity))
  absl_logger = absl_logging.get_absl_logger()  # As a notebook has it: no command (run in-process
  monkeypatch.setattr(absl_logger, 'filters', [  # by an earlier test) hides orbax's logs.
      f for f in absl_logger.filters if not getattr(f, 'hides_orbax', False)])
  caplog.set_level('WARNING', logger=absl_logger.name)
  ckpts = checkpoints.Checkpoints(tmp_path)
  ckpts.save_latest({'w': np.ones(4, np.float32)}, 3)
  assert ckpts.maybe_save_best({'w': np.ones(4, np.float32)}, 3, 0.5)
  ckpts.wait()
  ckpts.close()
  for which in ('latest', 'best'):
    (tmp_path / 'checkpoints' / which / '3' / '_CHECKPOINT_METADATA').unlink()
  filters = list(absl_logging.get_absl_logger().filters)
  caplog.set_level('WARNING')
  reading = checkpoints.Checkpoints(tmp_path, create=False)
  for which in ('latest', 'best'):
    with pytest.raises(checkpoints.CheckpointError, match=(
        rf'damaged checkpoint in {tmp_path / "checkpoints" / which}: step 3 \(missing '
        r'_CHECKPOINT_METADATA\)')):
      reading.restore(which, {'w': np.zeros(4, np.float32)})
  reading.close()
  warned = [r for r in caplog.records if 'Metadata file does not exist' in r.getMessage()]
  assert bool(warned) == verbosity, [r.getMessage() for r in warned]  # (One per step, in orbax.)
  assert list(absl_logging.get_absl_logger().filters) == filters
  absl_logging.warning('still shown')
  assert caplog.records[-1].getMessage() == 'still shown'


class _Stop(BaseException):
  """As stopping.StopNow: what a second SIGTERM raises wherever the main thread is."""


def test_a_wait_interrupted_by_a_second_signal_leaves_the_next_wait_to_finish_the_save(
    tmp_path, monkeypatch):
  """A second SIGTERM during the wait for a save: the trainer's `finally` waits again, as its
  message says ("a save already writing is finished"). That wait had returned at once (a join
  that an exception interrupts leaves the thread looking finished before Python 3.13), and the
  save died with the process: only `8.orbax-checkpoint-tmp` was left (a kill review)."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  real_finalize, signalled = atomicity.AtomicRenameTemporaryPath.finalize, threading.Event()

  async def slow_finalize(self, *args, **kwargs):  # The commit of a large state: it takes a while,
    signalled.wait(60)  # here until the second signal came, so the wait cannot end before it (a
    return await real_finalize(self, *args, **kwargs)  # fixed sleep had been a race on a busy CPU).

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', slow_finalize)

  def second_signal(*_):
    signalled.set()
    raise _Stop()

  previous = signal.signal(signal.SIGALRM, second_signal)
  ckpts = checkpoints.Checkpoints(tmp_path)
  try:
    ckpts.save_latest({'w': np.random.default_rng(0).standard_normal(4096).astype(np.float32)}, 8)
    signal.setitimer(signal.ITIMER_REAL, 0.3)  # Lands inside the wait below.
    with pytest.raises(_Stop):
      ckpts.wait()
    ckpts.wait()  # The trainer's `finally`.
    assert sorted(os.listdir(tmp_path / 'checkpoints' / 'latest')) == ['8']
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
    ckpts.close()


def test_a_steps_best_commits_before_its_latest(tmp_path, monkeypatch):
  """A validation's `best` save still in flight when the same step's `latest` committed: a kill
  between the two lost that best for good, since the resume from the step does not validate it
  again (a kill review). `latest` now starts once `best` is saved."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  real_finalize, committed = atomicity.AtomicRenameTemporaryPath.finalize, []

  async def recorded_finalize(self, *args, **kwargs):
    final = self._final_path  # pylint: disable=protected-access
    if final.parent.name == 'best':
      time.sleep(1.0)  # A larger state, or a slower disk: the best save takes longer.
    result = await real_finalize(self, *args, **kwargs)
    if final.parent.name in ('best', 'latest'):  # (Not the items inside a step.)
      committed.append(f'{final.parent.name}/{final.name}')
    return result

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', recorded_finalize)
  ckpts = checkpoints.Checkpoints(tmp_path)
  state = {'w': np.random.default_rng(0).standard_normal(4096).astype(np.float32)}
  assert ckpts.maybe_save_best(state, 15, 0.5)
  ckpts.save_latest(state, 15)
  ckpts.wait()
  ckpts.close()
  assert committed == ['best/15', 'latest/15']


@pytest.mark.parametrize('failure', [_Stop(), OSError(28, 'No space left on device')])
def test_a_save_that_failed_before_its_background_part_is_not_waited_for(tmp_path, failure):
  """orbax's 'saving' flag stays set when its save() raises before the background part starts (a
  second signal during the copy from the device, a full disk): the poll before orbax's join had
  spun on it forever, and Ctrl-C could no longer stop the run (the diff review)."""
  ckpts = checkpoints.Checkpoints(tmp_path)
  state = {'w': np.ones(16, np.float32)}
  ckpts.save_latest(state, 1)
  ckpts.wait()

  def fails(*_, **__):
    raise failure

  ckpts.latest._checkpointer.save = fails  # pylint: disable=protected-access
  with pytest.raises(BaseException) as raised:
    ckpts.save_latest(state, 2)
  assert raised.type is type(failure) or isinstance(raised.value, checkpoints.CheckpointError)

  def hangs(*_):
    raise TimeoutError('wait() still waiting after 20 s')

  previous = signal.signal(signal.SIGALRM, hangs)
  signal.alarm(20)
  try:
    ckpts.wait()  # Returns: nothing of step 2 runs in the background.
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
  assert ckpts.latest.all_steps() == [1]


def test_commits_are_noted_without_waiting_and_the_save_is_still_waited_for(tmp_path):
  """Process 0 of several learns of a committed save at each step (note_commits: no collective,
  no raising), so a resumed launch's config becomes config.json then, not a whole checkpoint
  interval later at the next save (the diff review)."""
  ckpts = checkpoints.Checkpoints(tmp_path)
  committed = []
  ckpts.after_commit = committed.append
  ckpts.save_latest({'w': np.ones(16, np.float32)}, 3)
  for _ in range(500):
    if not ckpts.latest.is_saving_in_progress():
      break
    time.sleep(0.02)
  ckpts.note_commits()
  assert committed == [3]
  ckpts.wait()  # Still waited for (and noted again: the hook guards itself, as the trainer's).
  assert committed == [3, 3] and ckpts.latest.all_steps() == [3]
  ckpts.close()
