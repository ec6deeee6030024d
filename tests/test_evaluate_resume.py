"""A stopped, killed or failed `evaluate --ood_dir` / `--cifar100c_dir` resumes after the files it
had finished (jax_cifar/evaluation/kept_predictions.py): same CSV and numbers as a run that was
never stopped, only the unfinished files predicted again, and nothing used that does not match.
Signals and SIGKILL from the command line: test_evaluate_faults.py; several processes:
test_multiprocess_eval.py."""

import errno
import json
import os
import shutil

import numpy as np
import pytest

import jax_cifar
from _tiny_run import config as _config
from jax_cifar import atomic_folder, code_digest, evaluate, interrupt
from jax_cifar.data import ood
from jax_cifar.evaluation import inference, kept_predictions
from jax_cifar.training import trainer

N_OOD = 10  # Images per distortion file (two per severity).


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 1-step synthetic run; 19 labelled distortion files; 2 CIFAR-100-C files; the reference
  evaluation's results and CSV (never stopped)."""
  base = tmp_path_factory.mktemp('resume')
  trainer.train_and_evaluate(_config(), str(base / 'run'))
  rng = np.random.default_rng(0)
  for folder, names in (('ood', [ood.distortion_file(i)[:-4] for i in range(ood.NUM_DISTORTIONS)]),
                        ('c', ['gaussian_noise', 'fog'])):
    (base / folder).mkdir()
    for name in names:
      np.save(base / folder / f'{name}.npy', rng.integers(0, 256, (N_OOD, 32, 32, 3), np.uint8))
    np.save(base / folder / 'labels.npy', rng.integers(0, 100, N_OOD).astype(np.uint8))
  reference = _evaluate(base, base / 'reference.csv')
  (base / 'reference.json').write_text(json.dumps(reference))
  return base


def _evaluate(run, csv, **kwargs):
  return evaluate.evaluate(_config(), str(run / 'run'), 'latest', ood_dir=str(run / 'ood'),
                           submission_csv=str(csv), cifar100c_dir=str(run / 'c'), **kwargs)


class _Crash(Exception):
  """A failure after a file was finished (a full disk, a lost GPU)."""


def _crash_after(monkeypatch, event: str, index: int) -> None:
  def hook(e, i):
    if (e, i) == (event, index):
      raise _Crash(f'{e} {i}')
  monkeypatch.setattr(interrupt, 'at_event', hook)


def _predicted(monkeypatch) -> list[str]:
  """The names of the files (and splits) Predictor.run is asked to predict, in order."""
  seen, run = [], inference.Predictor.run

  def counted(self, images, desc, *args, **kwargs):
    seen.append(desc)
    return run(self, images, desc, *args, **kwargs)

  monkeypatch.setattr(inference.Predictor, 'run', counted)
  return seen


def _distortions(seen):
  return [d for d in seen if d.startswith('distortion')]


def _same_numbers(result, reference):
  for key in ('ood_accuracy', 'ood_per_distortion', 'cifar100c', 'cifar100c_mean_accuracy_all',
              'test_accuracy'):
    assert result[key] == reference[key], key


def test_a_failed_evaluation_resumes_after_its_finished_files(run, tmp_path, monkeypatch, capsys):
  partial = run / 'run' / 'partial_latest'
  with monkeypatch.context() as m:
    _crash_after(m, 'ood_file', 6)  # Distortions 00-06 finished, then a failure.
    with pytest.raises(_Crash):
      _evaluate(run, tmp_path / 'sub.csv')
  assert not (tmp_path / 'sub.csv').exists()
  # Said with the failure (a full disk's error line had not said it): a review.
  assert capsys.readouterr().err.endswith(
      f'note: the predictions of 9 finished files are kept in {partial}: the same command '
      'resumes after them\n')
  kept = sorted(p.name for p in partial.iterdir())
  assert kept == sorted(['kept.json', 'c_fog.npy', 'c_gaussian_noise.npy',
                         *[f'ood_distortion{i:02d}.npy' for i in range(7)]])

  seen = _predicted(monkeypatch)
  result = _evaluate(run, tmp_path / 'sub.csv')
  assert _distortions(seen) == [f'distortion{i:02d}' for i in range(7, 19)]
  assert 'fog' not in seen and 'gaussian_noise' not in seen  # CIFAR-100-C's, kept too.
  assert result['ood_files_resumed'] == 7
  assert (tmp_path / 'sub.csv').read_bytes() == (run / 'reference.csv').read_bytes()
  _same_numbers(result, json.loads((run / 'reference.json').read_text()))
  assert not partial.exists()  # Removed once the results are written.


