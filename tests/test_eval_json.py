"""eval_<tag>.json: merged per checkpoint (what an earlier evaluation of the same one computed is
kept; another checkpoint's file is set aside), under a lock, never half written; and the figures
written beside it. Without a model (evaluate's arithmetic: test_eval_results.py)."""

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import threading

import pytest

from jax_cifar import atomic_folder
from jax_cifar.evaluation import eval_json, figures


def test_a_full_disk_while_writing_eval_json_keeps_the_old_file_and_leaves_no_temp(
    tmp_path, monkeypatch):
  """The write fails half way (as on a full disk): the error names eval_<tag>.json, the earlier
  file is untouched, and no hidden temp file is left (one had been, named in the error)."""
  path = tmp_path / 'eval_best.json'
  before = {'checkpoint': 'best', 'step': 4, 'weights': 'raw', 'test_accuracy': 0.5}
  path.write_text(json.dumps(before))
  real = pathlib.Path.write_text

  def half_then_full(self, text, *args, **kwargs):
    real(self, text[:len(text) // 2], *args, **kwargs)
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(pathlib.Path, 'write_text', half_then_full)
  with pytest.raises(OSError) as e:
    eval_json.write(path, {**before, 'test_accuracy': 0.6})
  assert (e.value.errno, e.value.filename) == (28, str(path))
  monkeypatch.undo()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.eval.lock', 'eval_best.json']
  assert json.loads(path.read_text()) == before


def test_eval_json_of_a_step_named_another_way_is_the_same_checkpoint(tmp_path):
  """A file written for `run/checkpoints/latest/2` (relative, as older versions recorded it)
  merges with an evaluation of the same step named by its absolute folder; best/2 and latest/3
  are other checkpoints, set aside."""
  path = tmp_path / 'eval_step2.json'
  old = {'checkpoint': 'run/checkpoints/latest/2', 'step': 2, 'weights': 'raw',
         'ood_accuracy': 0.25}
  path.write_text(json.dumps(old))
  same = {'checkpoint': str(tmp_path / 'run/checkpoints/latest/2'), 'step': 2, 'weights': 'raw',
          'test_accuracy': 0.5}
  eval_json.write(path, same)
  assert json.loads(path.read_text()) == {**old, **same}
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.eval.lock', 'eval_step2.json']
  eval_json.write(path, {**same, 'checkpoint': str(tmp_path / 'run/checkpoints/best/2')})
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.eval.lock', 'eval_step2.json',
                                                        'eval_step2.step2.json']
  assert 'ood_accuracy' not in json.loads(path.read_text())


def test_a_step_named_through_a_link_is_the_same_checkpoint(tmp_path):
  """macOS's /tmp is a link to /private/tmp, and cluster homes are often links: the same step
  folder named both ways had been "another checkpoint", its numbers set aside (a portability
  review)."""
  (tmp_path / 'real' / 'run' / 'checkpoints' / 'latest' / '4').mkdir(parents=True)
  (tmp_path / 'link').symlink_to(tmp_path / 'real')
  path = tmp_path / 'eval_step4.json'
  base = {'step': 4, 'weights': 'raw'}
  path.write_text(json.dumps({**base, 'checkpoint': str(tmp_path / 'link/run/checkpoints/latest/4'),
                              'ood_accuracy': 0.25}))
  eval_json.write(path, {**base, 'checkpoint': str(tmp_path / 'real/run/checkpoints/latest/4'),
                         'test_accuracy': 0.5})
  assert json.loads(path.read_text())['ood_accuracy'] == 0.25
  assert not list(tmp_path.glob('eval_step4.step*'))


def test_another_runs_step_of_the_same_number_is_another_checkpoint(tmp_path, caplog):
  """evaluate takes another run's step folder when the configs match, and tags it step<N> in this
  run's folder: its numbers had merged into this run's own eval_step300.json (a review)."""
  path = tmp_path / 'eval_step300.json'
  mine = {'checkpoint': str(tmp_path / 'run/checkpoints/latest/300'), 'step': 300,
          'weights': 'raw', 'ood_accuracy': 0.25}
  path.write_text(json.dumps(mine))
  theirs = {**mine, 'checkpoint': str(tmp_path / 'other/checkpoints/latest/300'),
            'test_accuracy': 0.5}
  del theirs['ood_accuracy']
  eval_json.write(path, theirs)
  assert json.loads(path.read_text()) == theirs
  assert json.loads((tmp_path / 'eval_step300.step300.json').read_text()) == mine
  assert f"another checkpoint ({mine['checkpoint']}, step 300)" in caplog.text


def test_another_checkpoints_figures_are_set_aside_with_its_numbers(tmp_path, caplog):
  """When `best` moved on, the earlier step's numbers were kept as eval_best.step<N>.json but its
  cifar100c_best.png stayed, titled "(best)", beside numbers that had none (a figure review). Its
  figures are renamed as its numbers are, also when that name is taken; another tag's are not."""
  path = tmp_path / 'eval_best.json'
  for step in (15, 15, 30):
    path.write_text(json.dumps({'checkpoint': 'best', 'step': step, 'weights': 'raw'}))
    for name in ('confusion_best', 'cifar100c_best', 'ood_best', 'ood_latest'):
      (tmp_path / f'{name}.png').write_text(f'{name} {step}')
    eval_json.write(path, {'checkpoint': 'best', 'step': step + 5, 'weights': 'raw'})
  files = {p.name: p.read_text() for p in tmp_path.iterdir() if p.suffix == '.png'}
  assert files == {'confusion_best.step15.png': 'confusion_best 15',
                   'cifar100c_best.step15.png': 'cifar100c_best 15',
                   'ood_best.step15.png': 'ood_best 15',
                   'confusion_best.step15.1.png': 'confusion_best 15',
                   'cifar100c_best.step15.1.png': 'cifar100c_best 15',
                   'ood_best.step15.1.png': 'ood_best 15',
                   'confusion_best.step30.png': 'confusion_best 30',
                   'cifar100c_best.step30.png': 'cifar100c_best 30',
                   'ood_best.step30.png': 'ood_best 30', 'ood_latest.png': 'ood_latest 30'}
  assert {p.name for p in tmp_path.glob('eval_best.step*.json')} == {
      'eval_best.step15.json', 'eval_best.step15.1.json', 'eval_best.step30.json'}
  assert ('kept as eval_best.step30.json, confusion_best.step30.png, cifar100c_best.step30.png, '
          'ood_best.step30.png') in caplog.text
  # The same checkpoint again: its figures stay (the evaluation redraws the ones it makes).
  eval_json.write(path, {'checkpoint': 'best', 'step': 35, 'weights': 'raw'})
  (tmp_path / 'ood_best.png').write_text('current')
  eval_json.write(path, {'checkpoint': 'best', 'step': 35, 'weights': 'raw', 'x': 1})
  assert (tmp_path / 'ood_best.png').read_text() == 'current'


def test_another_checkpoints_default_submission_is_set_aside_with_its_numbers(tmp_path, caplog):
  """submission_latest.csv of step 15 had stayed under the current name when a plain evaluation of
  step 18 set step 15's numbers aside, and the set-aside numbers named it, to be overwritten by the
  next --ood_dir (a longevity review). It is renamed with them and named so; a CSV this evaluation
  wrote anew (the same path in its result) and one given elsewhere (--submission) stay."""
  path, csv = tmp_path / 'eval_latest.json', tmp_path / 'submission_latest.csv'
  elsewhere = tmp_path / 'mine.csv'
  for name in (csv, elsewhere):
    name.write_text('id,label\n')
  base = {'checkpoint': 'latest', 'weights': 'raw'}
  path.write_text(json.dumps({**base, 'step': 15, 'submission': str(csv)}))
  eval_json.write(path, {**base, 'step': 18})
  aside = tmp_path / 'submission_latest.step15.csv'
  assert not csv.exists() and aside.read_text() == 'id,label\n'
  kept = json.loads((tmp_path / 'eval_latest.step15.json').read_text())
  assert kept == {**base, 'step': 15, 'submission': str(aside)}
  assert 'kept as eval_latest.step15.json, submission_latest.step15.csv' in caplog.text
  csv.write_text('id,label\nnew\n')  # Written by this evaluation of step 21 itself.
  path.write_text(json.dumps({**base, 'step': 18, 'submission': str(csv)}))  # (Step 18's, before.)
  eval_json.write(path, {**base, 'step': 21, 'submission': str(csv)})
  assert csv.read_text() == 'id,label\nnew\n'
  assert not (tmp_path / 'submission_latest.step18.csv').exists()
  path.write_text(json.dumps({**base, 'step': 21, 'submission': str(elsewhere)}))
  eval_json.write(path, {**base, 'step': 24})
  assert elsewhere.exists() and csv.exists()


def test_an_older_versions_eval_json_without_weights_is_of_the_raw_weights(tmp_path):
  """Versions before evaluate --weights wrote no 'weights' key; the same checkpoint evaluated
  again had set their numbers aside as "another checkpoint's" (an upgrade audit)."""
  path = tmp_path / 'eval_best.json'
  old = {'checkpoint': 'best', 'step': 40, 'ood_accuracy': 0.25}
  path.write_text(json.dumps(old))
  eval_json.write(path, {'checkpoint': 'best', 'step': 40, 'weights': 'raw', 'test_accuracy': 0.5})
  assert json.loads(path.read_text()) == {**old, 'weights': 'raw', 'test_accuracy': 0.5}
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.eval.lock', 'eval_best.json']
  eval_json.write(path, {'checkpoint': 'best', 'step': 40, 'weights': 'ema', 'test_accuracy': 0.6})
  assert 'eval_best.step40.json' in [p.name for p in tmp_path.iterdir()]  # The EMA's: another.


def test_evaluations_finishing_together_take_turns_on_the_eval_lock_file(tmp_path):
  """The lock had been an flock on the workdir folder, which NFS keeps within one host (a
  cluster audit); WORKDIR/.eval.lock, a regular file, is locked through the server (NFS itself
  is not tested here: this shows the lock taken is that file's, from another open file)."""
  path = tmp_path / 'eval_best.json'
  holder = os.open(tmp_path / '.eval.lock', os.O_RDWR | os.O_CREAT)
  fcntl.flock(holder, fcntl.LOCK_EX)
  writer = threading.Thread(target=eval_json.write, args=(path, {
      'checkpoint': 'best', 'step': 1, 'weights': 'raw', 'test_accuracy': 0.5}))
  try:
    writer.start()
    writer.join(timeout=1.0)
    assert writer.is_alive() and not path.exists()  # Waiting for the lock.
  finally:
    os.close(holder)  # Releases it.
  writer.join(timeout=30)
  assert not writer.is_alive() and json.loads(path.read_text())['test_accuracy'] == 0.5


def test_the_figures_are_drawn_under_the_lock_of_the_numbers_they_go_with(tmp_path):
  """Two evaluations of one tag had left the numbers of one beside the figure of the other: the
  figures were drawn after the JSON's lock was released (a concurrency review)."""
  path, seen = tmp_path / 'eval_best.json', []

  def draw():
    other = os.open(tmp_path / '.eval.lock', os.O_RDWR)
    try:
      with pytest.raises(BlockingIOError):  # Another evaluation cannot take the lock now ...
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
      os.close(other)
    seen.append(json.loads(path.read_text())['step'])  # ... and the JSON is this one's.
  eval_json.write(path, {'checkpoint': 'best', 'step': 7, 'weights': 'raw'}, then=draw)
  assert seen == [7]
  other = os.open(tmp_path / '.eval.lock', os.O_RDWR)
  fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Released once the figures are drawn.
  os.close(other)


def test_a_lock_file_left_by_another_user_does_not_fail_the_evaluation(tmp_path, monkeypatch):
  """In a folder shared by a group, a colleague's 644 .eval.lock had made eval_json.write fail
  with EACCES after all the inference (a review). Opening it for writing is refused here as the
  kernel refuses it to another user (root, who runs CI, is never refused); and a lock file this
  process makes is writable by the others."""
  path = tmp_path / 'eval_best.json'
  (tmp_path / '.eval.lock').touch(mode=0o644)
  real_open = os.open

  def as_another_user(file, flags, *args, **kwargs):
    if str(file).endswith('.eval.lock') and flags & (os.O_RDWR | os.O_WRONLY):
      raise PermissionError(13, 'Permission denied', str(file))
    return real_open(file, flags, *args, **kwargs)

  monkeypatch.setattr(os, 'open', as_another_user)
  eval_json.write(path, {'checkpoint': 'best', 'step': 1, 'weights': 'raw'})
  monkeypatch.undo()
  assert json.loads(path.read_text())['step'] == 1
  (tmp_path / '.eval.lock').unlink()
  eval_json.write(path, {'checkpoint': 'best', 'step': 1, 'weights': 'raw'})
  assert (tmp_path / '.eval.lock').stat().st_mode & 0o777 == 0o666


def test_what_killed_writers_leave_is_reaped_and_a_cut_figure_never_replaces_a_whole_one(
    tmp_path, monkeypatch):
  """A kill between the temp write and the rename had left .eval_<tag>.json.<pid>.tmp forever,
  one per kill, and a kill in savefig a cut PNG over the complete one (a kill audit)."""
  gone = subprocess.Popen([sys.executable, '-c', 'pass'])
  gone.wait()  # A writer's pid that is no more.
  stale = [tmp_path / f'.{name}.tmp-{atomic_folder.HOST}-{gone.pid}-0123abcd'
           for name in ('eval_best.json', 'confusion_best.png')]
  for path in stale:
    path.write_bytes(b'cut')
  eval_json.write(tmp_path / 'eval_best.json', {'checkpoint': 'best', 'step': 1, 'weights': 'raw',
                                                'test_accuracy': 0.5})
  assert not stale[0].exists() and json.loads((tmp_path / 'eval_best.json').read_text())
  fig = figures.new_figure()
  fig.add_subplot().plot([0, 1])
  png = tmp_path / 'confusion_best.png'
  figures.save(fig, png)
  whole = png.read_bytes()
  assert whole.startswith(b'\x89PNG') and not stale[1].exists()

  def killed_midway(self, fname, **kwargs):
    with open(fname, 'wb') as f:
      f.write(whole[:100])
    raise KeyboardInterrupt

  monkeypatch.setattr(type(fig), 'savefig', killed_midway)
  with pytest.raises(KeyboardInterrupt):
    figures.save(fig, png)
  assert png.read_bytes() == whole
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.eval.lock', 'confusion_best.png',
                                                        'eval_best.json']


