"""Run reports: figures, the markdown summary and stale-evaluation warnings, from small fake run
directories (no training). The evaluation figures themselves: test_figures.py."""

import errno
import json
import os
import pathlib
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from _fake_runs import BASE_CONFIG, fake_run, section
from conftest import is_png, TOO_LARGE
from jax_cifar import errors
from jax_cifar.evaluation import curves, report, stale_evals

def test_report_draws_three_figures_and_a_summary_table(tmp_path, drawn):
  fake_run(tmp_path / 'small', 1.0, test_accuracy=0.1875, lr=0.1)
  fake_run(tmp_path / 'large', 2.0, lr=0.4)
  out = tmp_path / 'report'
  assert report.main([str(tmp_path / 'small'), str(tmp_path / 'large'), '--out', str(out)]) == 0
  for png in ('figure1_loss.png', 'figure2_accuracy.png', 'figure3_learning_rate.png'):
    assert is_png(out / png)
    img = matplotlib.image.imread(out / png)
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert np.std(img[..., :3]) > 0.05  # Something was drawn.
  # Figure 3: one line per run, x in epochs (50 steps each), y the logged learning rate.
  lr_ax = drawn[2].axes[0]
  assert lr_ax.get_xlabel() == 'epoch'
  lines = {l.get_label(): l for l in lr_ax.get_lines()}
  assert sorted(lines) == ['large', 'small']
  np.testing.assert_allclose(lines['small'].get_xdata(), np.arange(10, 110, 10) / 50)
  np.testing.assert_allclose(lines['large'].get_ydata(), 0.4 * (1 - np.arange(10, 110, 10) / 100))
  assert lines['small'].get_color() != lines['large'].get_color()
  md = (out / 'summary.md').read_text()
  assert '![Figure 3](figure3_learning_rate.png)' in md
  lines = [l for l in md.splitlines() if l.startswith('| small') or l.startswith('| large')]
  assert len(lines) == 2
  small, large = lines
  assert '| 2.0 |' in small  # epochs
  assert '20.00%' in small and '18.75%' in small and '12.34%' in small  # best val, test, OOD
  assert '40.00%' in large and large.count('| - |') >= 2  # No eval JSON: test and OOD unknown.
  # 100 steps x 128 images at 200 images/s = 64 s of training.
  assert '1.1 min' in small
  assert 'Every run has the same config.json.' in md


def test_the_corrupted_sets_name_their_means_and_a_small_set_its_size(tmp_path):
  """The OOD column (the mean over its 19 corruptions) and the CIFAR-100-C column (the benchmark's
  15) had the same kind of header, and an OOD set of 50 images per cell stood above the clean test
  accuracy unmarked (a figure review)."""
  run = fake_run(tmp_path / 'run', 1.0, test_accuracy=0.1)
  (run / 'eval_best.json').write_text(json.dumps({
      'test_accuracy': 0.1, 'ood_accuracy': 0.1269, 'ood_images_per_chunk': 50,
      'cifar100c_mean_accuracy': 0.1237, 'cifar100c_images_per_chunk': 10_000}))
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  md = (tmp_path / 'out' / 'summary.md').read_text()
  assert ('| OOD acc (all its corruptions) | CIFAR-100-C mean (15 standard) |' in md), md
  row = next(l for l in md.splitlines() if l.startswith('| run |') and '%' in l)
  assert '| 12.69% (50 images per cell) | 12.37% |' in row, row
  # An evaluation by a version that recorded no count says so: its number had read as a full
  # set's (an upgrade review).
  (run / 'eval_best.json').write_text(json.dumps({'test_accuracy': 0.1, 'ood_accuracy': 0.0547}))
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  md = (tmp_path / 'out' / 'summary.md').read_text()
  row = next(l for l in md.splitlines() if l.startswith('| run |') and '%' in l)
  assert '| 5.47% (images per cell not recorded) | - |' in row, row


