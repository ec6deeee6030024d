"""scripts/benchmark.py: the JSON it writes, model specs, and the batch-size search (no timings)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location('benchmark', ROOT / 'scripts' / 'benchmark.py')
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_tiny_run_writes_json_with_both_frameworks_and_ratio(tmp_path):
  pytest.importorskip('torch')
  out = tmp_path / 'bench.json'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'scripts' / 'benchmark.py'), '--models', 'resnet18:cifar:4',
       '--batch', '8', '--steps', '2', '--warmup', '0', '--torch_compile', 'off', '--out', str(out)],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert {'jax', 'backend', 'device', 'torch'} <= set(result['environment'])
  (row,) = result['rows']
  assert (row['arch'], row['stem'], row['width'], row['batch'], row['dtype'], row['image_size']) == (
      'resnet18', 'cifar', 4, 8, 'float32', 32)
  for fw in ('jax', 'torch'):
    assert {'img_s', 'step_ms', 'compile_s', 'loss', 'peak_bytes'} <= set(row[fw]), row[fw]
    assert row[fw]['img_s'] > 0
  assert row['jax']['program_bytes'] > 0
  assert row['jax_over_torch'] == pytest.approx(row['jax']['img_s'] / row['torch']['img_s'])
  assert 'jax/torch' in proc.stdout


def test_model_specs_name_configs_or_resnets_with_stem_and_width():
  from jax_cifar.configs import smoke as smoke_config  # pylint: disable=import-outside-toplevel
  smoke = benchmark.make_config('smoke', 64, 'bfloat16', 32)
  assert (smoke.model.name, smoke.model.width, smoke.model.dtype, smoke.train.batch_size) == (
      smoke_config.get_config().model.name, smoke_config.get_config().model.width, 'bfloat16', 64)
  r50 = benchmark.make_config('resnet50', 32, 'float32', 160)
  assert (r50.model.stem, r50.model.width, r50.model.normalize) == ('imagenet', 64, 'imagenet')
  assert (r50.optim.name, r50.optim.grad_clip_norm, r50.optim.label_smoothing) == ('adamw', 1.0, 0.1)
  r18 = benchmark.make_config('resnet18:cifar:16', 8, 'float32', 32)
  assert (r18.model.stem, r18.model.width) == ('cifar', 16)
  with pytest.raises(ValueError, match='unknown model spec'):
    benchmark.make_config('resnet19', 8, 'float32', 32)


def test_torch_twin_has_the_same_parameter_count():
  pytest.importorskip('torch')
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jax_cifar.models import create_model  # pylint: disable=import-outside-toplevel
  for name, stem, width in (('resnet18', 'cifar', 16), ('resnet50', 'imagenet', 8)):
    flax_model = nnx.eval_shape(lambda: create_model(name, 100, stem=stem, width=width,
                                                     rngs=nnx.Rngs(0)))
    n_flax = sum(x.size for x in jax.tree.leaves(nnx.state(flax_model, nnx.Param)))
    n_torch = sum(p.numel() for p in benchmark.torch_model(name, stem, width, 100).parameters())
    assert n_flax == n_torch, (name, stem, width)


def test_find_batch_size_doubles_then_bisects_to_the_largest_fitting_batch(monkeypatch):
  limit = 200

  def fake_bench(config, steps, warmup, mem_cap=None):
    b = config.train.batch_size
    if b > limit:
      raise MemoryError('RESOURCE_EXHAUSTED: fake')
    return {'img_s': 1000.0 - abs(b - 64)}  # fastest at 64

  monkeypatch.setattr(benchmark, 'bench_jax', fake_bench)
  monkeypatch.setattr(benchmark, '_release', lambda: None)
  args = benchmark.parse_args(['--find_batch_size', '--find_start', '32', '--batch_quantum', '8'])
  r = benchmark.find_batch_size('smoke', 'float32', 32, args)
  assert r['largest_batch'] == 200 and not r['hit_limit']
  assert r['best_batch'] == 64 and r['best_img_s'] == 1000.0
  assert r['tried']['256'] is None and r['tried']['32'] > 0
