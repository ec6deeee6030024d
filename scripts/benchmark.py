"""Train-step throughput of jax-cifar against the same model and optimizer in PyTorch.

  python scripts/benchmark.py --models smoke,resnet18,resnet50 --batch 128 --dtypes float32 \
      --image_size 32 --out bench.json
  python scripts/benchmark.py --models resnet50:imagenet --image_size 160 --dtypes bfloat16 \
      --find_batch_size --frameworks jax

A model spec is a config name (`smoke`, `resnet152`, ... from configs/) or `NAME[:STEM[:WIDTH]]`
(`resnet18:cifar:16`); a bare ResNet name takes the cifar stem at <= 64 px and the ImageNet stem
above. The JAX step is the trainer's own (`state.init_state` + `trainer.compile_train_step`:
on-device crop/flip, resize, label smoothing, clip -> AdamW); PyTorch gets the same model, AdamW, clipping
and label smoothing (channels_last, autocast for bfloat16, `torch.compile` on GPU with an eager
fallback) on a ready float batch at the model's size. Synthetic data only: no grain/tfds/wandb use.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent

RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')


# ---------------------------------------------------------------------------------------------
# Specs and configs
# ---------------------------------------------------------------------------------------------
def _csv(text: str, kind=str) -> list:
  return [kind(t) for t in str(text).split(',') if t.strip()]


def make_config(spec: str, batch: int, dtype: str, image_size: int):
  """The run's config: a config file's, or the default with the spec's model, plus benchmark fixes."""
  from jax_cifar.configs import default  # pylint: disable=import-outside-toplevel
  name, *rest = spec.split(':')
  if name not in RESNETS + ('simple_cnn',) and (ROOT / 'jax_cifar' / 'configs' / f'{name}.py').exists():
    config = importlib.import_module(f'jax_cifar.configs.{name}').get_config()
    if rest:
      raise ValueError(f'{spec}: a config name takes no stem/width')
  else:
    config = default.get_config()
    if name not in RESNETS + ('simple_cnn',):
      raise ValueError(f'unknown model spec {spec!r}: a configs/ name or one of {RESNETS}')
    config.model.name = name
    config.model.stem = rest[0] if rest else ('cifar' if image_size <= 64 else 'imagenet')
    config.model.width = int(rest[1]) if len(rest) > 1 else 64
    config.model.normalize = 'cifar' if config.model.stem == 'cifar' else 'imagenet'
    # The recipe being replaced: AdamW + global-norm clipping + label smoothing, crop + flip.
    config.optim.name, config.optim.grad_clip_norm, config.optim.label_smoothing = 'adamw', 1.0, 0.1
  config.model.dtype = dtype
  config.model.image_size = image_size
  config.model.pretrained = ''
  config.train.batch_size = batch
  config.data.source = 'synthetic'
  return config


# ---------------------------------------------------------------------------------------------
# JAX
# ---------------------------------------------------------------------------------------------
def _is_oom(err: BaseException) -> bool:
  text = f'{type(err).__name__}: {err}'
  return any(s in text for s in ('RESOURCE_EXHAUSTED', 'Out of memory', 'out of memory', 'OOM'))


