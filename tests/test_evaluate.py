"""Evaluation with a trained run: flip TTA, the OOD CSV and CIFAR-100-C end to end, and the
command line. Metrics and eval JSON without a model: test_eval_results.py; bad inputs and
faults: test_evaluate_faults.py."""

import csv
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jax_cifar import checkpoints, config_validation, evaluate, interrupt, parallel
from jax_cifar.evaluation import ood_sets
from jax_cifar.evaluation import submission
from jax_cifar.training import trainer
from jax_cifar import state as state_lib
from jax_cifar.evaluation import inference
from jax_cifar.data import cifar100, ood
from jax_cifar.state import predict_step

import _tiny_run

ROOT = pathlib.Path(__file__).resolve().parent.parent
N_OOD = 10  # Images per distortion file (two per severity).

CONFIG_FILE = '''
from jax_cifar.configs import default

def get_config():
  c = default.get_config()
  c.data.source = 'synthetic'
  c.data.synthetic_size = 256
  c.data.val_fraction = 0.25
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'cifar', 4
  c.train.batch_size = 32
  c.train.eval_batch_size = 64
  c.train.num_epochs = 1
  c.train.max_steps = 2
  return c
'''


def _config():
  return _tiny_run.config(CONFIG_FILE)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 2-step synthetic run, its config file, and 19 small distortion files."""
  base = tmp_path_factory.mktemp('eval')
  (base / 'tiny_config.py').write_text(CONFIG_FILE)
  trainer.train_and_evaluate(_config(), str(base / 'run'))
  rng = np.random.default_rng(0)
  ood_dir = base / 'ood'
  ood_dir.mkdir()
  for i in range(ood.NUM_DISTORTIONS):
    np.save(ood_dir / ood.distortion_file(i), rng.integers(0, 256, (N_OOD, 32, 32, 3), np.uint8))
  c_dir = base / 'c'
  c_dir.mkdir()
  for name in ('gaussian_noise', 'fog'):
    np.save(c_dir / f'{name}.npy', rng.integers(0, 256, (N_OOD, 32, 32, 3), np.uint8))
  np.save(c_dir / 'labels.npy', rng.integers(0, 100, N_OOD).astype(np.uint8))
  return base


def _reference_logits(workdir, images):
  """Logits from a plain jit of predict_step: no shardings, no batching, no padding."""
  config = _config()
  state, graphdef, _ = state_lib.restore(config, str(workdir), 'latest', parallel.make_mesh())
  return np.asarray(jax.jit(lambda s, x: predict_step(s.params, s.batch_stats, x,
                                                      graphdef=graphdef, config=config))(state, images))


# ---------------------------------------------------------------------------------------------
# The real model: flip TTA and the command line end to end
# ---------------------------------------------------------------------------------------------
def test_flip_tta_is_the_mean_softmax_of_image_and_mirror(run):
  config = _config()
  images = np.random.default_rng(3).integers(0, 256, (70, 32, 32, 3), np.uint8)  # 2 batches.
  with jax.default_matmul_precision('highest'):  # GPUs default to TF32 (1e-3 relative) otherwise.
    predictor, _ = inference.load_predictor(config, str(run / 'run'), 'latest', tta_flip=True)
    got = predictor.run(images, desc='tta')
    logits = _reference_logits(run / 'run', np.concatenate([images, images[:, :, ::-1]]))
  p = jax.nn.softmax(logits[:70]) + jax.nn.softmax(logits[70:])
  np.testing.assert_allclose(np.exp(got), np.asarray(p) / 2, rtol=1e-4, atol=1e-6)
  plain = np.asarray(jax.nn.softmax(logits[:70]))
  assert np.abs(np.exp(got) - plain).max() > 1e-4  # TTA really changed something.


def test_views_the_run_never_trained_on_are_said_from_its_own_config(run, tmp_path, caplog):
  """load_predictor (so evaluate) warns of mirrored or shifted views that the run's training
  (its config.json, not the config given, which need only predict alike) never showed it."""
  def unseen(workdir, mode):
    caplog.clear()
    with caplog.at_level('WARNING'):
      inference.load_predictor(_config(), str(workdir), 'latest', tta_mode=mode)
    return [r.getMessage() for r in caplog.records if 'it never saw' in r.getMessage()]

  assert unseen(run / 'run', 'shifts') == []  # Crops of padding 4 and flips.
  workdir = shutil.copytree(run / 'run', tmp_path / 'run')
  record = json.loads((workdir / 'config.json').read_text())
  record['augment'].update(flip=False, crop_padding=0)
  (workdir / 'config.json').write_text(json.dumps(record))
  assert [m.split(':')[0] for m in unseen(workdir, 'shifts')] == ['--tta shifts'] * 2
  assert unseen(workdir, 'flip') == [
      '--tta flip: this run trained with augment.flip=False, so the mirrored views are images it '
      'never saw']
  assert unseen(workdir, 'none') == []


def test_evaluate_command_prints_json_and_writes_exact_submission(run):
  workdir, out_csv = run / 'run', run / 'out' / 'sub.csv'
  out_csv.parent.mkdir(exist_ok=True)
  proc = subprocess.run(
      [sys.executable, '-m', 'jax_cifar.evaluate', '--config', str(run / 'tiny_config.py'),
       '--workdir', str(workdir), '--checkpoint', 'latest', '--ood_dir', str(run / 'ood'),
       '--submission', str(out_csv), '--cifar100c_dir', str(run / 'c')],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert 0.0 <= result['test_accuracy'] <= 1.0 and result['test_count'] == 256
  # A small set's CSV is no Kaggle submission: said before the work (an audit: said nothing).
  rows = ood.NUM_DISTORTIONS * N_OOD
  assert (f'{N_OOD // 5} images per severity, so sub.csv will have {rows:,} rows; the course\'s '
          "Kaggle set has 10,000 per severity (950,000 rows)") in proc.stderr, proc.stderr[-2000:]
  assert {'test_top5_accuracy', 'test_ece', 'val_accuracy', 'cifar100c_mean_accuracy_all'} <= set(result)

  detail = json.loads((workdir / 'eval_latest.json').read_text())
  assert len(detail['test_per_class_accuracy']) == 100
  assert len(detail['test_per_superclass_accuracy']) == 20
  for png in ('confusion_latest.png', 'cifar100c_latest.png'):
    assert (workdir / png).read_bytes()[:4] == b'\x89PNG'

  # The CSV: header, ids in distortion/severity/index order, labels = argmax of the model.
  with open(out_csv, newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['id', 'label'] and len(rows) == 1 + ood.NUM_DISTORTIONS * N_OOD
  images = np.concatenate([np.load(run / 'ood' / ood.distortion_file(d))
                           for d in range(ood.NUM_DISTORTIONS)])
  logits = _reference_logits(workdir, images)
  k = 1
  for d in range(ood.NUM_DISTORTIONS):
    for s in range(1, 6):
      for i in range(N_OOD // 5):
        assert rows[k][0] == f'distortion{d:02d}_{s}_{i}'
        assert int(rows[k][1]) == int(np.argmax(logits[k - 1])), rows[k]
        k += 1
  assert submission.check_submission(out_csv, run / 'ood').startswith('OK')

  # CIFAR-100-C: the table is the model's accuracy per severity block.
  c_images = np.load(run / 'c' / 'fog.npy')
  c_labels = np.load(run / 'c' / 'labels.npy').astype(int)
  c_pred = _reference_logits(workdir, c_images).argmax(1)
  np.testing.assert_allclose(detail['cifar100c']['fog'],
                             (c_pred == c_labels).reshape(5, -1).mean(1))


def test_a_later_evaluation_keeps_the_numbers_an_earlier_one_wrote(run, tmp_path, capsys):
  """eval_<tag>.json: a clean-only evaluation of the same step keeps the CIFAR-100-C numbers an
  earlier one computed; a file of another step is kept beside it, not overwritten."""
  workdir = tmp_path / 'run'
  shutil.copytree(run / 'run', workdir)
  first = evaluate.evaluate(_config(), str(workdir), 'latest', cifar100c_dir=str(run / 'c'))
  path = workdir / 'eval_latest.json'
  assert 'cifar100c' in json.loads(path.read_text())
  second = evaluate.evaluate(_config(), str(workdir), 'latest')
  assert 'cifar100c' not in second
  kept = json.loads(path.read_text())
  assert kept['cifar100c'] == first['cifar100c'] and kept['test_accuracy'] == second['test_accuracy']
  # The file now claims another step (as after more training): kept as it is, under its step.
  older = {**kept, 'step': kept['step'] - 1}
  path.write_text(json.dumps(older))
  older_figures = {n: (workdir / f'{n}_latest.png').read_bytes()
                   for n in ('confusion', 'cifar100c')}
  evaluate.evaluate(_config(), str(workdir), 'latest')
  assert json.loads((workdir / f'eval_latest.step{older["step"]}.json').read_text()) == older
  assert 'cifar100c' not in json.loads(path.read_text())
  # Its figures go with it: the CIFAR-100-C one had stayed as the current step's (a figure review).
  for name, data in older_figures.items():
    assert (workdir / f'{name}_latest.step{older["step"]}.png').read_bytes() == data
  assert not (workdir / 'cifar100c_latest.png').exists()
  assert (workdir / 'confusion_latest.png').is_file()  # Drawn anew (this step's own).
  # Another OOD set replaces the first one's numbers: a set without labels (the Kaggle files)
  # had kept a labelled set's ood_accuracy beside its own submission (an audit).
  labelled = tmp_path / 'labelled'
  shutil.copytree(run / 'ood', labelled)
  np.save(labelled / ood.LABELS_FILE, np.arange(N_OOD, dtype=np.uint8))
  evaluate.evaluate(_config(), str(workdir), 'latest', ood_dir=str(labelled),
                    submission_csv=str(tmp_path / 'a.csv'), cifar100c_dir=str(run / 'c'))
  first = json.loads(path.read_text())
  assert 'ood_accuracy' in first and first['ood_dir'] == str(labelled)
  assert (workdir / 'ood_latest.png').is_file()
  capsys.readouterr()
  evaluate.evaluate(_config(), str(workdir), 'latest', ood_dir=str(run / 'ood'),
                    submission_csv=str(tmp_path / 'b.csv'))
  err = capsys.readouterr().err  # Why no accuracy, and what became of the figure (a figure review).
  assert (f"note: {run / 'ood'} has no labels.npy: the submission alone, no OOD accuracy or "
          'figure') in err
  assert 'note: removed ood_latest.png, the figure of an earlier, labelled OOD set' in err
  kept = json.loads(path.read_text())
  assert kept['ood_dir'] == str(run / 'ood') and kept['submission'] == str(tmp_path / 'b.csv')
  assert 'ood_accuracy' not in kept and 'ood_per_distortion' not in kept, kept.keys()
  assert kept['cifar100c'] == first['cifar100c']  # Another kind: kept.
  # The labelled set's figure had stayed beside the numbers that replaced it (a review).
  assert not (workdir / 'ood_latest.png').exists() and (workdir / 'cifar100c_latest.png').is_file()


def test_without_a_test_time_tool_a_file_is_predicted_whole_not_per_severity(run, monkeypatch):
  """Each severity block had been padded to a whole batch even with nothing to adapt per block:
  20 images per severity ran 15x slower (an audit). With BN adaptation the blocks stay."""
  images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), np.uint8)
  for adapt_bn, parts in ((False, [20]), (True, [4] * 5)):
    predictor, _ = inference.load_predictor(_config(), str(run / 'run'), 'latest',
                                            adapt_bn=adapt_bn)
    seen, predict = [], predictor._predict  # pylint: disable=protected-access

    def counted(part, *args, predict=predict, seen=seen):
      seen.append(len(part))
      return predict(part, *args)

    monkeypatch.setattr(predictor, '_predict', counted)
    assert predictor.run(images, 'file', labels_only=True, chunk=4).shape == (20,)
    assert seen == parts


def test_a_workdir_that_takes_no_files_is_evaluated_and_says_so_first(run, tmp_path, monkeypatch,
                                                                      capsys):
  """A read-only workdir (a colleague's run, a mounted archive) was predicted in full, then the
  first figure failed and no number was printed (an audit). The folder refusing files is
  simulated at the probe: its numbers come back, nothing is written, and it is said first."""
  workdir = tmp_path / 'run'
  shutil.copytree(run / 'run', workdir)
  before = sorted(p.name for p in workdir.iterdir())

  def refused(*args, **kwargs):
    raise PermissionError(13, 'Read-only file system')

  monkeypatch.setattr(evaluate.workdir_lib.tempfile, 'mkstemp', refused)  # The probe's.
  result = evaluate.evaluate(_config(), str(workdir), 'latest', cifar100c_dir=str(run / 'c'))
  assert 0 <= result['test_accuracy'] <= 1 and 'cifar100c_mean_accuracy_all' in result
  assert sorted(p.name for p in workdir.iterdir()) == before
  err = capsys.readouterr().err
  assert f'{workdir} takes no files (Read-only file system)' in err and 'eval_latest.json' in err
  assert 'that a stopped evaluation resumes from (it would start over' in err  # (A review.)
  assert err.index('takes no files') < err.index('gaussian_noise')  # Before the predictions.
  assert 'Wrote' not in err, err
  evaluate.evaluate(_config(), str(workdir), 'latest')  # Clean only: nothing to resume from.
  err = capsys.readouterr().err
  assert 'figures are not written\n' in err and 'resumes from' not in err, err


def test_evaluate_reads_tent_true_and_false_as_load_predictor_does(run, tmp_path):
  """evaluate(tent=True) had failed in dataclasses.asdict(True), and tent=False had switched
  BatchNorm adaptation on (tag _bn-adapt): the diff review."""
  workdir = tmp_path / 'run'
  shutil.copytree(run / 'run', workdir)
  off = evaluate.evaluate(_config(), str(workdir), 'latest', tent=False)
  assert off['bn_adapt'] is False and off['tent'] is None
  assert not list(workdir.glob('eval_latest_*.json'))
  on = evaluate.evaluate(_config(), str(workdir), 'latest', tent=True)
  assert on['bn_adapt'] is True and on['tent'] == {'lr': 1e-3, 'epochs': 1, 'batch_size': 128}
  assert (workdir / 'eval_latest_bn-adapt_tent.json').is_file()


def test_an_evaluation_ends_naming_the_files_it_wrote(run, tmp_path, capsys):
  """evaluate had named none of its files but the CSV, inside its JSON line (a new-user
  walkthrough)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run / 'run', workdir)
  labelled = tmp_path / 'labelled'
  shutil.copytree(run / 'ood', labelled)
  np.save(labelled / ood.LABELS_FILE, np.arange(N_OOD, dtype=np.uint8))
  capsys.readouterr()
  evaluate.evaluate(_config(), str(workdir), 'latest', ood_dir=str(labelled),
                    submission_csv=str(tmp_path / 'a.csv'), cifar100c_dir=str(run / 'c'))
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last == (f'Wrote eval_latest.json, confusion_latest.png, cifar100c_latest.png, '
                  f'ood_latest.png in {workdir} and the submission {tmp_path / "a.csv"}.'), last
  evaluate.evaluate(_config(), str(workdir), 'latest')  # The others are older: not named.
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last == f'Wrote eval_latest.json, confusion_latest.png in {workdir}.', last


