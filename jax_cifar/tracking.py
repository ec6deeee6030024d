"""Where numbers go: metrics.jsonl (always), wandb (when enabled; never fatal), a tqdm bar."""

import json
import math
import os
import pathlib
import shutil
import sys
from typing import Any

import jax
import tqdm
from absl import logging

from jax_cifar import atomic_folder, own_files, parallel
from jax_cifar import workdir as workdir_lib
from jax_cifar.workdir import METRICS_FILE


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl. A torn last line (a crash) is ignored; another line that
  is not a row (bit rot, a hand edit: it had stopped a resume with a traceback) is skipped with
  a warning."""
  path = pathlib.Path(workdir) / METRICS_FILE
  rows, bad = _read_rows(path)
  if bad:
    logging.warning('%s: skipped %s', path, _not_rows(bad))
  return rows


_VALIDATION_KEYS = tuple(f'val_{k}{s}' for k in ('loss', 'accuracy', 'top5_accuracy')
                         for s in ('', '_ema'))


def logged_validation(workdir: str | pathlib.Path, step: int) -> dict:
  """The validation numbers metrics.jsonl holds for `step` (the last row of them), or {}."""
  rows = [r for r in read_metrics(workdir) if r.get('step') == step and 'val_accuracy' in r]
  return {k: rows[-1][k] for k in _VALIDATION_KEYS if k in rows[-1]} if rows else {}


def _read_rows(path: pathlib.Path) -> tuple[list[dict], list[int]]:
  """(the rows, the numbers of the lines before the last that are not rows)."""
  if not path.exists():
    return [], []
  rows, bad = [], []
  lines = path.read_bytes().decode('utf-8', errors='replace').splitlines()
  for number, line in enumerate(lines, 1):
    try:
      row = json.loads(line, parse_int=_json_int)
    except (ValueError, RecursionError):  # Cut, or crafted (a 5,000-digit int, 100k deep).
      row = None
    if isinstance(row, dict) and isinstance(row.get('step'), int):
      rows.append(row)
    elif number < len(lines) and line.strip():
      bad.append(number)
  return rows, bad


def _json_int(text: str) -> int | float:
  """A JSON integer, or an infinity where it is beyond float's range (a hand edit: a 400-digit
  step or accuracy had been an OverflowError traceback in report and evaluate --weights auto,
  whose readers take numbers as floats; an infinite step makes the line no row)."""
  value = int(text)
  try:
    float(value)
  except OverflowError:
    return math.inf if value > 0 else -math.inf
  return value


def _strict(row: dict) -> dict:
  """A row read back, its infinities (a hand-edited 400-digit number: _json_int) null again, so
  every line stays strict JSON."""
  return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _not_rows(bad: list[int]) -> str:
  """'N line(s) that are not metrics rows (line a, b, ...)': one wording for reader and writer."""
  shown = ', '.join(map(str, bad[:5])) + (' ...' if len(bad) > 5 else '')
  return f'{len(bad)} line(s) that are not metrics rows (line {shown})'


def _clean(value: Any) -> Any:
  value = float(value) if hasattr(value, 'dtype') or isinstance(value, (int, float)) else value
  return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsWriter:
  """Appends one JSON object per line; on resume, forgets rows after the restored step.

  Rows logged after the last checkpoint are re-logged by the resumed run, so truncating to the
  restored step logs no step twice. A launch that stops (train.max_steps, a signal) logs the steps
  since its last row in a row of its own; after a kill, the steps between the restored step's row
  and the restored step are in no row. A row of fewer steps than train.log_every_steps says how
  many in `window_steps`.
  """

  def __init__(self, workdir: str | pathlib.Path, config, resume_step: int):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / METRICS_FILE
    self.is_chief = jax.process_index() == 0
    self.wandb_run = None
    with parallel.fail_together(f'rewriting {self.path}'):
      if self.is_chief:
        self._open(config, resume_step)

  def _open(self, config, resume_step: int) -> None:
    rows, bad = _read_rows(self.path)
    if bad:  # Rewritten below without them: the file as it was is kept beside it.
      copy = workdir_lib.unused_path(self.workdir, 'metrics.damaged', '.jsonl')
      with open(self.path, 'rb') as source, os.fdopen(own_files.open_own_file(
          copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL), 'wb') as target:  # (Never a planted link.)
        shutil.copyfileobj(source, target)
      logging.warning('%s: the resumed run leaves out %s, and the file as it was is kept as %s',
                      self.path, _not_rows(bad), copy)
    kept = [r for r in rows if r['step'] <= resume_step]
    # A temp of its own, named after the file on an error (a full disk: a kill review); a fixed
    # metrics.tmp had been written through a link planted there (a security review).
    atomic_folder.write_file(self.path, lambda tmp: pathlib.Path(tmp).write_text(
        ''.join(json.dumps(_strict(r)) + '\n' for r in kept)))
    (self.workdir / 'metrics.tmp').unlink(missing_ok=True)  # (Older code's temp, or a link.)
    self._file = os.fdopen(own_files.open_own_file(self.path, os.O_WRONLY | os.O_APPEND), 'a')
    self.wandb_run = _start_wandb(config, self.workdir, resume=resume_step > 0)

  def write(self, step: int, metrics: dict) -> None:
    """Process 0 appends the row; every process calls it, and all stop if the write failed."""
    with parallel.fail_together(f'writing {self.path}'):
      if self.is_chief:
        self._write(step, metrics)

  def _write(self, step: int, metrics: dict) -> None:
    row = {'step': int(step), **{k: _clean(v) for k, v in metrics.items()}}
    try:
      self._file.write(json.dumps(row) + '\n')
      self._file.flush()
    except OSError as e:  # A failed write() names no file.
      raise OSError(e.errno, e.strerror, str(self.path)) from e
    if self.wandb_run is not None:
      try:
        # The training step is a metric, the x-axis of every other one (_start_wandb); wandb's own
        # step only counts the rows. Given as wandb's step, a resumed run's re-logged steps (after
        # the last checkpoint of a killed launch) were below the run's current step, and wandb
        # drops those: it kept the killed launch's values where metrics.jsonl has the new ones (a
        # review).
        self.wandb_run.log(row)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('wandb.log failed (%s); continuing with metrics.jsonl only.', e)
        self.wandb_run = None

  def set_summary(self, values: dict) -> None:
    """Values for wandb's runs table (the run's summary), e.g. the run's best validation accuracy
    so far, which the trainer knows across relaunches: the table had shown the last validation (0
    for a run whose best was 0.02), and wandb's own max summary is of one launch's rows (a wandb
    review). metrics.jsonl does not hold them."""
    if self.is_chief and self.wandb_run is not None:
      try:
        self.wandb_run.summary.update({k: _clean(v) for k, v in values.items()})
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('wandb summary update failed (%s); continuing.', e)

  def close(self, exit_code: int = 0, preempted: bool = False) -> None:
    """Closes metrics.jsonl and finishes the wandb run with `exit_code`: non-zero for a run that
    failed (wandb had marked a crashed run "Finished": a review); a run stopped by a signal, to be
    resumed, is marked `preempted` too."""
    if not self.is_chief:
      return
    try:
      self._file.close()
    except OSError as e:  # The row a failed write left in the buffer: that write's error, which
      if exit_code == 0:  # names the file, is the one raised (this one had replaced it: a review).
        raise OSError(e.errno, e.strerror, str(self.path)) from e
      logging.warning('%s: the last row is not written (%s).', self.path, e.strerror)
    if self.wandb_run is not None:
      try:
        if preempted:
          self.wandb_run.mark_preempting()
        self.wandb_run.finish(exit_code=exit_code)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('wandb.finish failed: %s', e)



WANDB_INIT_TIMEOUT_S = 30.0  # How long an online wandb may take to start before training goes on.


def _start_wandb(config, workdir: pathlib.Path, resume: bool):
  """Starts a wandb run, or returns None (with a warning) if disabled or wandb cannot start.

  The run id is wandb's own (`run.id`), kept in WORKDIR/wandb_run_id, so a resumed training run
  continues the same wandb run.
  """
  if config.wandb.mode == 'disabled':
    if os.environ.get('WANDB_MODE') in ('online', 'offline'):  # (Had been ignored without a word.)
      logging.warning("WANDB_MODE=%s is not read: wandb follows config.wandb.mode, which is "
                      "'disabled'; pass --config.wandb.mode=%s.", os.environ['WANDB_MODE'],
                      os.environ['WANDB_MODE'])
    return None
  if os.environ.get('WANDB_MODE') == '':  # wandb rejects an empty value; treat it as unset.
    del os.environ['WANDB_MODE']
  id_file = workdir / 'wandb_run_id'
  try:
    run_id = id_file.read_text().strip() if resume and id_file.exists() else None
  except (OSError, UnicodeDecodeError) as e:  # (A traceback that stopped training: a review.)
    logging.warning('%s cannot be read (%s): this launch starts a new wandb run.', id_file,
                    'not text' if isinstance(e, UnicodeDecodeError) else e.strerror or e)
    run_id = None
  try:
    import wandb  # pylint: disable=g-import-not-at-top
    if run_id is not None:
      try:
        wandb.Settings(run_id=run_id)
      except Exception as e:  # pylint: disable=broad-except  (A damaged file had cost the run wandb.)
        logging.warning('%s holds %r, which wandb refuses as a run id (%s): this launch starts a '
                        'new wandb run.', id_file, run_id[:80], ' '.join(str(e).split())[:200])
        run_id = None
    run = wandb.init(
        project=config.wandb.project, entity=config.wandb.entity or None,
        name=config.wandb.name or workdir.name, tags=list(config.wandb.tags),
        mode=config.wandb.mode, dir=str(workdir), config=config.to_dict(),
        id=run_id, resume='allow' if run_id else None,
        # wandb's own 90 s: offline networks held each launch that long (an audit).
        settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S))
  except Exception as e:  # pylint: disable=broad-except
    # The whole message: pydantic's first line only counts the errors, its cause comes after.
    logging.warning('wandb could not start (%s: %s); training continues, metrics go to %s only.',
                    type(e).__name__, ' '.join(str(e).split()), METRICS_FILE)
    return None
  if run is not None and getattr(run, 'id', None):  # (Replaced, not written through a link.)
    atomic_folder.write_file(id_file, lambda tmp: pathlib.Path(tmp).write_text(run.id + '\n'))
  try:  # Charts against the training step (MetricsWriter._write), not wandb's row count.
    if run is not None:
      run.define_metric('step')
      run.define_metric('*', step_metric='step')
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('wandb.define_metric failed (%s); its charts count rows, not steps.', e)
  return run


def say(message: str) -> None:
  """One line for the user on stderr (process 0), printed above the progress bar, never hidden by
  --verbosity (library INFO logs are; see train.py)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stderr)


