"""The training loop: build state, restore, iterate, log, evaluate, checkpoint."""

import dataclasses
import functools
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jax_cifar import checkpoints, config_validation, errors, interrupt, optim, parallel, starting
from jax_cifar import xla_options
from jax_cifar.evaluation import inference
from jax_cifar import state as state_lib
from jax_cifar import tracking
from jax_cifar import workdir as workdir_lib
from jax_cifar.data import cifar100
from jax_cifar.state import TrainState
from jax_cifar.training import claim, relaunch, start, stopping
# Raised and exited with by the loop, public here (jax_cifar.Preempted, train.py's exit status).
from jax_cifar.training.stopping import PREEMPTED_EXIT_CODE, Preempted, StopNow  # pylint: disable=unused-import
from jax_cifar.training.nonfinite import check_finite, check_window
# Raised by the loop (tests and callers catch it as trainer.NonFiniteLossError).
from jax_cifar.training.nonfinite import NonFiniteLossError  # pylint: disable=unused-import
from jax_cifar.training.train_step import train_step


# ---------------------------------------------------------------------------------------------
# The compiled step, validation
# ---------------------------------------------------------------------------------------------
def dtype_note(dtype: str, backend: str) -> str | None:
  """The line a run prints when its dtype cannot pay off on its backend (bf16 on CPU)."""
  if dtype == 'bfloat16' and backend == 'cpu':
    return ('Note: model.dtype=bfloat16 on CPU gains nothing over float32 (XLA:CPU has no '
            'bfloat16 convolution kernels; docs/benchmarks.md); bfloat16 is for GPUs and TPUs.')
  return None


def compile_train_step(config, graphdef, tx, schedule, mesh, treedef=None):
  """The jit-compiled train step with explicit shardings; the train state is donated.

  With `treedef` (jax.tree.structure of the TrainState), the state goes in and out as the flat
  list of its arrays, (leaves, batch) -> (leaves, metrics), and is rebuilt inside the trace. The
  training loop keeps it that way between steps: handing jit the TrainState itself makes every
  call flatten it, compare its nnx.State structure with the cached one and rebuild the output
  state. One call took 11.7 ms to return on a 2-core CPU for ResNet-50 + AdamW + EMA, 4.9 ms
  over the list (scripts/profile_input.py, docs/benchmarks.md)."""
  repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  if config.model.get('scan_blocks') and jax.default_backend() == 'cpu':
    logging.warning('model.scan_blocks on XLA:CPU: the scanned backward pass ran ~10x slower '
                    'than the unrolled one (docs/benchmarks.md); it is meant for GPU/TPU.')
  step = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, config=config)
  if treedef is not None:
    tree_step = step

    def step(leaves, batch):
      state, metrics = tree_step(jax.tree.unflatten(treedef, leaves), batch)
      return jax.tree.leaves(state), metrics

  return jax.jit(step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0,
                 compiler_options=xla_options.step_compiler_options(config.model.dtype))


def make_validator(config, graphdef, mesh) -> inference.Predictor:
  """Evaluate's own prediction path (no TTA), so val numbers equal `evaluate`'s exactly; a
  validation shows its own bar below the training bar while it runs (a long one had looked stuck)."""
  fn = inference.make_predict(config, graphdef, mesh)
  return inference.Predictor(None, mesh, parallel.eval_batch_size(config.train.eval_batch_size),
                             fn, fn)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
