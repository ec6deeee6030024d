"""The report's learning curves (Figures 1-3): what each line is, its x in epochs or steps, its
colour, and the legend; from small fake run folders (no training)."""

import json

import numpy as np
import pytest

from _fake_runs import fake_run
from jax_cifar.evaluation import curves, report


def _rewrite(run, edit):
  """metrics.jsonl's rows (the torn last line dropped) after `edit(rows)` (which may return new rows)."""
  rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()[:-1]]
  rows = edit(rows) or rows
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))


def _lines(fig) -> dict:
  return {l.get_label(): l for l in fig.axes[0].get_lines()}


def test_runs_in_same_named_folders_get_distinct_labels(tmp_path, drawn):
  dirs = [fake_run(tmp_path / 'a' / 'run', 1.0), fake_run(tmp_path / 'b' / 'run', 2.0),
          fake_run(tmp_path / 'c', 1.5)]
  out = tmp_path / 'out'
  assert report.main([str(d) for d in dirs] + ['--out', str(out)]) == 0
  md = (out / 'summary.md').read_text()
  assert '| a/run |' in md and '| b/run |' in md and '| c |' in md
  legend = [l.get_label() for l in drawn[0].axes[0].get_lines()]
  assert legend == ['a/run train', 'a/run val', 'b/run train', 'b/run val', 'c train', 'c val']
  assert report.unique_labels([tmp_path / 'a/x/run', tmp_path / 'b/x/run']) == ['a/x/run', 'b/x/run']


def test_every_run_gets_its_own_colour():
  for n in (1, 10, 11, 20, 25):
    colors = curves.run_colors(n)
    assert len(colors) == n and len(set(colors)) == n


def test_runs_without_logged_epochs_put_every_curve_in_steps(tmp_path, drawn):
  """x is in epochs only when every run logs them: a run without epochs would otherwise be drawn
  in steps on an axis labelled 'epoch' (a mutation audit: `any` for `all` passed every test)."""
  with_epochs = fake_run(tmp_path / 'with', 1.0)
  without = fake_run(tmp_path / 'without', 1.0)
  rows = [json.loads(l) for l in (without / 'metrics.jsonl').read_text().splitlines()[:-1]]
  (without / 'metrics.jsonl').write_text(
      ''.join(json.dumps({k: v for k, v in r.items() if k != 'epoch'}) + '\n' for r in rows))
  assert report.main([str(with_epochs), str(without), '--out', str(tmp_path / 'out')]) == 0
  ax = drawn[0].axes[0]
  assert ax.get_xlabel() == 'step'
  lines = {l.get_label(): l for l in ax.get_lines()}
  np.testing.assert_allclose(lines['with train'].get_xdata(), np.arange(10, 110, 10))
  np.testing.assert_allclose(lines['without val'].get_xdata(), [50, 100])


def test_training_curves_are_solid_and_validation_dashed_with_dots(tmp_path, drawn):
  """The docstring's and the summary's reading of the figures: train solid, val dashed with dots."""
  run = fake_run(tmp_path / 'run', 1.0)
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  for fig in drawn[:2]:  # Loss and accuracy.
    lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
    assert (lines['run train'].get_linestyle(), lines['run train'].get_marker()) == ('-', 'None')
    assert (lines['run val'].get_linestyle(), lines['run val'].get_marker()) == ('--', 'o')
    np.testing.assert_allclose(lines['run val'].get_xdata(), [1.0, 2.0])  # Epochs 1 and 2.


@pytest.mark.parametrize('steps_per_epoch', [25, 100])
def test_epochs_redefined_by_a_relaunch_put_the_curves_in_steps_and_say_why(tmp_path, drawn,
                                                                            steps_per_epoch):
  """What the trainer logs after a relaunch at step 50 with twice (25 steps per epoch) or half
  (100) the batch size: from there a step counts in the new batch's epochs (step 60: epoch 2.4 or
  0.6, where step 50 was 1.0), so the epochs leap or go back. The first row's ratio had drawn such
  a run's 2 epochs out to 4.1 (a review); in steps the curves run on, and the axis says why."""
  runs = [fake_run(tmp_path / 'relaunched', 1.0), fake_run(tmp_path / 'other', 1.0)]
  def edit(rows):
    for r in rows:
      if 'epoch' in r and r['step'] > 50:
        r['epoch'] = r['step'] / steps_per_epoch
  _rewrite(runs[0], edit)
  assert report.main([str(r) for r in runs] + ['--out', str(tmp_path / 'out')]) == 0
  for fig in drawn:
    assert fig.axes[0].get_xlabel() == ('step (relaunched: epochs redefined by a relaunch with '
                                        'another batch size)')
  np.testing.assert_allclose(_lines(drawn[0])['relaunched train'].get_xdata(),
                             np.arange(10, 110, 10))
  np.testing.assert_allclose(_lines(drawn[0])['other val'].get_xdata(), [50, 100])


