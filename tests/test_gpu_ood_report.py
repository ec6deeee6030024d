"""scripts/gpu_ood_report.py: the GPU proof's table (for the docs) and plot from gpu_ood.json."""

import pytest

from conftest import load_script


def _ood_result():
  def row(val, test, ood, sev, ips, s):
    return {'val_accuracy': val, 'test_accuracy': test, 'ood_accuracy': ood,
            'ood_per_severity': sev, 'ood_images_per_sec': ips, 'seconds': s}
  return {'epochs': 30, 'step': 1234, 'weights': 'ema', 'args': {'ood_limit': 500},
          'train': {'step': 1500, 'seconds': 600.4, 'images_per_sec_median': 2500.0,
                    'stopped_by_deadline': False},
          'eval': {'none@val': row(0.61234, 0.6, 0.45678, [0.6, 0.55, 0.5, 0.4, 0.3], 3456.7, 12.3),
                   'tent': row(None, 0.59, 0.5, [0.7, 0.6, 0.5, 0.4, 0.3], None, 1.0),
                   'x': {'error': 'boom'}, 'y': {'skipped': 'no time'}}}


def test_the_gpu_table_puts_each_number_in_its_column():
  """The GPU run's table (docs) from gpu_ood.json: percentages at their precision in their
  columns (a mutation audit: the test accuracy in the validation column, fractions for
  percentages and swapped img/s and seconds all passed); an img/s that was never measured is
  '-', not 0."""
  report = load_script('gpu_ood_report')
  lines = report.table(_ood_result()).splitlines()
  assert lines[0] == ("configs/ood_best.py, 30 epochs: 1500 steps in 600s (median 2,500 img/s); "
                      "'best' checkpoint (step 1234), ema weights; OOD = 500 images x 19 x 5 "
                      "(TOOL: test images, TOOL@val: validation images)")
  assert lines[1] == '| test-time tool | clean val | clean test | OOD | OOD sev 1..5 | img/s | s |'
  assert lines[3:] == [
      '| none@val | 61.23 | 60.00 | 45.68 | 60.0 / 55.0 / 50.0 / 40.0 / 30.0 | 3457 | 12 |',
      '| tent | - | 59.00 | 50.00 | 70.0 / 60.0 / 50.0 / 40.0 / 30.0 | - | 1 |',
      '| x | boom | | | | | |', '| y | no time | | | | | |']


def test_the_gpu_plot_starts_each_line_at_the_clean_accuracy_of_its_own_split(tmp_path,
                                                                               monkeypatch):
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  report = load_script('gpu_ood_report')
  saved = []
  monkeypatch.setattr(Figure, 'savefig', lambda fig, path, **kw: saved.append(fig))
  report.plot(_ood_result(), tmp_path / 'p.png')
  (ax,) = saved[0].axes
  lines = {l.get_label(): l for l in ax.get_lines()}
  assert set(lines) == {'none@val (OOD 45.7)', 'tent (OOD 50.0)'}
  val, test = lines['none@val (OOD 45.7)'], lines['tent (OOD 50.0)']
  assert list(val.get_xdata()) == [0, 1, 2, 3, 4, 5]
  assert list(val.get_ydata()) == pytest.approx([61.234, 60, 55, 50, 40, 30])
  assert list(test.get_ydata()) == pytest.approx([59, 70, 60, 50, 40, 30])
  assert (val.get_linestyle(), test.get_linestyle()) == ('--', '-')
  assert ax.get_title() == 'configs/ood_best.py, 30 epochs (600 s of training)'


def test_a_json_cut_short_prints_its_table_and_draws_no_empty_plot(tmp_path):
  """replot of a run cut before training ended had raised KeyError ('eval', then 'train'), and
  one with no OOD numbers drew an empty axis (a review)."""
  report = load_script('gpu_ood_report')
  cut = {'epochs': 30, 'args': {'ood_limit': 500, 'set': []}}
  assert report.plot(cut, tmp_path / 'a.png') is False and not (tmp_path / 'a.png').exists()
  assert report.table(cut) == 'configs/ood_best.py, 30 epochs: training did not finish'
  no_ood = {**_ood_result(), 'eval': {'y': {'skipped': 'no time'}}}
  assert report.plot(no_ood, tmp_path / 'b.png') is False and not (tmp_path / 'b.png').exists()
  untrained = {**_ood_result()}
  del untrained['train']
  assert report.plot(untrained, tmp_path / 'c.png') is True and (tmp_path / 'c.png').exists()


def test_the_title_and_table_name_the_set_overrides(tmp_path, monkeypatch):
  """Both had said configs/ood_best.py whatever --set changed (a review)."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  report = load_script('gpu_ood_report')
  result = _ood_result()
  result['args']['set'] = ['augment.noise_prob=0', 'model.dtype=float32']
  saved = []
  monkeypatch.setattr(Figure, 'savefig', lambda fig, path, **kw: saved.append(fig))
  report.plot(result, tmp_path / 'p.png')
  recipe = 'configs/ood_best.py --set augment.noise_prob=0 model.dtype=float32, 30 epochs'
  assert saved[0].axes[0].get_title() == f'{recipe} (600 s of training)'
  assert report.table(result).startswith(f'{recipe}: 1500 steps in 600s')
  # The day's recipe where the run recorded it (configs/ood_best.py changes with jax-cifar: a run of
  # an earlier one had been titled as today's, the diff review); gpu_ood.py records it.
  result['date'] = '2026-11-30'
  assert report.table(result).startswith(
      'configs/ood_best.py of 2026-11-30 --set augment.noise_prob=0 model.dtype=float32, 30 epochs')
  # Several runs on one axis: each one's recipe a line of the title, the JSON's `about` under it.
  saved.clear()
  other = {**result, 'args': {**result['args'], 'set': []}}
  assert report.plot_runs({'a': result, 'b': other}, tmp_path / 'q.png', about='two runs of a day')
  (ax,) = saved[0].axes
  assert ax.get_title() == (f'a: {recipe.replace(".py", ".py of 2026-11-30", 1)}\n'
                            'b: configs/ood_best.py of 2026-11-30, 30 epochs')
  assert [t.get_text() for t in ax.texts] == ['two runs of a day']
  assert sorted(l.get_label() for l in ax.get_lines()) == ['a: tent (OOD 50.0)',
                                                           'b: tent (OOD 50.0)']  # (No @val.)
