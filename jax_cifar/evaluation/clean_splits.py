"""The clean splits' numbers: val and test top-1, top-5, loss and calibration from one prediction
pass each, the test split's per-class and per-superclass accuracy and its confusion matrix."""

from __future__ import annotations

import functools
import pathlib

import jax
import numpy as np
from absl import logging

from jax_cifar.data import cifar100
from jax_cifar.evaluation import figures, inference
from jax_cifar.evaluation import metrics as metrics_lib
from jax_cifar.evaluation.inference import Predictor


def _class_names(config) -> tuple[list[str], list[str]]:
  if config.data.source == 'tfds':  # The same dataset: its names (had been class_0, ...).
    return cifar100.class_names()
  if config.data.source == 'local':
    try:
      return cifar100.class_names(cifar100.resolve_data_dir(config.data.dir))
    except cifar100.DataError as e:
      logging.warning('No class names (%s); using indices.', e)
  return ([f'class_{i}' for i in range(config.model.num_classes)],
          [f'superclass_{i}' for i in range(cifar100.NUM_COARSE_CLASSES)])


def evaluate_split(predictor: Predictor, split: cifar100.Split, name: str, config,
                   figure: pathlib.Path | None = None, draw_later: list | None = None,
                   run_name: str | None = None) -> tuple[dict, dict]:
  """(scalars, per-class details) of one split; draws the confusion matrix when `figure` is set
  (with `draw_later`, appends the drawing to it instead, for when the evaluation completes), its
  title naming `run_name` as the heatmaps do."""
  scalars, log_p = inference.split_metrics(predictor, split, name)  # --bn_adapt: one chunk.
  pred, labels, num_classes = log_p.argmax(-1), split.labels, config.model.num_classes
  fine_names, coarse_names = _class_names(config)
  details = {'per_class_accuracy': metrics_lib.named(
      metrics_lib.group_accuracy(pred, labels, labels, num_classes), fine_names)}
  class_to_coarse = None
  if split.coarse_labels is not None and num_classes == cifar100.NUM_CLASSES:
    class_to_coarse = cifar100.superclass_table(config.data.source)
    ncoarse = cifar100.NUM_COARSE_CLASSES  # per_superclass: fine top-1 grouped by superclass.
    details['per_superclass_accuracy'] = metrics_lib.named(
        metrics_lib.group_accuracy(pred, labels, split.coarse_labels, ncoarse), coarse_names)
    scalars['superclass_accuracy'] = float(np.mean(class_to_coarse[pred] == split.coarse_labels))
  if figure is not None and jax.process_index() == 0:
    cm = metrics_lib.confusion_matrix(pred, labels, num_classes)
    draw = functools.partial(figures.plot_confusion, cm, figure,
                             f'{run_name + ": " if run_name else ""}{name} confusion (top-1 '
                             f'{100 * scalars["accuracy"]:.2f}%, {len(labels):,} images)',
                             class_to_coarse, coarse_names)
    if draw_later is None:
      draw()
    else:
      draw_later.append(draw)
  return scalars, details


def is_part_of_test_set(data_cfg, test_size: int) -> bool:
  """Whether data.eval_limit left out some of the real test split's images (a limit at or above
  its size keeps them all; a synthetic split has no images to leave out)."""
  return bool(data_cfg.eval_limit and data_cfg.source != 'synthetic'
              and test_size < cifar100.TEST_SIZE)


def evaluate_clean(predictor: Predictor, config, confusion_png: pathlib.Path | None,
                    draw_later: list, run_name: str) -> dict:
  """val_* and test_* numbers (per-class details for test); the splits are freed on return."""
  splits, result = cifar100.get_splits(config.data), {}
  test = splits['test']
  if test is not None and is_part_of_test_set(config.data, len(test)) and jax.process_index() == 0:
    logging.warning('test: %d class-balanced test images, not all of them (the run\'s '
                    'data.eval_limit=%d; every image: add --config.data.eval_limit=0)', len(test),
                    config.data.eval_limit)  # (Only test_count had said so.)
  for name in ('val', 'test'):
    if splits[name] is not None and len(splits[name]):
      figure = confusion_png if name == 'test' else None
      scalars, details = evaluate_split(predictor, splits[name], name, config, figure, draw_later,
                                        run_name)
      result.update({f'{name}_{k}': v for k, v in scalars.items()})
      if name == 'test':
        result.update({f'{name}_{k}': v for k, v in details.items()})
  return result
