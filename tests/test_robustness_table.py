"""scripts/robustness_table.py's command line and per-row overrides (its runs are the trainer's
and evaluate's, tested elsewhere)."""

import json
import os
import pathlib

import numpy as np
import pytest

from conftest import is_png, load_script

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def table():
  return load_script('robustness_table')


def _values(flags):
  return dict(f.removeprefix('--config.').split('=', 1) for f in flags)


def test_the_3x_control_row_triples_the_epochs_however_they_were_set(table):
  base = table.base_config('configs/smoke.py').train.num_epochs
  args = table.parse_args([])
  assert float(_values(table.overrides(args, 'report_3x', 0))['train.num_epochs']) == 3 * base
  args = table.parse_args(['--epochs', '2'])
  assert float(_values(table.overrides(args, 'report_3x', 0))['train.num_epochs']) == 6
  assert float(_values(table.overrides(args, 'report', 0))['train.num_epochs']) == 2
  args = table.parse_args(['--set', 'train.num_epochs=1.5'])  # --set wins over --epochs ...
  assert float(_values(table.overrides(args, 'report', 1))['train.num_epochs']) == 1.5
  # ... and the control row still gets three times the budget of the others.
  assert float(_values(table.overrides(args, 'report_3x', 1))['train.num_epochs']) == 4.5


def test_every_row_sets_its_seed_and_the_data_folder(table, tmp_path):
  args = table.parse_args(['--data_dir', str(tmp_path), '--set', 'model.width=8'])
  values = _values(table.overrides(args, 'augmix', 3))
  assert values['seed'] == '3' and values['data.dir'] == str(tmp_path)
  assert values['augment.augmix'] == 'True' and values['model.width'] == '8'


def test_ood_limit_zero_is_the_whole_test_set_and_batches_stay_positive(table):
  assert table.parse_args(['--ood_limit', '0']).eval_batch_size == 500
  assert table.parse_args(['--ood_limit', '200']).eval_batch_size == 200
  with pytest.raises(SystemExit):
    table.parse_args(['--ood_limit', '-1'])


def test_paths_are_the_callers_though_children_start_in_the_repository(table, tmp_path,
                                                                        monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'mine.py').write_text('')
  args = table.parse_args(['--out', 'runs/r', '--data_dir', 'data', '--config', 'mine.py'])
  assert args.out == str(tmp_path / 'runs' / 'r') and args.data_dir == str(tmp_path / 'data')
  assert args.config == str(tmp_path / 'mine.py')
  # A config path that is not the caller's is one of the repository's (the default).
  args = table.parse_args([])
  assert args.config == 'configs/smoke.py' and (ROOT / args.config).is_file()
  assert os.path.isabs(args.out)


def _records(table):
  evals = [{'row': row, 'mode': mode, 'seed': 0, 'val_accuracy': 0.5, 'test_accuracy': 0.5,
            'ood_accuracy': acc,
            'ood_per_severity': [acc] * 5}
           for row, acc in (('report', 0.3), ('augmix', 0.4)) for mode in ('none', 'bn_adapt')]
  trains = {(table.ROWS[r][0], 0): {'train_seconds': 1.0} for r in ('report', 'augmix')}
  rows = {r: (table.ROWS[r][0], table.ROWS[r][2]) for r in ('report', 'augmix')}
  return evals, trains, rows


def test_every_tta_row_is_in_the_table_and_the_plot(table, tmp_path, monkeypatch):
  """--tta_rows other than the best and report rows were evaluated but shown nowhere (an audit)."""
  report = load_script('robustness_report')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  figures = []
  monkeypatch.setattr(plt, 'close', figures.append)
  evals, trains, rows = _records(table)
  summary = report.summarise(evals)
  text = report.markdown(summary, trains, evals, rows, 'report', 0, ('augmix',))
  assert '| augmix | bn_adapt | 50.0 | 40.0 |' in text, text
  assert '| augmix | bn_adapt |' not in report.markdown(summary, trains, evals, rows, 'report', 0)
  report.plot(evals, list(rows), 'report', 0, tmp_path / 'p.png', 't', ('augmix',))
  assert is_png(tmp_path / 'p.png')
  right = figures[0].axes[1]
  assert sorted(line.get_label() for line in right.get_lines()) == [
      'augmix: bn_adapt', 'augmix: none', 'report: bn_adapt', 'report: none']
  shown = {line.get_label(): list(line.get_ydata()) for line in right.get_lines()}
  assert shown['augmix: bn_adapt'] == pytest.approx([50.0] + [40.0] * 5)
  report.plot(evals, list(rows), 'report', 0, tmp_path / 'p.png', 't')  # (Not asked for: not drawn.)
  assert not any(line.get_label().startswith('augmix') for line in figures[1].axes[1].get_lines())