def test_a_run_short_of_its_planned_epochs_says_so_and_a_short_time_is_in_seconds(tmp_path):
  """A run stopped by train.max_steps showed its epochs as if complete, and 40 s of training as
  '0.7 min' (a figure review)."""
  config = {**BASE_CONFIG, 'train': {'batch_size': 128, 'num_epochs': 4}}
  run = fake_run(tmp_path / 'run', 1.0, config=config)
  _rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()[:-1]]
  (run / 'metrics.jsonl').write_text(''.join(  # 100 steps x 128 images at 320 images/s: 40 s.
      json.dumps({**r, 'images_per_sec': 320.0} if 'images_per_sec' in r else r) + '\n'
      for r in _rows))
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  row = next(l for l in (tmp_path / 'out' / 'summary.md').read_text().splitlines()
             if l.startswith('| run |') and '%' in l)
  assert '| 2.0 of 4 |' in row and row.endswith('| 40 s |'), row


def test_the_train_time_counts_each_launchs_steps_at_its_own_batch_size(tmp_path):
  """Steps 1-50 at batch 128, 51-100 at 256 after a relaunch (launches.jsonl), at 320 images/s:
  20 + 40 = 60 s. The last launch's batch size had been used for every row (a longevity review).
  A later launch from step 30 (after a kill) trained steps 31-100 again: 30 x 64 / 320 + 70 x 128
  / 320 = 6 + 28 s."""
  run = fake_run(tmp_path / 'run', 1.0)
  rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()[:-1]]
  (run / 'metrics.jsonl').write_text(''.join(
      json.dumps({**r, 'images_per_sec': 320.0} if 'images_per_sec' in r else r) + '\n'
      for r in rows))

  def launch(start, batch):
    return json.dumps({'start_step': start, 'config': {'train': {'batch_size': batch}}}) + '\n'
  for launches, seconds in (([launch(0, 128), launch(50, 256)], '1.0 min'),
                            ([launch(0, 64), launch(50, 256), launch(30, 128)], '34 s'),
                            ([], '40 s')):  # (No launches.jsonl: config.json's 128 throughout.)
    (run / 'launches.jsonl').write_text(''.join(launches))
    assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
    row = next(l for l in (tmp_path / 'out' / 'summary.md').read_text().splitlines()
               if l.startswith('| run |') and '%' in l)
    assert row.endswith(f'| {seconds} |'), (launches, row)


def test_home_relative_run_and_out_folders_are_the_home_ones(tmp_path, monkeypatch):
  """--out=~/rep (the shell leaves that ~) had written the report into ./~/rep."""
  fake_run(tmp_path / 'run', 1.0)
  monkeypatch.setenv('HOME', str(tmp_path))
  (tmp_path / 'cwd').mkdir()
  monkeypatch.chdir(tmp_path / 'cwd')
  assert report.main(['~/run', '--out=~/rep']) == 0
  assert (tmp_path / 'rep' / 'summary.md').is_file() and not (tmp_path / 'cwd' / '~').exists()


def test_no_learning_rate_logged_means_no_figure3(tmp_path):
  run = fake_run(tmp_path / 'run', 1.0)
  rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()[:-1]]
  (run / 'metrics.jsonl').write_text(
      ''.join(json.dumps({k: v for k, v in r.items() if k != 'learning_rate'}) + '\n' for r in rows))
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'figure3_learning_rate.png').write_bytes(b'old')  # From an earlier report.
  assert report.main([str(run), '--out', str(out)]) == 0
  assert not (out / 'figure3_learning_rate.png').exists()
  assert 'no Figure 3' in (out / 'summary.md').read_text()


def _best_checkpoint(run, step: int, mtime: float):
  folder = run / 'checkpoints' / 'best' / str(step)
  folder.mkdir(parents=True)
  (folder / 'commit_success.txt').write_text('done')
  os.utime(folder / 'commit_success.txt', (mtime, mtime))
  os.utime(folder, (mtime, mtime))


@pytest.mark.parametrize('eval_after_checkpoint', [False, True])
def test_an_evaluation_older_than_the_best_checkpoint_is_flagged(tmp_path, capsys,
                                                               eval_after_checkpoint):
  run = fake_run(tmp_path / 'run', 1.0, test_accuracy=0.5)
  (run / 'checkpoints' / 'best' / '100.orbax-checkpoint-tmp-1').mkdir(parents=True)  # Ignored.
  _best_checkpoint(run, 50, 1_000_000)
  _best_checkpoint(run, 100, 2_000_000)  # The newest best checkpoint.
  eval_time = 2_000_100 if eval_after_checkpoint else 1_999_900
  os.utime(run / 'eval_best.json', (eval_time, eval_time))
  out = tmp_path / 'out'
  assert report.main([str(run), '--out', str(out)]) == 0
  err = capsys.readouterr().err
  md = (out / 'summary.md').read_text()
  warnings = [l for l in err.splitlines() if l.startswith('warning:')]
  if eval_after_checkpoint:
    assert not warnings and '## Warnings' not in md
  else:
    assert len(warnings) == 1
    assert 'eval_best.json' in warnings[0] and 'checkpoints/best/100' in warnings[0]
    assert warnings[0][len('warning: '):] in section(md, 'Warnings')


