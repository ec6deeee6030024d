"""A run's state: the model, the TrainState built for a config, and restoring it from a run.

Training (trainer.py), evaluation (evaluate.py) and the notebook API (api.py) all build and restore
the state here, so a checkpoint given as 'best', 'latest' or a step folder's path gets the same
checks: damaged files are named, and a checkpoint of another model or optimizer is refused.
"""

from __future__ import annotations

import pathlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from jax_cifar import checkpoints, errors, models, optim, parallel, step_folders, tracking
from jax_cifar import workdir as workdir_lib
from jax_cifar.augment import pipeline as augment


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: train steps taken, a skipped non-finite one included.
  params: Any  # nnx.State of nnx.Param.
  batch_stats: Any  # nnx.State of everything else (BatchNorm running statistics).
  opt_state: Any
  rng: jax.Array  # uint32[2] base key; each step folds in its step number.
  nonfinite_steps: jax.Array  # int32 scalar: updates skipped because the loss was not finite.
  first_nonfinite_step: jax.Array  # int32 scalar: step of the first such update, -1 if none.
  ema_params: Any = None  # EMA of params (config.ema.decay > 0), else None.
  ema_batch_stats: Any = None  # EMA of the BatchNorm running statistics, else None.


def check_finite(params, batch_stats, who: str) -> None:
  """Names non-finite checkpoint values before anything is predicted or adapted: how a NaN shows
  depends on how XLA compiled the program (its defaults can turn relu(NaN) into 0), and a model
  of NaNs had predicted class 0 for every image, exit status 0 (an audit). Checked on the host,
  leaf by leaf: for a ResNet-152 on a 2-core CPU a compiled check took 1.6-3.4 s (its compile),
  this 0.03 s; the (replicated) weights are read once."""
  # One device's copy of each (replicated) array, fetched together; a host copy fetched from the
  # array itself would stay cached on it, a second copy of the model for the whole evaluation.
  local = jax.device_get(jax.tree.map(
      lambda v: v.addressable_data(0) if isinstance(v, jax.Array) else v, (params, batch_stats)))
  # Named as the state names them: `[1]['bn1']['var']` had been a running variance, called a
  # parameter (a numerics review).
  bad = [f'{name}{jax.tree_util.keystr(path)}'
         for name, tree in zip(('params', 'batch_stats'), local)
         for path, value in jax.tree_util.tree_leaves_with_path(tree)
         if not np.isfinite(np.asarray(value)).all()]
  if bad:
    stats = ' (batch_stats: the BatchNorm running statistics)' if any(
        b.startswith('batch_stats') for b in bad[:5]) else ''
    raise errors.UserError(f'{who}: non-finite values in the checkpoint: {", ".join(bad[:5])}'
                           f'{" ..." if len(bad) > 5 else ""}{stats}')


def model_input(images, config, dtype):
  return augment.to_model_input(images, image_size=config.model.image_size,
                                normalize=config.model.normalize, dtype=dtype)


def predict_step(params, batch_stats, images: jax.Array, *, graphdef, config) -> jax.Array:
  """Float32 logits of uint8 images in eval mode (used by evaluation and OOD prediction)."""
  model = nnx.merge(graphdef, params, batch_stats)
  x = model_input(images, config, jnp.dtype(config.model.dtype))
  return model(x, train=False).astype(jnp.float32)


# The training draws' own stream. nnx.Rngs(seed) gives the i-th initialiser fold_in(key(seed), i),
# so a base key of key(seed) made step s's key the s-th initialiser's (an audit: step 0's mixup
# and augmentation bits were the first kernel's). Runs saved before keep the key they stored.
TRAIN_STREAM = 0x7A1C0DE


