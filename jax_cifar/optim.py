"""The optax chain: global-norm clipping -> AdamW (or SGD) with warmup + cosine, per-group rates."""

import functools
import math

import jax
import jax.numpy as jnp
import optax

from jax_cifar import errors

OPTIMIZERS = ('adamw', 'sgd')  # optim.name
SCHEDULES = ('cosine', 'constant')  # optim.schedule
SCHEDULE_UNITS = ('step', 'epoch')  # optim.schedule_per

HEAD_KEY = 'fc'  # Every model names its classifier `fc` (torchvision's name), so the head is found by path.


def _top_key(path) -> str:
  first = path[0]
  return str(getattr(first, 'key', getattr(first, 'name', first)))


def decay_mask(params, bn_and_bias: bool = False):
  """Weight decay on kernels only: BatchNorm scales/biases and dense biases (ndim <= 1) are exempt,
  unless `bn_and_bias` (optim.decay_bn_and_bias: every parameter, as torch.optim's weight_decay).
  Either way a mask, so the optimizer state has the same structure."""
  return jax.tree.map(lambda p: bn_and_bias or p.ndim > 1, params)


def param_groups(params):
  """Labels every parameter 'head' or 'backbone' by its top-level module name."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'head' if _top_key(path) == HEAD_KEY else 'backbone', params)


def _head_and_backbone(params):
  """param_groups, refusing a model with no `fc` head: all of it had silently been backbone, so
  optim.freeze_backbone_steps froze the head too and backbone_lr_mult scaled it (an audit with a
  model of its own whose head was `classifier`)."""
  groups = param_groups(params)
  if 'head' not in jax.tree.leaves(groups):
    raise errors.ConfigError(
        f'optim.backbone_lr_mult and optim.freeze_backbone_steps treat the parameters under '
        f'{HEAD_KEY!r} as the head, and this model has none (name its classifier {HEAD_KEY!r}, as '
        'torchvision and jax_cifar do, or set backbone_lr_mult=1 and freeze_backbone_steps=0)')
  return groups


def epochs_to_steps(num_epochs: float, steps_per_epoch: int) -> int:
  """The steps of `num_epochs` epochs (at least one): a fractional epoch's steps rounded down,
  after a margin for the product's rounding error (2.3 * 390 is 896.99999999999989 in floating
  point: int() had given 896 steps, not 897; a review)."""
  return max(1, math.floor(num_epochs * steps_per_epoch + 1e-6))


def make_schedule(peak_lr: float, config, total_steps: int, steps_per_epoch: int,
                  delay_steps: int = 0) -> optax.Schedule:
  """Linear warmup then cosine (or constant); `delay_steps` of zero learning rate come first."""
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  decay_steps = max(total_steps - delay_steps, 1)
  warmup = min(warmup, decay_steps - 1) if decay_steps > 1 else 0
  if config.schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak_lr, peak_value=peak_lr, warmup_steps=warmup,
        decay_steps=decay_steps, end_value=peak_lr * config.end_lr_factor)
  elif config.schedule == 'constant':
    schedule = optax.warmup_constant_schedule(  # Without warm-up, linear_schedule would hold 0.
        init_value=0.0 if warmup else peak_lr, peak_value=peak_lr, warmup_steps=warmup)
  else:
    raise errors.ConfigError(f'optim.schedule must be one of {SCHEDULES}, got {config.schedule!r}')
  if config.get('schedule_per', 'step') == 'epoch':
    schedule = _per_epoch(schedule, steps_per_epoch, warmup)
  if delay_steps:
    schedule = optax.join_schedules([optax.constant_schedule(0.0), schedule], [delay_steps])
  return schedule


def per_epoch_warmup_error(warmup_epochs: float) -> str:
  """Why optim.schedule_per='epoch' takes no warm-up (config validation says it first)."""
  return ("optim.schedule_per='epoch' changes the rate once per epoch, so a warm-up from 0 "
          f'(optim.warmup_epochs={warmup_epochs:g}) would train the first epoch at rate 0: set '
          "optim.warmup_epochs=0, or optim.schedule_per='step'")


def _per_epoch(schedule: optax.Schedule, steps_per_epoch: int, warmup: int) -> optax.Schedule:
  """`schedule` changed once per epoch: every step of an epoch takes the rate of its first step,
  as a torch script that calls scheduler.step() once per epoch (CosineAnnealingLR(T_max=epochs)
  is then the cosine schedule's rate at each epoch's start). A warm-up from 0 would spend the
  whole first epoch at rate 0, so it is refused."""
  if warmup:
    raise errors.ConfigError(per_epoch_warmup_error(warmup / steps_per_epoch))
  steps_per_epoch = max(int(steps_per_epoch), 1)
  return lambda count: schedule(count - count % steps_per_epoch)


def schedule_warnings(config, total_steps: int, steps_per_epoch: int) -> list[str]:
  """What `make_optimizer` makes of a warm-up or a backbone freeze that the run is too short
  for: the schedules stay valid, but not what the config says (each is one line for the user).
  The head's schedule spans the run; a frozen backbone's starts after its freeze."""
  notes, freeze = [], config.freeze_backbone_steps
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if freeze >= total_steps:
    notes.append(f'optim.freeze_backbone_steps={freeze} is not shorter than the run '
                 f'({total_steps} steps): the backbone stays frozen throughout, only the head trains')
  # The head's cut warm-up is said alone: the backbone's (shorter) schedule is then cut too.
  whose, steps = (('the ', total_steps) if warmup >= total_steps
                  else ("the backbone's ", total_steps - freeze))
  if warmup and 1 < steps <= warmup:
    notes.append(f'optim.warmup_epochs={config.warmup_epochs:g} is {warmup} steps, not shorter '
                 f'than the {steps} steps {whose}learning rate runs: {whose}warm-up is cut to '
                 f'{steps - 1} steps, so {whose}rate rises until the last step')
  return notes


def _base_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  mask = functools.partial(decay_mask, bn_and_bias=config.decay_bn_and_bias)
  if config.name == 'adamw':
    return optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                       mask=mask)
  if config.name == 'sgd':  # torch-style coupled decay: added to the gradient before momentum.
    return optax.chain(optax.masked(optax.add_decayed_weights(config.weight_decay), mask),
                       optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
  raise errors.ConfigError(f'optim.name must be one of {OPTIMIZERS}, got {config.name!r}')


def splits_backbone(optim) -> bool:
  """Whether an optim section (a ConfigDict, or config.json's dict, where keys may be missing)
  gives the backbone another learning rate than the head: backbone_lr_mult or a freeze."""
  return optim.get('backbone_lr_mult', 1.0) != 1.0 or bool(optim.get('freeze_backbone_steps', 0))


def make_optimizer(config, total_steps: int, steps_per_epoch: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (transformation, head learning-rate schedule for logging) for the config's `optim`
  section (`config.optim`)."""
  if 'optim' in config or 'lr' not in config:  # A whole config had been AttributeError: 'lr'.
    raise TypeError('make_optimizer takes the optim section of a config (config.optim), not '
                    + ('the whole config' if 'optim' in config else 'a config without optim.lr'))
  head_schedule = make_schedule(config.lr, config, total_steps, steps_per_epoch)
  if splits_backbone(config):
    backbone_schedule = make_schedule(config.lr * config.backbone_lr_mult, config, total_steps,
                                      steps_per_epoch, delay_steps=config.freeze_backbone_steps)
    tx = optax.multi_transform(
        {'head': _base_optimizer(config, head_schedule),
         'backbone': _base_optimizer(config, backbone_schedule)}, _head_and_backbone)
  else:
    tx = _base_optimizer(config, head_schedule)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, head_schedule


def global_norm(tree) -> jax.Array:
  return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))