def test_an_evaluation_of_an_earlier_save_of_the_same_step_is_flagged(tmp_path, capsys):
  """A run retrained from scratch to the same best step had not been caught (the step matched):
  the save evaluate records (step_saved_ns, orbax's commit time) tells them apart."""
  run = fake_run(tmp_path / 'run', 1.0, test_accuracy=0.5)
  _best_checkpoint(run, 100, 1_000_000)
  metadata = run / 'checkpoints' / 'best' / '100' / '_CHECKPOINT_METADATA'
  metadata.write_text(json.dumps({'commit_timestamp_nsecs': 7}))
  ev = json.loads((run / 'eval_best.json').read_text())
  # (Step 120, of a best set aside since: no step of that number to compare with, no warning.)
  for step, saved, stale in ((100, 7, False), (100, 6, True), (120, 6, False)):
    (run / 'eval_best.json').write_text(json.dumps({**ev, 'step': step, 'step_saved_ns': saved}))
    assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith('warning:')]
    assert warnings == (['warning: run: eval_best.json holds an earlier save of step 100: '
                         'checkpoints/best/100 was saved again since: re-run evaluate']
                        if stale else []), warnings


def test_an_evaluation_of_an_earlier_step_is_found_by_its_step_and_marked_in_its_row(tmp_path,
                                                                                    capsys):
  """After a resume made a new best, the row had shown the new best val next to the old best's
  test and OOD numbers, unmarked, and the check compared file times though eval_best.json records
  its step (a new-user audit)."""
  run = fake_run(tmp_path / 'run', 1.0, test_accuracy=0.5)
  _best_checkpoint(run, 100, 1_000_000)
  ev = json.loads((run / 'eval_best.json').read_text())
  for step, stale in ((40, True), (100, False)):
    (run / 'eval_best.json').write_text(json.dumps({**ev, 'step': step}))
    os.utime(run / 'eval_best.json', (2_000_000, 2_000_000))  # Newer than the checkpoint...
    out = tmp_path / f'out{step}'
    assert report.main([str(run), '--out', str(out)]) == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith('warning:')]
    row = [l for l in (out / 'summary.md').read_text().splitlines()
           if l.startswith('| run') and '| model |' not in l][0]
    if stale:  # ... but of step 40.
      assert len(warnings) == 1 and 'eval_best.json holds step 40' in warnings[0], warnings
      assert row.startswith('| run (evaluated at step 40, checkpoint now at 100) |'), row
    else:
      os.utime(run / 'eval_best.json', (1, 1))  # (A copied file's time: not a reason.)
      assert not warnings and 'evaluated at' not in row
      assert report.main([str(run), '--out', str(out)]) == 0
      assert not [l for l in capsys.readouterr().err.splitlines() if l.startswith('warning:')]


def test_the_summary_row_shows_a_plain_evaluation_and_names_an_adapted_one(tmp_path):
  # Without eval_best.json the alphabetically first eval_*.json was shown unmarked: here a
  # --tta shifts --bn_adapt one, as if it were the plain test accuracy.
  both = fake_run(tmp_path / 'both', 1.0)
  adapted = {'test_accuracy': 0.028, 'tta': 'shifts', 'bn_adapt': True, 'tent': None}
  (both / 'eval_best_tta-shifts_bn-adapt.json').write_text(json.dumps(adapted))
  (both / 'eval_latest.json').write_text(json.dumps({'test_accuracy': 0.032, 'tta': 'none',
                                                    'bn_adapt': False, 'tent': None}))
  only = fake_run(tmp_path / 'only', 1.0)
  (only / 'eval_best_tta-shifts_bn-adapt.json').write_text(json.dumps(adapted))
  rows = report.summary_rows([report.load_run(both), report.load_run(only)])
  assert rows[0]['test_accuracy'] == 0.032 and rows[0]['run'] == 'both'
  assert rows[1]['test_accuracy'] == 0.028
  assert rows[1]['run'] == 'only (eval_best_tta-shifts_bn-adapt)'