def train_key(seed: int) -> jax.Array:
  """The base key of a run's per-step draws (each step folds in its number), apart from init's."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), TRAIN_STREAM)


def build_model(config) -> nnx.Module:
  return models.create_model(
      config.model.name, config.model.num_classes, stem=config.model.stem,
      width=config.model.width, dtype=jnp.dtype(config.model.dtype),
      remat=bool(config.model.get('remat', False)),
      scan_blocks=bool(config.model.get('scan_blocks', False)), rngs=nnx.Rngs(config.seed))


def _new_state(config, tx, params, batch_stats) -> TrainState:
  """Step 0's TrainState around the given weights (traced: inside jit or eval_shape)."""
  ema = config.get('ema', {}).get('decay', 0.0) > 0
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params), rng=train_key(config.seed),
      nonfinite_steps=jnp.zeros((), jnp.int32), first_nonfinite_step=-jnp.ones((), jnp.int32),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None,
      ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else None)


def _fresh_weights(config, graphdefs: list[nnx.GraphDef]):
  """(params, batch_stats) of a new model; its GraphDef, which is static, is appended to
  `graphdefs` while this is traced. Taking it from that trace, not from one of its own, halves the
  tracing of the model at a launch, which a cache hit does not save (ResNet-152's init: 2.6-2.8 ->
  1.1-1.2 s on a 2-core CPU; docs/benchmarks.md)."""
  graphdef, params, batch_stats = nnx.split(build_model(config), nnx.Param, ...)
  graphdefs.append(graphdef)
  return params, batch_stats


def init_state(config, tx, mesh, *, pretrained: bool = True) -> tuple[TrainState, nnx.GraphDef]:
  """A replicated TrainState, initialised by one compiled program (eager init compiles per op).

  The weights then come from `model.pretrained` (converted torchvision weights) or
  `model.init_from` (another run); `pretrained=False` skips both (a run that resumes needs a
  state to fall back on when no checkpoint is intact).
  """
  repl = parallel.replicated(mesh)
  graphdefs = []  # (A new function: jit traces it, also where its program is in the cache.)
  params, batch_stats = jax.jit(lambda: _fresh_weights(config, graphdefs), out_shardings=repl)()
  graphdef = graphdefs[-1]
  if pretrained and config.model.pretrained:
    from jax_cifar import convert  # pylint: disable=g-import-not-at-top  (torch-free, but large)
    model = nnx.merge(graphdef, params, batch_stats)
    with convert.naming('model.pretrained'):
      loaded = convert.load_pretrained(model, config.model.pretrained,
                                       num_classes=config.model.num_classes, rngs_seed=config.seed)
    # Said, as init_from is (a review: nothing had told that the weights were used).
    tracking.say(convert.loaded_line(config.model.pretrained, loaded, config.model.num_classes))
    _, params, batch_stats = nnx.split(model, nnx.Param, ...)
  if pretrained and config.model.get('init_from'):
    params, batch_stats = _weights_of_run(config, params, batch_stats, mesh)
  state = jax.jit(lambda p, s: _new_state(config, tx, p, s), out_shardings=repl)(params,
                                                                                  batch_stats)
  return state, graphdef


def abstract_state(config, tx, mesh) -> tuple[TrainState, nnx.GraphDef]:
  """init_state's structure as replicated ShapeDtypeStructs, computing nothing: a restore target.

  Tracing only: init_state compiles and runs two programs (about 0.5-1 s of an evaluate launch).
  """
  repl = parallel.replicated(mesh)
  graphdefs = []
  shapes = jax.eval_shape(lambda: _new_state(config, tx, *_fresh_weights(config, graphdefs)))
  return (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes),
          graphdefs[-1])


