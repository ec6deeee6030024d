"""Test-time augmentation (--tta): predict several views of each image and average the predictions.

Modes:
  none    the image itself (1 view);
  flip    the image and its horizontal mirror (2 views; what --tta_flip always did);
  shifts  {image, mirror} x translations by (dy, dx) in {-2, 0, 2}^2 pixels (18 views).
The result is log(mean over views of softmax) by default (--tta_average probs), so `flip` equals the
old --tta_flip numbers; --tta_average log_probs averages the log-probabilities instead and
renormalises them (the normalised geometric mean of the views' softmax, which is also the softmax
of their mean logits): a view the model is unsure of then weighs less than a confident one.

Translated views fill the uncovered border the way the training random crop pads
(`config.augment.crop_mode`: zeros by default, 'reflect' if the run trained with it): a shift of
2 <= crop_padding (4) px is then exactly one of the crops the model saw in training, so the views
stay in its training distribution; edge replication would show it border streaks it never saw.
A run trained without flips, or without such crops, never saw them: `unseen_views` words the
warning that load_predictor (so evaluate) gives then.
Views are built on device, inside the jitted prediction, one per step of a `lax.scan`, so the model
is traced once whatever the number of views and memory holds one view's activations at a time.
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_cifar.augment.pipeline import CROP_MODES

MODES = ('none', 'flip', 'shifts')
AVERAGES = ('probs', 'log_probs')  # --tta_average: what is averaged over the views.
SHIFTS = (-2, 0, 2)


def view_table(mode: str) -> np.ndarray:
  """int32 [V, 3] rows (flip, dy, dx): view = mirror (if flip), then content moved down dy, right dx."""
  if mode not in MODES:
    raise ValueError(f'tta must be one of {", ".join(MODES)}, got {mode!r}')
  if mode == 'none':
    return np.zeros((1, 3), np.int32)
  if mode == 'flip':
    return np.array([[0, 0, 0], [1, 0, 0]], np.int32)
  return np.array([(f, dy, dx) for f in (0, 1) for dy, dx in itertools.product(SHIFTS, SHIFTS)],
                  np.int32)


def unseen_views(mode: str, augment: dict) -> list[str]:
  """Warnings for views of `mode` that a run trained with `augment` (its config's augment, as a
  dict) never saw: mirrors without augment.flip, 2-px translations without a crop of padding >= 2
  or another augmentation that translates (random-resized crop, an AutoAugment-style policy,
  AugMix). Their average can then score below the image alone (configs resnet_basic and
  simple_cnn train without either)."""
  lines = []
  if mode != 'none' and not augment.get('flip', True):
    lines.append(f'--tta {mode}: this run trained with augment.flip=False, so the mirrored views '
                 'are images it never saw')
  shift = max(abs(s) for s in SHIFTS)
  padding = augment.get('crop_padding', 0)
  translated = (padding >= shift or augment.get('rrc_prob', 0) > 0
                or augment.get('policy', 'none') != 'none' or augment.get('augmix', False))
  if mode == 'shifts' and not translated:
    lines.append(f'--tta shifts: this run trained with augment.crop_padding={padding} and nothing '
                 f'else that translates images, so its {shift}-pixel shifted views are images it '
                 'never saw')
  if lines:
    lines.append('compare the validation numbers with --tta none before relying on these views')
  return lines


def make_view(images: jax.Array, flip: jax.Array, dy: jax.Array, dx: jax.Array,
              pad_mode: str = 'constant') -> jax.Array:
  """One view of a uint8 [B, H, W, C] batch: out[:, i, j] = mirrored(images)[:, i - dy, j - dx]."""
  if pad_mode not in CROP_MODES:  # augment.crop_mode's names are jnp.pad's modes.
    raise ValueError(f'pad_mode must be one of {", ".join(CROP_MODES)}, got {pad_mode!r}')
  x = jnp.where(flip > 0, images[:, :, ::-1], images)
  p = max(abs(s) for s in SHIFTS)
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=pad_mode)
  return jax.lax.dynamic_slice(padded, (0, p - dy, p - dx, 0), x.shape)


def mean_log_probs(log_probs_fn: Callable[[jax.Array], jax.Array], images: jax.Array, mode: str,
                   pad_mode: str = 'constant', average: str = 'probs') -> jax.Array:
  """Log-probabilities [B, C] over the views of `mode`: log(mean_v softmax) for average='probs',
  log_softmax(mean_v log_softmax) for 'log_probs'; `log_probs_fn` maps uint8 images -> [B, C]."""
  if average not in AVERAGES:
    raise ValueError(f'average must be one of {", ".join(AVERAGES)}, got {average!r}')
  table = view_table(mode)
  if len(table) == 1:
    return log_probs_fn(images)
  add = jnp.logaddexp if average == 'probs' else jnp.add  # A running log-sum of probs, or a sum.

  def one_view(total, row):
    view = make_view(images, row[0], row[1], row[2], pad_mode)
    return add(total, log_probs_fn(view)), None

  first = log_probs_fn(make_view(images, *table[0], pad_mode))
  total, _ = jax.lax.scan(one_view, first, jnp.asarray(table[1:]))
  if average == 'probs':
    return total - jnp.log(float(len(table)))
  return jax.nn.log_softmax(total / len(table))
