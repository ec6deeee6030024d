"""gpu_ood.py's results as a Markdown table and a plot of accuracy per severity (also of a JSON
written by a run cut short: `python3 scripts/gpu_ood.py replot JSON PNG`)."""

import pathlib
import textwrap


def recipe(result: dict) -> str:
  """The config, of the day the run was made where recorded (the recipe changes with jax-cifar:
  a run of an earlier ood_best.py had been titled as today's, a diff review), and the --set
  overrides it trained with (the title had said configs/ood_best.py whatever --set changed)."""
  sets = (result.get('args') or {}).get('set') or []
  date = result.get('date')
  return (f'configs/ood_best.py{f" of {date}" if isinstance(date, str) else ""}'
          + (f" --set {' '.join(sets)}" if sets else ''))


def plot(result: dict, path: pathlib.Path) -> bool:
  """OOD accuracy per severity for each test-time tool, at severity 0 the clean accuracy of the
  same split (validation rows dashed); False, and no file, while no tool has OOD numbers (a run
  cut short: an empty axis had been drawn, or a KeyError raised)."""
  rows = {name: r for name, r in (result.get('eval') or {}).items() if 'ood_per_severity' in r}
  if not rows:
    return False
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(7, 4.5))
  ax = fig.add_subplot()
  for i, (name, r) in enumerate(rows.items()):
    val = name.endswith('@val')
    ys = [r['val_accuracy' if val else 'test_accuracy'], *r['ood_per_severity']]
    # A marker each, the later smaller: 'none@full' had hidden 'none' under it (a figure review).
    ax.plot(range(6), [100 * y for y in ys], marker='osD^v<>p'[i % 8],
            markersize=max(3.0, 7.0 - 0.5 * i), linestyle='--' if val else '-',
            label=f"{name} (OOD {100 * r['ood_accuracy']:.1f})")
  ax.set_xticks(range(6), ['clean', '1', '2', '3', '4', '5'])
  ax.set_xlabel('severity')
  ax.set_ylabel('top-1 accuracy (%)')
  t = result.get('train')
  trained = f"{t['seconds']:.0f} s of training" if t else 'training did not finish'
  ax.set_title(f"{recipe(result)}, {result['epochs']} epochs ({trained})", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  return True


def plot_runs(runs: dict[str, dict], path: pathlib.Path, about: str | None = None) -> bool:
  """Several runs' test-split rows on one axis (a colour per run, a line style per test-time
  tool), each run's recipe in the title and the JSON's `about` text under the axes: the
  comparison docs/robustness.md shows (its figure had been drawn by hand, titled with one of the
  two recipes: a figure review). False, and no file, while no run has OOD numbers."""
  rows = [(name, tool, r) for name, run in runs.items()
          for tool, r in (run.get('eval') or {}).items()
          if 'ood_per_severity' in r and not tool.endswith('@val')]
  if not rows:
    return False
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(7.5, 5))
  ax = fig.add_subplot()
  tools = list(dict.fromkeys(tool for _, tool, _ in rows))
  colors = {name: f'C{i}' for i, name in enumerate(runs)}
  for name, tool, r in rows:
    ax.plot(range(6), [100 * y for y in (r['test_accuracy'], *r['ood_per_severity'])],
            color=colors[name], linestyle=('-', '--', ':', '-.')[tools.index(tool) % 4],
            marker='os^Dv'[tools.index(tool) % 5], label=f"{name}: {tool} (OOD "
            f"{100 * r['ood_accuracy']:.1f})")
  ax.set_xticks(range(6), ['clean', '1', '2', '3', '4', '5'])
  ax.set_xlabel('severity')
  ax.set_ylabel('top-1 accuracy (%), test split')
  ax.set_title('\n'.join(f"{name}: {recipe(run)}, {run.get('epochs')} epochs"
                         for name, run in runs.items()), fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False)
  if isinstance(about, str):  # (What the JSON says of its runs: a recipe of that day, etc.)
    ax.text(0.0, -0.14, textwrap.fill(about, 120), transform=ax.transAxes, fontsize=7,
            va='top', color='0.3')
  fig.savefig(path, dpi=110, bbox_inches='tight')
  return True


def table(result: dict) -> str:
  """The results as a Markdown table; also of a JSON written by a run cut short."""
  t = result.get('train')
  if t is None:
    return f"{recipe(result)}, {result['epochs']} epochs: training did not finish"
  stopped = ' STOPPED AT DEADLINE' if t['stopped_by_deadline'] else ''
  rate = t.get('images_per_sec_median')
  step = result.get('step')
  lines = [f"{recipe(result)}, {result['epochs']} epochs: {t['step']} steps in "
           f"{t['seconds']:.0f}s (median {'-' if rate is None else f'{rate:,.0f}'} img/s)"
           f"{stopped}; 'best' checkpoint{'' if step is None else f' (step {step})'}, "
           f"{result.get('weights')} weights; OOD = {result['args']['ood_limit']} images x 19 x 5 "
           "(TOOL: test images, TOOL@val: validation images)",
           '| test-time tool | clean val | clean test | OOD | OOD sev 1..5 | img/s | s |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  for name, r in result.get('eval', {}).items():
    if 'skipped' in r or 'error' in r:
      lines.append(f'| {name} | {r.get("skipped") or r.get("error")} | | | | | |')
      continue
    sev = ' / '.join(f'{100 * v:.1f}' for v in r.get('ood_per_severity', []))
    pct = lambda v: f'{100 * v:.2f}' if v is not None else '-'
    ips = r['ood_images_per_sec']  # None where no OOD file was timed: unknown, not 0
    lines.append(f"| {name} | {pct(r.get('val_accuracy'))} | {pct(r['test_accuracy'])} | "
                 f"{pct(r['ood_accuracy'])} | {sev} | "
                 f"{'-' if ips is None else f'{ips:.0f}'} | {r['seconds']:.0f} |")
  return '\n'.join(lines)
