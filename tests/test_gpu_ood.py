"""scripts/gpu_ood.py, the GPU proof of configs/ood_best.py, run end to end on the CPU at a tiny
size: it trains, builds the OOD sets (validation, test, full) with jax_cifar.corrupt, evaluates
the chosen test-time tools in order, and writes a JSON whose numbers add up, a plot and a
full-size-layout submission."""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from jax_cifar import errors, tracking
from jax_cifar.configs import default
from jax_cifar.data import cifar100

from conftest import load_script

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The script's deadlines run on fake clocks here: a deadline bug loops rather than fails, so these
# tests fail after 2 minutes (the longest takes seconds), not after the suite's 10.
pytestmark = pytest.mark.timeout(120)


devdata = load_script('devdata')


def test_the_clean_image_count_applies_eval_limit_to_validation_too(cifar_dir):
  """It had counted 5,000 validation images where evaluate predicts 200, so --small projected
  tools past the deadline and skipped them (an audit)."""
  gpu_ood = load_script('gpu_ood')
  config = default.get_config()
  config.data.val_fraction, config.data.eval_limit = 0.1, 200
  assert gpu_ood.clean_images(str(cifar_dir), config) == 400
  config.data.eval_limit = 0
  assert gpu_ood.clean_images(str(cifar_dir), config) == 15_000


@pytest.mark.slow
@pytest.mark.optimized_xla  # Trains and predicts 4 sets: slower at O0 (129 -> 192 s in a loaded suite).
@pytest.mark.timeout(600)  # Its own subprocess's limit.
def test_small_run_trains_makes_both_sets_and_scores_each_tool(tmp_path):
  rng = np.random.default_rng(0)
  npz = tmp_path / 'tiny.npz'
  np.savez(npz, train_x=rng.integers(0, 256, (600, 32, 32, 3), dtype=np.uint8),
           train_y=np.arange(600) % 100,  # 6 per class: the 0.1 hold-out keeps one of each.
           test_x=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
           test_y=np.arange(100) % 100)
  devdata.write_cifar_folder(tmp_path / 'data', str(npz))
  work = tmp_path / 'work'
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'scripts' / 'gpu_ood.py'), '--data', str(tmp_path / 'data'),
       '--weights', '', '--work', str(work), '--small', '--procs', '1', '--full_set',
       '--tools', 'none,flip', '--set', 'model.name=simple_cnn'],  # Quickest to compile.
      capture_output=True, text=True, timeout=600, check=False,
      env={**os.environ, 'OUT': str(tmp_path / 'out')})  # As on a device call.
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  result = json.loads((work / 'gpu_ood.json').read_text())
  # What comes back from the device: $OUT's copy of the JSON, and the plot beside it.
  assert json.loads((tmp_path / 'out' / 'gpu_ood.json').read_text()) == result
  assert (tmp_path / 'out' / 'gpu_ood.png').stat().st_size > 10_000
  # A 'clean' row (clean accuracy only) comes first if the sets were still being made when
  # training ended, which depends on this machine's load; the rest does not.
  clean = result['eval'].pop('clean', None)
  assert clean is None or (clean['ood_accuracy'] is None and clean['test_accuracy'] > 0), clean
  assert result['train']['rc'] == 0 and result['train']['step'] > 0
  assert not result['train']['stopped_by_deadline']
  # Every tool read the 'best' checkpoint with --weights auto (tests/test_ema.py tests the rule):
  # the step of checkpoints/best/, and the weights that led on validation there.
  (best_step,) = [int(p.name) for p in (work / 'run' / 'checkpoints' / 'best').iterdir()
                  if p.name.isdigit()]
  (best,) = [r for r in tracking.read_metrics(work / 'run')
             if r['step'] == best_step and 'val_accuracy' in r]
  ema = best.get('val_accuracy_ema')
  ema_leads = ema is not None and ema > best['val_accuracy']
  assert (result['step'], result['weights']) == (best_step, 'ema' if ema_leads else 'raw')
  for row in result['eval'].values():
    assert (row['step'], row['weights']) == (result['step'], result['weights'])
  # --tools' order, each on the validation set, then the test set; then the full set.
  assert list(result['eval']) == ['none@val', 'none', 'flip@val', 'flip', 'none@full']
  for name, row in result['eval'].items():
    assert 0 <= row['ood_accuracy'] <= 1 and 0 <= row['test_accuracy'] <= 1, (name, row)
    assert len(row['ood_per_severity']) == 5 and len(row['ood_per_distortion']) == 19
    # The mean over 19 x 5 chunks, whichever way it is grouped.
    assert np.mean(row['ood_per_severity']) == pytest.approx(row['ood_accuracy'])
    assert np.mean(list(row['ood_per_distortion'].values())) == pytest.approx(row['ood_accuracy'])
  assert result['eval']['none@full']['submission_rows'] == 19 * 5 * 20  # --small: 20 per chunk
  # The test sets hold the first test images; the validation set the trainer's hold-out.
  train_y = np.arange(600) % 100
  val_y = train_y[cifar100.stratified_split(train_y, 0.1, 0)[1]]
  for folder, n, first in (('ood', 10, np.arange(100) % 100), ('ood_val', 10, val_y),
                           ('ood_full', 20, np.arange(100) % 100)):
    files = sorted((work / folder / 'all').glob('distortion*.npy'))
    assert len(files) == 19
    assert np.load(files[0], mmap_mode='r').shape == (5 * n, 32, 32, 3)
    labels = np.load(work / folder / 'all' / 'labels.npy')
    assert labels.shape == (5 * n,)
    np.testing.assert_array_equal(labels, np.tile(first[:n], 5))  # Severity blocks of n.
  assert not np.array_equal(val_y[:10], np.arange(10))  # So the two sets' labels differ.
  for name in ('none', 'flip'):  # Same weights and clean splits; other OOD images.
    val, test = result['eval'][f'{name}@val'], result['eval'][name]
    assert (val['val_accuracy'], val['test_accuracy']) == (test['val_accuracy'],
                                                          test['test_accuracy'])
  assert (work / 'gpu_ood_severity.png').stat().st_size > 10_000
  assert '| flip@val |' in proc.stdout  # The table.
  replot = subprocess.run(  # The table and plot again from the JSON alone.
      [sys.executable, str(ROOT / 'scripts' / 'gpu_ood.py'), 'replot',
       str(tmp_path / 'out' / 'gpu_ood.json'), str(tmp_path / 'again.png')],
      capture_output=True, text=True, timeout=120, check=False)
  assert replot.returncode == 0 and '| flip@val |' in replot.stdout, replot.stderr[-2000:]
  assert (tmp_path / 'again.png').stat().st_size > 10_000


