"""Entry point: evaluate a trained run on the clean test split, the OOD submission set and CIFAR-100-C.

python -m jax_cifar.evaluate --config configs/NAME.py --workdir DIR [--checkpoint best|latest|PATH]
    [--tta_flip] [--ood_dir D [--submission FILE.csv]] [--cifar100c_dir D]
Writes WORKDIR/eval_<tag>.json (every number, per class and per superclass included) and
confusion_<tag>.png, where <tag> is best, latest or path (+ _tta with --tta_flip); with
--cifar100c_dir also cifar100c_<tag>.png. The last line printed is one JSON object with the scalar
results, at least `test_accuracy` (a fraction).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

from jax_cifar import checkpoints, config_validation, metrics_lib, optim, parallel, report
from jax_cifar import submission, trainer
from jax_cifar.data import cifar100, ood, pipeline
from jax_cifar.train_step import predict_step

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The run\'s configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'The training run\'s directory.')
flags.DEFINE_string('checkpoint', 'best', "'best', 'latest', or a path to a checkpoint step folder.")
flags.DEFINE_bool('tta_flip', False, 'Average the softmax of each image and its horizontal flip.')
flags.DEFINE_string('ood_dir', None, 'Folder of distortion00.npy .. distortion18.npy to predict.')
flags.DEFINE_string('submission', None, 'Submission CSV to write for --ood_dir '
                    '(default WORKDIR/submission_<tag>.csv).')
flags.DEFINE_string('cifar100c_dir', None, 'CIFAR-100-C folder: <corruption>.npy and labels.npy.')
flags.mark_flags_as_required(['config', 'workdir'])


def restore_state(config, workdir: str, which: str, mesh):
  """(state, graphdef, step) from the run's 'best'/'latest' checkpoint or a step folder path."""
  tx, _ = optim.make_optimizer(config.optim, total_steps=1, steps_per_epoch=1)  # Structure only.
  target, graphdef = trainer.init_state(config, tx, mesh)
  if which in ('best', 'latest'):
    ckpts = checkpoints.Checkpoints(workdir, create=False)
    restored = ckpts.restore(which, target)
    if restored is None:
      raise checkpoints.CheckpointError(f'no {which!r} checkpoint in {workdir}/checkpoints')
    return restored[0], graphdef, restored[1]
  path = pathlib.Path(which).absolute()
  item = path / 'default' if (path / 'default').exists() else path
  if not item.exists():
    raise checkpoints.CheckpointError(f'checkpoint path {path} does not exist')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  state = ocp.StandardCheckpointer().restore(item, abstract)
  return state, graphdef, int(state.step)


# ---------------------------------------------------------------------------------------------
# Batched, sharded inference over any uint8 [N, 32, 32, 3] array (memory maps included)
# ---------------------------------------------------------------------------------------------
def _log_probs(params, batch_stats, batch: dict, *, graphdef, config, tta_flip: bool,
               labels_only: bool) -> jax.Array:
  images = batch['image']
  log_p = jax.nn.log_softmax(predict_step(params, batch_stats, images, graphdef=graphdef,
                                          config=config))
  if tta_flip:  # Mean of the two softmaxes, kept in log space: log((p + q) / 2).
    flipped = predict_step(params, batch_stats, images[:, :, ::-1], graphdef=graphdef, config=config)
    log_p = jnp.logaddexp(log_p, jax.nn.log_softmax(flipped)) - jnp.log(2.0)
  return jnp.argmax(log_p, -1).astype(jnp.int32) if labels_only else log_p


def make_predict(config, graphdef, mesh, *, tta_flip: bool = False, labels_only: bool = False):
  """Jitted (params, batch_stats, batch) -> log-probabilities [B, C] (or argmax labels [B]).

  The batch is sharded over the 'data' axis; the output is replicated, so every process can read
  all of it (process 0 writes the files).
  """
  repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  fn = functools.partial(_log_probs, graphdef=graphdef, config=config, tta_flip=tta_flip,
                         labels_only=labels_only)
  return jax.jit(fn, in_shardings=(repl, repl, data), out_shardings=repl)


