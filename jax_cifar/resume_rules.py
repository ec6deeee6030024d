"""What a resumed run may change: the keys that leave its trajectory as it was, the ones that only
extend its schedule, and the changes no resume can carry over (another model, optimizer or EMA:
what the checkpoints hold). `training/relaunch.py` compares a launch with the run's previous one
by these rules."""

from __future__ import annotations

import os
import shlex
from typing import Any

from jax_cifar import optim
from jax_cifar import workdir as workdir_lib

class EndsBeforeTheStep(workdir_lib.WorkdirError):
  """A train.num_epochs that ends the schedule before the step resumed from: the one refusal that
  depends on that step (start.resume_or_init checks the others before it restores)."""


# Keys a resumed run may change freely: where data lives, logging, evaluation cadence, stopping.
SAFE_TO_CHANGE = (
    'data.dir', 'data.download', 'data.tfds_data_dir', 'data.worker_count', 'data.prefetch',
    'train.resume', 'train.max_steps', 'train.log_every_steps', 'train.eval_batch_size',
    'train.eval_every_epochs', 'train.on_nonfinite', 'train.allow_config_change',
    'checkpoint.every_steps', 'checkpoint.keep', 'checkpoint.best_weights', 'wandb.',
    'model.init_from', 'model.init_from_weights', 'model.pretrained',  # Read at step 0 only.
    'model.remat', 'model.scan_blocks')  # How the step is compiled; same parameters and layout
# (scan_blocks sums in another order: the relaunch says that run is not bit-exact).

# May change, and is logged with what it does to the schedule: training longer.
EXTENDABLE = ('train.num_epochs',)



def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{key: (old, new)} for every key whose value differs. A key the old run's config.json lacks
  (added to jax-cifar since) had its default value then."""
  defaults = workdir_lib.flat_defaults()
  a, b = workdir_lib.flatten(old), workdir_lib.flatten(new)
  a.update({k: defaults[k] for k in b if k not in a and k in defaults})
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def safe_to_change(key: str) -> bool:
  """Whether a resumed run may change `key` without altering what it trains (SAFE_TO_CHANGE)."""
  return any(key == s or (s.endswith('.') and key.startswith(s)) for s in SAFE_TO_CHANGE)


def is_safe_change(key: str, before: Any, after: Any) -> bool:
  """safe_to_change, or data.source between local and tfds (the pickles and tfds give the same
  images in the same order: tested)."""
  return safe_to_change(key) or (key == 'data.source' and {before, after} == {'local', 'tfds'})


_STATE_KEYS = ('model.name', 'model.num_classes', 'model.stem', 'model.width', 'optim.name')


def altered_state(changes: dict[str, tuple[Any, Any]], new: dict) -> list[str]:
  """The changed keys that alter what the run's checkpoints hold (parameters, the optimizer's
  state, an EMA), which no resume can carry over; `new` is the launch's flat config (for the
  values that did not change)."""
  def value(key, which):  # 0: before, 1: after
    return changes[key][which] if key in changes else new.get(key)

  def split(which):  # optim.make_optimizer's two parameter groups (optax.multi_transform).
    section = {k: value(f'optim.{k}', which) for k in ('backbone_lr_mult', 'freeze_backbone_steps')}
    return optim.splits_backbone({k: v for k, v in section.items() if v is not None})

  def toggled(key, off):
    return key in changes and (changes[key][0] == off) != (changes[key][1] == off)

  keys = [k for k in changes if k in _STATE_KEYS]
  keys += [k for k, off in (('ema.decay', 0), ('optim.grad_clip_norm', 0)) if toggled(k, off)]
  if new.get('optim.name') == 'sgd' and toggled('optim.momentum', 0):  # (a trace, or none)
    keys.append('optim.momentum')
  if split(0) != split(1):
    keys += [k for k in ('optim.backbone_lr_mult', 'optim.freeze_backbone_steps') if k in changes]
  return keys


def way_on(keys: list[str], workdir: str | os.PathLike) -> str:
  """What to do about state-altering changes `keys`: another model starts afresh; a new head,
  another optimizer or an EMA can start from this run's weights (model.init_from)."""
  if any(k.startswith('model.') and k != 'model.num_classes' for k in keys):
    return 'a different model starts a new run in a fresh --workdir'
  return ('start a new run from this one\'s weights (a fresh optimizer, step 0): --workdir NEW '
          f'--config.model.init_from={shlex.quote(str(workdir))}')  # (A space had split it.)


class ChangedConfig(workdir_lib.WorkdirError):
  """A relaunch refused for its config's changes (`keys`) to the run's (the train CLI adds, where
  they came with a --config file, that the run's own config.json goes on without them)."""

  def __init__(self, message: str, keys: list[str]):
    super().__init__(message)
    self.keys = list(keys)


def check_resume(changes: dict[str, tuple[Any, Any]], *, allow: bool, epoch: float,
                 workdir: str | os.PathLike, new: dict) -> list[str]:
  """Raises WorkdirError for changes that alter the run's trajectory (unless `allow`); returns
  the keys that may change but deserve a log line. `new`: the launch's flat config."""
  notable, refused, refused_keys = [], [], []
  for key, (before, after) in changes.items():
    if is_safe_change(key, before, after):
      continue
    if key in EXTENDABLE and isinstance(before, (int, float)) and isinstance(after, (int, float)):
      if after < epoch:
        raise EndsBeforeTheStep(
            f'{key} {before} -> {after}: the run is already at epoch {epoch:.2f}')
      notable.append(key)
    elif allow:
      notable.append(key)
    else:
      refused.append(f'{key} {before!r} -> {after!r}')
      refused_keys.append(key)
  state = altered_state(changes, new)
  if allow and state:  # Refused before the notes on the other changes, and naming only these
    # (the restore had failed after 14 notes, blaming every change: a review).
    these = '; '.join(f'{k} {changes[k][0]!r} -> {changes[k][1]!r}' for k in state)
    raise ChangedConfig(
        f'this launch\'s config does not match the run\'s checkpoints: {these} change'
        f'{"s" if len(state) == 1 else ""} what they hold (the parameters, the optimizer\'s state '
        'or the EMA), which train.allow_config_change cannot carry over: undo '
        f'{"it" if len(state) == 1 else "them"}, or {way_on(state, workdir)}', state)
  if refused and state:  # (allow_config_change would only fail at the restore.)
    raise ChangedConfig(
        f'resuming with a changed config would silently alter the run: {"; ".join(refused)}. '
        f'{", ".join(state)} change{"s" if len(state) == 1 else ""} what the run\'s checkpoints '
        'hold, which train.allow_config_change cannot carry over: undo '
        f'{"it" if len(state) == 1 else "them"}, or {way_on(state, workdir)}',
        refused_keys + state)
  if refused:
    raise ChangedConfig(
        f'resuming with a changed config would silently alter the run: {"; ".join(refused)}. '
        'Start a new run in a fresh --workdir, or pass --config.train.allow_config_change=true '
        'to apply the change from this step on (launches.jsonl records it; in Python: '
        'config.train.allow_config_change = True)', refused_keys)
  return notable
