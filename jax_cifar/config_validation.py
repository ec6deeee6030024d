"""Checks a config against jax_cifar/configs/default.py before anything compiles: one line naming the key."""

import math

import ml_collections
import numpy as np
from flax import traverse_util

from jax_cifar import checkpoints, errors, models, optim
from jax_cifar.augment import autoaugment, jpeg
from jax_cifar.augment import pipeline as augment
from jax_cifar.data import cifar100
from jax_cifar.configs import default as default_config

CHOICES = {
    'data.source': cifar100.SOURCES,
    'model.name': models.MODEL_NAMES,
    'model.stem': models.STEMS,
    'model.dtype': ('float32', 'bfloat16'),
    'model.normalize': augment.NORMALIZE_CHOICES,
    'augment.crop_mode': augment.CROP_MODES,
    'augment.policy': autoaugment.POLICIES,
    'augment.jpeg_subsampling': jpeg.SUBSAMPLINGS,
    'optim.name': optim.OPTIMIZERS,
    'optim.schedule': optim.SCHEDULES,
    'optim.schedule_per': optim.SCHEDULE_UNITS,
    'train.on_nonfinite': ('stop', 'skip'),
    'wandb.mode': ('online', 'offline', 'disabled'),
    'checkpoint.best_weights': checkpoints.WEIGHTS,
    'model.init_from_weights': checkpoints.READ_WEIGHTS,
}
WANDB_TAG_MAX = 64  # wandb.Settings refuses longer tags (and the run had gone on without wandb).
# key: (low, high, low_inclusive); high is inclusive, None = unbounded.
INT_MAX = 2**31 - 1  # Steps and counts are int32 on the device.
SYNTHETIC_MAX = 1_000_000  # 3 GB of 32x32 images (1e11 had been a 279 TiB allocation).
_F32_TINY, _F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)

RANGES = {
    'seed': (0, 2**32 - 1, True), 'data.split_seed': (0, 2**32 - 1, True),  # JAX keys: 32 bits
    'data.val_fraction': (0.0, 0.9, True),
    'data.train_limit': (0, None, True), 'data.eval_limit': (0, None, True),
    'data.synthetic_size': (1, None, True),  # Also <= SYNTHETIC_MAX.
    'data.worker_count': (0, 256, True),  # Processes: 100,000 had hung at step 0 (a flag audit).
    'data.prefetch': (0, 64, True),  # Batches on the devices: 2**31 had loaded every one (a fuzz).
    # 1e8 classes had hung in the head's init, and a width of 2**31 failed there in a traceback.
    'model.num_classes': (1, 100_000, True), 'model.width': (1, 1024, True),
    'model.image_size': (16, 1024, True),
    'augment.crop_padding': (0, 16, True), 'augment.randaugment_num_ops': (0, 14, True),
    'augment.randaugment_magnitude': (0, 30, True), 'augment.erasing_prob': (0.0, 1.0, True),
    'augment.mixup_alpha': (0.0, None, True), 'augment.cutmix_alpha': (0.0, None, True),
    'augment.switch_prob': (0.0, 1.0, True),
    'augment.augmix_severity': (1, 10, True), 'augment.augmix_width': (1, 10, True),
    'augment.augmix_depth': (-1, 10, True), 'augment.augmix_alpha': (0.0, None, False),
    'augment.augmix_jsd_weight': (0.0, None, True), 'augment.rrc_prob': (0.0, 1.0, True),
    'augment.color_jitter_prob': (0.0, 1.0, True), 'augment.blur_prob': (0.0, 1.0, True),
    'augment.blur_kernel': (1, 31, True), 'augment.jpeg_prob': (0.0, 1.0, True),
    'augment.noise_prob': (0.0, 1.0, True),
    'optim.lr': (0.0, 10.0, False), 'optim.momentum': (0.0, 1.0, True),
    'optim.b1': (0.0, 1.0, True), 'optim.b2': (0.0, 1.0, True),
    'optim.weight_decay': (0.0, None, True), 'optim.warmup_epochs': (0.0, None, True),
    'optim.end_lr_factor': (0.0, 1.0, True), 'optim.grad_clip_norm': (0.0, None, True),
    'optim.label_smoothing': (0.0, 1.0, True), 'optim.backbone_lr_mult': (0.0, None, True),
    'optim.freeze_backbone_steps': (0, None, True),
    'train.batch_size': (1, None, True), 'train.grad_accum_steps': (1, None, True), 'train.num_epochs': (0.0, None, False),
    'train.eval_batch_size': (1, None, True), 'train.log_every_steps': (1, None, True),
    'train.eval_every_epochs': (0.0, None, False), 'train.max_steps': (0, None, True),
    'checkpoint.every_steps': (1, None, True), 'checkpoint.keep': (1, None, True),
    'ema.decay': (0.0, 1.0, True), 'ema.warmup_power': (0.0, None, True),
}

