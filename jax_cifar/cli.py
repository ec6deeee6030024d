"""What every command-line tool shares: flag parsing whose mistakes are one `error:` line.

absl prints a traceback for a config file that does not load (syntax error, no `get_config`) or an
override naming a key that does not exist; users get one line naming the problem instead (worded
by `config_errors`).
`--config jax_cifar:NAME` names a config shipped with the package (`jax_cifar/configs/NAME.py`), so
an installed wheel needs no source tree.
"""

from __future__ import annotations

import argparse
import errno
import os
import pathlib
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

import ml_collections
from absl import app, flags

from jax_cifar import config_errors, console_logs, errors, starting

BUILTIN_PREFIX = 'jax_cifar:'
_RUN_CONFIG = str(pathlib.Path(__file__).resolve().parent / 'configs' / '_from_run.py')
_RESUME_CONFIG = str(pathlib.Path(__file__).resolve().parent / 'configs' / '_resume_run.py')
USAGE_EXIT_CODE = 2


def prog(module: str | None = None) -> str | None:
  """An argparse command's name in its usage line: `jax-cifar NAME` when `jax-cifar` started it
  (jax_cifar/__main__.py sets that), else `python -m MODULE` (Python 3.11 would say `NAME.py`);
  None (the script's file name) for a command without a module form."""
  if sys.argv[0].startswith('jax-cifar '):
    return sys.argv[0]
  return f'python -m {module}' if module else None


class ArgumentParser(argparse.ArgumentParser):
  """argparse with its mistakes as one `error:` line (exit status 2), like every other error of
  the commands: they had printed the usage block first (a flag audit)."""

  def error(self, message: str):
    self.exit(USAGE_EXIT_CODE, f'error: {message} (see --help)\n')

  def parse_known_args(self, *args, **kwargs):  # (parse_args calls it: every command, first.)
    printable_output()
    return super().parse_known_args(*args, **kwargs)


def printable_output() -> None:
  """stdout writes what its encoding cannot as escapes (caf\\xe9), as stderr does: under
  PYTHONIOENCODING=ascii, report and corrupt had written every file, then exited 1 with a
  traceback, printing a path with an é in it (a locale review)."""
  for stream in (sys.stdout, sys.stderr):
    if getattr(stream, 'errors', None) == 'strict' and hasattr(stream, 'reconfigure'):
      stream.reconfigure(errors='backslashreplace')


def nonempty(what: str) -> Callable[[str], str]:
  """An argparse `type` refusing an empty value (`--out=`, an unset shell variable), which would
  mean the current folder or a default: argparse's form of require_nonempty."""
  def check(value: str) -> str:
    if not value.strip():
      raise argparse.ArgumentTypeError(f'is empty: give {what}')
    return value
  return check


def builtin_config_path(name: str) -> str:
  """Path of the packaged config `name` (e.g. 'smoke'); a ValueError lists the ones that exist."""
  folder = pathlib.Path(__file__).resolve().parent / 'configs'
  path = folder / f'{name}.py'
  if not path.is_file() or name.startswith('_'):
    names = sorted(p.stem for p in folder.glob('*.py') if not p.stem.startswith('_'))
    raise ValueError(f'no built-in config {name!r}; built-in configs: {", ".join(names)}')
  return str(path)


def _resolve_builtin(argv: Sequence[str]) -> list[str]:
  """--config jax_cifar:NAME[:ARG] -> --config /path/to/jax_cifar/configs/NAME.py[:ARG]."""
  out, expect_value = [], False
  for arg in argv:
    if expect_value and arg.startswith(BUILTIN_PREFIX):
      name, _, rest = arg[len(BUILTIN_PREFIX):].partition(':')
      arg = builtin_config_path(name) + (f':{rest}' if rest else '')
    elif arg.startswith(f'--config={BUILTIN_PREFIX}'):
      name, _, rest = arg[len(f'--config={BUILTIN_PREFIX}'):].partition(':')
      arg = '--config=' + builtin_config_path(name) + (f':{rest}' if rest else '')
    expect_value = arg == '--config'
    out.append(arg)
  return out


def _config_values(argv: Sequence[str]) -> list[str]:
  """The values given to --config (`--config X` or `--config=X`)."""
  return [argv[i + 1] if a == '--config' else a.split('=', 1)[1]
          for i, a in enumerate(argv) if (a == '--config' and i + 1 < len(argv))
          or a.startswith('--config=')]