@pytest.mark.parametrize('args, message', [
    (['--tools', 'none,shift'], "unknown --tools ['shift']"),
    (['--ood_splits', 'val,tset'], "--ood_splits 'val,tset': one or both of val,test"),
    (['--ood_splits', ','], "--ood_splits ',': one or both of val,test"),
    # The validation OOD set is made from the default hold-out, so the run must train with it.
    (['--set', 'data.val_fraction=0.2'], '--set data.val_fraction/data.split_seed'),
    (['--set', 'data.split_seed=1'], '--set data.val_fraction/data.split_seed'),
    # Without the validation set too: `best` and --weights auto had been chosen on test (a review).
    (['--ood_splits', 'test', '--set', 'data.val_fraction=0'], 'would validate, and `best` and'),
    (['--set', 'train.num_epochs=many'], "--set: could not convert string to float: 'many'"),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, args, message):
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'scripts' / 'gpu_ood.py'), '--data', str(tmp_path), '--weights',
       '', '--work', str(tmp_path / 'w'), *args],
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert not (tmp_path / 'w').exists()


def _fake_evaluation(monkeypatch, gpu_ood, calls, kwargs_seen=None):
  """evaluate_tools with evaluate() and the run's config replaced: records what it read, when
  (and, in `kwargs_seen`, the other arguments of each call)."""
  from jax_cifar.config_validation import ConfigError  # pylint: disable=import-outside-toplevel
  kwargs_seen = [] if kwargs_seen is None else kwargs_seen
  from jax_cifar import evaluate as ev  # pylint: disable=import-outside-toplevel
  from jax_cifar import workdir, xla_options  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(xla_options, 'enable_compilation_cache', lambda: None)
  monkeypatch.setattr(workdir, 'run_config', lambda run: None)
  monkeypatch.setattr(gpu_ood, 'clean_images', lambda data, config: 100)
  monkeypatch.setattr(gpu_ood.ood, 'check_distortion_dir', lambda folder: [])

  def evaluate(config, run, checkpoint, ood_dir=None, submission_csv=None, **kwargs):
    del config, run
    if submission_csv and not ood_dir:  # What the real evaluate refuses (tested below).
      raise ConfigError('--submission needs --ood_dir')
    calls.append(('evaluate', ood_dir))
    kwargs_seen.append({'checkpoint': checkpoint, 'submission_csv': submission_csv, **kwargs})
    return {'step': 3, 'weights': 'raw', 'test_accuracy': 0.5, 'val_accuracy': 0.4,
            'ood_accuracy': 0.3 if ood_dir else None,
            'ood_images_per_sec': 10.0 if ood_dir else None}
  monkeypatch.setattr(ev, 'evaluate', evaluate)


