"""A run folder may be shared (a lab's disk, a colleague's copy): a symbolic link planted in it
where a run keeps a file of its own never makes jax-cifar write to, open up or delete the file it
leads to (a security review found each of these). The run refuses the link, naming it, or
replaces the link with a file of its own."""

import json
import os
import pathlib
import stat
import threading

import numpy as np
import pytest

from jax_cifar import checkpoints, own_files, step_folders, tracking
from jax_cifar import workdir as workdir_lib
from jax_cifar.configs import default
from jax_cifar.evaluation import eval_json, kept_predictions

VICTIM_TEXT = 'a file of someone else\n'


@pytest.fixture
def victim(tmp_path) -> pathlib.Path:
  """A file outside the run folder, owner-only, that a planted link leads to."""
  path = tmp_path / 'elsewhere' / 'victim.txt'
  path.parent.mkdir()
  path.write_text(VICTIM_TEXT)
  path.chmod(0o600)
  return path


def _untouched(victim: pathlib.Path) -> bool:
  return victim.read_text() == VICTIM_TEXT and stat.S_IMODE(victim.stat().st_mode) == 0o600


def _run(tmp_path) -> pathlib.Path:
  run = tmp_path / 'run'
  run.mkdir()
  return run


@pytest.mark.parametrize('name', ['.lock', '.partial_best.lock'])
def test_a_linked_lock_file_is_refused_and_its_target_left_alone(tmp_path, victim, name):
  """The run's lock had truncated the file a `.lock` link led to and written its pid there."""
  run = _run(tmp_path)
  (run / name).symlink_to(victim)
  with pytest.raises(workdir_lib.WorkdirError, match=(
      rf'^{run / name} is a symbolic link \(to {victim}\); jax-cifar writes only files of its own '
      r'there: remove the link$')):
    own_files.Lock(run, name).try_acquire()
  assert _untouched(victim)
  (run / name).unlink()
  os.mkfifo(run / name)
  with pytest.raises(workdir_lib.WorkdirError, match='is not a regular file: move it away'):
    own_files.Lock(run, name).try_acquire()


def test_a_linked_eval_lock_neither_opens_up_its_target_nor_loses_the_numbers(tmp_path, victim,
                                                                              caplog):
  """evaluate's .eval.lock had been made writable by everyone through a planted link. The
  numbers, written after all of an evaluation's inference, are still written (under the folder's
  own lock): a refusal there had lost them (the diff review)."""
  run = _run(tmp_path)
  (run / '.eval.lock').symlink_to(victim)
  with caplog.at_level('WARNING'):
    eval_json.write(run / 'eval_best.json', {'step': 1, 'test_accuracy': 0.5})
  assert _untouched(victim) and json.loads((run / 'eval_best.json').read_text()) == {
      'step': 1, 'test_accuracy': 0.5}
  assert any(r.getMessage().endswith('remove the link; locking the folder instead.')
             for r in caplog.records), caplog.records
  (run / '.eval.lock').unlink()
  os.link(victim, run / '.eval.lock')  # A hard link: locked, but its mode is not changed.
  eval_json.write(run / 'eval_best.json', {'step': 2, 'test_accuracy': 0.5})
  assert _untouched(victim) and json.loads((run / 'eval_best.json').read_text())['step'] == 2


def test_a_fifo_planted_as_a_lock_file_is_refused_at_once_not_waited_on(tmp_path):
  """A read-only open of a FIFO (evaluate's fallback where it may not write the lock file) had
  waited for a writer for good, after all the evaluation's inference (the diff review)."""
  os.mkfifo(tmp_path / '.eval.lock')
  done = []

  def open_it():
    try:
      own_files.open_own_file(tmp_path / '.eval.lock', os.O_RDONLY)
    except workdir_lib.WorkdirError as e:
      done.append(str(e))

  opener = threading.Thread(target=open_it, daemon=True)
  opener.start()
  opener.join(timeout=30)
  assert done == [f'{tmp_path / ".eval.lock"} is not a regular file: move it away (a launch '
                  'makes it anew)'], 'the open waited for a writer'


