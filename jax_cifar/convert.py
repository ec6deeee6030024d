"""torchvision ResNet/ResNeXt/Wide ResNet `state_dict` -> Flax NNX variables, and loading a
converted checkpoint (converted.py: the folder on disk) into a model.

Our modules mirror torchvision's attribute names, so conversion is a renaming plus layout changes
(conv OIHW -> HWIO, Linear (out, in) -> (in, out)). The expected structure always comes from the
model itself (`nnx.eval_shape`), so a key this module gets wrong fails loudly, never silently.
"""

from __future__ import annotations

from jax_cifar import starting

if __name__ == '__main__':  # A signal while the libraries load: one line, no traceback.
  starting.install()

# pylint: disable=wrong-import-position
import contextlib
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from jax_cifar.converted import (  # noqa: F401  (convert.X: the converted folder's names too)
    ARCHS, KILL_ENV, ConversionError, InterruptedAfterWrite, OutputExistsError, OutputPathError,
    _dotted, _flatten, _unflatten, abstract_variables, check_output, read_converted, read_metadata,
    save_converted)
from jax_cifar.models.resnet import ARCHS as _RESNET_ARCHS
from jax_cifar.models.torch_init import torch_linear


@contextlib.contextmanager
def naming(key: str) -> Iterator[None]:
  """A ConversionError raised inside starts with the config key that gave the file (`key: ...`)."""
  try:
    yield
  except ConversionError as e:
    raise ConversionError(f'{key}: {e}') from e


_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                  'var': 'running_var'}
_IGNORED_SUFFIXES = ('num_batches_tracked',)


def torch_key(path: tuple) -> str:
  """Flax variable path -> torchvision state_dict key, e.g. layer1.0.bn1.mean -> .running_mean."""
  return _dotted(path[:-1] + (_LEAF_TO_TORCH[path[-1]],))


def _to_numpy(value: Any, key: str = '') -> np.ndarray:
  """A dense real tensor (torch or numpy) as float32; anything else is a ConversionError naming
  `key` (torch's sparse, meta and quantized tensors, complex values: not torchvision weights)."""
  if hasattr(value, 'detach'):  # torch.Tensor, without importing torch here
    kind = ('sparse' if getattr(value, 'is_sparse', False) or str(value.layout) != 'torch.strided'
            else 'meta (no data)' if getattr(value, 'is_meta', False)
            else 'quantized' if getattr(value, 'is_quantized', False)
            else 'complex' if value.is_complex() else None)
    if kind:
      raise ConversionError(f'{key}: a {kind} tensor, expected a dense real one')
    if not value.is_floating_point():  # (.float() had made an int32 state_dict's zeros weights.)
      raise ConversionError(f'{key}: dtype {str(value.dtype).removeprefix("torch.")}, expected '
                            'floating-point weights (a cast to integers has lost their values)')
    value = value.detach().cpu().float().numpy()
  value = np.asarray(value)
  if np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_:
    raise ConversionError(f'{key}: dtype {value.dtype}, expected floating-point weights (a cast to '
                          'integers has lost their values)')
  if not np.issubdtype(value.dtype, np.floating):
    raise ConversionError(f'{key}: dtype {value.dtype}, expected real numbers')
  return value.astype(np.float32)


def _report(missing, unexpected, misshaped, what: str, shown: int = 12) -> None:
  def head(keys):
    keys = list(keys)
    return ', '.join(keys[:shown]) + (f' ... (+{len(keys) - shown} more)' if len(keys) > shown
                                      else '')

  parts = []
  if missing:
    parts.append(f'missing keys: {head(missing)}')
  if unexpected:
    parts.append(f'unexpected keys: {head(unexpected)}')
  if misshaped:
    parts.append(f'mis-shaped keys: {head(misshaped)}')
  if parts:
    raise ConversionError(f'{what}: ' + '; '.join(parts))


# Prefixes that wrappers put before torchvision's names: DataParallel / DistributedDataParallel
# ('module.'), torch.compile ('_orig_mod.'), in any nesting.
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def _strip_wrappers(key: str) -> str:
  while key.startswith(_WRAPPER_PREFIXES):
    key = key.split('.', 1)[1]
  return key


def guess_arch(sd: Mapping[str, Any]) -> str | None:
  """The torchvision ResNet-family architecture with `sd`'s block type, blocks per stage and 3x3
  grouping (from layer1.0.conv2's weight shape), or None."""
  try:
    layers = tuple(1 + max(int(k.split('.')[1]) for k in sd if k.startswith(f'layer{i}.'))
                   for i in range(1, 5))
    out_channels, in_per_group = tuple(sd['layer1.0.conv2.weight'].shape)[:2]
  except (ValueError, KeyError, IndexError, TypeError):
    return None
  bottleneck = 'layer1.0.conv3.weight' in sd
  groups = out_channels // in_per_group if bottleneck and in_per_group else 1
  if not groups:  # Fewer outputs than inputs per group (a pruned model): no torchvision arch.
    return None
  width = out_channels // groups if bottleneck else 64  # Layer1's bottleneck width per group.
  found = [name for name, a in _RESNET_ARCHS.items()
           if (a.block.__name__ == 'Bottleneck') == bottleneck and a.layers == layers
           and a.groups == groups and a.width_per_group == width]
  return found[0] if len(found) == 1 else None


