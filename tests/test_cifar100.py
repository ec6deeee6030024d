"""Tests of jax_cifar.data.cifar100 on the real CIFAR-100 files (no mocks): the splits, their
subsets and get_splits. Archives, downloads and broken or hostile files: test_cifar100_files.py.

The real data is found through $JAX_CIFAR_DATA_DIR (a folder holding cifar-100-python/). Without
it these tests skip, except under CI (env CI set), where missing data is a failure.
"""

import pathlib

import ml_collections
import numpy as np
import pytest

from jax_cifar.configs import default
from jax_cifar.data import cifar100

README_MEAN = np.array([0.5075, 0.4869, 0.4415])


@pytest.fixture(scope='module')
def data_dir(cifar_dir) -> pathlib.Path:
  """The real data (conftest's `cifar_dir`: skipped without it, a failure under CI)."""
  return cifar_dir


@pytest.fixture(scope='module')
def real_train(data_dir) -> cifar100.Split:
  return cifar100.load_split(data_dir, 'train', download=False)


@pytest.fixture(scope='module')
def real_test(data_dir) -> cifar100.Split:
  return cifar100.load_split(data_dir, 'test', download=False)


@pytest.fixture(scope='module')
def real_test_raw(data_dir) -> dict:
  return cifar100.read_pickle(data_dir / 'cifar-100-python' / 'test')


# ------------------------------------------------------------------ the real files


def test_real_splits_have_official_shapes_counts_and_statistics(real_train, real_test):
  for split, n, per_class in ((real_train, 50000, 500), (real_test, 10000, 100)):
    assert len(split) == n
    assert split.images.shape == (n, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.coarse_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(split.labels, minlength=100), per_class)
    assert 0 <= split.coarse_labels.min() and split.coarse_labels.max() == 19
  mean = real_train.images.reshape(-1, 3).mean(0, dtype=np.float64) / 255
  np.testing.assert_allclose(mean, README_MEAN, atol=1e-4)


def test_latin1_and_bytes_encodings_give_equal_results(data_dir, real_test, real_test_raw):
  as_bytes = cifar100.load_split(data_dir, 'test', download=False, encoding='bytes')
  np.testing.assert_array_equal(as_bytes.images, real_test.images)
  np.testing.assert_array_equal(as_bytes.labels, real_test.labels)
  np.testing.assert_array_equal(as_bytes.coarse_labels, real_test.coarse_labels)
  raw_bytes = cifar100.read_pickle(data_dir / 'cifar-100-python' / 'test', encoding='bytes')
  keys = ['batch_label', 'coarse_labels', 'data', 'filenames', 'fine_labels']
  assert sorted(raw_bytes) == sorted(real_test_raw) == keys
  assert raw_bytes['filenames'][:5] == real_test_raw['filenames'][:5]
  for encoding in ('latin1', 'bytes'):
    meta = cifar100.read_pickle(data_dir / 'cifar-100-python' / 'meta', encoding=encoding)
    assert meta['fine_label_names'][0] == 'apple'


def test_first_image_is_the_hwc_view_of_the_raw_planar_row(real_test, real_test_raw):
  raw, image = real_test_raw['data'][0], real_test.images[0]
  for channel in range(3):
    for row in (0, 13, 31):
      start = channel * 1024 + row * 32
      np.testing.assert_array_equal(image[row, :, channel], raw[start:start + 32])
  np.testing.assert_array_equal(image.transpose(2, 0, 1).reshape(-1), raw)
  assert real_test.labels[0] == real_test_raw['fine_labels'][0]


def test_class_names_come_from_meta(data_dir):
  fine, coarse = cifar100.class_names(data_dir)
  assert len(fine) == len(set(fine)) == 100 and len(coarse) == len(set(coarse)) == 20
  assert (fine[0], fine[-1], coarse[0]) == ('apple', 'worm', 'aquatic_mammals')
  # The built-in names, given without a folder, are the real meta file's.
  assert cifar100.class_names() == (fine, coarse)


