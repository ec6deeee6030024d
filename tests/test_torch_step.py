"""scripts/torch_step.py, the PyTorch side of scripts/benchmark.py: the same model, recipe and
feature-map sizes as the JAX step, and its eager fallback (no timings)."""

import sys
import types

import pytest

from conftest import load_script, require_module

benchmark = load_script('benchmark')  # Loads torch_step beside it (sys.modules['torch_step']).


def test_torch_twin_has_the_same_parameter_count():
  require_module('torch')
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jax_cifar.models import create_model  # pylint: disable=import-outside-toplevel
  for name, stem, width in (('resnet18', 'cifar', 16), ('resnet50', 'imagenet', 8)):
    flax_model = nnx.eval_shape(lambda: create_model(name, 100, stem=stem, width=width,
                                                     rngs=nnx.Rngs(0)))
    n_flax = sum(x.size for x in jax.tree.leaves(nnx.state(flax_model, nnx.Param)))
    n_torch = sum(p.numel() for p in benchmark.torch_model(name, stem, width, 100).parameters())
    assert n_flax == n_torch, (name, stem, width)


def _torch_spy(monkeypatch):
  """torch_step with its loss, optimizer, clipping and model recorded as bench_torch makes them."""
  import torch  # pylint: disable=import-outside-toplevel
  torch_step = sys.modules['torch_step']
  seen = {'inputs': []}
  real_model, real_loss, real_adamw = (torch_step.torch_model, torch.nn.CrossEntropyLoss,
                                       torch.optim.AdamW)

  def model(*a):
    m = real_model(*a)
    m.register_forward_pre_hook(lambda _, x: seen['inputs'].append(
        (tuple(x[0].shape), torch.is_autocast_enabled('cpu'))))
    return m

  def clip(params, max_norm, **kw):
    seen['clip'] = max_norm
    return torch.nn.utils.clip_grad.clip_grad_norm_(params, max_norm, **kw)

  monkeypatch.setattr(torch_step, 'torch_model', model)
  monkeypatch.setattr(torch.nn, 'CrossEntropyLoss', lambda **kw: seen.update(loss=kw) or real_loss(**kw))
  monkeypatch.setattr(torch.optim, 'AdamW', lambda params, **kw: seen.update(opt=kw) or real_adamw(params, **kw))
  monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', clip)
  return torch_step, seen


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_torch_twin_trains_with_the_jax_recipe(monkeypatch, dtype):
  """The benchmark's two sides must do the same work: the config's input size, lr, weight decay,
  label smoothing, clipping norm and bf16 autocast reach the PyTorch step (a mutation audit: any
  of them could be dropped and every test passed)."""
  require_module('torch')
  torch_step, seen = _torch_spy(monkeypatch)
  config = benchmark.make_config('resnet18:cifar:4', 2, dtype, 40)
  config.optim.lr, config.optim.weight_decay, config.optim.label_smoothing = 0.003, 0.07, 0.2
  config.optim.grad_clip_norm = 1.5
  out = torch_step.bench_torch(config, steps=1, warmup=0, compile_mode='auto')
  assert out['compiled'] is False  # auto: torch.compile on a GPU only
  assert out['img_s'] * out['step_ms'] == pytest.approx(1e3 * 2)
  assert seen['loss'] == {'label_smoothing': 0.2}
  assert (seen['opt']['lr'], seen['opt']['weight_decay']) == (0.003, 0.07)
  assert seen['clip'] == 1.5
  # The compile step, then the one timed step: each at the config's size, autocast iff bf16.
  assert seen['inputs'] == [((2, 3, 40, 40), dtype == 'bfloat16')] * 2


def test_a_failed_torch_compile_falls_back_to_eager_and_its_time_is_not_the_compile_time(
    monkeypatch):
  """compile_s after a failed torch.compile is the eager first step's; the failed try is
  compile_attempt_s (a mutation audit: compile_s had included the failed attempt). A fake clock
  makes the failed try cost 100 s."""
  require_module('torch')
  import torch  # pylint: disable=import-outside-toplevel
  torch_step = sys.modules['torch_step']
  offset = [0.0]
  real = torch_step.time.perf_counter
  monkeypatch.setattr(torch_step, 'time', types.SimpleNamespace(
      perf_counter=lambda: real() + offset[0]))

  def failing(_):
    offset[0] += 100.0
    raise RuntimeError('inductor boom\nmore')

  monkeypatch.setattr(torch, 'compile', lambda model: failing)
  config = benchmark.make_config('resnet18:cifar:4', 2, 'float32', 32)
  out = torch_step.bench_torch(config, steps=1, warmup=0, compile_mode='on')
  assert out['compiled'] is False and out['compile_error'] == 'inductor boom'
  assert out['compile_attempt_s'] >= 100 > out['compile_s'] > 0
  assert out['img_s'] > 0


def test_torch_twin_has_the_flax_models_feature_map_sizes():
  """Same parameter count is not same work: the cifar stem's stride or a kept max-pool change
  the FLOPs 4-16x at the same count. The Flax ResNets' final maps: 32 px cifar -> 4x4, 64 px
  imagenet -> 2x2."""
  require_module('torch')
  import torch  # pylint: disable=import-outside-toplevel
  for name, stem, size, final in (('resnet18', 'cifar', 32, 4), ('resnet50', 'imagenet', 64, 2)):
    model = benchmark.torch_model(name, stem, 4, 100).eval()
    shapes = []
    model.layer1.register_forward_pre_hook(lambda _, x: shapes.append(x[0].shape[-1]))
    model.layer4.register_forward_hook(lambda _, __, y: shapes.append(y.shape[-1]))
    with torch.no_grad():
      model(torch.zeros(1, 3, size, size))
    assert shapes == [final * 8, final], (name, stem, shapes)