@pytest.mark.parametrize('key, value', [
    ('model.image_size', 64), ('model.normalize', 'imagenet'), ('model.dtype', 'bfloat16'),
    ('model.width', 32), ('augment.crop_mode', 'resize'), ('ema.decay', 0.9),
    ('train.eval_batch_size', 16)])
def test_each_model_setting_a_prediction_depends_on_is_in_the_kept_files_key(tmp_path, key,
                                                                             value):
  """Every model.* key (and the others a prediction depends on) changes the key the kept labels
  are matched by; keys of where the data lives or of logging do not (a mutation audit: keeping
  only the listed names had dropped every model.* key, and a resume with another image size
  would have reused the labels predicted at the first)."""
  def key_of(config):
    return kept_predictions.settings({'checkpoint': 'latest'}, config, tmp_path, [])
  base, other, same = _config(), _config(), _config()
  section, name = key.split('.')
  assert getattr(other[section], name) != value
  setattr(other[section], name, value)
  same.data.dir, same.train.log_every_steps = str(tmp_path / 'elsewhere'), 7
  assert key_of(other)['prediction_config'] != key_of(base)['prediction_config']
  assert key_of(same) == key_of(base)


def test_other_settings_or_changed_inputs_start_over(run, tmp_path, monkeypatch, capsys):
  ood_dir = tmp_path / 'ood'
  shutil.copytree(run / 'ood', ood_dir)
  evaluate_here = lambda **kw: evaluate.evaluate(
      _config(), str(run / 'run'), 'latest', ood_dir=str(ood_dir),
      submission_csv=str(tmp_path / 'sub.csv'), **kw)
  with monkeypatch.context() as m:
    _crash_after(m, 'ood_file', 3)
    with pytest.raises(_Crash):
      evaluate_here()
    with pytest.raises(_Crash):  # Another tool: its own folder, its own files.
      evaluate_here(tta_mode='flip')
  assert (run / 'run' / 'partial_latest_tta-flip').is_dir()

  seen = _predicted(monkeypatch)
  result = evaluate_here(tta_mode='flip')  # Its kept files match: resumed.
  assert _distortions(seen) == [f'distortion{i:02d}' for i in range(4, 19)]
  assert result['ood_files_resumed'] == 4
  assert not (run / 'run' / 'partial_latest_tta-flip').exists()
  assert (run / 'run' / 'partial_latest').is_dir()  # The other tool's stay.

  # Inside one folder (the same tag): another config, a step saved again (a relaunch after a
  # crash retrains it: other weights, same step number), other jax-cifar code (an upgrade between
  # the stop and the resume: the version string had been the key, and it never changes between
  # releases), each starts over; the same files named by a relative path resume, and so do
  # config keys that cannot change a prediction (where the data lives, data.eval_limit, logging:
  # any key had discarded the kept files, an evaluate review).
  # A copy of the run (cp -r: new folder times, the same save) resumes too (a longevity review).
  step_dir = next((run / 'run' / 'checkpoints' / 'latest').iterdir())
  for change in ('config', 'step', 'code', None, 'data', 'copied'):
    with monkeypatch.context() as m:
      _crash_after(m, 'ood_file', 3)
      with pytest.raises(_Crash):
        evaluate_here()
    seen.clear()
    config = _config()
    if change == 'config':
      config.train.eval_batch_size = 16
    if change == 'data':
      config.data.eval_limit, config.train.log_every_steps = 7, 3
      config.data.dir = str(tmp_path / 'elsewhere')
    if change == 'step':  # Saved again: orbax's commit time in the step's metadata.
      metadata = json.loads((step_dir / '_CHECKPOINT_METADATA').read_text())
      metadata['commit_timestamp_nsecs'] += 1
      (step_dir / '_CHECKPOINT_METADATA').write_text(json.dumps(metadata))
    if change == 'copied':
      os.utime(step_dir, ns=(2, 2))
    with monkeypatch.context() as m:
      m.chdir(tmp_path)
      if change == 'code':
        m.setattr(code_digest, 'code_version', lambda: f'{jax_cifar.__version__}+0123456789ab')
      evaluate.evaluate(config, str(run / 'run'), 'latest', ood_dir='ood',
                        submission_csv=str(tmp_path / 'sub.csv'))
    assert len(_distortions(seen)) == (19 if change in ('config', 'step', 'code') else 15), change
    assert (tmp_path / 'sub.csv').read_bytes() == (run / 'reference.csv').read_bytes()

  with monkeypatch.context() as m:
    _crash_after(m, 'ood_file', 3)
    with pytest.raises(_Crash):
      evaluate_here()
  seen.clear()
  os.utime(ood_dir / 'distortion10.npy', ns=(1, 1))  # Touched: the contents may have changed.
  result = evaluate_here()
  assert len(_distortions(seen)) == 19 and 'ood_files_resumed' not in result
  assert ('other settings or input files (other input files (path, size or time)): not used, '
          'starting over; they are removed when this evaluation finishes its first file'
          in capsys.readouterr().err)
  assert (tmp_path / 'sub.csv').read_bytes() == (run / 'reference.csv').read_bytes()
  assert not (run / 'run' / 'partial_latest').exists()


