"""Measures what each robustness tool buys: training recipes (rows) x seeds, then test-time tools.

  python scripts/robustness_table.py --data_dir $JAX_CIFAR_DATA_DIR --out runs/robustness \
      [--config configs/smoke.py] [--epochs 4] [--train_limit 10000] [--model resnet18 --width 8] \
      [--ood_limit 200] [--seeds 0] [--headline_seeds 0,1] [--rows report,augmix,...] \
      [--tta_modes none,flip,shifts,bn_adapt,shifts+bn_adapt] [--set KEY=VALUE ...]
      [--skip_existing]

Every row trains with the same data, steps and seed list; `best` is the row with the highest mean
validation accuracy (never the test or OOD numbers), and gets --headline_seeds together with the
report recipe, then every --tta_modes setting. The OOD set is jax_cifar.corrupt's 19 x 5 labelled
distortions of the first --ood_limit TEST images: held out, never used for a choice. Writes
OUT/results.json, OUT/table.md and OUT/severity.png; --skip_existing keeps finished runs and
evaluations.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'scripts'))
import child  # noqa: E402  pylint: disable=wrong-import-position
import out_folder  # noqa: E402  pylint: disable=wrong-import-position
from hostinfo import machine  # noqa: E402  pylint: disable=wrong-import-position
from robustness_report import BEST_LABEL, TTA_MODES, markdown, plot, summarise  # noqa: E402  pylint: disable=wrong-import-position
REPORT = {'augment.policy': 'autoaugment_cifar10', 'augment.mixup_alpha': 0.2,
          'optim.label_smoothing': 0.1, 'augment.crop_padding': 4, 'augment.flip': True,
          'augment.augmix': False, 'augment.augmix_jsd_weight': 0.0,
          'augment.color_jitter_prob': 0.0,
          'augment.blur_prob': 0.0, 'augment.noise_prob': 0.0, 'augment.rrc_prob': 0.0,
          'augment.jpeg_prob': 0.0, 'augment.jpeg_subsampling': '4:4:4',
          'augment.erasing_prob': 0.0, 'augment.cutmix_alpha': 0.0,
          'ema.decay': 0.0,
          'ema.warmup_power': 0.0, 'checkpoint.best_weights': 'raw'}
AUGMIX = {**REPORT, 'augment.augmix': True}
PHOTO = {'augment.color_jitter_prob': 0.4, 'augment.blur_prob': 0.3, 'augment.noise_prob': 0.3}
EMA = {'ema.decay': 0.99, 'ema.warmup_power': 0.75, 'checkpoint.best_weights': 'ema'}
RUNS = {  # Training runs: every robustness key set explicitly, so any base --config works.
    'report': REPORT,
    'augmix': AUGMIX,
    'augmix_jsd': {**AUGMIX, 'augment.mixup_alpha': 0.0, 'augment.augmix_jsd_weight': 12.0},
    'photo_ema': {**AUGMIX, **PHOTO, **EMA},  # The EMA never feeds back into the raw weights.
    # Controls for the JSD row: its compute (3 views per image) and its lack of mixup.
    'report_3x': {**REPORT, '_epochs_mult': 3},
    'report_nomix': {**REPORT, 'augment.mixup_alpha': 0.0},
    # The corruption-style tools of the best public DS542 entry, each alone on the report recipe.
    'rrc': {**REPORT, 'augment.rrc_prob': 0.5},
    'jpeg': {**REPORT, 'augment.jpeg_prob': 0.5},
    'jpeg420': {**REPORT, 'augment.jpeg_prob': 0.5, 'augment.jpeg_subsampling': '4:2:0'},
    # ... and together, with noise and colour jitter (brightness/contrast), as that entry had them.
    'corrupt_style': {**REPORT, 'augment.rrc_prob': 0.5, 'augment.jpeg_prob': 0.5,
                      'augment.noise_prob': 0.3, 'augment.color_jitter_prob': 0.4},
}
ROWS = {  # row -> (training run, weights evaluated, description)
    'report': ('report', 'raw', 'report recipe: AutoAugment CIFAR10 + mixup 0.2 + label smoothing '
               '0.1 + crop/flip'),
    'augmix': ('augmix', 'raw', '+ AugMix (severity 3, width 3)'),
    'augmix_jsd': ('augmix_jsd', 'raw', 'AugMix + JSD loss (weight 12), mixup OFF (JSD refuses '
                   'mixup); 3x compute per step'),
    'photo': ('photo_ema', 'raw', '+ AugMix + colour jitter 0.4 / blur 0.3 / noise 0.3'),
    'photo_ema': ('photo_ema', 'ema', 'row photo + EMA of the weights (decay 0.99, warm-up 0.75)'),
    'report_3x': ('report_3x', 'raw', 'report recipe, 3x the epochs (the JSD row\'s compute)'),
    'report_nomix': ('report_nomix', 'raw', 'report recipe without mixup (as the JSD row)'),
    'rrc': ('rrc', 'raw', '+ random-resized-crop 0.5 (scale 0.35-1)'),
    'jpeg': ('jpeg', 'raw', '+ JPEG 0.5 (quality 20-95, chroma 4:4:4)'),
    'jpeg420': ('jpeg420', 'raw', '+ JPEG 0.5 (quality 20-95, chroma 4:2:0 as PIL\'s files)'),
    'corrupt_style': ('corrupt_style', 'raw', '+ random-resized-crop 0.5, JPEG 0.5 (4:4:4), noise '
                      '0.3, colour jitter 0.4 (the best public entry\'s kinds)'),
}


def log(msg: str) -> None:
  print(f'[{datetime.datetime.now():%H:%M:%S}] {msg}', flush=True)


def overrides(args, run: str, seed: int) -> list[str]:
  """--config.KEY=VALUE flags of one training run (also passed to evaluate, so it rebuilds it)."""
  values = dict(RUNS[run])
  values['seed'] = seed
  mult = values.pop('_epochs_mult', 1)
  for key, flag in (('train.num_epochs', args.epochs), ('data.train_limit', args.train_limit),
                    ('model.name', args.model), ('model.width', args.width),
                    ('train.batch_size', args.batch_size)):
    if flag is not None:
      values[key] = flag
  values['data.dir'] = args.data_dir
  values.update(set_values(args.set))
  if mult != 1:  # After --set: a row's multiple of the epochs holds whichever way they were set.
    epochs = values.get('train.num_epochs', base_config(args.config).train.num_epochs)
    values['train.num_epochs'] = mult * float(epochs)
  return [f'--config.{k}={v}' for k, v in values.items()]


PATH_KEYS = ('data.dir', 'data.tfds_data_dir', 'model.pretrained', 'model.init_from')


def set_values(items: list[str]) -> dict[str, str]:
  """--set KEY=VALUE items as a dict; a relative path (PATH_KEYS) made the caller's, since the
  children start in the repository (it had been read from there: another folder, or none)."""
  values = {}
  for item in items:
    key, _, value = item.partition('=')
    if key in PATH_KEYS and value:
      value = os.path.abspath(os.path.expanduser(value))
    values[key] = value
  return values


def base_config(path: str):
  """The get_config() of the base config file (for per-row multiples of its epochs)."""
  namespace = {}
  exec(compile(pathlib.Path(ROOT / path).read_text(), path, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace['get_config']()


def run_logged(cmd: list[str], log_path: pathlib.Path) -> float:
  """Runs `cmd`, output to `log_path`; raises naming the log when it fails; returns seconds."""
  log_path.parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  code, stopped = child.run(cmd, log_path, ROOT)  # Ctrl-C reaches it once: it saves, then stops.
  if stopped or code in child.INTERRUPTED:
    raise SystemExit(f'{" ".join(cmd[:4])} ... interrupted (exit {code}); the same command '
                     f'resumes it (--skip_existing keeps what finished). Log: {log_path}')
  if code:
    raise SystemExit(f'error: {" ".join(cmd[:4])} ... exited {code}; see {log_path}: '
                     f'{child.last_line(log_path)}')
  return time.perf_counter() - start


def val_numbers(workdir: pathlib.Path) -> dict:
  """Best validation accuracy of the raw weights and of the EMA, and the last step (metrics.jsonl)."""
  best, best_ema, step = None, None, 0
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    rec = json.loads(line)
    step = max(step, rec.get('step', 0))
    if 'val_accuracy' in rec:
      best = max(best or 0.0, rec['val_accuracy'])
    if 'val_accuracy_ema' in rec:
      best_ema = max(best_ema or 0.0, rec['val_accuracy_ema'])
  return {'val_accuracy': best, 'val_accuracy_ema': best_ema, 'last_step': step}


def val_at(workdir: pathlib.Path, step: int, weights: str) -> float | None:
  """Validation accuracy of the raw weights or of the EMA at `step`: the step evaluated (the
  best of the run by whichever weights ranked it), not the run's best number of either kind."""
  key = 'val_accuracy_ema' if weights == 'ema' else 'val_accuracy'
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  values = [r[key] for r in rows if r.get('step') == step and key in r]
  return values[-1] if values else None