def test_a_bare_file_name_is_written_in_the_current_folder(tmp_path, monkeypatch):
  """`evaluate --workdir .` and `report --out .` give names without a folder: reaping temps next
  to them had listed '' (FileNotFoundError) after all the inference (a review)."""
  monkeypatch.chdir(tmp_path)
  eval_json.write(pathlib.Path('eval_best.json'), {'checkpoint': 'best', 'step': 1,
                                                   'weights': 'raw', 'test_accuracy': 0.5})
  fig = figures.new_figure()
  fig.add_subplot().plot([0, 1])
  figures.save(fig, 'figure.png')
  assert (tmp_path / 'figure.png').read_bytes().startswith(b'\x89PNG')
  assert json.loads((tmp_path / 'eval_best.json').read_text())['test_accuracy'] == 0.5


def test_eval_json_of_the_same_step_with_other_weights_is_set_aside(tmp_path):
  """EMA numbers of a step never merge into the raw weights' numbers of that step: kept aside."""
  path = tmp_path / 'eval_best.json'
  raw = {'checkpoint': 'best', 'step': 2, 'weights': 'raw', 'ood_accuracy': 0.25}
  path.write_text(json.dumps(raw))
  ema = {'checkpoint': 'best', 'step': 2, 'weights': 'ema', 'test_accuracy': 0.5}
  eval_json.write(path, ema)
  assert json.loads(path.read_text()) == ema
  assert json.loads((tmp_path / 'eval_best.step2.json').read_text()) == raw