def test_without_config_evaluate_uses_the_runs_own_and_a_different_model_is_refused(run):
  """--config omitted: the run's config.json (same numbers as with the run's file); a --config
  whose model differs is one error line, and eval_latest.json is left as it was."""
  workdir = run / 'run'
  cmd = [sys.executable, '-m', 'jax_cifar.evaluate', '--workdir', str(workdir),
         '--checkpoint', 'latest']
  own = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert own.returncode == 0, own.stderr[-3000:]
  by_file = evaluate.evaluate(_config(), str(workdir), 'latest')
  assert json.loads(own.stdout.strip().splitlines()[-1])['test_accuracy'] == by_file['test_accuracy']
  before = (workdir / 'eval_latest.json').read_bytes()
  wrong = subprocess.run(cmd + ['--config', str(run / 'tiny_config.py'),
                                '--config.model.normalize=imagenet'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert wrong.returncode == 1, wrong.stderr[-3000:]
  line = wrong.stderr.strip().splitlines()[-1]
  assert line.startswith('error: ') and "model.normalize 'cifar' (run) vs 'imagenet'" in line, line
  assert (workdir / 'eval_latest.json').read_bytes() == before
  # Keys that do not change predictions (where data lives, the eval batch, how the step is
  # compiled) may differ.
  c = _config()
  c.train.eval_batch_size = 32
  c.model.remat = c.model.scan_blocks = True
  inference.check_matches_run(c, str(workdir))
  # Another validation split would put training images into val_* (an audit: it was accepted).
  for key, value in (('val_fraction', c.data.val_fraction / 2), ('split_seed', c.data.split_seed + 1)):
    other = _config()
    other.data[key] = value
    with pytest.raises(config_validation.ConfigError, match=rf'validation split: data\.{key} '):
      inference.check_matches_run(other, str(workdir))
  c.data.val_fraction = 0.0  # No validation numbers: test and OOD only (robustness_table.py).
  inference.check_matches_run(c, str(workdir))


def test_checkpoint_takes_a_step_number_as_load_model_does(run):
  workdir = run / 'run'
  step = max(int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir() if p.name.isdigit())
  by_number = evaluate.evaluate(_config(), str(workdir), str(step))
  assert by_number['step'] == step and by_number['checkpoint'].endswith(f'latest/{step}')
  assert json.loads((workdir / f'eval_step{step}.json').read_text())['step'] == step
  assert evaluate.evaluate(_config(), str(workdir), step)['step'] == step  # An int, as load_model.
  # The same step as its folder's default/ item is the same checkpoint: its numbers merge into
  # eval_step<N>.json (they had been set aside as another checkpoint's).
  item = workdir / 'checkpoints' / 'latest' / str(step) / 'default'
  by_item = evaluate.evaluate(_config(), str(workdir), str(item))
  assert by_item['checkpoint'] == by_number['checkpoint']
  assert [p.name for p in workdir.glob('eval_step*.json')] == [f'eval_step{step}.json']
  kept = sorted(int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir()
                if p.name.isdigit())
  # The steps it kept are listed (a walkthrough: a user had to look in the folder for them).
  with pytest.raises(checkpoints.CheckpointError, match=rf"kept no step 999 \(in .*; it kept "
                     rf"latest: {', '.join(map(str, kept))}; best: \d+"):
    evaluate.evaluate(_config(), str(workdir), '999')


def test_the_command_passes_its_flags_on_and_defaults_to_the_best_checkpoint(run):
  """--weights, --tta, --tta_average and --bn_adapt reach evaluate() from the command line;
  without --checkpoint, 'best' is evaluated. --tta_average without views to average is refused."""
  workdir = run / 'run'
  proc = subprocess.run([sys.executable, '-m', 'jax_cifar.evaluate', '--workdir', str(workdir),
                         '--weights', 'auto', '--tta', 'flip', '--tta_average', 'log_probs',
                         '--bn_adapt'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (line['checkpoint'], line['tta'], line['tta_average'], line['bn_adapt']) == (
      'best', 'flip', 'log_probs', True), line
  detail = json.loads((workdir / 'eval_best_auto_tta-flip-logp_bn-adapt.json').read_text())
  assert detail['bn_adapt'] is True and detail['tta'] == 'flip'
  assert detail['tta_average'] == 'log_probs'
  with pytest.raises(config_validation.ConfigError, match=(
      r'^--tta_average log_probs: used only with --tta flip or shifts \(one view has nothing to '
      r'average\)$')):
    evaluate.evaluate(_config(), str(workdir), 'latest', tta_average='log_probs')
  lone = subprocess.run([sys.executable, '-m', 'jax_cifar.evaluate', '--workdir', str(workdir),
                         '--tta_average', 'probs'], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)  # Given, even as the default: it would change nothing.
  assert lone.returncode == 1 and lone.stderr.strip().splitlines()[-1] == (
      'error: --tta_average probs: used only with --tta flip or shifts (one view has nothing to '
      'average)'), lone.stderr[-2000:]


def test_tent_from_the_command_line_writes_under_its_own_tag_and_implies_bn_adapt(run):
  """--tent (with a non-default setting) through the command: bn_adapt is on, the settings are in
  the JSON and the tag; the Tent settings without --tent are one error line."""
  workdir = run / 'run'
  cmd = [sys.executable, '-m', 'jax_cifar.evaluate', '--workdir', str(workdir),
         '--checkpoint', 'latest']
  proc = subprocess.run(cmd + ['--tent', '--tent_batch_size', '64'], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  detail = json.loads((workdir / 'eval_latest_bn-adapt_tent-b64.json').read_text())
  assert detail['bn_adapt'] is True
  assert detail['tent'] == {'lr': 1e-3, 'epochs': 1, 'batch_size': 64}
  line = json.loads(proc.stdout.strip().splitlines()[-1])  # Flat: a --tent line had no trace of it.
  assert (line['tent_lr'], line['tent_epochs'], line['tent_batch_size']) == (1e-3, 1, 64)
  adapted = evaluate.evaluate(_config(), str(workdir), 'latest', adapt_bn=True)
  assert detail['test_loss'] != adapted['test_loss']  # Tent moved more than the statistics.
  lone = subprocess.run(cmd + ['--tent_lr', '0.01'], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert lone.returncode == 1
  assert lone.stderr.strip().splitlines()[-1] == ('error: --tent_lr: used only with --tent, which '
                                                  'is not given')


def test_tta_and_bn_adapt_runs_write_files_under_their_own_tag(run):
  workdir = run / 'run'
  result = evaluate.evaluate(_config(), str(workdir), 'latest', tta_mode='flip', adapt_bn=True)
  assert result['tta'] == 'flip' and result['bn_adapt'] is True and result['test_count'] == 256
  detail = json.loads((workdir / 'eval_latest_tta-flip_bn-adapt.json').read_text())
  assert detail['test_accuracy'] == result['test_accuracy']
  # The statistics pass's batch, on which the adapted numbers depend a little (a walkthrough).
  assert detail['bn_adapt_batch'] == _config().train.eval_batch_size
  assert (workdir / 'confusion_latest_tta-flip_bn-adapt.png').read_bytes()[:4] == b'\x89PNG'
  plain = evaluate.evaluate(_config(), str(workdir), 'latest', tta_flip=True)  # The old flag.
  assert (workdir / 'eval_latest_tta-flip.json').exists() and plain['bn_adapt'] is False
  assert 'bn_adapt_batch' not in plain
  assert plain['test_loss'] != result['test_loss']  # Adapted statistics changed the predictions.


def test_a_cifar100c_file_that_fails_while_predicted_keeps_the_existing_csv(run, tmp_path):
  """With --ood_dir and --cifar100c_dir, a CIFAR-100-C file cut after its check (or a signal in
  that phase) had come after the new CSV replaced the old one, while the message said an existing
  CSV is kept (an audit): the submission is now written last."""
  c_dir = tmp_path / 'c'
  shutil.copytree(run / 'c', c_dir)
  csv = tmp_path / 'sub.csv'
  csv.write_text('id,label\n')
  original = ood.ImageFile.open

  def cut_fog(image_file):  # The file is cut after the up-front check, when opened.
    path = pathlib.Path(image_file.path)
    if path.name == 'fog.npy':
      path.write_bytes(path.read_bytes()[:1000])
    return original(image_file)

  with pytest.MonkeyPatch.context() as m:
    m.setattr(ood.ImageFile, 'open', cut_fog)
    with pytest.raises(cifar100.DataError, match='fog.npy'):
      evaluate.evaluate(_config(), str(run / 'run'), 'latest', ood_dir=str(run / 'ood'),
                        submission_csv=str(csv), cifar100c_dir=str(c_dir))
  assert csv.read_text() == 'id,label\n'


def test_a_stop_in_the_submission_phase_leaves_no_cifar100c_heatmap(run, tmp_path):
  """The CIFAR-100-C phase now comes before the submission: its heatmap is drawn once everything
  is predicted, as the confusion matrix is, not left by an evaluation that never finished (a
  review)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run / 'run', workdir, ignore=shutil.ignore_patterns('eval_*', '*.png', '*.csv'))

  def stopped(*args, **kwargs):
    raise interrupt.Interrupted('SIGTERM', 15)

  with pytest.MonkeyPatch.context() as m:
    m.setattr(ood_sets, 'predict_submission', stopped)
    with pytest.raises(interrupt.Interrupted):
      evaluate.evaluate(_config(), str(workdir), 'latest', ood_dir=str(run / 'ood'),
                        cifar100c_dir=str(run / 'c'))
  assert not list(workdir.glob('*.png')) and not list(workdir.glob('eval_*.json'))
  evaluate.evaluate(_config(), str(workdir), 'latest', ood_dir=str(run / 'ood'),
                    cifar100c_dir=str(run / 'c'))
  assert (workdir / 'cifar100c_latest.png').is_file()


def test_a_step_folder_named_through_links_is_one_checkpoint_tagged_by_its_number(run, tmp_path):
  """The run named through a link to its folder (macOS's /tmp is /private/tmp), and its step folder
  a link itself (moved to another disk): one checkpoint, recorded by its real path, its files
  tagged step<N> (the tag had become `path` for the linked step folder: the diff review)."""
  import shutil  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'run'
  shutil.copytree(run / 'run', workdir, ignore=shutil.ignore_patterns('eval_*', '*.png'))
  step = max(int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir()
             if p.name.isdigit())
  moved = tmp_path / 'archive' / f'run-step{step}'
  moved.parent.mkdir()
  shutil.move(workdir / 'checkpoints' / 'latest' / str(step), moved)
  (workdir / 'checkpoints' / 'latest' / str(step)).symlink_to(moved)
  (tmp_path / 'link').symlink_to(workdir)
  for given in (workdir / 'checkpoints' / 'latest' / str(step),
                tmp_path / 'link' / 'checkpoints' / 'latest' / str(step)):
    result = evaluate.evaluate(_config(), str(workdir), str(given))
    assert result['checkpoint'] == str(moved) and result['step'] == step
  assert sorted(p.name for p in workdir.glob('eval_*.json')) == [f'eval_step{step}.json']


def test_a_step_folder_of_another_run_is_checked_against_that_runs_config(run, tmp_path,
                                                                          monkeypatch):
  """`--checkpoint OTHER_RUN/checkpoints/latest/N` had been scored under this workdir's config
  (another normalisation: a val_loss of 15 against 5) and filed as this run's numbers (an audit)."""
  other = tmp_path / 'other'
  shutil.copytree(run / 'run', other, ignore=shutil.ignore_patterns('eval_*'))
  record = json.loads((other / 'config.json').read_text())
  record['model']['normalize'] = 'imagenet'
  (other / 'config.json').write_text(json.dumps(record))
  step = max(int(p.name) for p in (other / 'checkpoints' / 'latest').iterdir() if p.name.isdigit())
  folder = other / 'checkpoints' / 'latest' / str(step)
  before = {p.name: p.read_bytes() for p in (run / 'run').glob('eval_*.json')}
  with pytest.raises(config_validation.ConfigError, match=(
      rf"^the config evaluating it \({run / 'run'}\) differs from the run's {other}/config.json "
      r".*model.normalize 'imagenet' \(run\) vs 'cifar' \(evaluating\)\. Evaluate that run "
      r'itself: --workdir ')) as e:
    evaluate.evaluate(_config(), str(run / 'run'), str(folder))
  # The evaluating run is named once, not after each key's values (a review: 5 times in a line).
  assert str(e.value).count(str(run / 'run')) == 1, e.value
  assert {p.name: p.read_bytes() for p in (run / 'run').glob('eval_*.json')} == before
  # The same folder typed relative to other/checkpoints (a review: it had skipped the check).
  monkeypatch.chdir(other / 'checkpoints')
  with pytest.raises(config_validation.ConfigError, match='Evaluate that run itself'):
    evaluate.evaluate(_config(), str(run / 'run'), f'latest/{step}')
  # Its own run's folder, given by path, is evaluated as before.
  assert evaluate.evaluate(_config(), str(run / 'run'), str(
      run / 'run' / 'checkpoints' / 'latest' / str(step)))['step'] == step


def test_a_config_reading_other_images_than_the_run_is_refused(run):
  """--config.data.source=synthetic on a run of real images (or back) had replaced its test
  numbers with those of other images (an audit); local and tfds read the same images."""
  real = _config()
  real.data.source = 'local'
  with pytest.raises(config_validation.ConfigError, match=r"data.source 'synthetic' \(run\) vs "
                     r"'local' \(--config\)"):
    evaluate.evaluate(real, str(run / 'run'), 'latest')


def test_a_relative_submission_path_is_recorded_resolved(run, tmp_path, monkeypatch):
  """eval_<tag>.json named a relative --submission as given, useless from another folder, while
  ood_dir was resolved (an audit)."""
  monkeypatch.chdir(tmp_path)
  result = evaluate.evaluate(_config(), str(run / 'run'), 'latest', ood_dir=str(run / 'ood'),
                             submission_csv='rel.csv')
  assert result['submission'] == str(tmp_path.resolve() / 'rel.csv')
  assert (tmp_path / 'rel.csv').read_text().startswith('id,label\n')
