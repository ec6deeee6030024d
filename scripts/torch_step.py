"""PyTorch's twin of the trainer's step for scripts/benchmark.py: torchvision's ResNet, AdamW,
label smoothing, global-norm clipping, bf16 autocast, channels_last and `torch.compile` on GPU."""

from __future__ import annotations

import statistics
import time


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