def test_a_diverged_run_breaks_its_curve_and_marks_the_steps_that_were_not_finite(tmp_path, drawn):
  """The trainer logs a non-finite loss as null. Left out, a run that diverged at step 60 had
  looked like a run that ended there, and a gap like a straight stretch (a review)."""
  run = fake_run(tmp_path / 'run', 1.0)
  def edit(rows):
    for r in rows:
      if r['step'] >= 60 and 'train_loss' in r:
        r['train_loss'] = None
      if r['step'] == 30 and 'train_accuracy' in r:
        r['train_accuracy'] = None  # a gap in the middle
  _rewrite(run, edit)
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  loss, acc = _lines(drawn[0]), _lines(drawn[1])
  np.testing.assert_allclose(loss['run train not finite'].get_xdata(), [1.2, 1.4, 1.6, 1.8, 2.0])
  assert np.isnan(loss['run train'].get_ydata()[5:]).all()
  y = acc['run train'].get_ydata()
  assert np.isnan(y[2]) and np.isfinite(np.delete(y, 2)).all()  # The line breaks at step 30.
  np.testing.assert_allclose(acc['run train not finite'].get_xdata(), [0.6])
  legend = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
  assert legend == ['run', 'train', 'val', 'not finite (left out)']


def test_the_ema_weights_validation_is_drawn_and_accuracy_is_in_percent(tmp_path, drawn):
  """Under checkpoint.best_weights='ema' the summary's best is the EMA's, which no figure drew (a
  review); the summary's percentages and the figure's fractions did not match either."""
  run = fake_run(tmp_path / 'run', 1.0)
  def edit(rows):
    for r in rows:
      if 'val_accuracy' in r:
        r['val_accuracy_ema'], r['val_loss_ema'] = r['val_accuracy'] + 0.05, r['val_loss'] - 0.1
  _rewrite(run, edit)
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  acc = _lines(drawn[1])
  np.testing.assert_allclose(acc['run val EMA'].get_ydata(), [15.0, 25.0])
  np.testing.assert_allclose(acc['run val'].get_ydata(), [10.0, 20.0])
  np.testing.assert_allclose(acc['run train'].get_ydata(), np.arange(10, 110, 10) / 4)
  assert acc['run val EMA'].get_linestyle() == ':' and drawn[1].axes[0].get_ylabel() == 'top-1 accuracy (%)'
  np.testing.assert_allclose(_lines(drawn[0])['run val EMA'].get_ydata(), [4.5 - 50 / 60 - 0.1,
                                                                          4.5 - 100 / 60 - 0.1])
  legend = [t.get_text() for t in drawn[1].axes[0].get_legend().get_texts()]
  assert legend == ['run', 'train', 'val', 'val, EMA weights']


def test_a_single_point_is_drawn_with_a_marker(tmp_path, drawn):
  """A run with one training row had a legend entry and nothing drawn (a line of one point).
  Its train point was then a dot like val's, on axes that spanned a tenth of a point, with nothing
  saying there was no curve yet (a figure review)."""
  run = fake_run(tmp_path / 'run', 1.0)
  _rewrite(run, lambda rows: [rows[0]])
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  train = _lines(drawn[0])['run train']
  assert train.get_marker() == 's' and len(train.get_xdata()) == 1
  for fig in drawn[:2]:
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_xlim()[0] == 0
    assert [t.get_text() for t in ax.texts] == ['one logged point per line so far: no curve yet']


def test_a_later_run_is_drawn_thinner_so_a_run_it_repeats_stays_visible(tmp_path, drawn):
  """A run and its own continuation share their first steps: the later one's line had hidden the
  earlier one's completely (a figure review)."""
  runs = [fake_run(tmp_path / 'a', 1.0), fake_run(tmp_path / 'b', 1.0)]
  assert report.main([str(r) for r in runs] + ['--out', str(tmp_path / 'out')]) == 0
  lines = _lines(drawn[0])
  assert lines['a train'].get_linewidth() > lines['b train'].get_linewidth()
  assert not drawn[0].axes[0].texts  # (Curves: no note.)


