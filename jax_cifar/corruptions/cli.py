"""`python -m jax_cifar.corrupt`: labelled OOD data, the 19 CIFAR-C corruptions x 5 severities of
the CIFAR-100 test split (or of the validation hold-out), written by
jax_cifar/corruptions/corrupt.py.

  python -m jax_cifar.corrupt --out D [--format ds542|cifar100c] [--limit N] [--data_dir DIR]
                               [--corruptions a,b] [--seed S] [--frost_dir DIR] [--overwrite]
                               [--split test|val [--val_fraction F --split_seed S]]

--split val corrupts the validation images instead (the trainer's stratified hold-out of the
training split, same --val_fraction / --split_seed as the config's data section; the defaults match
the default config): a set on which to choose test-time settings without touching the test images.
The hold-out is taken from the local cifar-100-python files, as data.source=local does; a run
trained with data.source=tfds holds out the same images (its order equals the local one, tested).

How the images are made, the formats and the folder's resume rules: corrupt.py's docstring (which
--help prints below).
"""

from __future__ import annotations

import argparse
import difflib
import sys

from jax_cifar import cli, errors

try:
  from jax_cifar.corruptions import ops
  from jax_cifar.corruptions import store
  from jax_cifar.corruptions import corrupt
except ImportError as e:  # A missing 'corrupt' extra: one error line, as every other error.
  if str(e.name).split('.')[0] not in ('skimage', 'PIL', 'scipy'):
    raise
  raise SystemExit(f'error: {e}') from e
from jax_cifar.data import cifar100
from jax_cifar.data.ood import CORRUPTIONS


def _parse_names(text: str) -> tuple[str, ...]:
  names = tuple(dict.fromkeys(n.strip() for n in text.split(',') if n.strip()))
  if not names:
    raise errors.ConfigError('--corruptions is empty; give a comma-separated subset of: ' + ', '.join(CORRUPTIONS))
  for name in names:
    if name not in CORRUPTIONS:
      close = difflib.get_close_matches(name, CORRUPTIONS, n=1)
      hint = f"did you mean '{close[0]}'? " if close else ''
      raise errors.ConfigError(f'unknown corruption {name!r} in --corruptions; {hint}known: {", ".join(CORRUPTIONS)}')
  return names


def _source_split(args: argparse.Namespace) -> cifar100.Split:
  """The test split, or the validation images the trainer holds out with the same settings."""
  given = [f'--{k}' for k in ('val_fraction', 'split_seed') if getattr(args, k) is not None]
  if args.split == 'test':
    if given:
      raise errors.ConfigError(f'{", ".join(given)}: used only with --split val')
    return cifar100.load_split(cifar100.resolve_data_dir(args.data_dir, '--data_dir'), 'test')
  fraction = 0.1 if args.val_fraction is None else args.val_fraction
  seed = 0 if args.split_seed is None else args.split_seed
  if not 0.0 < fraction < 1.0:
    raise errors.ConfigError(f'--val_fraction must be in (0, 1) with --split val, got {fraction}')
  if not 0 <= seed <= 2**32 - 1:  # data.split_seed's range: no run holds out another seed's images.
    raise errors.ConfigError(f'--split_seed must be in [0, 2**32 - 1] (data.split_seed\'s range), '
                             f'got {seed}')
  train = cifar100.load_split(cifar100.resolve_data_dir(args.data_dir, '--data_dir'), 'train')
  _, val_idx = cifar100.stratified_split(train.labels, fraction, seed)
  if not len(val_idx):
    raise errors.ConfigError(f'--val_fraction {fraction} holds out no validation images')
  return train.subset(val_idx)


def main(argv: list[str] | None = None) -> int:
  # corrupt.py's docstring past its title and its note on the modules (for readers of the code).
  how = corrupt.__doc__.split('\n\n', 2)[-1]
  parser = cli.ArgumentParser(prog=cli.prog('jax_cifar.corrupt'), description=f'{__doc__}\n{how}',
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, type=cli.nonempty('the folder for the corrupted set'),
                      help='output folder')
  parser.add_argument('--format', default='ds542', choices=('ds542', 'cifar100c'))
  parser.add_argument('--limit', type=int, default=0, help='use the first N images (0 = all)')
  parser.add_argument('--split', default='test', choices=('test', 'val'),
                      help='corrupt the test split, or the validation hold-out of the training '
                      'split')
  parser.add_argument('--val_fraction', type=float, default=None,
                      help='--split val: the config\'s data.val_fraction (default 0.1)')
  parser.add_argument('--split_seed', type=int, default=None,
                      help='--split val: the config\'s data.split_seed (default 0)')
  parser.add_argument('--data_dir', default='', help='folder holding cifar-100-python/ '
                      '(default $JAX_CIFAR_DATA_DIR, then the cache)')
  parser.add_argument('--seed', type=int, default=0,
                      help='seed of the random corruptions (noise, glass blur...): the same seed '
                      'and options make the same pixels')
  parser.add_argument('--corruptions', default=','.join(CORRUPTIONS),
                      help='comma-separated subset of the 19 names')
  parser.add_argument('--frost_dir', default='', help='folder with the official frost1.png .. '
                      'frost5.jpg; default: synthetic frost textures')
  parser.add_argument('--overwrite', action='store_true', help='replace a set in --out that was '
                      'made with other options (default: refuse; the same options resume it)')
  args = parser.parse_args(argv)
  folder = None
  with store.stop_on_signals():
    try:
      names = _parse_names(args.corruptions)
      if args.limit < 0:
        raise errors.ConfigError(f'--limit must be >= 0, got {args.limit}')
      if args.seed < 0:
        raise errors.ConfigError(f'--seed must be >= 0, got {args.seed}')
      source = _source_split(args)
      if args.limit > len(source):
        raise errors.ConfigError(f'--limit {args.limit} exceeds the {len(source)} {args.split} '
                                 'images')
      n = args.limit or len(source)
      frost_textures = ops.load_frost_dir(args.frost_dir) if args.frost_dir else None
      store.check_stop()
      folder = args.out
      paths = corrupt.build(args.out, source.images[:n], source.labels[:n], args.format, args.seed,
                            names, frost_textures=frost_textures, overwrite=args.overwrite,
                            limit=args.limit, split=args.split)
    except store.Interrupted as e:
      where = (f'; complete files are kept in {folder} (nothing partial): run the same command '
               'again to finish') if folder else ''
      print(f'error: {e}{where}', file=sys.stderr, flush=True)
      return 128 + e.signum
    except Exception as e:  # pylint: disable=broad-except
      message = errors.user_message(e)
      if message is None:
        raise  # A bug keeps its traceback.
      print(f'error: {message}', file=sys.stderr, flush=True)
      return 1
  # (It had said 20 files after 'N of 19 files complete': labels.npy counted as one.)
  print(f'done: {len(paths) - 1} corruption files and {paths[-1].name} in {args.out}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
