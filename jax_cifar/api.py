"""The notebook API: a trained run back as a Flax model, and batched class probabilities.

    model, config = jax_cifar.load_model('runs/smoke')            # the 'best' checkpoint
    probs = jax_cifar.predict(model, config, uint8_images)         # [N, num_classes]
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jax_cifar import augment, checkpoints, config_validation, optim, parallel, workdir


def run_config(run_dir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run was (last) launched with, from WORKDIR/config.json, validated."""
  path = pathlib.Path(run_dir) / workdir.CONFIG_FILE
  if not path.exists():
    raise checkpoints.CheckpointError(f'{path} not found: is {run_dir} a jax-cifar run directory?')
  raw = json.loads(path.read_text())
  for section in raw.values():  # JSON has no tuples; the defaults' tuple-valued keys want them.
    if isinstance(section, dict):
      section.update({k: tuple(v) for k, v in section.items() if isinstance(v, list)})
  config = ml_collections.ConfigDict(raw)
  config_validation.validate(config)
  return config


def load_model(run_dir: str | pathlib.Path, checkpoint: str = 'best',
               weights: str = 'raw') -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """(model, config) of a run's 'best' or 'latest' checkpoint, ready for `model(x, train=False)`.

  `weights='ema'` gives the run's exponential moving average (runs trained with ema.decay > 0).
  The model takes normalised float images; `predict` does that preparation for uint8 images.
  """
  from jax_cifar import trainer  # pylint: disable=g-import-not-at-top  (the loop: only its state)
  if checkpoint not in ('best', 'latest') or weights not in ('raw', 'ema'):
    raise ValueError(f"checkpoint must be 'best' or 'latest' and weights 'raw' or 'ema', got "
                     f'{checkpoint!r}, {weights!r}')
  config = run_config(run_dir)
  target_config = config.copy_and_resolve_references()
  target_config.model.pretrained = ''  # The checkpoint holds every weight already.
  tx, _ = optim.make_optimizer(target_config.optim, total_steps=1, steps_per_epoch=1)
  target, graphdef = trainer.init_state(target_config, tx, parallel.make_mesh())
  restored = checkpoints.Checkpoints(run_dir, create=False).restore(checkpoint, target)
  if restored is None:
    raise checkpoints.CheckpointError(f'no {checkpoint!r} checkpoint in {run_dir}/checkpoints')
  state = restored[0]
  if weights == 'ema':
    if state.ema_params is None:
      raise ValueError(f'{run_dir} was trained without an EMA (ema.decay = 0)')
    return nnx.merge(graphdef, state.ema_params, state.ema_batch_stats), config
  return nnx.merge(graphdef, state.params, state.batch_stats), config


def predict(model: nnx.Module, config: ml_collections.ConfigDict, images: np.ndarray,
            batch_size: int = 500) -> np.ndarray:
  """Class probabilities [N, num_classes] (float32) of uint8 [N, 32, 32, 3] images, in batches."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'predict expects uint8 images [N, H, W, 3], got {images.dtype} {images.shape}')
  graphdef, state = nnx.split(model)

  @jax.jit
  def probabilities(state, x):
    x = augment.to_model_input(x, image_size=config.model.image_size,
                               normalize=config.model.normalize,
                               dtype=jnp.dtype(config.model.dtype))
    return jax.nn.softmax(nnx.merge(graphdef, state)(x, train=False).astype(jnp.float32), -1)

  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:],
                                             np.uint8)]) if len(chunk) < batch_size else chunk
    out.append(np.asarray(probabilities(state, padded))[:len(chunk)])  # One compiled shape.
  return np.concatenate(out) if out else np.zeros((0, config.model.num_classes), np.float32)
