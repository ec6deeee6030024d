"""Predicting the distortion sets: the Kaggle submission CSV (`--ood_dir`) and CIFAR-100-C
(`--cifar100c_dir`), one memory-mapped file at a time, each severity block one chunk (the unit of
--bn_adapt and --tent), each finished file kept until the evaluation ends
(jax_cifar/evaluation/kept_predictions.py). Called by jax_cifar/evaluate.py."""

from __future__ import annotations

import contextlib
import json
import pathlib
import sys
import time

import jax
import numpy as np
import tqdm

from jax_cifar import interrupt, parallel, tracking
from jax_cifar.corruptions.store import GENERATOR_VERSION, MANIFEST
from jax_cifar.data import ood
from jax_cifar.evaluation import figures, submission
from jax_cifar.evaluation.inference import Predictor
from jax_cifar.evaluation.kept_predictions import KeptPredictions


def predict_submission(predictor: Predictor, ood_dir: str, csv_path: pathlib.Path,
                       files: list[ood.ImageFile], figure: pathlib.Path | None = None,
                       run_name: str | None = None, draw_later: list | None = None,
                       kept: KeptPredictions | None = None) -> dict:
  """Streams the 19 distortion files (one memory map at a time) into the submission CSV; files
  that `kept` holds from a stopped run with the same settings are not predicted again.

  With a labels.npy in `ood_dir` (as `jax_cifar.corrupt` writes), also scores each file, prints
  the distortion x severity table on stderr and draws it into `figure`, as for CIFAR-100-C. With
  --bn_adapt each severity block of a file is one chunk.
  """
  labels_path = pathlib.Path(ood_dir) / ood.LABELS_FILE
  truth = ood.load_labels(labels_path, files[0].num_images) if labels_path.exists() else None
  _note_older_generator(ood_dir)
  if truth is None and jax.process_index() == 0:  # (Nothing had said why no accuracy came.)
    tracking.say(f'note: {ood_dir} has no {ood.LABELS_FILE}: the submission alone, no OOD '
                 'accuracy or figure (python -m jax_cifar.corrupt writes one with its sets)')
  scores = {}
  # Process 0 writes; every process learns of a failure at each step (parallel.fail_together),
  # else the others went on to their next collective and waited there for minutes.
  writer = (submission.SubmissionWriter(csv_path, files[0].num_images)
            if jax.process_index() == 0 else None)
  start, resumed = time.perf_counter(), 0  # (Files kept by a stopped run: not predicted.)
  _say_resumed(kept, [f'ood_{f.path.stem}' for f in files], 'OOD')
  with contextlib.ExitStack() as stack:
    with parallel.fail_together(f'writing {csv_path}'):
      if writer:
        stack.enter_context(writer)
    for d, f in enumerate(tqdm.tqdm(files, desc='OOD files', unit='file',
                                    disable=jax.process_index() != 0)):
      pred, new = _predict_file(predictor, f, f'ood_{f.path.stem}', f.path.stem, kept)
      resumed += not new
      with parallel.fail_together(f'writing {csv_path}'):
        if writer:
          writer.add(d, pred)
      if truth is not None:
        scores[f.path.stem] = ood.severity_accuracy(pred, truth)
      interrupt.at_event('ood_file', d)
    interrupt.FLAG.check(collective=True)  # A signal during the last file: no CSV either.
    with parallel.fail_together(f'writing {csv_path}'):
      if writer:
        writer.finish()
  seconds = time.perf_counter() - start
  result = {'ood_dir': str(pathlib.Path(ood_dir).resolve()), 'submission': str(csv_path.resolve()),
            'ood_seconds': seconds}
  if resumed < len(files):  # The rate of this run's predictions (kept files took no inference).
    result['ood_images_per_sec'] = (len(files) - resumed) * files[0].num_images / seconds
  if resumed:
    result['ood_files_resumed'] = resumed
  if scores:
    per_chunk = files[0].num_images // ood.SEVERITIES  # (A small set moves in big steps: said.)
    result['ood_accuracy'] = float(np.mean([np.mean(v) for v in scores.values()]))
    result['ood_per_distortion'] = scores
    result['ood_images_per_chunk'] = per_chunk
    if jax.process_index() == 0:  # (Only the JSON had held them, by file name: an audit.)
      _show_table(_by_corruption(ood_dir, scores), f'OOD set ({per_chunk:,} images per cell)',
                  figure, run_name, draw_later)
  return result


def _predict_file(predictor: Predictor, f: ood.ImageFile, name: str, desc: str,
                  kept: KeptPredictions | None) -> tuple[np.ndarray, bool]:
  """`f`'s predicted labels, kept from a stopped run or predicted now (and then kept), and whether
  they were predicted now."""
  pred = kept.get(name, f.num_images) if kept else None
  if pred is not None:
    return pred, False
  images = f.open()
  pred = predictor.run(images, desc=desc, labels_only=True, chunk=f.per_severity)
  del images  # Unmap before the next file, so at most one file's pages stay resident.
  if kept:
    kept.keep(name, pred)
  return pred, True


