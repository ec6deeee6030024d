"""What evaluate computes and records, without a model: classification metrics against NumPy
references, the CIFAR-100-C table (a stand-in predictor: the arithmetic), and eval_<tag>.json
(merged per checkpoint, never half written). End to end with a trained run: test_evaluate.py."""

import fcntl
import json
import logging
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

from jax_cifar import atomic_folder, evaluate
from jax_cifar.configs import default
from jax_cifar.data import cifar100, ood
from jax_cifar.evaluation import eval_json, figures
from jax_cifar.evaluation import metrics as metrics_lib
from jax_cifar.evaluation import ood_sets


# ---------------------------------------------------------------------------------------------
# Metrics against straightforward NumPy loops
# ---------------------------------------------------------------------------------------------
def _ece_reference(probs, labels, bins=15):
  ece, n = 0.0, len(labels)
  for b in range(bins):
    lo, hi = b / bins, (b + 1) / bins
    idx = [i for i in range(n) if (lo < probs[i].max() <= hi) or (b == 0 and probs[i].max() == 0)]
    if idx:
      acc = np.mean([probs[i].argmax() == labels[i] for i in idx])
      conf = np.mean([probs[i].max() for i in idx])
      ece += len(idx) / n * abs(acc - conf)
  return ece


def test_ece_top5_and_per_class_match_numpy_reference():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(500, 7)) * 3
  labels = rng.integers(0, 7, 500)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  m = metrics_lib.classification_metrics(log_p, labels)
  probs = np.exp(log_p)
  assert m['ece'] == pytest.approx(_ece_reference(probs, labels), abs=1e-12)
  assert m['ece'] > 0.01  # A miscalibrated random model: the check is not vacuous.
  assert m['accuracy'] == pytest.approx(np.mean(probs.argmax(1) == labels))
  top5 = [labels[i] in np.argsort(-probs[i])[:5] for i in range(500)]
  assert m['top5_accuracy'] == pytest.approx(np.mean(top5))
  assert m['loss'] == pytest.approx(-np.mean([log_p[i, labels[i]] for i in range(500)]))
  pred = probs.argmax(1)
  per_class = metrics_lib.group_accuracy(pred, labels, labels, 8)
  for c in range(7):
    assert per_class[c] == pytest.approx(np.mean(pred[labels == c] == c))
  assert np.isnan(per_class[7])  # No examples of class 7.
  cm = metrics_lib.confusion_matrix(pred, labels, 7)
  assert cm.sum() == 500 and np.trace(cm) == np.sum(pred == labels)
  assert cm[labels[0], pred[0]] == np.sum((labels == labels[0]) & (pred == pred[0]))


class _ChosenPredictor:
  """Predicts the class written in each image's first pixel."""

  def run(self, images, desc, labels_only=False, chunk=None):
    return np.log(np.eye(100)[np.asarray(images)[:, 0, 0, 0]] * 0.99 + 0.0001)


@pytest.mark.parametrize('source', ['local', 'synthetic'])
def test_superclass_accuracy_uses_every_class_superclass_not_only_those_in_the_split(source):
  """A part of a split (data.eval_limit < 100) lacks classes, which had all been taken for
  superclass 0: a prediction of one of them counted as right whenever the true superclass was 0
  (an audit). Here every image is of superclass 0; each prediction is of a class not in the split."""
  table = cifar100.superclass_table(source)
  in_split = np.flatnonzero(table == 0)[:2]
  same = [c for c in np.flatnonzero(table == 0) if c not in in_split][0]  # Absent, superclass 0.
  other = np.flatnonzero(table == 1)[0]  # Absent, another superclass.
  labels = np.repeat(in_split, 2).astype(np.int32)
  images = np.zeros((4, 32, 32, 3), np.uint8)
  images[:, 0, 0, 0] = [same, other, same, other]
  config = default.get_config()
  config.data.source = source
  scalars, details = evaluate.evaluate_split(_ChosenPredictor(), cifar100.Split(
      images, labels, table[labels]), 'test', config)
  assert scalars['accuracy'] == 0.0 and scalars['superclass_accuracy'] == 0.5, scalars
  assert list(details['per_superclass_accuracy'].values())[0] == 0.0


