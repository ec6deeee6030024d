"""Long-job faults of `evaluate --ood_dir`: kills, signals, leftovers, bad --submission paths (bad
input files: test_ood_inputs.py). Faults are placed at exact points with the JAX_CIFAR_TEST_SIGNAL hook
(jax_cifar/interrupt.py), never after a sleep."""

import json
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys

import jax
import numpy as np
import pytest

from _tiny_run import CONFIG_FILE, config as _config, write_ood
from jax_cifar import errors, evaluate, interrupt
from jax_cifar.evaluation import output_files, submission
from jax_cifar.training import trainer
from jax_cifar.data import ood
from conftest import HAS_PROC, TOO_LARGE

ROOT = pathlib.Path(__file__).resolve().parent.parent
N_OOD = 10


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 1-step synthetic run, its config file, and 19 small distortion files."""
  base = tmp_path_factory.mktemp('faults')
  (base / 'config.py').write_text(CONFIG_FILE)
  trainer.train_and_evaluate(_config(), str(base / 'run'))
  write_ood(base / 'ood', n=N_OOD)
  return base


def _evaluate(run, csv: pathlib.Path, hook: str | None = None, *extra):
  env = dict(os.environ)
  env.pop(interrupt.TEST_HOOK_VAR, None)
  if hook:
    env[interrupt.TEST_HOOK_VAR] = hook
  cmd = [sys.executable, '-m', 'jax_cifar.evaluate', '--config', str(run / 'config.py'),
         '--workdir', str(run / 'run'), '--checkpoint', 'latest', *extra]
  if csv is not None:  # None: the clean splits only.
    cmd += ['--ood_dir', str(run / 'ood'), '--submission', str(csv)]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _last_line(text: str) -> str:
  lines = [l.split('\r')[-1].strip() for l in text.splitlines()]  # Progress bars use \r.
  return [l for l in lines if l][-1]


def _parts(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(folder.glob('.*.part'))


@pytest.mark.slow  # 20-45 s (two evaluate runs and a killed one)
@pytest.mark.optimized_xla  # Predicts 95 chunks: slower at O0 (43 -> 58 s in a loaded suite).
def test_sigkill_keeps_the_previous_csv_and_a_relaunch_writes_the_same_bytes(run):
  reference = run / 'reference' / 'sub.csv'
  reference.parent.mkdir()
  proc = _evaluate(run, reference)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # stderr is a pipe, as a cluster's log file: the per-file bars, which sat under 'OOD files' and
  # added a line and a cursor-up escape each second there, are not drawn (a log-file review).
  assert 'OOD files' in proc.stderr and '\x1b[A' not in proc.stderr, proc.stderr[-3000:]
  assert 'distortion00:' not in proc.stderr
  out = run / 'out' / 'sub.csv'
  out.parent.mkdir()
  previous = ''.join(line.rsplit(',', 1)[0] + ',0\n' if i else line + '\n'
                     for i, line in enumerate(reference.read_text().splitlines()))
  out.write_text(previous)  # A complete CSV of an earlier run (different labels).
  assert previous != reference.read_text()  # So the relaunch below must really rewrite it.

  proc = _evaluate(run, out, 'ood_file:4:SIGKILL')
  assert proc.returncode == -9, (proc.returncode, proc.stderr[-3000:])
  assert out.read_text() == previous  # Never a partial file in its place.
  assert len(_parts(out.parent)) == 1  # The killed writer's temp file (it had no chance to clean).
  kept = run / 'run' / 'partial_latest'  # The finished files' predictions, for the relaunch.
  assert sorted(p.name for p in kept.glob('*.npy')) == [f'ood_distortion{i:02d}.npy' for i in range(5)]

  proc = _evaluate(run, out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'OOD: 5 of 19 files were predicted by a stopped evaluation' in proc.stderr
  assert out.read_bytes() == reference.read_bytes()
  assert not _parts(out.parent), _parts(out.parent)  # The leftover was removed.
  assert not kept.exists()
  assert submission.check_submission(out, run / 'ood').startswith('OK')


@pytest.mark.parametrize('sig,status', [('SIGTERM', 143), ('SIGINT', 130)])
def test_sigterm_and_sigint_stop_with_one_line_and_no_csv(run, sig, status):
  out = run / f'stopped_{sig}' / 'sub.csv'
  out.parent.mkdir()
  json_files = lambda: {p: p.stat().st_mtime_ns for p in (run / 'run').glob('eval_*.json')}
  pngs = lambda: {p: p.stat().st_mtime_ns for p in (run / 'run').glob('*.png')}
  before, figures_before = json_files(), pngs()
  proc = _evaluate(run, out, f'ood_file:2:{sig}')
  assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr and 'KeyboardInterrupt' not in proc.stderr, proc.stderr
  kept = run / 'run' / 'partial_latest'  # Distortions 00-02 finished before the stop.
  assert _last_line(proc.stderr) == (
      f'error: stopped by {sig}; no results were written (an existing CSV is kept); the '
      f'predictions of 3 finished files are kept in {kept}: the same command resumes after '
      'them'), proc.stderr[-2000:]
  assert len(list(kept.glob('ood_*.npy'))) == 3
  shutil.rmtree(kept)  # (The next test starts from nothing.)
  assert not out.exists() and not _parts(out.parent)
  assert json_files() == before  # No JSON of an unfinished evaluation ...
  assert pngs() == figures_before  # ... nor its confusion figure (drawn before the OOD files).
  assert not proc.stdout.strip()


def test_a_signal_during_the_last_batches_still_stops_before_any_result_is_written(run):
  """A signal after the prediction loop's last check (the last batches are fetched after it) had
  been dropped: the run wrote its JSON and exited 0 (an audit). Without --ood_dir the line does
  not mention a CSV."""
  before = {p: p.stat().st_mtime_ns for p in (run / 'run').glob('eval_*.json')}
  proc = _evaluate(run, None, 'predicted:0:SIGTERM')
  assert proc.returncode == 143, (proc.returncode, proc.stderr[-3000:])
  assert _last_line(proc.stderr) == 'error: stopped by SIGTERM; nothing partial was written'
  assert {p: p.stat().st_mtime_ns for p in (run / 'run').glob('eval_*.json')} == before
  assert not proc.stdout.strip()


@pytest.mark.parametrize('name, status', [('SIGTERM', 143), ('SIGINT', 130)])
def test_a_signal_while_starting_ends_the_process_even_where_an_exception_would_be_swallowed(
    name, status):
  """The start-up handler raised SystemExit, which JAX's import-time callbacks could swallow (the
  run then went on and exited 0) or turn into an abort with a page of traceback (an audit).
  Ctrl-C (SIGINT) is caught as SIGTERM is: one line, status 128 + the signal's number."""
  code = ('import os, signal, time\n'
          'from jax_cifar import starting\n'
          'starting.install()\n'
          'try:\n'
          f'  os.kill(os.getpid(), signal.{name})\n'
          '  time.sleep(5)\n'
          'except BaseException:\n'
          '  pass\n'
          'print("went on")\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == status and proc.stdout == '', (proc.returncode, proc.stdout)
  assert proc.stderr == f'error: stopped by {name} while starting\n', proc.stderr


def test_a_bad_submission_path_fails_in_one_line_before_inference(run, tmp_path):
  folder = tmp_path / 'a_folder'
  folder.mkdir()
  proc = _evaluate(run, folder)
  assert proc.returncode == 1 and not proc.stdout.strip()
  assert _last_line(proc.stderr) == (f'error: --submission {folder} is a folder; give a file path '
                                     f'such as {folder / "submission.csv"}'), proc.stderr[-2000:]
  assert sum('error' in l.lower() for l in proc.stderr.splitlines()) == 1, proc.stderr[-2000:]
  assert 'img/s' not in proc.stderr and 'Restor' not in proc.stderr  # Nothing was predicted.


@pytest.mark.parametrize('problem', ['folder', 'no_parent', 'parent_is_file', 'read_only',
                                     'not_a_csv', 'pipe', 'device', 'link', 'slash'])
def test_bad_submission_paths_are_refused_before_the_checkpoint_is_read(run, tmp_path, problem):
  """A device, a pipe and a link had each been replaced by a regular CSV (/dev/null too, as root),
  and `newdir/` had become a file `newdir` (an audit)."""
  target = {'folder': tmp_path, 'no_parent': tmp_path / 'missing' / 'sub.csv',
            'parent_is_file': tmp_path / 'file' / 'sub.csv', 'read_only': tmp_path / 'ro' / 's.csv',
            'not_a_csv': tmp_path / 'labels.npy', 'pipe': tmp_path / 'pipe.csv',
            'device': pathlib.Path(os.devnull), 'link': tmp_path / 'link.csv',
            'slash': f'{tmp_path / "newdir"}/'}
  (tmp_path / 'file').write_text('x')
  np.save(tmp_path / 'labels.npy', np.arange(5))  # An input file named by mistake: kept.
  os.mkfifo(tmp_path / 'pipe.csv')
  (tmp_path / 'elsewhere.csv').write_text('id,label\n')  # A submission CSV, behind a link.
  (tmp_path / 'link.csv').symlink_to(tmp_path / 'elsewhere.csv')
  if problem == 'read_only':
    (tmp_path / 'ro').mkdir(mode=0o555)
    if os.access(tmp_path / 'ro', os.W_OK):  # Root ignores permissions; nobody creates in /proc.
      if not HAS_PROC:
        pytest.skip('as root, only /proc refuses new files, and this OS has no /proc')
      target['read_only'] = pathlib.Path('/proc/s.csv')
  match = {'folder': 'is a folder', 'no_parent': 'does not exist', 'parent_is_file':
           'is not a folder', 'read_only': 'cannot create files',
           'not_a_csv': 'is an existing file that is not a submission CSV',
           'pipe': 'is not a regular file', 'device': 'is not a regular file',
           'link': f'is a symbolic link \\(to {tmp_path / "elsewhere.csv"}\\)',
           'slash': 'ends in a folder separator, and there is no such folder'}[problem]
  # 'no_run' has no checkpoint: reaching the restore would raise CheckpointError instead.
  with pytest.raises(submission.SubmissionError, match=match) as e:
    evaluate.evaluate(_config(), str(tmp_path / 'no_run'), 'latest', ood_dir=str(run / 'ood'),
                      submission_csv=str(target[problem]))
  assert '\n' not in str(e.value) and str(target[problem]) in str(e.value)
  np.testing.assert_array_equal(np.load(tmp_path / 'labels.npy'), np.arange(5))
  assert stat.S_ISFIFO((tmp_path / 'pipe.csv').lstat().st_mode)  # Each kept as it was.
  assert (tmp_path / 'link.csv').is_symlink() and not (tmp_path / 'newdir').exists()


def test_the_default_submission_path_unwritable_is_named_as_the_default(run, tmp_path, monkeypatch):
  """Without --submission, a run folder that takes no files had been told of a `--submission` it
  was never given (an audit): the message names the default and how to write elsewhere."""
  (tmp_path / 'ro_run').mkdir()

  def refused(*args, **kwargs):
    raise PermissionError(13, 'Read-only file system')

  monkeypatch.setattr(submission.workdir.tempfile, 'mkstemp', refused)
  with pytest.raises(submission.SubmissionError, match=(
      rf'^{tmp_path / "ro_run" / "submission_latest.csv"} \(the default --submission: give '
      r'--submission PATH to write it elsewhere\): cannot create files in .*\(Read-only file system\)$')):
    evaluate.evaluate(_config(), str(tmp_path / 'ro_run'), 'latest', ood_dir=str(run / 'ood'))


def test_an_override_that_changes_the_model_is_refused_before_the_checkpoint_is_read(run):
  """Overrides without --config change the run's own config.json (test_trainer's smoke-run test
  follows one); one that changes the model would file another model's numbers as this run's."""
  out = subprocess.run([sys.executable, '-m', 'jax_cifar.evaluate', '--workdir', str(run / 'run'),
                        '--checkpoint', 'latest', '--config.model.num_classes=10',
                        '--config.train.eval_batch_size=16'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  lines = [l for l in out.stderr.splitlines() if l.startswith('error:')]
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-3000:]
  assert lines == [
      f"error: the overridden config differs from the run's {run / 'run'}/config.json in keys "
      "that change its predictions or its validation split: model.num_classes 100 (run) vs 10 "
      '(the overridden config). Override only keys that keep the model as it was trained '
      '(data.dir, data.eval_limit, train.eval_batch_size...)'], out.stderr[-3000:]


def test_a_model_with_more_classes_than_cifar100_is_refused_before_predicting_a_csv(run, tmp_path):
  """model.num_classes=1000 (an ImageNet head kept) had predicted the clean split and a first
  distortion file, then stopped with a traceback from the CSV writer's label check (an audit)."""
  config = _config()
  config.model.num_classes = 1000
  with pytest.raises(errors.ConfigError, match='num_classes=1000 .* 0..99'):
    evaluate.evaluate(config, str(tmp_path / 'no_run'), 'latest', ood_dir=str(run / 'ood'))


def test_an_existing_submission_csv_or_an_empty_file_may_be_replaced(tmp_path, capsys):
  for text in ('id,label\ndistortion00_1_0,3\n', '\ufeffid,label\r\n', ''):  # Excel's BOM; empty.
    path = tmp_path / 'sub.csv'
    path.write_text(text, encoding='utf-8')
    assert submission.check_output_path(path) == path
    # evaluate says so first (a CSV had been replaced without a word: a review); not an empty file.
    output_files.check_submission_path(path, default=False)
    note = (f'note: {path} holds a submission CSV: it is replaced once this evaluation has '
            'predicted every file\n')
    assert capsys.readouterr().err == (note if text else '')


def test_stale_part_files_are_removed_but_a_live_writers_file_is_kept(tmp_path):
  path = tmp_path / 'sub.csv'
  stale = tmp_path / '.sub.csv.abc123.part'
  stale.write_text('id,label\ndistortion00_1_0,3\n')
  other = tmp_path / '.other.csv.abc123.part'  # Another CSV's temp file: not ours to delete.
  other.write_text('x')
  with submission.SubmissionWriter(path, 10) as live:
    assert not stale.exists() and other.exists()
    assert submission.remove_stale_parts(path) == []  # The live writer's file is locked.
    assert _parts(tmp_path) == sorted([live._tmp, other])  # pylint: disable=protected-access
    for d in range(ood.NUM_DISTORTIONS):
      live.add(d, np.zeros(10, np.int64))
  assert _parts(tmp_path) == [other] and path.exists()


def _copy_with_params(run, workdir, change) -> int:
  """The run's latest step, its parameters changed leaf by leaf, saved as the only checkpoint of
  a copy of the run in `workdir`; its step."""
  from jax_cifar import checkpoints, parallel  # pylint: disable=import-outside-toplevel
  from jax_cifar import state as state_lib  # pylint: disable=import-outside-toplevel
  shutil.copytree(run / 'run', workdir, ignore=shutil.ignore_patterns('eval_*'))
  state, _, step = state_lib.restore(_config(), str(workdir), 'latest', parallel.make_mesh())
  state = state.replace(params=jax.tree.map(change, state.params))
  shutil.rmtree(workdir / 'checkpoints')
  ckpts = checkpoints.Checkpoints(workdir)
  ckpts.save_latest(state, step)
  ckpts.close()
  return step


def test_a_checkpoint_of_nans_is_refused_before_anything_is_predicted(run, tmp_path):
  """A checkpoint whose weights hold NaN had been evaluated with exit status 0: class 0 for every
  image of the CSV and NaN in eval_*.json (an audit). Now one line names the values; a CSV already
  there is kept."""
  workdir = tmp_path / 'run'
  step = _copy_with_params(run, workdir, lambda v: v * float('nan'))
  csv = tmp_path / 'sub.csv'
  csv.write_text('id,label\n')
  with pytest.raises(errors.UserError, match=rf'^checkpoint step {step} \(raw weights\): '
                     r'non-finite values in the checkpoint: params\[.*'):
    evaluate.evaluate(_config(), str(workdir), 'latest', ood_dir=str(run / 'ood'),
                      submission_csv=str(csv))
  assert csv.read_text() == 'id,label\n'
  assert not list(workdir.glob('eval_*.json'))


def test_measuring_ood_memory_on_a_run_leaves_the_runs_files_as_they_were(run):
  """scripts/measure_ood.py rss evaluates random images: run in the run itself, it had replaced
  the run's eval_*.json and confusion figure with their numbers (an audit)."""
  workdir = run / 'run'
  (workdir / 'eval_latest.json').write_text('{"checkpoint": "latest", "ood_accuracy": 0.5}')
  before = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()}
  out = subprocess.run([sys.executable, 'scripts/measure_ood.py', 'rss', '--workdir', str(workdir),
                        '--config', str(run / 'config.py'), '--checkpoint', 'latest', '--n', '5'],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout)
  assert result['csv_check'].startswith('OK: ')  # It measured a real evaluation ...
  assert result['images'] == 19 * 5  # (Its rate is per image of all 19 files.)
  assert result['evaluate_last_line']['checkpoint'] == 'latest', result['evaluate_last_line']
  assert {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()} == before  # ... elsewhere.
  refused = subprocess.run([sys.executable, 'scripts/measure_ood.py', 'rss', '--workdir',
                            str(workdir), '--n', '7'], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
  assert refused.returncode == 1 and 'positive multiple of 5' in refused.stderr, refused.stderr


def test_a_second_signal_stops_at_once_with_the_first_ones_name(monkeypatch):
  """The first SIGTERM/SIGINT is only noted (the loop stops at its next check); a second one
  raises at once, as the first signal's Interrupted (a hung batch is not waited for), through the
  `except Exception` of the code it interrupts (a restore had called it a damaged checkpoint:
  a review); with several processes only the collective check raises (one process raising alone
  would leave the others in a collective)."""
  flag = interrupt.StopFlag()
  previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    flag.install()
    os.kill(os.getpid(), signal.SIGINT)
    assert flag.name == 'SIGINT'
    with pytest.raises(interrupt.Interrupted) as stopped:
      try:
        os.kill(os.getpid(), signal.SIGTERM)
      except Exception:  # pylint: disable=broad-except  (as step_folders' restore does)
        pass
    assert stopped.value.name == 'SIGINT' and stopped.value.exit_code == 130
    flag.several = True  # As install() finds with several processes.
    os.kill(os.getpid(), signal.SIGTERM)  # Noted; the next collective check stops every process.
    assert flag.name == 'SIGINT'
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def test_one_distributed_process_is_one_process_for_a_second_signal(monkeypatch):
  """launch_local --num_processes 1 initialises jax.distributed with one process: its second
  signal stops at once, as README says of one process (the diff review)."""
  previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  monkeypatch.setattr(interrupt.jax.distributed, 'is_initialized', lambda: True)
  try:
    for count, several in ((1, False), (2, True)):
      monkeypatch.setattr(interrupt.jax, 'process_count', lambda count=count: count)
      flag = interrupt.StopFlag()
      flag.install()
      assert flag.several is several
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def test_a_second_signal_while_jax_holds_its_backend_lock_still_stops_at_once():
  """The handler had asked jax.process_count(), which takes the lock under which JAX starts its
  devices: a second signal while the main thread held it (a GPU starting) waited on it for good
  (the diff review). A fresh process, killed by the timeout if it hangs."""
  code = '''
import os, signal
from jax._src import xla_bridge
from jax_cifar import interrupt
interrupt.FLAG.install()
os.kill(os.getpid(), signal.SIGTERM)
try:
  with xla_bridge._backend_lock:  # As while JAX starts its devices.
    os.kill(os.getpid(), signal.SIGINT)
except interrupt.Interrupted as e:
  print('STOPPED', e.name)
'''
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.stdout.strip() == 'STOPPED SIGTERM', out.stderr[-2000:]


def test_the_test_hook_fires_only_at_its_event_index_and_process(monkeypatch):
  """JAX_CIFAR_TEST_SIGNAL=EVENT:INDEX:SIGNAL[:PROCESS]: the fourth field picks the JAX process
  (this one is process 0). A reversed process check had passed the suite's one-process tests (a
  mutation audit); the multi-process tests place their faults with it."""
  got = []
  previous = signal.signal(signal.SIGUSR1, lambda signum, _: got.append(signum))
  try:
    for spec, fires in (('ood_file:3:SIGUSR1', True), ('ood_file:3:SIGUSR1:0', True),
                        ('ood_file:3:SIGUSR1:1', False), ('ood_file:4:SIGUSR1', False),
                        ('train_step:3:SIGUSR1:0', False)):
      monkeypatch.setenv(interrupt.TEST_HOOK_VAR, spec)
      got.clear()
      interrupt.at_event('ood_file', 3)
      for _ in range(100):  # The handler runs between bytecodes of the main thread.
        pass
      assert got == ([signal.SIGUSR1] if fires else []), spec
  finally:
    signal.signal(signal.SIGUSR1, previous)


def test_with_several_processes_only_a_collective_check_acts_on_a_signal(monkeypatch):
  """With several processes a check that not every process makes at the same point must neither
  raise nor call the collective (a process alone in an all-gather waits forever); the collective
  one raises on every process, the name of the signal on the one that got it (a mutation audit).
  The all-gather is replaced by what it returns for these flags."""
  from jax_cifar import parallel  # pylint: disable=import-outside-toplevel
  gathered = []
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(parallel, 'any_process', lambda v: gathered.append(v) or True)
  flag = interrupt.StopFlag()
  flag.name, flag.signum = 'SIGINT', signal.SIGINT
  flag.check()
  assert gathered == []
  with pytest.raises(interrupt.Interrupted) as stopped:
    flag.check(collective=True)
  assert (stopped.value.name, stopped.value.exit_code, gathered) == ('SIGINT', 130, [True])
  with pytest.raises(interrupt.Interrupted) as stopped:  # No signal here, one elsewhere.
    interrupt.StopFlag().check(collective=True)
  assert (stopped.value.name, stopped.value.exit_code) == ('a signal to another process', 143)


@pytest.mark.parametrize('limit, unwritten', [(512, 'eval_latest.json'),
                                              (32 * 1024, 'confusion_latest.png')])
def test_a_full_disk_while_writing_the_results_still_prints_their_numbers(run, tmp_path, limit,
                                                                          unwritten):
  """A full disk at the eval JSON had ended in its error line alone: numbers computed for an hour
  (the 950,000-image set) were lost, to be computed again (a resource review)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run / 'run', workdir)
  for old in [*workdir.glob('eval_latest*'), *workdir.glob('confusion_latest*')]:
    old.unlink()
  code = ('import resource, runpy, signal, sys\nimport jax\n'
          # The compilation cache is read, never written: an entry cut at the limit would stay.
          "jax.config.update('jax_persistent_cache_min_entry_size_bytes', 2**62)\n"
          'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
          f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n'
          "sys.argv = ['jax_cifar.evaluate'] + sys.argv[1:]\n"
          "runpy.run_module('jax_cifar.evaluate', run_name='__main__')\n")
  out = subprocess.run([sys.executable, '-c', code, '--config', str(run / 'config.py'),
                        '--workdir', str(workdir), '--checkpoint', 'latest'], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 1, out.stderr[-3000:]
  numbers = json.loads(out.stdout.strip().splitlines()[-1])
  assert 0 <= numbers['test_accuracy'] <= 1 and numbers['step'] == 1, numbers
  lines = [l for l in out.stderr.splitlines() if l.startswith(('note: the numbers', 'error: '))]
  assert lines[-2:] == [
      'note: the numbers were computed (the line above) but could not all be written:',
      f'error: {workdir / unwritten}: {TOO_LARGE}'], out.stderr[-3000:]


def test_finite_weights_whose_outputs_overflow_are_refused_not_scored_as_class_0(run, tmp_path):
  """Weights that are all finite but whose forward pass overflows to NaN: argmax had read each row
  of NaNs as class 0, scored 1%, written a submission of class 0 throughout, and exited 0 (a
  numerics review). Both prediction paths (log-probabilities, and labels alone as the submission
  uses) now refuse, and a CSV already there is kept."""
  from jax_cifar.evaluation import inference  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'run'
  # Each leaf scaled to a largest value of 3e38 (float32 ends at 3.4e38): finite, and overflowing.
  _copy_with_params(run, workdir, lambda v: v / max(float(abs(v).max()), 1e-30) * 3e38)
  csv = tmp_path / 'sub.csv'
  csv.write_text('id,label\n')
  refused = r"^test: the model's outputs are not finite \(NaN or inf\) for \d+ of \d+ images, so "
  with pytest.raises(errors.UserError, match=refused):
    evaluate.evaluate(_config(), str(workdir), 'latest', ood_dir=str(run / 'ood'),
                      submission_csv=str(csv))
  assert csv.read_text() == 'id,label\n'
  assert not list(workdir.glob('eval_*.json'))
  predictor, _ = inference.load_predictor(_config(), str(workdir), 'latest')
  images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), np.uint8)
  with pytest.raises(errors.UserError, match=r"^OOD: the model's outputs are not finite .* for 10 "
                                             r'of 10 images'):
    predictor.run(images, 'OOD', labels_only=True)


def test_one_infinite_output_in_a_row_is_refused_too():
  """A row with one -inf log-probability (an overflowed logit) names no trustworthy class either:
  refused in both paths, as an all-NaN row is (a mutation audit: `.any` for `.all` had passed)."""
  from jax_cifar.evaluation import inference  # pylint: disable=import-outside-toplevel
  check = inference._check_finite_outputs  # pylint: disable=protected-access
  log_p = np.log(np.array([[0.2, 0.3, 0.5], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], np.float32))
  log_p[1, 0] = -np.inf
  with pytest.raises(errors.UserError, match=r"^t: the model's outputs are not finite \(NaN or "
                                             r'inf\) for 1 of 3 images'):
    check(log_p, False, 't')
  check(log_p[[0, 2]], False, 't')  # Finite rows pass.
  labels = np.asarray(inference.labels_of(log_p))  # The submission's path: -1 marks the row.
  assert labels.tolist() == [2, -1, 2]
  with pytest.raises(errors.UserError, match=r'^t: .* for 1 of 3 images'):
    check(labels, True, 't')
