"""Pretrained vs randomly initialised ResNet-50 on a CIFAR-100 subset, same budget, real trainer.

  python scripts/transfer_experiment.py --weights weights/resnet50 --out runs/transfer
  python scripts/transfer_experiment.py --state_dict r50.pth --out runs/transfer  # converts first

Runs `python -m jax_cifar.train --config configs/resnet50_transfer.py` twice, identical except for
`--config.model.pretrained`, then prints (and writes OUT/results.json) validation accuracy, steps,
image size and wall time of both. Defaults are sized for a small CPU (see docs/transfer.md). The
trainer compiles its steps with the CPU XLA options itself (xla_options.step_compiler_options;
JAX_CIFAR_XLA_DEFAULTS=1 turns them off), so this script sets no process-wide XLA_FLAGS.

The same command again resumes: a finished arm is kept (OUT/results/ARM.json), an interrupted one
resumes from its last checkpoint, and `--only` invocations add up in OUT/results.json. Other
settings in the same --out are refused, naming them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'scripts'))
import child  # noqa: E402  pylint: disable=wrong-import-position
import out_folder  # noqa: E402  pylint: disable=wrong-import-position
CONFIG = ROOT / 'configs' / 'resnet50_transfer.py'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--weights', help='converted checkpoint (scripts/convert_torchvision_weights.py)')
  src.add_argument('--state_dict', help='torchvision resnet50 .pth; converted into OUT/weights')
  p.add_argument('--out', required=True, help='folder for both runs and results.json')
  p.add_argument('--image_size', type=int, default=64)
  p.add_argument('--train_limit', type=int, default=2000, help='class-balanced training images')
  p.add_argument('--eval_limit', type=int, default=1000, help='class-balanced validation images')
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--num_epochs', type=float, default=1.5)
  p.add_argument('--only', choices=('pretrained', 'random'), help='run just one arm')
  # argparse will not give a positional an argument starting with '--': take them as leftovers.
  args, rest = p.parse_known_args(argv)
  unknown = [a for a in rest if not a.startswith('--config.')]
  if unknown:
    p.error(f'unrecognized arguments: {" ".join(unknown)} (extra flags for both runs are '
            '--config.KEY=VALUE)')
  for flag in rest:  # Its "val" numbers would be the test split's (a review).
    key, _, value = flag.partition('=')
    if key == '--config.data.val_fraction' and _number(value) == 0:
      p.error(f'{flag}: the arms are compared on validation images; with no hold-out the trainer '
              'validates on the TEST split')
  args.overrides = rest
  for name in ('weights', 'state_dict', 'out'):  # The runs' cwd is the repository root.
    if getattr(args, name):
      setattr(args, name, os.path.abspath(getattr(args, name)))
  return args


def _number(text: str) -> float | None:
  try:
    return float(text)
  except ValueError:
    return None  # The trainer's config parser names a bad value.


def _source(path: str) -> dict:
  """The file's path and content hash: a copy or a touched file is the same source."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return {'state_dict': path, 'sha256': digest.hexdigest()}


def convert(state_dict: str, out: pathlib.Path) -> pathlib.Path:
  """OUT/weights/resnet50 converted from `state_dict`, once. A conversion of another file there
  is refused: it had been fine-tuned instead, without a word (an audit)."""
  if not os.path.isfile(state_dict):
    raise SystemExit(f'error: --state_dict {state_dict}: no such file')
  target, record = out / 'weights' / 'resnet50', out / 'weights' / 'source.json'
  if target.exists():
    source = _source(state_dict)
    if not record.exists():  # Converted by a version that kept no record: taken as it is.
      record.write_text(json.dumps(source) + '\n')
    before = json.loads(record.read_text())
    if before.get('sha256') != source['sha256']:
      raise SystemExit(f'error: {target} was converted from {before.get("state_dict")}, whose '
                       f'content differs from {state_dict}: use another --out (or remove that '
                       'folder)')
    return target
  run('convert', [
      sys.executable, str(ROOT / 'scripts' / 'convert_torchvision_weights.py'), '--arch',
      'resnet50', '--state_dict', state_dict, '--output', str(target)], log=out / 'convert.log')
  record.write_text(json.dumps(_source(state_dict)) + '\n')
  return target


def run(name: str, cmd: list[str], log: pathlib.Path) -> None:
  """Runs `cmd` (child.run: Ctrl-C reaches it once, so the trainer saves); a failure or an
  interruption is one line naming the log and what to do (it had been a CalledProcessError
  traceback, the cause only in the log)."""
  code, stopped = child.run(cmd, log, ROOT)
  if stopped or code in child.INTERRUPTED:
    raise SystemExit(f'{name}: interrupted (exit {code}); the same command resumes it. Log: {log}')
  if code:
    raise SystemExit(f'error: {name} failed (exit {code}): {child.last_line(log)} (whole log: {log})')


