"""The notebook API: a trained run back as a Flax model, and batched class probabilities.

    model, config = jax_cifar.load_model('runs/smoke')            # the 'best' checkpoint
    probs = jax_cifar.predict(model, config, uint8_images)         # [N, num_classes]
"""

from __future__ import annotations

import functools
import os
import pathlib
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jax_cifar import checkpoints, config_validation, errors, image_checks, models, step_folders
from jax_cifar import tracking, workdir, xla_options
from jax_cifar.augment import pipeline as augment
from jax_cifar import state as state_lib


def create_model(name: str, num_classes: int = 100, *, pretrained: str | os.PathLike | None = None,
                 stem: str = 'imagenet', width: int = 64, dtype=jnp.float32, remat: bool = False,
                 scan_blocks: bool = False, rngs: nnx.Rngs | None = None) -> nnx.Module:
  """`jax_cifar.models.create_model` (stem, width, dtype, remat, scan_blocks and rngs are its
  keywords, spelled out here for help() and completion: they had hidden in **kwargs), and, as
  timm's, `pretrained`: a folder of ImageNet weights converted from torchvision once
  (`python -m jax_cifar.convert`), loaded as `jax_cifar.convert.load_pretrained` does (the
  backbone; the head too where its classes match, else a fresh one)."""
  if pretrained is False or pretrained == '':  # timm's default; the config's (no weights).
    pretrained = None
  if pretrained is True or not isinstance(pretrained, (str, os.PathLike, type(None))):
    # timm's and torchvision's pretrained=True: nothing is downloaded here.
    raise TypeError(f'create_model(pretrained={pretrained!r}): give the folder of ImageNet weights '
                    'converted from torchvision once (python -m jax_cifar.convert --arch NAME '
                    "--weights IMAGENET1K_V1 --output weights/NAME), e.g. pretrained='weights/"
                    "resnet50'; or load them later with jax_cifar.convert.load_pretrained(model, path)")
  model = models.create_model(name, num_classes, stem=stem, width=width, dtype=dtype, remat=remat,
                              scan_blocks=scan_blocks, rngs=rngs)
  if pretrained is not None:
    from jax_cifar import convert  # pylint: disable=g-import-not-at-top  (orbax: on first use)
    loaded = convert.load_pretrained(model, os.fspath(pretrained))
    # Said, as the trainer says it: whether the head came with the weights or is new (it had been
    # thrown away: a library-user review).
    tracking.say(convert.loaded_line(os.fspath(pretrained), loaded, num_classes))
  return model


