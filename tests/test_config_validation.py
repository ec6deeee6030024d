"""config_validation: its choice lists are the implementations' own, and its explicit checks (those
that CHOICES/RANGES cannot express) each refuse what they promise, naming the key."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx, traverse_util

from jax_cifar import config_validation, models
from jax_cifar import workdir as workdir_lib
from jax_cifar.augment import pipeline as augment
from jax_cifar.configs import default

BUILTIN = sorted(p.stem for p in (pathlib.Path(default.__file__).parent).glob('*.py')
                 if not p.stem.startswith('_'))


def _config(**flat):
  c = default.get_config()
  c.update_from_flattened_dict(flat)
  return c


@pytest.mark.parametrize('name', BUILTIN)
def test_every_builtin_config_is_valid(name):
  config_validation.validate(importlib.import_module(f'jax_cifar.configs.{name}').get_config())


@pytest.mark.parametrize('key, value, message', [
    ('optim.lr', -1.0, "'optim.lr' must be in"),
    ('model.name', 'resnet9', "'model.name' must be one of"),
    ('augment.policy', 'autoaugment_imagenet', "'augment.policy' must be one of"),
    ('data.val_fraction', 1.5, "'data.val_fraction' must be in"),
    ('checkpoint.every_steps', 0, "'checkpoint.every_steps' must be in"),
    ('wandb.mode', 'on', "'wandb.mode' must be one of"),
])
def test_bad_config_values_name_the_key(key, value, message):
  c = default.get_config()
  section, name = key.split('.')
  with c.unlocked():
    c[section][name] = value
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(c)


def test_unknown_config_key_is_named():
  c = default.get_config()
  with c.unlocked():
    c.optim.learning_rate = 1e-3
  with pytest.raises(config_validation.ConfigError, match="unknown config key 'optim.learning_rate'"):
    config_validation.validate(c)


def test_choices_are_what_the_implementations_accept():
  """Every listed stem, normalisation and crop mode works, and one outside the list fails in both."""
  x = jnp.zeros((1, 8, 8, 3), jnp.uint8)
  for stem in config_validation.CHOICES['model.stem']:
    models.create_model('resnet18', 10, stem=stem, width=4, rngs=nnx.Rngs(0))
  for normalize in config_validation.CHOICES['model.normalize']:
    assert augment.to_model_input(x, image_size=8, normalize=normalize, dtype=jnp.float32).shape == (
        1, 8, 8, 3)
  for mode in config_validation.CHOICES['augment.crop_mode']:
    assert augment.crop_at(x[0], 0, 0, 2, mode).shape == (8, 8, 3)
  with pytest.raises(ValueError, match='stem'):
    models.create_model('resnet18', 10, stem='tiny', width=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='normalize'):
    augment.to_model_input(x, image_size=8, normalize='mnist', dtype=jnp.float32)
  with pytest.raises(ValueError, match='crop_mode'):
    augment.crop_at(x[0], 0, 0, 2, 'edge')
  for key, value in [('model.stem', 'tiny'), ('model.normalize', 'mnist'),
                     ('augment.crop_mode', 'edge')]:
    with pytest.raises(config_validation.ConfigError, match=f"'{key}' must be one of"):
      config_validation.validate(_config(**{key: value}))


@pytest.mark.parametrize('value', [0.95, 1.0, 1.5, -0.1])
def test_val_fraction_outside_its_range_is_refused_by_the_range(value):
  with pytest.raises(config_validation.ConfigError,
                     match=r"'data.val_fraction' must be in \[0.0, 0.9\]"):
    config_validation.validate(_config(**{'data.val_fraction': value}))


def test_a_worker_count_no_machine_could_start_is_refused():
  """100,000 grain worker processes had hung the run at step 0 (a flag audit)."""
  with pytest.raises(config_validation.ConfigError, match=r"'data.worker_count' must be in \[0, 256\]"):
    config_validation.validate(_config(**{'data.worker_count': 100_000}))
  config_validation.validate(_config(**{'data.worker_count': 256}))


@pytest.mark.parametrize('flat, message', [
    ({'ema.decay': 1.0}, "'ema.decay' must be below 1"),  # RANGES admits 1.0.
    ({'augment.augmix_depth': 0}, "'augment.augmix_depth' must be -1"),
    ({'augment.blur_kernel': 4}, "'augment.blur_kernel' must be odd"),
    ({'model.name': 'resnext50_32x4d', 'model.width': 4}, "'model.width' must be >= "),
    ({'train.batch_size': 10, 'train.grad_accum_steps': 4}, 'divisible by train.grad_accum_steps'),
    ({'checkpoint.best_weights': 'ema'}, 'needs an EMA'),
    ({'augment.augmix_jsd_weight': 12.0}, 'needs augment.augmix=True'),
    ({'augment.augmix_jsd_weight': 12.0, 'augment.augmix': True, 'augment.mixup_alpha': 0.2},
     'cannot be combined'),
    ({'augment.rrc_scale': (0.9, 0.5)}, "'augment.rrc_scale' must be \\(low, high\\)"),
    ({'augment.rrc_scale': (0.5,)}, "'augment.rrc_scale' must be a pair"),
    # What --config.augment.rrc_scale='(nan,1)' gives (ml_collections' literal parser keeps it
    # as one string), which had been only "must be a pair ... got ('(nan,1)',)".
    ({'augment.rrc_scale': ('(nan,1)',)}, "must be a pair .*got \\('\\(nan,1\\)',\\): the command "
     "line kept it as text .*give numbers, as --config.augment.rrc_scale='\\(LOW,HIGH\\)'"),
    ({'augment.color_jitter': ('(0.4,0.4,nan,0.1)',)}, "'augment.color_jitter' must be 4 .*the "
     "command line kept it as text .*--config.augment.color_jitter='\\(B,C,S,H\\)'"),
    ({'augment.color_jitter': (0.4, 0.4, 0.4, 0.6)}, "'augment.color_jitter' must be 4"),
    ({'model.name': 'simple_cnn', 'model.image_size': 48}, "'model.image_size' must be a multiple"),
    # NaN passed every range (optim.lr=nan trained and exited 0; ema.decay=nan turned the EMA
    # off); inf passed open ranges (num_epochs=inf: an OverflowError traceback).
    ({'optim.lr': float('nan')}, "'optim.lr' must be a finite number, got nan"),
    ({'ema.decay': float('nan')}, "'ema.decay' must be a finite number"),
    ({'train.num_epochs': float('inf')}, "'train.num_epochs' must be a finite number, got inf"),
    ({'augment.rrc_scale': (float('nan'), 1.0)}, "'augment.rrc_scale' must be a finite number"),
    ({'seed': -1}, "'seed' must be in \\[0, 4294967295\\]"),
    # A bad-input review: each had been a traceback, or a NaN in the compiled step read as a
    # diverged run (float32: 1e39 is inf there, 1e-40 a subnormal; device counters are int32).
    ({'augment.mixup_alpha': 1e39}, "'augment.mixup_alpha' must be 0 or a float32 number .*got "
     '1e\\+39'),
    ({'augment.cutmix_alpha': 1e-40}, "'augment.cutmix_alpha' must be 0 or a float32 number"),
    ({'augment.rrc_ratio': (1e-45, 1.0)}, "'augment.rrc_ratio' must be 0 or a float32 number"),
    ({'optim.freeze_backbone_steps': 10**20}, "'optim.freeze_backbone_steps' must be in "
     '\\[0, 2147483647\\]'),
    ({'data.synthetic_size': 10**11}, "'data.synthetic_size' must be in \\[1, 1000000\\]"),
    # --config.wandb.tags=a,b is one tag 'a,b' (ml_collections keeps the text): a bad-input review.
    ({'wandb.tags': ('a,b',)}, "'wandb.tags' holds \\('a,b',\\): a tag with a comma is one tag, "
     "not several; give them as --config.wandb.tags=\"\\('a','b'\\)\""),
    # wandb's own check: it refused the name at its start, and the run went on without wandb.
    ({'wandb.mode': 'offline', 'wandb.project': 'a/b'},
     "^config key 'wandb.project': Invalid project name 'a/b': cannot contain characters"),
    ({'wandb.mode': 'online', 'wandb.project': 'p' * 129}, "'wandb.project': .*exceeded 128"),
    # An audit's findings: each had trained on (or crashed in a traceback after loading the data).
    # 2**63 was an OverflowError traceback in the model's init; with JAX's 32-bit keys (x64 off)
    # seed 2**32 is seed 0's model and augmentation, so the range stops below it.
    ({'seed': 2**32}, "'seed' must be in"), ({'data.split_seed': 2**32}, "'data.split_seed' must be in"),
    ({'optim.momentum': 1.0}, "'optim.momentum' must be below 1"),
    ({'optim.label_smoothing': 1.0}, "'optim.label_smoothing' must be below 1"),
    ({'optim.name': 'sgd', 'optim.momentum': 0.0, 'optim.nesterov': True},
     'nesterov=True needs optim.momentum > 0'),
    ({'augment.blur_sigma': (0.1, 200.0)}, "'augment.blur_sigma' must be \\(low, high\\)"),
    ({'data.split_seed': -3}, "'data.split_seed' must be in"),
    ({'optim.b1': 1.0}, "'optim.b1' must be below 1"),
    ({'optim.b2': 1.0}, "'optim.b2' must be below 1"),
    # A second audit: a traceback from min(), wandb refusing its settings after the run started,
    # a quality range truncated without a word.
    ({'augment.color_jitter': (0.4, 0.4, 0.4, 'x')}, "'augment.color_jitter' must be 4 strengths"),
    ({'augment.color_jitter': (0.4, None, 0.4, 0.1)}, "'augment.color_jitter' must be 4 strengths"),
    ({'wandb.tags': (1, 2)}, "'wandb.tags' must be a tuple of strings of 1 to 64 characters"),
    ({'wandb.tags': ('r50', '')}, "'wandb.tags' must be a tuple of strings of 1 to 64 characters"),
    # wandb refuses a tag over 64 characters at its start, and the run went on without it.
    ({'wandb.tags': ('r50', 'x' * 65)}, "'wandb.tags' must be a tuple of strings of 1 to 64"),
    ({'augment.jpeg_quality': (20.7, 95.2)}, "'augment.jpeg_quality' must be whole quality factors"),
    # Changed once per epoch, a warm-up from 0 is a first epoch at rate 0.
    ({'optim.schedule_per': 'epoch', 'optim.warmup_epochs': 0.5},
     "schedule_per='epoch' .* \\(optim.warmup_epochs=0.5\\) would train the first epoch at rate 0"),
    ({'optim.schedule_per': 'epochs'}, "'optim.schedule_per' must be one of"),
    # A config fuzz: each had been taken. 2**31 batches were all loaded before step 1; 1e8
    # classes hung in the head's init; a width of 2**31 was a traceback there; a backbone rate
    # of 1e3 and a peak rate x weight decay of 1 trained nonsense without a word.
    ({'data.prefetch': 65}, "'data.prefetch' must be in \\[0, 64\\]"),
    ({'model.num_classes': 100_001}, "'model.num_classes' must be in \\[1, 100000\\]"),
    ({'model.width': 1025}, "'model.width' must be in \\[1, 1024\\]"),
    ({'optim.backbone_lr_mult': 1e6}, "^optim.lr x optim.backbone_lr_mult \\(the backbone's "
     "learning rate\\) must be at most 10, as optim.lr; got 0.001 x 1e\\+06 = 1000$"),
    ({'optim.lr': 1.0, 'optim.weight_decay': 1.0}, "^optim.lr x optim.weight_decay must be below "
     "1, got 1: every step would multiply each decayed weight by 0, erasing or flipping it"),
    ({'optim.name': 'sgd', 'optim.weight_decay': 2000.0}, "^optim.lr x optim.weight_decay must "
     "be below 1, got 2: .* by -1,"),
    ({'optim.backbone_lr_mult': 100.0, 'optim.weight_decay': 10.0},
     "^optim.lr x optim.backbone_lr_mult x optim.weight_decay must be below 1, got 1:"),
    # 0 is no learning rate: the message had offered it.
    ({'optim.lr': 1e-40}, "'optim.lr' must be a float32 number \\(of magnitude"),
])
def test_explicit_checks_refuse_naming_the_key(flat, message):
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(_config(**flat))


@pytest.mark.parametrize('key, value', [('data.train_limit', 500.5),
                                        ('data.synthetic_size', 1024.0), ('train.batch_size', 32.0)])
def test_a_float_for_an_integer_key_is_refused_naming_it(key, value):
  """A config built from a dict (YAML, JSON) is not type-checked by ml_collections: 500.5 passed
  and failed later with 'slice indices must be integers' (an audit)."""
  flat = traverse_util.flatten_dict(default.get_config().to_dict(), sep='.')
  flat[key] = value
  c = ml_collections.ConfigDict(traverse_util.unflatten_dict(flat, sep='.'))
  with pytest.raises(config_validation.ConfigError, match=f"config key '{key}' must be of type int"):
    config_validation.validate(c)


def test_the_limits_of_learning_rates_and_sizes_still_admit_their_edges():
  for flat in ({'data.prefetch': 64}, {'model.num_classes': 100_000}, {'model.width': 1024},
               {'optim.backbone_lr_mult': 1e4}, {'optim.lr': 10.0, 'optim.weight_decay': 0.09},
               {'optim.backbone_lr_mult': 0.0, 'optim.weight_decay': 999.0},
               {'optim.name': 'sgd', 'optim.lr': 0.1, 'optim.weight_decay': 5e-4}):
    config_validation.validate(_config(**flat))


def test_a_run_that_trained_before_a_check_existed_still_loads():
  """The checks of what training would do with a value apply to launches; a run that trained
  with such a value (Nesterov with momentum 0 trained as plain SGD, an unused blur range) must
  still load for evaluate, load_model and init_from (workdir.run_config)."""
  for flat in ({'optim.name': 'sgd', 'optim.momentum': 0.0, 'optim.nesterov': True},
               {'augment.blur_sigma': (0.1, 200.0)}, {'optim.label_smoothing': 1.0},
               {'wandb.tags': (1, 2)}, {'augment.jpeg_quality': (20.5, 95)},
               {'data.worker_count': 300},  # (Above the limit of 256 that came later.)
               {'optim.lr': 1.0, 'optim.weight_decay': 1.0}, {'optim.backbone_lr_mult': 1e6},
               {'model.width': 2048}, {'model.num_classes': 200_000}):  # (A review.)
    with pytest.raises(config_validation.ConfigError):
      config_validation.validate(_config(**flat))
    config_validation.validate(_config(**flat), launch=False)
  with pytest.raises(config_validation.ConfigError, match="'optim.lr'"):  # The rest still holds.
    config_validation.validate(_config(**{'optim.lr': -1.0}), launch=False)
  # Each key skipped is one whose range is checked at a launch (a misspelt one would skip nothing).
  assert set(config_validation.LAUNCH_ONLY_RANGES) <= set(config_validation.RANGES)
  # ... and each of them is skipped (a test audit: only data.worker_count had been tried).
  out_of_range = {'data.worker_count': 300, 'data.prefetch': -1, 'train.log_every_steps': 0,
                  'train.eval_every_epochs': -1.0, 'train.max_steps': -1,
                  'checkpoint.every_steps': 0, 'checkpoint.keep': 0}
  assert set(out_of_range) == set(config_validation.LAUNCH_ONLY_RANGES)
  for key, value in out_of_range.items():
    with pytest.raises(config_validation.ConfigError, match=f"'{key}'"):
      config_validation.validate(_config(**{key: value}))
    config_validation.validate(_config(**{key: value}), launch=False)
  assert set(config_validation.LAUNCH_ONLY_HIGHS) <= set(config_validation.RANGES)
  with pytest.raises(config_validation.ConfigError, match="'model.width' must be in"):
    config_validation.validate(_config(**{'model.width': 0}), launch=False)  # The low one holds.


def test_keys_that_do_nothing_under_a_config_are_named_not_refused():
  """simple_cnn's width/stem/remat/scan_blocks and ema.warmup_power without an EMA had been
  ignored without a word (an audit). They are named in a warning, not refused: a run launched
  with one before must still resume with the same command."""
  c = _config(**{'model.name': 'simple_cnn', 'model.width': 128, 'model.remat': True,
                 'ema.warmup_power': 0.75})
  config_validation.validate(c)
  notes = config_validation.ignored_notes(c)
  assert [n.split('=')[0] for n in notes] == [
      "config key 'ema.warmup_power'", "config key 'model.remat'", "config key 'model.width'"]
  assert 'simple_cnn has fixed widths' in notes[2] and 'no EMA' in notes[0]
  assert config_validation.ignored_notes(_config(**{'model.width': 128, 'ema.decay': 0.99,
                                                    'ema.warmup_power': 0.75})) == []
  assert config_validation.ignored_notes(_config(**{'model.name': 'simple_cnn'})) == []


@pytest.mark.parametrize('flat, key, reason', [
    ({'optim.momentum': 0.5}, 'optim.momentum', "SGD's"),  # AdamW (the default) ignores it.
    ({'optim.nesterov': True}, 'optim.nesterov', "SGD's"),
    ({'optim.name': 'sgd', 'optim.b2': 0.99}, 'optim.b2', "AdamW's"),
    ({'augment.randaugment_magnitude': 20}, 'augment.randaugment_magnitude', "not 'randaugment'"),
    ({'augment.mixup_alpha': 0.2, 'augment.switch_prob': 0.9}, 'augment.switch_prob', 'both'),
    ({'augment.noise_std': (0.0, 0.2)}, 'augment.noise_std', 'noise_prob is 0'),
    ({'augment.augmix_severity': 5}, 'augment.augmix_severity', 'augmix is off'),
    ({'wandb.project': 'mine'}, 'wandb.project', "wandb.mode is 'disabled'"),
    ({'optim.weight_decay': 0.0, 'optim.decay_bn_and_bias': True}, 'optim.decay_bn_and_bias',
     'weight_decay is 0'),
    ({'augment.jpeg_subsampling': '4:2:0'}, 'augment.jpeg_subsampling', 'jpeg_prob is 0'),
    ({'optim.schedule': 'constant', 'optim.warmup_epochs': 0.0, 'optim.schedule_per': 'epoch'},
     'optim.schedule_per', 'never changes'),
    ({'data.source': 'synthetic', 'data.download': False}, 'data.download', "'local' source's"),
    ({'data.tfds_data_dir': '/data/tfds'}, 'data.tfds_data_dir', "'tfds' source's"),
    ({'data.synthetic_size': 5}, 'data.synthetic_size', "'synthetic' source's"),
])
def test_settings_of_what_is_off_or_not_chosen_are_named_and_need_not_match_on_resume(
    flat, key, reason):
  """AdamW's run had been refused a resume for optim.momentum 0.9 -> 0.5, which it ignores, and
  a fresh run with it said nothing (an audit)."""
  notes = config_validation.ignored_notes(_config(**flat))
  assert len(notes) == 1 and notes[0].startswith(f'config key {key!r}=') and reason in notes[0], notes
  assert key in config_validation.inert_keys(workdir_lib.flatten(_config(**flat).to_dict()))
  on = {'optim.momentum': {'optim.name': 'sgd'}, 'optim.nesterov': {'optim.name': 'sgd'},
        'optim.b2': {'optim.name': 'adamw'}, 'augment.randaugment_magnitude': {
            'augment.policy': 'randaugment'}, 'augment.switch_prob': {'augment.cutmix_alpha': 1.0},
        'augment.noise_std': {'augment.noise_prob': 0.5},
        'augment.augmix_severity': {'augment.augmix': True},
        'wandb.project': {'wandb.mode': 'offline'},
        'optim.decay_bn_and_bias': {'optim.weight_decay': 0.01},
        'augment.jpeg_subsampling': {'augment.jpeg_prob': 0.5},
        'optim.schedule_per': {'optim.schedule': 'cosine'}, 'data.download': {'data.source': 'local'},
        'data.tfds_data_dir': {'data.source': 'tfds'},
        'data.synthetic_size': {'data.source': 'synthetic'}}[key]
  assert not config_validation.ignored_notes(_config(**{**flat, **on}))  # In use: no note.


def test_the_crop_padding_mode_is_never_called_ignored():
  """Without a training crop, `evaluate --tta shifts` still pads with it (a review): it must not
  be let through a resume as if it did nothing."""
  flat = workdir_lib.flatten(_config(**{'augment.crop_padding': 0,
                                        'augment.crop_mode': 'reflect'}).to_dict())
  assert 'augment.crop_mode' not in config_validation.inert_keys(flat)


def test_pretrained_weights_fed_raw_pixels_are_warned_about():
  notes = config_validation.input_notes(_config(**{'model.pretrained': 'w/r50',
                                                    'model.normalize': 'none'}))
  assert len(notes) == 1 and "'imagenet' matches them" in notes[0]
  for normalize in ('imagenet', 'cifar'):  # CIFAR's statistics are close to ImageNet's.
    assert not config_validation.input_notes(_config(**{'model.pretrained': 'w/r50',
                                                         'model.normalize': normalize}))
  assert not config_validation.input_notes(_config(**{'model.normalize': 'none'}))


def test_a_config_missing_a_key_names_it():
  """A config file that deleted a key had given a KeyError traceback (or passed, for a key no
  check reads, and failed later)."""
  c = default.get_config()
  del c['ema']
  with pytest.raises(config_validation.ConfigError, match="config key 'ema.decay' is missing"):
    config_validation.validate(c)
  c = default.get_config()
  del c.wandb['project']
  with pytest.raises(config_validation.ConfigError, match="'wandb.project' is missing"):
    config_validation.validate(c)


def test_the_pair_ranges_are_the_ones_the_augmentation_accepts():
  """augment.blur_sigma up to 200 passed the check, then failed inside the compiled step (the
  check had its own copy of the limits): every pair at its highest passes both, and just above
  it is refused by the check, naming the key."""
  images = jnp.zeros((2, 32, 32, 3), jnp.uint8)
  for name, (lowest, highest, _) in augment.PAIR_LIMITS.items():
    high = 5.0 if highest == float('inf') else highest
    c = _config(**{f'augment.{name}': (high, high), 'augment.rrc_prob': 1.0,
                   'augment.blur_prob': 1.0, 'augment.jpeg_prob': 1.0, 'augment.noise_prob': 1.0})
    config_validation.validate(c)
    assert augment.augment_batch(jax.random.key(0), images, c.augment).shape == (2, 32, 32, 3)
    if highest != float('inf'):
      with pytest.raises(config_validation.ConfigError, match=f"'augment.{name}' must be"):
        config_validation.validate(_config(**{f'augment.{name}': (lowest + 0.5, highest + 1)}))


def test_values_at_the_edges_of_the_explicit_checks_pass():
  config_validation.validate(_config(**{
      'ema.decay': 0.9999, 'augment.augmix_depth': -1, 'augment.blur_kernel': 5,
      'data.val_fraction': 0.9, 'train.batch_size': 12, 'train.grad_accum_steps': 4,
      'augment.rrc_scale': (0.5, 0.5), 'optim.momentum': 0.99, 'optim.label_smoothing': 0.99,
      'seed': 2**32 - 1, 'augment.blur_sigma': (0.1, 100.0), 'augment.jpeg_quality': (1.0, 100),
      'wandb.tags': ['a', 'b']}))
  config_validation.validate(_config(**{'optim.name': 'sgd', 'optim.nesterov': True}))
  config_validation.validate(_config(**{'model.name': 'simple_cnn', 'model.image_size': 64}))
  config_validation.validate(_config(**{'ema.decay': 0.99, 'ema.warmup_power': 0.75}))
  config_validation.validate(_config(**{'model.name': 'resnet18', 'model.image_size': 48}))


@pytest.mark.parametrize('key, value', [
    ('train.batch_size', 0), ('train.eval_batch_size', 0), ('checkpoint.keep', 0),
    ('model.image_size', 15), ('optim.lr', 0.0), ('train.num_epochs', 0.0),
    ('train.eval_every_epochs', 0.0), ('augment.augmix_alpha', 0.0),
])
def test_a_value_just_outside_a_lower_bound_is_refused_naming_the_key(key, value):
  """Each lower bound is where the docs put it: 0 where >= 1 is needed, 0.0 where > 0 is."""
  with pytest.raises(config_validation.ConfigError, match=f"'{key}' must be in"):
    config_validation.validate(_config(**{key: value}))


@pytest.mark.parametrize('key, value', [('data.dir', 5), ('wandb.project', 1),
                                        ('model.init_from', 0)])
def test_a_number_for_a_string_key_is_refused_naming_it(key, value):
  """A dict-built config's number where a path or name is expected is refused as the wrong type."""
  flat = traverse_util.flatten_dict(default.get_config().to_dict(), sep='.')
  flat[key] = value
  c = ml_collections.ConfigDict(traverse_util.unflatten_dict(flat, sep='.'))
  message = f"config key '{key}' must be of type str"
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(c)