# Ranges of keys that only a launch reads (data loading, logging and checkpoint cadence): a run
# that trained before a limit was added still loads (an upgrade audit: a run with data.worker_count
# 300 had been refused by load_model and evaluate once the limit of 256 came).
LAUNCH_ONLY_RANGES = ('data.worker_count', 'data.prefetch', 'train.log_every_steps',
                      'train.eval_every_epochs', 'train.max_steps', 'checkpoint.every_steps',
                      'checkpoint.keep')
# Upper limits added after runs could train past them: checked at launch, not when a run loads.
LAUNCH_ONLY_HIGHS = ('model.num_classes', 'model.width')

ConfigError = errors.ConfigError


def _kept_as_text(key: str, value, form: str) -> str:
  """Why a tuple flag holds one string, where it does: ml_collections reads a tuple override with
  Python's literal parser, so '(nan,1)' or '(0.5,x)' (no literal) arrives as ('(nan,1)',)."""
  if not (isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str)):
    return ''
  return (": the command line kept it as text (ml_collections reads only Python literals there, "
          f"and nan, inf or a name is not one); give numbers, as --config.{key}='{form}'")


def validate(config, *, launch: bool = True) -> None:
  """Raises ConfigError naming the first unknown key, wrong type, unknown choice or bad range.

  launch=False reads a run that already trained (workdir.run_config, evaluate): the checks of
  what training would do with a value (augmentation ranges, momentum, label smoothing, Nesterov)
  and the ranges of LAUNCH_ONLY_RANGES are skipped, so a run whose config predates one of them
  still loads."""
  if not isinstance(config, ml_collections.ConfigDict):  # (A dict had been an AttributeError.)
    raise TypeError(f'a config is an ml_collections.ConfigDict (a get_config() or load_model\'s '
                    f'second result), got {type(config).__name__}')
  given = traverse_util.flatten_dict(config.to_dict(), sep='.')
  defaults = traverse_util.flatten_dict(default_config.get_config().to_dict(), sep='.')
  for key in given:
    if key not in defaults:
      raise ConfigError(f'unknown config key {key!r} (see jax_cifar/configs/default.py for every key)')
  for key in defaults:  # A config file that deleted a key, or a hand-made one that never had it.
    if key not in given:
      raise ConfigError(f'config key {key!r} is missing: a config file starts from '
                        'jax_cifar.configs.default.get_config() (or a recipe\'s get_config()) and '
                        'changes keys, never deletes them')
  for key, value in given.items():
    default = defaults[key]
    if isinstance(default, bool) != isinstance(value, bool) or (
        isinstance(default, (int, float)) and not isinstance(value, (int, float))) or (
            isinstance(default, int) and isinstance(value, float)) or (  # A dict-built config's
                isinstance(default, str) and not isinstance(value, str)):  # 500.5 (a traceback).
      raise ConfigError(f'config key {key!r} must be of type {type(default).__name__}, '
                        f'got {value!r}')
  for key, allowed in CHOICES.items():
    if given[key] not in allowed:
      raise ConfigError(f'config key {key!r} must be one of {allowed}, got {given[key]!r}')
  for key, value in given.items():  # NaN passes every comparison; inf every open range.
    values = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
      raise ConfigError(f'config key {key!r} must be a finite number, got {value!r}')
    # The compiled steps compute in float32: 1e39 is inf there and 1e-40 a subnormal (mixup's
    # Beta draw was NaN, and the run stopped as if it had diverged: a bad-input review). At
    # launch only, as the limits below: a run that trained before them still loads.
    if launch and any(isinstance(v, float) and v != 0 and not _F32_TINY <= abs(v) <= _F32_MAX
                      for v in values):
      zero = '' if key in RANGES and RANGES[key][0] == 0 and not RANGES[key][2] else '0 or '
      raise ConfigError(f'config key {key!r} must be {zero}a float32 number (of magnitude '
                        f'{_F32_TINY:.3g} to {_F32_MAX:.3g}), got {value!r}')
  for key, (low, high, low_inclusive) in RANGES.items():
    if not launch and key in LAUNCH_ONLY_RANGES:
      continue
    value = given[key]
    if not launch and key in LAUNCH_ONLY_HIGHS:
      high = None
    if high is None and isinstance(value, int) and launch:  # (A jitted int32: 1e20 had been an
      high = INT_MAX  # OverflowError.)
    if key == 'data.synthetic_size':  # Also for a run's config.json read back: evaluate makes the
      high = SYNTHETIC_MAX  # images (1e11 in one had been a 279 TiB allocation: a review).
    if (value < low or (value == low and not low_inclusive)) or (high is not None and value > high):
      bounds = f"{'[' if low_inclusive else '('}{low}, {high if high is not None else 'inf'}]"
      raise ConfigError(f'config key {key!r} must be in {bounds}, got {value!r}')
  if given['model.width'] < models.smallest_width(given['model.name']):
    raise ConfigError(f"config key 'model.width' must be >= {models.smallest_width(given['model.name'])} "
                      f"for {given['model.name']}, got {given['model.width']}")
  if given['model.name'] == 'simple_cnn' and given['model.image_size'] % 32:
    raise ConfigError("config key 'model.image_size' must be a multiple of 32 for simple_cnn "
                      f"(its head sees an 8x8 grid), got {given['model.image_size']}")
  if given['train.batch_size'] % given['train.grad_accum_steps']:
    raise ConfigError(f"train.batch_size ({given['train.batch_size']}) must be divisible by "
                      f"train.grad_accum_steps ({given['train.grad_accum_steps']})")
  if given['model.init_from'] and given['model.pretrained']:
    raise ConfigError('model.init_from (another run\'s weights) and model.pretrained (converted '
                      'torchvision weights) both set: give one')
  if given['model.pretrained'] and given['model.name'] != 'simple_cnn' and (
      given['model.stem'] != 'imagenet' or given['model.width'] != 64):
    # Said before the workdir, the data and the compile: it had failed at the weights' load, with
    # "mis-shaped keys: conv1.kernel" (a review).
    raise ConfigError(
        "model.pretrained holds torchvision's ImageNet weights, of the ImageNet stem and width "
        f"64; this config has model.stem={given['model.stem']!r}, "
        f"model.width={given['model.width']}: set --config.model.stem=imagenet "
        '--config.model.width=64 (the transfer configs do)')
  # As torch.optim.AdamW: at b1/b2 = 1 every update is 0 / 0; momentum 1 never forgets a
  # gradient; label smoothing 1 makes every target uniform (the labels would not matter).
  launch_only = ('optim.momentum', 'optim.label_smoothing') if launch else ()
  for key in ('optim.b1', 'optim.b2') + launch_only:
    if given[key] >= 1.0:
      raise ConfigError(f'config key {key!r} must be below 1, got {given[key]}')
  if launch:
    _check_learning_rates(given)
  if (launch and given['optim.name'] == 'sgd' and given['optim.nesterov']
      and given['optim.momentum'] == 0):
    raise ConfigError('optim.nesterov=True needs optim.momentum > 0 (as torch.optim.SGD); with '
                      'momentum 0 it would silently be plain SGD')
  if given['optim.schedule_per'] == 'epoch' and given['optim.warmup_epochs'] > 0:
    raise ConfigError(optim.per_epoch_warmup_error(given['optim.warmup_epochs']))
  if given['ema.decay'] >= 1.0:
    raise ConfigError(f"config key 'ema.decay' must be below 1, got {given['ema.decay']}")
  if given['checkpoint.best_weights'] == 'ema' and given['ema.decay'] == 0:
    raise ConfigError("checkpoint.best_weights='ema' needs an EMA: set ema.decay (e.g. 0.999)")
  if given['augment.augmix_depth'] == 0:
    raise ConfigError("config key 'augment.augmix_depth' must be -1 (random 1-3) or 1..10, got 0")
  if given['augment.blur_kernel'] % 2 == 0:
    raise ConfigError(f"config key 'augment.blur_kernel' must be odd, got {given['augment.blur_kernel']}")
  if given['augment.augmix_jsd_weight'] > 0 and not given['augment.augmix']:
    raise ConfigError("config key 'augment.augmix_jsd_weight' > 0 needs augment.augmix=True")
  if given['augment.augmix_jsd_weight'] > 0 and (given['augment.mixup_alpha'] > 0 or
                                                 given['augment.cutmix_alpha'] > 0):
    raise ConfigError('augment.augmix_jsd_weight > 0 (the Jensen-Shannon loss compares views of '
                      'the same image) cannot be combined with mixup_alpha or cutmix_alpha')
  # The pipeline's own limits for its (low, high) pairs (the step would refuse the rest).
  for name, (lowest, highest, low_open) in augment.PAIR_LIMITS.items() if launch else ():
    key, value = f'augment.{name}', given[f'augment.{name}']
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
      raise ConfigError(f'config key {key!r} must be a pair (low, high), got {value!r}'
                        + _kept_as_text(key, value, '(LOW,HIGH)'))
    low, high = value
    if low < lowest or (low == lowest and low_open) or low > high or high > highest:
      bounds = f"{'(' if low_open else '['}{lowest}, {highest}]"
      raise ConfigError(f'config key {key!r} must be (low, high) with low <= high, both in '
                        f'{bounds}; got {value!r}')
  if launch and not all(float(q).is_integer() for q in given['augment.jpeg_quality']):
    raise ConfigError("config key 'augment.jpeg_quality' must be whole quality factors (low, high), "
                      f"got {given['augment.jpeg_quality']!r}")  # Had been truncated silently.
  jitter = given['augment.color_jitter']
  if not (isinstance(jitter, (list, tuple)) and len(jitter) == 4 and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in jitter)
          and min(jitter) >= 0 and jitter[3] <= 0.5):
    raise ConfigError("config key 'augment.color_jitter' must be 4 strengths (brightness, contrast, "
                      f"saturation, hue) >= 0 with hue <= 0.5; got {jitter!r}"
                      + _kept_as_text('augment.color_jitter', jitter, '(B,C,S,H)'))
  tags = given['wandb.tags']
  if launch and not (isinstance(tags, (list, tuple)) and all(
      isinstance(t, str) and 0 < len(t) <= WANDB_TAG_MAX for t in tags)):
    # wandb refuses them at its start, and the run then goes on without wandb.
    raise ConfigError(f"config key 'wandb.tags' must be a tuple of strings of 1 to {WANDB_TAG_MAX} "
                      f"characters (wandb's limit), e.g. ('r50', 'augmix'); got {tags!r}")
  if launch and any(',' in t for t in tags):  # --config.wandb.tags=a,b had been one tag 'a,b'.
    raise ConfigError(f"config key 'wandb.tags' holds {tags!r}: a tag with a comma is one tag, "
                      "not several; give them as --config.wandb.tags=\"('a','b')\"")
  if launch and given['wandb.mode'] != 'disabled':
    _check_wandb_project(given['wandb.project'])