def test_where_the_lock_file_cannot_be_written_a_planted_fifo_is_still_not_waited_on(
    tmp_path, monkeypatch):
  """evaluate's read-only fallback (a lock file it may not write: another user's) goes through the
  same refusal of links and FIFOs: through os.open it had waited for a writer for good, after all
  the evaluation's inference (a mutation audit: the tests run as root, where the fallback never
  ran). Here the read-write open is refused as it is for another user."""
  os.mkfifo(tmp_path / '.eval.lock')
  real = own_files.open_own_file

  def as_another_user(path, flags, *args):
    if flags & os.O_RDWR:
      raise PermissionError(13, 'Permission denied', str(path))
    return real(path, flags, *args)

  monkeypatch.setattr(own_files, 'open_own_file', as_another_user)
  done = []
  writer = threading.Thread(target=lambda: done.append(eval_json.write(
      tmp_path / 'eval_best.json', {'checkpoint': 'best', 'step': 1, 'weights': 'raw'})),
                            daemon=True)
  writer.start()
  writer.join(timeout=30)
  if writer.is_alive():  # (Let the waiting open return, so the thread ends.)
    os.close(os.open(tmp_path / '.eval.lock', os.O_WRONLY | os.O_NONBLOCK))
  assert done == [None], 'the read-only open waited for a writer'
  assert json.loads((tmp_path / 'eval_best.json').read_text())['step'] == 1


def test_linked_run_records_are_refused_or_replaced_never_written_through(tmp_path, victim):
  """launches.jsonl is appended to, so a link there is refused; config.json and metrics.jsonl are
  written whole through temps that had had fixed names (config.json.tmp, metrics.tmp), written
  through links planted under those names."""
  run = _run(tmp_path)
  (run / workdir_lib.LAUNCHES_FILE).symlink_to(victim)
  with pytest.raises(workdir_lib.WorkdirError, match=r'launches\.jsonl is a symbolic link'):
    workdir_lib.record_launch(run, {'a': 1}, 0, {})
  assert _untouched(victim)
  (run / workdir_lib.LAUNCHES_FILE).unlink()
  (run / 'config.json.tmp').symlink_to(victim)
  (run / workdir_lib.CONFIG_FILE).symlink_to(victim)
  workdir_lib.record_launch(run, {'a': 1}, 0, {})
  assert _untouched(victim) and not (run / workdir_lib.CONFIG_FILE).is_symlink()
  assert workdir_lib.previous_config(run) == {'a': 1}

  (run / 'metrics.tmp').symlink_to(victim)
  # A line that is no row makes the resume keep the file as it was beside it: a link planted
  # where that copy goes, leading nowhere, had been written through (the diff review).
  (run / tracking.METRICS_FILE).write_text('{"step": 1, "train_loss": 2.0}\n5\n{"step": 2}\n')
  (run / 'metrics.damaged.jsonl').symlink_to(tmp_path / 'elsewhere' / 'authorized_keys')
  config = default.get_config()
  config.wandb.mode = 'disabled'
  writer = tracking.MetricsWriter(run, config, resume_step=1)
  writer.write(2, {'train_loss': 1.5})
  writer.close()
  assert _untouched(victim) and not (tmp_path / 'elsewhere' / 'authorized_keys').exists()
  assert (run / 'metrics.damaged.1.jsonl').read_text().startswith('{"step": 1, "train_loss"')
  assert [r['step'] for r in tracking.read_metrics(run)] == [1, 2]
  assert not (run / 'metrics.tmp').exists() and not (run / 'metrics.tmp').is_symlink()


def test_temps_that_older_code_left_are_removed(tmp_path):
  """config.json.tmp and metrics.tmp (the fixed temp names before) are not used any more, and
  one a killed writer left had stayed for good (the diff review)."""
  run = _run(tmp_path)
  (run / 'config.json.tmp').write_text('{"half": ')
  (run / 'metrics.tmp').write_text('{"step": 1')
  workdir_lib.record_launch(run, {'a': 1}, 0, {})
  config = default.get_config()
  config.wandb.mode = 'disabled'
  tracking.MetricsWriter(run, config, resume_step=0).close()
  assert sorted(p.name for p in run.iterdir()) == ['config.json', 'launches.jsonl',
                                                   'metrics.jsonl']


def test_a_linked_wandb_run_id_is_replaced_not_written_through(tmp_path, victim, monkeypatch):
  run = _run(tmp_path)
  for var in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
    monkeypatch.setenv(var, str(tmp_path / 'wandb_home'))
  monkeypatch.delenv('WANDB_MODE', raising=False)
  (run / 'wandb_run_id').symlink_to(victim)
  config = default.get_config()
  config.wandb.mode = 'offline'
  writer = tracking.MetricsWriter(run, config, resume_step=0)
  try:
    run_id = writer.wandb_run.id
  finally:
    writer.close()
  assert _untouched(victim) and not (run / 'wandb_run_id').is_symlink()
  assert (run / 'wandb_run_id').read_text() == run_id + '\n'