def restore(config, workdir: str | pathlib.Path, which: str = 'best', mesh=None, *,
            fallback: bool = False) -> tuple[TrainState, nnx.GraphDef, int]:
  """(state, graphdef, step) of a run's 'best' or 'latest' checkpoint, or of a step folder's path.

  All three get the same checks: a damaged step is named (or, with `fallback`, skipped for the
  newest intact one), a checkpoint of another model/optimizer is a CheckpointError.
  """
  mesh = mesh if mesh is not None else parallel.make_mesh()
  tx, _ = optim.make_optimizer(config.optim, total_steps=1, steps_per_epoch=1)  # Structure only.
  target, graphdef = abstract_state(config, tx, mesh)
  if which in ('best', 'latest'):
    ckpts = checkpoints.Checkpoints(workdir, create=False)
    try:
      restored = ckpts.restore(which, target, fallback=fallback)
    finally:
      ckpts.close()  # (Its orbax managers had been left open: a library-usage audit.)
    if restored is None:
      other = 'latest' if which == 'best' else 'best'
      folder = pathlib.Path(workdir, 'checkpoints', other)
      steps = step_folders.step_numbers(folder) if folder.is_dir() else []
      raise checkpoints.CheckpointError(
          f'no {which!r} checkpoint in {workdir}/checkpoints' + (
              f"; its {other!r} one holds step{'s' * (len(steps) > 1)} "
              f"{', '.join(map(str, steps))}: ask for {other!r} "
              'instead' if steps else ''))
    state, step = restored
  else:
    state = step_folders.restore_path(which, target)
    step = int(state.step)
  return state, graphdef, step


def parse_init_from(spec: str) -> tuple[str, str]:
  """'RUN_DIR[:best|latest|STEP]' -> (RUN_DIR, 'best' | 'latest' | a step folder's path)."""
  run_dir, _, which = spec.rpartition(':')
  if not run_dir or not (which in ('best', 'latest') or step_folders.is_step_number(which)):
    if run_dir and pathlib.Path(run_dir).is_dir() and not pathlib.Path(spec).exists():
      raise errors.ConfigError(f'model.init_from={spec}: after the run folder give :best, :latest '
                               f'or :STEP (a step number), not :{which}')
    run_dir, which = spec, 'best'
  if step_folders.is_step_number(which):  # A step it did not keep lists those it kept, as
    try:  # evaluate --checkpoint does (an audit: "does not exist (give ... a step number)").
      which = step_folders.kept_step_folder(run_dir, which, errors.ConfigError)
    except errors.ConfigError as e:
      raise errors.ConfigError(f'model.init_from={spec}: {e}') from None
  return run_dir, which


def init_from_source(config) -> tuple[str, str, Any]:
  """`model.init_from`'s run folder, checkpoint ('best', 'latest' or a step folder) and config,
  checked to hold this model; no checkpoint is read (start.check_pretrained calls it before the
  data is: a mistake had been found after loading it, a fuzz)."""
  run_dir, which = parse_init_from(config.model.init_from)
  try:
    source = workdir_lib.run_config(run_dir)
  except workdir_lib.WorkdirError as e:  # Say which setting named that folder.
    raise workdir_lib.WorkdirError(f'model.init_from={config.model.init_from}: {e}') from e
  differ = [f'model.{k} {source.model[k]!r} vs {config.model[k]!r}'
            for k in ('name', 'stem', 'width') if source.model[k] != config.model[k]]
  if differ:
    raise checkpoints.CheckpointError(
        f'model.init_from={config.model.init_from}: that run has another model ({"; ".join(differ)})')
  return run_dir, which, source