def test_eval_json_of_a_step_named_by_its_default_item_is_the_same_checkpoint(tmp_path):
  """A step folder named by its default/ item is that step: the earlier numbers merge in."""
  path = tmp_path / 'eval_step2.json'
  old = {'checkpoint': 'run/checkpoints/latest/2', 'step': 2, 'weights': 'raw',
         'ood_accuracy': 0.25}
  path.write_text(json.dumps(old))
  same = {'checkpoint': str(tmp_path / 'run/checkpoints/latest/2/default'), 'step': 2,
          'weights': 'raw', 'test_accuracy': 0.5}
  eval_json.write(path, same)
  assert json.loads(path.read_text()) == {**old, **same}
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.eval.lock', 'eval_step2.json']


def test_an_ood_evaluation_of_the_same_checkpoint_replaces_only_its_own_kind(tmp_path):
  """Merging with an earlier evaluation of the same checkpoint: a new OOD set replaces every
  ood_* / submission number of the old one, a new CIFAR-100-C evaluation every cifar100c* one,
  and an evaluation of neither keeps both (a mutation audit: only test_evaluate's trained run
  covered this)."""
  path = tmp_path / 'eval_best.json'
  same = {'checkpoint': 'best', 'step': 3, 'weights': 'raw'}
  old = {**same, 'test_accuracy': 0.4, 'ood_dir': '/a', 'ood_accuracy': 0.3,
         'ood_per_severity': [0.3] * 5, 'submission': '/a.csv', 'cifar100c_dir': '/c',
         'cifar100c_mean_accuracy': 0.2, 'cifar100c': {'fog': [0.2] * 5}}
  path.write_text(json.dumps(old))
  eval_json.write(path, {**same, 'test_accuracy': 0.5})  # Clean only: everything else kept.
  assert json.loads(path.read_text()) == {**old, 'test_accuracy': 0.5}
  eval_json.write(path, {**same, 'test_accuracy': 0.5, 'ood_dir': '/b', 'submission': '/b.csv'})
  kept = json.loads(path.read_text())
  assert kept['ood_dir'] == '/b' and kept['submission'] == '/b.csv'
  assert 'ood_accuracy' not in kept and 'ood_per_severity' not in kept
  assert kept['cifar100c'] == old['cifar100c'] and kept['cifar100c_dir'] == '/c'
  eval_json.write(path, {**same, 'test_accuracy': 0.5, 'cifar100c_dir': '/d'})
  kept = json.loads(path.read_text())
  assert kept['cifar100c_dir'] == '/d' and 'cifar100c' not in kept
  assert 'cifar100c_mean_accuracy' not in kept and kept['ood_dir'] == '/b'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.eval.lock', 'eval_best.json']