# Python waits for a step once it has queued the next STEPS_AHEAD: the device always has work, and a
# stop (SIGTERM, Ctrl-C) saves within that many steps. The loop had waited only at log steps
# (train.log_every_steps, 20 by default), so a SIGTERM saved 20 steps later than it said, slow
# steps could outlast SLURM's 30 s KillWait, and the bar counted steps queued, not done (11
# step/s falling to 1.8: a log-file review).
STEPS_AHEAD = 2


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains per `config`, writing config.json, metrics.jsonl and checkpoints/ into `workdir`.

  Returns {'step': the last step, 'best_val_accuracy': the best checkpoint's (None without one),
  'best_metric': which accuracy that is ('val_accuracy', or 'val_accuracy_ema' under
  checkpoint.best_weights 'ema'), 'total_steps': the schedule's length (more than 'step' when
  train.max_steps stopped this launch), and its last validation's
  'val_loss', 'val_accuracy', 'val_top5_accuracy' (with ema.decay > 0 also their '_ema' twins)}.
  A relaunch of a finished run trains nothing and returns the ones metrics.jsonl holds for its
  last step (it had returned only the first four: a library-user review). A SIGTERM or SIGINT
  saves the step and raises `jax_cifar.Preempted`: call again with the same workdir to resume.
  """
  if not isinstance(config, ml_collections.ConfigDict):
    raise TypeError('train_and_evaluate(config, workdir): config must be an ml_collections '
                    'ConfigDict (jax_cifar.configs.default.get_config() or a recipe\'s '
                    f'get_config(), then changed), got {type(config).__name__}')
  errors.folder_arg('train_and_evaluate(config, workdir)', workdir)
  config_validation.validate(config)
  if config.data.worker_count > 0:
    from jax_cifar.data import pipeline  # pylint: disable=g-import-not-at-top  (grain: lazily)
    pipeline.check_workers_can_start(config.data.worker_count)
  xla_options.check_xla_defaults()
  parallel.same_settings_everywhere(workdir_lib.flatten(config.to_dict()), 'configs')
  workdir = pathlib.Path(workdir_lib.expanded(workdir))  # '~/runs/a' had made ./~/runs/a.
  # From here SIGTERM/SIGINT only set a flag: read before the first step (a stop while starting),
  # then after every step (with several processes at log steps, together): save and stop. The
  # process's own handlers come back at the end.
  stop, previous_handlers = stopping.install_handlers()
  try:
    return _claim_and_train(config, workdir, stop)
  except StopNow as e:
    raise Preempted(f'{e}: stopped without saving the step under way; train_and_evaluate(config, '
                    'workdir) with the same workdir resumes from its last saved step') from None
  finally:
    stopping.restore_handlers(previous_handlers)


def _claim_and_train(config, workdir: pathlib.Path, stop: dict) -> dict:
  """_train in `workdir`, locked; a folder this launch created and never wrote to is removed, and
  a launch that failed before its first save gives the run's config.json back."""
  # Each process reads its inputs itself (a path one host cannot see): all stop with a line each,
  # where the others had met a gloo traceback and JAX's abort 100 s later (a cluster audit).
  with parallel.fail_together('checking model.pretrained / model.init_from'):
    start.check_pretrained(config, workdir)
  created = jax.process_index() == 0 and not workdir.exists()
  lock = claim.claim_workdir(config, workdir, created)
  launch = {}  # What _train recorded of this launch: the config.json it replaced, the saved steps.
  try:
    return _train(config, workdir, launch, stop)
  except BaseException:
    # Removed while still locked: no other launch can claim the folder in between.
    if created and workdir_lib.remove_if_untouched(workdir):
      logging.info('Removed %s: this launch created it and failed before writing to it.', workdir)
    elif launch:
      try:
        if workdir_lib.restore_config(workdir, launch['previous'], launch['saved_before']):
          logging.warning('This launch saved no checkpoint: %s/%s is the config of the saved '
                          'steps again.', workdir, workdir_lib.CONFIG_FILE)
      except OSError as e:  # The launch's own error (e.g. a full disk) is the one to report.
        logging.warning('Could not restore %s/%s: %s', workdir, workdir_lib.CONFIG_FILE, e)
    raise
  finally:
    if lock:
      lock.release()