def _builtin_hint(e: BaseException, argv: Sequence[str]) -> str:
  """For a --config file that does not exist here but is a packaged config's name (configs/
  smoke.py run from outside the repository): how to name the packaged one from anywhere. For a
  file whose path holds a ':' (which config_flags reads as FILE:ARGUMENT): why it was not found."""
  if not isinstance(e, OSError) or (e.errno != errno.ENOENT and '[Errno 2]' not in str(e)):
    return ''
  for value in _config_values(argv):
    if ':' in value and pathlib.Path(value).expanduser().is_file():
      return (f' (--config reads FILE:ARGUMENT, so the ":" in {value} ends the file name at '
              f'{value.split(":", 1)[0]}: give the file a path with no ":", e.g. copy it)')
    name = pathlib.Path(value.split(':', 1)[0]).stem
    if not pathlib.Path(value.split(':', 1)[0]).exists():
      try:
        builtin_config_path(name)
      except ValueError:
        continue
      return f' (the packaged config of that name, from any folder: --config {BUILTIN_PREFIX}{name})'
  return ''


def require_nonempty(flag: str, what: str) -> None:
  """--FLAG= (or an unset shell variable) is refused: an empty --workdir had trained into the
  current folder and named /checkpoints as where it saved (an audit)."""
  flags.register_validator(flag, lambda value: value is None or bool(value.strip()),
                           message=f'--{flag} is empty: give {what}')


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The last value given to --NAME (`--NAME X` or `--NAME=X`), or None."""
  values = [argv[i + 1] if a == f'--{name}' else a.split('=', 1)[1]
            for i, a in enumerate(argv) if (a == f'--{name}' and i + 1 < len(argv))
            or a.startswith(f'--{name}=')]
  return values[-1] if values else None


def read_flag_files(argv: Sequence[str]) -> list[str]:
  """argv with each --flagfile's lines in its place, as absl reads them; an unreadable flag file
  is one `error:` line (it had been a traceback: ml_collections reads them when --config is
  defined)."""
  try:
    return flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
  except flags.Error as e:  # absl's text starts 'ERROR:: '.
    _usage_error(str(e).removeprefix('ERROR:: '))


def run_config_overrides(argv: Sequence[str], run_config: Callable[[str], Any],
                         resume: bool = False) -> list[str]:
  """`--config.KEY=VALUE` overrides without a `--config` change the run's own config
  (WORKDIR/config.json, which evaluate uses without --config): argv gets `--config` of the
  private config file that loads it. A run folder whose `run_config(WORKDIR)` raises (no
  config.json) is an error line here. `argv` has its flag files read (`run` reads them).

  `resume` (train): with no --config at all, a run in --workdir resumes with its own config, so
  that a relaunch needs only --workdir (it had needed the first launch's --config and every
  override again, which a timed-out notebook session had to find)."""
  given = any(a in ('--config', '-config') or a.startswith(('--config=', '-config='))
              for a in argv[1:])  # (absl takes -config as --config.)
  if given or not (resume or any(a.startswith('--config.') for a in argv[1:])):
    return list(argv)
  workdir = _flag_value(argv, 'workdir')
  if resume and workdir and not any(a in HELP_FLAGS for a in argv[1:]):  # (Help: absl's answer.)
    try:
      run_config(workdir)
    except errors.UserError as e:
      if _unknown_flags(argv):  # absl names it: a first launch's `--confg FILE` had been "--config
        return list(argv)  # is not given, and the run in --workdir cannot be resumed" (an audit).
      _usage_error(f'--config is not given, and the run in --workdir cannot be resumed with its own '
                   f'config ({e}): to start a run, give --config FILE (configs/NAME.py, or '
                   'jax_cifar:NAME)')
    return [argv[0], f'--config={_RESUME_CONFIG}:{workdir}', *argv[1:]]
  if not any(a.startswith('--config.') for a in argv[1:]):  # (train --help: absl's answer.)
    return list(argv)
  workdir = _flag_value(argv, 'workdir')
  if not workdir:
    _usage_error('--config.KEY=VALUE overrides without --config change the config of the run in '
                 '--workdir, which is not given')
  try:
    run_config(workdir)  # (Passed in: this module imports no run code, which data/ uses.)
  except errors.UserError as e:
    _usage_error(f'--config.KEY=VALUE overrides change the run\'s own config: {e}')
  return [argv[0], f'--config={_RUN_CONFIG}:{workdir}', *argv[1:]]


def _unknown_flags(argv: Sequence[str]) -> list[str]:
  """The --NAME words of `argv` that name no defined flag (nor a --config.KEY override)."""
  names = [a[2:].split('=', 1)[0] for a in argv[1:] if a.startswith('--') and len(a) > 2]
  return [n for n in names if not (n in flags.FLAGS or n.startswith('config.') or
                                   (n.startswith('no') and n[2:] in flags.FLAGS) or
                                   f'--{n}' in HELP_FLAGS)]


def long_flags(argv: Sequence[str]) -> list[str]:
  """absl takes `-workdir` for `--workdir`; the checks here read `--` forms alone, so a single dash
  is made a double one for each defined flag and override (`-config.train.max_steps=2` had been
  "overrides need --config FILE before them", a flag audit), and `-h` is `--help` (absl has no
  -h: `train -h` had been "Unknown command line flag 'h'")."""
  out = list(argv[:1])
  for a in argv[1:]:
    name = a[1:].split('=', 1)[0]
    if a in ('-h', '-?'):
      a = '--help'
    elif (a.startswith('-') and not a.startswith('--') and re.fullmatch(r'[A-Za-z_][\w.]*', name)
          and (name in flags.FLAGS or name.startswith('config.') or f'--{name}' in HELP_FLAGS)):
      a = '-' + a
    out.append(a)
  return out


def config_is_the_runs(flag: str = 'config') -> bool:
  """Whether --config was the run's own config.json, which overrides changed (after parsing)."""
  return flags.FLAGS[flag].config_filename.startswith(f'{_RUN_CONFIG}:')