def test_the_full_set_is_waited_for_only_after_every_other_number_is_saved(monkeypatch, tmp_path):
  """It had waited for the whole 950,000-image set before evaluating anything, so a call cut
  short while the set was being made returned no accuracy at all (an audit)."""
  gpu_ood = load_script('gpu_ood')
  calls, saved, results = [], [], {}
  _fake_evaluation(monkeypatch, gpu_ood, calls)
  args = argparse.Namespace(tools=['none', 'flip'], data='', deadline_s=1e9)

  def full_set():  # Not made before the deadline.
    calls.append(('wait for the full set',))
    return None
  gpu_ood.evaluate_tools(args, tmp_path, {'test': tmp_path / 'ood'}, full_set, results,
                         lambda: saved.append(json.loads(json.dumps(results))))
  assert calls == [('evaluate', str(tmp_path / 'ood'))] * 2 + [('wait for the full set',)]
  assert list(results) == ['none', 'flip', 'none@full']
  assert results['none']['ood_accuracy'] == 0.3  # The partial (small-set) OOD number...
  assert 'none' in saved[0] and 'none@full' not in saved[-2]  # ...saved before the wait.
  assert results['none@full'] == {'skipped': 'OOD set not ready before the deadline'}
  assert '| none@full | OOD set not ready before the deadline |' in gpu_ood.table(
      {'epochs': 1, 'args': {'ood_limit': 10}, 'eval': results,
       'train': {'step': 5, 'seconds': 1.0, 'images_per_sec_median': 9.0,
                 'stopped_by_deadline': False}})


def test_a_tool_is_projected_at_the_slowest_rate_seen_so_far(monkeypatch, tmp_path):
  """Projections had used the first evaluation's rate only: a --bn_adapt row (an extra pass and
  its compile) then ended 50 s past the deadline (an audit)."""
  gpu_ood = load_script('gpu_ood')
  calls, results = [], {}
  _fake_evaluation(monkeypatch, gpu_ood, calls)
  from jax_cifar import evaluate as ev  # pylint: disable=import-outside-toplevel
  plain = ev.evaluate

  def evaluate(*args, adapt_bn=False, **kwargs):  # bn_adapt's OOD files: 10x slower per view.
    return {**plain(*args, **kwargs), 'ood_images_per_sec': 1.0 if adapt_bn else 10.0}
  monkeypatch.setattr(ev, 'evaluate', evaluate)
  monkeypatch.setattr(gpu_ood, 'clean_images', lambda data, config: 1000)
  # bn_adapt runs first (1 / (1 * 2) s per image and view), then 'none' (1 / 10 s; projected at
  # 30 + 1.2 * 1000 * 1 / 2 = 630 s). At the last rate seen, none's, 'flip' (2 views) would be
  # projected at 30 + 1.2 * 1000 * 2 / 10 = 270 s; at the slowest, bn_adapt's, at 1,230 s.
  args = argparse.Namespace(tools=['bn_adapt', 'none', 'flip'], data='',
                            deadline_s=time.monotonic() - gpu_ood.T0 + 1000)
  gpu_ood.evaluate_tools(args, tmp_path, {'test': tmp_path / 'ood'}, None, results, lambda: None)
  assert 'ood_accuracy' in results['bn_adapt'] and 'ood_accuracy' in results['none']
  assert results['flip'] == {'skipped': 'projected 1230s past the deadline'}, results['flip']
  assert gpu_ood.projected_seconds(1000, 2, True, None) == 60  # Compiles only, adaptation's too.