def test_a_checkpoint_saved_again_after_its_eval_json_is_another_checkpoint(tmp_path):
  """eval_best.json of step 3 and a best/3 folder written since (a run retrained to the same
  step) are not merged: the old file is set aside; a folder older than the file merges."""
  path = tmp_path / 'eval_best.json'
  folder = tmp_path / 'checkpoints' / 'best' / '3'
  folder.mkdir(parents=True)
  same = {'checkpoint': 'best', 'step': 3, 'weights': 'raw'}
  path.write_text(json.dumps({**same, 'ood_accuracy': 0.3}))
  os.utime(folder, (1_000_000, 1_000_000))  # Older than the file: the same checkpoint.
  eval_json.write(path, {**same, 'test_accuracy': 0.5}, folder)
  assert json.loads(path.read_text())['ood_accuracy'] == 0.3
  os.utime(path, (1_000_000, 1_000_000))
  os.utime(folder, (2_000_000, 2_000_000))  # Saved again after the file was written.
  eval_json.write(path, {**same, 'test_accuracy': 0.6}, folder)
  assert json.loads(path.read_text()) == {**same, 'test_accuracy': 0.6,
                                          'step_saved_ns': folder.stat().st_mtime_ns}
  assert json.loads((tmp_path / 'eval_best.step3.json').read_text())['ood_accuracy'] == 0.3