def _train(config, workdir: pathlib.Path, launch: dict, stop: dict) -> dict:
  from jax_cifar.data import pipeline  # pylint: disable=g-import-not-at-top  (grain: lazily)
  mesh = parallel.make_mesh()
  batch_size = config.train.batch_size
  parallel.check_batch_size(batch_size, 'train.batch_size')
  if (spans := parallel.micro_batch_warning(batch_size, config.train.grad_accum_steps)):
    logging.warning(spans)

  train_split, val_split = _splits(config)
  steps_per_epoch = pipeline.steps_per_epoch(len(train_split), batch_size)
  total_steps = optim.epochs_to_steps(config.train.num_epochs, steps_per_epoch)
  if total_steps > config_validation.INT_MAX:  # (num_epochs 1e300 had been grain's OverflowError.)
    raise errors.ConfigError(
        f'train.num_epochs={config.train.num_epochs:g} is {total_steps:.3g} steps of '
        f'{steps_per_epoch:,} per epoch, more than the {config_validation.INT_MAX:,} the step '
        'counter (an int32) holds')
  last_step = min(total_steps, config.train.max_steps) if config.train.max_steps else total_steps
  eval_every = eval_every_steps(config.train.eval_every_epochs, steps_per_epoch)

  # --- model, optimizer, state ------------------------------------------------------------------
  tx, schedule = optim.make_optimizer(config.optim, total_steps, steps_per_epoch)
  ckpts = checkpoints.Checkpoints(workdir, keep=config.checkpoint.keep)
  state, graphdef, start_step = start.resume_or_init(
      config, workdir, ckpts, tx, mesh, len(train_split), steps_per_epoch, total_steps, launch, stop)
  if (deferred := launch.get('deferred_config')) is not None:  # (Process 0 of a resumed launch.)
    ckpts.after_commit = functools.partial(relaunch.config_at_first_commit, ckpts, workdir,
                                           deferred, start_step)
  _announce(config, state, start_step, len(train_split), steps_per_epoch, total_steps, last_step,
            workdir)
  treedef = jax.tree.structure(state)
  train_step_fn = compile_train_step(config, graphdef, tx, schedule, mesh, treedef)
  validator = make_validator(config, graphdef, mesh)

  writer = tracking.MetricsWriter(workdir, config, resume_step=start_step)
  batches = parallel.prefetch_to_device(
      pipeline.train_batches(train_split, batch_size, config.seed, math.ceil(config.train.num_epochs),
                             start_step, config.data.worker_count),
      parallel.batch_sharded(mesh), size=config.data.prefetch)
  bar = tracking.progress_bar(last_step, start_step)
  pending, t_last, step, last_val = [], time.perf_counter(), start_step, {}
  untimed, first_step_s = 0, 0.0  # Set at the launch's first step.
  stop_note = jax.process_count() > 1  # Whether slow_stop_note is still to be asked (once).
  leaves = jax.tree.leaves(state)  # The state between steps (flat: compile_train_step).
  launch_start = (start_step, int(state.nonfinite_steps))  # What check_finite counts from.
  skipped = launch_start[1]  # Updates skipped before the last train row (check_window).
  del state

  def current() -> TrainState:  # The TrainState of `leaves`, to log, validate or save.
    return jax.tree.unflatten(treedef, leaves)

  def write_train_row(step: int) -> None:  # The steps since the last row, averaged.
    nonlocal pending, t_last, untimed, skipped, stop_note
    window = jax.device_get(jax.tree.map(lambda *x: jnp.stack(x), *pending))
    summary = {k: float(np.mean(v)) for k, v in window.items()}
    if 'learning_rate' in window:  # The schedule at the row's last step, not the window's
      summary['learning_rate'] = float(window['learning_rate'][-1])  # mean (a review).
    state = current()
    check_finite(state, config, ckpts, launch_start)
    skipped = check_window(state, config, ckpts, skipped, len(pending), step)
    now = time.perf_counter()
    if len(pending) > untimed:
      summary['images_per_sec'] = (len(pending) - untimed) * batch_size / (now - t_last)
      if stop_note:  # Asked at the first timed row, said once.
        stop_note, note = False, stopping.slow_stop_note(
            config.train.log_every_steps, batch_size, summary['images_per_sec'],
            jax.process_count())
        if note and jax.process_index() == 0:
          logging.warning('%s', note)
    if untimed:
      summary['first_step_seconds'], untimed = first_step_s, 0  # Compile included.
    summary['epoch'] = step / steps_per_epoch
    if len(pending) != config.train.log_every_steps:  # After a resume, or at a stop.
      summary['window_steps'] = len(pending)
    writer.write(step, summary)
    speed = ({'img_s': f"{summary['images_per_sec']:.0f}"} if 'images_per_sec' in summary else {})
    bar.set_postfix(loss=f"{summary['train_loss']:.3f}", acc=f"{summary['train_accuracy']:.3f}",
                    **speed, refresh=False)  # (Not img_s=0 for a row of the compiling step alone.)
    pending, t_last = [], now

  error = None  # How the loop ended, for wandb (not sys.exc_info(): a caller's exception too).
  try:
    for step in range(start_step + 1, last_step + 1):
      leaves, metrics = train_step_fn(leaves, next(batches))
      pending.append(metrics)
      if len(pending) > STEPS_AHEAD:  # See STEPS_AHEAD. (A row's device_get waited for the
        jax.block_until_ready(pending[-1 - STEPS_AHEAD])  # steps before it.)
      if step == start_step + 1:  # A launch's first step compiles: timed apart, not as training
        jax.block_until_ready(metrics)  # (it had made a short run's images/s, and the report's
        first_step_s, untimed = time.perf_counter() - t_last, 1  # train time, mostly compile).
        t_last = time.perf_counter()
        starting.collect_as_usual()  # Past the launch's tracing and compiling (see starting.py).
      # The launch's last step (the run's, or train.max_steps') logs the steps since the last row
      # too, as a stop by a signal does: they had been in no row.
      if step % config.train.log_every_steps == 0 or step == last_step:
        write_train_row(step)
      # A committed save makes a resumed launch's config the run's config.json within a step
      # (ckpts.after_commit); a failed one stops the run at once, not saves later (several
      # processes learn of a failure at the next save, together).
      if jax.process_count() == 1:
        ckpts.check_saves()
      elif ckpts.after_commit is not None:  # (Process 0: no collective.)
        ckpts.note_commits()
      bar.update(1)
      validate = step % eval_every == 0 or step in (total_steps, last_step)
      save = step % config.checkpoint.every_steps == 0 or step == last_step
      if validate or save:  # Nothing is validated or saved after a non-finite update.
        check_finite(current(), config, ckpts, launch_start, warn=False)
      if validate:
        t_val = time.perf_counter()
        last_val = _validate(validator, current(), val_split, config, ckpts, writer, step,
                             step / steps_per_epoch)
        t_last += time.perf_counter() - t_val  # images_per_sec: training time only.
        tracking.after_pause(bar)  # ... and the bar's step rate and ETA too.
      if save:
        ckpts.save_latest(current(), step)
      interrupt.at_event('train_step', step)  # Test hook: faults at an exact step, not a time.
      # At the last step the run is complete (validated and saved): it ends as finished, status
      # 0, whatever arrived (it had saved again and exited 75, "relaunch to resume": an audit).
      if step < last_step and stopping.requested(stop, step, config.train.log_every_steps):
        raise Preempted(stop['signal'] or 'a signal on another process')
  except Preempted as e:
    error = e
    try:
      if pending:  # (One process stops at any step; several at log steps, with none pending.)
        write_train_row(step)
      check_finite(current(), config, ckpts, launch_start, warn=False)
      ckpts.save_latest(current(), step)
      ckpts.wait()
    except BaseException as failed:  # Not saved: wandb had been told "preempted" (a review).
      error = failed
      raise
    message = f'Received {e}: saved step {step} to {workdir}; relaunch to resume.'
    if jax.process_index() == 0:
      tracking.say(message)  # Above the bar, which had been drawn again under a logged line.
    else:  # Every process says where it stopped, in the same plain line (it had been absl's).
      print(message, file=sys.stderr, flush=True)
    # What a notebook shows last: the exception's own words (they had been "SIGINT" alone, the
    # lines above scrolled away: a notebook review).
    raise Preempted(f'{e}: saved step {step} to {workdir}; train_and_evaluate(config, workdir) '
                    'with the same workdir (or the same command) resumes from it') from None
  except BaseException as e:  # (StopNow, a second signal, is one: no Exception.)
    error = error or e
    raise
  finally:
    bar.close()
    try:
      ckpts.wait()  # Raises if an async save failed (train_and_evaluate gives the handlers back).
    except BaseException as e:
      error = error or e
      raise
    finally:  # wandb learns how the run ended (a crash had been "Finished"): a signal's stop is
      # exit 75 as the process's, marked preempting; any other exception 1.
      preempted = isinstance(error, (Preempted, StopNow))
      try:
        writer.close(0 if error is None else stopping.PREEMPTED_EXIT_CODE if preempted else 1,
                     preempted=preempted)
      finally:
        _stop_input(batches)
  ckpts.close()
  if not last_val and step:  # A relaunch of a finished run: the numbers it logged at the step.
    last_val = tracking.logged_validation(workdir, step)
  return {'step': step, **last_val, 'best_val_accuracy': ckpts.best_accuracy(),
          'best_metric': _best_metric(config), 'total_steps': total_steps}