def test_a_run_without_validation_split_says_its_best_is_on_test(tmp_path):
  """With data.val_fraction 0 the trainer validates on the test split: the report had shown that
  number as 'best val acc' like any other (an audit). simple_cnn gets no width (it has none)."""
  config = {**BASE_CONFIG, 'model': {'name': 'simple_cnn', 'width': 64},
            'data': {'val_fraction': 0.0}}
  runs = [report.load_run(fake_run(tmp_path / 'on_test', 1.0, config=config)),
          report.load_run(fake_run(tmp_path / 'held_out', 1.0))]
  lines = report.markdown_table(report.summary_rows(runs)).splitlines()
  assert lines[2].startswith('| on_test | simple_cnn | 2.0 | 20.00% (test split) |'), lines[2]
  assert lines[3].startswith('| held_out | resnet18 (width 16) | 2.0 | 20.00% |'), lines[3]


def test_a_test_accuracy_on_part_of_the_test_set_says_how_many_images(tmp_path):
  """data.eval_limit (the smoke config's 2,000) had given a "test acc" unmarked (a new-user audit)."""
  part = fake_run(tmp_path / 'part', 1.0, test_accuracy=0.024)
  whole = fake_run(tmp_path / 'whole', 1.0, test_accuracy=0.25)
  edited = fake_run(tmp_path / 'edited', 1.0, test_accuracy=0.25)  # By hand: a string count.
  for run, count in ((part, 2000), (whole, 10000), (edited, '2000')):
    ev = json.loads((run / 'eval_best.json').read_text())
    (run / 'eval_best.json').write_text(json.dumps({**ev, 'test_count': count}))
  lines = report.markdown_table(report.summary_rows([report.load_run(part), report.load_run(whole),
                                                     report.load_run(edited)])).splitlines()
  assert '| 2.40% (2,000 images) |' in lines[2], lines[2]
  assert '| 25.00% |' in lines[3], lines[3]
  assert '| 25.00% |' in lines[4], lines[4]  # Not a TypeError (a review).


def test_hand_edited_files_of_odd_shapes_are_reported_not_a_traceback(tmp_path, drawn):
  """An eval JSON that is not an object is read as no evaluation; a metric written as a string is
  shown as it is; an older step's numbers that evaluate kept (eval_best.step3.json) are not rows."""
  run = fake_run(tmp_path / 'run', 1.0, test_accuracy='0.5')
  (run / 'eval_latest.json').write_text('[]')
  (run / 'eval_best.step3.json').write_text(json.dumps({'test_accuracy': 0.9}))
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  table = (tmp_path / 'out' / 'summary.md').read_text()
  assert '| 0.5 |' in table and '90.00%' not in table, table
  assert sorted(report.load_run(run)['evals']) == ['eval_best', 'eval_latest']
  assert report.load_run(run)['warnings'] == [
      'run: eval_latest.json holds a JSON list, not an object: its numbers are left out']


def test_cut_files_and_impossible_values_are_named_not_shown(tmp_path, capsys):
  """A cut eval_best.json or config.json had left '-' in the table without a word, and a row
  with val_accuracy 1.7 had been "best val acc 170.00%", a negative step a point of the curves (a
  bad-input review)."""
  run = fake_run(tmp_path / 'run', 1.0, test_accuracy=0.5)
  rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()[:-1]]
  rows += [{'step': 5, 'val_accuracy': 1.7, 'val_loss': 1.0}, {'step': -3, 'train_loss': 2.0}]
  # Numbers beyond float's range, a step (no row) and a loss: an OverflowError traceback before.
  rows += [{'step': 10**400, 'train_loss': 2.0}, {'step': 6, 'train_loss': -10**400}]
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  for name in ('eval_best.json', 'config.json'):
    (run / name).write_bytes((run / name).read_bytes()[:20])
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  table = (tmp_path / 'out' / 'summary.md').read_text()
  assert '170.00%' not in table, table
  warned = [l for l in capsys.readouterr().err.splitlines() if l.startswith('warning: ')]
  assert warned == [
      'warning: run: config.json is unreadable (JSONDecodeError): its numbers are left out',
      'warning: run: 1 value(s) in metrics.jsonl are not finite numbers (NaN, inf, text): left '
      'out of the curves and the table',
      'warning: run: 3 value(s) in metrics.jsonl are out of their range (an accuracy outside [0, '
      '1], a step that is not a whole number >= 0; a row without its step counts whole): left out '
      'of the curves and the table',
      'warning: run: eval_best.json is unreadable (JSONDecodeError): its numbers are left out'
  ], warned
  loaded = report.load_run(run)
  assert {r['step'] for r in loaded['rows']} >= {5} and all(r['step'] >= 0 for r in loaded['rows'])
  assert [r for r in loaded['rows'] if r['step'] == 5][-1] == {'step': 5, 'val_loss': 1.0}