def transient_bar(disable: bool) -> dict:
  """tqdm's `disable` and `mininterval` for a bar removed when done (leave=False: one per
  prediction). On a terminal it is redrawn each second. Where stderr is a file or a pipe (a SLURM
  log, nohup, a notebook's capture) nothing can be removed: it is not drawn while another bar is
  open, which it would sit under, redrawn each second with a new line and a cursor-up escape (66
  such lines for a 19-file OOD set, thousands for the 950,000 images: a log-file review), and is
  otherwise redrawn every 30 s."""
  try:
    terminal = sys.stderr.isatty()
  except (AttributeError, ValueError):  # (A replaced or closed stderr.)
    terminal = False
  if terminal or disable:
    return {'disable': disable, 'mininterval': 1.0}
  others = any(not bar.disable for bar in list(getattr(tqdm.tqdm, '_instances', ())))
  return {'disable': others, 'mininterval': 30.0}


def progress_bar(total: int, initial: int, desc: str = 'train') -> tqdm.tqdm:
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit='step', dynamic_ncols=True,
                   disable=jax.process_index() != 0, mininterval=1.0)


def after_pause(bar: tqdm.tqdm) -> None:
  """After a pause of the steps (a validation): the next step-rate sample starts now, so the rate
  and ETA leave the pause out, while the elapsed time stays wall time. (tqdm's unpause() took the
  time since the last print off the elapsed time, which a log line's redraw had already shown:
  the elapsed time went backwards after each validation, 01:16 -> 01:09: a walkthrough.)"""
  if not bar.disable:
    bar.last_print_t, bar.last_print_n = bar._time(), bar.n  # pylint: disable=protected-access