def torch_to_flax(state_dict: Mapping[str, Any], arch: str) -> dict:
  """Converts a torchvision ResNet-family state_dict to `nnx.to_pure_dict(nnx.state(model))`'s form.

  Contains params and BatchNorm running statistics; all float32 numpy. Raises ValueError naming
  every missing, unexpected or mis-shaped key (nothing partial is returned).
  """
  if arch not in ARCHS:
    raise ConversionError(f'unknown arch {arch!r}; allowed: {", ".join(ARCHS)}')
  sd: dict[str, Any] = {}
  for key, value in state_dict.items():
    name = _strip_wrappers(key)
    if name.endswith(_IGNORED_SUFFIXES):
      continue
    if name in sd:
      raise ConversionError(f'duplicate key after stripping {"/".join(_WRAPPER_PREFIXES)}: {name}')
    sd[name] = value
  if len({k.split('.', 1)[0] for k in sd}) == 1 and next(iter(sd)).startswith('model.'):
    sd = {k[len('model.'):]: v for k, v in sd.items()}  # A LightningModule's self.model.
  if 'fc.weight' not in sd:
    sample = ', '.join(sorted(sd)[:3])
    other = ('' if 'conv1.weight' in sd else
             f'; none of a ResNet\'s keys (conv1.weight, layer1.0...) either, so it looks like '
             f'another architecture: its keys start {sample}')
    raise ConversionError('missing keys: fc.weight (needed to know the number of classes: a '
                          'backbone saved without its head, or a head that is not one Linear '
                          f'named fc){other}')
  if len(sd['fc.weight'].shape) != 2:
    raise ConversionError(f'mis-shaped keys: fc.weight {tuple(sd["fc.weight"].shape)} (expected '
                          '(num_classes, features))')
  num_classes = int(sd['fc.weight'].shape[0])
  if num_classes < 1:
    raise ConversionError(f'mis-shaped keys: fc.weight {tuple(sd["fc.weight"].shape)} has no '
                          'classes (expected (num_classes, features))')

  params, stats = abstract_variables(arch, num_classes)
  expected = dict(_flatten(nnx.to_pure_dict(params)))
  expected.update(_flatten(nnx.to_pure_dict(stats)))
  out, missing, misshaped = {}, [], []
  for path, spec in expected.items():
    key = torch_key(path)
    if key not in sd:
      missing.append(key)
      continue
    value = _to_numpy(sd[key], key)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif value.ndim == 2:
      value = value.T  # Linear (out, in) -> (in, out)
    if value.shape != tuple(spec.shape):
      misshaped.append(f'{key} {tuple(sd[key].shape)} '
                       f'(expected {tuple(spec.shape)} in flax layout)')
      continue
    out[path] = np.ascontiguousarray(value)
  used = {torch_key(p) for p in expected}
  unexpected = sorted(k for k in sd if k not in used)
  guess = guess_arch(sd) if missing or unexpected or misshaped else None
  what = (f'this state_dict is a torchvision {guess} (its blocks and their shapes), not a {arch}: '
          f'convert it as {guess}; in detail, it does not match {arch}' if guess and guess != arch
          else f'state_dict does not match {arch}')
  conv1 = tuple(getattr(sd.get('conv1.weight'), 'shape', ()))
  if len(conv1) == 4 and conv1[2:] == (3, 3) and any(m.startswith('conv1.weight ') for m in misshaped):
    what += (' (its conv1 is 3x3: a CIFAR stem, trained from the start at 32 px; the converter '
             'takes ImageNet-stem weights, 7x7 conv1, which model.stem=imagenet uses)')
  # With the architecture named, a few keys of each kind are detail enough (36 had followed the
  # answer, 2,000 characters on one line: a review).
  _report(missing, unexpected, misshaped, what, shown=3 if guess and guess != arch else 12)
  # A NaN / inf weight would surface as a "non-finite loss" at step 1, pointing at the learning
  # rate; a negative running variance as a NaN in eval only.
  bad = sorted(torch_key(p) for p, v in out.items() if not np.isfinite(v).all())
  bad += sorted(torch_key(p) for p, v in out.items()
                if torch_key(p).endswith('running_var') and np.isfinite(v).all() and (v < 0).any())
  if bad:
    raise ConversionError(f'non-finite weights or negative running variances in: {", ".join(bad[:8])}'
                          + (f' (+{len(bad) - 8} more)' if len(bad) > 8 else ''))
  return _unflatten(out)


