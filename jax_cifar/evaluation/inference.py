"""Batched, sharded inference over uint8 images, and the metrics of a labelled split.

One compiled prediction function per (config, TTA mode) serves the trainer's validation and every
evaluation (clean splits, the OOD submission, CIFAR-100-C), so the trainer's val_accuracy and
`evaluate`'s are the same number; loss, top-1 and top-5 come from metrics_lib on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shlex
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from jax_cifar import config_validation, errors, image_checks, interrupt, parallel, step_folders
from jax_cifar import resume_rules, tracking, xla_options
from jax_cifar.evaluation import bn_adapt
from jax_cifar.evaluation import metrics as metrics_lib
from jax_cifar import state as state_lib
from jax_cifar.evaluation import tent as tent_lib
from jax_cifar.evaluation import tta
from jax_cifar import workdir as workdir_lib
from jax_cifar.data import cifar100, pipeline
from jax_cifar.state import predict_step


# ---------------------------------------------------------------------------------------------
# Batched, sharded inference over any uint8 [N, 32, 32, 3] array (memory maps included)
# ---------------------------------------------------------------------------------------------
def _log_probs(params, batch_stats, batch: dict, *, graphdef, config, tta_mode: str,
               tta_average: str, labels_only: bool) -> jax.Array:
  def one_view(images):
    return jax.nn.log_softmax(predict_step(params, batch_stats, images, graphdef=graphdef,
                                           config=config))

  log_p = tta.mean_log_probs(one_view, batch['image'], tta_mode, config.augment.crop_mode,
                             tta_average)
  return labels_of(log_p) if labels_only else log_p


def labels_of(log_p: jax.Array) -> jax.Array:
  """The argmax class of each row, -1 for a row that is not all finite (Predictor.run refuses it:
  argmax reads NaN as class 0)."""
  return jnp.where(jnp.isfinite(log_p).all(-1), jnp.argmax(log_p, -1), -1).astype(jnp.int32)


def make_predict(config, graphdef, mesh, *, tta_mode: str = 'none', tta_flip: bool = False,
                 labels_only: bool = False, tta_average: str = 'probs'):
  """Jitted (params, batch_stats, batch) -> log-probabilities [B, C] (or argmax labels [B]).

  The batch is sharded over the 'data' axis; the output is replicated, so every process can read
  all of it (process 0 writes the files). `tta_flip=True` is the old spelling of tta_mode='flip';
  `tta_average` says what is averaged over the views (tta.mean_log_probs).
  """
  tta_mode = resolve_tta(tta_mode, tta_flip)
  check_tta_average(tta_average, tta_mode)
  repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  fn = functools.partial(_log_probs, graphdef=graphdef, config=config, tta_mode=tta_mode,
                         tta_average=tta_average, labels_only=labels_only)
  return jax.jit(fn, in_shardings=(repl, repl, data), out_shardings=repl,
                 compiler_options=xla_options.step_compiler_options(config.model.dtype))


def resolve_tta(tta_mode: str, tta_flip: bool) -> str:
  """The TTA mode from --tta and its old alias --tta_flip (which may only agree with it)."""
  if tta_mode not in tta.MODES:
    raise config_validation.ConfigError(
        f'--tta (tta_mode) must be one of {", ".join(tta.MODES)}, got {tta_mode!r}')
  if tta_flip and tta_mode not in ('none', 'flip'):
    raise config_validation.ConfigError(
        f'--tta_flip (= --tta flip) contradicts --tta {tta_mode}; give only --tta')
  return 'flip' if tta_flip else tta_mode


def check_tta_average(tta_average: str, tta_mode: str, given: bool = False) -> None:
  """--tta_average names a known average; a non-default one, or one `given` on the command line,
  is refused where there is one view to average (as --tent's settings without --tent: a setting
  that would change nothing is not silently taken)."""
  if tta_average not in tta.AVERAGES:
    raise config_validation.ConfigError(
        f'--tta_average (tta_average) must be one of {", ".join(tta.AVERAGES)}, '
        f'got {tta_average!r}')
  if (given or tta_average != 'probs') and tta_mode == 'none':
    raise config_validation.ConfigError(
        f'--tta_average {tta_average}: used only with --tta flip or shifts (one view has nothing '
        'to average)')


# Under this many images a chunk's own BatchNorm statistics are noisy: --bn_adapt on 10 images
# per chunk had taken a model from 6.2 to 3.7 % OOD without a word (a review).
SMALL_CHUNK = 100


def _check_finite_outputs(out: np.ndarray, labels_only: bool, desc: str) -> None:
  """Refuses predictions of non-finite outputs: argmax reads a row of NaNs as class 0, and a
  checkpoint of finite weights whose forward pass overflowed had scored 1% (chance) and written a
  submission of class 0 throughout, exit status 0 (a numerics review)."""
  bad = int((out < 0).sum() if labels_only else (~np.isfinite(out).all(-1)).sum())
  if bad:
    raise errors.UserError(
        f'{desc}: the model\'s outputs are not finite (NaN or inf) for {bad} of {len(out)} images, '
        'so they name no class: its forward pass overflows (a weight or BatchNorm statistic too '
        'large, or past the range of model.dtype)')


@dataclasses.dataclass
class Predictor:
  """A restored model, its compiled prediction functions and, with --bn_adapt or --tent, its
  per-chunk adapter (`adapt_model(params, batch_stats, images)` -> both, adapted)."""
  state: Any
  mesh: Any
  batch_size: int
  log_probs_fn: Any
  labels_fn: Any
  adapter: bn_adapt.BNAdapter | tent_lib.TentAdapter | None = None
  progress: bool = True  # A progress bar per run() (process 0; removed when the run ends).
  weights: str = 'raw'  # Which weights were loaded: 'raw' or 'ema'.
  _small_chunk_said: bool = dataclasses.field(default=False, init=False, repr=False)

  def run(self, images: np.ndarray, desc: str, labels_only: bool = False,
          chunk: int | None = None) -> np.ndarray:
    """Predictions for every row of `images`, one progress bar. With BN adaptation (or Tent), each
    block of `chunk` rows (default: all) is predicted with statistics (and BatchNorm scales and
    biases) adapted to that block alone; without them, `chunk` is ignored (each block's last
    batch had been padded to a whole batch: 20 images per severity ran 15x slower)."""
    images = image_checks.uint8_images(images, 'Predictor.run')
    if not len(images):  # No rows, of the width one image's would have (range() had raised).
      blank = np.zeros((1,) + images.shape[1:], np.uint8)
      return self._predict(blank, self.state.params, self.state.batch_stats, labels_only,
                           tqdm.tqdm(disable=True))[:0]
    chunk = (chunk if self.adapter else None) or len(images)
    if self.adapter and min(chunk, len(images)) < SMALL_CHUNK and not self._small_chunk_said:
      self._small_chunk_said = True  # Once per evaluation.
      logging.warning('--bn_adapt%s estimates the BatchNorm statistics of each chunk from its '
                      'own images, here %d: with fewer than %d they are noisy, and adapting '
                      'may cost accuracy rather than add it.',
                      '/--tent' if isinstance(self.adapter, tent_lib.TentAdapter) else '',
                      min(chunk, len(images)), SMALL_CHUNK)
    passes = 1 + (self.adapter.passes if self.adapter else 0)
    desc += f' ({passes} passes)' if passes > 1 else ''  # 8 images had shown as 16/16 img.
    outs = []
    with tqdm.tqdm(total=passes * len(images), desc=desc, unit='img', leave=False,
                   **tracking.transient_bar(not self.progress or jax.process_index() != 0)) as bar:
      for start in range(0, len(images), chunk):
        interrupt.FLAG.check(collective=True)
        part = images[start:start + chunk]
        # Every chunk starts from the checkpoint's parameters and statistics.
        params, stats = self.state.params, self.state.batch_stats
        if self.adapter:
          params, stats = self.adapter.adapt_model(params, stats, part, progress=bar.update,
                                                   check=interrupt.FLAG.check)
        outs.append(self._predict(part, params, stats, labels_only, bar))
    # A signal during the last batches (fetched after the loop's checks) stops here, before any
    # result is written: it had been dropped, and the run exited 0 (an audit).
    interrupt.at_event('predicted', 0)  # Test hook: a signal after the loop's last check.
    interrupt.FLAG.check(collective=True)
    out = np.concatenate(outs)
    _check_finite_outputs(out, labels_only, desc)
    return out

  def _predict(self, images: np.ndarray, params, batch_stats, labels_only: bool,
               bar) -> np.ndarray:
    """The padded rows of the last batch are dropped."""
    fn = self.labels_fn if labels_only else self.log_probs_fn
    size = parallel.chunk_batch_size(len(images), self.batch_size)
    # The images alone go to the devices: the padded rows are cut below (zero labels, and the
    # mask, which the predict functions never read, had been two more transfers per batch).
    batches = parallel.prefetch_to_device(
        ({'image': b['image']} for b in pipeline.image_batches(images, size)),
        parallel.batch_sharded(self.mesh))
    outs, pending = [], None

    def fetch(out) -> None:
      outs.append(np.asarray(jax.device_get(out)))
      bar.update(min(len(outs[-1]), len(images) - (len(outs) - 1) * size))

    for batch in batches:
      interrupt.FLAG.check()
      out = fn(params, batch_stats, batch)  # Dispatch, then fetch the previous one.
      if pending is not None:
        fetch(pending)
      pending = out
    if pending is not None:
      fetch(pending)
    return np.concatenate(outs)[:len(images)]


def load_predictor(config, workdir: str, which: str, tta_flip: bool = False, *,
                   tta_mode: str = 'none', adapt_bn: bool = False,
                   weights: str = 'raw', tent: tent_lib.TentOptions | bool | None = None,
                   tta_average: str = 'probs') -> tuple[Predictor, int]:
  """(predictor, step) of a checkpoint's raw or EMA weights ('auto': the one better on validation
  at that step; `predictor.weights` says which); `adapt_bn` adds the per-chunk BatchNorm adapter,
  `tent` the per-chunk entropy minimisation (which implies the BatchNorm adaptation): True for
  `tent_lib.TentOptions()`'s defaults, or the options. `which`: 'best', 'latest', a step number
  or a step folder's path (as load_model). `tta_flip` is the old spelling of tta_mode='flip';
  `tta_average` ('probs' or 'log_probs') what its views average."""
  if not isinstance(tta_flip, (bool, np.bool_)):  # ('shifts' as the 4th argument had run flip.)
    raise TypeError(f'tta_flip is True or False (the old spelling of tta_mode=\'flip\'), got '
                    f'{tta_flip!r}: give the views as tta_mode=...')
  tent = tent_lib.resolve(tent)
  check_tta_average(tta_average, resolve_tta(tta_mode, tta_flip))  # (Before the restore.)
  workdir, which = map(workdir_lib.expanded, (workdir, which))  # '~/runs/a' as load_model.
  config_validation.validate(config, launch=False)  # (An edited config: named, not a traceback.)
  # As load_model and evaluate: a step number (an int had been a TypeError, '3' a missing path),
  # and a config that prepares images as the run (or the run whose step folder it is) did; another
  # one had predicted at the wrong size or normalisation without a word (a library-user review).
  which = step_folders.kept_step_folder(workdir, which, config_validation.ConfigError) or which
  check_matches_run(config, workdir, given="load_predictor's config", short='config',
                    advice='Give the run\'s own: jax_cifar.run_config(RUN)')
  check_step_folder_of_another_run(
      config, workdir, str(which), given="load_predictor's run ({workdir})", short='workdir',
      advice='Load that run itself: load_predictor(jax_cifar.run_config({run_py}), {run_py}, ...)')
  # Views the run's training never showed it: said, not refused (its validation numbers decide).
  trained = (workdir_lib.previous_config(pathlib.Path(owning_run(workdir, which))) or {}).get(
      'augment')  # The run's own training (`config` may be another that predicts alike).
  augment = trained if isinstance(trained, dict) else config.augment.to_dict()
  for line in tta.unseen_views(resolve_tta(tta_mode, tta_flip), augment):
    if jax.process_index() == 0:  # (Once, not once per process.)
      logging.warning('%s', line)
  mesh = parallel.make_mesh()
  batch_size = parallel.eval_batch_size(config.train.eval_batch_size)
  state, graphdef, step = state_lib.restore(config, workdir, which, mesh)
  # Each process listed the folder itself: a run still saving had let them restore different
  # steps, mixed silently in one evaluation (a review). Refused, naming each process's step.
  step = parallel.same_on_every_process(step, f"the step of '{which}' restored")
  # --weights auto ranks the two at that step by the validation rows of the run that saved it.
  weights = state_lib.resolve_weights(weights, state, owning_run(workdir, which), step)
  state = state_lib.with_weights(state, weights, workdir)
  # (BatchNorm statistics that adaptation re-estimates need not be finite.)
  state_lib.check_finite(state.params, None if adapt_bn or tent else state.batch_stats,
                         f'checkpoint step {step} ({weights} weights)')
  make = functools.partial(make_predict, config, graphdef, mesh, tta_mode=tta_mode,
                           tta_flip=tta_flip, tta_average=tta_average)
  adapter = None
  if tent:
    adapter = tent_lib.TentAdapter(config, graphdef, mesh, tent, state.params, state.batch_stats,
                                   batch_size)
  elif adapt_bn:
    adapter = bn_adapt.BNAdapter(config, graphdef, mesh, batch_size, state.params,
                                 state.batch_stats)
  return Predictor(state, mesh, batch_size, make(), make(labels_only=True),
                   adapter, weights=weights), step


# Keys of a run's config that change what a checkpoint predicts (or whether it restores at all).
PREDICTION_KEYS = ('model.', 'augment.crop_mode')
NOT_PREDICTION_KEYS = ('model.pretrained', 'model.init_from', 'model.remat', 'model.scan_blocks')
# ... and the keys that decide which training images were held out as validation (val_* numbers of
# another split would be measured partly on images the run trained on); val_fraction 0 is allowed.
SPLIT_KEYS = ('data.val_fraction', 'data.split_seed', 'data.synthetic_size')


def check_matches_run(config, run_dir: str, given: str = '--config', advice: str = (
    'Omit --config to use the run\'s own config'), short: str = '') -> None:
  """Refuses a config (`given`; `short` names it after each differing value, default `given`)
  whose prediction keys differ from the run's own config.json, which would write eval_<tag>.json
  numbers of a model the run never trained."""
  run = workdir_lib.previous_config(pathlib.Path(run_dir))
  if run is None:
    return  # No config.json (e.g. a copied checkpoint folder): the given config is all there is.
  changes = resume_rules.config_changes(run, json.loads(json.dumps(config.to_dict(), default=str)))
  validates = config.data.val_fraction > 0  # 0: no val_* numbers at all (test and OOD only).
  differ = [f'{k} {old!r} (run) vs {new!r} ({short or given})' for k, (old, new) in changes.items()
            if (k.startswith(PREDICTION_KEYS) and not k.startswith(NOT_PREDICTION_KEYS))
            or (k in SPLIT_KEYS and validates)
            # Synthetic images for a run of real ones (or back) had replaced its test numbers
            # (an audit); local and tfds are the same images.
            or (k == 'data.source' and 'synthetic' in (old, new))]
  if differ:
    raise config_validation.ConfigError(
        f'{given} differs from the run\'s {run_dir}/{workdir_lib.CONFIG_FILE} in keys that change '
        f'its predictions or its validation split: {"; ".join(differ)}. {advice}')


def check_step_folder_of_another_run(config, workdir: str, which: str,
                                     advice: str = 'Evaluate that run itself: --workdir {run}',
                                     given: str = 'the config evaluating it ({workdir})',
                                     short: str = 'evaluating') -> None:
  """A step folder of another run (RUN/checkpoints/{latest,best}/N) is checked against RUN's
  config too: scored under this workdir's config it had given wrong numbers, filed as this run's
  (an audit); load_model had paired it with this run's config, silently (an audit)."""
  source = owning_run(workdir, which)
  if source != workdir:
    check_matches_run(config, str(source), given=given.format(workdir=workdir),
                      advice=advice.format(run=shlex.quote(str(source)), run_py=repr(str(source))),
                      short=short)


def owning_run(workdir: str | os.PathLike, which: str) -> str | os.PathLike:
  """The run whose checkpoint `which` is: another run's folder for a step folder of it
  (RUN/checkpoints/{latest,best}/N), else `workdir` itself."""
  which = str(which)
  if which in ('best', 'latest') or step_folders.is_step_number(which):  # This run's own steps.
    return workdir
  folder = pathlib.Path(os.path.abspath(os.path.expanduser(which)))  # `latest/2` from checkpoints/
  folder = folder.parent if folder.name == 'default' else folder
  if folder.parent.parent.name != 'checkpoints':
    return workdir
  source = folder.parent.parent.parent
  return workdir if source.resolve() == pathlib.Path(workdir).expanduser().resolve() else str(source)


def split_metrics(predictor: Predictor, split: cifar100.Split,
                  desc: str) -> tuple[dict, np.ndarray]:
  """(loss, top-1, top-5, ECE and count; the log-probabilities [N, C]) of a labelled split."""
  log_p = predictor.run(split.images, desc=desc)
  return metrics_lib.classification_metrics(log_p, split.labels), log_p