def test_the_legend_sits_beside_the_axes_names_each_run_once_and_shortens_long_names(tmp_path,
                                                                                    drawn):
  """Twelve runs' 24 entries had covered the curves, and a 120-character name had squeezed the
  axes into half the figure (a review)."""
  runs = [fake_run(tmp_path / f'run{i:02d}', 1 + i / 10) for i in range(11)]
  runs.append(fake_run(tmp_path / ('long_' * 24), 1.0))
  assert report.main([str(r) for r in runs] + ['--out', str(tmp_path / 'out')]) == 0
  fig = drawn[0]
  ax = fig.axes[0]
  texts = [t.get_text() for t in ax.get_legend().get_texts()]
  assert texts[:11] == [f'run{i:02d}' for i in range(11)] and texts[12:] == ['train', 'val']
  assert len(texts[11]) == 40 and texts[11].startswith('long_long') and '…' in texts[11]
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  renderer = FigureCanvasAgg(fig).get_renderer()
  legend_box = ax.get_legend().get_window_extent(renderer)
  assert legend_box.x0 >= ax.get_window_extent(renderer).x1  # Beside the axes, not over them.
  assert ax.get_position().width > 0.5  # The axes keep most of the figure's width.


def test_the_learning_rate_figure_says_it_is_the_heads_where_the_backbone_runs_at_another(
    tmp_path, drawn):
  """The trainer logs the new head's rate; with optim.backbone_lr_mult (ood_best.py: 0.1) the
  figure had drawn it as the run's rate, 10x the backbone's."""
  plain = fake_run(tmp_path / 'plain', 1.0)
  assert report.main([str(plain), '--out', str(tmp_path / 'out1')]) == 0
  assert drawn[2].axes[0].get_ylabel() == 'learning rate'
  for i, optim in enumerate(({'lr': 0.1, 'backbone_lr_mult': 0.1},
                              {'lr': 0.1, 'freeze_backbone_steps': 20})):
    drawn.clear()
    split = fake_run(tmp_path / f'split{i}', 1.0, config={'optim': optim})
    assert report.main([str(plain), str(split), '--out', str(tmp_path / f'out{i + 2}')]) == 0
    assert drawn[2].axes[0].get_ylabel() == curves.HEAD_RATE_LABEL
  assert not curves.split_learning_rates({'optim': 'torn'}) and not curves.split_learning_rates(None)


def test_a_diverged_runs_huge_loss_puts_figure1_on_a_log_scale(tmp_path, drawn):
  """One validation loss of 6.7e11 beside a healthy run had set Figure 1's axis to 0..7e11, every
  other curve a flat line on 0 (a figure review). The accuracy figure keeps its linear axis."""
  healthy, diverged = fake_run(tmp_path / 'healthy', 1.0), fake_run(tmp_path / 'diverged', 1.0)
  def edit(rows):
    for r in rows:
      if r['step'] == 100 and 'val_loss' in r:
        r['val_loss'] = 6.7e11
  _rewrite(diverged, edit)
  assert report.main([str(healthy), str(diverged), '--out', str(tmp_path / 'out')]) == 0
  loss, acc = drawn[0].axes[0], drawn[1].axes[0]
  assert loss.get_yscale() == 'log' and loss.get_ylabel() == 'cross-entropy loss (log scale)'
  low, high = loss.get_ylim()
  assert low < 2.6 and high > 6.7e11  # Every value on the axes: the healthy run's 2.6 .. 4.4 too.
  assert acc.get_yscale() == 'linear' and acc.get_ylabel() == 'top-1 accuracy (%)'
  # A healthy fine-tune whose many training rows fall from 4.6 to 0.01 stays linear (against the
  # median of all values it had gone on a log scale: the diff review).
  drawn.clear()
  def falling(rows):
    return [{**r, 'train_loss': 4.6 * 0.45 ** i} if 'train_loss' in r else r
            for i, r in enumerate(rows)]
  _rewrite(healthy, falling)
  assert report.main([str(healthy), '--out', str(tmp_path / 'out2')]) == 0
  assert drawn[0].axes[0].get_yscale() == 'linear'


def test_ordinary_curves_start_at_0_with_room_above_the_highest_point(tmp_path, drawn):
  """Linear from 0; the top had been the data's own autoscaled margin, a twentieth of a flat
  curve's span, so the curve lay on the frame (a figure review)."""
  run = fake_run(tmp_path / 'run', 1.0)
  _rewrite(run, lambda rows: [r for r in rows if 'val_loss' not in r and r['step'] <= 30])
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  for fig, top in zip(drawn, (4.4, 100 * 30 / 400, 0.09)):  # loss, accuracy (%), learning rate
    ax = fig.axes[0]
    assert ax.get_yscale() == 'linear' and ax.get_ylim()[0] == 0
    assert ax.get_ylim()[1] >= 1.05 * top, (ax.get_title(), ax.get_ylim())