def run_config(run_dir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run was (last) launched with, from WORKDIR/config.json, validated."""
  return workdir.run_config(pathlib.Path(workdir.expanded(run_dir)))


def load_model(run_dir: str | pathlib.Path, checkpoint: str = 'best',
               weights: str | None = None) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """(model, config) of a run's 'best' or 'latest' checkpoint, a step number it kept (300) or a
  step folder's path (as `evaluate --checkpoint`), in evaluation mode (nnx's `model.eval()`: `model(x)`
  predicts with the BatchNorm running statistics; `model.train()` before fine-tuning it further).

  `weights='raw'` (None: the same) gives the trained weights, `'ema'` the run's exponential
  moving average (runs trained with ema.decay > 0), `'auto'` the one of the two with the higher
  validation accuracy at that checkpoint. Without `weights`, the raw weights of a 'best' step that
  the EMA's accuracy chose are said in a warning.
  The model takes normalised float images; `predict` does that preparation for uint8 images.
  """
  errors.folder_arg('load_model(run_dir)', run_dir)
  run_dir = pathlib.Path(workdir.expanded(run_dir))  # '~/runs/a' had been "is ~/runs/a a run?".
  asked, weights = weights is not None, 'raw' if weights is None else weights
  if weights not in checkpoints.READ_WEIGHTS:
    raise errors.ConfigError(f"weights must be one of {', '.join(checkpoints.READ_WEIGHTS)}, got {weights!r}")
  if isinstance(checkpoint, (str, pathlib.Path)) and str(checkpoint).startswith('~'):
    checkpoint = str(pathlib.Path(checkpoint).expanduser())
  checkpoint = step_folders.kept_step_folder(run_dir, checkpoint, errors.ConfigError) or checkpoint
  if not isinstance(checkpoint, (str, pathlib.Path)) or (
      checkpoint not in ('best', 'latest') and not pathlib.Path(checkpoint).is_dir()):
    why = ' (no such folder)' if isinstance(checkpoint, (str, pathlib.Path)) else ''
    raise errors.ConfigError(f"checkpoint must be 'best', 'latest', a step number or a step folder's path, "
                     f'got {checkpoint!r}{why}')
  config = run_config(run_dir)
  from jax_cifar.evaluation import inference  # pylint: disable=g-import-not-at-top  (grain, tqdm)
  inference.check_step_folder_of_another_run(
      config, run_dir, str(checkpoint), given="load_model's run ({workdir})", short='run_dir',
      advice='Load that run itself: load_model({run_py}, checkpoint=...)')
  # (Not when asked for by name: the warning had come with weights='raw' too, a review.)
  if (checkpoint == 'best' and not asked and config.checkpoint.get('best_weights') == 'ema'):
    warnings.warn(f"load_model: {run_dir}'s 'best' step was chosen by its EMA weights' accuracy "
                  "(checkpoint.best_weights='ema'); these are its raw weights: weights='ema' or "
                  "'auto' gives the ones that were ranked", UserWarning, stacklevel=2)
  state, graphdef, step = state_lib.restore(config, run_dir, checkpoint)
  weights = state_lib.resolve_weights(weights, state, inference.owning_run(run_dir, str(checkpoint)),
                                      step)
  state = state_lib.with_weights(state, weights, run_dir)
  model = nnx.merge(graphdef, state.params, state.batch_stats)
  model.eval()  # Loaded to predict, as a torch user expects: `model(x)` had raised, wanting train=.
  return model, config


def _check_config_describes(model: nnx.Module, config: ml_collections.ConfigDict) -> None:
  """predict prepares images as `config` says (size, normalisation): another model's config had
  given probabilities of images prepared for that model, silently (an audit). Warned, not refused:
  a create_model model with a config of the same size and normalisation is fine."""
  arch = getattr(model, 'arch', None)
  differ = []  # (Its number of classes may differ: the columns are the model's.)
  if arch not in (None, 'resnet') and arch != config.model.name:
    differ.append(f'the model is a {arch}, config.model.name is {config.model.name!r}')
  if arch not in (None, 'simple_cnn') and getattr(model, 'stem', None) != config.model.stem:
    differ.append(f'the model has the {model.stem} stem, config.model.stem is '
                  f'{config.model.stem!r}')
  if differ:  # A warning: only image_size, normalize and dtype change how images are prepared.
    warnings.warn(
        f'predict: config may not describe this model ({"; ".join(differ)}): images are prepared '
        f'as it says (resized to {config.model.image_size} px, normalize='
        f'{config.model.normalize!r}); give the config load_model returned with the model, or for a '
        'create_model model one whose model.image_size and model.normalize it was trained with',
        UserWarning, stacklevel=3)


def predict(model: nnx.Module, config: ml_collections.ConfigDict, images: np.ndarray,
            batch_size: int = 500) -> np.ndarray:
  """Class probabilities [N, num_classes] (float32) of uint8 [N, H, W, 3] images, in batches of
  `batch_size` (resized to the model's config.model.image_size and normalised as in training).

  The images are resized to a square (non-square ones lose their aspect ratio: crop them first),
  and prepared as `config.model` says: a create_model model does not know how it was trained."""
  batch_size = errors.positive_int('batch_size', batch_size)
  if not isinstance(model, nnx.Module):
    raise TypeError('predict(model, config, images): model must be a Flax nnx.Module (what '
                    f'load_model or create_model returns), got {type(model).__name__}')
  if not isinstance(config, ml_collections.ConfigDict) or 'model' not in config:
    what = ('a ConfigDict without a model key (config.model instead of config?)'
            if isinstance(config, ml_collections.ConfigDict) else type(config).__name__)
    raise TypeError('predict(model, config, images): config must be the run\'s whole ConfigDict '
                    f'(load_model\'s second result), got {what}')
  if hasattr(model, 'fc') and model.fc is None:
    raise ValueError('predict: this model has no head (built with num_classes=0) and gives pooled '
                     'features, not classes; call it as model(x, train=False) for them')
  # A notebook's edited config (model.image_size 0, normalize 'imagenet ') had been a TypeError
  # deep in the resize or a KeyError: named as load_model names a run's config.
  config_validation.validate(config, launch=False)
  _check_config_describes(model, config)
  images = image_checks.uint8_images(images, 'predict')
  image_checks.warn_if_scaled_down(images, 'predict')
  # Fewer images than a batch: padded only to the next power of two (a loop over single images
  # compiles once, for a batch of 1, instead of running `batch_size` rows each time).
  batch_size = min(batch_size, 1 << max(len(images) - 1, 0).bit_length())
  graphdef, state = nnx.split(model)
  probabilities = _probabilities_fn(graphdef, config.model.image_size, config.model.normalize,
                                    config.model.dtype)

  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:],
                                             np.uint8)]) if len(chunk) < batch_size else chunk
    out.append(np.asarray(probabilities(state, padded))[:len(chunk)])  # One compiled shape.
  if not out:  # No image: as many columns as the model has classes.
    width = jax.eval_shape(probabilities, state, np.zeros((1,) + images.shape[1:], np.uint8))
    return np.zeros((0, width.shape[-1]), np.float32)
  out = np.concatenate(out)
  if bad := int((~np.isfinite(out).all(-1)).sum()):  # As evaluate refuses them (a diff review).
    warnings.warn(f'predict: the probabilities of {bad} of {len(out)} images are not finite (NaN '
                  'or inf): the model\'s forward pass overflows (a weight or BatchNorm statistic '
                  'too large, or past the range of model.dtype), and argmax reads such a row as '
                  'class 0', UserWarning, stacklevel=2)
  return out


@functools.lru_cache(maxsize=8)
def _probabilities_fn(graphdef: nnx.GraphDef, image_size: int, normalize: str, dtype: str):
  """One jitted function per model structure and input preparation, so repeated `predict` calls
  (a notebook loop) reuse its compilation instead of tracing a new closure each time. It is
  compiled with evaluate's CPU options (a bfloat16 model needs one of them)."""

  @functools.partial(jax.jit, compiler_options=xla_options.step_compiler_options(dtype))
  def probabilities(state, x):
    x = augment.to_model_input(x, image_size=image_size, normalize=normalize,
                               dtype=jnp.dtype(dtype))
    return jax.nn.softmax(nnx.merge(graphdef, state)(x, train=False).astype(jnp.float32), -1)

  return probabilities