def test_class_names_without_a_folder_need_no_data(tmp_path, monkeypatch):
  """A notebook without $JAX_CIFAR_DATA_DIR, loading a run trained through it (its data.dir is
  ''), had found no data for the names (a walkthrough)."""
  monkeypatch.delenv('JAX_CIFAR_DATA_DIR', raising=False)
  monkeypatch.setenv('HOME', str(tmp_path))  # An empty cache folder.
  fine, coarse = cifar100.class_names()
  assert (fine[1], coarse[-1], len(fine), len(coarse)) == ('aquarium_fish', 'vehicles_2', 100, 20)
  with pytest.raises(cifar100.DataError, match='download is off'):
    cifar100.class_names('')  # A folder's meta is still read from that folder, or not at all.


def test_class_names_find_the_data_as_the_trainer_does(data_dir, monkeypatch):
  """A run's config.data.dir is often '' ($JAX_CIFAR_DATA_DIR then): class_names('') had looked
  in the current folder (an audit)."""
  monkeypatch.setenv('JAX_CIFAR_DATA_DIR', str(data_dir))
  assert cifar100.class_names('') == cifar100.class_names() == cifar100.class_names(data_dir)


# ------------------------------------------------------------------ splits and subsets


def test_stratified_split_is_stratified_disjoint_complete_and_deterministic(real_train):
  labels = real_train.labels
  train_idx, val_idx = cifar100.stratified_split(labels, 0.1, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[val_idx], minlength=100), 50)
  np.testing.assert_array_equal(np.bincount(labels[train_idx], minlength=100), 450)
  assert np.intersect1d(train_idx, val_idx).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(len(labels)))
  again = cifar100.stratified_split(labels, 0.1, seed=0)
  np.testing.assert_array_equal(again[1], val_idx)
  assert not np.array_equal(cifar100.stratified_split(labels, 0.1, seed=1)[1], val_idx)


def test_stratified_split_rounds_per_class_and_checks_fraction():
  labels = np.repeat(np.array([4, 0, 7]), [3, 7, 10])
  labels = np.random.default_rng(0).permutation(labels)
  _, val_idx = cifar100.stratified_split(labels, 0.3, seed=5)
  counts = dict(zip(*np.unique(labels[val_idx], return_counts=True)))
  assert counts == {0: round(0.3 * 7), 4: round(0.3 * 3), 7: round(0.3 * 10)}
  train_idx, val_idx = cifar100.stratified_split(labels, 0.0, seed=5)
  assert val_idx.size == 0 and np.array_equal(train_idx, np.arange(len(labels)))
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError, match=rf'^val_fraction must be in \[0, 1\), got {bad}$'):
      cifar100.stratified_split(labels, bad, seed=0)


def test_balanced_subset_takes_classes_round_robin_in_file_order(real_train):
  labels = real_train.labels
  first = cifar100.balanced_subset(labels, 100)
  expected = np.sort([np.flatnonzero(labels == c)[0] for c in range(100)])
  np.testing.assert_array_equal(first, expected)
  ten_each = cifar100.balanced_subset(labels, 1000)
  np.testing.assert_array_equal(np.bincount(labels[ten_each], minlength=100), 10)
  counts = np.bincount(labels[cifar100.balanced_subset(labels, 150)], minlength=100)
  assert counts.sum() == 150 and set(counts) == {1, 2}
  np.testing.assert_array_equal(cifar100.balanced_subset(labels, 0), np.arange(len(labels)))


# ------------------------------------------------------------------ get_splits


def _cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = default.get_config().data
  cfg.update(overrides)
  return cfg


def test_get_splits_without_validation_uses_all_training_images(data_dir):
  splits = cifar100.get_splits(_cfg(dir=str(data_dir), download=False, val_fraction=0.0))
  assert splits['val'] is None
  assert (len(splits['train']), len(splits['test'])) == (50000, 10000)


