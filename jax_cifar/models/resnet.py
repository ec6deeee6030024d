"""torchvision-identical ResNets (also ResNeXt and Wide ResNet) in Flax NNX, so converted
ImageNet weights give torch's logits.

Attribute names mirror torchvision's `state_dict` keys (`conv1`, `bn1`, `layer1`..`layer4`, blocks
with `conv1..3`, `bn1..3`, `downsample`, and the head `fc`), which makes conversion a renaming.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cifar import errors
from jax_cifar.models import cpu_conv
from jax_cifar.models.head import ClassifierHead
from jax_cifar.models.torch_init import conv_kernel_init, torch_linear

Dtype = Any


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm with torch's semantics.

  Differences from flax: statistics and normalisation always run in float32 (output cast back to
  the compute dtype), the variance is two-pass (not E[x^2]-E[x]^2), and the running variance is
  updated with the *unbiased* batch variance, as torch.nn.BatchNorm2d does. The mode is given at
  call time (`use_running_average`), never stored, so a split/merged pure train step works.
  """

  def __init__(self, num_features: int, **kwargs):
    # Scale 1 and bias 0 need no randomness; flax would draw a key for each, and every draw
    # costs time that grows with the trace length under nnx.eval_shape (quadratic for ResNet-152).
    super().__init__(num_features, use_scale=False, use_bias=False, **kwargs)
    self.scale = nnx.Param(jnp.ones((num_features,), self.param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), self.param_dtype))
    self.use_scale = self.use_bias = True

  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask=None) -> jax.Array:
    if mask is not None:
      raise NotImplementedError('masked batch norm is not supported')
    if use_running_average is None:
      use_running_average = self.use_running_average
    if use_running_average is None:
      raise ValueError('BatchNorm needs use_running_average (pass train=... to the model)')
    out_dtype = self.dtype or x.dtype
    # Statistics over one axis of a [N*H*W, C] view: XLA:CPU runs these reductions and their
    # gradients 1.5-2.4x faster than over (N, H, W) (docs/benchmarks.md); free on GPU/TPU.
    x32 = x.astype(jnp.float32).reshape(-1, x.shape[-1])
    if use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      mean = jnp.mean(x32, 0)
      var = jnp.mean(jnp.square(x32 - mean), 0)
      n = x32.shape[0]
      if n == 1:  # torch refuses this too: the output would be the bias alone, whatever the input.
        raise errors.ConfigError(
            f'BatchNorm got one value per channel in training (input {x.shape}): use a larger '
            '(micro-)batch (train.batch_size / train.grad_accum_steps) or image size')
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      # set_value, not `[...] =`: flax's indexed assignment builds an error message for tracers
      # that costs time linear in the trace length (quadratic over a ResNet-152 train step).
      self.mean.set_value(jax.lax.stop_gradient(m * self.mean[...] + (1.0 - m) * mean))
      self.var.set_value(jax.lax.stop_gradient(m * self.var[...] + (1.0 - m) * unbiased))
    # (x - mean) * alpha, not x * alpha + (bias - mean * alpha): the latter's gradient for alpha
    # subtracts two large sums, and bf16 training learnt worse with it (tests/test_bf16.py).
    alpha = jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
    y = (x32 - mean) * alpha + self.bias[...]
    return y.reshape(x.shape).astype(out_dtype)


def _bn(features: int, dtype: Dtype, rngs: nnx.Rngs) -> BatchNorm:
  # Flax momentum 0.9 == torch momentum 0.1; dtype only sets the output dtype.
  return BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                   use_running_average=None, rngs=rngs)


def _conv(cin: int, cout: int, k: int, stride: int, padding: int, dtype: Dtype,
          rngs: nnx.Rngs, groups: int = 1) -> nnx.Conv:
  # Explicit symmetric padding as torch; 'SAME' pads (0, 1) on stride-2 convs. A grouped kernel
  # is (k, k, cin / groups, cout): torch's (cout, cin / groups, k, k) transposed.
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride),
                  padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                  use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=conv_kernel_init, rngs=rngs,
                  conv_general_dilated=cpu_conv.conv_general_dilated)


def _downsample(cin: int, cout: int, stride: int, dtype: Dtype, rngs: nnx.Rngs):
  """torchvision's `downsample` Sequential (1x1 conv stride s, BN) as list items 0 and 1."""
  if stride == 1 and cin == cout:
    return None
  return nnx.List([_conv(cin, cout, 1, stride, 0, dtype, rngs), _bn(cout, dtype, rngs)])


