"""Train-step throughput of jax-cifar against the same model and optimizer in PyTorch.

  python scripts/benchmark.py --models smoke,resnet18,resnet50 --batch 128 --dtypes float32 \
      --image_size 32 --out bench.json
  python scripts/benchmark.py --models resnet50:imagenet --image_size 160 --dtypes bfloat16 \
      --find_batch_size --frameworks jax
  python scripts/benchmark.py --models configs/resnet152.py --dtypes float32,bfloat16 \
      --find_batch_size --analysis_only --mem_cap_gb 12.5   # a 16 GB GPU at MEM_FRACTION 0.9

A model spec is a config file (`configs/resnet152.py`), a config name (`smoke`, `resnet50_transfer`, `ood_best`, ...
from configs/) or `NAME[:STEM[:WIDTH]]` (`resnet18:cifar:16`); a bare ResNet name (`resnet152`,
also `resnet34`: give configs/resnet34.py for that recipe) takes the default recipe, the cifar stem at <= 64 px and the ImageNet stem above. Without
--image_size a config keeps its own size (224 for configs/resnet152.py). The JAX step is the
trainer's own (`state.init_state` + `trainer.compile_train_step`: on-device crop/flip, resize,
label smoothing, clip -> AdamW); PyTorch gets the same model, AdamW, clipping and label smoothing (channels_last, autocast for bfloat16, `torch.compile` on GPU with an eager
fallback; --torch_compile_timeout_s runs the compiled try in a child process with that time
limit) on a ready float batch at the model's size. --grad_accum_steps 1,4 adds rows whose JAX
step accumulates gradients over that many micro-batches of the batch (JAX only). Synthetic data
only: no tfds or wandb; grain is imported with the trainer (its input pipeline) but reads nothing.
--analysis_only compiles the JAX step and reads XLA's memory analysis without running it (the
numbers are the backend's own: run it on the GPU in question for that GPU's); PyTorch is skipped.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import pathlib
import platform
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _sibling(name: str):
  """A module of scripts/ (not a package) by path, so the benchmark also loads when imported by
  file location (tests) without touching sys.path."""
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).with_name(f'{name}.py'))
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
  return sys.modules[name]


batch_fit = _sibling('batch_fit')
bench_args = _sibling('bench_args')
hostinfo = _sibling('hostinfo')
bench_table = _sibling('bench_table')
combine_runs, table, _fmt = bench_table.combine_runs, bench_table.table, bench_table._fmt  # pylint: disable=protected-access
memory_note, memory_footnote = bench_table.memory_note, bench_table.memory_footnote
bench_jax, is_oom = _sibling('jax_step').bench_jax, _sibling('jax_step').is_oom
bench_torch, torch_model = _sibling('torch_step').bench_torch, _sibling('torch_step').torch_model
bench_torch_limited = _sibling('torch_step').bench_torch_limited
will_compile = _sibling('torch_step').will_compile

RESNETS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')


# --- Specs and configs -----------------------------------------------------------------------
def _csv(text: str, kind=str) -> list:
  return [kind(t) for t in str(text).split(',') if t.strip()]


def recipe_config(spec: str, image_size: int):
  """A config file's config, or the default one with the spec's model; not yet changed to measure."""
  from jax_cifar.configs import default  # pylint: disable=import-outside-toplevel
  if spec.endswith('.py'):  # A config file, as train's --config takes (configs/resnet152.py).
    path = pathlib.Path(spec)
    if not path.is_file():
      raise ValueError(f'model spec {spec!r}: no such config file')
    module_spec = importlib.util.spec_from_file_location(f'_bench_config_{path.stem}', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config()
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
    if name == 'simple_cnn' and rest:
      raise ValueError(f'{spec}: simple_cnn takes no stem/width (it is the course\'s fixed CNN)')
    if name != 'simple_cnn':
      config.model.stem = rest[0] if rest else ('cifar' if image_size <= 64 else 'imagenet')
      config.model.width = int(rest[1]) if len(rest) > 1 else 64
    config.model.normalize = 'cifar' if config.model.stem == 'cifar' else 'imagenet'
    # The recipe being replaced: AdamW + global-norm clipping + label smoothing, crop + flip.
    config.optim.name, config.optim.grad_clip_norm, config.optim.label_smoothing = 'adamw', 1.0, 0.1
  return config


def make_config(spec: str, batch: int, dtype: str, image_size: int, *, grad_accum_steps: int = 1,
                remat: bool | None = None, scan_blocks: bool | None = None):
  """The measured config: the recipe's, at this batch/dtype/size, synthetic data, no weights."""
  config = recipe_config(spec, image_size)
  config.model.dtype = dtype
  config.model.image_size = image_size
  config.model.pretrained = ''
  config.train.batch_size = batch
  config.train.grad_accum_steps = grad_accum_steps
  if remat is not None:
    config.model.remat = remat
  if scan_blocks is not None:
    config.model.scan_blocks = scan_blocks
  config.data.source = 'synthetic'
  return config