def test_nan_text_and_odd_config_sections_are_left_out_with_a_warning(tmp_path, capsys):
  """A NaN accuracy had made the best "nan%", a NaN epoch emptied every curve, a string epoch or
  "train": null ended in a traceback after the figures were redrawn (an audit). They are left
  out, each run named in a warning; nulls (the trainer's own non-finite values) are not counted."""
  run = fake_run(tmp_path / 'run', 1.0)
  lines = (run / 'metrics.jsonl').read_text().splitlines()
  rows = [json.loads(l) for l in lines[:-1]]
  best = max(r['val_accuracy'] for r in rows if 'val_accuracy' in r)
  first_val = next(r for r in rows if 'val_accuracy' in r)
  first_val['val_accuracy'] = float('nan')
  rows[0]['epoch'], rows[1]['epoch'], rows[2]['train_loss'] = float('nan'), 'two', None
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  # ("checkpoint": null had been an AttributeError traceback: an audit.)
  (run / 'config.json').write_text(json.dumps({**BASE_CONFIG, 'train': None, 'checkpoint': None}))
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'metrics.jsonl').write_text('')
  assert report.main([str(run), str(empty), '--out', str(tmp_path / 'out')]) == 0
  table = (tmp_path / 'out' / 'summary.md').read_text()
  assert f'{100 * best:.2f}%' in table and 'nan' not in table, table
  warned = [l for l in capsys.readouterr().err.splitlines() if l.startswith('warning: ')]
  assert warned == [
      'warning: run: config.json has no train or checkpoint section (not an object): its columns '
      'are left empty',
      'warning: run: 3 value(s) in metrics.jsonl are not finite numbers (NaN, inf, text): left out '
      'of the curves and the table',
      'warning: empty: metrics.jsonl holds no rows (a run stopped before its first log?): no '
      'curves and no training numbers for it'], warned
  loaded = report.load_run(run)
  per_step = curves.epochs_per_step(loaded['rows'])
  x, y, bad = curves._series(loaded, 'train_loss', per_step, 1.0)  # pylint: disable=protected-access
  # Epochs from the rows with finite ones, also for the two without; the null (step 30) breaks
  # the line there and is marked (it had been left out, drawing a straight line over it).
  np.testing.assert_allclose(x, np.arange(10, 110, 10) / 50)
  assert np.isnan(y[2]) and np.isfinite(np.delete(y, 2)).all() and list(bad) == [0.6]


def test_a_hand_edited_batch_size_of_another_type_leaves_the_train_time_out(tmp_path):
  """A string batch_size had been a TypeError, after the figures of the earlier report had been
  replaced (an audit): the tables now come before any figure (checked here with a table that
  still fails: a test audit)."""
  good = fake_run(tmp_path / 'good', 1.0)
  edited = fake_run(tmp_path / 'edited', 1.0,
                     config={**BASE_CONFIG, 'train': {'batch_size': '128'}})
  assert report.main([str(good), str(edited), '--out', str(tmp_path / 'out')]) == 0
  rows = {r['run']: r for r in report.summary_rows([report.load_run(good),
                                                      report.load_run(edited)])}
  assert rows['good']['train_time_s'] > 0 and rows['edited']['train_time_s'] is None
  # The order: a table that still fails leaves the earlier report's figures as they were.
  before = {p.name: p.read_bytes() for p in (tmp_path / 'out').glob('*.png')}
  assert len(before) >= 2
  def failing(runs):
    raise errors.UserError('a table that cannot be made')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(report, 'summary_rows', failing)
    assert report.main([str(edited), '--out', str(tmp_path / 'out')]) == 1
  assert {p.name: p.read_bytes() for p in (tmp_path / 'out').glob('*.png')} == before


