"""What evaluate makes of the configs it is given, without a model: the run's own config.json
against --config (keys that change the predictions are refused) and the part-of-the-test-set
warning's rule. End to end with a trained run: test_evaluate.py and test_trainer.py."""

import json

import ml_collections
import pytest

from jax_cifar import config_validation
from jax_cifar import workdir as workdir_lib
from jax_cifar.configs import default
from jax_cifar.evaluation import clean_splits, inference


def test_an_eval_limit_that_keeps_every_image_is_no_part_of_the_test_set():
  """data.eval_limit at or above the split's size keeps all of it: no 'not all of them' (a
  review). (This had been asserted on a synthetic run, which is never warned about: a test that
  could not fail, found by a test-quality audit. The warning itself: test_trainer's smoke run.)"""
  data = ml_collections.ConfigDict({'eval_limit': 2000, 'source': 'local'})
  assert clean_splits.is_part_of_test_set(data, 2000)
  for limit, size in ((20_000, 10_000), (10_000, 10_000), (0, 10_000)):
    data.eval_limit = limit
    assert not clean_splits.is_part_of_test_set(data, size), (limit, size)
  data.eval_limit, data.source = 2000, 'tfds'
  assert clean_splits.is_part_of_test_set(data, 2000)
  data.source = 'synthetic'  # 256 images of noise: nothing of the real test split left out.
  assert not clean_splits.is_part_of_test_set(data, 256)


@pytest.mark.parametrize('run_source,given,refused', [
    ('local', 'synthetic', True), ('local', 'tfds', False), ('tfds', 'local', False)])
def test_data_source_against_the_runs_own(tmp_path, run_source, given, refused):
  """The other way round (a run of real images, synthetic ones given), and local against tfds,
  which read the same images (a test audit: only synthetic -> local had been tested)."""
  recorded = default.get_config()
  recorded.data.source = run_source
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(recorded.to_dict()))
  config = default.get_config()
  config.data.source = given
  if refused:
    with pytest.raises(config_validation.ConfigError,
                       match=rf"data.source '{run_source}' \(run\) vs '{given}' \(--config\)"):
      inference.check_matches_run(config, str(tmp_path))
  else:
    inference.check_matches_run(config, str(tmp_path))


def test_per_class_tables_of_a_tfds_run_name_cifar100s_classes():
  """tfds serves CIFAR-100 itself: its evaluations' per-class tables had said class_0, ... (a
  synthetic run's still do)."""
  c = default.get_config()
  c.data.source = 'tfds'
  fine, coarse = clean_splits._class_names(c)  # pylint: disable=protected-access
  assert (fine[0], fine[99], coarse[19]) == ('apple', 'worm', 'vehicles_2')
  c.data.source = 'synthetic'
  names = clean_splits._class_names(c)  # pylint: disable=protected-access
  assert names[0][:2] == ['class_0', 'class_1']


def test_a_config_whose_crop_mode_differs_from_the_runs_is_refused(tmp_path):
  """augment.crop_mode decides how --tta shifts pads its views: a run trained with 'reflect'
  scored under 'constant' gives other numbers than the run's model would."""
  recorded = default.get_config()
  recorded.augment.crop_mode = 'reflect'
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(recorded.to_dict()))
  with pytest.raises(config_validation.ConfigError,
                     match=r"augment.crop_mode 'reflect' \(run\) vs 'constant' \(--config\)"):
    inference.check_matches_run(default.get_config(), str(tmp_path))
  inference.check_matches_run(recorded, str(tmp_path))


def test_where_a_runs_weights_started_from_is_no_prediction_key(tmp_path):
  """A run started from converted weights or another run's (model.pretrained, model.init_from and
  its _weights) predicts with what it trained: --config without those keys is accepted, as the
  run's own config.json after them (a mutation audit: only remat and scan_blocks had been
  tested)."""
  recorded = default.get_config()
  recorded.model.pretrained = '/weights/resnet18.npz'
  recorded.model.init_from = '/runs/first:best'
  recorded.model.init_from_weights = 'ema'
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(recorded.to_dict()))
  inference.check_matches_run(default.get_config(), str(tmp_path))
  other = default.get_config()
  other.model.normalize = 'imagenet'
  with pytest.raises(config_validation.ConfigError,
                     match=r"model\.normalize 'cifar' \(run\) vs 'imagenet' \(--config\)"):
    inference.check_matches_run(other, str(tmp_path))


def test_a_step_folders_orbax_item_of_another_run_is_checked_against_that_runs_config(tmp_path):
  """OTHER/checkpoints/latest/N/default (the orbax item inside a step folder) is that run's step
  too: checked against OTHER's config.json as the step folder is, and a folder of this run is not
  (a mutation audit: only the step folder itself had been tested)."""
  other = tmp_path / 'other'
  recorded = default.get_config()
  recorded.model.normalize = 'imagenet'
  (other / 'checkpoints' / 'latest' / '2' / 'default').mkdir(parents=True)
  (other / workdir_lib.CONFIG_FILE).write_text(json.dumps(recorded.to_dict()))
  for folder in ('2', '2/default'):
    with pytest.raises(config_validation.ConfigError, match=r"model\.normalize 'imagenet' \(run\) "
                                                            r"vs 'cifar' \(evaluating\)"):
      inference.check_step_folder_of_another_run(default.get_config(), str(tmp_path / 'this'),
                                                  str(other / 'checkpoints' / 'latest' / folder))
  inference.check_step_folder_of_another_run(recorded, str(tmp_path / 'this'),
                                              str(other / 'checkpoints' / 'latest' / '2/default'))
  inference.check_step_folder_of_another_run(default.get_config(), str(other),
                                              str(other / 'checkpoints' / 'latest' / '2/default'))
