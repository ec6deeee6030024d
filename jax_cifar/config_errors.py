"""One line for a --config file that does not load or an override that names no key.

absl and ml_collections answer such mistakes with a traceback or nested quotes; `cli.parse_flags`
turns them into these lines: the exception's first line, the config file and line that raised, or
the key the user likely meant (ml_collections' suggestion, else the jax-cifar name of a PyTorch or
timm name, else the one key of that name in another section).
"""

from __future__ import annotations

import re
import traceback
from typing import Sequence

from absl import flags


def first_line(e: BaseException) -> str:
  """One readable line of an error raised while loading a config (ml_collections nests quotes)."""
  text = ' '.join(str(e).replace("\\'", "'").replace('\\n', ' ').split())
  if len(text) > 1 and text[0] == text[-1] == "'":  # A KeyError's repr inside an AttributeError.
    text = text[1:-1]
  if '[Errno' in text:  # config_flags wraps a missing file in two paragraphs of search paths.
    text = text[text.rindex('[Errno'):]
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _where(frames: list[tuple[str, int]]) -> str:
  """' (FILE, line N)' of the innermost frame outside the installed libraries, or ''."""
  ours = [(f, n) for f, n in frames
          if not f.startswith('<') and 'site-packages' not in f and 'dist-packages' not in f]
  return f' ({ours[-1][0]}, line {ours[-1][1]})' if ours else ''


def config_error(e: BaseException) -> str:
  """One line for an exception raised by the code of a --config file (or an override of it),
  with the file and line where it was raised. config_flags reports some of them as a flags.Error
  whose text holds the whole traceback: only its last line and innermost frame are kept."""
  text = str(e)
  if isinstance(e, flags.Error) and 'Traceback (most recent call last)' in text:
    frames = [(f, int(n)) for f, n in re.findall(r'File "([^"]+)", line (\d+)', text)]
    last = ' '.join([l for l in text.splitlines() if l.strip()][-1].split())
  else:
    frames = [(f.filename, f.lineno or 0) for f in traceback.extract_tb(e.__traceback__)]
    last = first_line(e)
  return f'bad --config or --config.KEY override{_where(frames)}: {last}'


def unknown_key(e: BaseException, argv: Sequence[str]) -> str | None:
  """The message for an override of a key the config does not have: which flag, the key
  ml_collections suggests if any ('Did you mean ...', which had come with the exception's name),
  and where the keys are listed."""
  if not isinstance(e, (AttributeError, KeyError)):
    return None
  text = first_line(e).split(': ', 1)[-1].strip('"\'')
  match = re.fullmatch(r"""(\w+)['"]*(?: Did you mean ["'](\w+)["'] instead of ["']\w+["']\?)?""",
                       text)
  if not match:
    return None
  name, close = match.groups()
  # The unknown part may be a section (--config.trian.batch_size) as well as the last key.
  named = [a.split('=', 1)[0] for a in argv
           if a.startswith('--config.') and name in a.split('=', 1)[0].split('.')[1:]]
  if not named:
    return None
  parts = named[0].split('.')
  at = len(parts) - 1 - parts[::-1].index(name)
  meant = '.'.join(parts[:at] + [close] + parts[at + 1:]) if close else _known_as(parts, at)
  hint = f'; did you mean {meant}?' if meant else ''
  return (f'{named[0]}: the config has no key {name!r}{hint} (jax_cifar/configs/default.py lists '
          'every key, with what it does)')


# Names of PyTorch scripts and timm for what jax-cifar's keys call otherwise.
COMMON_NAMES = {'learning_rate': 'lr', 'epochs': 'num_epochs', 'n_epochs': 'num_epochs',
                'bs': 'batch_size', 'wd': 'weight_decay', 'smoothing': 'label_smoothing',
                'clip_grad': 'grad_clip_norm', 'max_grad_norm': 'grad_clip_norm',
                'clip_grad_norm': 'grad_clip_norm', 'mixup': 'mixup_alpha',
                'cutmix': 'cutmix_alpha', 'warmup': 'warmup_epochs', 'arch': 'name',
                'model_name': 'name', 'ema_decay': 'decay'}


def _known_as(parts: list[str], at: int) -> str | None:
  """The override an unknown last key (parts[at] of --config.A.B) likely means, where
  ml_collections suggests none: its jax-cifar name in that section (optim.learning_rate:
  optim.lr), or the one key of that name in another section (train.label_smoothing:
  optim.label_smoothing)."""
  if at != len(parts) - 1:
    return None
  from flax import traverse_util  # pylint: disable=import-outside-toplevel  (this error only)
  from jax_cifar.configs import default  # pylint: disable=import-outside-toplevel
  keys = set(traverse_util.flatten_dict(default.get_config().to_dict(), sep='.'))
  name = COMMON_NAMES.get(parts[at], parts[at])
  if (same := '.'.join(parts[1:at] + [name])) in keys:
    return f'{parts[0]}.{same}'
  others = [k for k in keys if k.split('.')[-1] == name]
  return f'{parts[0]}.{others[0]}' if len(others) == 1 else None