def test_sets_not_ready_after_training_give_clean_accuracy_first(monkeypatch, tmp_path):
  gpu_ood = load_script('gpu_ood')
  calls, results = [], {}
  _fake_evaluation(monkeypatch, gpu_ood, calls)
  args = argparse.Namespace(tools=['none'], data='', deadline_s=1e9)
  gpu_ood.evaluate_tools(args, tmp_path, {'test': lambda: calls.append(('wait',)) or tmp_path},
                         None, results, lambda: None, clean_first=True)
  assert calls == [('evaluate', None), ('wait',), ('evaluate', str(tmp_path))]
  assert list(results) == ['clean', 'none']
  assert results['clean']['test_accuracy'] == 0.5 and results['clean']['ood_accuracy'] is None


def test_the_clean_row_asks_for_no_submission_and_its_compile_projects_no_later_row(
    monkeypatch, tmp_path):
  """The 'clean' row had passed a submission without an OOD set, which the real evaluate refuses,
  so it was always an error; fixed, its seconds (mostly its compile) had become the rate every
  later row was projected at, skipping them all (an audit)."""
  from jax_cifar import evaluate as ev  # pylint: disable=import-outside-toplevel
  with pytest.raises(errors.ConfigError, match='--submission needs --ood_dir'):  # The real one.
    ev.evaluate(default.get_config(), str(tmp_path), 'best',
                submission_csv=str(tmp_path / 's.csv'))
  gpu_ood = load_script('gpu_ood')
  calls, seen, results = [], [], {}
  _fake_evaluation(monkeypatch, gpu_ood, calls, seen)
  clock = [1000.0]
  monkeypatch.setattr(gpu_ood, 'T0', clock[0])
  monkeypatch.setattr(gpu_ood, 'time', types.SimpleNamespace(monotonic=lambda: clock[0]))
  plain = ev.evaluate

  def evaluate(*args, ood_dir=None, **kwargs):  # The clean row: 100 s, mostly compiling.
    clock[0] += 5 if ood_dir else 100
    return plain(*args, ood_dir=ood_dir, **kwargs)
  monkeypatch.setattr(ev, 'evaluate', evaluate)
  # At the clean row's 100 s per 100 images, 'none' would be projected at 30 + 1.2 * 100 = 150 s,
  # past the 200 s deadline at 100 s; at the compile allowance alone (30 s) it runs.
  args = argparse.Namespace(tools=['none'], data='', deadline_s=200)
  gpu_ood.evaluate_tools(args, tmp_path, {'test': tmp_path / 'ood'}, None, results, lambda: None,
                         clean_first=True)
  assert list(results) == ['clean', 'none'] and 'error' not in results['clean'], results
  assert results['none']['ood_accuracy'] == 0.3, results['none']
  assert [k['submission_csv'] for k in seen] == [None, str(tmp_path.parent / 'submission_none.csv')]


def test_each_tool_runs_evaluate_with_its_own_flags_on_the_best_checkpoint(monkeypatch, tmp_path):
  """The names in the table are what was run: a tool's --tta/--bn_adapt/--tent, 'best' with
  --weights auto, and a submission of its own."""
  gpu_ood = load_script('gpu_ood')
  from jax_cifar.evaluation import tta  # pylint: disable=import-outside-toplevel
  # The projections count views as evaluate predicts them.
  assert {m: len(tta.view_table(m)) for m in gpu_ood.VIEWS} == gpu_ood.VIEWS == {
      'none': 1, 'flip': 2, 'shifts': 18}
  calls, seen, results = [], [], {}
  _fake_evaluation(monkeypatch, gpu_ood, calls, seen)
  expected = {'none': ('none', False, False, 'probs'), 'shifts': ('shifts', False, False, 'probs'),
              'shifts+bn_adapt': ('shifts', True, False, 'probs'),
              'bn_adapt': ('none', True, False, 'probs'), 'flip': ('flip', False, False, 'probs'),
              'tent': ('none', True, True, 'probs'), 'shifts+tent': ('shifts', True, True, 'probs'),
              'shifts_logp': ('shifts', False, False, 'log_probs'),
              'shifts_logp+bn_adapt': ('shifts', True, False, 'log_probs')}
  args = argparse.Namespace(tools=list(gpu_ood.TOOLS), data='', deadline_s=1e9)
  gpu_ood.evaluate_tools(args, tmp_path, {'test': tmp_path / 'ood'}, None, results, lambda: None)
  assert list(results) == list(expected)
  assert {name: (k['tta_mode'], k['adapt_bn'], k['tent'] is not None, k['tta_average'])
          for name, k in zip(results, seen)} == expected
  assert {(k['checkpoint'], k['weights']) for k in seen} == {('best', 'auto')}
  assert len({k['submission_csv'] for k in seen}) == len(expected)