@dataclasses.dataclass
class Predictor:
  """A restored model and its compiled prediction functions."""
  state: Any
  mesh: Any
  batch_size: int
  log_probs_fn: Any
  labels_fn: Any

  def run(self, images: np.ndarray, desc: str, labels_only: bool = False) -> np.ndarray:
    """Predictions for every row of `images`; the padded rows of the last batch are dropped."""
    fn = self.labels_fn if labels_only else self.log_probs_fn
    split = cifar100.Split(images, np.zeros(len(images), np.int32), None)
    batches = parallel.prefetch_to_device(pipeline.eval_batches(split, self.batch_size),
                                          parallel.batch_sharded(self.mesh))
    outs, pending = [], None
    with tqdm.tqdm(total=len(images), desc=desc, unit='img', leave=False, mininterval=1.0,
                   disable=jax.process_index() != 0) as bar:
      for batch in batches:
        out = fn(self.state.params, self.state.batch_stats, batch)  # Dispatch, then fetch the last.
        if pending is not None:
          outs.append(np.asarray(jax.device_get(pending)))
          bar.update(len(outs[-1]))
        pending = out
      if pending is not None:
        outs.append(np.asarray(jax.device_get(pending)))
        bar.update(len(outs[-1]))
    return np.concatenate(outs)[:len(images)]


def load_predictor(config, workdir: str, which: str, tta_flip: bool = False):
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.eval_batch_size, 'train.eval_batch_size')
  state, graphdef, step = restore_state(config, workdir, which, mesh)
  make = functools.partial(make_predict, config, graphdef, mesh, tta_flip=tta_flip)
  return Predictor(state, mesh, config.train.eval_batch_size, make(),
                   make(labels_only=True)), step


# ---------------------------------------------------------------------------------------------
# Clean splits, the OOD submission, CIFAR-100-C
# ---------------------------------------------------------------------------------------------
def _class_names(config) -> tuple[list[str], list[str]]:
  if config.data.source == 'local':
    try:
      return cifar100.class_names(cifar100.resolve_data_dir(config.data.dir))
    except cifar100.DataError as e:
      logging.warning('No class names (%s); using indices.', e)
  return ([f'class_{i}' for i in range(config.model.num_classes)],
          [f'superclass_{i}' for i in range(cifar100.NUM_COARSE_CLASSES)])


def evaluate_split(predictor: Predictor, split: cifar100.Split, name: str, config,
                   figure: pathlib.Path | None = None) -> tuple[dict, dict]:
  """(scalars, per-class details) of one split; draws the confusion matrix when `figure` is set."""
  log_p = predictor.run(split.images, desc=name)
  scalars = metrics_lib.classification_metrics(log_p, split.labels)
  pred, labels, num_classes = log_p.argmax(-1), split.labels, config.model.num_classes
  fine_names, coarse_names = _class_names(config)
  details = {'per_class_accuracy': metrics_lib.named(
      metrics_lib.group_accuracy(pred, labels, labels, num_classes), fine_names)}
  class_to_coarse = None
  if split.coarse_labels is not None and num_classes == cifar100.NUM_CLASSES:
    class_to_coarse = np.zeros(num_classes, np.int64)
    class_to_coarse[labels] = split.coarse_labels
    ncoarse = cifar100.NUM_COARSE_CLASSES
    details['per_superclass_accuracy'] = metrics_lib.named(
        metrics_lib.group_accuracy(pred, labels, split.coarse_labels, ncoarse), coarse_names)
    scalars['superclass_accuracy'] = float(np.mean(class_to_coarse[pred] == split.coarse_labels))
  if figure is not None and jax.process_index() == 0:
    cm = metrics_lib.confusion_matrix(pred, labels, num_classes)
    report.plot_confusion(cm, figure, f'{name}: confusion (top-1 {scalars["accuracy"]:.3f})',
                          class_to_coarse, coarse_names)
  return scalars, details


def predict_submission(predictor: Predictor, ood_dir: str, csv_path: pathlib.Path,
                       files: list[ood.ImageFile]) -> dict:
  """Streams the 19 distortion files (one memory map at a time) into the submission CSV.

  With a labels.npy in `ood_dir` (as `jax_cifar.corrupt` writes), also scores each file.
  """
  labels_path = pathlib.Path(ood_dir) / ood.LABELS_FILE
  truth = ood.load_labels(labels_path, files[0].num_images) if labels_path.exists() else None
  scores = {}
  writer = (submission.SubmissionWriter(csv_path, files[0].num_images)
            if jax.process_index() == 0 else contextlib.nullcontext())
  with writer:
    for d, f in enumerate(tqdm.tqdm(files, desc='OOD files', unit='file',
                                    disable=jax.process_index() != 0)):
      images = f.open()
      pred = predictor.run(images, desc=f.path.stem, labels_only=True)
      del images  # Unmap before the next file, so at most one file's pages stay resident.
      if jax.process_index() == 0:
        writer.add(d, pred)
      if truth is not None:
        scores[f.path.stem] = ood.severity_accuracy(pred, truth)
  result = {'submission': str(csv_path)}
  if scores:
    result['ood_accuracy'] = float(np.mean([np.mean(v) for v in scores.values()]))
    result['ood_per_distortion'] = scores
  return result


