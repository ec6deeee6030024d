"""The report's learning curves: every run's training and validation lines on shared axes (x in
epochs at each run's steps-per-epoch, or in steps when a run's epochs were redefined), one colour
per run, the legend beside the axes, and the logged values that were not finite marked where the
line breaks."""

from __future__ import annotations

import collections
import math
import os
import pathlib
from typing import Callable

import numpy as np

from jax_cifar import optim
from jax_cifar.evaluation import figures

LR_KEYS = ('learning_rate', 'lr')  # The trainer logs `learning_rate` (train_step.py).
HEAD_RATE_LABEL = "the new head's learning rate\n(the backbone's: optim.backbone_lr_mult,\nfreeze_backbone_steps)"


def run_colors(n: int) -> list[tuple[float, ...]]:
  """n distinct RGBA colours: tab10 up to 10 runs, tab20 up to 20, evenly spaced turbo beyond."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  if n <= 20:
    cmap = matplotlib.colormaps['tab10' if n <= 10 else 'tab20']
    return [cmap(i) for i in range(n)]
  return [matplotlib.colormaps['turbo'](x) for x in np.linspace(0.0, 1.0, n)]


def epochs_per_step(rows: list[dict]) -> float | None:
  """The run's epochs per step (1 / its steps per epoch) when its rows log epochs at one rate;
  None when no row logs one, or when the rate changes (redefined_epochs)."""
  rates = _rates(rows)
  return None if not rates or redefined_epochs(rows) else rates[0]


def redefined_epochs(rows: list[dict]) -> bool:
  """Whether the rows' epochs per step change: after a relaunch with another batch size the trainer
  counts a step in the new batch's epochs, so its epochs jump (back, or forward) there. Drawn
  against them the curves had turned back or leapt; the first row's ratio had put such a run's 2
  epochs at 4.1 (a review)."""
  rates = _rates(rows)
  return any(abs(r - rates[0]) > 1e-9 * rates[0] for r in rates)


def _rates(rows: list[dict]) -> list[float]:
  return [r['epoch'] / r['step'] for r in rows if r.get('epoch') and r.get('step')]


def _series(run: dict, key: str, per_step: float | None,
            scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(x, y, x of the steps where `key` was not finite): y is NaN there, so the line breaks (a run
  that diverged had looked like one that stopped, a gap like a straight stretch: a review)."""
  pts = sorted([(r['step'], r[key] * scale) for r in run['rows'] if r.get(key) is not None]
               + [(s, math.nan) for s in run['nonfinite'].get(key, ())])
  steps = np.array([p[0] for p in pts], float)
  x = steps * per_step if per_step else steps  # In epochs, or steps.
  y = np.array([p[1] for p in pts], float)
  return x, y, x[np.isnan(y)]


