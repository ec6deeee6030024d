"""Measures OOD inference: images/s of the submission path, and peak RSS while streaming a full set.

  python scripts/measure_ood.py speed [--model smoke|resnet18] [--images 3000] [--tta_flip]
      img/s of the sharded, jitted prediction path (random weights: speed does not depend on them).
  python scripts/measure_ood.py rss --workdir runs/smoke [--config CONFIG] [--n 50000]
                                    [--tta none|flip|shifts] [--bn_adapt]
      writes 19 synthetic distortion files of N images (N=50,000 is the real 2.9 GB set) into a
      temp folder, runs `python -m jax_cifar.evaluate --ood_dir ... --submission ...` on them,
      samples its RSS, validates the CSV, and deletes the folder. evaluate reads the run through
      a view in that folder (its config and a link to its checkpoints), so the run's own
      eval_*.json and figures are never touched.
"""

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def speed(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from jax_cifar.configs import smoke  # pylint: disable=g-import-not-at-top
  from jax_cifar import optim, parallel, xla_options  # pylint: disable=g-import-not-at-top
  from jax_cifar.evaluation import inference
  from jax_cifar import state as state_lib  # pylint: disable=g-import-not-at-top

  xla_options.enable_compilation_cache()
  config = smoke.get_config()
  if args.model == 'resnet18':
    config.model.width = 64  # torchvision width, cifar stem, 32 px.
  mesh = parallel.make_mesh()
  tx, _ = optim.make_optimizer(config.optim, total_steps=1, steps_per_epoch=1)
  state, graphdef = state_lib.init_state(config, tx, mesh)
  fn = inference.make_predict(config, graphdef, mesh, tta_flip=args.tta_flip, labels_only=True)
  batch = parallel.eval_batch_size(config.train.eval_batch_size)
  predictor = inference.Predictor(state, mesh, batch, fn, fn)
  images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), np.uint8)
  predictor.run(images[:batch], 'warmup', labels_only=True)  # Compile.
  start = time.perf_counter()
  predictor.run(images, 'measure', labels_only=True)
  seconds = time.perf_counter() - start
  return {'model': f'{config.model.name} width {config.model.width} ({config.model.stem} stem)',
          'tta_flip': args.tta_flip, 'images': args.images, 'batch': batch,
          'images_per_sec': args.images / seconds, 'devices': jax.device_count(),
          'device': jax.devices()[0].device_kind}


def _write_set(folder: pathlib.Path, n: int) -> None:
  from jax_cifar.data import ood  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for i in range(ood.NUM_DISTORTIONS):
    array = np.lib.format.open_memmap(folder / ood.distortion_file(i), mode='w+', dtype=np.uint8,
                                      shape=(n, 32, 32, 3))
    for start in range(0, n, 5000):
      stop = min(n, start + 5000)
      array[start:stop] = rng.integers(0, 256, (stop - start, 32, 32, 3), np.uint8)
    array.flush()
    del array


def _status(pid: int) -> dict:
  fields = {}
  try:
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
      key, _, value = line.partition(':')
      if key in ('VmRSS', 'RssAnon', 'RssFile'):
        fields[key] = int(value.split()[0]) * 1024
  except OSError:
    pass
  return fields