def val_of(workdir: pathlib.Path, step: int, weights: str) -> float:
  """val_at, or one line saying why there is none (pick_best had failed on None after every run)."""
  value = val_at(workdir, step, weights)
  if value is None:
    raise SystemExit(f'error: {workdir}/metrics.jsonl has no {weights} validation accuracy at '
                     f'step {step}, the step evaluated: rows are chosen on it')
  return value


def with_val(record: dict, out: pathlib.Path) -> dict:
  """An evaluation record with its val number at its evaluated step (records written by earlier
  versions carry the run's best raw number instead: a review)."""
  run = ROWS[record['row']][0]
  workdir = out / 'train' / f'{run}_s{record["seed"]}'
  if (workdir / 'metrics.jsonl').exists():
    record['val_accuracy'] = val_of(workdir, record['step'], record['weights'])
  return record


def train(args, run: str, seed: int) -> dict:
  out = pathlib.Path(args.out)
  record_path = out / 'results' / f'train_{run}_s{seed}.json'
  if args.skip_existing and record_path.exists():
    return json.loads(record_path.read_text())
  workdir = out / 'train' / f'{run}_s{seed}'
  log(f'training {run} seed {seed} -> {workdir}')
  cmd = [sys.executable, '-m', 'jax_cifar.train', '--config', args.config,
         '--workdir', str(workdir),
         *overrides(args, run, seed)]
  seconds = run_logged(cmd, out / 'logs' / f'train_{run}_s{seed}.log')
  record = {'run': run, 'seed': seed, 'train_seconds': seconds, **val_numbers(workdir)}
  record_path.parent.mkdir(parents=True, exist_ok=True)
  record_path.write_text(json.dumps(record, indent=2) + '\n')
  log(f'  {run} seed {seed}: {seconds:.0f} s, val {record["val_accuracy"]}'
      + (f' (EMA {record["val_accuracy_ema"]})' if record['val_accuracy_ema'] else ''))
  return record