def _short(label: str, width: int = 40) -> str:
  """A legend label of at most `width` characters (a long run name had squeezed the axes)."""
  return label if len(label) <= width else label[:width // 2 - 1] + '…' + label[-(width // 2):]


def legend_labels(labels: list[str], width: int = 40) -> list[str]:
  """Each label in at most `width` characters, all still distinct: a long one keeps its start and
  end, or, where two would then read the same, the part in which it differs from the others with
  the text around it (two runs of a sweep, `..._lr0.003_..._seed0` and `..._lr0.010_..._seed0`,
  had both read `resnet50_transfer_l…up0.2_ema0.999_seed0`: a figure review)."""
  short = [_short(label, width) for label in labels]
  if len(set(short)) == len(short):
    return short
  out = []
  for i, label in enumerate(labels):
    others = [o for j, o in enumerate(labels) if j != i and short[j] == short[i]]
    if len(label) <= width or not others:  # (Only the shortened labels that read alike change.)
      out.append(short[i])
      continue
    # Where it first and last differs from the labels most like it at its start and at its end.
    lo = max(len(os.path.commonprefix([label, o])) for o in others)
    hi = len(label) - max(len(os.path.commonprefix([label[::-1], o[::-1]])) for o in others)
    lo, hi = min(lo, hi), max(lo, hi)
    if hi - lo > width - 2:  # The differing part alone is too long: its start and end.
      out.append(_short(label[lo:hi], width))
      continue
    spare = width - 2 - (hi - lo)  # Characters of context around it, beside the two '…'.
    after = min(len(label) - hi, spare // 2)
    before = min(lo, spare - after)
    after = min(len(label) - hi, spare - before)
    out.append(('…' if before < lo else '') + label[lo - before:hi + after]
               + ('…' if hi + after < len(label) else ''))
  counts, seen = collections.Counter(out), collections.Counter()
  for i, label in enumerate(out):  # Still alike (the differing part cut): numbered.
    if counts[label] > 1:
      seen[label] += 1
      out[i] = f'{label[:width - 4]} #{seen[label]}'
  return out


STYLES = {'-': 'train', '--': 'val', ':': 'val, EMA weights'}


def _plot_lines(runs: list[dict], lines: Callable[[dict], list[tuple[str, str, str]]],
                ylabel: str, title: str, path: pathlib.Path, scale: float = 1.0,
                log_if_spread: bool = False) -> None:
  """Every run's (column, line style, line label) lines on shared axes, one colour per run; x in
  epochs when every run logs them (and none redefined them at a relaunch), else in steps. The
  legend, beside the axes, names each run once and each line style once; an x at the bottom marks a
  step whose value was not finite. y runs from 0, or with `log_if_spread` on a log scale where a
  value is over LOG_SPREAD times where the curves began (a run that diverged)."""
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  fig = figures.new_figure(figsize=(8, 4.5), dpi=120)
  ax = fig.add_subplot()
  rates = [epochs_per_step(r['rows']) for r in runs]
  use_epochs = all(rates)
  redefined = [r['label'] for r in runs if redefined_epochs(r['rows'])]
  drawn_runs, styles, marked, longest, values, relaunched = [], [], False, 0, [], False
  ticked = False
  starts = []  # Each line's first value: the scale of a run that has not diverged.
  for i, (run, color, rate) in enumerate(zip(runs, run_colors(len(runs)), rates)):
    per_step = rate if use_epochs else None
    for column, style, label in lines(run):
      x, y, bad = _series(run, column, per_step, scale)
      if np.isfinite(y).any():
        points = int(np.isfinite(y).sum())
        values.append(y[np.isfinite(y)])
        starts.append(y[np.isfinite(y)][0])  # (x-sorted: the line's first value.)
        longest = max(longest, points)
        # A single point is a marker (a line of one is invisible): a square for train, as val's
        # are dots. Each later run is drawn thinner on top, so a run that repeats another's first
        # steps (its own continuation) does not hide it (a figure review).
        marker = 'o' if style != '-' else 's' if points == 1 else None
        ax.plot(x, y, style, color=color, marker=marker, markersize=3 if marker == 'o' else 4,
                linewidth=max(0.8, 2.0 - 0.4 * i), label=label)
        drawn_runs += [(run['label'], color)] if run['label'] not in dict(drawn_runs) else []
        styles += [style] if style not in styles else []
      if len(bad):
        ax.plot(bad, np.full(len(bad), 0.02), 'x', color=color, transform=ax.get_xaxis_transform(),
                label=f'{label} not finite')
        marked = True
    at = [step * per_step if per_step else step for step in run.get('relaunches', ())]
    if len(at) > MANY_RELAUNCHES:  # Ticks on the x axis: 3,000 dotted lines had hidden every curve
      ax.plot(at, np.zeros(len(at)), '|', color=color, markersize=9, clip_on=False,  # (a review).
              transform=ax.get_xaxis_transform(), label=f'{run["label"]} relaunch')
      ticked = True
    for x in at if len(at) <= MANY_RELAUNCHES else ():  # Where a relaunch resumed: a dotted line.
      ax.axvline(x, color=color, linestyle=':', linewidth=0.9, alpha=0.8,
                 label=f'{run["label"]} relaunch')
      relaunched = True
  ax.set_xlabel('epoch' if use_epochs else 'step' + (
      f' ({_short(", ".join(redefined), 60)}: epochs redefined by a relaunch with another batch '
      'size)' if redefined else ''))
  values = np.concatenate(values) if values else np.zeros(0)
  log = log_if_spread and _spread(values, starts)
  ax.set_ylabel(ylabel + (' (log scale)' if log else ''))
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.set_xlim(left=0)
  if log:  # One validation loss of 6.7e11 had flattened every other curve onto 0 (a figure review).
    ax.set_yscale('log')
  elif values.size and values.max() > 0:
    # From 0, so a change of a tenth of a point does not fill the axes (every plotted value - loss,
    # accuracy, learning rate - is at least 0), and with room above the highest point (the
    # autoscaled top had been a twentieth of the data's span above it: a flat curve lay on the
    # frame, a figure review).
    ax.set_ylim(0, max(ax.get_ylim()[1], values.max() * 1.06))
  else:
    ax.set_ylim(bottom=0)
  if longest == 1:
    ax.text(0.5, 0.5, 'one logged point per line so far: no curve yet', transform=ax.transAxes,
            ha='center', va='center', color='0.4')
  names = dict(zip((r['label'] for r in runs), legend_labels([r['label'] for r in runs])))
  handles = [Line2D([], [], color=c, label=names[name]) for name, c in drawn_runs]
  if len(styles) > 1 or marked:
    handles += [Line2D([], [], color='0.3', linestyle=st, marker='o' if st != '-' else None,
                       markersize=3, label=STYLES[st]) for st in styles]
  if marked:
    handles.append(Line2D([], [], color='0.3', linestyle='', marker='x',
                          label='not finite (left out)'))
  if relaunched:
    handles.append(Line2D([], [], color='0.3', linestyle=':', linewidth=0.9,
                          label='resumed by a relaunch'))
  if ticked:
    handles.append(Line2D([], [], color='0.3', linestyle='', marker='|', markersize=9,
                          label=f'resumed by a relaunch (over {MANY_RELAUNCHES}: ticks)'))
  if handles:
    ax.legend(handles=handles, fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0),
              ncol=1 if len(handles) <= 24 else 2, frameon=False)
  figures.save(fig, path)


LOG_SPREAD = 10.0
MANY_RELAUNCHES = 30  # Above this many relaunches a run's are ticks on the x axis, not lines.


def _spread(values: np.ndarray, starts: list[float]) -> bool:
  """Whether positive `values` call for a log scale: one over LOG_SPREAD times the largest value a
  line began at (a run that diverged, a spike), which a healthy run never reaches (a fine-tune's
  loss falls from 4.6 to 0.05; against the median, its many low training rows had put it on a log
  scale: the diff review); never with a value of 0, which a log scale cannot show."""
  return bool(values.size and values.min() > 0 and values.max() > LOG_SPREAD * max(starts))


def plot_curves(runs: list[dict], key: str, ylabel: str, title: str, path: pathlib.Path,
                scale: float = 1.0, log_if_spread: bool = False) -> None:
  """Training (solid), validation (dashed, dots) and, where logged, the EMA weights' validation
  (dotted, dots: the numbers that pick `best` under checkpoint.best_weights='ema') `key` of every
  run, times `scale`; with `log_if_spread`, on a log scale where a value is over LOG_SPREAD x
  where the lines began."""
  def lines(run):
    ema = any(r.get(f'val_{key}_ema') is not None for r in run['rows'])
    label = run['label']
    return [(f'train_{key}', '-', f'{label} train'), (f'val_{key}', '--', f'{label} val')] + (
        [(f'val_{key}_ema', ':', f'{label} val EMA')] if ema else [])
  _plot_lines(runs, lines, ylabel, title, path, scale, log_if_spread)


def plot_learning_rate(runs: list[dict], title: str, path: pathlib.Path) -> bool:
  """The logged learning rate of every run; False (and no file) when no run logged one. The
  trainer logs the new head's rate: where a run's backbone runs at another (optim.backbone_lr_mult,
  optim.freeze_backbone_steps), the y label says so (the head's rate had been drawn as the run's,
  10x its backbone's in ood_best.py: a review)."""
  if not any(_lr_key(r['rows']) for r in runs):
    return False
  split = any(split_learning_rates(r.get('config')) for r in runs)
  ylabel = (HEAD_RATE_LABEL if split else 'learning rate')
  _plot_lines(runs, lambda run: [(_lr_key(run['rows']) or LR_KEYS[0], '-', run['label'])],
              ylabel, title, path)
  return True


def split_learning_rates(config: dict | None) -> bool:
  """Whether a run's config.json gives its backbone another learning rate than its head."""
  section = config.get('optim') if isinstance(config, dict) else None
  return isinstance(section, dict) and optim.splits_backbone(section)


def _lr_key(rows: list[dict]) -> str | None:
  return next((k for k in LR_KEYS if any(r.get(k) is not None for r in rows)), None)
