"""Figures and tables of one evaluation (written by jax_cifar.evaluate): the confusion matrix and
the corruption x severity accuracy heatmap and text table, with the CIFAR-100-C means.

Figures are drawn without pyplot, so importing or using this module never changes the user's
matplotlib backend.
"""

from __future__ import annotations

import pathlib
import re
import warnings
from typing import Any

import numpy as np

from jax_cifar import atomic_folder
from jax_cifar.data import ood


def new_figure(**kwargs):
  """A Figure unknown to pyplot: savefig picks Agg for PNG whatever backend the user chose."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(**kwargs)


def save(fig, path: pathlib.Path) -> None:
  """Writes the figure (tight layout) to path, whole: a temp sibling renamed into place (a kill
  had left a cut PNG over the complete one: a kill audit); the format follows its suffix.

  Its text is plain: a `$` in a run's name is a dollar sign, not mathtext (a workdir named
  `r $^$ x` had stopped evaluate with a parser traceback after all its inference, and `$x^2$`
  had read "x²": a path review). Characters the font lacks (CJK names) are said in one warning
  that names them, where matplotlib had warned once per character."""
  from matplotlib.axis import Axis, Tick  # pylint: disable=g-import-not-at-top
  from matplotlib.text import Text  # pylint: disable=g-import-not-at-top
  # (Not the axes' own tick and offset labels: a log axis writes its ticks in mathtext.)
  axes_own = {t for tick in fig.findobj(Tick) for t in (tick.label1, tick.label2)}
  axes_own |= {axis.offsetText for axis in fig.findobj(Axis)}
  for text in fig.findobj(Text):
    if text not in axes_own:
      text.set_parse_math(False)
  fmt = pathlib.Path(path).suffix.lstrip('.') or 'png'  # (The temp's name has no suffix.)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    fig.tight_layout()
    atomic_folder.write_file(path, lambda tmp: fig.savefig(tmp, bbox_inches='tight', format=fmt))
  missing = set()
  for w in caught:
    if m := _MISSING_GLYPH.match(str(w.message)):
      missing.add(chr(int(m.group(1))))
    else:
      warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
  if missing:
    warnings.warn(f"{pathlib.Path(path).name}: the figure's font has no glyph for "
                  f"{''.join(sorted(missing))!r}; they are drawn as boxes", stacklevel=2)


_MISSING_GLYPH = re.compile(r'Glyph (\d+) .*missing from (current )?font')


def plot_confusion(cm: np.ndarray, path: pathlib.Path, title: str,
                   class_to_group: np.ndarray | None = None,
                   group_names: list[str] | None = None) -> None:
  """Row-normalised confusion matrix; classes grouped by superclass when the grouping is known."""
  order = np.arange(len(cm))
  if class_to_group is not None:
    order = np.lexsort((order, class_to_group))
  rows = cm.sum(axis=1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)[np.ix_(order, order)]
  fig = new_figure(figsize=(9, 8), dpi=110)
  ax = fig.add_subplot()
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
    ax.set_xlabel('predicted class (same order: superclasses as on the left)')
  ax.set_title(title)
  save(fig, path)


def corruption_means(table: dict[str, Any]) -> dict[str, Any]:
  """The CIFAR-100-C summary numbers (fractions): `standard`, the benchmark's mean over the 15
  standard corruptions (None unless all 15 are present); `all`, the mean over every corruption
  present; `per_severity`, the mean over every corruption at each severity."""
  data = np.array([np.asarray(v, float) for v in table.values()])
  present = [k for k in ood.STANDARD_CORRUPTIONS if k in table]
  full = len(present) == len(ood.STANDARD_CORRUPTIONS)
  return {'standard': float(np.mean([np.mean(table[k]) for k in present])) if full else None,
          'num_standard': len(present), 'all': float(data.mean()), 'num_all': len(table),
          'per_severity': [float(x) for x in data.mean(axis=0)]}


def _mean_lines(means: dict, names) -> list[str]:
  n = len(ood.STANDARD_CORRUPTIONS)
  unnamed = sum(bool(re.fullmatch(r'distortion\d\d', k)) for k in names)
  standard = (f'{100 * means["standard"]:.2f}%' if means['standard'] is not None else
              # A DS542 set's files (no corrupt_manifest.json) had read "only 0 of the 15 present".
              f'n/a (the corruptions of {unnamed} distortionXX files are not known)' if unnamed else
              f'n/a (only {means["num_standard"]} of the {n} standard corruptions present)')
  return [f'standard mean ({n} corruptions): {standard}',
          f'all-corruption mean ({means["num_all"]} corruptions): {100 * means["all"]:.2f}%']


def _row_name(name: str) -> str:
  return f'{name} *' if _extra(name) else name


def _extra(name: str) -> bool:
  """One of jax_cifar.corrupt's corruptions outside the 15 standard ones (a file name such as
  distortion03, whose corruption is not known, is no corruption of either kind)."""
  return name not in ood.STANDARD_CORRUPTIONS and not re.fullmatch(r'distortion\d\d', name)


def plot_corruption_heatmap(table: dict[str, list[float]], path: pathlib.Path,
                            run_name: str, title: str = 'CIFAR-100-C') -> dict[str, Any]:
  """Top-1 accuracy (%) per corruption (rows) and severity (columns) on a fixed 0-100 scale, the
  run and both means in the title; returns `corruption_means(table)`."""
  means = corruption_means(table)
  names = list(table)
  data = 100 * np.array([np.asarray(table[n], float) for n in names])
  fig = new_figure(figsize=(6.5, 0.32 * len(names) + 2.0), dpi=120)
  ax = fig.add_subplot()
  im = ax.imshow(data, cmap='magma', vmin=0, vmax=100, aspect='auto')
  for (i, j), v in np.ndenumerate(data):
    ax.text(j, i, f'{v:.1f}', ha='center', va='center', fontsize=7,
            color='white' if v < 60 else 'black')
  ax.set_xticks(range(data.shape[1]), [str(s + 1) for s in range(data.shape[1])])
  ax.set_yticks(range(len(names)), [_row_name(n) for n in names], fontsize=8)
  ax.set_xlabel('severity')
  extra = ('\n* not a standard corruption (left out of the standard mean)'
           if any(_extra(n) for n in names) else '')
  ax.set_title(f'{run_name}: {title} top-1 accuracy (%)\n' + '\n'.join(_mean_lines(means, names))
               + extra, fontsize=9)
  fig.colorbar(im, ax=ax, label='top-1 accuracy (%)')
  save(fig, path)
  return means


def corruption_table_text(table: dict[str, list[float]], run_name: str | None = None,
                          title: str = 'CIFAR-100-C') -> str:
  """The CIFAR-100-C table as text: corruption x severity in percent, each corruption's mean, the
  per-severity mean, and the standard and all-corruption means named as such."""
  means = corruption_means(table)
  severities = len(next(iter(table.values())))
  width = max(len('mean (all)'), *(len(_row_name(n)) for n in table))
  head = ' '.join(f'{f"s{s + 1}":>6}' for s in range(severities)) + f' {"mean":>6}'
  title = f'{title} top-1 accuracy (%)' + (f' of {run_name}' if run_name else '')
  lines = [title, f'{"corruption":<{width}} {head}']
  for name, accs in table.items():
    accs = 100 * np.asarray(accs, float)
    lines.append(f'{_row_name(name):<{width}} ' + ' '.join(f'{a:6.2f}' for a in accs)
                 + f' {accs.mean():6.2f}')
  lines.append(f'{"mean (all)":<{width}} ' + ' '.join(f'{100 * a:6.2f}' for a in means['per_severity'])
               + f' {100 * means["all"]:6.2f}')
  lines += _mean_lines(means, table)
  if any(_extra(n) for n in table):
    lines.append('* not a standard corruption (left out of the standard mean)')
  return '\n'.join(lines) + '\n'
