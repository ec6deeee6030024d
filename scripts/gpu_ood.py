"""configs/ood_best.py end to end on one GPU, within a time budget (issue #12's GPU proof).

Trains the recipe from converted ImageNet ResNet-50 weights on a full cifar-100-python folder,
builds labelled 19 x 5 OOD sets with `jax_cifar.corrupt` (CPU processes, while the GPU trains):
from the validation hold-out (`--split val`, where test-time tools and recipes are compared) and
from the test split (reported), then evaluates the chosen weights (EMA or raw, picked on
validation) with each test-time tool on each set in one process, so each program compiles once:
none, shifts, shifts + bn_adapt, bn_adapt, flip, tent, shifts + tent, and shifts (+ bn_adapt) with
the views' log-probabilities averaged (shifts_logp; --tools chooses); then,
time permitting, plain predictions over
the full 950,000-image set (the Kaggle-sized submission and its img/s). Rows are named
TOOL (test set), TOOL@val (validation set) and none@full; 'clean' (clean accuracy only) comes
first when the small OOD sets are not ready when training ends. The full set is waited for only
after every other evaluation, so a run cut short still has its clean and OOD numbers.

Two runs may share one GPU (--ood_from: a second run waits for the first run's OOD sets, the full
one included, instead of making its own; XLA_PYTHON_CLIENT_MEM_FRACTION splits the memory);
scripts/gpu_pair.sh starts such a pair.

Deadlines, in seconds from this script's start: training gets SIGTERM at --train_deadline_s (it
saves a checkpoint and exits; the steps it reached are reported), and no evaluation starts that
its projected time would carry past --deadline_s. A device call lasts at most 600 s: keep
--deadline_s below it, less the call's other work. Writes --work/gpu_ood.json and --json_out
(default $OUT/gpu_ood.json when $OUT is set, so a device call brings it back) after every phase,
the plot beside it, and prints a table.

  python3 scripts/gpu_ood.py --data DIR --weights DIR --work DIR [--small]
  # DIR of --data holds cifar-100-python/; --weights is a converted checkpoint
  # (scripts/convert_torchvision_weights.py). --small: a CPU dry run of the same logic.
  python3 scripts/gpu_ood.py replot WORK/gpu_ood.json OUT.png   # the plot and table again
  # (of a JSON holding several runs under their names: OUT_NAME.png each, OUT.png all of them)
"""

import argparse
import functools
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'scripts'))
from gpu_ood_report import plot, plot_runs, table  # pylint: disable=wrong-import-position
from gpu_ood_sets import (  # pylint: disable=wrong-import-position
    OOD_FOLDERS, T0, log, merge_corrupt, start_corrupt, stop_jobs, wait_for_set)
from jax_cifar import tracking  # pylint: disable=wrong-import-position
from jax_cifar.data import ood  # pylint: disable=wrong-import-position
from jax_cifar.evaluation import figures  # pylint: disable=wrong-import-position

# name: (--tta, --bn_adapt, --tent, --tta_average). The default order ends with Tent and the
# log-probability average of the views (docs/robustness.md, "Averaging the views"), measured last.
TOOLS = {'none': ('none', False, False, 'probs'), 'shifts': ('shifts', False, False, 'probs'),
         'shifts+bn_adapt': ('shifts', True, False, 'probs'),
         'bn_adapt': ('none', True, False, 'probs'), 'flip': ('flip', False, False, 'probs'),
         'tent': ('none', True, True, 'probs'), 'shifts+tent': ('shifts', True, True, 'probs'),
         'shifts_logp': ('shifts', False, False, 'log_probs'),
         'shifts_logp+bn_adapt': ('shifts', True, False, 'log_probs')}
VIEWS = {'none': 1, 'flip': 2, 'shifts': 18}
TENT_VIEWS = 3  # One Tent pass (forward + backward) costs about three forward passes.