def test_a_damaged_kept_file_is_predicted_again(run, tmp_path, monkeypatch, capsys):
  partial = run / 'run' / 'partial_latest'
  with monkeypatch.context() as m:
    _crash_after(m, 'ood_file', 3)
    with pytest.raises(_Crash):
      _evaluate(run, tmp_path / 'sub.csv')
  np.save(partial / 'ood_distortion01.npy', np.zeros(N_OOD, np.int32))  # Valid, but not its own.
  (partial / 'ood_distortion02.npy').write_bytes(b'\x93NUMPY')  # Cut short.

  seen = _predicted(monkeypatch)
  result = _evaluate(run, tmp_path / 'sub.csv')
  assert _distortions(seen) == ['distortion01', 'distortion02', *[f'distortion{i:02d}'
                                                                 for i in range(4, 19)]]
  assert result['ood_files_resumed'] == 2
  err = capsys.readouterr().err
  for name in ('ood_distortion01', 'ood_distortion02'):
    assert f'{partial / name}.npy is damaged or does not match kept.json' in err
  assert 'OOD: 4 of 19 files were predicted by a stopped evaluation' in err
  assert (tmp_path / 'sub.csv').read_bytes() == (run / 'reference.csv').read_bytes()
  assert not partial.exists()


def test_a_folder_that_takes_no_files_costs_only_the_resumption(tmp_path, capsys):
  """A file where the folder should be: one note, then the evaluation goes on keeping nothing
  (a full disk after some files: test_after_a_failed_keep_...)."""
  (tmp_path / 'blocked').write_text('a file, not a folder')
  kept = kept_predictions.KeptPredictions(tmp_path / 'blocked' / 'partial_best', {'a': 1})
  assert capsys.readouterr().err == (f'note: {tmp_path / "blocked" / "partial_best"}: Not a '
                                     'directory; this evaluation keeps no finished files\n')
  kept.keep('ood_distortion00', np.arange(5, dtype=np.int32))
  assert kept.stop_note() == '' and kept.get('ood_distortion00', 5) is None
  assert not capsys.readouterr().err  # Said once.
  kept.clear()
  assert (tmp_path / 'blocked').read_text() == 'a file, not a folder'

  kept = kept_predictions.KeptPredictions(tmp_path / 'partial_best', {'a': 1})
  kept.keep('ood_distortion00', np.arange(5))
  assert kept.stop_note() == (f'; the predictions of 1 finished file are kept in '
                              f'{tmp_path / "partial_best"}: the same command resumes after them')
  kept.close()  # As the process's exit: the next run reads what it kept.
  again = kept_predictions.KeptPredictions(tmp_path / 'partial_best', {'a': 1})
  np.testing.assert_array_equal(again.get('ood_distortion00', 5), np.arange(5))
  assert again.get('ood_distortion00', 6) is None  # Another number of images: not this file's.
  again.clear()
  assert kept_predictions.KeptPredictions(tmp_path / 'partial_best', {'a': 2}).count(
      ['ood_distortion00']) == 0  # Other settings.
  assert not (tmp_path / 'partial_best').exists()