@pytest.mark.parametrize('key, value', [
    ('model.image_size', 1025), ('augment.crop_padding', 17), ('augment.randaugment_num_ops', 15),
    ('augment.randaugment_magnitude', 31), ('optim.lr', 10.5), ('optim.end_lr_factor', 1.5),
    ('augment.erasing_prob', 1.5), ('augment.augmix_severity', 11), ('augment.blur_kernel', 33),
    ('data.val_fraction', 0.91), ('augment.switch_prob', 1.01),
])
def test_a_value_just_outside_an_upper_bound_is_refused_naming_the_key(key, value):
  """Each upper bound holds (a mutation audit: most had no test above them)."""
  with pytest.raises(config_validation.ConfigError, match=f"'{key}' must be in"):
    config_validation.validate(_config(**{key: value}))


@pytest.mark.parametrize('key, value', [
    ('ema.decay', -0.1), ('augment.augmix_severity', 0), ('augment.augmix_depth', -2),
    ('optim.weight_decay', -1e-4), ('optim.warmup_epochs', -1.0),
])
def test_a_negative_or_zero_value_below_a_lower_bound_is_refused_naming_the_key(key, value):
  with pytest.raises(config_validation.ConfigError, match=f"'{key}' must be in"):
    config_validation.validate(_config(**{key: value}))


