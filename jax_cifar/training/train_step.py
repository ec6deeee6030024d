"""The pure, jittable train step: augmentation, mixup, label-smoothed loss, optimizer update, EMA
(the evaluation forward is `state.predict_step`).

The model travels as `nnx.split` pieces (graphdef is static; params and batch statistics are
pytrees in `TrainState`), so the step is a plain function that `jax.jit` compiles once.
"""


import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_cifar import errors, optim
from jax_cifar.augment import augmix, mixing
from jax_cifar.augment import pipeline as augment
from jax_cifar.state import TrainState, model_input


def ema_decay(step: jax.Array, decay: float, warmup_power: float) -> jax.Array:
  """The EMA decay at `step` (updates done before this one), as timm's ModelEmaV3: the first
  update copies the weights (0); then the warm-up 1 - (1 + step) ** -power capped at `decay`, or
  without warm-up `decay` itself (which had also been used at the first update, so the initial,
  randomly headed weights kept decay ** n of the average: an audit)."""
  if not warmup_power:
    return jnp.where(step == 0, jnp.float32(0.0), jnp.float32(decay))
  warm = 1.0 - (1.0 + step.astype(jnp.float32)) ** -warmup_power
  return jnp.minimum(jnp.float32(decay), warm)


def update_ema(state: TrainState, config, applied: jax.Array) -> TrainState:
  """Moves the EMA towards the (already updated) params and BatchNorm statistics of `state`, if
  this step's update was `applied`. The decay counts applied updates only: a step skipped for a
  non-finite update (train.on_nonfinite='skip') had spent the first update's copy of the weights
  on weights that did not move, and advanced the warm-up (an audit)."""
  if state.ema_params is None:
    return state
  updates_before = state.step - state.nonfinite_steps - 1  # Applied before this one, if applied.
  d = ema_decay(updates_before, config.ema.decay, config.ema.warmup_power)
  towards = lambda new, ema: jax.tree.map(lambda n, e: jnp.where(applied, n, e),
                                          optax.incremental_update(new, ema, 1.0 - d), ema)
  return state.replace(ema_params=towards(state.params, state.ema_params),
                       ema_batch_stats=towards(state.batch_stats, state.ema_batch_stats))


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example cross-entropy against soft targets, computed in float32."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state: TrainState, batch: dict, *, graphdef, tx: optax.GradientTransformation,
               schedule: optax.Schedule, config) -> tuple[TrainState, dict]:
  """One update on a global batch {'image': uint8 [B,32,32,3], 'label': int32 [B]}."""
  dtype = jnp.dtype(config.model.dtype)
  key = jax.random.fold_in(state.rng, state.step)
  k_aug, k_mix = jax.random.split(key)
  jsd_weight = float(config.augment.get('augmix_jsd_weight', 0.0))
  targets = mixing.smooth_one_hot(batch['label'], config.model.num_classes,
                                  config.optim.label_smoothing)
  if jsd_weight:  # AugMix's consistency loss: clean + two AugMix views, one BatchNorm batch.
    views = augment.jsd_views(k_aug, batch['image'], config.augment)
    # Interleaved [b0 clean, b0 view1, b0 view2, b1 ...]: each device keeps its own examples' views.
    images = jnp.stack(views, axis=1).reshape((-1,) + views[0].shape[1:])
    images = model_input(images, config, dtype)
  else:
    images = model_input(augment.augment_batch(k_aug, batch['image'], config.augment), config,
                         dtype)
    images, targets, _ = mixing.mix_batch(
        k_mix, images, targets, mixup_alpha=config.augment.mixup_alpha,
        cutmix_alpha=config.augment.cutmix_alpha, switch_prob=config.augment.switch_prob)

  def loss_fn(params, batch_stats, images, targets):  # batch_stats in: BatchNorm updates them.
    model = nnx.merge(graphdef, params, batch_stats, copy=True)  # Fresh Variables in this trace.
    logits = model(images, train=True)
    if jsd_weight:
      logits, logits_1, logits_2 = (logits.reshape(-1, 3, logits.shape[-1])[:, i] for i in range(3))
      loss = (cross_entropy(logits, targets).mean()
              + jsd_weight * augmix.jsd_loss(logits, logits_1, logits_2))
    else:
      loss = cross_entropy(logits, targets).mean()
    return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  accum = int(config.train.get('grad_accum_steps', 1))
  if accum == 1:
    (loss, (logits, new_stats)), grads = grad_fn(state.params, state.batch_stats, images, targets)
  else:
    loss, logits, new_stats, grads = _accumulate(grad_fn, state, images, targets, accum)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)

  # A non-finite loss or update must never reach the parameters: keep the old state, count it.
  # Nor non-finite BatchNorm statistics: a batch variance past float32's range had kept a finite
  # loss, and the run saved a `best` whose running variance was inf, which evaluate refused (a
  # numerics review).
  grad_norm, update_norm = optim.global_norm(grads), optim.global_norm(updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
  for stat in jax.tree.leaves(new_stats):
    if jnp.issubdtype(stat.dtype, jnp.inexact):
      finite &= jnp.isfinite(stat).all()
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(new_params, state.params),
      batch_stats=keep(new_stats, state.batch_stats),
      opt_state=_advance_schedules(keep(new_opt_state, state.opt_state), new_opt_state),
      nonfinite_steps=state.nonfinite_steps + (1 - finite.astype(jnp.int32)),
      first_nonfinite_step=jnp.where(finite | (state.first_nonfinite_step >= 0),
                                     state.first_nonfinite_step, state.step))
  new_state = update_ema(new_state, config, finite)
  metrics = {
      'train_loss': loss,
      # Against each image's larger label share under mixup/CutMix (its own label had been the
      # partner's larger share in about half the mixed batches: a fidelity audit).
      'train_accuracy': jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1)),
      'grad_norm': grad_norm,
      'update_norm': update_norm,
      'param_norm': optim.global_norm(new_state.params),
      'learning_rate': schedule(state.step),
  }
  return new_state, metrics