def test_the_confusion_figure_names_the_run_its_tag_and_the_image_count(tmp_path, drawn):
  """Every confusion PNG had read "test: confusion (top-1 0.131)", where the heatmaps beside it
  name the run and the evaluation's tag (a visual review)."""
  labels = np.array([3, 3, 5, 7], np.int32)
  images = np.zeros((4, 32, 32, 3), np.uint8)
  images[:, 0, 0, 0] = [3, 4, 5, 6]  # Two of four right.
  evaluate.evaluate_split(_ChosenPredictor(), cifar100.Split(images, labels, None), 'test',
                          default.get_config(), tmp_path / 'c.png', run_name='r50 (best_tta-flip)')
  title = drawn[0].axes[0].get_title()
  assert title == 'r50 (best_tta-flip): test confusion (top-1 50.00%, 4 images)'


def test_ece_bins_are_closed_on_the_right():
  """A confidence exactly on a bin edge belongs to the bin below, (lo, hi] as the docstring and
  _ece_reference say (a mutation audit: the other side passed every test). Both samples fall in
  (5/15, 6/15]: |1/2 - (0.4 + 0.35)/2| = 0.125; the edge one in the next bin would give 0.475."""
  edge = np.linspace(0, 1, metrics_lib.ECE_BINS + 1)[6]
  probs = np.array([[edge, (1 - edge) / 2, (1 - edge) / 2], [0.35, 0.33, 0.32]])
  ece = metrics_lib.expected_calibration_error(probs, np.array([0, 1]))
  assert ece == pytest.approx(0.125, abs=1e-12)
  assert ece == pytest.approx(_ece_reference(probs, np.array([0, 1])), abs=1e-12)


def test_perfectly_confident_correct_predictions_have_zero_ece():
  labels = np.arange(10) % 3
  probs = np.eye(3)[labels]
  assert metrics_lib.expected_calibration_error(probs, labels) == 0.0


# ---------------------------------------------------------------------------------------------
# CIFAR-100-C table (with a stand-in predictor: the arithmetic, not the model)
# ---------------------------------------------------------------------------------------------
class _PixelPredictor:
  """Predicts the first pixel's red value mod 100."""

  def run(self, images, desc, labels_only=False, chunk=None):
    assert labels_only and chunk == len(images) // 5  # BN adaptation chunks = severity blocks.
    return np.asarray(images)[:, 0, 0, 0].astype(np.int64) % 100


