"""The report's table of the hyper-parameters that differ between runs, from small fake run
folders (no training)."""

import json

from _fake_runs import BASE_CONFIG, fake_run, section
from jax_cifar.evaluation import report


def test_hyperparameter_table_lists_only_what_differs(tmp_path):
  a = {**BASE_CONFIG, 'optim': {'lr': 0.1, 'schedule': 'cosine', 'name': 'sgd'},
       'augment': {'mixup_alpha': 0.2}}
  b = {**BASE_CONFIG, 'optim': {'lr': 0.003, 'schedule': 'cosine', 'name': 'adam|w'}, 'seed': 1}
  fake_run(tmp_path / 'a', 1.0, config=a)
  fake_run(tmp_path / 'b', 1.0, config=b)
  out = tmp_path / 'out'
  assert report.main([str(tmp_path / 'a'), str(tmp_path / 'b'), '--out', str(out)]) == 0
  table = section((out / 'summary.md').read_text(), 'Hyper-parameters that differ')
  rows = {l.split(' | ')[0].strip('| '): l for l in table.splitlines() if l.startswith('| ')}
  assert table.strip().splitlines()[0] == '| hyper-parameter | a | b |'
  assert set(rows) == {'hyper-parameter', '---', 'augment.mixup_alpha', 'optim.lr', 'optim.name',
                       'seed'}
  assert rows['optim.name'] == '| optim.name | sgd | adam\\|w |'  # A '|' would split the cell.
  assert rows['optim.lr'] == '| optim.lr | 0.1 | 0.003 |'
  # Absent in b's config.json: its default (what a version before the key did), marked.
  assert rows['augment.mixup_alpha'] == '| augment.mixup_alpha | 0.2 | 0.0* |'
  assert rows['seed'] == '| seed | 0 | 1 |'
  assert "\\* not in that run's config.json: the default (for a key added since" in table
  for same in ('optim.schedule', 'model.name', 'model.width', 'train.batch_size'):
    assert same not in table


def test_a_key_an_older_run_lacks_is_no_difference_where_the_other_has_its_default(tmp_path):
  """Keys added since an older run (model.remat, train.grad_accum_steps, ...) had been listed as
  differences ('-') against the same, default, value (an upgrade audit)."""
  new = {**BASE_CONFIG, 'model': {**BASE_CONFIG['model'], 'remat': False},
         'train': {**BASE_CONFIG['train'], 'grad_accum_steps': 1}}
  fake_run(tmp_path / 'old', 1.0, config=BASE_CONFIG)
  fake_run(tmp_path / 'new', 1.0, config=new)
  assert report.config_differences([report.load_run(tmp_path / d) for d in ('old', 'new')]) == {}
  new['train']['grad_accum_steps'] = 4
  (tmp_path / 'new' / 'config.json').write_text(json.dumps(new))
  runs = [report.load_run(tmp_path / d) for d in ('old', 'new')]
  assert report.config_differences(runs) == {'train.grad_accum_steps': [('1', True), ('4', False)]}
  assert '| train.grad_accum_steps | 1* | 4 |' in report.hyperparameter_table(runs)
  # A section left out as unreadable ("train": null) has no values: '-', not defaults.
  (tmp_path / 'old' / 'config.json').write_text(json.dumps({**BASE_CONFIG, 'train': None}))
  runs = [report.load_run(tmp_path / d) for d in ('old', 'new')]
  assert report.config_differences(runs)['train.grad_accum_steps'] == [(None, False), ('4', False)]
