"""Test-time BatchNorm adaptation (evaluate --bn_adapt): USES THE UNLABELLED TEST IMAGES.

Before a homogeneous chunk of images is predicted (one distortion x severity block, one CIFAR-100-C
corruption x severity, or a whole clean split), every BatchNorm layer's mean and variance are
re-estimated from that chunk's images alone (no labels, no gradients), the chunk is predicted with
them, and the next chunk starts again from the checkpoint's statistics: the adapted statistics are
a new pytree handed to the prediction step, the restored state is never modified.

Statistics (Schneider et al. 2020, "Improving robustness against common corruptions by covariate
shift adaptation"; as PyTorch's BN adaptation with momentum=None, but pooled exactly): one
train-mode forward pass over the chunk in evaluation batches, in which each BatchNorm layer
normalises with its batch's statistics and records the batch's count, mean and variance of its
input over all (image, row, column) positions of the real (unpadded) images. The batches are merged
with Chan's parallel formulas, so each layer's result is the exact mean and (population) variance
of its inputs over the whole chunk in that pass, not an average of per-batch variances, and for the
first BatchNorm layer the exact statistics of the chunk. A per-layer fixpoint (layer k's input
normalised by chunk statistics of layers < k) would need one pass per layer (20 for ResNet-18) or
the whole chunk's activations in memory; the batch-normalised pass is the standard approximation.
The pass runs sharded over the 'data' mesh axis, in any number of processes, and counts every
image of the chunk exactly once (padding rows are masked out of the sums).
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cifar import errors, parallel, xla_options
from jax_cifar.data import pipeline
from jax_cifar import state as state_lib
from jax_cifar.state import model_input


def without_remat(config, graphdef):
  """(config, graphdef) to adapt with: a run trained with model.remat gets its model rebuilt
  without it (the same parameters; the recorders cannot run inside nnx.remat)."""
  if not config.model.get('remat', False):
    return config, graphdef
  config = copy.deepcopy(config)
  config.model.remat = False  # An existing key: allowed in a locked ConfigDict.
  return config, nnx.split(nnx.eval_shape(lambda: state_lib.build_model(config)), nnx.Param,
                           ...)[0]


def batchnorm_paths(model: nnx.Module) -> list[tuple]:
  """Paths of the model's BatchNorm layers, in a fixed (graph) order."""
  return [path for path, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]


def _child(model: nnx.Module, path: tuple) -> Any:
  for key in path:
    model = model[key] if isinstance(key, int) else getattr(model, key)
  return model


def _set_child(model: nnx.Module, path: tuple, value: Any) -> None:
  parent = _child(model, path[:-1])
  if isinstance(path[-1], int):
    parent[path[-1]] = value
  else:
    setattr(parent, path[-1], value)


class _Recorder:
  """Stands in for one BatchNorm: normalises with the masked batch statistics and records them."""

  def __init__(self, bn: nnx.BatchNorm, mask: jax.Array, sink: dict, index: int):
    axis = bn.axis if isinstance(bn.axis, int) else tuple(bn.axis)
    if axis not in (-1, (-1,)):
      raise NotImplementedError(f'--bn_adapt supports channels-last BatchNorm only (axis={axis})')
    self.bn, self.mask, self.sink, self.index = bn, mask, sink, index

  def __call__(self, x: jax.Array, use_running_average: bool | None = None, **_) -> jax.Array:
    del use_running_average  # Always batch statistics here.
    bn = self.bn
    x32 = x.astype(jnp.float32).reshape(x.shape[0], -1, x.shape[-1])  # [B, positions, C]
    w = self.mask.astype(jnp.float32)[:, None, None]
    count = jnp.sum(self.mask.astype(jnp.float32))
    n = jnp.maximum(count * x32.shape[1], 1.0)
    mean = jnp.sum(x32 * w, (0, 1)) / n
    var = jnp.sum(jnp.square(x32 - mean) * w, (0, 1)) / n  # Two-pass, as the model's BatchNorm.
    self.sink[self.index] = (mean, var)
    scale = bn.scale[...] if bn.use_scale else 1.0
    bias = bn.bias[...] if bn.use_bias else 0.0
    y = (x32 - mean) * (jax.lax.rsqrt(var + bn.epsilon) * scale) + bias
    return y.reshape(x.shape).astype(bn.dtype or x.dtype)


def masked_train_forward(model: nnx.Module, x: jax.Array,
                         mask: jax.Array) -> tuple[jax.Array, list, list]:
  """(output, means, variances) of one train-mode forward in which every BatchNorm normalises with
  the statistics of the masked (real) rows of its batch, and records them.

  `model` is consumed (its BatchNorm layers are swapped for recorders); `x` is the model input.
  The output is differentiable in the model's parameters (test-time entropy minimisation uses it).
  """
  paths, sink = batchnorm_paths(model), {}
  for i, path in enumerate(paths):
    _set_child(model, path, _Recorder(_child(model, path), mask, sink, i))
  out = model(x, train=True)
  if sorted(sink) != list(range(len(paths))):
    raise RuntimeError(f'{len(paths) - len(sink)} BatchNorm layers were not called by the model')
  return out, [sink[i][0] for i in range(len(paths))], [sink[i][1] for i in range(len(paths))]


