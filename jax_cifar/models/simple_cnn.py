"""The course's Part 1 baseline: two conv-relu-pool stages and a two-layer MLP head."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cifar.models.head import ClassifierHead
from jax_cifar.models.resnet import ModeFlag, check_images, resolve_train
from jax_cifar.models.torch_init import torch_default_bias_init, torch_default_kernel_init, torch_linear

Dtype = Any
_GRID = 8  # fc1 sees an 8x8x64 map: the flattened size of a 32x32 input after two 2x2 pools.


class SimpleCNN(nnx.Module, ModeFlag, ClassifierHead):
  """conv(3->32)-relu-pool, conv(32->64)-relu-pool, flatten, fc1 (512) relu, fc.

  Larger inputs (e.g. 224 when the data pipeline resizes for pretrained nets) are average-pooled
  to the 8x8 grid first, so the parameter count does not depend on the input size.
  """

  def __init__(self, num_classes: int = 100, *, width: int = 32, dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.arch = 'simple_cnn'  # As ResNet's: which model this is, for predict's config check.
    self.dtype = dtype

    def conv(cin: int, cout: int) -> nnx.Conv:
      return nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
                      param_dtype=jnp.float32, kernel_init=torch_default_kernel_init,
                      bias_init=torch_default_bias_init(cin * 9), rngs=rngs)

    self.conv1 = conv(3, width)
    self.conv2 = conv(width, 2 * width)
    self.fc1 = torch_linear(2 * width * _GRID * _GRID, 512, dtype=dtype, rngs=rngs)
    self.num_features = 512  # fc1's outputs; num_classes=0 returns them (no head).
    self.fc = torch_linear(512, num_classes, dtype=dtype, rngs=rngs) if num_classes else None
    self.use_running_average: bool | None = None  # nnx's mode flag (no BatchNorm here).

  def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
    return self.forward_head(self.forward_features(x, train))

  def forward_features(self, x: jax.Array, train: bool | None = None) -> jax.Array:
    """The second stage's map, pooled to the 8x8 grid: [N, 8, 8, 2 * width]."""
    train = resolve_train(self, train)
    check_images(x, train)  # No dropout or BN: train is checked, for the common interface.
    side = x.shape[1:3]
    x = x.astype(self.dtype)
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    h, w = x.shape[1:3]
    if (h, w) != (_GRID, _GRID):
      if h % _GRID or w % _GRID:
        raise ValueError(f'SimpleCNN needs an input side that is a multiple of 32, got {side}')
      x = nnx.avg_pool(x, (h // _GRID, w // _GRID), strides=(h // _GRID, w // _GRID))
    return x

  def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
    """Logits (float32) of forward_features' map: flatten, fc1 + relu, fc; fc1's outputs with
    `pre_logits` or without a head."""
    x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return (x if self.fc is None or pre_logits else self.fc(x)).astype(jnp.float32)