def evaluate(args, row: str, seed: int, mode: str, ood_dir: pathlib.Path) -> dict:
  out = pathlib.Path(args.out)
  run, weights, _ = ROWS[row]
  record_path = out / 'results' / f'eval_{row}_s{seed}_{mode}.json'
  if args.skip_existing and record_path.exists():
    return with_val(json.loads(record_path.read_text()), out)
  workdir = out / 'train' / f'{run}_s{seed}'
  tta = mode.replace('+bn_adapt', '').replace('bn_adapt', 'none') or 'none'
  flags = ['--config', args.config, '--workdir', str(workdir), '--checkpoint', 'best',
           '--tta', tta, '--ood_dir', str(ood_dir), '--submission', str(workdir / 'rt_sub.csv'),
           *overrides(args, run, seed), '--config.data.val_fraction=0',  # Test + OOD only.
           f'--config.data.eval_limit={args.eval_limit}',
           f'--config.train.eval_batch_size={args.eval_batch_size}']
  if 'bn_adapt' in mode:
    flags.append('--bn_adapt')
  cmd = [sys.executable, '-m', 'jax_cifar.evaluate', *flags, '--weights', weights]
  log(f'evaluating {row} seed {seed} ({weights} weights), test-time {mode}')
  seconds = run_logged(cmd, out / 'logs' / f'eval_{row}_s{seed}_{mode}.log')
  from jax_cifar.evaluation import output_files  # pylint: disable=import-outside-toplevel  (jax)
  tag = output_files.output_tag('best', tta, 'bn_adapt' in mode, weights)  # evaluate's file name.
  result = json.loads((workdir / f'eval_{tag}.json').read_text())
  per = np.array(list(result['ood_per_distortion'].values()))  # [19 distortions, 5 severities]
  record = {'row': row, 'seed': seed, 'mode': mode, 'weights': weights, 'step': result['step'],
            'val_accuracy': val_of(workdir, result['step'], weights),
            'test_accuracy': result['test_accuracy'], 'test_count': result['test_count'],
            'ood_accuracy': result['ood_accuracy'], 'ood_per_severity': per.mean(0).tolist(),
            'ood_per_distortion': result['ood_per_distortion'], 'eval_seconds': seconds}
  record_path.write_text(json.dumps(record, indent=2) + '\n')
  log(f'  test {record["test_accuracy"]:.4f}, OOD {record["ood_accuracy"]:.4f} ({seconds:.0f} s)')
  return record