def test_other_settings_name_what_differs_and_keep_the_files_until_their_first_file(tmp_path,
                                                                                  capsys):
  """Files of other settings had been removed as the new evaluation started, before it had
  predicted anything, by a note that did not say what differed (an evaluate review): a quick
  check with another --ood_dir, stopped early, lost a stopped run's hours."""
  folder = tmp_path / 'partial_best'
  first_settings = {'prediction_config': 1, 'step': 5, 'files': [1], 'tta': 'flip'}
  other_settings = {**first_settings, 'files': [2], 'tta': 'none'}
  first = kept_predictions.KeptPredictions(folder, dict(first_settings))
  first.keep('ood_distortion00', np.arange(5))
  first.close()
  other = kept_predictions.KeptPredictions(folder, dict(other_settings))
  assert capsys.readouterr().err == (
      f'note: {folder} holds the predictions of a stopped evaluation with other settings or input '
      'files (other input files (path, size or time), --tta): not used, starting over; they are '
      'removed when this evaluation finishes its first file\n')
  assert other.get('ood_distortion00', 5) is None and other.stop_note() == ''
  other.close()  # Stopped before its first file: the first evaluation's files are still there.
  first = kept_predictions.KeptPredictions(folder, dict(first_settings))
  np.testing.assert_array_equal(first.get('ood_distortion00', 5), np.arange(5))
  first.close()
  other = kept_predictions.KeptPredictions(folder, dict(other_settings))
  other.keep('ood_distortion07', np.arange(5))  # Its first file: the others' go.
  assert sorted(p.name for p in folder.iterdir()) == ['kept.json', 'ood_distortion07.npy']
  other.close()
  (folder / kept_predictions.RECORD).write_text('{')  # A damaged record: said so.
  kept_predictions.KeptPredictions(folder, {'step': 5}).close()
  assert 'files (its kept.json cannot be read): not used' in capsys.readouterr().err
  settings = {'prediction_config': 1, 'step': 5}  # The same settings, no list of files.
  (folder / kept_predictions.RECORD).write_text(json.dumps({'settings': settings, 'done': 3}))
  kept_predictions.KeptPredictions(folder, settings).close()
  assert 'files (its kept.json is damaged): not used' in capsys.readouterr().err
  # A record of the jax-cifar before PREDICTION_KEYS: its 'config' was a digest of every key.
  old = {'config': 7, 'step': 5}
  (folder / kept_predictions.RECORD).write_text(json.dumps({'settings': old, 'done': {}}))
  kept_predictions.KeptPredictions(folder, settings).close()
  assert 'files (a record of an older jax-cifar): not used' in capsys.readouterr().err


def test_a_second_evaluation_with_the_same_tag_keeps_nothing_and_disturbs_nothing(tmp_path,
                                                                                  capsys):
  """Two at once (the same command twice, or --ood_dir and --cifar100c_dir runs of one tag) had
  removed each other's temp files, folder and record (a review)."""
  first = kept_predictions.KeptPredictions(tmp_path / 'partial_best', {'a': 1})
  first.keep('ood_distortion00', np.arange(5))
  second = kept_predictions.KeptPredictions(tmp_path / 'partial_best', {'a': 2})
  assert (f'another evaluation with the same settings is using it (pid {os.getpid()} on '
          in capsys.readouterr().err)  # The holder, as the workdir's lock names it.
  second.keep('ood_distortion01', np.zeros(5))
  second.clear()
  assert second.get('ood_distortion00', 5) is None and second.stop_note() == ''
  assert sorted(p.name for p in (tmp_path / 'partial_best').iterdir()) == [
      'kept.json', 'ood_distortion00.npy']
  first.clear()
  assert not (tmp_path / 'partial_best').exists() and not list(tmp_path.iterdir())


def test_after_a_failed_keep_the_earlier_files_are_named_and_cleared(tmp_path, capsys,
                                                                   monkeypatch):
  """A full disk after some files: they are still kept (the stop line names them, the next run
  resumes them) and the folder still goes once the evaluation ends (a review). A killed writer's
  temp file is reaped by the next write of that file."""
  kept = kept_predictions.KeptPredictions(tmp_path / 'partial_best', {'a': 1})
  kept.keep('ood_distortion00', np.arange(5))
  stale = tmp_path / 'partial_best' / f'.ood_distortion01.npy.tmp-{atomic_folder.HOST}-999999-0123abcd'
  stale.write_bytes(b'half')  # (pid 999999: no such process.)
  kept.keep('ood_distortion01', np.arange(5))
  assert not stale.exists()

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(kept_predictions.atomic_folder, 'write_file', full)
  kept.keep('ood_distortion02', np.arange(5))
  assert ('No space left on device (disk full)): files finished from now on are not kept'
          in capsys.readouterr().err)
  kept.keep('ood_distortion03', np.arange(5))  # Said once.
  assert not capsys.readouterr().err
  assert 'the predictions of 2 finished files are kept' in kept.stop_note()
  monkeypatch.undo()
  kept.clear()  # The evaluation ended: the folder goes, even after the failure.
  assert not (tmp_path / 'partial_best').exists() and not list(tmp_path.iterdir())


def test_figures_of_workdir_dot_name_the_run(run, monkeypatch, drawn):
  """`evaluate --workdir .` had titled its figures " (latest): ..." (the name of '.' is empty)."""
  monkeypatch.chdir(run / 'run')
  evaluate.evaluate(_config(), '.', 'latest', ood_dir=str(run / 'ood'),
                    submission_csv=str(run / 'dot.csv'))
  titles = [fig.axes[0].get_title() for fig in drawn]
  assert len(titles) == 2 and all(t.startswith('run (latest, step ') for t in titles), titles
