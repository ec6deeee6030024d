"""The trainer's own JAX train step, compiled for a config and timed, or only analysed.

`state.init_state` + `trainer.compile_train_step` on a synthetic uint8 batch (on-device
augmentation is part of the step); scripts/benchmark.py drives it.
"""

from __future__ import annotations

import re
import statistics
import time

try:  # Process start, for the time to the first step (a relaunch with a warm compilation cache).
  import psutil  # pylint: disable=import-error
  PROCESS_START = psutil.Process().create_time()
except ImportError:
  PROCESS_START = time.time()

def is_oom(err: BaseException) -> bool:
  """Whether an error is the device (or --mem_cap_gb) running out of memory."""
  text = f'{type(err).__name__}: {err}'
  return any(s in text for s in ('RESOURCE_EXHAUSTED', 'Out of memory', 'out of memory', 'OOM'))


def _memory_analysis(compiled) -> dict:
  """XLA's memory analysis of a compiled program; program_bytes = temp + arguments + outputs, less
  the outputs that reuse donated argument buffers (the train state): what the step needs at once."""
  try:
    m = compiled.memory_analysis()
    parts = {k: int(getattr(m, f'{k}_size_in_bytes')) for k in ('temp', 'argument', 'output', 'alias')}
  except Exception:  # pylint: disable=broad-except
    return {'program_bytes': None}
  return {'program_bytes': parts['temp'] + parts['argument'] + parts['output'] - parts['alias'],
          'memory_parts': parts}


# Dense bf16 peak of the accelerators MFU is reported for (vendor datasheets). SXM parts only:
# PCIe / NVL variants of the same name have lower peaks and get no MFU.
PEAK_BF16_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}


def peak_bf16_flops(device_kind: str) -> float | None:
  """One device's dense bf16 peak from its device_kind ('NVIDIA A100-SXM4-80GB', 'NVIDIA H200');
  None for PCIe / NVL parts and anything not in the table."""
  if re.search(r'pcie|nvl', device_kind, re.IGNORECASE):
    return None
  return next((v for k, v in PEAK_BF16_FLOPS.items() if re.search(rf'\b{k}\b', device_kind)), None)


def mfu(step_flops: float, step_s: float, device_kind: str, devices: int) -> float | None:
  """Model FLOP utilisation: step_flops is the whole (global) step's count, so the peak is that
  of every device the step ran on."""
  peak = peak_bf16_flops(device_kind)
  return step_flops / step_s / (devices * peak) if peak and step_flops and step_s else None


def own_peak(before: int | None, after: int | None) -> int | None:
  """A run's peak device memory from the process-wide peak before and after it: None when an
  earlier run in the process had already reached it (this run's own peak is then unknown)."""
  return after if after and not (before and after <= before) else None


def _flops(stage) -> float | None:
  try:
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops'])
  except Exception:  # pylint: disable=broad-except
    return None


def step_flops(lowered, compiled) -> tuple[float | None, str | None]:
  """(XLA's FLOP count of the step, where it came from). The lowered (unoptimised) program comes
  first: after compilation for a GPU the convolutions are cuDNN custom calls that XLA's cost
  analysis does not count (ResNet-50 on an H200: 1/50 of the true count)."""
  for source, stage in (('lowered', lowered), ('compiled', compiled)):
    flops = _flops(stage)
    if flops:
      return flops, source
  return None, None


def compile_jax(config, compiler_options: dict | None = None, abstract: bool = False):
  """(compiled trainer step, state, batch, info); abstract=True builds shapes only (no weights,
  no data), enough for XLA's memory analysis of models too large to run here. Full garbage
  collections are deferred meanwhile, as a command's launch does (jax_cifar/starting.py)."""
  from jax_cifar import starting  # pylint: disable=import-outside-toplevel
  starting.defer_full_collections()
  try:
    return _compile_jax(config, compiler_options, abstract)
  finally:
    starting.collect_as_usual()