def pick_best(rows: list[str], evals: list[dict]) -> str:
  """The row with the highest mean validation accuracy over its seeds, each at the step that was
  evaluated (validation only)."""
  def val(row):
    return np.mean([e['val_accuracy'] for e in evals if (e['row'], e['mode']) == (row, 'none')])
  return max(rows, key=val)


def label_of_best(best_row: str, seeds: list[int], headline: list[int]) -> str:
  """How the table names the best row's choice. pick_best ranks on --seeds: where the table
  averages --headline_seeds beyond them, the label says which seeds chose it (a row with a higher
  mean there had looked passed over: a review)."""
  if best_row:
    return 'chosen with --best_row'
  return (BEST_LABEL if set(headline) <= set(seeds)
          else f"{BEST_LABEL} of seed(s) {','.join(map(str, seeds))}")


def shown_rows(rows: list[str], best: str, tta_rows: list[str]) -> list[str]:
  """The rows an invocation reports: --rows, then the best (or --best_row), report and --tta_rows
  ones it evaluated, each once (those outside --rows had been evaluated and left out: an audit)."""
  return list(dict.fromkeys([*rows, best, 'report', *tta_rows]))


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--data_dir', default=os.environ.get('JAX_CIFAR_DATA_DIR', ''))
  p.add_argument('--out', default='runs/robustness')
  p.add_argument('--config', default='configs/smoke.py', help='base config of every row')
  p.add_argument('--rows', default=','.join(ROWS), help=f'subset of {",".join(ROWS)}')
  p.add_argument('--seeds', default='0', help='seeds of every row')
  p.add_argument('--headline_seeds', default='0,1', help='seeds of the report and best rows')
  p.add_argument('--best_row', default='', help='skip the validation choice and use this row')
  p.add_argument('--tta_modes', default=','.join(TTA_MODES), help='test-time settings measured')
  p.add_argument('--tta_rows', default='best,report', help="rows that get them ('best' = chosen)")
  p.add_argument('--ood_limit', type=int, default=200, help='OOD set from the first N test images')
  p.add_argument('--eval_limit', type=int, default=2000, help='clean test images (class-balanced)')
  p.add_argument('--eval_batch_size', type=int, default=0,
                 help='0: the OOD chunk size (--ood_limit) up to 500, so no batch is padded')
  p.add_argument('--epochs', type=float, default=None)
  p.add_argument('--train_limit', type=int, default=None)
  p.add_argument('--batch_size', type=int, default=None)
  p.add_argument('--model', default=None, help='model.name')
  p.add_argument('--width', type=int, default=None, help='model.width')
  p.add_argument('--set', action='append', default=[], help='extra KEY=VALUE config override')
  p.add_argument('--skip_existing', action='store_true', help='keep finished runs/evaluations')
  args = p.parse_args(argv)
  if args.ood_limit < 0:
    p.error(f'--ood_limit must be 0 (all 10,000 test images) or more, got {args.ood_limit}')
  args.eval_batch_size = args.eval_batch_size or min(args.ood_limit or 10_000, 500)
  # Children run with cwd=ROOT: paths are the caller's (a --config not found from here is one of
  # the repository's, as the default configs/smoke.py).
  args.out = os.path.abspath(args.out)
  args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else ''
  if os.path.exists(args.config):
    args.config = os.path.abspath(args.config)
  bad = [r for r in args.rows.split(',') if r not in ROWS]
  bad += [m for m in args.tta_modes.split(',') if m not in TTA_MODES]
  bad += [r for r in args.tta_rows.split(',') if r and r != 'best' and r not in ROWS]
  if bad or (args.best_row and args.best_row not in ROWS):
    p.error(f'unknown row or test-time mode: {bad or args.best_row}')
  for name in ('seeds', 'headline_seeds'):
    try:
      seeds = [int(s) for s in getattr(args, name).split(',')]
    except ValueError:
      p.error(f'--{name} must be comma-separated integers, got {getattr(args, name)!r}')
    if any(s < 0 for s in seeds):
      p.error(f'--{name} must be non-negative, got {getattr(args, name)!r}')
  if not os.path.isfile(ROOT / args.config):
    p.error(f'--config {args.config}: no such file')
  return args