# --- Driver ----------------------------------------------------------------------------------
def _release() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  jax.clear_caches()
  gc.collect()


def _on_off(value: str) -> bool | None:
  return {'on': True, 'off': False}.get(value)  # 'config': the config's own choice


_TORCH_RAN: list[str] = []  # Rows whose PyTorch step ran in this process (it imports torch).


def run_one(spec: str, batch: int, dtype: str, size: int, args, torch_first: bool = True,
            grad_accum_steps: int = 1) -> dict:
  config = make_config(spec, batch, dtype, size, grad_accum_steps=grad_accum_steps,
                       scan_blocks=_on_off(args.scan_blocks))
  row: dict[str, Any] = {'model': spec, 'arch': config.model.name, 'stem': config.model.stem,
                         'width': config.model.width, 'batch': batch, 'dtype': dtype,
                         'image_size': size, 'scan_blocks': bool(config.model.scan_blocks),
                         'grad_accum_steps': grad_accum_steps}
  # --analysis_only runs nothing, so there is no PyTorch step to compare with; the PyTorch twin
  # has no gradient accumulation, so an accumulating row is JAX's alone.
  frameworks = [f for f in _csv(args.frameworks)
                if not ((args.analysis_only or grad_accum_steps > 1) and f == 'torch')]
  # PyTorch first: JAX's allocator keeps what it took, torch's cache is emptied after each run
  # (--repeat alternates the order on the CPU, where neither keeps memory).
  for fw in sorted(frameworks, key=lambda f: (f != 'torch') == torch_first):
    try:
      if fw == 'torch' and args.torch_compile_timeout_s and will_compile(args.torch_compile):
        row['torch'] = bench_torch_limited(config, args.steps, args.warmup, args.torch_compile,
                                           args.torch_compile_timeout_s)
      elif fw == 'torch':
        row['torch'] = bench_torch(config, args.steps, args.warmup, args.torch_compile)
      else:
        row['jax'] = bench_jax(config, args.steps, args.warmup,
                               compiler_options=json.loads(args.compiler_options or '{}'),
                               analysis_only=args.analysis_only)
        if _TORCH_RAN and 'first_step_s' in row['jax']:  # Process start -> JAX's first step.
          del row['jax']['first_step_s']
          row['jax']['first_step_note'] = 'not measured: PyTorch ran first in this process'
    except Exception as e:  # pylint: disable=broad-except
      row[fw] = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300]}' if str(e)
                 else type(e).__name__, 'oom': is_oom(e)}
    finally:
      _release()
      if fw == 'torch':
        _TORCH_RAN.append(spec)
  jx, pt = row.get('jax', {}), row.get('torch', {})
  if 'img_s' in jx and 'img_s' in pt:
    row['jax_over_torch'] = jx['img_s'] / pt['img_s']
    if jx.get('mfu') is not None:  # The same model and batch: by JAX's FLOP count of its step.
      pt['mfu'] = jx['mfu'] * pt['img_s'] / jx['img_s']
  return row


