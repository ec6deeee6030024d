"""PyTorch's twin of the trainer's step for scripts/benchmark.py: torchvision's ResNet, AdamW,
label smoothing, global-norm clipping, bf16 autocast, channels_last and `torch.compile` on GPU."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types


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
    chain = [c for c in (e, e.__cause__, e.__context__) if c is not None]  # inductor wraps
    if not use_compile or any(isinstance(c, torch.OutOfMemoryError) or 'out of memory' in str(c)
                              for c in chain):  # else retry eager
      raise
    # compile_s is then the eager first step's; the failed try is compile_attempt_s, as in
    # bench_torch_limited.
    out.update(compiled=False, compile_error=str(e).splitlines()[0][:200],
               compile_attempt_s=time.perf_counter() - t0)
    fwd = model
    t0 = time.perf_counter()
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


def will_compile(compile_mode: str) -> bool:
  """Whether bench_torch would torch.compile the model (auto: on a GPU only)."""
  import torch  # pylint: disable=import-outside-toplevel
  return compile_mode == 'on' or (compile_mode == 'auto' and torch.cuda.is_available())


# What bench_torch reads of a config; the child process gets these (ConfigDict does not pickle
# into a fresh interpreter without the repository's imports).
_KEYS = {'model': ('name', 'stem', 'width', 'num_classes', 'image_size', 'dtype'),
         'train': ('batch_size',), 'optim': ('lr', 'weight_decay', 'label_smoothing',
                                             'grad_clip_norm')}


def run_own_group(cmd: list[str], timeout_s: float, **popen_kw) -> tuple[int | None, bool]:
  """(exit code or None, timed out) of `cmd`, run in a session of its own whose whole group is
  killed after timeout_s seconds, and also when this process is stopped (SIGTERM, Ctrl-C) while
  it runs: gpu_check.sh's time limit had stopped the benchmark and left the compile running. The
  handler is in place before the child exists (SIGTERM is held back while it is started)."""
  def stopped(signum, _):
    raise SystemExit(128 + signum)

  previous = signal.signal(signal.SIGTERM, stopped)
  proc = None
  try:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
      proc = subprocess.Popen(cmd, start_new_session=True, **popen_kw)
    finally:
      signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # A held one lands here.
    try:
      return proc.wait(timeout_s), False
    except subprocess.TimeoutExpired:
      return None, True
  finally:
    if proc is not None and proc.poll() is None:  # Timed out, or this process is being stopped.
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      proc.wait()
    signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def bench_torch_limited(config, steps: int, warmup: int, compile_mode: str,
                        timeout_s: float) -> dict:
  """bench_torch with torch.compile in a child process that is killed after timeout_s seconds
  (imports, compilation and the timed steps together). If the child times out or fails, the
  step runs eager here instead and the result says so: compiled False, compile_error (why),
  compile_timed_out, compile_attempt_s (the seconds the compiled try cost)."""
  payload = {sec: {k: getattr(getattr(config, sec), k) for k in keys}
             for sec, keys in _KEYS.items()}
  payload.update(steps=steps, warmup=warmup, compile_mode=compile_mode)
  with tempfile.TemporaryDirectory() as tmp:
    out_path, err_path = pathlib.Path(tmp) / 'out.json', pathlib.Path(tmp) / 'stderr.log'
    t0 = time.perf_counter()
    with open(err_path, 'w') as err:  # Its own session: the kill reaches inductor's workers too.
      rc, timed_out = run_own_group([sys.executable, __file__, json.dumps(payload), str(out_path)],
                                    timeout_s, stdout=err, stderr=subprocess.STDOUT)
    attempt_s = time.perf_counter() - t0
    if not timed_out and rc == 0 and out_path.exists():
      return {**json.loads(out_path.read_text()), 'compile_timeout_s': timeout_s}
    tail = [l for l in err_path.read_text(errors='replace').splitlines() if l.strip()][-1:]
  why = (f'torch.compile run timed out after {timeout_s:.0f}s' if timed_out else
         f'torch.compile run failed (exit {rc}: {tail[0][:200] if tail else "no output"})')
  print(f'  {why}: falling back to eager', file=sys.stderr, flush=True)
  out = bench_torch(config, steps, warmup, 'off')
  out.update(compiled=False, compile_error=f'{why}; fell back to eager',
             compile_timed_out=timed_out, compile_attempt_s=attempt_s,
             compile_timeout_s=timeout_s)
  return out


def _child(payload: str, out_path: str) -> None:
  """bench_torch_limited's child: one bench_torch, its result written as JSON."""
  p = json.loads(payload)
  config = types.SimpleNamespace(**{sec: types.SimpleNamespace(**p[sec]) for sec in _KEYS})
  out = bench_torch(config, p['steps'], p['warmup'], p['compile_mode'])
  pathlib.Path(out_path).write_text(json.dumps(out))


if __name__ == '__main__':
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # (Held back while run_own_group started it.)
  _child(*sys.argv[1:3])