def evaluate_cifar100c(predictor: Predictor, c_dir: str, files: dict[str, ood.ImageFile],
                       figure: pathlib.Path) -> dict:
  """Accuracy per corruption x severity, and means over the 15 standard and over all present."""
  n = next(iter(files.values())).num_images
  labels = ood.load_labels(pathlib.Path(c_dir) / ood.LABELS_FILE, n)
  table = {}
  for name, f in tqdm.tqdm(files.items(), desc='CIFAR-100-C', unit='file',
                           disable=jax.process_index() != 0):
    images = f.open()
    table[name] = ood.severity_accuracy(predictor.run(images, desc=name, labels_only=True), labels)
    del images
  standard = [np.mean(table[k]) for k in ood.STANDARD_CORRUPTIONS if k in table]
  result = {
      'cifar100c_mean_accuracy_all': float(np.mean([np.mean(v) for v in table.values()])),
      'cifar100c_num_corruptions': len(table),
      'cifar100c_per_severity': [float(x) for x in np.mean(list(table.values()), axis=0)],
      'cifar100c': table,
  }
  if len(standard) == len(ood.STANDARD_CORRUPTIONS):
    result['cifar100c_mean_accuracy'] = float(np.mean(standard))  # The benchmark's number.
  if jax.process_index() == 0:
    report.plot_corruption_heatmap(table, figure, f'CIFAR-100-C accuracy (mean over {len(table)}: '
                                   f'{result["cifar100c_mean_accuracy_all"]:.3f})')
  return result


def _evaluate_clean(predictor: Predictor, config, confusion_png: pathlib.Path) -> dict:
  """val_* and test_* numbers (per-class details for test); the splits are freed on return."""
  splits, result = cifar100.get_splits(config.data), {}
  for name in ('val', 'test'):
    if splits[name] is not None and len(splits[name]):
      figure = confusion_png if name == 'test' else None
      scalars, details = evaluate_split(predictor, splits[name], name, config, figure)
      result.update({f'{name}_{k}': v for k, v in scalars.items()})
      if name == 'test':
        result.update({f'{name}_{k}': v for k, v in details.items()})
  return result


def evaluate(config, workdir: str, which: str = 'best', *, tta_flip: bool = False,
             ood_dir: str | None = None, submission_csv: str | None = None,
             cifar100c_dir: str | None = None) -> dict:
  """Evaluates a checkpoint; writes eval_<tag>.json and figures into `workdir`; returns the numbers."""
  config_validation.validate(config)
  # Check every OOD input before anything compiles: bad files fail in a second, naming the file.
  ood_files = ood.check_distortion_dir(ood_dir) if ood_dir else None
  c_files = ood.check_cifar100c_dir(cifar100c_dir) if cifar100c_dir else None
  if submission_csv and not ood_dir:
    raise ValueError('--submission needs --ood_dir (the folder of distortion00..18.npy)')
  workdir_path = pathlib.Path(workdir)
  tag = (which if which in ('best', 'latest') else 'path') + ('_tta' if tta_flip else '')
  predictor, step = load_predictor(config, workdir, which, tta_flip)
  result = {'checkpoint': which, 'step': step, 'tta_flip': tta_flip}
  result.update(_evaluate_clean(predictor, config, workdir_path / f'confusion_{tag}.png'))
  if ood_files:
    csv_path = pathlib.Path(submission_csv or workdir_path / f'submission_{tag}.csv')
    result.update(predict_submission(predictor, ood_dir, csv_path, ood_files))
  if c_files:
    result.update(evaluate_cifar100c(predictor, cifar100c_dir, c_files,
                                     workdir_path / f'cifar100c_{tag}.png'))
  if jax.process_index() == 0:
    (workdir_path / f'eval_{tag}.json').write_text(json.dumps(result, indent=2) + '\n')
  return result


def main(argv):
  del argv
  try:
    parallel.maybe_initialize_distributed()
    parallel.enable_compilation_cache()
    result = evaluate(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint, tta_flip=FLAGS.tta_flip,
                      ood_dir=FLAGS.ood_dir, submission_csv=FLAGS.submission,
                      cifar100c_dir=FLAGS.cifar100c_dir)
  except (config_validation.ConfigError, cifar100.DataError, checkpoints.CheckpointError,
          OSError, ValueError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}),
        flush=True)


if __name__ == '__main__':
  app.run(main)