def _memory_analysis(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops'])
  except Exception:  # pylint: disable=broad-except
    return None


def bench_jax(config, steps: int, warmup: int, mem_cap: float | None = None,
              compiler_options: dict | None = None) -> dict:
  """img/s (median of per-step times), compile seconds and memory of the trainer's train step."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax_cifar import optim, parallel, trainer  # pylint: disable=import-outside-toplevel
  from jax_cifar import state as state_lib  # pylint: disable=import-outside-toplevel

  batch = config.train.batch_size
  mesh = parallel.make_mesh()
  parallel.check_batch_size(batch, 'batch')
  tx, schedule = optim.make_optimizer(config.optim, total_steps=10_000, steps_per_epoch=100)
  t0 = time.perf_counter()
  state, graphdef = state_lib.init_state(config, tx, mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  p_train = trainer.compile_train_step(config, graphdef, tx, schedule, mesh)
  rng = np.random.default_rng(0)
  host = {'image': rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
          'label': rng.integers(0, config.model.num_classes, batch).astype(np.int32)}
  data = parallel.to_global(host, parallel.batch_sharded(mesh))
  t0 = time.perf_counter()
  compiled = p_train.lower(state, data).compile(compiler_options or None)
  compile_s = time.perf_counter() - t0
  program_bytes = _memory_analysis(compiled)
  out = {'compile_s': compile_s, 'init_s': init_s, 'program_bytes': program_bytes,
         'step_flops': _flops(compiled)}
  if mem_cap and program_bytes and program_bytes > mem_cap:
    raise MemoryError(f'RESOURCE_EXHAUSTED: program needs {program_bytes / 2**30:.2f} GiB > cap')
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  loss = float(metrics['train_loss'])
  stats = jax.devices()[0].memory_stats() or {}
  out.update(step_ms=1e3 * statistics.median(times), img_s=batch / statistics.median(times),
             loss=loss, peak_bytes=stats.get('peak_bytes_in_use'))
  if out['step_flops']:  # XLA's count of the whole step (augmentation, model, optimizer)
    out['tflop_s'] = out['step_flops'] / statistics.median(times) / 1e12
  del state, compiled, p_train, data
  return out


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------
def torch_model(name: str, stem: str, width: int, num_classes: int):
  """torchvision's ResNet (any stage-1 width); the cifar stem is a 3x3/1 conv and no max-pool."""
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models import resnet as tvr  # pylint: disable=import-outside-toplevel
  if name == 'simple_cnn':
    raise ValueError('simple_cnn has no torchvision twin')
  block, layers = {'resnet18': (tvr.BasicBlock, [2, 2, 2, 2]), 'resnet34': (tvr.BasicBlock, [3, 4, 6, 3]),
                   'resnet50': (tvr.Bottleneck, [3, 4, 6, 3]), 'resnet101': (tvr.Bottleneck, [3, 4, 23, 3]),
                   'resnet152': (tvr.Bottleneck, [3, 8, 36, 3])}[name]
  model = tvr.ResNet(block, layers, num_classes=num_classes)
  if width != 64:  # Rebuild the stages at another width with torchvision's own _make_layer.
    model.inplanes = width
    model.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
    model.bn1 = torch.nn.BatchNorm2d(width)
    for i in range(4):
      setattr(model, f'layer{i + 1}', model._make_layer(block, width * 2**i, layers[i],  # pylint: disable=protected-access
                                                        stride=1 if i == 0 else 2))
    model.fc = torch.nn.Linear(width * 8 * block.expansion, num_classes)
  if stem == 'cifar':
    model.conv1 = torch.nn.Conv2d(3, width, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  return model


def bench_torch(config, steps: int, warmup: int, compile_mode: str) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  cuda = torch.cuda.is_available()
  device = torch.device('cuda' if cuda else 'cpu')
  m = config.model
  batch = config.train.batch_size
  model = torch_model(m.name, m.stem, m.width, m.num_classes).to(device)
  # channels_last only on GPU: on CPU, oneDNN's channels_last backward for narrow convs (width 4)
  # ran for minutes per step here, while the default layout takes milliseconds.
  layout = torch.channels_last if cuda else torch.contiguous_format
  model = model.to(memory_format=layout).train()
  opt = torch.optim.AdamW(model.parameters(), lr=config.optim.lr,
                          weight_decay=config.optim.weight_decay, fused=cuda)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(batch, 3, m.image_size, m.image_size, generator=gen).to(
      device, memory_format=layout)
  y = torch.randint(0, m.num_classes, (batch,), generator=gen).to(device)
  bf16 = m.dtype == 'bfloat16'
  use_compile = compile_mode == 'on' or (compile_mode == 'auto' and cuda)
  fwd = torch.compile(model) if use_compile else model
  clip = config.optim.grad_clip_norm

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      logits = fwd(x)
    loss = loss_fn(logits.float(), y)
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
    opt.step()
    return loss

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
  out = {'compiled': use_compile}
  t0 = time.perf_counter()
  try:
    step()
    sync()
  except Exception as e:  # pylint: disable=broad-except
    if not use_compile or _is_oom(e):
      raise
    out.update(compiled=False, compile_error=str(e).splitlines()[0][:200])
    fwd = model
    step()
    sync()
  out['compile_s'] = time.perf_counter() - t0
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    loss = step()
    sync()
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  out.update(step_ms=1e3 * statistics.median(times), img_s=batch / statistics.median(times),
             loss=float(loss.detach()), peak_bytes=torch.cuda.max_memory_allocated() if cuda else None)
  del model, opt, fwd, x, y
  if cuda:
    torch.cuda.empty_cache()
  return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def _release() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  jax.clear_caches()
  gc.collect()


def run_one(spec: str, batch: int, dtype: str, size: int, args) -> dict:
  config = make_config(spec, batch, dtype, size)
  row: dict[str, Any] = {'model': spec, 'arch': config.model.name, 'stem': config.model.stem,
                         'width': config.model.width, 'batch': batch, 'dtype': dtype,
                         'image_size': size}
  frameworks = _csv(args.frameworks)
  # PyTorch first: JAX's allocator keeps what it took, torch's cache is emptied after each run.
  for fw in sorted(frameworks, key=lambda f: f != 'torch'):
    try:
      if fw == 'torch':
        row['torch'] = bench_torch(config, args.steps, args.warmup, args.torch_compile)
      else:
        row['jax'] = bench_jax(config, args.steps, args.warmup,
                               compiler_options=json.loads(args.compiler_options or '{}'))
    except Exception as e:  # pylint: disable=broad-except
      row[fw] = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300]}' if str(e)
                 else type(e).__name__, 'oom': _is_oom(e)}
    finally:
      _release()
  jx, pt = row.get('jax', {}), row.get('torch', {})
  if 'img_s' in jx and 'img_s' in pt:
    row['jax_over_torch'] = jx['img_s'] / pt['img_s']
  return row