def _check_learning_rates(given: dict) -> None:
  """The backbone's rate (optim.lr x optim.backbone_lr_mult) has optim.lr's limit, and the peak
  rate times the weight decay stays below 1. Each had been taken alone (a fuzz): a multiplier of
  1e6 or lr x weight_decay = 1 trained nonsense without a word, as every step multiplied each
  decayed weight by 1 - rate x weight_decay <= 0 (AdamW's decoupled decay and SGD's coupled one
  alike)."""
  lr, mult, decay = given['optim.lr'], given['optim.backbone_lr_mult'], given['optim.weight_decay']
  highest = RANGES['optim.lr'][1]
  if lr * mult > highest:
    raise ConfigError(f'optim.lr x optim.backbone_lr_mult (the backbone\'s learning rate) must be '
                      f'at most {highest:g}, as optim.lr; got {lr:g} x {mult:g} = {lr * mult:g}')
  peak = lr * max(1.0, mult)
  if peak * decay >= 1:
    rate = 'optim.lr x optim.backbone_lr_mult' if mult > 1 else 'optim.lr'
    raise ConfigError(f'{rate} x optim.weight_decay must be below 1, got {peak * decay:g}: every '
                      f'step would multiply each decayed weight by {1 - peak * decay:g}, erasing '
                      'or flipping it (torch.optim decays the same way; weight_decay is '
                      'usually 1e-4 to 0.05)')