def train(args, run: pathlib.Path, overrides: list[str]) -> dict:
  cmd = [sys.executable, '-m', 'jax_cifar.train', '--config', 'configs/ood_best.py', '--workdir',
         str(run), *overrides]
  t = time.monotonic()
  with open(run.parent / 'train.log', 'w') as out:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    stopped, last_print = None, 0.0
    while proc.poll() is None:
      time.sleep(2)
      if stopped is None and time.monotonic() - T0 > args.train_deadline_s:
        log('training deadline reached: SIGTERM (the trainer saves and exits)')
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
      elif stopped is not None and time.monotonic() - stopped > 120:  # Hung: evaluation first.
        log('the trainer did not exit within 120 s of SIGTERM: SIGKILL')
        proc.kill()
      if time.monotonic() - last_print > 30:
        rows = [r for r in tracking.read_metrics(run) if 'train_loss' in r]
        if rows:
          r = rows[-1]
          log(f"step {r['step']} train_loss {r['train_loss']:.3f} "
              f"{r.get('images_per_sec', 0):.0f} img/s")
        last_print = time.monotonic()
    rc = proc.wait()
  rows = tracking.read_metrics(run)
  vals = [r for r in rows if 'val_accuracy' in r]
  ips = [r['images_per_sec'] for r in rows if 'images_per_sec' in r]
  result = {'rc': rc, 'stopped_by_deadline': stopped is not None, 'seconds': time.monotonic() - t,
            'step': max([r['step'] for r in rows], default=0),
            # After the first logged rate, whose window holds the compile (epochs_that_fit drops
            # it too).
            'images_per_sec_median': statistics.median(ips[1:] or ips) if ips else None,
            'val': vals[-1] if vals else None}
  log(f"training rc {rc}, step {result['step']}, {result['seconds']:.0f}s, "
      f"median {result['images_per_sec_median']} img/s, last val {result['val']}")
  if rc not in (0, 75):
    print((run.parent / 'train.log').read_text()[-3000:], flush=True)
  return result