def eval_every_steps(eval_every_epochs: float, steps_per_epoch: int) -> int:
  """The steps between validations, at least one: less than half a step had been rounded up to
  a validation after every step without a word (a fuzz)."""
  steps = int(round(eval_every_epochs * steps_per_epoch))
  if steps < 1:
    logging.warning('train.eval_every_epochs=%g is under half a step of the %d in an epoch: '
                    'validating after every step.', eval_every_epochs, steps_per_epoch)
  return max(1, steps)


def _stop_input(batches) -> None:
  """Stops the input's worker processes (data.worker_count > 0) before exit, once the save is done:
  their batches still buffered in shared memory at exit had ended a stopped run in
  "leaked shared_memory objects". A failure here is logged; it never hides how the run ended."""
  try:
    batches.close()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('stopping the input pipeline failed: %s', e)


def _best_metric(config) -> str:
  """The validation accuracy that picks the `best` checkpoint (checkpoint.best_weights)."""
  return 'val_accuracy_ema' if config.checkpoint.best_weights == 'ema' else 'val_accuracy'


def _splits(config) -> tuple[cifar100.Split, cifar100.Split]:
  """The training and validation splits (the test split when data.val_fraction is 0)."""
  with parallel.fail_together('reading the data'):  # (No collective inside: see fail_together.)
    splits = cifar100.get_splits(config.data, require_val=True)
  train_split, val_split = splits['train'], splits['val']
  top_label = max(int(s.labels.max()) for s in splits.values() if s is not None and len(s))
  if top_label >= config.model.num_classes:  # one_hot would give those images all-zero targets.
    raise errors.ConfigError(f'model.num_classes is {config.model.num_classes} but the labels go '
                             f'up to {top_label}: set it to at least {top_label + 1}')
  if val_split is None:  # data.val_fraction 0: every training image is trained on.
    logging.warning('No validation images: validating (and picking the best checkpoint) on TEST.')
    val_split = splits['test']
  for note in cifar100.limit_notes(config.data, config.model.num_classes, train_split, val_split):
    logging.warning('%s.', note)
  return train_split, val_split


