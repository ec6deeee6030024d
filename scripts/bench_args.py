"""benchmark.py's command line checked before anything is measured: a mistake is one `error:`
line at once, not a traceback (or a silently ignored flag) after minutes of measuring."""

import json
import os
import pathlib

FRAMEWORKS = ('jax', 'torch')


def _fail(message: str):
  raise SystemExit(f'error: {message}')


def _ints(args, name: str, csv) -> list[int]:
  try:
    return csv(getattr(args, name), int)
  except ValueError:
    _fail(f'--{name} takes a comma list of integers, got {getattr(args, name)!r}')


def _check_out(path: str) -> None:
  """--out is written after every row: a path that cannot take it is said before the first."""
  out = pathlib.Path(path)
  if out.is_dir():
    _fail(f'--out {path} is a folder; give a file name, e.g. {out / "bench.json"}')
  parent = out.absolute().parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir() or not os.access(parent, os.W_OK):
    _fail(f'--out {path}: cannot create files in {parent}')


SEARCH_ONLY = ('find_start', 'find_max', 'batch_quantum', 'mem_cap_gb', 'recipe_batch', 'remat')


def _check_search(args, frameworks: list[str], defaults: dict) -> None:
  """--find_batch_size picks the batch and the accumulation itself and measures each once with
  JAX: flags it would not use are said, not silently dropped (a review)."""
  unused = [f'--{name} {getattr(args, name)}' for name in ('batch', 'grad_accum_steps', 'repeat')
            if name in defaults and getattr(args, name) != defaults[name]]
  if unused:
    _fail(f'--find_batch_size searches the batch and the accumulation itself and measures each '
          f'once, so {" and ".join(unused)} would not be used: drop it (--find_start and '
          f'--find_max bound the search, --recipe_batch names the batch to split)')
  if 'jax' not in frameworks:
    _fail(f'--find_batch_size measures JAX only: --frameworks {args.frameworks} leaves it out')
  if not 1 <= args.find_start <= args.find_max:
    _fail(f'--find_start ({args.find_start}) must be at least 1 and at most --find_max '
          f'({args.find_max})')


def check(args, make_config, recipe_config, csv, defaults: dict | None = None) -> None:
  """SystemExit('error: ...') for the first mistake; every model spec x size x dtype x batch x
  accumulation must make a config the trainer accepts (config_validation). `defaults`: the
  parser's values for no flags (flags left at them are not "given")."""
  from jax_cifar import config_validation  # pylint: disable=import-outside-toplevel
  frameworks = csv(args.frameworks)
  if not frameworks or set(frameworks) - set(FRAMEWORKS):
    _fail(f'--frameworks takes {" and/or ".join(FRAMEWORKS)} (a comma list), got '
          f'{args.frameworks!r}')
  batches, accums, sizes = (_ints(args, n, csv) for n in ('batch', 'grad_accum_steps',
                                                          'image_size'))
  # An empty list had measured nothing and exited 0 (a flag audit); --image_size may be empty
  # (each config's own size).
  for name, values in (('models', csv(args.models)), ('dtypes', csv(args.dtypes)),
                       ('batch', batches), ('grad_accum_steps', accums)):
    if not values:
      _fail(f'--{name} is empty: give at least one value')
  if not args.mem_cap_gb >= 0:  # (NaN too: it had let every batch size "fit".)
    _fail(f'--mem_cap_gb must be a positive number of GiB (0 = no cap), got {args.mem_cap_gb}')
  if args.recipe_batch < 0:
    _fail(f'--recipe_batch must be at least 1 (0 = the config\'s train.batch_size), got '
          f'{args.recipe_batch}')
  if args.batch_quantum < 1:
    _fail(f'--batch_quantum must be at least 1, got {args.batch_quantum}')
  if args.cache_dir and pathlib.Path(args.cache_dir).exists() and not pathlib.Path(
      args.cache_dir).is_dir():
    _fail(f'--cache_dir {args.cache_dir} is a file: give a folder for the compilation cache')
  if args.find_batch_size:
    _check_search(args, frameworks, defaults or {})
  else:  # They steer the search only: `--remat on` had measured without remat (a review).
    search_only = [f'--{name} {getattr(args, name)}' for name in SEARCH_ONLY
                   if name in (defaults or {}) and getattr(args, name) != defaults[name]]
    if search_only:
      one = len(search_only) == 1
      _fail(f'{" and ".join(search_only)} only {"steers" if one else "steer"} --find_batch_size, '
            f'so without it {"it" if one else "they"} would not be used: add --find_batch_size or '
            f'drop {"it" if one else "them"}')
  if args.torch_compile_timeout_s < 0:
    _fail(f'--torch_compile_timeout_s must be 0 (no limit) or more, got '
          f'{args.torch_compile_timeout_s}')
  if args.compiler_options:
    try:
      if not isinstance(json.loads(args.compiler_options), dict):
        raise ValueError('not an object')
    except ValueError as e:
      _fail(f'--compiler_options takes a JSON object of XLA options, e.g. '
            f'\'{{"xla_cpu_enable_fast_math": false}}\' ({e})')
  if args.out:
    _check_out(args.out)
  for spec in csv(args.models):
    try:
      own_size = recipe_config(spec, 32).model.image_size
      for size in sizes or [own_size]:
        for dtype in csv(args.dtypes):
          for batch in batches[:1] if args.find_batch_size else batches:
            for accum in [1] if args.find_batch_size else accums:
              config_validation.validate(make_config(spec, batch, dtype, size,
                                                     grad_accum_steps=accum))
    except SystemExit:
      raise
    except Exception as e:  # pylint: disable=broad-except  (a spec or config that cannot run)
      _fail(f'--models {spec}: {" ".join(str(e).split())}')