@pytest.mark.parametrize('which', ['latest', 'best'])
def test_a_linked_step_folder_is_refused_before_orbax_can_delete_what_it_leads_to(tmp_path,
                                                                                  which):
  """orbax deletes a step the run no longer keeps by walking into it: through a planted link
  (step 1 of checkpoints/latest) it had deleted another folder's files. Any step number (a
  mutation audit: a check of one-digit names had passed)."""
  for step in ('1', '1200'):
    (tmp_path / step).mkdir()
    run = _run(tmp_path / step)
    elsewhere = tmp_path / step / 'elsewhere'
    (elsewhere / 'sub').mkdir(parents=True)
    (elsewhere / 'sub' / 'b.txt').write_text('kept')
    (run / 'checkpoints' / which).mkdir(parents=True)
    (run / 'checkpoints' / which / step).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(checkpoints.CheckpointError, match=(
        rf'^{run / "checkpoints" / which / step} is a symbolic link \(to {elsewhere}\); a run '
        r'keeps its steps as folders of its own, and deletes old ones: remove the link')):
      checkpoints.Checkpoints(run)
    assert (elsewhere / 'sub' / 'b.txt').read_text() == 'kept'


def test_the_checkpoint_folders_write_probe_never_writes_through_a_planted_link(tmp_path,
                                                                                victim):
  """The start-up check that checkpoints can be written makes a probe file of a name no one can
  plant beforehand (a fixed .write_probe_<pid> had been written through a link: a mutation audit
  found nothing pinning that)."""
  folder = _run(tmp_path) / 'checkpoints'
  folder.mkdir()
  planted = folder / f'.write_probe_{os.getpid()}'
  planted.symlink_to(victim)
  checkpoints.check_writable(folder)
  assert _untouched(victim) and planted.is_symlink()
  assert sorted(p.name for p in folder.iterdir()) == [planted.name]  # The probe is gone.


def test_a_linked_folder_of_kept_predictions_keeps_nothing_there(tmp_path, capsys):
  """evaluate's finished OOD files had been written where a planted partial_<tag> link led."""
  run = _run(tmp_path)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  (run / 'partial_best').symlink_to(elsewhere, target_is_directory=True)
  kept = kept_predictions.KeptPredictions(run / 'partial_best', {'a': 1})
  assert capsys.readouterr().err == (
      f'note: {run / "partial_best"} is a symbolic link (to {elsewhere}): this evaluation keeps '
      'no finished files; remove the link to keep them\n')
  kept.keep('ood_distortion00', np.arange(5, dtype=np.int32))
  kept.clear()
  assert not list(elsewhere.iterdir()) and (run / 'partial_best').is_symlink()
  # A linked lock: the same note, not an error from process 0 alone (the others would have gone
  # on into their collectives: the diff review).
  (run / '.partial_c.lock').symlink_to(elsewhere / 'lock')
  kept = kept_predictions.KeptPredictions(run / 'partial_c', {'a': 1})
  assert capsys.readouterr().err == (
      f'note: {run / "partial_c"}: {run / ".partial_c.lock"} is a symbolic link (to '
      f'{elsewhere / "lock"}); jax-cifar writes only files of its own there: remove the link; this '
      'evaluation keeps no finished files\n')
  kept.keep('ood_distortion00', np.arange(5, dtype=np.int32))
  assert not (run / 'partial_c').exists() and not list(elsewhere.iterdir())


def test_the_runs_own_records_are_readable_as_the_umask_allows_and_odd_digits_are_no_steps(
    tmp_path):
  """launches.jsonl is opened by open_own_file: 0644 less the umask, as a plain open() gave, so a
  colleague reads a shared run's launches (a mutation audit: 0600 had passed). A folder named '²'
  (a digit to str.isdigit, not to int()) is no committed step when a failed save names the
  others (a mutation audit)."""
  run = _run(tmp_path)
  old = os.umask(0o022)
  try:
    workdir_lib.record_launch(run, {'seed': 0}, 0, {})
  finally:
    os.umask(old)
  assert stat.S_IMODE((run / workdir_lib.LAUNCHES_FILE).stat().st_mode) == 0o644
  latest = run / 'checkpoints' / 'latest'
  (latest / '²').mkdir(parents=True)
  assert not step_folders.has_other_step(latest, 3)
  (latest / '2').mkdir()
  assert step_folders.has_other_step(latest, 3)