def test_get_splits_limits_are_class_balanced_and_val_is_held_out(data_dir, real_train):
  cfg = _cfg(dir=str(data_dir), val_fraction=0.1, train_limit=1000, eval_limit=500)
  splits = cifar100.get_splits(cfg)
  train, val, test = splits['train'], splits['val'], splits['test']
  assert (len(train), len(val), len(test)) == (1000, 500, 500)
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=100), 10)
  np.testing.assert_array_equal(np.bincount(val.labels, minlength=100), 5)
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=100), 5)
  # Validation images come from the held-out part: same images as the split's val indices.
  _, val_idx = cifar100.stratified_split(real_train.labels, 0.1, seed=0)
  held_out = {img.tobytes() for img in real_train.images[val_idx]}
  assert all(img.tobytes() in held_out for img in val.images)
  assert not any(img.tobytes() in held_out for img in train.images[:200])


def test_limits_the_data_cannot_meet_or_that_leave_classes_out_are_warned_about():
  """data.train_limit above the images there are had been capped, and an eval_limit below the
  class count validated on a few classes, both without a word (a flag audit); an eval_limit above
  the validation images too (a fuzz)."""
  cfg = _cfg(source='synthetic', synthetic_size=1000, val_fraction=0.1, train_limit=5000,
             eval_limit=3)
  splits = cifar100.get_splits(cfg)
  notes = cifar100.limit_notes(cfg, 100, splits['train'], splits['val'])
  assert notes == ['data.train_limit=5000 is more than the 900 training images (after the '
                   'validation hold-out): all 900 are used',
                   'data.eval_limit=3 is fewer than the 100 classes: validation (and the best '
                   'checkpoint) rests on 3 images of 3 classes']
  cfg.eval_limit = 101
  splits = cifar100.get_splits(cfg)
  assert cifar100.limit_notes(cfg, 100, splits['train'], splits['val'])[1:] == [
      'data.eval_limit=101 is more than the 100 validation images: all 100 are used']
  cfg.train_limit, cfg.eval_limit = 900, 100  # Met, and every class: nothing to say.
  splits = cifar100.get_splits(cfg)
  assert not cifar100.limit_notes(cfg, 100, splits['train'], splits['val'])


def test_get_splits_synthetic_and_unknown_source():
  splits = cifar100.get_splits(_cfg(source='synthetic', synthetic_size=1000, val_fraction=0.1))
  assert (len(splits['train']), len(splits['val']), len(splits['test'])) == (900, 100, 1000)
  for split in splits.values():
    assert split.images.shape[1:] == (32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.labels.max() < 100
  np.testing.assert_array_equal(np.bincount(splits['test'].labels), 10)
  again = cifar100.get_splits(_cfg(source='synthetic', synthetic_size=1000, val_fraction=0.1))
  np.testing.assert_array_equal(again['train'].images, splits['train'].images)
  every = cifar100.get_splits(_cfg(source='synthetic', synthetic_size=1000, val_fraction=0.0))
  assert not np.array_equal(every['train'].images, splits['test'].images)  # Its own test images.
  with pytest.raises(ValueError, match='data.source'):
    cifar100.get_splits(_cfg(source='imagenet'))


def test_every_split_keeps_each_images_superclass_through_the_hold_out_and_the_limits():
  """Split.subset takes the coarse labels with the same indices as the images and fine labels: a
  subset that kept the whole split's coarse labels had passed every other test (a mutation audit),
  while the superclass metrics read them."""
  cfg = _cfg(source='synthetic', synthetic_size=1000, val_fraction=0.1, train_limit=300,
             eval_limit=200)
  table = cifar100.superclass_table('synthetic')
  splits = cifar100.get_splits(cfg)
  assert [len(splits[k]) for k in ('train', 'val', 'test')] == [300, 100, 200]
  for name, split in splits.items():
    assert split.coarse_labels.shape == split.labels.shape, name
    np.testing.assert_array_equal(split.coarse_labels, table[split.labels], err_msg=name)