def test_a_negative_color_jitter_strength_and_the_open_low_end_of_a_pair_are_refused():
  with pytest.raises(config_validation.ConfigError, match="'augment.color_jitter' must be 4"):
    config_validation.validate(_config(**{'augment.color_jitter': (-0.1, 0.4, 0.4, 0.1)}))
  with pytest.raises(config_validation.ConfigError, match="'augment.rrc_scale' must be \\(low"):
    config_validation.validate(_config(**{'augment.rrc_scale': (0.0, 0.5)}))  # (0, 1]: 0 is out.
  config_validation.validate(_config(**{'augment.rrc_scale': (0.01, 1.0),
                                        'augment.color_jitter': (0.0, 0.0, 0.0, 0.5)}))


def test_a_schedule_longer_than_the_int32_step_counter_is_named_before_the_data_is_batched(
    tmp_path):
  """train.num_epochs=1e300 passed every check and ended in grain's OverflowError traceback (a
  bad-input review; float32 now refuses it, 1e30 is a float32): no int32 step counter holds the
  steps."""
  from jax_cifar.training import trainer  # pylint: disable=import-outside-toplevel
  c = _config(**{'data.source': 'synthetic', 'data.synthetic_size': 640, 'model.name': 'simple_cnn',
                 'data.val_fraction': 0.2,
                 'train.num_epochs': 1e30})
  with pytest.raises(config_validation.ConfigError, match=(
      r'^train\.num_epochs=1e\+30 is .* steps of \d+ per epoch, more than the 2,147,483,647 the '
      r'step counter \(an int32\) holds$')):
    trainer.train_and_evaluate(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_the_launch_limits_leave_a_run_that_trained_before_them_loadable():
  """The float32 and int32 limits came after runs that may hold such values (a train_limit of
  10**10, a weight_decay of 1e-45): evaluate and load_model still read them (launch=False), as
  workdir.run_config promises (the diff review). The synthetic-size limit holds on load too:
  evaluate makes those images again, and a shared run's config.json of 10**11 had been a
  279 TiB allocation (a security review); synthetic images are for tests and benchmarks."""
  c = _config(**{'data.train_limit': 10**10, 'optim.weight_decay': 1e-45})
  config_validation.validate(c, launch=False)
  for key in ('data.train_limit', 'optim.weight_decay'):
    with pytest.raises(config_validation.ConfigError, match=f"'{key}' must be"):
      config_validation.validate(_config(**{key: c[key.split('.')[0]][key.split('.')[1]]}))
  for launch in (True, False):
    with pytest.raises(config_validation.ConfigError,
                       match=r"'data.synthetic_size' must be in \[1, 1000000\], got 2000000"):
      config_validation.validate(_config(**{'data.synthetic_size': 2_000_000}), launch=launch)


@pytest.mark.parametrize('stem, width', [('cifar', 64), ('imagenet', 32)])
def test_pretrained_weights_need_the_imagenet_stem_and_width_before_anything_runs(stem, width):
  """Converted torchvision weights fit only the ImageNet stem at width 64: another stem or width
  had failed at the weights' load, after the workdir, the data and the init's compile (a review)."""
  config = default.get_config()
  config.model.name, config.model.stem, config.model.width = 'resnet50', stem, width
  config.model.pretrained = 'weights/resnet50'
  with pytest.raises(config_validation.ConfigError, match=(
      r"^model\.pretrained holds torchvision's ImageNet weights, of the ImageNet stem and width "
      rf"64; this config has model\.stem='{stem}', model\.width={width}: set "
      r'--config\.model\.stem=imagenet --config\.model\.width=64')):
    config_validation.validate(config)
  config.model.stem, config.model.width = 'imagenet', 64
  config_validation.validate(config)
