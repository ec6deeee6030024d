"""Test-time entropy minimisation (evaluate --tent): USES THE UNLABELLED TEST IMAGES.

Tent (Wang et al. 2021, "Tent: fully test-time adaptation by entropy minimization"), episodic per
homogeneous chunk, as --bn_adapt is: before a chunk (one distortion x severity block, one
CIFAR-100-C corruption x severity, a whole clean split) is predicted,
1. the BatchNorm scales and biases (and nothing else) take `epochs` passes of Adam steps over the
   chunk's images, in order, in batches of `batch_size`, minimising the mean Shannon entropy of the
   model's softmax. Every BatchNorm normalises with its batch's own statistics, as in the paper
   (the masked statistics of jax_cifar/evaluation/bn_adapt.py, so padding never counts);
2. the BatchNorm statistics are then re-estimated on the chunk with the adapted scales and biases
   (the --bn_adapt pass), and the chunk is predicted with both, by the usual prediction step (with
   any --tta views).
The next chunk starts again from the checkpoint: the adapted parameters are new pytrees, the
restored state is never modified. The defaults are the paper's CIFAR setting (Adam, learning rate
1e-3, batch 128, one pass); they were not tuned on any test set. Each batch's gradient is that of
the whole global batch, sharded over the 'data' mesh axis, so the result does not depend on the
number of devices or processes beyond floating-point rounding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_cifar import errors, parallel, xla_options
from jax_cifar.data import pipeline
from jax_cifar.evaluation import bn_adapt
from jax_cifar import state as state_lib
from jax_cifar.state import model_input


MAX_LR, MAX_EPOCHS = 10.0, 1000


@dataclasses.dataclass(frozen=True)
class TentOptions:
  lr: float = 1e-3
  epochs: int = 1
  batch_size: int = 128

  def __post_init__(self):
    # optim.lr's limits (a fuzz: 1e6 had adapted to nonsense silently; 1e39 is inf in float32).
    if not (np.isfinite(self.lr) and np.finfo(np.float32).tiny <= self.lr <= MAX_LR):
      raise errors.ConfigError(f'--tent_lr must be a positive float32 number of at most '
                               f'{MAX_LR:g}, got {self.lr}')
    if not 1 <= self.epochs <= MAX_EPOCHS:  # (2**40 had run for good.)
      raise errors.ConfigError(f'--tent_epochs must be 1 to {MAX_EPOCHS}, got {self.epochs}')
    if self.batch_size < 1:
      raise errors.ConfigError(f'--tent_batch_size must be at least 1, got {self.batch_size}')
    parallel.check_batch_size(self.batch_size, '--tent_batch_size')

  def tag(self) -> str:
    """'_tent' with the defaults, else the settings that differ from them."""
    defaults = {f.name: f.default for f in dataclasses.fields(TentOptions)}
    parts = [f'{short}{getattr(self, key):g}' for key, short in
             (('lr', 'lr'), ('epochs', 'e'), ('batch_size', 'b'))
             if getattr(self, key) != defaults[key]]
    return '_tent' + ''.join(f'-{p}' for p in parts)


def resolve(tent) -> TentOptions | None:
  """The Tent options an API argument means: True for the defaults, False or None for no Tent, or
  the TentOptions themselves (tent=True had been AttributeError: 'bool' object has no attribute
  'lr', and evaluate's tent=False had switched BatchNorm adaptation on: reviews)."""
  if isinstance(tent, (bool, np.bool_)):
    return TentOptions() if tent else None
  if tent is not None and not isinstance(tent, TentOptions):
    raise TypeError(f'tent is True, False or a tent.TentOptions, got {tent!r}')
  return tent


def mean_entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean Shannon entropy (nats) of softmax(logits) over the rows where `mask` is true."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
  w = mask.astype(jnp.float32)
  return jnp.sum(entropy * w) / jnp.maximum(jnp.sum(w), 1.0)


def _step(affine, opt_state, rest, batch_stats, batch: dict, *, graphdef, config, tx):
  """One Adam step of the BatchNorm affine parameters on one batch; returns the batch's entropy."""

  def loss_fn(affine):
    model = nnx.merge(graphdef, nnx.merge_state(affine, rest), batch_stats, copy=True)
    x = model_input(batch['image'], config, jnp.dtype(config.model.dtype))
    logits, _, _ = bn_adapt.masked_train_forward(model, x, batch['mask'])
    return mean_entropy(logits, batch['mask'])

  loss, grads = jax.value_and_grad(loss_fn)(affine)
  updates, opt_state = tx.update(grads, opt_state, affine)
  return optax.apply_updates(affine, updates), opt_state, loss


class TentAdapter:
  """`adapt_model(params, batch_stats, images)` -> (params, batch_stats) adapted to `images`."""

  def __init__(self, config, graphdef, mesh, options: TentOptions, params, batch_stats,
               eval_batch: int | None = None):
    """`eval_batch`: the statistics pass's global batch (default: train.eval_batch_size, rounded
    up to a multiple of the device count, as load_predictor passes it)."""
    config, graphdef = bn_adapt.without_remat(config, graphdef)
    model = nnx.merge(graphdef, params, batch_stats)
    paths = set(bn_adapt.batchnorm_paths(model))
    if not paths:
      raise errors.ConfigError(f'--tent needs a model with BatchNorm layers; {config.model.name} '
                               'has none')
    self._is_affine = lambda path, _: tuple(path[:-1]) in paths
    self.options, self.mesh = options, mesh
    self.bn = bn_adapt.BNAdapter(
        config, graphdef, mesh,
        eval_batch or parallel.eval_batch_size(config.train.eval_batch_size), params, batch_stats)
    tx = optax.adam(options.lr)
    self._init = jax.jit(tx.init)
    repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    self._step = jax.jit(functools.partial(_step, graphdef=graphdef, config=config, tx=tx),
                         in_shardings=(repl, repl, repl, repl, data),
                         out_shardings=(repl, repl, repl),
                         compiler_options=xla_options.precise_compiler_options(config.model.dtype))
    self.passes = options.epochs + 1  # Entropy passes, then the statistics pass.
    self.last_entropy: list[float] = []  # Mean entropy of each pass over the last chunk.
    self._checked = None  # The (params, batch_stats) last found finite: every chunk starts there.

  def split(self, params) -> tuple[Any, Any]:
    """(BatchNorm scales and biases, every other parameter) of a parameter State."""
    return nnx.split_state(params, self._is_affine, ...)

  def adapt_model(self, params, batch_stats, images: np.ndarray,
            progress: Callable[[int], Any] | None = None,
            check: Callable[[], None] | None = None) -> tuple[Any, Any]:
    checked = self._checked
    if checked is None or checked[0] is not params or checked[1] is not batch_stats:
      state_lib.check_finite(params, None, '--tent')  # (It re-estimates the statistics.)
      self._checked = (params, batch_stats)
    affine, rest = self.split(params)
    opt_state = self._init(affine)
    # A Tent batch larger than the chunk is the whole chunk in one batch: padding it to the Tent
    # batch changed nothing but the memory (--tent_batch_size 100000 had ended out of memory).
    whole = -(-len(images) // jax.device_count()) * jax.device_count()
    size, self.last_entropy = min(self.options.batch_size, whole), []
    for _ in range(self.options.epochs):
      losses, done = [], 0
      batches = parallel.prefetch_to_device(pipeline.image_batches(images, size),
                                            parallel.batch_sharded(self.mesh))
      for batch in batches:
        if check is not None:
          check()
        affine, opt_state, loss = self._step(affine, opt_state, rest, batch_stats, batch)
        step = min(size, len(images) - done)
        losses.append((loss, step))
        done += step
        if progress is not None:
          progress(step)
      total = sum(float(jax.device_get(l)) * n for l, n in losses)
      self.last_entropy.append(total / len(images))
      if not np.isfinite(self.last_entropy[-1]):
        raise errors.UserError(
            f'--tent: the mean entropy over a chunk of {len(images)} images is '
            f'{self.last_entropy[-1]}: a non-finite parameter in the checkpoint, or --tent_lr '
            f'({self.options.lr}) too large')
    params = nnx.merge_state(affine, rest)
    return params, self.bn.adapt(params, batch_stats, images, progress=progress, check=check)