def _seeds_out_of_order(table):
  """'report' on three seeds, given 2, 0, 1, each number different, so that a swapped column,
  another mean or another order shows; and test-time records on seeds 0 and 1."""
  per_seed = {0: (.20, .40, .25, [.4, .3, .2, .1, .0]), 1: (.60, .50, .30, [.5, .4, .3, .2, .1]),
              2: (.10, .30, .20, [.3, .2, .1, .0, .0])}
  evals = [{'row': 'report', 'mode': 'none', 'seed': s, 'val_accuracy': v, 'test_accuracy': t,
            'ood_accuracy': o, 'ood_per_severity': sev}
           for s in (2, 0, 1) for v, t, o, sev in [per_seed[s]]]
  evals += [{'row': 'report', 'mode': 'flip', 'seed': s, 'val_accuracy': .99,
             'test_accuracy': .45 + s / 10, 'ood_accuracy': .35, 'ood_per_severity': [.35] * 5}
            for s in (0, 1)]
  run = table.ROWS['report'][0]
  trains = {(run, s): {'train_seconds': float(2 * s + 1)} for s in (0, 1, 2)}
  return evals, trains, {'report': (run, table.ROWS['report'][2])}


def test_each_column_of_the_tables_holds_its_own_number(table):
  report = load_script('robustness_report')
  evals, trains, rows = _seeds_out_of_order(table)
  summary = report.summarise(evals)
  assert summary['report|none']['seeds'] == [0, 1, 2]
  np.testing.assert_allclose(summary['report|none']['ood_per_severity'],
                             [.4, .3, .2, .1, .1 / 3])  # Per severity, over the seeds.
  text = report.markdown(summary, trains, evals, rows, 'report', 0)
  assert (f'| report (best on val) | {rows["report"][1]} | 3 | 30.0 (20.0 / 60.0 / 10.0) '
          '| 40.0 (40.0 / 50.0 / 30.0) | 25.0 (25.0 / 30.0 / 20.0) '
          '| 40.0 | 30.0 | 20.0 | 10.0 | 3.3 | 3 |') in text.splitlines(), text
  tools = text.split('Test-time tools on seed 0', 1)[1]
  assert '| report | flip | 45.0 | 35.0 | 35.0 | 35.0 | 35.0 | 35.0 | 35.0 |' in tools, tools
  assert '55.0' not in tools and '99.0' not in tools  # Not seed 1's; not the val number.


def test_the_plot_shows_each_rows_seed_range_and_every_tta_row(table, tmp_path, monkeypatch):
  """The left panel's bars span the seeds (min to max); the right panel has every --tta_rows
  row: zip() with six colours had dropped the seventh and eighth."""
  report = load_script('robustness_report')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  figures = []
  monkeypatch.setattr(plt, 'close', figures.append)
  evals, _, _ = _seeds_out_of_order(table)
  extra = [f'row{i}' for i in range(7)]
  evals += [{'row': r, 'mode': 'flip', 'seed': 0, 'val_accuracy': .5, 'test_accuracy': .5,
             'ood_accuracy': .3, 'ood_per_severity': [.3] * 5} for r in extra]
  report.plot(evals, ['report'], 'report', 0, tmp_path / 'p.png', 't', tuple(extra))
  left, right = figures[0].axes
  (bars,) = [c for c in left.containers]
  line, _, (segments,) = bars.lines[0], bars.lines[1], bars.lines[2]
  np.testing.assert_allclose(line.get_ydata(), [40, 40, 30, 20, 10, 10 / 3])
  spans = [(seg[0][1], seg[1][1]) for seg in segments.get_segments()]
  np.testing.assert_allclose(spans[0], (30, 50))  # Clean test: the seeds' 30 .. 50.
  labels = right.get_legend_handles_labels()[1]
  assert labels == ['report: none', 'report: flip'] + [f'{r}: flip' for r in extra], labels