def run_repeated(spec: str, batch: int, dtype: str, size: int, args,
                 grad_accum_steps: int = 1) -> dict:
  """run_one --repeat times, alternating which framework goes first (on a GPU PyTorch always
  goes first). img/s and jax/torch are medians over the repeats (the ratio: of each repeat's own
  ratio, the two measured minutes apart); every repeat's numbers are kept in `*_runs`."""
  import jax  # pylint: disable=import-outside-toplevel
  alternate = jax.default_backend() == 'cpu'
  runs = [run_one(spec, batch, dtype, size, args, torch_first=not (alternate and i % 2),
                  grad_accum_steps=grad_accum_steps) for i in range(args.repeat)]
  return runs[0] if len(runs) == 1 else combine_runs(runs)


def cap_over_pool(cap_gb: float, pool_bytes: int | None) -> str | None:
  """What to say when --mem_cap_gb exceeds the memory JAX may use on the device (its allocator's
  `bytes_limit`: 75% of a GPU unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise)."""
  if not cap_gb or not pool_bytes or cap_gb * 2**30 <= pool_bytes:
    return None
  return (f'--mem_cap_gb {cap_gb:g} is more than JAX may use on this device '
          f'({pool_bytes / 2**30:.1f} GiB: XLA_PYTHON_CLIENT_MEM_FRACTION of it, 0.75 unless set): '
          'a micro-batch found to fit under the cap may not fit here')


