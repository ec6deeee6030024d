"""What evaluate computes, without a model: classification metrics against NumPy references, the
CIFAR-100-C table (a stand-in predictor: the arithmetic). eval_<tag>.json: test_eval_json.py. End
to end with a trained run: test_evaluate.py."""

import json
import logging

import numpy as np
import pytest

from conftest import is_png
from jax_cifar.evaluation import clean_splits
from jax_cifar.configs import default
from jax_cifar.data import cifar100, ood
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


def test_classification_metrics_refuses_probabilities_logits_and_labels_that_do_not_fit():
  """predict's probabilities had given a loss of -0.009 and an ECE of 1.03; 1 label for 13 rows
  a broadcast top-1; float labels were truncated (a library-user review)."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(13, 10))
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  labels = rng.integers(0, 10, 13)
  for scores, given, match in [
      (np.exp(log_p), labels, r'log-probabilities \(<= 0\).*np.log\(probs\)'),
      (logits, labels, 'log_softmax'),
      (log_p, labels[:1], r'labels \[N\], got shapes \(13, 10\) and \(1,\)'),
      (log_p[0], labels[:1], 'got shapes'),
      (log_p, labels + 0.5, 'labels are class numbers, got float64'),
      (log_p, labels + 10, r'labels are 0..9, got'),
  ]:
    with pytest.raises(ValueError, match=match):
      metrics_lib.classification_metrics(scores, given)
  exact = metrics_lib.classification_metrics(log_p, labels)
  assert metrics_lib.classification_metrics(log_p, labels.astype(float)) == exact
  assert metrics_lib.classification_metrics(log_p, list(labels)) == exact  # (A list had raised.)
  diverged = metrics_lib.classification_metrics(np.full((13, 10), np.nan), labels)
  assert np.isnan(diverged['loss']) and diverged['count'] == 13


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
  scalars, details = clean_splits.evaluate_split(_ChosenPredictor(), cifar100.Split(
      images, labels, table[labels]), 'test', config)
  assert scalars['accuracy'] == 0.0 and scalars['superclass_accuracy'] == 0.5, scalars
  assert list(details['per_superclass_accuracy'].values())[0] == 0.0


def test_the_confusion_figure_names_the_run_its_tag_and_the_image_count(tmp_path, drawn):
  """Every confusion PNG had read "test: confusion (top-1 0.131)", where the heatmaps beside it
  name the run and the evaluation's tag (a visual review)."""
  labels = np.array([3, 3, 5, 7], np.int32)
  images = np.zeros((4, 32, 32, 3), np.uint8)
  images[:, 0, 0, 0] = [3, 4, 5, 6]  # Two of four right.
  clean_splits.evaluate_split(_ChosenPredictor(), cifar100.Split(images, labels, None), 'test',
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


def test_a_labelled_ood_set_is_shown_per_corruption_and_drawn(tmp_path, capsys, drawn):
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
  assert 'OOD set (4 images per cell) top-1 accuracy (%) of run' in err, err  # (4 x 5 per file.)
  assert 'standard mean (15 corruptions)' in err and result['ood_images_per_chunk'] == 4
  rows = _table_rows(err)
  assert list(rows) == list(ood.CORRUPTIONS), err
  for name, accs in rows.items():
    np.testing.assert_allclose(accs, expected[name], atol=0.006)
  assert 'speckle_noise *' in err and 'fog *' not in err  # Outside the 15 standard ones.
  assert 'older python -m jax_cifar.corrupt' not in err  # (Made by this one.)
  assert result['ood_accuracy'] == pytest.approx(np.mean(list(expected.values())) / 100)
  assert is_png(tmp_path / 'ood.png') and len(drawn) == 1
  heatmap = drawn[0].axes[0]
  assert [t.get_text() for t in heatmap.get_yticklabels()] == [
      name if name in ood.STANDARD_CORRUPTIONS else f'{name} *' for name in ood.CORRUPTIONS]
  cells = heatmap.get_images()[0].get_array()
  np.testing.assert_allclose(cells, [expected[name] for name in ood.CORRUPTIONS], atol=0.006)
  # Without jax_cifar.corrupt's manifest, or with one whose corruptions are not names (a list had
  # been a TypeError once every file was predicted: a security review), the files are named as
  # they are, none marked.
  manifest = tmp_path / 'set' / 'corrupt_manifest.json'
  # A set of an older generator (glass blur before 2026-12-06) is read, and said to be one (its
  # numbers had sat in one report column with a new set's, unsaid: an upgrade review).
  current = manifest.read_text()
  manifest.write_text(json.dumps({**json.loads(current), 'generator_version': 1}))
  ood_sets.predict_submission(FilePredictor(), str(tmp_path / 'set'), tmp_path / 'c.csv', files)
  err = capsys.readouterr().err
  assert (f"note: {tmp_path / 'set'} was made by an older python -m jax_cifar.corrupt (generator "
          'version 1, now 2; docs/changes.md says what changed)') in err, err
  assert list(_table_rows(err)) == list(ood.CORRUPTIONS), err
  manifest.write_text(current)
  edited = json.loads(manifest.read_text())
  for entry in edited['files'].values():
    if 'corruption' in entry:
      entry['corruption'] = [entry['corruption']]
  for damage in ('edited', 'removed'):
    if damage == 'edited':
      manifest.write_text(json.dumps(edited))
    else:
      manifest.unlink()
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