def test_cifar100c_table_means_and_heatmap(tmp_path, caplog):
  rng = np.random.default_rng(2)
  n = 20
  labels = rng.integers(0, 100, n // 5)
  expected = {}
  for name in ood.CORRUPTIONS:
    images = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
    hits = rng.random(n) < rng.random()  # Make a random subset predictable -> correct.
    images[:, 0, 0, 0] = np.where(hits, np.tile(labels, 5), (np.tile(labels, 5) + 1) % 100)
    np.save(tmp_path / f'{name}.npy', images)
    expected[name] = hits.reshape(5, -1).mean(1)
  np.save(tmp_path / 'labels.npy', labels.astype(np.uint8))  # One per image: tiled per severity.
  (tmp_path / '._fog.npy').write_bytes(b'\x00\x05\x16\x07AppleDouble')  # macOS metadata
  (tmp_path / '.npy').write_bytes(b'')
  # Readable files of other names (a course file, a browser's copy) had been scored into the
  # all-corruption mean (an audit): named and left out.
  for stray in ('distortion03', 'fog (1)'):
    np.save(tmp_path / f'{stray}.npy', np.zeros((n, 32, 32, 3), np.uint8))
  with caplog.at_level(logging.WARNING):
    files = ood.check_cifar100c_dir(tmp_path)  # Hidden files are skipped, not read as corruptions.
  assert list(files) == list(ood.CORRUPTIONS)
  assert (f'{tmp_path}: ignoring distortion03.npy, fog (1).npy: not CIFAR-100-C corruption names'
          in caplog.text), caplog.text
  result = ood_sets.evaluate_cifar100c(_PixelPredictor(), str(tmp_path), files, tmp_path / 'c.png')
  for name in ood.CORRUPTIONS:
    np.testing.assert_allclose(result['cifar100c'][name], expected[name])
  standard = np.mean([expected[k].mean() for k in ood.STANDARD_CORRUPTIONS])
  assert result['cifar100c_mean_accuracy'] == pytest.approx(standard)
  assert result['cifar100c_mean_accuracy_all'] == pytest.approx(
      np.mean([v.mean() for v in expected.values()]))
  assert (tmp_path / 'c.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def _table_rows(text: str) -> dict[str, list[float]]:
  """corruption -> its five severities' accuracies (%) in a printed corruption table."""
  rows = {}
  for line in text.splitlines():
    words = line.replace(' *', '').split()
    if len(words) == 7 and words[0] != 'mean' and all(
        w.replace('.', '', 1).isdigit() for w in words[1:]):  # (Not a progress bar's line.)
      rows[words[0]] = [float(w) for w in words[1:6]]
  return rows


def test_a_labelled_ood_set_is_shown_per_corruption_and_drawn(tmp_path, capsys):
  """--ood_dir with jax_cifar.corrupt's labels: the 19 x 5 numbers had been only in the JSON,
  under file names (a new-user audit). They are printed and drawn as CIFAR-100-C's are, by the
  corruption each file holds (its manifest), or by file name where that is not known."""
  from jax_cifar.corruptions import corrupt  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(5)
  images, labels = rng.integers(0, 256, (4, 32, 32, 3), np.uint8), rng.integers(0, 100, 4)
  corrupt.build(tmp_path / 'set', images, labels, seed=0)  # The course's layout, all 19.
  files = ood.check_distortion_dir(tmp_path / 'set')

  class FilePredictor:  # Right on the first d + 1 images of distortionXX (d = XX) only.
    def run(self, images, desc, labels_only=False, chunk=None):
      assert labels_only and chunk == len(images) // 5
      pred = np.tile(labels, 5)
      pred[int(desc[-2:]) + 1:] += 1
      return pred

  expected = {name: 100 * (np.arange(20) <= d).reshape(5, 4).mean(1)
              for d, name in enumerate(ood.CORRUPTIONS)}  # 19 different rows.
  result = ood_sets.predict_submission(FilePredictor(), str(tmp_path / 'set'),
                                       tmp_path / 'a.csv', files, tmp_path / 'ood.png', 'run')
  err = capsys.readouterr().err
  assert 'OOD set top-1 accuracy (%) of run' in err and 'standard mean (15 corruptions)' in err
  rows = _table_rows(err)
  assert list(rows) == list(ood.CORRUPTIONS), err
  for name, accs in rows.items():
    np.testing.assert_allclose(accs, expected[name], atol=0.006)
  assert 'speckle_noise *' in err and 'fog *' not in err  # Outside the 15 standard ones.
  assert result['ood_accuracy'] == pytest.approx(np.mean(list(expected.values())) / 100)
  assert (tmp_path / 'ood.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # Without jax_cifar.corrupt's manifest, the files are named as they are, none marked.
  (tmp_path / 'set' / 'corrupt_manifest.json').unlink()
  ood_sets.predict_submission(FilePredictor(), str(tmp_path / 'set'), tmp_path / 'b.csv', files)
  err = capsys.readouterr().err
  assert list(_table_rows(err)) == [ood.distortion_file(d)[:-4] for d in range(19)], err
  assert '*' not in err


def test_the_course_set_given_as_cifar100c_is_refused_naming_ood_dir(tmp_path):
  """--cifar100c_dir with the course's files had scored 'corruptions' distortion00..18 and shown
  the benchmark's mean as n/a (an audit)."""
  for i in range(ood.NUM_DISTORTIONS):
    np.save(tmp_path / ood.distortion_file(i), np.zeros((5, 32, 32, 3), np.uint8))
  with pytest.raises(ood.DataError, match="distortionXX.npy files, not CIFAR-100-C's .*--ood_dir"):
    ood.check_cifar100c_dir(tmp_path)
  part = tmp_path / 'part'  # Some of them (corrupt --corruptions fog): named so too (a mutation
  part.mkdir()  # audit: only the whole set had been tested).
  np.save(part / 'distortion11.npy', np.zeros((5, 32, 32, 3), np.uint8))
  with pytest.raises(ood.DataError, match="distortionXX.npy files, not CIFAR-100-C's .*--ood_dir"):
    ood.check_cifar100c_dir(part)
  for i in range(ood.NUM_DISTORTIONS):  # Other names only: none of them is scored.
    (tmp_path / ood.distortion_file(i)).rename(tmp_path / f'mine{i:02d}.npy')
  with pytest.raises(ood.DataError, match=r"no CIFAR-100-C <corruption>\.npy files \(expected e\.g\. "
                     r"gaussian_noise\.npy\); it holds mine00\.npy, mine01\.npy, .*, \.\.\.$"):
    ood.check_cifar100c_dir(tmp_path)


# ---------------------------------------------------------------------------------------------
# eval_<tag>.json
# ---------------------------------------------------------------------------------------------
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
  assert json.loads(path.read_text()) == {**same, 'test_accuracy': 0.6}
  assert json.loads((tmp_path / 'eval_best.step3.json').read_text())['ood_accuracy'] == 0.3