def run_view(workdir: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
  """A run folder in `folder` that evaluate reads as `workdir` (config.json and metrics.jsonl
  copied, checkpoints/ linked) and writes its eval_*.json, figures and CSV into: evaluating the run
  itself had replaced its real eval_best.json with the numbers of random images (an audit)."""
  if not (workdir / 'checkpoints').is_dir():
    raise SystemExit(f'error: {workdir} holds no checkpoints/: give a training run\'s folder '
                     '(--workdir)')
  view = folder / workdir.name
  view.mkdir()
  for name in ('config.json', 'metrics.jsonl'):
    if (workdir / name).exists():
      shutil.copy2(workdir / name, view / name)
  (view / 'checkpoints').symlink_to(workdir / 'checkpoints', target_is_directory=True)
  return view


def rss(args) -> dict:
  from jax_cifar.evaluation import submission  # pylint: disable=g-import-not-at-top
  if args.n < 5 or args.n % 5:
    raise SystemExit(f'error: --n must be a positive multiple of 5 (one block per severity), '
                     f'got {args.n}')
  folder = pathlib.Path(tempfile.mkdtemp(prefix='ood_rss_', dir=args.tmp_dir or None))
  try:
    view = run_view(pathlib.Path(args.workdir), folder)
    t0 = time.perf_counter()
    _write_set(folder, args.n)
    on_disk = sum(p.stat().st_size for p in folder.glob('*.npy'))
    write_s = time.perf_counter() - t0
    csv_path = folder / 'submission.csv'
    cmd = [sys.executable, '-m', 'jax_cifar.evaluate', *(['--config', args.config] if args.config
                                                         else []),
           '--workdir', str(view), '--checkpoint', args.checkpoint, '--ood_dir', str(folder),
           '--submission', str(csv_path), '--tta', args.tta,
           *(['--bn_adapt'] if args.bn_adapt else [])]
    t0 = time.perf_counter()
    log = open(folder / 'evaluate.log', 'w')  # pylint: disable=consider-using-with
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    peaks = {}
    while proc.poll() is None:
      for key, value in _status(proc.pid).items():
        peaks[key] = max(peaks.get(key, 0), value)
      time.sleep(0.2)
    seconds = time.perf_counter() - t0
    out = proc.stdout.read()
    log.close()
    if proc.returncode:
      tail = (folder / 'evaluate.log').read_text()[-2000:]
      raise SystemExit(f'evaluate failed ({proc.returncode}): {tail}')
    verdict = submission.check_submission(csv_path, folder)
    images = 19 * args.n
    return {'tta': args.tta, 'bn_adapt': args.bn_adapt,
            'set_bytes_on_disk': on_disk, 'set_write_s': write_s, 'images': images,
            'evaluate_wall_s': seconds, 'ood_images_per_sec_incl_startup': images / seconds,
            # (ru_maxrss is in KiB on Linux, in bytes on macOS: a portability review.)
            'peak_rss_bytes_ru_maxrss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                        * (1 if sys.platform == 'darwin' else 1024),
            'peak_sampled': peaks, 'csv_check': verdict,
            'evaluate_last_line': json.loads(out.strip().splitlines()[-1])}
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='what', required=True)
  p = sub.add_parser('speed')
  p.add_argument('--model', default='smoke', choices=('smoke', 'resnet18'))
  p.add_argument('--images', type=int, default=3000)
  p.add_argument('--tta_flip', action='store_true')
  p = sub.add_parser('rss')
  p.add_argument('--config', default='',
                 help="rss: evaluate's --config (default: the run's own config.json)")
  p.add_argument('--workdir', default='runs/smoke')
  p.add_argument('--checkpoint', default='best')
  p.add_argument('--n', type=int, default=50_000, help='images per distortion file')
  p.add_argument('--tmp_dir', default='', help='where to put the temporary set')
  p.add_argument('--tta', default='none', choices=('none', 'flip', 'shifts'),
                 help="evaluate's --tta")
  p.add_argument('--bn_adapt', action='store_true', help="evaluate's --bn_adapt")
  args = parser.parse_args()
  if args.what == 'speed' and args.images < 1:
    parser.error(f'--images must be at least 1, got {args.images}')
  # The evaluate child runs with cwd=ROOT: paths are the caller's (a config file not found there
  # is one of the repository's, as configs/smoke.py).
  for name in ('config', 'workdir', 'tmp_dir', 'checkpoint'):
    value = getattr(args, name, '')
    if value and (name not in ('config', 'checkpoint') or os.path.exists(value)):
      setattr(args, name, os.path.abspath(value))
  print(json.dumps(speed(args) if args.what == 'speed' else rss(args), indent=2), flush=True)


if __name__ == '__main__':
  main()