def test_the_table_says_how_the_best_row_was_chosen(table):
  report = load_script('robustness_report')
  evals, trains, rows = _records(table)
  summary = report.summarise(evals)
  text = report.markdown(summary, trains, evals, rows, 'augmix', 0)
  assert '| augmix (best on val) | + AugMix' in text and '| report (' not in text, text
  text = report.markdown(summary, trains, evals, rows, 'augmix', 0, (), 'chosen with --best_row')
  assert '| augmix (chosen with --best_row) |' in text, text
  # Ranked on --seeds 0 while the table also averages headline seed 1 (a review):
  assert table.label_of_best('', [0], [0, 1]) == 'best on val of seed(s) 0'
  assert table.label_of_best('', [0, 1], [0]) == 'best on val'
  assert table.label_of_best('augmix', [0], [0, 1]) == 'chosen with --best_row'


def test_every_run_sets_every_robustness_switch_so_any_base_config_works(table):
  """rrc_prob, jpeg_prob, erasing_prob and cutmix_alpha had come from the base config (an audit),
  so a base that turned one on would have changed every row."""
  from jax_cifar.configs import default  # pylint: disable=import-outside-toplevel
  switches = {f'augment.{k}' for k in default.get_config().augment
              if (k.endswith('_prob') and k != 'switch_prob')  # (mixup vs CutMix, both off)
              or k in ('augmix', 'augmix_jsd_weight', 'mixup_alpha', 'cutmix_alpha', 'policy')
              } | {'ema.decay'}
  for name, run in table.RUNS.items():
    assert switches <= set(run), (name, sorted(switches - set(run)))


def test_the_val_number_is_the_evaluated_steps_for_the_weights_that_ranked_it(table, tmp_path):
  """A row's val number had been the run's best raw accuracy over all steps, while its 'best'
  step was ranked by the EMA: the row was chosen on weights that were never evaluated (an audit)."""
  rows = [{'step': 7, 'val_accuracy': 0.01, 'val_accuracy_ema': 0.03},
          {'step': 10, 'train_loss': 4.0},
          {'step': 14, 'val_accuracy': 0.02, 'val_accuracy_ema': 0.025}]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  assert table.val_at(tmp_path, 7, 'raw') == 0.01 and table.val_at(tmp_path, 7, 'ema') == 0.03
  assert table.val_at(tmp_path, 10, 'raw') is None
  evals = [{'row': 'photo', 'mode': 'none', 'val_accuracy': 0.01},
           {'row': 'photo', 'mode': 'bn_adapt', 'val_accuracy': 0.9},  # Test-time rows: not these.
           {'row': 'report', 'mode': 'none', 'val_accuracy': 0.015}]
  assert table.pick_best(['photo', 'report'], evals) == 'report'
  with pytest.raises(SystemExit, match=r'no raw validation accuracy at step 10, the step evaluated'):
    table.val_of(tmp_path, 10, 'raw')
  # A record of an earlier version (the run's best raw number) is read at its evaluated step.
  (tmp_path / 'train' / 'photo_ema_s0').mkdir(parents=True)
  (tmp_path / 'metrics.jsonl').rename(tmp_path / 'train' / 'photo_ema_s0' / 'metrics.jsonl')
  old = {'row': 'photo_ema', 'seed': 0, 'step': 7, 'weights': 'ema', 'val_accuracy': 0.02}
  assert table.with_val(old, tmp_path)['val_accuracy'] == 0.03


def test_a_base_without_validation_images_is_refused_before_any_work(table):
  """data.val_fraction=0 had made the trainer validate, and the script choose rows, on TEST."""
  table.check_validation(table.parse_args([]))  # The default base config holds some out.
  for argv in (['--set', 'data.val_fraction=0'], ['--set', 'data.val_fraction=0.0']):
    with pytest.raises(SystemExit, match='on the TEST split'):
      table.check_validation(table.parse_args(argv))


def test_an_out_folder_of_other_settings_is_refused_naming_them(table, tmp_path):
  """A rerun with other settings had resumed the runs under a changed schedule, or with
  --skip_existing reported the old numbers under the new settings (an audit)."""
  table.check_settings(table.parse_args(['--epochs', '1']), tmp_path)
  table.check_settings(table.parse_args(['--epochs', '1', '--rows', 'report', '--seeds', '3']),
                       tmp_path)  # More rows or seeds: the same settings.
  with pytest.raises(SystemExit, match=r"--epochs 1\.0 -> 3\.0; --ood_limit 200 -> 20; "
                                       r"--eval_batch_size 200 -> 20\): use another --out"):
    table.check_settings(table.parse_args(['--epochs', '3', '--ood_limit', '20']), tmp_path)


