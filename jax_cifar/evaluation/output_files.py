"""The files an evaluation writes into its run's folder: their <tag> (one per setting), the checks
before any prediction (can the folder take them, where the submission CSV goes) and the closing
line naming the ones it wrote."""

from __future__ import annotations

import os
import pathlib

import jax

from jax_cifar import parallel, step_folders, tracking
from jax_cifar import workdir as workdir_lib
from jax_cifar.evaluation import eval_json, submission
from jax_cifar.evaluation import tent as tent_lib


def output_tag(which: str, tta_mode: str = 'none', adapt_bn: bool = False,
               weights: str = 'raw', tent: tent_lib.TentOptions | None = None,
               tta_average: str = 'probs') -> str:
  """best / latest / step<N> (a step number or step folder) / path, then _ema or _auto (--weights),
  _tta-<mode>[-logp], _bn-adapt and _tent[-settings]: every setting writes its own files (two step
  numbers had shared `path`: the second overwrote the first's CSV and figure; an audit)."""
  tag = which if which in ('best', 'latest') else 'path'
  if tag == 'path':
    folder = pathlib.Path(which)
    name = folder.parent.name if folder.name == 'default' else folder.name  # (orbax's item)
    tag = f'step{int(name)}' if step_folders.is_step_number(name) else tag
  tag += {'ema': '_ema', 'auto': '_auto'}.get(weights, '')
  tag += (f'_tta-{tta_mode}' if tta_mode != 'none' else '')
  tag += '-logp' if tta_average == 'log_probs' and tta_mode != 'none' else ''
  return tag + ('_bn-adapt' if adapt_bn or tent else '') + (tent.tag() if tent else '')


def check_submission_path(csv_path: str | os.PathLike, default: bool) -> None:
  """Process 0 checks where the CSV goes; every process raises if it is unusable (before inference).
  `csv_path` as given (a trailing `/` is checked); `default`: not given, the workdir's."""
  with parallel.fail_together(f'checking {csv_path}'):
    if jax.process_index() == 0:
      path = submission.check_output_path(csv_path, default=default)
      if path.is_file() and path.stat().st_size:  # (Replaced without a word: a review.)
        tracking.say(f'note: {path} holds a submission CSV: it is replaced once this '
                     'evaluation has predicted every file')


def stamps(workdir: pathlib.Path, tag: str) -> dict[str, int | None]:
  """The modification times (ns) of the files an evaluation of `tag` writes in `workdir`."""
  names = (f'eval_{tag}.json', *(f'{kind}_{tag}.png' for kind in eval_json.FIGURE_KINDS))
  return {n: (workdir / n).stat().st_mtime_ns if (workdir / n).is_file() else None for n in names}


def say_written(workdir: pathlib.Path, tag: str, before: dict, csv: pathlib.Path | None) -> None:
  """The closing line: which files this evaluation wrote, and where (it had named none but the
  CSV, inside its JSON line: a new-user walkthrough)."""
  names = [n for n, stamp in stamps(workdir, tag).items() if stamp not in (None, before[n])]
  parts = ([f'{", ".join(names)} in {workdir}'] if names else []) + (
      [f'the submission {csv}'] if csv is not None and csv.is_file() else [])
  if parts:
    tracking.say(f'Wrote {" and ".join(parts)}.')


def takes_files(workdir: pathlib.Path, tag: str, resumable: bool = False) -> bool:
  """Whether eval_<tag>.json and the figures can be written into `workdir` (a probe file is made
  and removed); if not, says so before the predictions. `resumable`: OOD or CIFAR-100-C files
  are to be predicted, whose finished files it would keep for a resume."""
  why = workdir_lib.why_unwritable(workdir)
  if why:
    tracking.say(f'{workdir} takes no files ({why}): the numbers are printed, and '
                 f'eval_{tag}.json and the figures are not written' + (
                     ', nor the finished files that a stopped evaluation resumes from (it would '
                     'start over: copy the run to a writable folder to keep them)'
                     if resumable else ''))
  return why is None
