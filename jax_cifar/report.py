"""Figures and tables of runs: learning curves, a markdown summary, confusion and corruption heatmaps.

  python -m jax_cifar.report RUN_DIR [RUN_DIR ...] --out DIR
writes DIR/figure1_loss.png, DIR/figure2_accuracy.png (training and validation curves of every run
on shared axes) and DIR/summary.md. Reads files only: no model, no accelerator.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from jax_cifar import tracking  # pylint: disable=g-import-not-at-top,wrong-import-position


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return {}


def load_run(run_dir: str | pathlib.Path) -> dict:
  """What a run directory holds: metrics rows, config, and the evaluation JSONs if present."""
  run_dir = pathlib.Path(run_dir)
  if not (run_dir / tracking.METRICS_FILE).exists():
    raise FileNotFoundError(f'{run_dir}: no {tracking.METRICS_FILE} (not a training run directory)')
  rows = tracking.read_metrics(run_dir)
  evals = {p.stem: _read_json(p) for p in sorted(run_dir.glob('eval_*.json'))}
  return {'name': run_dir.name, 'dir': run_dir, 'rows': rows,
          'config': _read_json(run_dir / 'config.json'), 'evals': evals}


def _epochs_per_step(rows: list[dict]) -> float | None:
  for r in rows:
    if r.get('epoch') and r.get('step'):
      return r['epoch'] / r['step']
  return None


def _series(rows: list[dict], key: str, per_step: float | None) -> tuple[np.ndarray, np.ndarray]:
  pts = [(r['step'], r[key]) for r in rows if r.get(key) is not None]
  steps = np.array([p[0] for p in pts], float)
  x = steps * per_step if per_step else steps
  return x, np.array([p[1] for p in pts], float)


def plot_curves(runs: list[dict], key: str, ylabel: str, title: str, path: pathlib.Path) -> None:
  """Training (solid) and validation (dashed) `key` of every run, one colour per run."""
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  use_epochs = all(_epochs_per_step(r['rows']) for r in runs)
  for i, run in enumerate(runs):
    color = f'C{i % 10}'
    per_step = _epochs_per_step(run['rows']) if use_epochs else None
    for split, style in (('train', '-'), ('val', '--')):
      x, y = _series(run['rows'], f'{split}_{key}', per_step)
      if len(x):
        ax.plot(x, y, style, color=color, marker='o' if split == 'val' else None, markersize=3,
                label=f'{run["name"]} {split}')
  ax.set_xlabel('epoch' if use_epochs else 'step')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, bbox_inches='tight')
  plt.close(fig)


def _train_time_s(run: dict) -> float | None:
  """Seconds of training from the logged throughput (evaluation and compile time excluded)."""
  rows = [r for r in run['rows'] if r.get('images_per_sec')]
  batch = run['config'].get('train', {}).get('batch_size')
  if not rows or not batch:
    return None
  total, last = 0.0, 0
  for r in sorted(rows, key=lambda r: r['step']):
    total += (r['step'] - last) * batch / r['images_per_sec']
    last = r['step']
  return total


def _fmt(value, pct: bool = True) -> str:
  if value is None:
    return '-'
  return f'{100 * value:.2f}%' if pct else str(value)


def summary_rows(runs: list[dict]) -> list[dict]:
  out = []
  for run in runs:
    rows = run['rows']
    val = [r['val_accuracy'] for r in rows if r.get('val_accuracy') is not None]
    ev = run['evals'].get('eval_best') or next(iter(run['evals'].values()), {})
    epochs = max((r['epoch'] for r in rows if r.get('epoch') is not None), default=None)
    model = run['config'].get('model', {})
    out.append({
        'run': run['name'],
        'model': f"{model.get('name', '?')} (width {model.get('width', '?')})" if model else '-',
        'epochs': round(epochs, 2) if epochs is not None else None,
        'best_val_accuracy': max(val) if val else None,
        'test_accuracy': ev.get('test_accuracy'),
        'ood_accuracy': ev.get('ood_accuracy'),
        'cifar100c_mean_accuracy': ev.get('cifar100c_mean_accuracy'),
        'train_time_s': _train_time_s(run),
    })
  return out


def markdown_table(rows: list[dict]) -> str:
  lines = ['| run | model | epochs | best val acc | test acc | OOD acc | CIFAR-100-C mean | train time |',
           '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  for r in rows:
    time = f"{r['train_time_s'] / 60:.1f} min" if r['train_time_s'] else '-'
    lines.append(f"| {r['run']} | {r['model']} | {_fmt(r['epochs'], False)} | "
                 f"{_fmt(r['best_val_accuracy'])} | {_fmt(r['test_accuracy'])} | "
                 f"{_fmt(r['ood_accuracy'])} | {_fmt(r['cifar100c_mean_accuracy'])} | {time} |")
  return '\n'.join(lines) + '\n'


def write_report(run_dirs: list[str], out: str | pathlib.Path) -> list[pathlib.Path]:
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  runs = [load_run(d) for d in run_dirs]
  fig1, fig2, md = out / 'figure1_loss.png', out / 'figure2_accuracy.png', out / 'summary.md'
  plot_curves(runs, 'loss', 'cross-entropy loss', 'Figure 1: training and validation loss', fig1)
  plot_curves(runs, 'accuracy', 'top-1 accuracy', 'Figure 2: training and validation accuracy', fig2)
  note = ('Training curves are running means over each logging interval (with augmentation and '
          'mixup, if any); validation points are full passes. Train time is from the logged '
          'images/s (compile and evaluation excluded).\n')
  md.write_text('# Runs\n\n' + markdown_table(summary_rows(runs)) + '\n' + note +
                '\n![Figure 1](figure1_loss.png)\n\n![Figure 2](figure2_accuracy.png)\n')
  return [fig1, fig2, md]


# ---------------------------------------------------------------------------------------------
# Evaluation figures (used by jax_cifar.evaluate)
# ---------------------------------------------------------------------------------------------
def plot_confusion(cm: np.ndarray, path: pathlib.Path, title: str,
                   class_to_group: np.ndarray | None = None,
                   group_names: list[str] | None = None) -> None:
  """Row-normalised confusion matrix; classes grouped by superclass when the grouping is known."""
  order = np.arange(len(cm))
  if class_to_group is not None:
    order = np.lexsort((order, class_to_group))
  rows = cm.sum(axis=1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)[np.ix_(order, order)]
  fig, ax = plt.subplots(figsize=(9, 8), dpi=110)
  im = ax.imshow(norm, cmap='viridis', vmin=0, vmax=1, interpolation='nearest')
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='fraction of the true class')
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  if class_to_group is not None and group_names is not None:
    groups = class_to_group[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(groups)]
    ax.set_yticks((starts + ends - 1) / 2, [group_names[g] for g in groups[starts]], fontsize=6)
    ax.set_xticks([])
    for s in starts[1:]:
      ax.axhline(s - 0.5, color='w', lw=0.3, alpha=0.5)
      ax.axvline(s - 0.5, color='w', lw=0.3, alpha=0.5)
    ax.set_ylabel('true class (grouped by superclass)')
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, bbox_inches='tight')
  plt.close(fig)


def plot_corruption_heatmap(table: dict[str, list[float]], path: pathlib.Path, title: str) -> None:
  """Accuracy per corruption (rows) and severity (columns), annotated."""
  names = list(table)
  data = np.array([table[n] for n in names])
  fig, ax = plt.subplots(figsize=(6, 0.32 * len(names) + 1.6), dpi=120)
  im = ax.imshow(data, cmap='magma', vmin=0, vmax=max(1e-6, float(data.max())), aspect='auto')
  for (i, j), v in np.ndenumerate(data):
    ax.text(j, i, f'{100 * v:.1f}', ha='center', va='center', fontsize=7,
            color='white' if v < 0.6 * data.max() else 'black')
  ax.set_xticks(range(data.shape[1]), [str(s + 1) for s in range(data.shape[1])])
  ax.set_yticks(range(len(names)), names, fontsize=8)
  ax.set_xlabel('severity')
  ax.set_title(title)
  fig.colorbar(im, ax=ax, label='top-1 accuracy')
  fig.tight_layout()
  fig.savefig(path, bbox_inches='tight')
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jax_cifar.report', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('runs', nargs='+', help='training run directories (with metrics.jsonl)')
  parser.add_argument('--out', required=True, help='output folder for the PNGs and summary.md')
  args = parser.parse_args(argv)
  try:
    paths = write_report(args.runs, args.out)
  except OSError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print('\n'.join(str(p) for p in paths))
  return 0


if __name__ == '__main__':
  sys.exit(main())