def epochs_that_fit(args, probe: pathlib.Path, train_images: int = 45_000,
                    planned: float | None = None) -> int | None:
  """Epochs whose steps fit --train_deadline_s at the probe run's speed (None: no probe), at most
  `planned`. The schedule's length is a constant of the compiled step, so a run of other epochs
  than the probe's compiles it again: then --cold_startup_s, not --startup_s, is start-up (the
  probe's cache had been counted on for it: a review)."""
  ips = [r['images_per_sec'] for r in tracking.read_metrics(probe) if 'images_per_sec' in r][1:]
  if not ips:
    return None
  speed = statistics.median(ips)  # (It had taken the faster middle row of an even count.)
  probe_epochs = ((_read_json(probe / 'config.json') or {}).get('train') or {}).get('num_epochs')

  def fit(startup: float) -> tuple[int, float]:
    # 15 %: per-epoch validation, checkpoints, logging (the H200 run: 13.5 s per epoch in all
    # against 11.7 s of steps at the probe's rate, 87 %).
    usable = 0.85 * (args.train_deadline_s - startup)
    return int(usable * speed // train_images), usable

  epochs, usable = fit(args.startup_s)
  if not (planned is None or probe_epochs is None or min(planned, epochs) == probe_epochs):
    warm = epochs  # Not the probe's program, so compiled again: unless the probe's own epochs
    epochs, usable = fit(getattr(args, 'cold_startup_s', args.startup_s))  # fit warm and are more.
    if probe_epochs <= min(planned, warm) and probe_epochs > epochs:
      epochs, usable = int(probe_epochs), 0.85 * (args.train_deadline_s - args.startup_s)
  log(f'probe: {speed:.0f} img/s -> {epochs} epochs fit in {usable:.0f}s of training')
  return epochs


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def clean_images(data: str, config) -> int:
  """Images of the clean splits evaluate() predicts: validation (held out of train) + test."""
  from jax_cifar.data import cifar100  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(data) / 'cifar-100-python'
  n = {s: len(cifar100.read_pickle(folder / s)['fine_labels']) for s in ('train', 'test')}
  limit = config.data.eval_limit  # Applies to validation too (it had counted 5,000 for 200).
  val = round(config.data.val_fraction * n['train'])
  return sum(min(k, limit) if limit else k for k in (n['test'], val))


def projected_seconds(images: int, views: int, adapts: bool, per_view_image: float | None) -> float:
  """The deadline check's estimate of one evaluation: its compiles (30 s, 30 more for the
  train-mode pass of --bn_adapt or Tent) and its images x views at the slowest rate seen so far,
  with 20 % to spare."""
  return 30 + 30 * adapts + (1.2 * images * views * per_view_image if per_view_image else 0)


def evaluate_tools(args, run: pathlib.Path, sets: dict, full_dir, results: dict, save,
                   clean_first: bool = False) -> None:
  """Each tool of --tools on each OOD set of `sets` (split -> folder; validation first), then
  plain predictions on the full set, on the 'best' checkpoint with `--weights auto`: the EMA or
  the raw weights, whichever led on validation at that step. Each set (and full_dir, the full
  set) is a folder or a function returning it (or None), called when the set is first read, so
  waiting for the full set never holds back the other numbers. clean_first: a 'clean' row (no
  OOD set) first, for a run whose small sets are not ready yet."""
  from jax_cifar import evaluate as ev  # pylint: disable=g-import-not-at-top
  from jax_cifar import xla_options  # pylint: disable=g-import-not-at-top
  from jax_cifar import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from jax_cifar.evaluation import tent as tent_lib  # pylint: disable=g-import-not-at-top
  xla_options.enable_compilation_cache()
  config = workdir_lib.run_config(run)
  n_clean = clean_images(args.data, config)
  per_view_image = None  # Seconds per image and view, from the first evaluation's OOD files.
  plan = [('clean', None)] if clean_first else []
  plan += [(name + ('@val' if split == 'val' else ''), folder)
           for name in args.tools for split, folder in sets.items() if folder]
  plan += [('none@full', full_dir)] if full_dir else []
  for name, folder in plan:
    if callable(folder):  # Waited for only now.
      folder = folder()
      if folder is None:
        results[name] = {'skipped': 'OOD set not ready before the deadline'}
        save()
        continue
    tta, adapt, tent, average = TOOLS['none' if name == 'clean' else name.split('@')[0]]
    # --bn_adapt adds one statistics pass over each chunk, --tent its entropy pass too.
    views = VIEWS[tta] + adapt + TENT_VIEWS * tent
    files = ood.check_distortion_dir(folder) if folder else []
    images = n_clean + sum(f.num_images for f in files)
    projected = projected_seconds(images, views, adapt or tent, per_view_image)
    if time.monotonic() - T0 + projected > args.deadline_s:
      log(f'skip {name}: projected {projected:.0f}s would pass the deadline')
      results[name] = {'skipped': f'projected {projected:.0f}s past the deadline'}
      save()
      continue
    t = time.monotonic()
    try:
      r = ev.evaluate(config, str(run), 'best', tta_mode=tta, adapt_bn=adapt, weights='auto',
                      tent=tent_lib.TentOptions() if tent else None, tta_average=average,
                      ood_dir=str(folder) if folder else None,  # (--submission needs one:
                      # the 'clean' row had always been "ConfigError: --submission needs
                      # --ood_dir", an audit.)
                      submission_csv=(str(run.parent / f"submission_{name.replace('+', '_')}.csv")
                                      if folder else None))
    except Exception as e:  # pylint: disable=broad-except  (one failure never costs the others)
      log(f'{name} failed: {type(e).__name__}: {e}')
      results[name] = {'error': f'{type(e).__name__}: {e}'}
      save()
      continue
    seconds = time.monotonic() - t
    # The OOD files' rate (their compile is spread over 19 files), the slowest seen so far: a
    # --bn_adapt row had ended 50 s past the deadline at the first row's rate (an audit). Not the
    # 'clean' row's: its seconds are mostly its compile, which had put every later row past the
    # deadline (an audit).
    if ips := r.get('ood_images_per_sec'):
      per_view_image = max(per_view_image or 0, 1 / (ips * views))
    row = {k: r.get(k) for k in ('step', 'weights', 'test_accuracy', 'val_accuracy',
                                  'ood_accuracy', 'ood_images_per_sec')}
    row['seconds'] = seconds
    if r.get('ood_per_distortion'):
      row['ood_per_severity'] = figures.corruption_means(r['ood_per_distortion'])['per_severity']
      row['ood_per_distortion'] = {k: sum(v) / 5 for k, v in r['ood_per_distortion'].items()}
    if name.endswith('@full') and r.get('submission'):
      with open(r['submission']) as f:
        row['submission_rows'] = sum(1 for _ in f) - 1
    results[name] = row
    save()
    log(f"{name:16s} test {row['test_accuracy']} OOD {row['ood_accuracy']} "
        f"({seconds:.0f}s, {row['ood_images_per_sec']} img/s)")


def default_json_out() -> str:
  """$OUT/gpu_ood.json where $OUT is set (a device call brings back only what is under $OUT)."""
  return os.path.join(os.environ['OUT'], 'gpu_ood.json') if os.environ.get('OUT') else ''


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--data', required=True, help='folder holding cifar-100-python/')
  p.add_argument('--weights', required=True,
                 help="converted ResNet-50 checkpoint folder ('' = random init, for tests)")
  p.add_argument('--tools', default=','.join(TOOLS),
                 help=f'test-time tools to evaluate, in this order (of {",".join(TOOLS)})')
  p.add_argument('--work', required=True)
  p.add_argument('--ood_limit', type=int, default=1000, help='images per OOD chunk')
  p.add_argument('--ood_splits', default='val,test',
                 help='OOD sets to make and evaluate: corrupted validation and/or test images')
  p.add_argument('--ood_from', default='',
                 help="--work of a run sharing this GPU: wait for its OOD sets, make none")
  p.add_argument('--full_set', action='store_true', help='also the 950,000-image set (plain)')
  p.add_argument('--procs', type=int, default=8, help='CPU processes making the OOD sets')
  p.add_argument('--train_deadline_s', type=float, default=330)
  p.add_argument('--deadline_s', type=float, default=540)
  p.add_argument('--small', action='store_true', help='CPU dry run: tiny sizes')
  p.add_argument('--json_out', default=default_json_out(),
                 help='also write the JSON (and the plot beside it) here, after every phase '
                      '(default: $OUT/gpu_ood.json when $OUT is set, as on a device call)')
  p.add_argument('--probe', default='', help='run dir of a short training run of the same step '
                 '(synthetic data): train fewer than the config\'s epochs if they would not fit')
  p.add_argument('--max_epochs', type=int, default=30, help="configs/ood_best.py's epochs")
  p.add_argument('--startup_s', type=float, default=30,
                 help='training start-up with the probe\'s compile cache (H200: ~15 s)')
  p.add_argument('--cold_startup_s', type=float, default=75,
                 help='training start-up when the run trains other epochs than the probe, so '
                      'its step compiles again (H200: the probe\'s first step came 44 s after its '
                      'start)')
  p.add_argument('--set', action='append', default=[], help='extra --config.KEY=VALUE overrides')
  args = p.parse_args()
  for name in ('data', 'weights', 'work', 'ood_from', 'json_out', 'probe'):  # children: cwd=ROOT
    setattr(args, name, os.path.abspath(getattr(args, name)) if getattr(args, name) else '')
  args.tools = [t for t in args.tools.split(',') if t]
  if unknown := set(args.tools) - set(TOOLS):
    p.error(f'unknown --tools {sorted(unknown)}; choose from {",".join(TOOLS)}')
  splits = [s for s in args.ood_splits.split(',') if s]
  if not splits or set(splits) - set(OOD_FOLDERS):
    p.error(f'--ood_splits {args.ood_splits!r}: one or both of {",".join(OOD_FOLDERS)}')
  args.ood_splits = [s for s in OOD_FOLDERS if s in splits]
  sets = dict(s.split('=', 1) for s in args.set if '=' in s)
  if 'val' in args.ood_splits and any(s.startswith(('data.val_fraction', 'data.split_seed'))
                                      for s in args.set):
    p.error('--set data.val_fraction/data.split_seed: the validation OOD set uses the defaults')
  try:  # (With --ood_splits test it had been taken: a review.)
    if 'data.val_fraction' in sets and not float(sets['data.val_fraction']) > 0:
      p.error('--set data.val_fraction=0: the trainer would validate, and `best` and --weights '
              'auto choose, on the TEST split; keep the hold-out')
    from jax_cifar.configs import ood_best  # pylint: disable=g-import-not-at-top
    set_epochs = float(sets.get('train.num_epochs', ood_best.get_config().train.num_epochs))
  except ValueError as e:
    p.error(f'--set: {e}')
  import jax  # pylint: disable=g-import-not-at-top  (no backend yet: the trainer takes the GPU)
  log(f'jax {jax.__version__}; python {sys.version.split()[0]}')
  if args.small:
    args.ood_limit, args.max_epochs = min(args.ood_limit, 10), 1
  work = pathlib.Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  jobs = {} if args.ood_from else {  # One set per split, the processes shared between them.
      split: start_corrupt(args.data, work / OOD_FOLDERS[split], args.ood_limit,
                           max(1, args.procs // len(args.ood_splits)), split=split)
      for split in args.ood_splits}
  full_limit = 20 if args.small else 0  # 0 = all 10,000 test images per chunk.
  full_jobs = (start_corrupt(args.data, work / 'ood_full', full_limit, 2 * args.procs, nice=10)
               if args.full_set and not args.ood_from else [])  # Niced: training comes first.
  overrides = [f'--config.model.pretrained={args.weights}', f'--config.data.dir={args.data}',
               '--config.data.download=false', *[f'--config.{s}' for s in args.set]]
  if args.small:
    overrides += ['--config.model.image_size=32', '--config.data.train_limit=200',
                  '--config.data.eval_limit=100', '--config.train.num_epochs=1',
                  '--config.train.batch_size=32', '--config.train.eval_batch_size=100',
                  '--config.model.dtype=float32']
  # The epochs trained: the config's (or --set's) and --max_epochs, whichever is fewer; the label
  # had said --max_epochs whatever was trained (a review).
  planned = min(args.max_epochs, set_epochs)
  fit = epochs_that_fit(args, pathlib.Path(args.probe), planned=planned) if args.probe else None
  epochs = planned if fit is None else min(planned, max(fit, 1))  # (At least 1 that fits.)
  if epochs < planned:
    log(f'training {epochs:g} epochs instead of {planned:g}: the budget is too short')
  overrides.append(f'--config.train.num_epochs={epochs:g}')  # Last: it wins over --set's.
  result = {'args': vars(args), 'epochs': int(epochs) if epochs == int(epochs) else epochs,
            'date': time.strftime('%Y-%m-%d', time.gmtime())}  # (The recipe of that day.)

  def save():  # Beside the run, and where the caller collects results (--json_out).
    for path in {work / 'gpu_ood.json', pathlib.Path(args.json_out or work / 'gpu_ood.json')}:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(path.name + '.tmp')
      tmp.write_text(json.dumps(result, indent=1) + '\n')
      tmp.replace(path)  # Never half written, when the call is cut short.

  save()
  result['train'] = train(args, work / 'run', overrides)
  save()
  if result['train']['rc'] not in (0, 75) and not (work / 'run' / 'checkpoints').is_dir():
    # Nothing to evaluate (it had gone on, to a WorkdirError traceback; a review).
    stop_jobs([j for js in jobs.values() for j in js] + full_jobs)
    raise SystemExit(f'error: training failed (rc {result["train"]["rc"]}) before its first '
                     f'checkpoint; its last lines are above, all of it in {work / "train.log"}')
  @functools.cache  # Each set waited for once, however many tools read it.
  def made(split: str):  # This run's set of `split` ('full': the full set), or --ood_from's.
    name = OOD_FOLDERS.get(split, 'ood_full')
    if args.ood_from:
      folder = wait_for_set(pathlib.Path(args.ood_from) / name / 'all', args.deadline_s - 30)
    else:
      folder = merge_corrupt(jobs.get(split, full_jobs), work / name, args.deadline_s - 30)
    log(('full OOD set' if split == 'full' else
         f'OOD set ({args.ood_limit} {split} images x 19 x 5)') + f' ready: {folder}')
    return folder

  # Each set is waited for when it is first read; the full set is read last, so waiting for it
  # never holds back another number. Sets not ready as training ends: clean accuracy first.
  ready = all(j.poll() is not None for js in jobs.values() for j in js) and (
      not args.ood_from or all((pathlib.Path(args.ood_from) / OOD_FOLDERS[s] / 'all').is_dir()
                               for s in args.ood_splits))
  sets = {split: functools.partial(made, split) for split in args.ood_splits}
  full_set = functools.partial(made, 'full') if args.full_set else None
  result['eval'] = {}  # Filled in place, and the JSON rewritten after each evaluation.
  save()
  try:
    evaluate_tools(args, work / 'run', sets, full_set, result['eval'], save, clean_first=not ready)
  finally:
    stop_jobs([j for js in jobs.values() for j in js] + full_jobs)
  loaded = {(r['step'], r['weights']) for r in result['eval'].values() if 'weights' in r}
  result['step'], result['weights'] = next(iter(loaded)) if len(loaded) == 1 else (None, None)
  result['total_s'] = time.monotonic() - T0
  save()
  print(table(result), flush=True)
  try:
    plot(result, work / 'gpu_ood_severity.png')
    if args.json_out:  # Beside the JSON, where the caller collects results (OUT/NAME.png).
      plot(result, pathlib.Path(args.json_out).with_suffix('.png'))
  except Exception as e:  # pylint: disable=broad-except  (the numbers are saved already)
    log(f'no plot: {type(e).__name__}: {e}')


if __name__ == '__main__':
  if len(sys.argv) == 4 and sys.argv[1] == 'replot':  # replot GPU_OOD.json OUT.png
    saved, out = json.loads(pathlib.Path(sys.argv[2]).read_text()), pathlib.Path(sys.argv[3])
    # One run's JSON, or several under their names (docs/gpu_ood_h200_noise_blur.json: it had been
    # a KeyError): a table each, and a plot each, OUT's name with the run's.
    runs = ({'': saved} if 'epochs' in saved else
            {k: v for k, v in saved.items() if isinstance(v, dict) and 'epochs' in v})
    if not runs:
      sys.exit(f'error: {sys.argv[2]} holds no gpu_ood.py result (nor results under names)')
    for name, run in runs.items():
      print(f'{name}:\n{table(run)}' if name else table(run))
      png = out.with_name(f'{out.stem}_{name}{out.suffix}') if name else out
      if plot(run, png):
        print(f'wrote {png}')  # (OUT.png had been promised, and other names written unsaid.)
      else:
        print(f'no plot: {sys.argv[2]} holds no OOD numbers yet{f" for {name}" if name else ""} '
              '(a run cut short)')
    if '' not in runs and plot_runs(runs, out, saved.get('about')):  # All of them on one axis.
      print(f'wrote {out} (every run)')
  else:
    main()
