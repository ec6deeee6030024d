"""Orbax checkpoints in WORKDIR/checkpoints/: 'latest' (every N steps, resume) and 'best' (by val accuracy).

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact and the next start ignores the debris.
"""

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(Exception):
  """A checkpoint exists but cannot be restored into this run's model/optimizer."""


class Checkpoints:

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2, create: bool = True):
    root = pathlib.Path(workdir).absolute() / 'checkpoints'
    opts = dict(create=create, enable_async_checkpointing=True)
    self.latest = ocp.CheckpointManager(
        root / 'latest', options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts))
    self.best = ocp.CheckpointManager(
        root / 'best', options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m['val_accuracy'], best_mode='max', **opts))

  def save_latest(self, state: Any, step: int) -> None:
    if self.latest.latest_step() != step:
      self.latest.save(step, args=ocp.args.StandardSave(state))

  def best_accuracy(self) -> float | None:
    step = self.best.best_step()
    if step is None:
      return None
    metrics = self.best.metrics(step)
    return float(metrics['val_accuracy']) if metrics else None

  def maybe_save_best(self, state: Any, step: int, val_accuracy: float) -> bool:
    """Saves when `val_accuracy` beats the best so far; a non-finite accuracy never counts."""
    if not np.isfinite(val_accuracy):
      return False
    best = self.best_accuracy()
    if best is not None and val_accuracy <= best:
      return False
    self.best.save(step, args=ocp.args.StandardSave(state), metrics={'val_accuracy': val_accuracy},
                   force=True)
    return True

  def restore(self, which: str, target: Any) -> tuple[Any, int] | None:
    """Restores 'latest' or 'best' into the structure/shardings of `target`; None if absent."""
    manager = {'latest': self.latest, 'best': self.best}[which]
    step = manager.latest_step() if which == 'latest' else manager.best_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f'checkpoint {manager.directory}/{step} does not match this config\'s model or optimizer '
          f'(a different model.name/width/num_classes?): {str(e).splitlines()[0]}') from e
    return restored, step

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()