def test_runs_whose_long_names_differ_in_the_middle_keep_distinct_legend_labels(tmp_path, drawn):
  """A sweep's folder names differ in the middle: kept to their start and end, two runs had read
  alike in the legend (a figure review)."""
  names = [f'resnet50_transfer_lr{lr}_bs128_mixup0.2_ema0.999_seed0' for lr in ('0.003', '0.010')]
  runs = [fake_run(tmp_path / n, 1.0 + i) for i, n in enumerate(names)] + [
      fake_run(tmp_path / 'short', 1.5)]
  assert report.main([str(r) for r in runs] + ['--out', str(tmp_path / 'out')]) == 0
  texts = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()][:3]
  assert texts[2] == 'short' and len(set(texts)) == 3
  for text, lr in zip(texts, ('0.003', '0.010')):
    assert len(text) <= 40 and f'lr{lr}_' in text, texts
  # Unchanged where the usual start-and-end form already tells them apart.
  assert curves.legend_labels(['a' * 50 + '1', 'b' * 50 + '1']) == [
      'a' * 19 + '…' + 'a' * 19 + '1', 'b' * 19 + '…' + 'b' * 19 + '1']
  # Differing only at the end, or a name that is the start of another: distinct.
  labels = curves.legend_labels(['p' * 50 + '1', 'p' * 50 + '2', 'p' * 50 + '12'])
  assert len(set(labels)) == 3 and all(len(l) <= 40 for l in labels)


def test_the_steps_a_relaunch_resumed_at_are_marked_on_every_figure(tmp_path, drawn):
  """A relaunch (with another schedule) bends the learning rate; nothing on the figures had said
  where the run was resumed (a figure review). launches.jsonl's start_step above 0 is drawn as a
  dotted line of the run's colour; unreadable rows, step 0 and steps past the last row are not."""
  run = fake_run(tmp_path / 'run', 1.0)
  (run / 'launches.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in (
      {'start_step': 0}, {'start_step': 50}, {'start_step': True}, {'start_step': 500}))
      + '{"torn\n[]\n')
  assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
  for fig in drawn:
    marks = _lines(fig)['run relaunch']
    assert marks.get_xdata() == [1.0, 1.0] and marks.get_linestyle() == ':'  # Epoch 1 = step 50.
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][-1] == (
        'resumed by a relaunch')
  other = fake_run(tmp_path / 'other', 1.0)  # No launches.jsonl: no mark, no legend entry.
  drawn.clear()
  assert report.main([str(other), '--out', str(tmp_path / 'out2')]) == 0
  assert 'other relaunch' not in _lines(drawn[0])


def test_many_relaunches_are_ticks_on_the_x_axis_not_lines_over_the_curves(tmp_path, drawn):
  """3,000 relaunches of a long preemptible run had drawn 3,000 dotted lines, which hid every
  curve (a longevity review): past curves.MANY_RELAUNCHES they are ticks on the x axis."""
  run = fake_run(tmp_path / 'run', 1.0)
  for count in (curves.MANY_RELAUNCHES, curves.MANY_RELAUNCHES + 1, 99):  # (99: every step.)
    steps = list(range(1, count + 1))
    (run / 'launches.jsonl').write_text(''.join(json.dumps({'start_step': s}) + '\n'
                                                for s in [0] + steps))
    drawn.clear()
    assert report.main([str(run), '--out', str(tmp_path / 'out')]) == 0
    for fig in drawn:
      ax = fig.axes[0]
      marks = [l for l in ax.get_lines() if l.get_label() == 'run relaunch']
      legend = [t.get_text() for t in ax.get_legend().get_texts()][-1]
      if count <= curves.MANY_RELAUNCHES:  # A dotted line each.
        assert len(marks) == count and legend == 'resumed by a relaunch'
        continue
      (ticks,) = marks
      assert ticks.get_marker() == '|' and ticks.get_linestyle() == 'None'
      np.testing.assert_allclose(ticks.get_xdata(), np.array(steps) / 50)  # 50 steps per epoch.
      assert legend == f'resumed by a relaunch (over {curves.MANY_RELAUNCHES}: ticks)'