def _say_resumed(kept: KeptPredictions | None, names: list[str], what: str) -> None:
  n = kept.count(names) if kept else 0
  if n:
    tracking.say(f'{what}: {n} of {len(names)} files were predicted by a stopped evaluation with '
                 f'the same settings (kept in {kept.folder}); predicting the other {len(names) - n}')


def _note_older_generator(folder: str) -> None:
  """A note (process 0) where `folder`'s manifest records an older jax_cifar.corrupt generator:
  such a set is still read, but its accuracy is not comparable with a set made now, and nothing
  had said so (an upgrade review)."""
  try:
    version = json.loads((pathlib.Path(folder) / MANIFEST).read_text()).get('generator_version')
  except (OSError, ValueError, AttributeError, RecursionError):  # None (Kaggle's), or hand-made.
    return
  if (jax.process_index() == 0 and isinstance(version, int) and not isinstance(version, bool)
      and version < GENERATOR_VERSION):
    tracking.say(f'note: {folder} was made by an older python -m jax_cifar.corrupt (generator '
                 f'version {version}, now {GENERATOR_VERSION}; docs/changes.md says what changed): '
                 'its accuracy is not comparable with that of a set made now; the same command '
                 'with --overwrite makes it anew')


def _by_corruption(ood_dir: str, scores: dict[str, list[float]]) -> dict[str, list[float]]:
  """`scores` keyed by the corruption that jax_cifar.corrupt recorded for each file in its
  manifest; by file name (distortion00 ...) when that is not known."""
  try:
    files = json.loads((pathlib.Path(ood_dir) / MANIFEST).read_text())['files']
    # Text values only: a list had reached set() below, a TypeError after every file was predicted.
    names = {pathlib.Path(k).stem: e['corruption'] for k, e in files.items()
             if isinstance(e, dict) and isinstance(e.get('corruption'), str)}
  except (OSError, ValueError, KeyError, TypeError, AttributeError,
          RecursionError):  # None, or hand-edited (nested 100k deep: RecursionError).
    names = {}
  named = [names.get(s) for s in scores]
  if len(set(named)) != len(named) or not all(n in ood.CORRUPTIONS for n in named):
    return scores  # Not one known corruption per file.
  return dict(zip(named, scores.values()))


def _show_table(table: dict[str, list[float]], title: str, figure: pathlib.Path | None,
                run_name: str | None, draw_later: list | None) -> None:
  """Prints the corruption x severity table on stderr (stdout's last line stays the JSON) and
  draws its heatmap into `figure` (with `draw_later`: once the whole evaluation has finished)."""
  name = run_name or (figure.parent.name if figure else 'model')
  if figure is not None:
    draw = lambda: figures.plot_corruption_heatmap(table, figure, name, title)  # pylint: disable=unnecessary-lambda-assignment
    draw() if draw_later is None else draw_later.append(draw)  # pylint: disable=expression-not-assigned
  print(figures.corruption_table_text(table, name, title), file=sys.stderr, flush=True)


def evaluate_cifar100c(predictor: Predictor, c_dir: str, files: dict[str, ood.ImageFile],
                       figure: pathlib.Path | None, run_name: str | None = None,
                       draw_later: list | None = None,
                       kept: KeptPredictions | None = None) -> dict:
  """Accuracy per corruption x severity, and means over the 15 standard and over all present;
  the heatmap, and the table printed on stderr (stdout's last line stays the JSON object).
  Files that `kept` holds from a stopped run with the same settings are not predicted again."""
  n = next(iter(files.values())).num_images
  labels = ood.load_labels(pathlib.Path(c_dir) / ood.LABELS_FILE, n)
  _note_older_generator(c_dir)
  table = {}
  _say_resumed(kept, [f'c_{name}' for name in files], 'CIFAR-100-C')
  for name, f in tqdm.tqdm(files.items(), desc='CIFAR-100-C', unit='file',
                           disable=jax.process_index() != 0):
    pred, _ = _predict_file(predictor, f, f'c_{name}', name, kept)
    table[name] = ood.severity_accuracy(pred, labels)
  means = figures.corruption_means(table)
  result = {'cifar100c_dir': str(pathlib.Path(c_dir).resolve()),
            'cifar100c_images_per_chunk': n // ood.SEVERITIES,
            'cifar100c_mean_accuracy_all': means['all'],
            'cifar100c_num_corruptions': means['num_all'],
            'cifar100c_per_severity': means['per_severity'], 'cifar100c': table}
  if means['standard'] is not None:
    result['cifar100c_mean_accuracy'] = means['standard']  # The benchmark's number.
  if jax.process_index() == 0:
    _show_table(table, f'CIFAR-100-C ({n // ood.SEVERITIES:,} images per cell)', figure, run_name,
                draw_later)
  return result