def check_validation(args) -> None:
  """Rows are chosen on validation images: a data.val_fraction of 0 (base --config or --set) had
  made the trainer validate, and this script choose, on the TEST split (an audit)."""
  val_fraction = set_values(args.set).get('data.val_fraction',
                                          base_config(args.config).data.val_fraction)
  if not float(val_fraction) > 0:
    raise SystemExit('error: rows are chosen on validation images, and data.val_fraction is 0 '
                     'here (in the base --config or --set): the trainer would validate, and this '
                     'script choose, on the TEST split. Give data.val_fraction > 0.')


# The settings that make a run or an evaluation what it is: one --out per combination of them.
SETTINGS = ('config', 'epochs', 'train_limit', 'batch_size', 'model', 'width', 'set', 'ood_limit',
            'eval_limit', 'eval_batch_size')


def check_settings(args, out: pathlib.Path) -> None:
  """One --out per combination of SETTINGS (its runs would have resumed under a changed schedule,
  or --skip_existing mixed in the old numbers)."""
  out_folder.check_settings(out, {f'--{k}': getattr(args, k) for k in SETTINGS})


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  check_validation(args)
  out = pathlib.Path(args.out)
  (out / 'results').mkdir(parents=True, exist_ok=True)
  check_settings(args, out)
  rows, seeds = args.rows.split(','), [int(s) for s in args.seeds.split(',')]
  headline = [int(s) for s in args.headline_seeds.split(',')]
  modes = args.tta_modes.split(',')
  ood_dir = out / f'ood{args.ood_limit}'
  log(f'OOD set {ood_dir} (first {args.ood_limit} test images)')
  run_logged([sys.executable, '-m', 'jax_cifar.corrupt', '--out', str(ood_dir), '--format', 'ds542',
              '--limit', str(args.ood_limit), '--data_dir', args.data_dir],
             out / 'logs' / 'corrupt.log')
  start, trains, evals = time.perf_counter(), {}, []

  def do(row: str, seed: int, mode: str = 'none') -> None:
    run = ROWS[row][0]
    if (run, seed) not in trains:
      trains[(run, seed)] = train(args, run, seed)
    evals.append(evaluate(args, row, seed, mode, ood_dir))

  for seed in seeds:
    for row in rows:
      do(row, seed)
  best_label = label_of_best(args.best_row, seeds, headline)
  best = args.best_row or pick_best(rows, evals)
  log(f'best row on validation: {best}')
  tta_rows = [best if r == 'best' else r for r in args.tta_rows.split(',') if r]
  for row in dict.fromkeys([best, 'report']):
    for seed in headline:
      if seed not in seeds:
        do(row, seed)
  for row in dict.fromkeys(tta_rows):
    for mode in modes:
      if mode != 'none':
        do(row, headline[0], mode)
  # Every record under OUT/results (earlier invocations included), for the rows of this
  # invocation (--best_row or --tta_rows outside --rows had been evaluated and left out).
  rows = shown_rows(rows, best, tta_rows)
  evals = [with_val(json.loads(p.read_text()), out)
           for p in sorted((out / 'results').glob('eval_*.json'))]
  evals = [e for e in evals if e['row'] in rows]
  for p in sorted((out / 'results').glob('train_*.json')):
    rec = json.loads(p.read_text())
    trains[(rec['run'], rec['seed'])] = rec
  table = summarise(evals)
  meta = {'machine': machine(), 'settings': {k: v for k, v in vars(args).items()},
          'best_row': best, 'rows': {r: ROWS[r][2] for r in rows},
          'wall_seconds_this_invocation': time.perf_counter() - start}
  (out / 'results.json').write_text(json.dumps(
      {'meta': meta, 'summary': table, 'train': [dict(v) for v in trains.values()],
       'evals': evals}, indent=2) + '\n')
  (out / 'table.md').write_text(markdown(
      table, trains, evals, {r: (ROWS[r][0], ROWS[r][2]) for r in rows}, best, headline[0],
      tuple(tta_rows), best_label))
  plot(evals, rows, best, headline[0], out / 'severity.png',
       f'Accuracy vs corruption severity ({_shown(args.config)}, {args.ood_limit} x 19 x 5 OOD '
       'images)',
       tuple(tta_rows), best_label)
  log(f'wrote {out}/results.json, table.md, severity.png')
  print((out / 'table.md').read_text())


def _shown(config: str) -> str:
  """The config for a title: relative to the repository where it lies in it (an absolute path
  had filled the figure's title: a figure review), else as given."""
  path = pathlib.Path(os.path.abspath(config))  # (Not resolved: configs/*.py are links.)
  if os.path.isabs(config) and path.is_relative_to(ROOT):
    return str(path.relative_to(ROOT))
  return config


if __name__ == '__main__':
  main(sys.argv[1:])
