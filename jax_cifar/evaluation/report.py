"""Figures and tables of runs: learning curves of every run on shared axes and a markdown summary.

  python -m jax_cifar.report RUN_DIR [RUN_DIR ...] --out DIR
writes DIR/figure1_loss.png, DIR/figure2_accuracy.png, DIR/figure3_learning_rate.png (every run on
shared axes) and DIR/summary.md (results, the hyper-parameters that differ, warnings). Reads files
only: no model, no accelerator. matplotlib is imported only to draw, and figures are drawn without
pyplot, so importing this module never changes the user's matplotlib backend.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys

from flax import traverse_util

from jax_cifar import atomic_folder, cli, errors, workdir
from jax_cifar.data import cifar100
from jax_cifar.evaluation import curves, stale_evals
from jax_cifar.evaluation.run_records import ReportError, load_run, unique_labels


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def _train_time_s(run: dict) -> float | None:
  """Seconds of training from the logged throughput (evaluation and compile time excluded), each
  row's steps at the batch size of the launch that trained them (launches.jsonl; else config's)."""
  rows = [r for r in run['rows'] if r.get('images_per_sec')]
  batch = run['config'].get('train', {}).get('batch_size')
  if not rows or type(batch) is not int or batch <= 0:  # A hand-edited "128" had been a TypeError.
    return None
  total, last = 0.0, 0
  for r in sorted(rows, key=lambda r: r['step']):
    # The last launch that started before this row's step (a relaunch after a kill starts at a
    # step before rows it trains again: those rows are its).
    launched = [b for start, b in run.get('batch_sizes', ()) if start < r['step']]
    total += (r['step'] - last) * (launched[-1] if launched else batch) / r['images_per_sec']
    last = r['step']
  return total


def _fmt(value, pct: bool = True) -> str:
  if value is None:
    return '-'
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    return str(value)  # A hand-edited file's string: shown as it is.
  return f'{100 * value:.2f}%' if pct else str(value)


def _cell(text: str) -> str:
  return text.replace('|', '\\|').replace('\n', ' ')


PLAIN_EVALS = ('eval_best', 'eval_latest', 'eval_best_ema', 'eval_latest_ema')
EMA_FIRST = ('eval_best_ema', 'eval_best', 'eval_latest_ema', 'eval_latest')


def summary_eval(evals: dict[str, dict], ema_ranked: bool = False) -> tuple[str | None, dict]:
  """(name, numbers) of the eval a summary row shows: a plain one (no TTA, no test-time
  adaptation) first, the EMA weights' first for a run whose best the EMA ranked (its raw
  weights' had been shown beside the EMA's best val: a review); otherwise the first, and its name
  goes into the row (README: say so when a number was made with test-time tools)."""
  for name in (EMA_FIRST if ema_ranked else PLAIN_EVALS):
    if name in evals:
      return name, evals[name]
  for name, ev in evals.items():
    if ev.get('tta', 'none') == 'none' and not ev.get('bn_adapt') and not ev.get('tent'):
      return name, ev
  return next(iter(evals.items()), (None, {}))


def summary_rows(runs: list[dict]) -> list[dict]:
  out = []
  for run in runs:
    rows = run['rows']
    # The accuracy that picked `best`: the EMA's under checkpoint.best_weights 'ema' (the raw
    # weights' maximum had been shown, of a step that was not the best checkpoint: a review).
    ema = run['config'].get('checkpoint', {}).get('best_weights') == 'ema' and any(
        r.get('val_accuracy_ema') is not None for r in rows)
    key = 'val_accuracy_ema' if ema else 'val_accuracy'
    val = [r[key] for r in rows if r.get(key) is not None]
    name, ev = summary_eval(run['evals'], ema_ranked=ema)
    adapted = name is not None and name not in PLAIN_EVALS and (
        ev.get('tta', 'none') != 'none' or ev.get('bn_adapt') or ev.get('tent'))
    epochs = max((r['epoch'] for r in rows if r.get('epoch') is not None), default=None)
    model = run['config'].get('model', {})
    label = f"{run['label']} ({name})" if adapted else run['label']
    if ema and name in PLAIN_EVALS and not name.endswith('_ema'):  # No EMA evaluation to show.
      label += ' (test: raw weights)'
    behind = stale_evals.behind(run, name) if name else None
    if behind:  # Its test/OOD numbers are of an earlier checkpoint than its best val (an audit).
      label += f' (evaluated at step {behind[0]}, checkpoint now at {behind[1]})'
    out.append({
        'run': label,
        'model': ('-' if not model else model.get('name', '?') if model.get('name') == 'simple_cnn'
                  else f"{model.get('name', '?')} (width {model.get('width', '?')})"),
        'epochs': round(epochs, 2) if epochs is not None else None,
        'short_of': _short_of(epochs, run['config'].get('train', {}).get('num_epochs')),
        'best_val_accuracy': max(val) if val else None,
        'best_val_weights': 'ema' if ema else 'raw',
        # data.val_fraction 0: the trainer validated (and picked `best`) on the test split.
        'val_is_test': run['config'].get('data', {}).get('val_fraction') == 0,
        'test_accuracy': ev.get('test_accuracy'),
        'test_count': ev.get('test_count'),
        'ood_accuracy': ev.get('ood_accuracy'),
        'ood_images_per_chunk': ev.get('ood_images_per_chunk'),
        'cifar100c_mean_accuracy': ev.get('cifar100c_mean_accuracy'),
        'cifar100c_images_per_chunk': ev.get('cifar100c_images_per_chunk'),
        'train_time_s': _train_time_s(run),
    })
  return out


def _short_of(epochs, planned) -> float | None:
  """The planned `train.num_epochs` of a run that logged fewer (stopped by train.max_steps or a
  signal, or still going); None otherwise."""
  if (isinstance(epochs, (int, float)) and isinstance(planned, (int, float))
      and not isinstance(planned, bool) and epochs < 0.99 * planned):
    return planned
  return None


def _subset(count, value, unit: str = 'images', unrecorded: str = '') -> str:
  """' (N images)' after a number measured on fewer than the 10,000 test images (data.eval_limit;
  a corrupted set's images per corruption x severity: a run's OOD number above its clean one on
  50 images, a figure review); `unrecorded` where the evaluation recorded no count at all (older
  versions' OOD numbers, which had read as those of a full set: an upgrade review)."""
  if value is not None and count is None and unrecorded:
    return f' ({unrecorded})'
  if (value is None or not isinstance(count, int) or isinstance(count, bool)
      or not 0 < count < cifar100.TEST_SIZE):
    return ''
  return f' ({count:,} {unit})'


def markdown_table(rows: list[dict]) -> str:
  # The two sets' means are of different corruptions: the OOD set's over all it holds (the course's
  # 19), CIFAR-100-C's over the benchmark's 15 (a figure review: same images, two numbers).
  lines = ['| run | model | epochs | best val acc | test acc | OOD acc (all its corruptions) | '
           'CIFAR-100-C mean (15 standard) | train time |',
           '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  for r in rows:
    seconds = r['train_time_s']
    time = ('-' if not seconds else f'{seconds:.0f} s' if seconds < 60 else
            f'{seconds / 60:.1f} min')  # ('0.3 min': a figure review)
    epochs = r['epochs'] if r.get('short_of') is None else f"{r['epochs']} of {r['short_of']:g}"
    val = _fmt(r['best_val_accuracy']) + (
        ' (test split)' if r.get('val_is_test') and r['best_val_accuracy'] is not None else '') + (
        ' (EMA)' if r.get('best_val_weights') == 'ema' else '')
    test = _fmt(r['test_accuracy']) + _subset(r.get('test_count'), r['test_accuracy'])
    ood_cell, c_cell = (_fmt(r[key]) + _subset(r.get(count), r[key], 'images per cell',
                                               'images per cell not recorded')
                        for key, count in (
        ('ood_accuracy', 'ood_images_per_chunk'),
        ('cifar100c_mean_accuracy', 'cifar100c_images_per_chunk')))
    lines.append(f"| {_cell(r['run'])} | {_cell(r['model'])} | {_fmt(epochs, False)} | "
                 f"{val} | {test} | {ood_cell} | {c_cell} | {time} |")
  return '\n'.join(lines) + '\n'


def config_differences(runs: list[dict]) -> dict[str, list[tuple[str | None, bool]]]:
  """Dotted config keys whose values are not the same in every run -> each run's (value as JSON,
  whether it is the default standing in for a key its config.json lacks). A run of an older
  version lacks the keys added since, whose defaults are what it did: they had been listed as
  differences ('-') where the values were the same (an upgrade audit). None: no value at all."""
  defaults = workdir.flat_defaults()
  flat = [traverse_util.flatten_dict(r['config'], sep='.') for r in runs]
  keys = sorted(set().union(*flat)) if flat else []

  def value(run: dict, f: dict, key: str) -> tuple[str | None, bool]:
    if key in f:
      return json.dumps(f[key], sort_keys=True), False
    # Not for a run without a config.json, nor in a section left out as unreadable: '-'.
    if key in defaults and f and key.split('.')[0] not in run.get('unread_sections', ()):
      return json.dumps(defaults[key], sort_keys=True), True
    return None, False

  values = {k: [value(r, f, k) for r, f in zip(runs, flat)] for k in keys}
  return {k: v for k, v in values.items() if len({json_value for json_value, _ in v}) > 1}


def _config_cell(value: str | None, filled: bool = False) -> str:
  """'-' for an absent key, a non-empty string without its JSON quotes, anything else as JSON;
  a trailing * for a default standing in for a key the run's config.json lacks."""
  if value is None:
    return '-'
  return _cell(json.loads(value) if value.startswith('"') and value != '""' else value) + (
      '*' if filled else '')


def hyperparameter_table(runs: list[dict]) -> str:
  """Markdown: one row per differing hyper-parameter, one column per run ('-' = key absent, * =
  the default of a key the run's config.json lacks)."""
  diffs = config_differences(runs)
  if len(runs) < 2:
    return 'One run: nothing to compare.\n'
  if not diffs:
    return 'Every run has the same config.json.\n'
  lines = ['| hyper-parameter | ' + ' | '.join(_cell(r['label']) for r in runs) + ' |',
           '| --- |' + ' --- |' * len(runs)]
  for key, vals in diffs.items():
    lines.append(f'| {_cell(key)} | ' + ' | '.join(_config_cell(*v) for v in vals) + ' |')
  if any(filled for vals in diffs.values() for _, filled in vals):
    lines.append('\n\\* not in that run\'s config.json: the default (for a key added since the '
                 'version that wrote the file, what that version did).')
  return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def write_report(run_dirs: list[str], out: str | pathlib.Path) -> tuple[list[pathlib.Path], list[str]]:
  """Draws the figures and writes summary.md; returns (files written, warning messages)."""
  if not str(out).strip():  # '' is the current folder: --out= had written the report there.
    raise ReportError('--out is empty: give the folder for the figures and summary.md')
  out = pathlib.Path(workdir.expanded(out))  # (--out=~/rep had written into ./~/rep.)
  if pathlib.Path(out).exists() and not pathlib.Path(out).is_dir():
    raise ReportError(f'--out {out} is a file: give a folder for the figures and summary.md')
  runs = [load_run(d, label) for d, label in zip(run_dirs, unique_labels(run_dirs))]
  created = not out.exists()
  out.mkdir(parents=True, exist_ok=True)
  try:
    return _write_report(runs, out)
  except BaseException:
    if created:  # A folder this call made and left empty (a full disk) is not left behind.
      with contextlib.suppress(OSError):
        out.rmdir()
    raise


def _write_report(runs: list[dict], out: pathlib.Path) -> tuple[list[pathlib.Path], list[str]]:
  fig1, fig2, fig3 = out / 'figure1_loss.png', out / 'figure2_accuracy.png', out / 'figure3_learning_rate.png'
  md = out / 'summary.md'
  # The tables first: a run they cannot summarise fails before any earlier file is replaced.
  warnings = [w for run in runs for w in run['warnings'] + stale_evals.stale_evaluations(run)]
  tables = [markdown_table(summary_rows(runs)), hyperparameter_table(runs)]
  curves.plot_curves(runs, 'loss', 'cross-entropy loss', 'Figure 1: training and validation loss',
                     fig1, log_if_spread=True)
  curves.plot_curves(runs, 'accuracy', 'top-1 accuracy (%)',
                     'Figure 2: training and validation accuracy', fig2, scale=100)
  has_lr = curves.plot_learning_rate(runs, 'Figure 3: learning rate', fig3)
  note = ('Training curves (solid) are running means over each logging interval (with '
          'augmentation and mixup, if any; the learning rate is its last step\'s); validation '
          'points (dashed; dotted: the EMA weights) are full passes; an x on the bottom edge marks '
          'a logged value that was not finite, a dotted vertical line the step a relaunch resumed '
          'a run at. Train time is from the logged images/s (compile '
          'and evaluation excluded). Numbers are from eval_best.json when present.\n')
  text = ['# Runs\n', tables[0], note, '## Hyper-parameters that differ\n', tables[1]]
  if warnings:
    text += ['## Warnings\n', ''.join(f'- {w}\n' for w in warnings)]
  text += ['![Figure 1](figure1_loss.png)\n', '![Figure 2](figure2_accuracy.png)\n',
           '![Figure 3](figure3_learning_rate.png)\n' if has_lr else
           f'No run logged a learning rate ({" or ".join(curves.LR_KEYS)}): no Figure 3.\n']
  if not has_lr:
    fig3.unlink(missing_ok=True)  # Not one left over from an earlier report on other runs.
  atomic_folder.write_file(md, lambda tmp: pathlib.Path(tmp).write_text('\n'.join(text),
                                                                      encoding='utf-8'))
  return [fig1, fig2] + ([fig3] if has_lr else []) + [md], warnings


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(prog=cli.prog('jax_cifar.report'), description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('runs', nargs='+', help='training run directories (with metrics.jsonl)')
  parser.add_argument('--out', required=True, help='output folder for the PNGs and summary.md')
  args = parser.parse_args(argv)
  try:
    paths, warnings = write_report(args.runs, args.out)
  except (errors.UserError, OSError) as e:  # (A full disk: `PATH: reason (disk full)`, as the
    print(f'error: {errors.user_message(e) or e}', file=sys.stderr)  # other tools say it.)
    return 1
  for w in warnings:
    print(f'warning: {w}', file=sys.stderr)
  print('\n'.join(str(p) for p in paths))
  return 0


if __name__ == '__main__':
  sys.exit(main())
