"""scripts/robustness_table.py's outputs: the per-(row, mode) summary, OUT/table.md and
OUT/severity.png, from the records its runs wrote."""

from __future__ import annotations

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from jax_cifar.evaluation import curves  # noqa: E402  pylint: disable=wrong-import-position

BEST_LABEL = 'best on val'  # The best row's label when validation chose it.
TTA_MODES = ('none', 'flip', 'shifts', 'bn_adapt', 'shifts+bn_adapt')


def summarise(evals: list[dict]) -> dict:
  """(row, mode) -> mean and per-seed values of val, test, OOD and OOD per severity."""
  groups = {}
  for e in evals:
    groups.setdefault((e['row'], e['mode']), []).append(e)
  table = {}
  for (row, mode), recs in groups.items():
    recs.sort(key=lambda e: e['seed'])
    table[f'{row}|{mode}'] = {
        'row': row, 'mode': mode, 'seeds': [e['seed'] for e in recs],
        **{k: [e[k] for e in recs] for k in ('val_accuracy', 'test_accuracy', 'ood_accuracy')},
        'ood_per_severity': np.mean([e['ood_per_severity'] for e in recs], 0).tolist()}
  return table


def cell(values: list[float]) -> str:
  pct = [100 * v for v in values]
  if len(pct) == 1:
    return f'{pct[0]:.1f}'
  return f'{np.mean(pct):.1f} ({" / ".join(f"{p:.1f}" for p in pct)})'


def markdown(table: dict, trains: dict, evals: list[dict], rows: dict[str, tuple[str, str]],
             best: str, seed: int, tta_rows: tuple[str, ...] = (),
             best_label: str = BEST_LABEL) -> str:
  """OUT/table.md. `rows`: row -> (its training run, its description), in table order."""
  head = ('| row | what | seeds | val | clean test | OOD mean '
          '| sev 1 | sev 2 | sev 3 | sev 4 | sev 5 '
          '| train s |\n|' + ' --- |' * 12 + '\n')
  lines = ['Training-time rows (test-time: none). Accuracy in %; '
           'with several seeds: mean (each seed).',
           '', head.rstrip('\n')]
  for row in rows:
    t = table.get(f'{row}|none')
    if t is None:
      continue
    run, what = rows[row]
    secs = [trains[(run, s)]['train_seconds'] for s in t['seeds']]
    sev = ' | '.join(f'{100 * v:.1f}' for v in t['ood_per_severity'])
    lines.append(f'| {row}{f" ({best_label})" if row == best else ""} | {what} | {len(t["seeds"])} '
                 f'| {cell(t["val_accuracy"])} | {cell(t["test_accuracy"])} '
                 f'| {cell(t["ood_accuracy"])} | {sev} | {np.mean(secs):.0f} |')
  lines += ['', f'Test-time tools on seed {seed} (bn_adapt uses the unlabelled test images).', '',
            '| row | test-time | clean test | OOD mean | sev 1 | sev 2 | sev 3 | sev 4 | sev 5 |',
            '|' + ' --- |' * 9]
  for row in dict.fromkeys([best, 'report', *tta_rows]):  # (--tta_rows had been left out.)
    for mode in TTA_MODES:
      for e in evals:
        if (e['row'], e['mode'], e['seed']) == (row, mode, seed):
          sev = ' | '.join(f'{100 * v:.1f}' for v in e['ood_per_severity'])
          lines.append(f'| {row} | {mode} | {100 * e["test_accuracy"]:.1f} '
                       f'| {100 * e["ood_accuracy"]:.1f} | {sev} |')
  return '\n'.join(lines) + '\n'


def plot(evals: list[dict], rows: list[str], best: str, seed: int, path: pathlib.Path,
         title: str, tta_rows: tuple[str, ...] = (), best_label: str = BEST_LABEL) -> None:
  """Accuracy against severity (0 = clean test). Left: the training rows (mean over seeds, bars =
  the seeds' range). Right: the test-time tools on one seed of the best and report rows."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
  xs = np.arange(6)
  right_rows = list(dict.fromkeys([best, 'report', *tta_rows]))
  # One colour per row in both panels (each panel had its own cycle, so a row changed colour
  # between them and another row took its colour: a review), distinct for every row.
  every_row = list(dict.fromkeys([*rows, *right_rows]))
  color_of = dict(zip(every_row, curves.run_colors(len(every_row))))  # (tab10 repeats past ten.)
  for row in rows:
    runs = sorted((e for e in evals if (e['row'], e['mode']) == (row, 'none')),
                  key=lambda e: e['seed'])
    if runs:
      ys = 100 * np.array([[e['test_accuracy'], *e['ood_per_severity']] for e in runs])
      mean = ys.mean(0)
      err = None if len(runs) == 1 else [mean - ys.min(0), ys.max(0) - mean]
      left.errorbar(xs, mean, yerr=err, marker='o', capsize=3, color=color_of[row],
                    label=f'{row}{f" ({best_label})" if row == best else ""}, {len(runs)} seed(s)')
  styles = dict(zip(TTA_MODES, ('-', ':', '--', '-.', (0, (5, 1, 1, 1)))))
  markers = dict(zip(TTA_MODES, 'osD^v'))  # ('-.' and the last dash pattern looked alike: a review)
  for row in right_rows:  # (zip() with six colours had dropped every row after the sixth: an audit.)
    for e in sorted((e for e in evals if e['row'] == row and e['seed'] == seed),
                    key=lambda e: TTA_MODES.index(e['mode'])):
      ys = 100 * np.array([e['test_accuracy'], *e['ood_per_severity']])
      right.plot(xs, ys, color=color_of[row], linestyle=styles[e['mode']],
                 marker=markers[e['mode']], markersize=3, label=f'{row}: {e["mode"]}')
  for ax, sub in ((left, 'training-time recipes (test-time: none; bars: the range over seeds)'),
                  (right, f'test-time tools (seed {seed}; bn_adapt uses the test images)')):
    ax.set_xticks(xs, ['clean\n(test)', '1', '2', '3', '4', '5'])
    ax.set_xlabel('corruption severity (mean over the 19 distortions)')
    ax.set_title(sub, fontsize=10)
    ax.grid(alpha=0.3)
    # Below the axes: inside, it had covered the lowest rows' severity 3-5 points (a review).
    # (Its gap to the axes in font sizes, not in a share of the axes, which the layout shrinks.)
    ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, 0), borderaxespad=5.5, ncol=2,
              frameon=False)
  left.set_ylabel('top-1 accuracy (%)')
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