@pytest.mark.parametrize('make', ['empty', 'missing', 'twice', 'a_file', 'just_launched'])
def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path, capsys, make):
  if make == 'just_launched':  # (It had read "not a training run directory": a kill review.)
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'launches.jsonl').write_text('{"start_step": 0}\n')
    argv, expected = [str(tmp_path / 'run')], 'no metrics.jsonl yet (a run that has not started'
  elif make == 'a_file':
    (tmp_path / 'run.txt').write_text('notes')
    argv, expected = [str(tmp_path / 'run.txt')], 'run.txt: a file, not a folder'
  elif make == 'twice':
    run = fake_run(tmp_path / 'run', 1.0)
    (tmp_path / 'x').mkdir()
    argv, expected = [str(run), str(tmp_path / 'x' / '..' / 'run')], 'same run'
  else:
    argv = [str(tmp_path / ('nowhere' if make == 'missing' else ''))]
    expected = 'no such folder' if make == 'missing' else 'metrics.jsonl'
  assert report.main(argv + ['--out', str(tmp_path / 'out')]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and expected in err[0]
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('out', ['', 'a_file'])
def test_an_empty_or_file_out_is_one_error_line_and_nothing_is_written(tmp_path, capsys,
                                                                      monkeypatch, out):
  """--out= is the current folder: the figures and summary.md had been written there (a flag
  audit); a file as --out had been a bare `[Errno 17] File exists`."""
  run = fake_run(tmp_path / 'run', 1.0)
  (tmp_path / 'a_file').write_text('notes')
  monkeypatch.chdir(tmp_path)
  assert report.main([str(run), '--out', out]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0] == ('error: --out is empty: give the folder for the figures and '
                                      'summary.md' if not out else 'error: --out a_file is a file: '
                                      'give a folder for the figures and summary.md'), err
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file', 'run']


def test_importing_and_drawing_leave_the_matplotlib_backend_alone(tmp_path):
  fake_run(tmp_path / 'run', 1.0)
  code = (
      'import sys\n'
      'import jax_cifar.evaluation.report as report\n'
      'assert "matplotlib" not in sys.modules and "matplotlib.pyplot" not in sys.modules\n'
      f'report.write_report([{str(tmp_path / "run")!r}], {str(tmp_path / "out")!r})\n'
      'import matplotlib\n'
      'assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"\n'
      'print(matplotlib.get_backend())\n')
  env = {**os.environ, 'MPLBACKEND': 'svg', 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == 'svg'  # Not switched to Agg.
  assert is_png(tmp_path / 'out' / 'figure1_loss.png')


def test_stale_checks_use_the_evaluated_kind_the_exact_step_and_the_last_write(tmp_path):
  """An evaluation one step behind is stale; eval_latest is checked against checkpoints/latest,
  not best; without a step, a checkpoint finished (commit_success.txt) after the file is newer."""
  run_dir = tmp_path / 'run'
  _best_checkpoint(run_dir, 50, 1_000_000)
  latest = run_dir / 'checkpoints' / 'latest' / '100'
  latest.mkdir(parents=True)
  for name, step in (('eval_best', 50), ('eval_latest', 99)):
    (run_dir / f'{name}.json').write_text(json.dumps({'step': step}))
  run = {'dir': run_dir, 'label': 'run',
         'evals': {'eval_best': {'step': 50}, 'eval_latest': {'step': 99}}}
  assert stale_evals.behind(run, 'eval_latest') == (99, 100)
  assert stale_evals.behind(run, 'eval_best') is None
  assert [m.split(' holds')[0] for m in stale_evals.stale_evaluations(run)] == [
      'run: eval_latest.json']
  # No step recorded: written after the folder was made, before its last file was finished.
  (run_dir / 'eval_best.json').write_text('{}')
  run['evals'] = {'eval_best': {}}
  os.utime(run_dir / 'eval_best.json', (1_000_000, 1_000_000))
  os.utime(run_dir / 'checkpoints' / 'best' / '50' / 'commit_success.txt', (1_000_100,) * 2)
  os.utime(run_dir / 'checkpoints' / 'best' / '50', (900_000, 900_000))
  (run_dir / 'eval_latest.json').unlink()
  assert ['eval_best.json (written' in m for m in stale_evals.stale_evaluations(run)] == [True]


def test_the_best_val_accuracy_is_the_highest_not_the_last(tmp_path):
  """A run whose validation accuracy fell at the end shows its highest one as best val acc."""
  run = fake_run(tmp_path / 'run', 1.0)
  with open(run / 'metrics.jsonl', 'a') as f:
    f.write('\n{"step": 150, "val_loss": 4.9, "val_accuracy": 0.01}\n')
  assert report.summary_rows([report.load_run(run)])[0]['best_val_accuracy'] == pytest.approx(0.2)


@pytest.mark.parametrize('best_weights, shown', [('ema', '15.00% (EMA)'), ('raw', '20.00%')])
def test_the_best_val_accuracy_is_of_the_weights_that_pick_best(tmp_path, best_weights, shown):
  """Under checkpoint.best_weights 'ema' the best checkpoint is the EMA's best step: the row had
  shown the raw weights' highest accuracy, of another step (a review)."""
  config = json.loads(json.dumps(BASE_CONFIG))
  config.setdefault('checkpoint', {})['best_weights'] = best_weights
  run = fake_run(tmp_path / 'run', 1.0, config=config)  # Raw: 0.1 at step 50, 0.2 at step 100.
  with open(run / 'metrics.jsonl', 'a') as f:
    f.write('\n{"step": 50, "val_accuracy_ema": 0.15}\n{"step": 100, "val_accuracy_ema": 0.12}\n')
  row = report.summary_rows([report.load_run(run)])[0]
  assert row['best_val_accuracy'] == pytest.approx(0.15 if best_weights == 'ema' else 0.2)
  assert f'| {shown} |' in report.markdown_table([row])
  # Its test numbers: the EMA's evaluation where the EMA ranked best (the raw weights' had been
  # shown beside the EMA's val: a review), and a row showing the raw ones says so.
  (run / 'eval_best.json').write_text(json.dumps({'test_accuracy': 0.3, 'weights': 'raw'}))
  row = report.summary_rows([report.load_run(run)])[0]
  assert row['run'] == ('run (test: raw weights)' if best_weights == 'ema' else 'run')
  (run / 'eval_best_ema.json').write_text(json.dumps({'test_accuracy': 0.4, 'weights': 'ema'}))
  row = report.summary_rows([report.load_run(run)])[0]
  assert (row['run'], row['test_accuracy']) == ('run', 0.4 if best_weights == 'ema' else 0.3)


def test_a_summary_row_prefers_the_plain_evaluations_in_their_documented_order(tmp_path):
  """eval_latest.json is shown before eval_best_ema.json, though the latter sorts first."""
  run = fake_run(tmp_path / 'run', 1.0)
  (run / 'eval_best_ema.json').write_text(json.dumps({'test_accuracy': 0.1}))
  (run / 'eval_latest.json').write_text(json.dumps({'test_accuracy': 0.2}))
  row = report.summary_rows([report.load_run(run)])[0]
  assert (row['run'], row['test_accuracy']) == ('run', 0.2)


def test_python_m_jax_cifar_report_exits_1_on_a_folder_that_is_not_a_run(tmp_path):
  """`python -m jax_cifar.report` passes main's status on: a failed report must not exit 0."""
  proc = subprocess.run([sys.executable, '-m', 'jax_cifar.report', str(tmp_path / 'nowhere'),
                         '--out', str(tmp_path / 'out')], capture_output=True, text=True,
                        timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 1 and 'no such folder' in proc.stderr, proc.stderr[-2000:]


def test_a_plain_evaluation_of_a_step_is_shown_before_an_adapted_one(tmp_path):
  """Without eval_best/eval_latest, a plain evaluation of a step (eval_step100) is preferred to
  an alphabetically earlier one made with BN adaptation (tta 'none', bn_adapt on), and the row
  is not marked; an earlier Tent one is passed over too."""
  run = fake_run(tmp_path / 'run', 1.0)
  (run / 'eval_best_bn-adapt.json').write_text(json.dumps(
      {'test_accuracy': 0.4, 'tta': 'none', 'bn_adapt': True, 'tent': None}))
  (run / 'eval_best_tent.json').write_text(json.dumps(
      {'test_accuracy': 0.45, 'tta': 'none', 'bn_adapt': False, 'tent': {'steps': 1}}))
  (run / 'eval_step100.json').write_text(json.dumps(
      {'test_accuracy': 0.3, 'tta': 'none', 'bn_adapt': False, 'tent': None}))
  row = report.summary_rows([report.load_run(run)])[0]
  assert (row['run'], row['test_accuracy']) == ('run', 0.3)


def _report_with_file_limit(runs: list, out, limit: int) -> subprocess.CompletedProcess:
  code = ('import resource, signal, sys\nfrom jax_cifar.evaluation import report\n'
          'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
          f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n'
          'sys.exit(report.main(sys.argv[1:]))\n')
  return subprocess.run([sys.executable, '-c', code, *map(str, runs), '--out', str(out)],
                        capture_output=True, text=True, timeout=300)


def test_a_full_disk_names_the_file_and_keeps_the_earlier_summary_whole(tmp_path):
  """summary.md had been written in place: a full disk left it empty (or cut an earlier one),
  the error named no file, and a folder the report made stayed behind, empty (a review)."""
  fake_run(tmp_path / 'a', 1.0, lr=0.1)
  out = tmp_path / 'new' / 'report'
  failed = _report_with_file_limit([tmp_path / 'a'], out, 1024)  # Below any figure's size.
  assert failed.returncode == 1
  assert failed.stderr.strip() == f'error: {out / "figure1_loss.png"}: {TOO_LARGE}'
  assert not out.exists()


def test_a_summary_cut_by_a_full_disk_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
  fake_run(tmp_path / 'a', 1.0, lr=0.1)
  out = tmp_path / 'report'
  assert report.main([str(tmp_path / 'a'), '--out', str(out)]) == 0
  summary = (out / 'summary.md').read_bytes()
  write_text = pathlib.Path.write_text

  def disk_fills(path, text, *args, **kwargs):  # Half the text reaches the disk, then ENOSPC.
    write_text(path, text[:len(text) // 2], *args, **kwargs)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
  monkeypatch.setattr(pathlib.Path, 'write_text', disk_fills)
  assert report.main([str(tmp_path / 'a'), '--out', str(out)]) == 1
  assert (out / 'summary.md').read_bytes() == summary
  assert sorted(p.name for p in out.iterdir()) == [
      'figure1_loss.png', 'figure2_accuracy.png', 'figure3_learning_rate.png', 'summary.md']


def test_summary_is_utf8_and_paths_print_under_an_ascii_locale(tmp_path):
  """Under a locale that is not UTF-8, summary.md had been written in its encoding: a config value
  outside it (data.dir /data/実験) ended the report in a UnicodeEncodeError. Under
  PYTHONIOENCODING=ascii the report wrote every file, then exited 1 with a traceback, printing an
  --out path with an é (a locale review)."""
  for name, data_dir in (('a', '/data/données'), ('b', '/data/実験')):
    config = json.loads(json.dumps(BASE_CONFIG))
    config['data'] = {'dir': data_dir}
    fake_run(tmp_path / name, 1.0, config=config)
  out = tmp_path / 'rapport-été'
  env = {**os.environ, 'LC_ALL': 'C', 'PYTHONUTF8': '0', 'PYTHONCOERCECLOCALE': '0',
         'PYTHONIOENCODING': 'ascii', 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-m', 'jax_cifar.report', str(tmp_path / 'a'),
                         str(tmp_path / 'b'), '--out', str(out)], capture_output=True,
                        timeout=120, env=env)
  assert proc.returncode == 0, proc.stderr.decode()[-3000:]
  summary = (out / 'summary.md').read_bytes().decode('utf-8')  # UTF-8, whatever the locale.
  assert '/data/données' in summary and '/data/実験' in summary
  # (The C locale reads the name's UTF-8 bytes as escapes, which are printed as such.)
  assert b'rapport-\\udcc3\\udca9t\\udcc3\\udca9' in proc.stdout, proc.stdout