def test_an_older_eval_json_and_a_step_of_the_same_second_are_one_checkpoint(tmp_path):
  """A file of a version before step_saved_ns, compared by times: a step folder written in the same
  second as the file (1 s timestamps of some file systems) is the same checkpoint."""
  path = tmp_path / 'eval_best.json'
  folder = tmp_path / 'checkpoints' / 'best' / '3'
  folder.mkdir(parents=True)
  same = {'checkpoint': 'best', 'step': 3, 'weights': 'raw'}
  path.write_text(json.dumps({**same, 'ood_accuracy': 0.3}))
  for p in (path, folder):
    os.utime(p, (1_000_000, 1_000_000))
  eval_json.write(path, {**same, 'test_accuracy': 0.5}, folder)
  assert json.loads(path.read_text())['ood_accuracy'] == 0.3


def test_a_checkpoint_saved_again_under_a_clock_behind_the_files_is_another_checkpoint(tmp_path):
  """Compared by time, a step saved again looked older than its eval JSON when the JSON was written
  while the clock ran fast (or by a host ahead of the saving one): its OOD number was merged beside
  the new weights' test accuracy (a clock review). The step folder's time is now recorded and
  compared for equality."""
  path = tmp_path / 'eval_best.json'
  folder = tmp_path / 'checkpoints' / 'best' / '3'
  folder.mkdir(parents=True)
  same = {'checkpoint': 'best', 'step': 3, 'weights': 'raw'}
  os.utime(folder, (1_000_000, 1_000_000))
  eval_json.write(path, {**same, 'ood_accuracy': 0.3}, folder)
  eval_json.write(path, {**same, 'test_accuracy': 0.5}, folder)  # The same step: merged.
  assert json.loads(path.read_text())['ood_accuracy'] == 0.3
  os.utime(path, (3_000_000, 3_000_000))  # Written by a clock ahead...
  os.utime(folder, (2_000_000, 2_000_000))  # ... of the one that saved the step again.
  eval_json.write(path, {**same, 'test_accuracy': 0.6}, folder)
  assert 'ood_accuracy' not in json.loads(path.read_text())
  assert json.loads((tmp_path / 'eval_best.step3.json').read_text())['ood_accuracy'] == 0.3


