"""One whole training step of the recipe against the same step written in PyTorch.

The pieces are pinned one by one elsewhere (mixing and the loss in test_train_step, the optax
chain against torch.optim in test_optim_parity, the model against torchvision in test_models).
Here jax_cifar's jitted `train_step` (mixup with the batch reversed, label smoothing 0.1,
global-norm clipping, AdamW decaying every parameter, BatchNorm's running statistics;
micro-batches with `train.grad_accum_steps`) runs from torchvision ResNet-18 weights, and PyTorch
runs the recipe as a PyTorch user writes it (`CrossEntropyLoss(label_smoothing=0.1)` on both label
sets, `clip_grad_norm_`, `torch.optim.AdamW`), in float64 as the reference and in float32 for
PyTorch's own rounding: jax-cifar is to be as close to float64 as float32 PyTorch is. (Adam's step
does not change when every gradient is scaled alike, and a first step is at the schedule's base
rate, so the clipping and the cosine schedule are pinned by test_optim_parity.)
"""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from _torch_resnets import random_torch_resnet, torch
from jax_cifar import optim, parallel
from jax_cifar import state as state_lib
from jax_cifar.augment import mixing
from jax_cifar.augment import pipeline as augment
from jax_cifar.configs import default
from jax_cifar.convert import torch_to_flax
from jax_cifar.training import train_step

# 16 images: in micro-batches of 8 the last stage's BatchNorm (1 x 1 pixels at 32 px) normalises
# over 8 numbers per channel; over 2 or 4 the gradient is so ill-conditioned that float32 PyTorch
# and jax-cifar both land up to 5 % from float64 (measured), which would test nothing.
BATCH, CLASSES, TOTAL_STEPS, MIXUP_ALPHA = 16, 10, 10, 0.4


def _config(accum: int):
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'imagenet', 64
  c.model.num_classes = CLASSES
  c.augment.crop_padding, c.augment.flip, c.augment.mixup_alpha = 0, False, MIXUP_ALPHA
  c.optim.lr, c.optim.weight_decay, c.optim.decay_bn_and_bias = 3e-3, 0.05, True  # torch's AdamW
  c.optim.warmup_epochs, c.optim.grad_clip_norm, c.optim.label_smoothing = 0.0, 1.0, 0.1
  c.ema.decay = 0.0
  c.train.batch_size, c.train.grad_accum_steps = BATCH, accum
  return c


def _torch_step(model, config, dtype, x: np.ndarray, labels: np.ndarray, lam: float, accum: int):
  """The recipe's step in PyTorch; returns (loss, grad norm before clipping, the model after)."""
  model = copy.deepcopy(model).to(dtype).train()
  o = config.optim
  opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=1e-8,
                          weight_decay=o.weight_decay)
  ce = torch.nn.CrossEntropyLoss(label_smoothing=o.label_smoothing)
  x = torch.from_numpy(x.transpose(0, 3, 1, 2)).to(dtype)
  y = torch.from_numpy(labels.astype(np.int64))
  mixed, partner = lam * x + (1 - lam) * x.flip(0), y.flip(0)  # mixup with the reversed batch
  total = 0.0
  for i in range(accum):  # micro-batches i, i + accum, ...: each its own BatchNorm batch
    out = model(mixed[i::accum])
    loss = lam * ce(out, y[i::accum]) + (1 - lam) * ce(out, partner[i::accum])
    (loss / accum).backward()
    total += loss.item() / accum
  norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip_norm).item()
  opt.step()
  return total, norm, model


def _leaf(tree: dict, path) -> np.ndarray:
  return np.asarray(functools.reduce(lambda t, k: t[k.key], path, tree), np.float64)


def _worst(ours: dict, want: dict, start: dict | None = None) -> dict[str, float]:
  """Per kind of leaf (kernel, bias, scale, mean, var): the largest relative L2 difference of one
  leaf, of the values or (given `start`) of their change from `start`."""
  worst = {}
  for path, w in jax.tree_util.tree_leaves_with_path(want):
    a, b = _leaf(ours, path), np.asarray(w, np.float64)
    if start is not None:
      a, b = a - _leaf(start, path), b - _leaf(start, path)
    kind = path[-1].key
    worst[kind] = max(worst.get(kind, 0.0), np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))
  return worst


@pytest.mark.parametrize('accum', [1, 2])
def test_one_recipe_step_equals_the_pytorch_step(accum):
  config = _config(accum)
  tmodel = random_torch_resnet('resnet18', num_classes=CLASSES)
  start = torch_to_flax(tmodel.state_dict(), 'resnet18')
  tx, schedule = optim.make_optimizer(config.optim, TOTAL_STEPS, TOTAL_STEPS)
  state, graphdef = state_lib.init_state(config, tx, parallel.make_mesh())
  model = nnx.merge(graphdef, state.params, state.batch_stats)
  weights = nnx.state(model)
  nnx.replace_by_pure_dict(weights, jax.tree.map(jnp.asarray, start))
  nnx.update(model, weights)
  _, params, stats = nnx.split(model, nnx.Param, ...)
  state = state.replace(params=params, batch_stats=stats, opt_state=tx.init(params))

  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (BATCH, 32, 32, 3), np.uint8),
           'label': rng.integers(0, CLASSES, BATCH).astype(np.int32)}
  # The model input and the mixup weight the step draws (its key: fold_in(rng, step), split).
  x = augment.to_model_input(jnp.asarray(batch['image']), image_size=32, normalize='cifar',
                             dtype=jnp.float32)
  targets = mixing.smooth_one_hot(jnp.asarray(batch['label']), CLASSES, 0.1)
  key = jax.random.split(jax.random.fold_in(state.rng, state.step))[1]
  lam = float(mixing.mix_batch(key, x, targets, mixup_alpha=MIXUP_ALPHA, cutmix_alpha=0.0)[2])
  assert 0.0 < lam < 1.0
  step = jax.jit(functools.partial(train_step.train_step, graphdef=graphdef, tx=tx,
                                   schedule=schedule, config=config))
  with jax.default_matmul_precision('float32'):
    state, metrics = step(state, batch)

  x = np.asarray(x, np.float64)
  loss64, norm64, ref64 = _torch_step(tmodel, config, torch.float64, x, batch['label'], lam, accum)
  loss32, norm32, ref32 = _torch_step(tmodel, config, torch.float32, x, batch['label'], lam, accum)
  # The loss (mixup, label smoothing, micro-batches) and the gradient's global norm.
  for ours, want, theirs in ((float(metrics['train_loss']), loss64, loss32),
                             (float(metrics['grad_norm']), norm64, norm32)):
    assert abs(ours - want) <= max(3 * abs(theirs - want), 2e-5 * want), (ours, want, theirs)

  def to_flax(model):
    return torch_to_flax({k: v.float() for k, v in model.state_dict().items()}, 'resnet18')
  want, theirs = to_flax(ref64), to_flax(ref32)
  ours = nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, state.params, state.batch_stats)))
  change, torch_change = _worst(ours, want, start), _worst(theirs, want, start)
  # BatchNorm's running statistics (momentum 0.1, unbiased variance, once per micro-batch).
  assert change['mean'] < 1e-4 and change['var'] < 1e-4, (change, torch_change)
  # The update of every weight: as close to float64 PyTorch as float32 PyTorch's is (Adam's first
  # step is about lr x sign(gradient), so a gradient near 0 rounds either way in float32).
  for kind in ('kernel', 'bias', 'scale'):
    assert change[kind] < max(3 * torch_change[kind], 2e-3), (kind, change, torch_change)