def test_set_paths_are_the_callers_and_other_values_are_kept(table, tmp_path, monkeypatch):
  """--set model.pretrained=weights/resnet50 had been read from the repository (the children's
  folder): not found, or another checkpoint of that name (an audit)."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  values = table.set_values(['model.pretrained=weights/r50', 'model.init_from=runs/a:best',
                             'data.dir=~/data', 'model.width=8', 'data.tfds_data_dir=/abs'])
  assert values == {'model.pretrained': str(tmp_path / 'weights' / 'r50'),
                    'model.init_from': str(tmp_path / 'runs' / 'a:best'),
                    'data.dir': str(tmp_path / 'home' / 'data'), 'model.width': '8',
                    'data.tfds_data_dir': '/abs'}


@pytest.mark.parametrize('argv, message', [
    (['--tta_rows', 'best,reprot'], 'reprot'), (['--seeds', '0,a'], '--seeds must be'),
    (['--headline_seeds', ''], '--headline_seeds must be'), (['--config', 'nope.py'], 'no such')])
def test_bad_flags_are_refused_before_any_work(table, argv, message, capsys):
  """--tta_rows had failed with a KeyError after every row was trained; bad seed lists with a
  traceback (an audit)."""
  with pytest.raises(SystemExit):
    table.parse_args(argv)
  assert message in capsys.readouterr().err


def test_rows_evaluated_outside_rows_are_reported(table):
  assert table.shown_rows(['report'], 'photo_ema', ['photo_ema', 'augmix']) == [
      'report', 'photo_ema', 'augmix']


def test_a_row_has_one_colour_in_both_panels(table, tmp_path, monkeypatch):
  """With best=augmix, augmix was orange on the left and green on the right, where green on the
  left was another row (each panel had its own colours: a review)."""
  report = load_script('robustness_report')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  figures = []
  monkeypatch.setattr(plt, 'close', figures.append)
  evals = [{'row': row, 'mode': mode, 'seed': 0, 'val_accuracy': .5, 'test_accuracy': .5,
            'ood_accuracy': .3, 'ood_per_severity': [.3] * 5}
           for row in ('report', 'augmix', 'augmix_jsd') for mode in ('none', 'flip')]
  report.plot(evals, ['report', 'augmix', 'augmix_jsd'], 'augmix', 0, tmp_path / 'p.png', 't')
  _check_one_colour_each(figures[0], 3)
  # As many rows as robustness_table's default (11): tab10's cycle had given two rows one colour.
  rows = list(table.ROWS)
  assert len(rows) > 10
  evals = [{'row': row, 'mode': 'none', 'seed': 0, 'val_accuracy': .5, 'test_accuracy': .5,
            'ood_accuracy': .3, 'ood_per_severity': [.3] * 5} for row in rows]
  report.plot(evals, rows, rows[0], 0, tmp_path / 'p.png', 't')
  _check_one_colour_each(figures[1], len(rows))


def _check_one_colour_each(fig, n_rows: int) -> None:
  """Each row's lines share one colour across both panels, and no two rows share one."""
  left, right = fig.axes
  colour = {}
  for line in right.get_lines():
    colour.setdefault(line.get_label().split(':')[0], set()).add(line.get_color())
  for container, label in zip(left.containers, left.get_legend_handles_labels()[1]):
    row = label.split(' ')[0].rstrip(',')
    mine = {container.lines[0].get_color()}
    assert colour.get(row, mine) == mine, (row, colour)
    colour[row] = mine
  assert all(len(cs) == 1 for cs in colour.values()), colour
  assert len(colour) == n_rows and len({c for cs in colour.values() for c in cs}) == n_rows


def test_the_figures_title_names_a_config_inside_the_repository_by_its_relative_path():
  """An absolute --config had filled the figure's title (a figure review)."""
  shown = load_script('robustness_table')._shown  # pylint: disable=protected-access
  root = pathlib.Path(__file__).resolve().parent.parent
  assert shown(str(root / 'configs' / 'smoke.py')) == 'configs/smoke.py'
  assert [shown(c) for c in ('configs/smoke.py', '/elsewhere/x.py', 'jax_cifar:smoke')] == [
      'configs/smoke.py', '/elsewhere/x.py', 'jax_cifar:smoke']