def _compile_jax(config, compiler_options, abstract):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax_cifar import optim, parallel  # pylint: disable=import-outside-toplevel
  from jax_cifar.training import trainer
  from jax_cifar import state as state_lib  # pylint: disable=import-outside-toplevel

  batch = config.train.batch_size
  mesh = parallel.make_mesh()
  parallel.check_batch_size(batch, 'batch')
  tx, schedule = optim.make_optimizer(config.optim, total_steps=10_000, steps_per_epoch=100)
  t0 = time.perf_counter()
  if abstract:
    state, graphdef = state_lib.abstract_state(config, tx, mesh)  # One trace of the model.
    data = {'image': jax.ShapeDtypeStruct((batch, 32, 32, 3), np.uint8),
            'label': jax.ShapeDtypeStruct((batch,), np.int32)}
  else:
    state, graphdef = state_lib.init_state(config, tx, mesh)
    jax.block_until_ready(state)
    rng = np.random.default_rng(0)
    host = {'image': rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
            'label': rng.integers(0, config.model.num_classes, batch).astype(np.int32)}
    data = parallel.to_global(host, parallel.batch_sharded(mesh))
  init_s = time.perf_counter() - t0
  # The trainer's step: the state as a flat list of arrays between steps (its host time per
  # step is the trainer's; see trainer.compile_train_step).
  treedef = jax.tree.structure(state)
  step = trainer.compile_train_step(config, graphdef, tx, schedule, mesh, treedef)
  state = jax.tree.leaves(state)
  t0 = time.perf_counter()
  lowered = step.lower(state, data)
  compiled = lowered.compile(compiler_options or None)
  info = {'compile_s': time.perf_counter() - t0, 'init_s': init_s,
          **_memory_analysis(compiled)}
  info['step_flops'], info['flops_source'] = step_flops(lowered, compiled)
  if config.train.get('grad_accum_steps', 1) > 1 or config.model.get('scan_blocks', False):
    # XLA's cost analysis counts a loop's body once: micro-batches and scanned blocks would be
    # undercounted (4x for 4 micro-batches; a review), so TFLOP/s and MFU are left out.
    info['step_flops'], info['flops_source'] = None, 'not counted: XLA counts a loop body once'
  return compiled, state, data, info


_FIRST_STEP = {'done': False}


def bench_jax(config, steps: int, warmup: int, mem_cap: float | None = None,
              compiler_options: dict | None = None, analysis_only: bool = False) -> dict:
  """img/s (median of per-step times), compile seconds and memory of the trainer's train step;
  with analysis_only, or a program larger than mem_cap bytes, compile seconds, FLOPs and XLA's
  memory analysis only (nothing runs)."""
  import jax  # pylint: disable=import-outside-toplevel
  batch = config.train.batch_size
  compiled, state, data, out = compile_jax(config, compiler_options, abstract=analysis_only)
  out['over_cap'] = bool(mem_cap and out['program_bytes'] and out['program_bytes'] > mem_cap)
  if analysis_only or out['over_cap']:  # A program over the cap is not run.
    return out
  # The device's peak is the process's since it started (jax has no reset): a row that does not
  # raise it reports no peak of its own (XLA's program_bytes still says what it needs).
  peak_before = (jax.devices()[0].memory_stats() or {}).get('peak_bytes_in_use')
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    if not _FIRST_STEP['done']:  # Process start -> first step done: imports, init, compile, step.
      _FIRST_STEP['done'] = True
      out['first_step_s'] = time.time() - PROCESS_START
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  loss = float(metrics['train_loss'])
  stats = jax.devices()[0].memory_stats() or {}
  out.update(step_ms=1e3 * statistics.median(times), img_s=batch / statistics.median(times),
             loss=loss, peak_bytes=own_peak(peak_before, stats.get('peak_bytes_in_use')))
  if out['step_flops']:  # XLA's count of the whole step (augmentation, model, optimizer)
    out['tflop_s'] = out['step_flops'] / statistics.median(times) / 1e12
    if config.model.dtype == 'bfloat16':
      out['mfu'] = mfu(out['step_flops'], statistics.median(times), jax.devices()[0].device_kind,
                       jax.device_count())
  del state, compiled, data
  return out