def _check_wandb_project(project: str) -> None:
  """wandb's own check of a project name (no '/', at most 128 characters): it refuses others at
  its start, and the run had then gone on without wandb (a bad-input review)."""
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError:  # (tracking says that wandb is missing.)
    return
  try:
    wandb.Settings(project=project or None)
  except Exception as e:  # pylint: disable=broad-except  (wandb's UsageError or pydantic's)
    raise ConfigError(f"config key 'wandb.project': {' '.join(str(e).split())[:300]}") from None


def inert_reasons(flat: dict) -> dict[str, str]:
  """{key: why} for the keys of a flat config that do nothing under it: the settings of an
  optimizer, augmentation or tracker that is off or not the one chosen."""
  why = {}

  def inert(keys, reason):
    why.update({k: reason for k in keys})

  if flat.get('model.name') == 'simple_cnn':
    inert(['model.width'], 'simple_cnn has fixed widths')
    inert(['model.stem'], 'simple_cnn has no stem')
    inert(['model.remat', 'model.scan_blocks'], 'simple_cnn has no residual blocks')
  source = flat.get('data.source')
  if source != 'local':  # (A flag audit: these had been taken without a word.)
    inert(['data.dir', 'data.download'], f"they are the 'local' source's (data.source={source!r})")
  if source != 'tfds':
    inert(['data.tfds_data_dir'], f"it is the 'tfds' source's (data.source={source!r})")
  if source != 'synthetic':
    inert(['data.synthetic_size'], f"it is the 'synthetic' source's (data.source={source!r})")
  if not flat.get('model.init_from'):
    inert(['model.init_from_weights'], 'model.init_from is not set')
  if not flat.get('ema.decay'):
    inert(['ema.warmup_power'], 'there is no EMA without ema.decay > 0')
  optimizer = flat.get('optim.name')
  if optimizer == 'adamw':
    inert(['optim.momentum', 'optim.nesterov'], "they are SGD's (optim.name='adamw')")
  elif optimizer == 'sgd':
    inert(['optim.b1', 'optim.b2'], "they are AdamW's (optim.name='sgd')")
  if not flat.get('optim.weight_decay'):
    inert(['optim.decay_bn_and_bias'], 'optim.weight_decay is 0')
  if flat.get('optim.schedule') == 'constant':
    inert(['optim.end_lr_factor'], "optim.schedule='constant' does not decay")
    if not flat.get('optim.warmup_epochs'):
      inert(['optim.schedule_per'], "optim.schedule='constant' without a warm-up never changes")
  if flat.get('augment.policy') != 'randaugment':
    inert(['augment.randaugment_num_ops', 'augment.randaugment_magnitude'],
          f"augment.policy is {flat.get('augment.policy')!r}, not 'randaugment'")
  if not (flat.get('augment.mixup_alpha') and flat.get('augment.cutmix_alpha')):
    inert(['augment.switch_prob'], 'it picks between mixup and CutMix when both are on')
  if not flat.get('augment.augmix'):
    inert([f'augment.augmix_{k}' for k in ('severity', 'width', 'depth', 'alpha')],
          'augment.augmix is off')
  for prob, keys in (('rrc', ['rrc_scale', 'rrc_ratio']), ('color_jitter', ['color_jitter']),
                     ('blur', ['blur_kernel', 'blur_sigma']),
                     ('jpeg', ['jpeg_quality', 'jpeg_subsampling']),
                     ('noise', ['noise_std'])):
    if not flat.get(f'augment.{prob}_prob'):
      inert([f'augment.{k}' for k in keys], f'augment.{prob}_prob is 0')
  if flat.get('wandb.mode') == 'disabled':
    inert(['wandb.project', 'wandb.entity', 'wandb.name', 'wandb.tags'],
          "wandb.mode is 'disabled' (set 'offline' or 'online')")
  return {k: v for k, v in why.items() if k in flat}


def inert_keys(flat: dict) -> set[str]:
  """Keys of a flat config that do nothing under it (inert_reasons)."""
  return set(inert_reasons(flat))


def ignored_notes(config) -> list[str]:
  """A warning for each key set away from its default that does nothing under `config` (they
  had been ignored without a word)."""
  given = traverse_util.flatten_dict(config.to_dict(), sep='.')
  defaults = traverse_util.flatten_dict(default_config.get_config().to_dict(), sep='.')
  why = inert_reasons(given)
  return [f'config key {k!r}={given[k]!r} is ignored: {why[k]}'
          for k in sorted(why) if given[k] != defaults.get(k)]


def input_notes(config) -> list[str]:
  """Warnings for inputs that work but do not suit the weights: pretrained weights fed raw
  [0, 1] pixels (model.normalize='none'; an audit)."""
  if config.model.pretrained and config.model.normalize == 'none':
    return ["model.normalize='none' feeds [0, 1] pixels to ImageNet-pretrained weights "
            "(model.pretrained), which were trained on normalised images: 'imagenet' matches them"]
  return []
