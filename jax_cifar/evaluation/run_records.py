"""A training run's records as the report reads them: metrics rows (finite numbers in their range,
the steps where a value was not finite), config, launches (where the run was resumed, each
launch's batch size) and evaluation JSONs, each damaged file said in a note rather than raised."""

from __future__ import annotations

import json
import math
import pathlib

from jax_cifar import errors, tracking, workdir
from jax_cifar.evaluation import stale_evals


class ReportError(errors.UserError):
  """A folder that cannot be reported on: missing, or not a training run."""


def _read_json(path: pathlib.Path, notes: list[str] | None = None, label: str = '') -> dict:
  """The JSON object in `path`; {} if it is missing, unreadable or holds something else, the last
  two said in `notes` (a cut eval_best.json had left its run's test accuracy '-' without a word:
  a bad-input review)."""
  try:
    value = json.loads(path.read_text())
  except FileNotFoundError:
    return {}
  except (OSError, ValueError, RecursionError) as e:  # (RecursionError: JSON nested 100k deep.)
    why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
    if notes is not None:
      notes.append(f'{label}: {path.name} is unreadable ({why}): its numbers are left out')
    return {}
  if not isinstance(value, dict):
    if notes is not None:
      notes.append(f'{label}: {path.name} holds a JSON {type(value).__name__}, not an object: its '
                   'numbers are left out')
    return {}
  return value


def load_run(run_dir: str | pathlib.Path, label: str | None = None) -> dict:
  """What a run directory holds: metrics rows, config, and the evaluation JSONs if present."""
  run_dir = pathlib.Path(workdir.expanded(run_dir))
  if not run_dir.is_dir():
    what = 'a file, not a folder' if run_dir.exists() else 'no such folder'
    raise ReportError(f'{run_dir}: {what} (give training run directories)')
  if not (run_dir / tracking.METRICS_FILE).exists():
    started = (run_dir / workdir.LAUNCHES_FILE).exists()  # (It had read "not a training run
    raise ReportError(f'{run_dir}: no {tracking.METRICS_FILE} ' + (  # directory": a kill review.)
        'yet (a run that has not started training)' if started else
        '(not a training run directory)'))
  label, notes = label or run_dir.name, []
  config = _read_json(run_dir / workdir.CONFIG_FILE, notes, label)
  odd = [k for k in CONFIG_SECTIONS if k in config and not isinstance(config[k], dict)]
  if odd:  # A hand edit ("train": null) had ended the report in a traceback, figures half written.
    notes.append(f'{label}: {workdir.CONFIG_FILE} has no {" or ".join(odd)} section (not an object): '
                 'its columns are left empty')
    config = {k: v for k, v in config.items() if k not in odd}
  raw = tracking.read_metrics(run_dir)
  rows, dropped, odd_values = _finite_rows(raw)
  if dropped:  # A NaN had made the best accuracy "nan%" and emptied every curve (an audit).
    notes.append(f'{label}: {dropped} value(s) in {tracking.METRICS_FILE} are not finite numbers '
                 '(NaN, inf, text): left out of the curves and the table')
  if odd_values:  # An accuracy of 1.7 had been "best val acc 170.00%" (a bad-input review).
    notes.append(f'{label}: {odd_values} value(s) in {tracking.METRICS_FILE} are out of their range '
                 '(an accuracy outside [0, 1], a step that is not a whole number >= 0; a row '
                 'without its step counts whole): left out of the curves and the table')
  if not rows:
    notes.append(f'{label}: {tracking.METRICS_FILE} holds no rows (a run stopped before its first '
                 'log?): no curves and no training numbers for it')
  return {'name': run_dir.name, 'label': label, 'dir': run_dir, 'rows': rows, 'config': config,
          'nonfinite': _nonfinite_steps(raw), 'unread_sections': odd,
          **_launch_facts(run_dir, rows),
          'evals': {p.stem: _read_json(p, notes, label) for p in stale_evals.eval_files(run_dir)},
          'warnings': notes}


CONFIG_SECTIONS = ('model', 'train', 'data', 'optim', 'checkpoint')  # The ones the summary reads.


def _launch_facts(run_dir: pathlib.Path, rows: list[dict]) -> dict:
  """From launches.jsonl: `relaunches`, the steps the run was resumed at (start_step above 0, up to
  its last logged step), for the curves to mark (a relaunch with another schedule had bent the
  learning rate with nothing saying why there, a figure review); and `batch_sizes`, (start_step,
  train.batch_size) of each launch, for the training time (the last launch's batch size had been
  used for every row: 37% off after a relaunch with twice the batch, a longevity review). Rows
  that cannot be read are passed over."""
  try:
    lines = (run_dir / workdir.LAUNCHES_FILE).read_text().splitlines()
  except (OSError, UnicodeDecodeError):
    return {'relaunches': [], 'batch_sizes': []}
  last = max((r['step'] for r in rows if isinstance(r.get('step'), (int, float))), default=0)
  steps, batch_sizes = set(), []
  for line in lines:
    try:
      launch = json.loads(line)
      step, batch = launch.get('start_step'), launch.get('config', {}).get('train', {}).get(
          'batch_size')
    except (ValueError, AttributeError, RecursionError):
      continue
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
      continue
    if 0 < step <= last:
      steps.add(step)
    if type(batch) is int and batch > 0:
      batch_sizes.append((step, batch))
  return {'relaunches': sorted(steps), 'batch_sizes': batch_sizes}


def _finite_rows(rows: list[dict]) -> tuple[list[dict], int, int]:
  """`rows` keeping only finite numbers in their range, how many other values were left out (not
  counting nulls: the trainer logs a non-finite value as null, and nothing reads those), and how
  many finite ones were out of range (an accuracy outside [0, 1], a step that is no whole number
  >= 0: such a row is left out whole)."""
  finite = [{k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
             and math.isfinite(v)} for r in rows]
  given = sum(v is not None for r in rows for v in r.values())
  kept = []
  for row in finite:
    if not ('step' in row and row['step'] >= 0 and float(row['step']).is_integer()):
      continue
    kept.append({k: v for k, v in row.items() if 'accuracy' not in k or 0 <= v <= 1})
  in_range = sum(len(r) for r in kept)
  odd = sum(len(r) for r in finite) - in_range
  return kept, given - in_range - odd, odd


def _nonfinite_steps(rows: list[dict]) -> dict[str, list]:
  """{column: steps} of the values logged as null (the trainer's non-finite number) or as a
  non-finite float: the curves break there and mark them."""
  out = {}
  for r in rows:
    if isinstance(r.get('step'), (int, float)) and not isinstance(r.get('step'), bool):
      for k, v in r.items():
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
          out.setdefault(k, []).append(r['step'])
  return out


def unique_labels(run_dirs: list[str | pathlib.Path]) -> list[str]:
  """Each run's shortest path suffix that no other run ends with (`a/run`, `b/run`, `c`)."""
  parts = [pathlib.Path(d).resolve().parts for d in run_dirs]
  first = {}
  for d, p in zip(run_dirs, parts):
    if p in first:
      raise ReportError(f'{d}: the same run as {first[p]} (give each run once)')
    first[p] = d
  labels = []
  for i, p in enumerate(parts):
    others = [q for j, q in enumerate(parts) if j != i]
    k = 1
    while k < len(p) and any(q[-k:] == p[-k:] for q in others):
      k += 1
    labels.append(str(pathlib.PurePath(*p[-k:])))
  return labels