def _weights_of_run(config, params, batch_stats, mesh):
  """`model.init_from`: another run's params and BatchNorm statistics (never its optimizer state or
  step): its raw weights, or their EMA with `model.init_from_weights` 'ema' (or 'auto', the better
  on validation at that step). As with `model.pretrained`, a head of another size keeps this run's
  fresh one."""
  run_dir, which, source = init_from_source(config)
  source.model.pretrained, source.model.init_from = '', ''
  restored, _, step = restore(source, run_dir, which, mesh)
  # Each process listed the run itself: a run still saving (or hosts' own copies of it) had let
  # them start from different steps, one model per host under a replicated sharding, without an
  # error (a review; evaluate agrees on its step the same way).
  step = parallel.same_on_every_process(
      step, f'the step of model.init_from={config.model.init_from}')
  key = f'model.init_from_weights={config.model.init_from_weights}'
  try:
    weights = resolve_weights(config.model.init_from_weights, restored, run_dir, step)
    restored = with_weights(restored, weights, run_dir)
  except checkpoints.CheckpointError as e:
    raise checkpoints.CheckpointError(f'{key}: {e}') from e
  if (which == 'best' and config.model.init_from_weights == 'raw'
      and source.checkpoint.get('best_weights') == 'ema'):  # ('auto' chose raw on validation.)
    logging.warning("model.init_from=%s: that run's 'best' step was chosen by its EMA weights' "
                    "accuracy (checkpoint.best_weights='ema'); these are its raw weights: "
                    "--config.model.init_from_weights=ema starts from the EMA", config.model.init_from)
  new, old = nnx.to_pure_dict(params), nnx.to_pure_dict(restored.params)
  source_classes = old['fc']['kernel'].shape[-1]
  head_kept = new['fc']['kernel'].shape != old['fc']['kernel'].shape
  if head_kept:
    old['fc'] = new['fc']
  nnx.replace_by_pure_dict(params, old)
  nnx.replace_by_pure_dict(batch_stats, nnx.to_pure_dict(restored.batch_stats))
  tracking.say(f'Initialised from {run_dir} step {step}'
               + (' (its EMA weights)' if weights == 'ema' else '')
               + (f' (its {source_classes}-class head replaced by a fresh one)'
                  if head_kept else ''))
  return params, batch_stats


def resolve_weights(weights: str, state: TrainState, workdir, step: int) -> str:
  """'raw' or 'ema' for `weights`; 'auto' picks, on validation, the better of the two at `step`
  (the checkpoint being read): the EMA if that step's val_accuracy_ema in WORKDIR/metrics.jsonl
  beats its val_accuracy, else the raw weights (also when the run has no EMA or no such row).
  The step matters: 'best' can be an earlier step than the last, where the two rank differently."""
  if weights != 'auto':
    return weights
  if state.ema_params is None:
    tracking.say('weights auto: raw (the run kept no EMA: ema.decay was 0)')
    return 'raw'
  rows = [r for r in tracking.read_metrics(workdir)
          if r.get('step') == step and 'val_accuracy' in r]
  if not rows:
    tracking.say(f'weights auto: raw (step {step} has no validation row in metrics.jsonl)')
    return 'raw'
  # The trainer writes a non-finite accuracy as null; a hand-edited row may hold anything. Such a
  # value counts as none (it had been a TypeError traceback, or lost every comparison: a review).
  given = rows[-1]['val_accuracy'], rows[-1].get('val_accuracy_ema')
  raw, ema = (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
              and np.isfinite(v) else None for v in given)
  choice = 'ema' if ema is not None and (raw is None or ema > raw) else 'raw'
  raw_text, ema_text = (f'{v:.4f}' if v is not None else 'not recorded' if g is None else
                        f'{g!r}, not a number' for v, g in zip((raw, ema), given))
  tracking.say(f'weights auto: {choice} (step {step}: val_accuracy {raw_text}, '
               f'val_accuracy_ema {ema_text})')
  return choice


def with_weights(state: TrainState, weights: str, workdir) -> TrainState:
  """The state whose params/batch_stats are the raw weights or (weights='ema') their EMA; every
  reader of a checkpoint (trainer validation, evaluate, api) swaps them in here."""
  if weights not in checkpoints.WEIGHTS:
    raise checkpoints.CheckpointError(f"weights must be one of {checkpoints.WEIGHTS}, got {weights!r}")
  if weights == 'raw':
    return state
  if state.ema_params is None:
    raise checkpoints.CheckpointError(
        f'weights=ema: the run in {workdir} was trained without an EMA (ema.decay = 0)')
  return state.replace(params=state.ema_params, batch_stats=state.ema_batch_stats)