def test_a_failing_tool_costs_no_other_number(monkeypatch, tmp_path):
  gpu_ood = load_script('gpu_ood')
  calls, results = [], {}
  _fake_evaluation(monkeypatch, gpu_ood, calls)
  from jax_cifar import evaluate as ev  # pylint: disable=import-outside-toplevel
  plain = ev.evaluate

  def evaluate(*args, tta_mode='none', **kwargs):
    if tta_mode == 'flip':
      raise RuntimeError('boom')
    return plain(*args, tta_mode=tta_mode, **kwargs)
  monkeypatch.setattr(ev, 'evaluate', evaluate)
  args = argparse.Namespace(tools=['flip', 'none'], data='', deadline_s=1e9)
  gpu_ood.evaluate_tools(args, tmp_path, {'test': tmp_path / 'ood'}, tmp_path / 'full', results,
                         lambda: None)
  assert results['flip'] == {'error': 'RuntimeError: boom'}
  assert results['none']['ood_accuracy'] == results['none@full']['ood_accuracy'] == 0.3


def test_results_go_to_OUT_by_default_and_a_cut_short_json_still_prints(monkeypatch, tmp_path):
  """The device call brings back only $OUT; the documented command had written elsewhere."""
  gpu_ood = load_script('gpu_ood')
  monkeypatch.setenv('OUT', str(tmp_path))
  assert gpu_ood.default_json_out() == str(tmp_path / 'gpu_ood.json')
  monkeypatch.delenv('OUT')
  assert gpu_ood.default_json_out() == ''
  # The JSON as it is written before training ends, then before any evaluation.
  partial = {'epochs': 30, 'args': {'ood_limit': 500}}
  assert 'training did not finish' in gpu_ood.table(partial)
  partial['train'] = {'step': 5, 'seconds': 1.0, 'images_per_sec_median': 9.0,
                      'stopped_by_deadline': True}
  assert 'STOPPED AT DEADLINE' in gpu_ood.table(partial)


def test_the_probe_fits_epochs_at_its_median_speed_after_the_first_row_and_start_up(tmp_path):
  """The first row's speed includes the compile; the start-up is not training time."""
  gpu_ood = load_script('gpu_ood')
  (tmp_path / 'metrics.jsonl').write_text(''.join(
      json.dumps({'step': s, 'images_per_sec': v}) + '\n'
      for s, v in ((10, 500.0), (20, 4000.0), (30, 5000.0))))
  args = argparse.Namespace(train_deadline_s=330, startup_s=30)
  # 0.85 x (330 - 30) s at the median 4,500 img/s over 45,000 images: 25.5 epochs (the faster
  # middle row's 5,000 had planned 28, which overran the training deadline at the median speed).
  assert gpu_ood.epochs_that_fit(args, tmp_path) == 25
  assert gpu_ood.epochs_that_fit(args, tmp_path / 'none') is None
  # Three rows after the first: the median 4,400 plans 24.9 -> 24 epochs, their mean 4,467 would
  # plan 25 (a test audit: with two rows the mean is the median).
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write(json.dumps({'step': 40, 'images_per_sec': 4400.0}) + '\n')
  assert gpu_ood.epochs_that_fit(args, tmp_path) == 24


