"""Measures on-device augmentation throughput (images/s) of `augment_batch` for each policy.

  python scripts/benchmark_augment.py [--batch_size 128] [--runs 20] [--policies none,autoaugment_cifar10]
      [--robust augmix,rrc,color_jitter,blur,jpeg,noise,all] [--train_models smoke,resnet18]

Jitted, on random uint8 32x32 images, after a warm-up call; prints the median over `--runs` calls
(each with a new key) and the compile time, one line per policy and per robustness augmentation
(`--robust`: each at probability 1 on top of crop + flip; `all`: every one on), then the whole
train step's img/s
of `--train_models` (scripts/benchmark.py's timing of the trainer's step, at the same batch) so
the two can be read side by side, then a JSON summary line.
"""

import argparse
import json
import time

import jax
import numpy as np

from jax_cifar.configs import default  # pylint: disable=wrong-import-position
from jax_cifar.augment import pipeline as augment  # pylint: disable=wrong-import-position
from jax_cifar.augment.autoaugment import POLICIES  # pylint: disable=wrong-import-position
ROBUST = {  # --robust name -> overrides of the `augment` config
    'augmix': dict(augmix=True), 'rrc': dict(rrc_prob=1.0),
    'color_jitter': dict(color_jitter_prob=1.0), 'blur': dict(blur_prob=1.0),
    'jpeg': dict(jpeg_prob=1.0), 'noise': dict(noise_prob=1.0),
    'all': dict(augmix=True, rrc_prob=1.0, color_jitter_prob=1.0, blur_prob=1.0, jpeg_prob=1.0,
                noise_prob=1.0),
}


def benchmark(policy: str, batch_size: int, runs: int, image_size: int = 32,
              **overrides) -> dict[str, float]:
  """Median images/s of the jitted default recipe (crop 4, flip) plus `policy` and `overrides`."""
  cfg = default.get_config().augment
  cfg.policy = policy
  cfg.update(overrides)
  images = jax.device_put(np.random.default_rng(0).integers(
      0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8))
  step = jax.jit(lambda k, x: augment.augment_batch(k, x, cfg))
  start = time.perf_counter()
  compiled = step.lower(jax.random.key(0), images).compile()
  compile_s = time.perf_counter() - start
  compiled(jax.random.key(0), images).block_until_ready()  # warm-up
  times = []
  for i in range(runs):
    start = time.perf_counter()
    compiled(jax.random.key(i + 1), images).block_until_ready()
    times.append(time.perf_counter() - start)
  return {'images_per_sec': batch_size / float(np.median(times)), 'compile_s': compile_s}


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Every value before anything is measured: a mistyped --robust or --train_models had failed
  with a traceback after the policies were measured, losing the summary, and --runs 0 printed
  nan img/s as invalid JSON (an audit)."""
  if args.runs < 1 or args.batch_size < 1:
    parser.error(f'--runs and --batch_size must be at least 1, got {args.runs} and {args.batch_size}')
  for flag, given, known in (('--policies', args.policies, POLICIES),
                             ('--robust', args.robust, tuple(ROBUST))):
    unknown = [n for n in given.split(',') if n and n not in known]
    if unknown:
      parser.error(f'{flag}: unknown {", ".join(unknown)} (known: {", ".join(known)})')
  if args.train_models:
    import benchmark as train_benchmark  # pylint: disable=g-import-not-at-top
    for spec in args.train_models.split(','):
      try:
        train_benchmark.make_config(spec, args.batch_size, 'float32', 32)
      except ValueError as e:
        parser.error(f'--train_models: {e}')


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--runs', type=int, default=20)
  parser.add_argument('--policies', default=','.join(POLICIES))
  parser.add_argument('--robust', default='',
                      help=f"comma-separated of {','.join(ROBUST)} ('' = none)")
  parser.add_argument('--train_models', default='smoke,resnet18',
                      help="model specs of scripts/benchmark.py to time the full train step for ('' = none)")
  args = parser.parse_args(argv)
  check_args(parser, args)
  device = jax.devices()[0]
  import hostinfo  # pylint: disable=g-import-not-at-top  (scripts/, beside this file)
  machine = hostinfo.machine()
  print(f'machine: {hostinfo.describe(machine)}')
  print(f'device: {device.platform} {device.device_kind} x{jax.device_count()}, '
        f'batch {args.batch_size}, 32x32, median of {args.runs} runs')
  results = {}
  for policy in args.policies.split(','):
    r = results[policy] = benchmark(policy, args.batch_size, args.runs)
    print(f'{policy:22s} {r["images_per_sec"]:12,.0f} img/s   (compile {r["compile_s"]:.1f} s)')
  for name in filter(None, args.robust.split(',')):
    r = results[name] = benchmark('none', args.batch_size, args.runs, **ROBUST[name])
    print(f'{name:22s} {r["images_per_sec"]:12,.0f} img/s   (compile {r["compile_s"]:.1f} s)')
  train = {}
  if args.train_models:
    # scripts/benchmark.py, under another name: `benchmark` is this module's function.
    import benchmark as train_benchmark  # pylint: disable=g-import-not-at-top
    for spec in args.train_models.split(','):
      config = train_benchmark.make_config(spec, args.batch_size, 'float32', 32)
      r = train_benchmark.bench_jax(config, steps=3, warmup=1)
      train[spec] = r.get('img_s')
      print(f'train step {spec:11s} {train[spec] or 0:12,.0f} img/s   (whole step: augmentation, '
            f'forward, backward, update)')
  print(json.dumps({'device': device.device_kind, 'machine': machine, 'batch_size': args.batch_size,
                    **{p: round(r['images_per_sec'], 1) for p, r in results.items()},
                    **{f'train_step_{m}': v and round(v, 1) for m, v in train.items()}}))


if __name__ == '__main__':
  main()
