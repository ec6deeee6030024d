"""Which of a run's evaluations are behind its checkpoints: `report` marks a summary row whose
test/OOD numbers are of an earlier step than its best validation, and warns of each stale file."""

from __future__ import annotations

import datetime
import pathlib

from jax_cifar import workdir

CHECKPOINT_KINDS = ('best', 'latest')  # WORKDIR/checkpoints/<kind>/<step>/ (checkpoints.py).


def eval_files(run_dir: pathlib.Path) -> list[pathlib.Path]:
  """The run's eval_<tag>.json, without the eval_<tag>.step<N>.json in which evaluate keeps an
  older checkpoint's numbers."""
  return [p for p in sorted(run_dir.glob('eval_*.json')) if '.step' not in p.stem]


def _checkpoint(run_dir: pathlib.Path, kind: str) -> tuple[pathlib.Path, float] | None:
  """The newest complete-looking step folder of checkpoints/<kind>/ and when it was last written
  (the newest mtime of the folder and its entries: orbax finishes a step with commit_success.txt)."""
  folder = run_dir / 'checkpoints' / kind
  steps = ([p for p in folder.iterdir() if p.is_dir() and workdir.is_step_number(p.name)]
           if folder.is_dir() else [])
  if not steps:
    return None
  step = max(steps, key=lambda p: int(p.name))
  return step, max([step.stat().st_mtime] + [p.stat().st_mtime for p in step.iterdir()])


def _when(mtime: float) -> str:
  return datetime.datetime.fromtimestamp(mtime).strftime('%Y-%m-%d %H:%M:%S')


def checkpoint_of(run: dict, name: str) -> tuple[pathlib.Path, float] | None:
  """_checkpoint of the kind (best, latest) that eval `name` (eval_best_tta-flip, ...) evaluated."""
  kind = next((k for k in CHECKPOINT_KINDS if name[len('eval_'):].startswith(k)), None)
  return _checkpoint(run['dir'], kind) if kind else None


def behind(run: dict, name: str) -> tuple[int, int] | None:
  """(the step eval `name` records, its checkpoint's newest step) when it records an earlier one."""
  ckpt, step = checkpoint_of(run, name), run['evals'].get(name, {}).get('step')
  if ckpt is None or not isinstance(step, int) or step >= int(ckpt[0].name):
    return None
  return step, int(ckpt[0].name)


def stale_evaluations(run: dict) -> list[str]:
  """One message per eval_<best|latest...>.json of an earlier step than its checkpoint's newest
  (by the step it records, and the save of that step it records; by the time it was written if it
  records no step)."""
  out = []
  for path in eval_files(run['dir']):
    ckpt = checkpoint_of(run, path.stem)
    if ckpt is None:
      continue
    record = run['evals'].get(path.stem, {})
    if isinstance(record.get('step'), int):  # (File times had been used.)
      steps = behind(run, path.stem)
      if steps:
        out.append(f'{run["label"]}: {path.name} holds step {steps[0]}, and its checkpoint is now '
                   f'{ckpt[0].relative_to(run["dir"])}: re-run evaluate')
      elif (isinstance(record.get('step_saved_ns'), int) and record['step'] == int(ckpt[0].name)
            and workdir.saved_at_ns(ckpt[0]) != record['step_saved_ns']):
        # A run retrained from scratch to the same step: the save evaluate recorded tells.
        out.append(f'{run["label"]}: {path.name} holds an earlier save of step {record["step"]}: '
                   f'{ckpt[0].relative_to(run["dir"])} was saved again since: re-run evaluate')
    elif path.stat().st_mtime < ckpt[1]:
      out.append(f'{run["label"]}: {path.name} (written {_when(path.stat().st_mtime)}) is older '
                 f'than its checkpoint {ckpt[0].relative_to(run["dir"])} (written {_when(ckpt[1])}); '
                 'its numbers may be from an earlier checkpoint: re-run evaluate')
  return out