def batch_statistics(model: nnx.Module, x: jax.Array, mask: jax.Array) -> tuple[list, list]:
  """(means, variances) of every BatchNorm input over the masked rows of one train-mode forward."""
  return masked_train_forward(model, x, mask)[1:]


def merge(acc: dict, count: jax.Array, means: list, variances: list) -> dict:
  """Chan et al.'s pooled count/mean/variance of `acc` and one batch of `count` images."""
  total = acc['count'] + count
  w = count / jnp.maximum(total, 1.0)  # The batch's share; 1 for the first batch.
  out = {'count': total, 'mean': [], 'var': []}
  for ma, va, mb, vb in zip(acc['mean'], acc['var'], means, variances):
    delta = mb - ma
    out['mean'].append(ma + delta * w)
    out['var'].append(va * (1 - w) + vb * w + jnp.square(delta) * (w * (1 - w)))
  return out


def _accumulate(params, batch_stats, acc: dict, batch: dict, *, graphdef, config) -> dict:
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  x = model_input(batch['image'], config, jnp.dtype(config.model.dtype))
  means, variances = batch_statistics(model, x, batch['mask'])
  return merge(acc, jnp.sum(batch['mask'].astype(jnp.float32)), means, variances)


def _adapted(params, batch_stats, acc: dict, *, graphdef):
  """`batch_stats` with every BatchNorm's mean/var replaced by the accumulated chunk statistics."""
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  for path, mean, var in zip(batchnorm_paths(model), acc['mean'], acc['var']):
    bn = _child(model, path)
    bn.mean.set_value(mean.astype(bn.mean[...].dtype))
    bn.var.set_value(var.astype(bn.var[...].dtype))
  return nnx.state(model, nnx.Not(nnx.Param))


class BNAdapter:
  """Compiled statistics pass: `adapt(params, batch_stats, images)` -> adapted batch_stats."""

  def __init__(self, config, graphdef, mesh, batch_size: int, params, batch_stats):
    config, graphdef = without_remat(config, graphdef)
    model = nnx.merge(graphdef, params, batch_stats)
    if not batchnorm_paths(model):
      raise errors.ConfigError(f'--bn_adapt needs a model with BatchNorm layers; {config.model.name} has '
                       'none')
    self.channels = [_child(model, path).num_features for path in batchnorm_paths(model)]
    self.mesh, self.batch_size = mesh, batch_size
    repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    opts = xla_options.step_compiler_options(config.model.dtype)
    self._accumulate = jax.jit(
        functools.partial(_accumulate, graphdef=graphdef, config=config),
        in_shardings=(repl, repl, repl, data), out_shardings=repl, compiler_options=opts)
    self._adapted = jax.jit(functools.partial(_adapted, graphdef=graphdef),
                            in_shardings=(repl, repl, repl), out_shardings=repl)
    self._zeros = jax.jit(lambda: {'count': jnp.zeros((), jnp.float32),
                                   'mean': [jnp.zeros((c,), jnp.float32) for c in self.channels],
                                   'var': [jnp.zeros((c,), jnp.float32) for c in self.channels]},
                          out_shardings=repl)

  def statistics(self, params, batch_stats, images: np.ndarray,
                 progress: Callable[[int], Any] | None = None,
                 check: Callable[[], None] | None = None) -> dict:
    """{'count', 'mean': [...], 'var': [...]} of every BatchNorm input over all of `images`."""
    size = parallel.chunk_batch_size(len(images), self.batch_size)
    batches = parallel.prefetch_to_device(pipeline.image_batches(images, size),
                                          parallel.batch_sharded(self.mesh))
    acc, done = self._zeros(), 0
    for batch in batches:
      if check is not None:
        check()
      previous, acc = acc, self._accumulate(params, batch_stats, acc, batch)
      jax.block_until_ready(previous)  # At most two batches in flight: bounded host memory.
      step = min(size, len(images) - done)
      done += step
      if progress is not None:
        progress(step)
    count = int(jax.device_get(acc['count']))
    if count != len(images):  # Padding is masked: each image counts exactly once.
      raise RuntimeError(f'BN adaptation counted {count} images, the chunk has {len(images)}')
    return acc

  passes = 1  # Over each chunk, before the prediction's own.

  def adapt(self, params, batch_stats, images: np.ndarray, **kwargs):
    """batch_stats re-estimated on `images` (the input pytree is left as it was)."""
    acc = self.statistics(params, batch_stats, images, **kwargs)
    return self._adapted(params, batch_stats, acc)

  def adapt_model(self, params, batch_stats, images: np.ndarray, **kwargs) -> tuple[Any, Any]:
    """(params, batch_stats) for `images`: what every chunk adapter of a Predictor returns."""
    return params, self.adapt(params, batch_stats, images, **kwargs)