def _put_like(value: np.ndarray, like: Any) -> Any:
  """Places `value` with the sharding of the variable it replaces (multi-host safe)."""
  if isinstance(like, jax.Array):
    value = value.astype(like.dtype)
    return jax.make_array_from_callback(value.shape, like.sharding, lambda idx: value[idx])
  return value


def _build_hint(ckpt: Mapping, current: Mapping) -> str:
  """What the model was built with that the checkpoint was not, read from conv1's kernel (the
  list of mis-shaped keys had not said: a new-user audit)."""
  theirs = tuple(getattr(ckpt.get('conv1.kernel'), 'shape', ()))
  ours = tuple(current['conv1.kernel'][1].shape) if 'conv1.kernel' in current else ()
  if len(theirs) != 4 or len(ours) != 4:
    return ''
  hints = []
  if theirs[:2] != ours[:2]:
    stem = 'imagenet' if theirs[:2] == (7, 7) else 'cifar' if theirs[:2] == (3, 3) else None
    hints.append(f'its conv1 is {theirs[0]}x{theirs[1]} and the model\'s {ours[0]}x{ours[1]}'
                 + (f': build the model with stem={stem!r}' if stem else ''))
  if theirs[3] != ours[3]:
    hints.append(f'its conv1 has {theirs[3]} output channels and the model\'s {ours[3]}: build the '
                 f'model with width={theirs[3]}')
  return f' ({"; ".join(hints)})' if hints else ''


def loaded_line(path: str, loaded: dict, num_classes: int) -> str:
  """The line that says what load_pretrained's `loaded` report put into a model."""
  head = {'loaded': 'and their head', 'none': 'no head (the model has none)'}.get(
      loaded['head'], f'a fresh {num_classes}-class head')
  return f'Loaded the pretrained weights of {path}: {loaded["arrays"]} backbone arrays, {head}'


def load_pretrained(model: nnx.Module, path: str, *, num_classes: int | None = None,
                    rngs_seed: int = 0) -> dict:
  """Loads a converted backbone into `model` in place; returns {'arrays': how many of the
  checkpoint's backbone arrays it loaded, 'head': 'loaded', 'fresh' or 'none'}.

  If the checkpoint's head has another number of classes than the model's, the model keeps its
  own freshly initialised `fc` (torch.nn.Linear's init); `rngs_seed` draws one only for a model
  whose head holds no values (built with nnx.eval_shape). A matching head is loaded too; a model
  built with num_classes=0 (no head: pooled features) takes the backbone only. `num_classes`,
  when given, is checked against the model's head.
  """
  fc = getattr(model, 'fc', None)
  outputs = 0 if fc is None else fc.kernel.shape[-1]
  if num_classes is not None and outputs != num_classes:
    has = 'no head (built with num_classes=0)' if fc is None else f'{outputs} outputs'
    raise ConversionError(f'model head fc does not have num_classes={num_classes} outputs: the '
                          f'model has {has}')
  _, ckpt = read_converted(path, getattr(model, 'arch', None))

  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  current = {_dotted(p): (p, v) for p, v in _flatten(nnx.to_pure_dict(state))}
  keep_head = (fc is not None and ckpt.get('fc.kernel') is not None
               and ckpt['fc.kernel'].shape == fc.kernel.shape)
  is_head = lambda k: k.startswith('fc.')
  missing = [k for k in current if k not in ckpt and not is_head(k)]
  unexpected = [k for k in ckpt if k not in current and not is_head(k)]
  misshaped = [f'{k} {ckpt[k].shape} (model {tuple(current[k][1].shape)})' for k in ckpt
               if k in current and not is_head(k) and ckpt[k].shape != tuple(current[k][1].shape)]
  _report(missing, unexpected, misshaped,
          f'checkpoint {path} does not match the model{_build_hint(ckpt, current)}')

  if keep_head:
    head = {k: ckpt[k] for k in current if is_head(k)}
  elif all(isinstance(v, jax.Array) for k, (_, v) in current.items() if is_head(k)):
    head = {}  # keep the model's own fresh head
  else:
    fresh = torch_linear(fc.kernel.shape[0], outputs, dtype=fc.dtype, rngs=nnx.Rngs(rngs_seed))
    head = {f'fc.{k}': np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(fresh)).items()}
  new = {p: v if is_head(k) and k not in head else
         _put_like(head[k] if is_head(k) else ckpt[k], v) for k, (p, v) in current.items()}
  nnx.replace_by_pure_dict(state, _unflatten(new))
  nnx.update(model, state)
  return {'arrays': sum(not is_head(k) for k in current),
          'head': 'none' if fc is None else 'loaded' if keep_head else 'fresh'}


if __name__ == '__main__':  # python -m jax_cifar.convert ...
  from jax_cifar import convert_cli  # pylint: disable=g-import-not-at-top
  starting.uninstall()  # Loaded: Ctrl-C is convert_cli's KeyboardInterrupt from here.
  convert_cli.run_as_command()