def find_batch_size(spec: str, dtype: str, size: int, args, tried=None) -> dict:
  """Largest micro-batch under the cap (or the device's memory), then the grad_accum_steps the
  recipe's batch needs and that step's memory; again with model.remat if that may help.
  `tried(row)`, if given, gets each compile's result as it is measured."""
  cap = args.mem_cap_gb * 2**30 if args.mem_cap_gb else None
  options = json.loads(args.compiler_options or '{}')
  import jax  # pylint: disable=import-outside-toplevel
  if note := cap_over_pool(args.mem_cap_gb, (jax.devices()[0].memory_stats() or {}).get(
      'bytes_limit')):  # (No memory_stats on a CPU.)
    print(f'  note: {note}', flush=True)

  def measure(batch: int, accum: int, remat: bool) -> dict:
    config = make_config(spec, batch, dtype, size, grad_accum_steps=accum, remat=remat,
                         scan_blocks=_on_off(args.scan_blocks))
    try:
      r = bench_jax(config, max(2, args.steps // 2), 1, cap, options, args.analysis_only)
      r['fits'] = not r['over_cap']
    except Exception as e:  # pylint: disable=broad-except
      if not is_oom(e):
        raise
      r = {'fits': False, 'program_bytes': None, 'error': str(e).splitlines()[0][:200]}
    finally:
      _release()
    r['loadavg'] = _load()
    speed = f', {r["img_s"]:.1f} img/s' if 'img_s' in r else ''
    print(f'  {spec} {dtype} {size}px batch {batch} accum {accum} remat {remat}: '
          f'{_fmt(r["program_bytes"] and r["program_bytes"] / 2**30, ".2f")} GiB{speed}, '
          f'{"fits" if r["fits"] else "does not fit"} (compile {_fmt(r.get("compile_s"))} s, '
          f'load {_fmt(r["loadavg"])})', flush=True)
    if tried:
      tried({'model': spec, 'dtype': dtype, 'image_size': size, 'batch': batch,
             'grad_accum_steps': accum, 'remat': remat, **r})
    return r

  recipe = args.recipe_batch or recipe_config(spec, size).train.batch_size
  search = {'start': args.find_start, 'quantum': args.batch_quantum}
  plans = [batch_fit.plan(measure, recipe, remat=False, hi=args.find_max, **search)]
  plain = plans[0]
  has_blocks = recipe_config(spec, size).model.name != 'simple_cnn'  # remat is per residual block
  if has_blocks and (args.remat == 'on' or (args.remat == 'auto' and plain['grad_accum_steps'] != 1)):
    # Remat needs less memory per example, so its search starts where the plain one stopped and
    # only goes as far as the recipe's batch (no accumulation needed).
    search['start'] = max(plain['largest_micro_batch'] or 1, 1)
    plans.append(batch_fit.plan(measure, recipe, remat=True, hi=max(recipe, search['start']),
                                **search))
  speeds = {int(t['batch']): t['img_s'] for t in plain['tried']
            if t['grad_accum_steps'] == 1 and t.get('img_s')}
  best = max(speeds, key=speeds.get) if speeds else None
  return {'model': spec, 'dtype': dtype, 'image_size': size, 'cap_bytes': cap,
          'analysis_only': args.analysis_only, 'largest_batch': plain['largest_micro_batch'],
          'hit_limit': plain['hit_limit'], 'best_batch': best, 'best_img_s': speeds.get(best),
          'plans': plans}


def _load() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def environment(with_torch: bool = True) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  env = {'jax': jax.__version__, 'backend': jax.default_backend(),
         'device': str(jax.devices()[0].device_kind), 'device_count': jax.device_count(),
         'host': platform.node(), 'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
         # CPU model, ISA, cores, Python, load: XLA:CPU's speed depends on them.
         'machine': hostinfo.machine()}
  try:
    if with_torch:  # Not imported otherwise: it would add seconds to first_step_s.
      import torch  # pylint: disable=import-outside-toplevel
      env['torch'] = torch.__version__
      env['torch_threads'] = torch.get_num_threads()
  except ImportError:
    pass
  return env


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
  p.add_argument('--image_size', default='',
                 help='comma list of model input sizes (default: the config\'s, 32 for bare ResNets)')
  p.add_argument('--frameworks', default='jax,torch', help='comma list: jax,torch')
  p.add_argument('--steps', type=int, default=10, help='timed steps (median reported)')
  p.add_argument('--repeat', type=int, default=1,
                 help='measure each row this many times (fresh compile each), alternating which '
                      'framework goes first on a CPU; the medians are reported with their range')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  p.add_argument('--torch_compile', default='auto', choices=('auto', 'on', 'off'),
                 help='torch.compile the model: auto = on GPU only')
  p.add_argument('--torch_compile_timeout_s', type=float, default=0,
                 help='when PyTorch compiles: run it in a child process killed after this many '
                      'seconds, then measure eager instead (the row records the fallback); '
                      '0 = no limit, in this process')
  p.add_argument('--grad_accum_steps', default='1',
                 help='comma list of train.grad_accum_steps: each batch split into this many '
                      'micro-batches (rows above 1 are JAX only: the PyTorch twin does not '
                      'accumulate)')
  p.add_argument('--find_batch_size', action='store_true',
                 help='per model/dtype/size: largest (micro-)batch that fits, the fastest one, and '
                      'the train.grad_accum_steps the recipe\'s batch needs (JAX)')
  p.add_argument('--find_start', type=int, default=32)
  p.add_argument('--find_max', type=int, default=4096)
  p.add_argument('--batch_quantum', type=int, default=16, help='bisection granularity')
  p.add_argument('--mem_cap_gb', type=float, default=0.0,
                 help='treat programs needing more than this (XLA memory analysis, GiB) as not '
                      'fitting: the memory JAX may use, not the card\'s size (JAX takes 75%% of a '
                      'GPU unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise: README, Small GPUs)')
  p.add_argument('--analysis_only', action='store_true',
                 help='compile only and read XLA\'s memory analysis: no state, no steps, no '
                      'PyTorch (needs --mem_cap_gb with --find_batch_size)')
  p.add_argument('--recipe_batch', type=int, default=0,
                 help='batch to split into micro-batches (default: the config\'s train.batch_size)')
  p.add_argument('--remat', default='auto', choices=('auto', 'off', 'on'),
                 help='also search with model.remat=True: auto = when the plain step needs '
                      'grad_accum_steps > 1')
  p.add_argument('--scan_blocks', default='config', choices=('config', 'off', 'on'),
                 help='model.scan_blocks for the JAX step: compile each stage\'s repeated block '
                      'once (config = the config\'s own value)')
  p.add_argument('--cache_dir', default='',
                 help='use JAX\'s persistent compilation cache here (as the trainer does) instead '
                      'of compiling fresh; first_step_s then shows a relaunch\'s start-up')
  p.add_argument('--compiler_options', default='',
                 help='JSON dict of XLA options for the JAX train step only, e.g. '
                      '\'{"xla_cpu_experimental_ynn_fusion_type": ""}\' (docs/benchmarks.md)')
  p.add_argument('--out', default='', help='write the results as JSON here')
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.find_batch_size and args.analysis_only and not args.mem_cap_gb:
    raise SystemExit('error: --find_batch_size --analysis_only needs --mem_cap_gb (nothing runs '
                     'out of memory when nothing runs)')
  for name, least in (('repeat', 1), ('steps', 1), ('warmup', 0)):
    if getattr(args, name) < least:
      raise SystemExit(f'error: --{name} must be at least {least}, got {getattr(args, name)}')
  bench_args.check(args, make_config, recipe_config, _csv,  # Before anything is measured.
                   defaults=vars(parse_args([])))
  import jax  # pylint: disable=import-outside-toplevel
  if args.cache_dir:
    from jax_cifar import xla_options  # pylint: disable=import-outside-toplevel
    jax.config.update('jax_compilation_cache_dir', args.cache_dir)
    xla_options.enable_compilation_cache()  # The trainer's settings for the cache.
  else:  # Compile times are part of the result: never read them from the persistent cache.
    jax.config.update('jax_enable_compilation_cache', False)
  with_torch = 'torch' in _csv(args.frameworks) and not (args.find_batch_size or args.analysis_only)
  result: dict[str, Any] = {'environment': environment(with_torch), 'args': vars(args), 'rows': [],
                            'find_batch_size': []}
  print(f'machine: {hostinfo.describe(result["environment"]["machine"])}; '
        f'{jax.default_backend()} device: {result["environment"]["device"]}', flush=True)
  sizes, dtypes = _csv(args.image_size, int), _csv(args.dtypes)
  for spec in _csv(args.models):
    for size in sizes or [recipe_config(spec, 32).model.image_size]:
      for dtype in dtypes:
        if args.find_batch_size:
          # Each compile's result is written as it comes: a search cut short by its time limit
          # had left no JSON at all (a review).
          r = find_batch_size(spec, dtype, size, args, tried=lambda row: (
              result.setdefault('find_batch_size_tried', []).append(row), _write(args.out, result)))
          result['find_batch_size'].append(r)
          fastest = ('' if args.analysis_only else
                     f', fastest batch {r["best_batch"]} ({_fmt(r["best_img_s"])} img/s)')
          print(f'{spec} {dtype} {size}px: largest batch {r["largest_batch"]}'
                f'{" (search limit)" if r["hit_limit"] else ""}{fastest}', flush=True)
          _write(args.out, result)
          continue
        for batch in _csv(args.batch, int):
          for accum in _csv(args.grad_accum_steps, int):
            row = run_repeated(spec, batch, dtype, size, args, grad_accum_steps=accum)
            result['rows'].append(row)
            print('\n'.join(table([row]).splitlines()[2:]), flush=True)
            _write(args.out, result)  # after every row: a run cut short keeps what it measured
  if result['rows']:
    print('\n' + table(result['rows']))
    if memory_footnote(result['rows']):
      print(memory_footnote(result['rows']))
  if result['find_batch_size']:
    print('\n' + batch_fit.table(result['find_batch_size']))
  if result['find_batch_size'] or args.analysis_only:
    result['memory_note'] = memory_note(jax.default_backend(), args.analysis_only)
    print(result['memory_note'])
  _write(args.out, result)
  errors = [r for r in result['rows'] if 'error' in r.get('jax', {}) or (  # (simple_cnn: no twin.)
      'error' in r.get('torch', {}) and 'no torchvision twin' not in r['torch']['error'])]
  return 1 if errors and len(errors) == len(result['rows']) else 0


if __name__ == '__main__':
  sys.exit(main())