def test_a_run_of_other_epochs_than_the_probe_plans_for_a_cold_compile(tmp_path):
  """The schedule's length is a constant of the compiled step: a run of fewer epochs than the
  probe (the config's 30) compiles its step again, and its epochs are planned with that start-up
  (the probe's warm cache had been counted on: a review)."""
  gpu_ood = load_script('gpu_ood')
  (tmp_path / 'metrics.jsonl').write_text(''.join(
      json.dumps({'step': s, 'images_per_sec': v}) + '\n' for s, v in ((10, 500.0), (20, 4500.0))))
  args = argparse.Namespace(train_deadline_s=330, startup_s=30, cold_startup_s=90)
  assert gpu_ood.epochs_that_fit(args, tmp_path, planned=30) == 25  # No config.json: as before.
  (tmp_path / 'config.json').write_text(json.dumps({'train': {'num_epochs': 30}}))
  # 25 epochs fit with the warm start, but they are not the probe's 30: 0.85 x (330 - 90) s at
  # 4,500 img/s over 45,000 images is 20.4 epochs.
  assert gpu_ood.epochs_that_fit(args, tmp_path, planned=30) == 20
  (tmp_path / 'config.json').write_text(json.dumps({'train': {'num_epochs': 25}}))
  assert gpu_ood.epochs_that_fit(args, tmp_path, planned=30) == 25  # The probe's program.
  # 22 planned: not the probe's 25 either, so 20 (the warm start would have let all 22 run).
  assert gpu_ood.epochs_that_fit(args, tmp_path, planned=22) == 20
  # 40 planned, a probe of 22: 25 fit warm but not as the probe's program, 20 cold; the probe's
  # own 22 fit warm, and are more than 20 (a review).
  (tmp_path / 'config.json').write_text(json.dumps({'train': {'num_epochs': 22}}))
  assert gpu_ood.epochs_that_fit(args, tmp_path, planned=40) == 22


def test_a_tool_is_projected_from_the_time_already_spent(monkeypatch, tmp_path):
  """After training, most of the budget is gone: 520 s of 540 leave no room for a 30 s compile."""
  gpu_ood = load_script('gpu_ood')
  calls, results = [], {}
  _fake_evaluation(monkeypatch, gpu_ood, calls)
  monkeypatch.setattr(gpu_ood, 'T0', time.monotonic() - 520)
  args = argparse.Namespace(tools=['none'], data='', deadline_s=540)
  gpu_ood.evaluate_tools(args, tmp_path, {'test': tmp_path / 'ood'}, None, results, lambda: None)
  assert results == {'none': {'skipped': 'projected 30s past the deadline'}} and not calls


CHILD = """
import json, pathlib, signal, sys, time
run = pathlib.Path(sys.argv[1])
def stop(*_):
  run.mkdir(parents=True, exist_ok=True)
  (run / 'metrics.jsonl').write_text(json.dumps({'step': 3, 'train_loss': 1.0}) + '\\n')
  sys.exit(75)
signal.signal(signal.SIGTERM, stop)
time.sleep(60)
"""


def test_training_is_stopped_with_sigterm_at_its_own_deadline(monkeypatch, tmp_path):
  """At --train_deadline_s (not the evaluation's --deadline_s) the trainer gets SIGTERM, which
  saves and exits 75: here a stand-in that does just that."""
  gpu_ood = load_script('gpu_ood')
  popen = subprocess.Popen
  monkeypatch.setattr(gpu_ood.subprocess, 'Popen', lambda cmd, **kw: popen(
      [sys.executable, '-c', CHILD, cmd[cmd.index('--workdir') + 1]], **kw))
  args = argparse.Namespace(train_deadline_s=time.monotonic() - gpu_ood.T0 + 4, deadline_s=1e9)
  result = gpu_ood.train(args, tmp_path / 'run', [])
  assert result['stopped_by_deadline'] and result['rc'] == 75, result
  assert result['seconds'] < 30 and result['step'] == 3, result


def test_replot_of_a_file_of_several_runs_gives_each_its_table_and_plot(tmp_path):
  """docs/gpu_ood_h200_noise_blur.json holds two runs under their names: replot had raised a
  KeyError on it (a figure review)."""
  out = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'gpu_ood.py'), 'replot',
                        str(ROOT / 'docs' / 'gpu_ood_h200_noise_blur.json'), str(tmp_path / 'p.png')],
                       capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith(
      'report_recipe:\nconfigs/ood_best.py of 2026-11-30, 15 epochs: 5265 steps in 284s (median '
      "3,273 img/s); 'best' checkpoint (step 4212)"), out.stdout
  assert ('\nnoise_blur:\nconfigs/ood_best.py of 2026-11-30 --set augment.noise_prob=0.3'
          in out.stdout)
  # OUT.png is all of them on one axis (the usage line's promise: only OUT_NAME.png had been
  # written, unsaid; a figure review), and each file written is named.
  assert sorted(p.name for p in tmp_path.iterdir()) == ['p.png', 'p_noise_blur.png',
                                                        'p_report_recipe.png']
  assert out.stdout.rstrip().endswith(f"wrote {tmp_path / 'p.png'} (every run)"), out.stdout
  assert f"wrote {tmp_path / 'p_noise_blur.png'}\n" in out.stdout