def find_batch_size(spec: str, dtype: str, size: int, args) -> dict:
  """Doubles the batch until it does not fit (OOM or --mem_cap_gb), then bisects; JAX only."""
  cap = args.mem_cap_gb * 2**30 if args.mem_cap_gb else None
  tried: dict[int, float | None] = {}
  quantum = args.batch_quantum

  def fits(b: int) -> bool:
    if b not in tried:
      try:
        r = bench_jax(make_config(spec, b, dtype, size), max(2, args.steps // 2), 1, cap)
        tried[b] = r['img_s']
      except Exception as e:  # pylint: disable=broad-except
        if not (_is_oom(e) or isinstance(e, MemoryError)):
          raise
        tried[b] = None
      finally:
        _release()
      print(f'  {spec} {dtype} {size}px batch {b}: '
            f'{"does not fit" if tried[b] is None else f"{tried[b]:.1f} img/s"}', flush=True)
    return tried[b] is not None

  b, good, bad = args.find_start, 0, None
  while b <= args.find_max:
    if not fits(b):
      bad = b
      break
    good, b = b, b * 2
  if good and bad:
    while bad - good > quantum:
      mid = (good + bad) // 2 // quantum * quantum
      if mid <= good:
        break
      good, bad = (mid, bad) if fits(mid) else (good, mid)
  ok = {k: v for k, v in tried.items() if v is not None}
  best = max(ok, key=ok.get) if ok else None
  return {'model': spec, 'dtype': dtype, 'image_size': size, 'largest_batch': good or None,
          'hit_limit': bad is None, 'best_batch': best, 'best_img_s': ok.get(best),
          'tried': {str(k): v for k, v in sorted(tried.items())}}


def environment() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  env = {'jax': jax.__version__, 'backend': jax.default_backend(),
         'device': str(jax.devices()[0].device_kind), 'device_count': jax.device_count(),
         'python': platform.python_version(), 'host': platform.node(),
         'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''), 'cpu_count': os.cpu_count()}
  try:
    env['loadavg'] = os.getloadavg()
  except OSError:
    pass
  try:
    import torch  # pylint: disable=import-outside-toplevel
    env['torch'] = torch.__version__
    env['torch_threads'] = torch.get_num_threads()
  except ImportError:
    pass
  return env


def _fmt(v, spec='.1f'):
  return '-' if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
  head = (f'{"model":<20} {"dtype":<8} {"px":>4} {"batch":>5} {"jax img/s":>10} {"torch img/s":>11} '
          f'{"jax/torch":>9} {"jax TFLOP/s":>11} {"jax compile s":>13} {"jax mem GiB":>11} {"torch mem GiB":>13}')
  lines = [head, '-' * len(head)]
  for r in rows:
    jx, pt = r.get('jax', {}), r.get('torch', {})
    mem = jx.get('peak_bytes') or jx.get('program_bytes')
    lines.append(
        f'{r["model"]:<20} {r["dtype"]:<8} {r["image_size"]:>4} {r["batch"]:>5} '
        f'{_fmt(jx.get("img_s")) if "error" not in jx else "error":>10} '
        f'{_fmt(pt.get("img_s")) if "error" not in pt else "error":>11} '
        f'{_fmt(r.get("jax_over_torch"), ".2f"):>9} {_fmt(jx.get("tflop_s"), ".3f"):>11} '
        f'{_fmt(jx.get("compile_s")):>13} '
        f'{_fmt(mem and mem / 2**30, ".2f"):>11} '
        f'{_fmt(pt.get("peak_bytes") and pt["peak_bytes"] / 2**30, ".2f"):>13}')
    for fw, res in (('jax', jx), ('torch', pt)):
      if 'error' in res:
        lines.append(f'    {fw} error: {res["error"]}')
  return '\n'.join(lines)


def _write(path: str, result: dict) -> None:
  if path:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(path + '.tmp')
    tmp.write_text(json.dumps(result, indent=1, default=str) + '\n')
    tmp.replace(path)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--models', default='smoke', help='comma list of model specs (see module doc)')
  p.add_argument('--batch', default='128', help='comma list of global batch sizes')
  p.add_argument('--dtypes', default='float32', help='comma list: float32,bfloat16')
  p.add_argument('--image_size', default='32', help='comma list of model input sizes')
  p.add_argument('--frameworks', default='jax,torch', help='comma list: jax,torch')
  p.add_argument('--steps', type=int, default=10, help='timed steps (median reported)')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  p.add_argument('--torch_compile', default='auto', choices=('auto', 'on', 'off'),
                 help='torch.compile the model: auto = on GPU only')
  p.add_argument('--find_batch_size', action='store_true',
                 help='per model/dtype/size: largest batch that fits and the fastest one (JAX)')
  p.add_argument('--find_start', type=int, default=32)
  p.add_argument('--find_max', type=int, default=4096)
  p.add_argument('--batch_quantum', type=int, default=16, help='bisection granularity')
  p.add_argument('--mem_cap_gb', type=float, default=0.0,
                 help='treat programs needing more than this (XLA memory analysis) as not fitting')
  p.add_argument('--compiler_options', default='',
                 help='JSON dict of XLA options for the JAX train step only, e.g. '
                      '\'{"xla_cpu_experimental_ynn_fusion_type": ""}\' (docs/benchmarks.md)')
  p.add_argument('--out', default='', help='write the results as JSON here')
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  # Compile times are part of the result: never read them from the persistent cache.
  jax.config.update('jax_enable_compilation_cache', False)
  result: dict[str, Any] = {'environment': environment(), 'args': vars(args), 'rows': [],
                            'find_batch_size': []}
  sizes, dtypes = _csv(args.image_size, int), _csv(args.dtypes)
  for spec in _csv(args.models):
    for size in sizes:
      for dtype in dtypes:
        if args.find_batch_size:
          r = find_batch_size(spec, dtype, size, args)
          result['find_batch_size'].append(r)
          print(f'{spec} {dtype} {size}px: largest batch {r["largest_batch"]}'
                f'{" (search limit)" if r["hit_limit"] else ""}, fastest batch {r["best_batch"]} '
                f'({_fmt(r["best_img_s"])} img/s)', flush=True)
          _write(args.out, result)
          continue
        for batch in _csv(args.batch, int):
          row = run_one(spec, batch, dtype, size, args)
          result['rows'].append(row)
          print('\n'.join(table([row]).splitlines()[2:]), flush=True)
          _write(args.out, result)  # after every row: a run cut short keeps what it measured
  if result['rows']:
    print('\n' + table(result['rows']))
  _write(args.out, result)
  errors = [r for r in result['rows'] if any('error' in r.get(f, {}) for f in ('jax', 'torch'))]
  return 1 if errors and len(errors) == len(result['rows']) else 0


if __name__ == '__main__':
  sys.exit(main())