def config_file_given(flag: str = 'config') -> str | None:
  """The --config file given on the command line; None where the run's own config.json is the
  config (--config left out: a resume, or overrides of the run's config)."""
  name = flags.FLAGS[flag].config_filename
  return None if not name or name.startswith((f'{_RUN_CONFIG}:', f'{_RESUME_CONFIG}:')) else name


def repeated_overrides(argv: Sequence[str]) -> list[str]:
  """A line for each --config.KEY given more than once: absl takes the last without a word (a
  walkthrough: --config.optim.lr=0.1 --config.optim.lr=0.2 trained at 0.2, silently)."""
  values: dict[str, list[str]] = {}
  for i, arg in enumerate(argv):
    if arg.startswith('--config.'):
      key, eq, value = arg[len('--config.'):].partition('=')
      if not eq:  # `--config.KEY VALUE` (VALUE may be -1), or a bare boolean.
        bare = i + 1 == len(argv) or argv[i + 1].startswith('--')
        value = '(no value)' if bare else argv[i + 1]
      values.setdefault(key, []).append(value or "''")
  return [f'--config.{key} is given {len(given)} times ({", ".join(given)}): the last one, '
          f'{given[-1]}, is used' for key, given in values.items() if len(given) > 1]


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parsing where a bad flag or config file exits with one `error:` line (status 2).
  `argv` has its flag files read (`run` reads them first), so what they hold is checked too."""
  given = _config_values(argv)
  if len(given) > 1:  # absl had said "The flag 'config.KEY' is defined twice ...".
    _usage_error(f'--config is given {len(given)} times ({", ".join(given)}): give one config '
                 'file, and change it with --config.KEY=VALUE overrides')
  for value in given:
    if value.lower().endswith('.json'):
      _usage_error(f'--config takes a config file in Python (configs/*.py, or jax_cifar:NAME), '
                   f'not {value}: give the one the run started from (a run\'s config.json is its '
                   'record, which train and evaluate use by themselves when --config is omitted)')
  try:
    rest = flags.FLAGS(_resolve_builtin(argv))
    if 'config' in flags.FLAGS and given:
      # config_flags loads the file lazily when no --config.KEY override forced it: a file that
      # failed to load is a stand-in that raises on first use; use it here, while errors are ours.
      loaded = flags.FLAGS['config'].value
      if loaded is not None and hasattr(loaded, 'keys'):  # (None, a list: named below.)
        loaded.keys()
      if loaded is None:  # (absl had said so while it required --config of train.)
        _usage_error(f'--config {given[0]}: its get_config() returns None, not an '
                     'ml_collections.ConfigDict (does it end with `return config`?)')
      if not isinstance(loaded, ml_collections.ConfigDict):
        _usage_error(f'--config {given[0]}: its get_config() returns a {type(loaded).__name__}, '
                     'not an ml_collections.ConfigDict (start from jax_cifar.configs.default.'
                     'get_config() and change its keys, as configs/*.py do)')
    if len(rest) > 1:  # `--bn_adapt false` had turned adaptation on and dropped `false` (an audit).
      _usage_error(_stray_words(rest[1:], argv))
    for line in repeated_overrides(argv):  # (Before the plain log format is set: said as it
      print(f'warning: {line}', file=sys.stderr, flush=True)  # would say it, not as absl's W...].)
    return rest
  except flags.Error as e:
    if "flag 'config." in str(e) and not any(a.split('=')[0] == '--config' for a in argv):
      _usage_error(f'{e}: --config.KEY=VALUE overrides need --config FILE before them (the '
                   "run's config file, or the built-in one it started from)")
    if given and 'Flag --config must have a value other than None' in str(e):
      _usage_error(f'--config {given[0]}: its get_config() returns None, not an '
                   'ml_collections.ConfigDict (does it end with `return config`?)')
    if 'Traceback (most recent call last)' in str(e):  # The config file's own code raised.
      _usage_error(config_errors.config_error(e))
    _usage_error(f'{_validator_message(str(e))} (--helpshort lists the flags)')
  except (SyntaxError, ImportError, AttributeError, KeyError, TypeError, ValueError,
          OSError) as e:  # Raised while loading --config or applying an override.
    if isinstance(e, AttributeError) and "has no attribute 'get_config'" in str(e):
      _usage_error(f'--config {given[0]}: the file defines no get_config() (a config file is '
                   'Python whose get_config() returns an ml_collections.ConfigDict)')
    _usage_error(config_errors.unknown_key(e, argv) or f'bad --config or --config.KEY override: {config_errors.first_line(e)}'
                 + _builtin_hint(e, argv))
  except Exception as e:  # pylint: disable=broad-except
    # Anything else raised by the config file's own code (a NameError, a ZeroDivisionError...):
    # only that code and absl's parsing ran here.
    _usage_error(config_errors.config_error(e))


def _validator_message(text: str) -> str:
  """absl's failed validators (`flag --NAME=VALUE: MESSAGE`, a line each) on one line, each as
  its MESSAGE where that names the flag itself (require_nonempty's): `error: flag --workdir= :
  --workdir is empty` had said it twice, and a second empty flag had been a second line."""
  lines = []
  for line in text.split('\n'):
    match = re.fullmatch(r'flag --(\w+)=.*?: (--\1 .*)', line)
    if re.fullmatch(r'flag --(\w+)=None: Flag --\1 must have a value other than None\.', line):
      line = f'--{line[len("flag --"):line.index("=")]} is required'  # (absl said it twice.)
    lines.append(match.group(2) if match else line)
  return '; '.join(lines)


def _stray_words(words: Sequence[str], argv: Sequence[str]) -> str:
  """What to say of words on the command line that belong to no flag."""
  text = ' '.join(repr(w) for w in words)
  hint = ': each flag takes one value (--FLAG=VALUE or --FLAG VALUE)'
  for i, word in enumerate(argv[1:], 1):  # The stray word right after a yes/no flag.
    name = argv[i - 1].lstrip('-') if argv[i - 1].startswith('-') else ''
    name = name if name in flags.FLAGS else name[2:] if name.startswith('no') else ''
    if (word in words and word.lower() in ('true', 'false', 'yes', 'no', '0', '1')
        and name in flags.FLAGS and flags.FLAGS[name].boolean):
      hint = (f': a yes/no flag takes no separate value: write --{name}, --no{name} or '
              f'--{name}={word}')
      break
  return f'unexpected argument{"s" if len(words) > 1 else ""} {text}{hint}'


def _usage_error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  raise SystemExit(USAGE_EXIT_CODE)


def fail(message: str, code: int = 1) -> NoReturn:
  """Exits with `error: message` on a line of its own, written in one system call: storage threads
  that are still failing (orbax/tensorstore after a full disk) cannot split it."""
  sys.stdout.flush()
  sys.stderr.flush()
  os.write(2, f'\nerror: {message}\n'.encode(errors='replace'))
  # No interpreter teardown: after a failed save, orbax's exit handlers wait minutes for barriers
  # that will never complete. Everything the run keeps was written (and closed) before this.
  os._exit(code)  # pylint: disable=protected-access


def fail_or_raise(e: Exception) -> None:
  """`fail` with the user's message if `e` is bad input (errors.user_message); re-raises a bug."""
  message = errors.user_message(e)
  if message is None:
    raise e
  fail(message)


HELP_FLAGS = ('-h', '--help', '-?', '--helpshort', '--helpfull', '--helpxml')


def run(main: Callable[[list[str]], None], *, define_flags: Callable[[], None],
        run_config: Callable[[str], Any] | None = None, resume: bool = False) -> None:
  """`define_flags()`, then `absl.app.run(main)` with the parsing above; asked for help, the status
  is 0 (absl's is 1, which scripts read as a failure). With `run_config` (evaluate:
  workdir.run_config), `--config.KEY=VALUE` without `--config` changes the config of the run in
  --workdir. Flag files (--flagfile) are read once, first, as absl would: defining --config reads
  them too (ml_collections), and the checks of the parsing see what they hold."""
  printable_output()
  starting.defer_full_collections()
  argv = read_flag_files(sys.argv)
  define_flags()
  argv = long_flags(argv)
  errors.drop_library_noise()  # orbax's pages after a failed save or restore are not printed.
  console_logs.above_progress_bars()
  try:
    parser = ((lambda argv: parse_flags(run_config_overrides(argv, run_config, resume)))
              if run_config else parse_flags)
    app.run(main, argv=argv, flags_parser=parser)
  except SystemExit as e:
    if e.code == 1 and any(a in HELP_FLAGS for a in argv[1:]):
      raise SystemExit(0) from None
    raise