def test_a_copied_run_keeps_its_steps_numbers_and_a_save_of_the_step_again_sets_them_aside(
    tmp_path):
  """A copy of the run (cp -r, scp: every time new) had set its own step's OOD numbers aside as
  "another checkpoint's" (a longevity review): a save is now told by orbax's commit time in the
  step's _CHECKPOINT_METADATA, which a copy keeps and a new save changes."""
  path = tmp_path / 'eval_best.json'
  folder = tmp_path / 'checkpoints' / 'best' / '3'
  folder.mkdir(parents=True)
  metadata = {'item_handlers': {}, 'commit_timestamp_nsecs': 1_796_653_430_374_674_207}
  (folder / '_CHECKPOINT_METADATA').write_text(json.dumps(metadata))
  same = {'checkpoint': 'best', 'step': 3, 'weights': 'raw'}
  eval_json.write(path, {**same, 'ood_accuracy': 0.3}, folder)
  os.utime(path, (1_000_000, 1_000_000))  # The copy: every time new, the step's after the file's.
  os.utime(folder, (2_000_000, 2_000_000))
  eval_json.write(path, {**same, 'test_accuracy': 0.5}, folder)
  assert json.loads(path.read_text())['ood_accuracy'] == 0.3
  metadata['commit_timestamp_nsecs'] += 1  # Saved again.
  (folder / '_CHECKPOINT_METADATA').write_text(json.dumps(metadata))
  eval_json.write(path, {**same, 'test_accuracy': 0.6}, folder)
  assert 'ood_accuracy' not in json.loads(path.read_text())
  assert json.loads((tmp_path / 'eval_best.step3.json').read_text())['ood_accuracy'] == 0.3