def run_arm(name: str, pretrained: str, args: argparse.Namespace) -> dict:
  """One training run; returns its final validation metrics, steps and wall time."""
  workdir = pathlib.Path(args.out) / name
  flags = [f'--config.model.pretrained={pretrained}', f'--config.model.image_size={args.image_size}',
           f'--config.data.train_limit={args.train_limit}',
           f'--config.data.eval_limit={args.eval_limit}',
           f'--config.train.batch_size={args.batch_size}',
           f'--config.train.num_epochs={args.num_epochs}',
           '--config.train.eval_every_epochs=1000',  # Evaluate once, at the end.
           '--config.train.eval_batch_size=100', '--config.train.log_every_steps=10',
           *args.overrides]
  cmd = [sys.executable, '-m', 'jax_cifar.train', f'--config={CONFIG}', f'--workdir={workdir}', *flags]
  print(f'[{name}]', ' '.join(cmd), flush=True)
  spent = pathlib.Path(args.out) / 'results' / f'{name}.seconds'  # Over every invocation.
  spent.parent.mkdir(parents=True, exist_ok=True)
  t = time.monotonic()
  try:
    run(name, cmd, pathlib.Path(args.out) / f'{name}.log')  # Resumes an interrupted arm.
  finally:
    before = float(spent.read_text()) if spent.exists() else 0.0
    spent.write_text(f'{before + time.monotonic() - t:.1f}\n')
  wall = float(spent.read_text())
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  val = [r for r in rows if 'val_accuracy' in r][-1]
  train = [r for r in rows if 'train_loss' in r]
  return {'arm': name, 'pretrained': pretrained, 'steps': val['step'],
          'image_size': args.image_size, 'batch_size': args.batch_size,
          'train_images': args.train_limit, 'val_images': args.eval_limit,
          'val_accuracy': val['val_accuracy'], 'val_top5_accuracy': val.get('val_top5_accuracy'),
          'val_loss': val['val_loss'], 'final_train_loss': train[-1]['train_loss'] if train else None,
          'wall_s': round(wall, 1), 'settings': settings(args, pretrained)}


def check_settings(args: argparse.Namespace, out: pathlib.Path) -> None:
  """What both arms share, one setting per --out (an interrupted arm would have resumed under other
  values, and `--only` arms of different settings had sat side by side in results.json)."""
  now = {k: v for k, v in settings(args, '').items() if k != 'pretrained'}
  now['weights'] = args.weights or ''  # --state_dict: OUT/weights/source.json says which.
  out_folder.check_settings(out, now)


def settings(args: argparse.Namespace, pretrained: str) -> dict:
  """What makes an arm's numbers what they are (a finished arm is kept only for the same)."""
  return {'pretrained': pretrained, 'image_size': args.image_size, 'train_limit': args.train_limit,
          'eval_limit': args.eval_limit, 'batch_size': args.batch_size,
          'num_epochs': args.num_epochs, 'overrides': args.overrides}


def arm_result(name: str, pretrained: str, args: argparse.Namespace) -> dict:
  """The arm's record: kept from an earlier invocation (OUT/settings.json holds them to the same
  settings), else trained (or resumed) now and written at once, so a later failure loses no
  finished arm."""
  path = pathlib.Path(args.out) / 'results' / f'{name}.json'
  if path.exists():
    print(f'[{name}] kept from {path}', flush=True)
    return json.loads(path.read_text())
  result = run_arm(name, pretrained, args)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2) + '\n')
  return result


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  check_settings(args, out)
  weights = str(convert(args.state_dict, out) if args.state_dict else pathlib.Path(args.weights))
  arms = [('pretrained', os.path.abspath(weights)), ('random', '')]
  for n, w in arms:
    if args.only in (None, n):
      arm_result(n, w, args)
  results = [json.loads((out / 'results' / f'{n}.json').read_text()) for n, _ in arms
             if (out / 'results' / f'{n}.json').exists()]  # --only invocations add up.
  (out / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
  print('| arm | val acc | val top-5 | steps | image size | wall (s) |')
  print('| --- | --- | --- | --- | --- | --- |')
  for r in results:
    print(f"| {r['arm']} | {r['val_accuracy']:.3f} | {r['val_top5_accuracy']:.3f} | {r['steps']} | "
          f"{r['image_size']} | {r['wall_s']} |")
  return 0


if __name__ == '__main__':
  sys.exit(main())
