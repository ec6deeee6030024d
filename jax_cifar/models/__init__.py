"""Model registry: `create_model(name, ...)` is the one entry point the trainer and tools use."""

from __future__ import annotations

import collections.abc
import fnmatch
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cifar import errors
from jax_cifar.models.resnet import ARCHS, STEMS, ResNet, build_resnet, min_width
from jax_cifar.models.simple_cnn import SimpleCNN

MODEL_NAMES = ('simple_cnn',) + tuple(ARCHS)


def smallest_width(name: str) -> int:
  """Smallest `width` that `create_model(name, width=...)` accepts (ResNeXt needs >= 8 or 16)."""
  if name not in ARCHS:
    return 1
  return min_width(ARCHS[name].width_per_group)


def create_model(name: str, num_classes: int = 100, *, stem: str = 'imagenet', width: int = 64,
                 dtype: Any = jnp.float32, remat: bool = False, scan_blocks: bool = False,
                 rngs: nnx.Rngs | None = None, **unknown) -> nnx.Module:
  """Builds a model by name; call it as `model(x_nhwc, train=bool)` -> float32 logits.

  `rngs` draws the initial weights: nnx.Rngs(0) when not given, so that `create_model(name)`
  works as timm's does (the same weights each time; give nnx.Rngs(seed) for others).

  `num_classes=0` builds it without a head, as timm does: the model then returns its pooled
  features [N, model.num_features] (a ResNet's global average pool, SimpleCNN's fc1 outputs).

  `stem` and `width` apply to ResNets (width = stage 1's planes; 64 is torchvision's, and
  ResNeXt/Wide ResNet bottlenecks scale with it). SimpleCNN keeps its 32/64 channels. `remat`
  recomputes each residual block's activations in the backward pass and `scan_blocks` compiles
  each stage's repeated block once (ResNets; neither changes the parameters or their layout).
  """
  if 'pretrained' in unknown:  # timm's and torchvision's keyword: jax_cifar.create_model takes it.
    raise TypeError('jax_cifar.models.create_model has no pretrained=: jax_cifar.create_model(..., '
                    'pretrained=FOLDER) loads ImageNet weights converted from torchvision (python -m '
                    'jax_cifar.convert), as jax_cifar.convert.load_pretrained(model, FOLDER) does')
  if unknown:
    raise TypeError(f'create_model got unexpected keyword arguments: {", ".join(sorted(unknown))}')
  if name not in MODEL_NAMES:
    raise ValueError(f'unknown model {name!r}; allowed: {", ".join(MODEL_NAMES)}')
  if stem not in STEMS:
    raise ValueError(f'unknown stem {stem!r}; allowed: {", ".join(STEMS)}')
  if not (isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool)
          and num_classes >= 0):
    raise ValueError(f'num_classes must be a positive int, or 0 for a model without a head '
                     f'(pooled features), got {num_classes!r}')
  num_classes = int(num_classes)
  dtype = _compute_dtype(dtype)
  rngs = nnx.Rngs(0) if rngs is None else rngs
  if not isinstance(rngs, nnx.Rngs):
    raise TypeError(f'rngs must be a flax.nnx.Rngs (e.g. nnx.Rngs(0)), got {type(rngs).__name__}')
  if name == 'simple_cnn':
    return SimpleCNN(num_classes, dtype=dtype, rngs=rngs)
  width = errors.positive_int('width', width)  # Stage 1's channels.
  return build_resnet(name, num_classes, stem=stem, width=width, dtype=dtype, remat=remat,
                      scan_blocks=scan_blocks, rngs=rngs)


def _compute_dtype(dtype: Any) -> jnp.dtype:
  """The convolutions' dtype, checked when the model is built (a bad one failed at its first
  call, inside flax)."""
  try:
    resolved = jnp.dtype(dtype)
  except TypeError:
    resolved = None
  if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
    raise ValueError(f'dtype must be a floating-point dtype (float32, or bfloat16 for mixed '
                     f'precision), got {dtype!r}')
  return resolved


def list_models(pattern: str | Sequence[str] = '*', pretrained: bool = False,
                exclude_filters: str | Sequence[str] = ()) -> list[str]:
  """The names `create_model` accepts (torchvision's ResNet family and the course's simple CNN)
  that match the shell-style `pattern` (or any of a list of them) and none of `exclude_filters`,
  as timm's list_models: list_models('resnext*'), list_models(['resnet*', 'wide*']).

  `pretrained=True` keeps those torchvision has ImageNet weights for (every ResNet, not the simple
  CNN): `python -m jax_cifar.convert` turns them into what `model.pretrained` loads."""
  def patterns(value, name):  # (timm's list_models(['resnet*']) had been unhashable type: 'list'.)
    value = ([value] if isinstance(value, str) else list(value)
             if isinstance(value, collections.abc.Iterable) else [value])  # (5: not iterable.)
    if not all(isinstance(v, str) for v in value):
      raise TypeError(f'list_models: {name} takes a pattern or a list of them, got {value!r}')
    return value
  keep, drop = patterns(pattern or '*', 'pattern'), patterns(exclude_filters, 'exclude_filters')
  return [name for name in MODEL_NAMES
          if any(fnmatch.fnmatchcase(name, p) for p in keep)
          and not any(fnmatch.fnmatchcase(name, p) for p in drop)
          and (not pretrained or name in ARCHS)]



__all__ = ['MODEL_NAMES', 'STEMS', 'ResNet', 'SimpleCNN', 'create_model', 'list_models',
           'smallest_width']
