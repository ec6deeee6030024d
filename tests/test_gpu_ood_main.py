"""scripts/gpu_ood.py's main() at full size, its training, corrupt processes and evaluations
replaced: which sets it makes and at what size, what the trainer gets, when the clean row comes
first, and where the results land (test_gpu_ood.py runs it end to end at a tiny size)."""

import json
import sys

import pytest

from conftest import load_script

# Fake clocks and jobs: a deadline bug loops rather than fails (test_gpu_ood.py says more).
pytestmark = pytest.mark.timeout(120)


class _Job:
  """A corrupt process stand-in: running (poll None) or ended with `rc`."""

  def __init__(self, running: bool, rc: int = 0):
    self.running, self.returncode = running, rc

  def poll(self):
    return None if self.running else self.returncode

  def kill(self):
    self.running, self.returncode = False, -9

  def wait(self):
    return self.returncode


def _main(monkeypatch, tmp_path, *argv, rc=0, checkpoints=True, running=False):
  """gpu_ood.main() with training, the corrupt processes and the evaluations replaced: what it
  started, with which overrides, and what the evaluation was given."""
  gpu_ood = load_script('gpu_ood')
  seen = {'corrupt': [], 'overrides': None, 'evaluate': None}

  def start_corrupt(data, out, limit, procs, nice=0, split='test'):
    seen['corrupt'].append({'out': out.name, 'limit': limit, 'procs': procs, 'nice': nice,
                            'split': split})
    return [_Job(running)]

  def train(args, run, overrides):
    seen['overrides'] = overrides
    if checkpoints:
      (run / 'checkpoints').mkdir(parents=True)
    return {'rc': rc, 'stopped_by_deadline': False, 'seconds': 1.0, 'step': 5,
            'images_per_sec_median': 9.0, 'val': None}

  def evaluate_tools(args, run, sets, full_set, results, save, clean_first=False):
    seen['evaluate'] = {'sets': list(sets), 'full': full_set is not None,
                        'clean_first': clean_first}
    results['none'] = {'step': 5, 'weights': 'raw', 'test_accuracy': 0.5, 'val_accuracy': 0.4,
                       'ood_accuracy': 0.3, 'ood_images_per_sec': 10.0, 'seconds': 1.0,
                       'ood_per_severity': [0.3] * 5}
    save()
  monkeypatch.setattr(gpu_ood, 'start_corrupt', start_corrupt)
  monkeypatch.setattr(gpu_ood, 'train', train)
  monkeypatch.setattr(gpu_ood, 'evaluate_tools', evaluate_tools)
  monkeypatch.setattr(gpu_ood, 'merge_corrupt', lambda jobs, out, deadline_s=None: None)
  monkeypatch.setattr(sys, 'argv', ['gpu_ood.py', '--data', str(tmp_path / 'data'), '--weights',
                                    str(tmp_path / 'w'), '--work', str(tmp_path / 'work'),
                                    '--procs', '4', *argv])
  gpu_ood.main()
  return seen


def test_the_full_gpu_run_makes_every_set_at_its_size_and_evaluates_them(monkeypatch, tmp_path):
  """Not --small: the 950,000-image set is all 10,000 test images per chunk, niced, with twice the
  processes; the small sets have --ood_limit images, validation first; the trainer gets the
  converted weights and the data; results also land in $OUT (what a device call brings back)."""
  monkeypatch.setenv('OUT', str(tmp_path / 'out'))
  seen = _main(monkeypatch, tmp_path, '--full_set', '--ood_splits', 'test,val')
  assert seen['corrupt'] == [
      {'out': 'ood_val', 'limit': 1000, 'procs': 2, 'nice': 0, 'split': 'val'},
      {'out': 'ood', 'limit': 1000, 'procs': 2, 'nice': 0, 'split': 'test'},
      {'out': 'ood_full', 'limit': 0, 'procs': 8, 'nice': 10, 'split': 'test'}]
  assert seen['overrides'][:3] == [f'--config.model.pretrained={tmp_path / "w"}',
                                   f'--config.data.dir={tmp_path / "data"}',
                                   '--config.data.download=false']
  assert not any('image_size' in o or 'limit' in o for o in seen['overrides'])  # (Not --small.)
  assert seen['evaluate'] == {'sets': ['val', 'test'], 'full': True, 'clean_first': False}
  saved = json.loads((tmp_path / 'work' / 'gpu_ood.json').read_text())
  assert json.loads((tmp_path / 'out' / 'gpu_ood.json').read_text()) == saved
  assert (saved['step'], saved['weights'], saved['epochs']) == (5, 'raw', 30)
  assert seen['overrides'][-1] == '--config.train.num_epochs=30'
  assert (tmp_path / 'out' / 'gpu_ood.png').stat().st_size > 10_000


@pytest.mark.parametrize('argv, epochs', [
    (['--set', 'train.num_epochs=15'], 15), (['--max_epochs', '20'], 20),
    (['--max_epochs', '20', '--set', 'train.num_epochs=12.5'], 12.5),
    (['--max_epochs', '40'], 30)])  # configs/ood_best.py's 30, not more.
def test_the_epochs_trained_are_the_fewest_asked_and_the_label_says_them(monkeypatch, tmp_path,
                                                                         argv, epochs):
  """--set train.num_epochs=15 had been labelled 30 epochs, and --max_epochs 20 trained the
  config's 30 under a 20-epoch label (a review)."""
  monkeypatch.setenv('OUT', str(tmp_path / 'out'))
  seen = _main(monkeypatch, tmp_path, *argv)
  assert seen['overrides'][-1] == f'--config.train.num_epochs={epochs:g}'
  assert json.loads((tmp_path / 'work' / 'gpu_ood.json').read_text())['epochs'] == epochs


def test_a_run_sharing_the_gpu_makes_no_set_and_clean_comes_first_while_sets_are_made(
    monkeypatch, tmp_path):
  assert not _main(monkeypatch, tmp_path / 'a', '--ood_from', str(tmp_path / 'other'),
                   '--full_set')['corrupt']
  seen = _main(monkeypatch, tmp_path / 'b', running=True)  # Sets still being made.
  assert seen['evaluate']['clean_first'] and len(seen['corrupt']) == 2


def test_a_failed_training_is_evaluated_only_if_it_saved_a_checkpoint(monkeypatch, tmp_path):
  assert _main(monkeypatch, tmp_path / 'a', rc=1)['evaluate'] is not None
  with pytest.raises(SystemExit, match=r'^error: training failed \(rc 1\) before its first '):
    _main(monkeypatch, tmp_path / 'b', rc=1, checkpoints=False)