def _advance_schedules(kept, new):
  """The kept optimizer state with its learning-rate schedules' step counts advanced, as
  PyTorch's scheduler steps on when a step is skipped: otherwise the applied rate fell one step
  behind `state.step` (and the logged rate) per skipped step. Adam's own count stays, as torch's."""
  is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
  return jax.tree.map(lambda k, n: n if is_schedule(k) else k, kept, new, is_leaf=is_schedule)


def _micro_batches(x: jax.Array, accum: int, b: int) -> jax.Array:
  """[b*v, ...] -> [accum, (b/accum)*v, ...]: micro-batch i holds examples i, i+accum, ... (with
  each example's v views), so every device keeps its share of every micro-batch."""
  x = x.reshape((b // accum, accum, -1) + x.shape[1:]).swapaxes(0, 1)
  return x.reshape((accum, -1) + x.shape[3:])


def _accumulate(grad_fn, state: TrainState, images, targets, accum: int):
  """Mean loss and gradients over `accum` micro-batches (a scan: one micro-batch in memory at a
  time). BatchNorm normalises each micro-batch with its own statistics and updates the running
  ones once per micro-batch, as PyTorch does when it accumulates gradients."""
  b = targets.shape[0]
  if b % accum:
    raise errors.ConfigError(f'train.batch_size per step ({b}) must be divisible by '
                     f'train.grad_accum_steps ({accum})')

  def body(carry, micro):
    grads_sum, stats = carry
    (loss, (logits, stats)), grads = grad_fn(state.params, stats, *micro)
    return (jax.tree.map(jnp.add, grads_sum, grads), stats), (loss, logits)

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  (grads, new_stats), (losses, logits) = jax.lax.scan(
      body, (zeros, state.batch_stats),
      (_micro_batches(images, accum, b), _micro_batches(targets, accum, b)))
  logits = logits.reshape((accum, b // accum, -1)).swapaxes(0, 1).reshape((b, -1))  # Batch order.
  return losses.mean(), logits, new_stats, jax.tree.map(lambda g: g / accum, grads)