def _apply_downsample(downsample, x: jax.Array, train: bool) -> jax.Array:
  if downsample is None:
    return x
  return downsample[1](downsample[0](x), use_running_average=not train)


class BasicBlock(nnx.Module):
  """Two 3x3 convs (ResNet-18/34)."""
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int, *, groups: int = 1,
               width_per_group: int = 64, dtype: Dtype, rngs: nnx.Rngs):
    if groups != 1 or width_per_group != 64:  # as torchvision: only Bottleneck has them
      raise ValueError('BasicBlock supports only groups=1 and width_per_group=64')
    self.conv1 = _conv(cin, planes, 3, stride, 1, dtype, rngs)
    self.bn1 = _bn(planes, dtype, rngs)
    self.conv2 = _conv(planes, planes, 3, 1, 1, dtype, rngs)
    self.bn2 = _bn(planes, dtype, rngs)
    self.downsample = _downsample(cin, planes, stride, dtype, rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    ura = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    return nnx.relu(y + _apply_downsample(self.downsample, x, train))


def bottleneck_width(planes: int, groups: int, width_per_group: int) -> int:
  """Channels of a Bottleneck's 3x3 conv, torchvision's int(planes * wpg / 64) * groups."""
  return int(planes * (width_per_group / 64.0)) * groups


def min_width(width_per_group: int) -> int:
  """Smallest ResNet `width` whose stage-1 Bottleneck keeps at least one channel per group."""
  return -(-64 // width_per_group)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (stride here: torchvision's v1.5) -> 1x1 x4 (ResNet-50/101/152).

  `groups` > 1 makes the 3x3 a grouped conv (ResNeXt); `width_per_group` > 64 widens it
  (Wide ResNet), as torchvision's Bottleneck.
  """
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int, *, groups: int = 1,
               width_per_group: int = 64, dtype: Dtype, rngs: nnx.Rngs):
    out = planes * self.expansion
    inner = bottleneck_width(planes, groups, width_per_group)
    if inner < 1:
      raise ValueError(f'Bottleneck with {planes} planes, groups={groups}, width_per_group='
                       f'{width_per_group} has no channels (int(planes * wpg / 64) == 0)')
    self.conv1 = _conv(cin, inner, 1, 1, 0, dtype, rngs)
    self.bn1 = _bn(inner, dtype, rngs)
    self.conv2 = _conv(inner, inner, 3, stride, 1, dtype, rngs, groups=groups)
    self.bn2 = _bn(inner, dtype, rngs)
    self.conv3 = _conv(inner, out, 1, 1, 0, dtype, rngs)
    self.bn3 = _bn(out, dtype, rngs)
    self.downsample = _downsample(cin, out, stride, dtype, rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    ura = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    return nnx.relu(y + _apply_downsample(self.downsample, x, train))


def materialize(x: jax.Array) -> jax.Array:
  """x itself (a sum over a new axis of size 1), as a point XLA:CPU's fusion cannot cross.

  XLA:CPU fuses each block's cheap `relu(bn3 + residual)` into its consumers and, through them,
  the previous block's, so every block recomputes the residual stream of all blocks before it:
  quadratic in depth (float32 ResNet-152 fwd+bwd at 224 px, batch 8, on CPU: 10.0 s with the
  recomputation, 4.2 s with this; docs/benchmarks.md). A reduction is not fused into a consumer,
  so this keeps it linear where the trainer's CPU options switch off the algebraic simplifier;
  elsewhere the simplifier removes it.
  """
  return jnp.sum(x[..., None], axis=-1)


def _block_runner(train: bool, remat: bool) -> Callable[[nnx.Module, jax.Array], jax.Array]:
  """blk(x, train), recomputed in the backward pass when `remat` (train stays a Python bool)."""
  call = lambda blk, x: blk(x, train)
  return nnx.remat(call) if remat else call


def run_blocks_scanned(blocks: Sequence[nnx.Module], x: jax.Array, train: bool,
                       remat: bool = False) -> jax.Array:
  """Runs blocks in order, each run of identical blocks as one `jax.lax.scan` over stacked state.

  The parameters stay one module per block (torchvision's layout, so conversion and checkpoints
  do not change); they are stacked inside the traced step, so XLA compiles a stage's repeated block
  once instead of 35 times (ResNet-152's layer3). Updated BatchNorm statistics are written back.
  """
  splits = [nnx.split(blk) for blk in blocks]
  i = 0
  while i < len(blocks):
    graphdef, state = splits[i]
    j = i + 1
    while (j < len(blocks) and splits[j][0] == graphdef and _stackable(state)
           and _stackable(splits[j][1])):
      j += 1
    if j - i == 1:
      x = _block_runner(train, remat)(blocks[i], x)
    else:
      x = _scan_run(graphdef, [s for _, s in splits[i:j]], blocks[i:j], x, train, remat)
    i = j
  return x


def _stackable(state) -> bool:
  """Only arrays stack: a block holding Python objects (bn_adapt's recorders) runs unscanned."""
  return all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))


def _scan_run(graphdef, states, blocks, x: jax.Array, train: bool, remat: bool) -> jax.Array:
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)

  def body(x, state):
    blk = nnx.merge(graphdef, state)
    y = blk(x, train)
    return y, nnx.state(blk, nnx.BatchStat)

  # prevent_cse=False: inside a scan, CSE cannot undo the recomputation (jax.checkpoint's docs).
  body = jax.checkpoint(body, prevent_cse=False) if remat else body
  x, stats = jax.lax.scan(body, x, stacked)
  if train:
    for k, blk in enumerate(blocks):
      nnx.update(blk, jax.tree.map(lambda leaf: leaf[k], stats))
  return x


STEMS = ('imagenet', 'cifar')


class ModeFlag:
  """The whole model's copy of nnx's mode flag, `use_running_average`: `model.eval()` sets it to
  True, `model.train()` to False, and `nnx.view(model, use_running_average=...)` through this."""

  def set_view(self, use_running_average: bool | None = None):
    if use_running_average is not None:
      self.use_running_average = use_running_average


def resolve_train(model: nnx.Module, train):
  """`train` as given; when None, the mode that nnx's `model.eval()` (predictions) or
  `model.train()` set on the model's `use_running_average` (timm's and PyTorch's habit)."""
  if train is None and getattr(model, 'use_running_average', None) is not None:
    return not model.use_running_average
  return train


def check_images(x, train) -> None:
  """Models take NHWC float batches with 3 channels, normalised as in training; anything else
  fails deep inside a conv, or (uint8 pixels) silently gives chance-level predictions. `train` is
  a bool: `train='no'` had trained (changing the BatchNorm statistics; an audit)."""
  if not (isinstance(train, (bool, np.bool_)) or (  # (or a 0-d bool array: jnp.array(False))
      getattr(train, 'shape', None) == () and getattr(train, 'dtype', None) == np.bool_)):
    hint = (': pass it, or call model.eval() (predictions) or model.train() first'
            if train is None else '')
    raise TypeError(f'train must be True (batch statistics, updated) or False (running '
                    f'statistics, as for predictions), got {train!r}{hint}')
  if not hasattr(x, 'ndim'):  # (A list had been "AttributeError: 'list' object has no 'ndim'".)
    raise TypeError(f'model input must be an array (jax or numpy) [N, H, W, 3], got '
                    f'{type(x).__name__}')
  if x.ndim != 4 or x.shape[-1] != 3:
    nchw = (': a channels-first (NCHW) batch, as torch takes, becomes one with '
            'x.transpose(0, 2, 3, 1)' if x.ndim == 4 and x.shape[1] == 3 else '')
    raise ValueError(f'model input must be [N, H, W, 3] (NHWC, RGB), got shape '
                     f'{tuple(x.shape)}{nchw}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'model input must be floats normalised as in training, got {x.dtype}: '
                     'jax_cifar.predict(model, config, images) takes uint8 images and prepares '
                     'them (jax_cifar.augment.pipeline.to_model_input)')


class ResNet(nnx.Module, ModeFlag, ClassifierHead):
  """torchvision.models.ResNet; `stem='cifar'` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv.

  `width` is stage 1's `planes` (torchvision: 64); later stages double it, and a Bottleneck's
  inner width follows from it, `groups` and `width_per_group` as in torchvision.
  """

  def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
               num_classes: int = 100, *, stem: str = 'imagenet', width: int = 64,
               groups: int = 1, width_per_group: int = 64, dtype: Dtype = jnp.float32,
               arch: str = 'resnet', remat: bool = False, scan_blocks: bool = False,
               rngs: nnx.Rngs):
    if stem not in STEMS:
      raise ValueError(f'unknown stem {stem!r}; allowed: {", ".join(STEMS)}')
    if block is Bottleneck and bottleneck_width(width, groups, width_per_group) < 1:
      need = min_width(width_per_group)
      raise ValueError(f'{arch} needs width >= {need} (got {width}): its bottleneck has '
                       f'int(width * {width_per_group} / 64) * {groups} channels')
    self.arch = arch
    self.remat = remat  # Recompute each residual block in the backward pass: less memory.
    self.scan_blocks = scan_blocks  # Compile each stage's identical blocks once (jax.lax.scan).
    self.stem = stem
    self.dtype = dtype
    if stem == 'imagenet':
      self.conv1 = _conv(3, width, 7, 2, 3, dtype, rngs)
    else:
      self.conv1 = _conv(3, width, 3, 1, 1, dtype, rngs)
    self.bn1 = _bn(width, dtype, rngs)
    cin = width
    for i, depth in enumerate(layers):
      planes = width * 2**i
      blocks = []
      for j in range(depth):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block(cin, planes, stride, groups=groups, width_per_group=width_per_group,
                            dtype=dtype, rngs=rngs))
        cin = planes * block.expansion
      setattr(self, f'layer{i + 1}', nnx.List(blocks))
    self.num_features = cin  # What the head sees (timm's name): 512 or 2048 x width / 64.
    # nnx's mode: model.eval() sets it (with every BatchNorm's) to True, model.train() to False;
    # None (neither called) leaves train= to each call. A given train= always wins.
    self.use_running_average: bool | None = None
    # num_classes=0: no head; the model returns its pooled features (timm's convention).
    self.fc = torch_linear(cin, num_classes, dtype=dtype, rngs=rngs) if num_classes else None

  def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
    return self.forward_head(self.forward_features(x, train))

  def forward_features(self, x: jax.Array, train: bool | None = None) -> jax.Array:
    """The last stage's feature map [N, h, w, num_features] (timm's forward_features)."""
    train = resolve_train(self, train)
    check_images(x, train)
    x = x.astype(self.dtype)
    x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    if self.stem == 'imagenet':
      # Pads with -inf like torch's MaxPool2d(3, 2, padding=1).
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      if self.scan_blocks:
        x = run_blocks_scanned(layer, x, train, self.remat)
      else:
        run = _block_runner(train, self.remat)
        for blk in layer:
          x = materialize(run(blk, x))
    return x

  def forward_head(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
    """Logits (float32) of a feature map: global average pool, then `fc`; the pooled features
    with `pre_logits` or without a head."""
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.fc is None or pre_logits:
      return x
    return self.fc(x.astype(self.dtype)).astype(jnp.float32)


class Arch(NamedTuple):
  """One torchvision ResNet-family architecture: block type, blocks per stage, 3x3 grouping."""
  block: type[BasicBlock] | type[Bottleneck]
  layers: tuple[int, ...]
  groups: int = 1
  width_per_group: int = 64


ARCHS: dict[str, Arch] = {
    'resnet18': Arch(BasicBlock, (2, 2, 2, 2)),
    'resnet34': Arch(BasicBlock, (3, 4, 6, 3)),
    'resnet50': Arch(Bottleneck, (3, 4, 6, 3)),
    'resnet101': Arch(Bottleneck, (3, 4, 23, 3)),
    'resnet152': Arch(Bottleneck, (3, 8, 36, 3)),
    'resnext50_32x4d': Arch(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4),
    'resnext101_32x8d': Arch(Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=8),
    'resnext101_64x4d': Arch(Bottleneck, (3, 4, 23, 3), groups=64, width_per_group=4),
    'wide_resnet50_2': Arch(Bottleneck, (3, 4, 6, 3), width_per_group=128),
    'wide_resnet101_2': Arch(Bottleneck, (3, 4, 23, 3), width_per_group=128),
}


def build_resnet(arch: str, num_classes: int = 100, *, stem: str = 'imagenet', width: int = 64,
                 dtype: Dtype = jnp.float32, remat: bool = False, scan_blocks: bool = False,
                 rngs: nnx.Rngs) -> ResNet:
  """Builds one of `ARCHS` by its torchvision name."""
  if arch not in ARCHS:
    raise ValueError(f'unknown resnet {arch!r}; allowed: {", ".join(ARCHS)}')
  spec = ARCHS[arch]
  return ResNet(spec.block, spec.layers, num_classes, stem=stem, width=width, groups=spec.groups,
                width_per_group=spec.width_per_group, dtype=dtype, arch=arch, remat=remat,
                scan_blocks=scan_blocks, rngs=rngs)