def _announce(config, state: TrainState, start_step: int, num_train: int, steps_per_epoch: int,
              total_steps: int, last_step: int, workdir: pathlib.Path) -> None:
  """The launch's start line: model, data, schedule, where this launch stops, devices."""
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  tracking.say(f'{config.model.name}: {n_params / 1e6:.2f}M params, {num_train} training '
               f'images, {steps_per_epoch} steps/epoch, {total_steps} steps'
               + ('' if last_step >= total_steps else
                  f' (this launch stops at step {last_step}: train.max_steps)'
                  if last_step > start_step else
                  f' (train.max_steps={last_step}: this launch, at step {start_step}, trains none)')
               + ', '
               f'{jax.device_count()} {jax.default_backend()} device(s); run in {workdir}')
  if note := dtype_note(config.model.dtype, jax.default_backend()):
    tracking.say(note)


def _validate(validator: inference.Predictor, state, split, config, ckpts, writer, step: int,
              epoch: float) -> dict:
  """Validates the raw weights (and the EMA's, as val_*_ema); 'best' follows checkpoint.best_weights."""
  weights = {'': state}
  if state.ema_params is not None:
    weights['_ema'] = state_lib.with_weights(state, 'ema', '')
  row = {}
  for suffix, which in weights.items():
    result, _ = inference.split_metrics(dataclasses.replace(validator, state=which), split, 'val')
    row.update({f'val_loss{suffix}': result['loss'], f'val_accuracy{suffix}': result['accuracy'],
                f'val_top5_accuracy{suffix}': result['top5_accuracy']})
  writer.write(step, row)
  picked = row[_best_metric(config)]
  previous_best = ckpts.best_accuracy()
  ckpts.maybe_save_best(state, step, picked)
  best = max(picked, -1.0 if previous_best is None else previous_best)
  writer.set_summary({f'best_{_best_metric(config)}': best})  # (wandb's runs table.)
  shown = ', '.join(f'{k} {v:.4f}' for k, v in row.items() if 'top5' not in k)
  tracking.say(f'epoch {epoch:.2f} step {step}: {shown} (best {best:.4f})')
  return row
