"""grain's worker processes re-import the user's script (spawn): an unguarded training call is
refused before anything starts, a guarded one is let through."""

import pathlib
import subprocess
import sys
import textwrap
import types

import pytest

from jax_cifar import errors
from jax_cifar.data import pipeline

_PROBE = 'where = check()'


def _where(tmp_path: pathlib.Path, monkeypatch, source: str, with_file: bool = True):
  """Runs `source` as the __main__ script; its `check()` is `_unguarded_main_call`."""
  path = tmp_path / 'my script.py'
  path.write_text(textwrap.dedent(source))
  main = types.ModuleType('__main__')
  main.check = pipeline._unguarded_main_call  # pylint: disable=protected-access
  if with_file:
    main.__file__ = str(path)
  monkeypatch.setitem(sys.modules, '__main__', main)
  exec(compile(path.read_text(), str(path), 'exec'), vars(main))  # pylint: disable=exec-used
  return main.where, path


def _line_of(path: pathlib.Path, text: str) -> int:
  return next(i for i, l in enumerate(path.read_text().splitlines(), 1) if text in l)


@pytest.mark.parametrize('source, line_text', [
    ('x = 1\nwhere = check()\n', _PROBE),
    ('def main():\n  return check()\n\nwhere = main()\n', 'where = main()'),
    ('try:\n  where = check()\nfinally:\n  pass\n', _PROBE),
    ('import contextlib\nwith contextlib.nullcontext():\n  where = check()\n', _PROBE),
    ("for _ in range(1):\n  where = check()\n", _PROBE),
])
def test_a_training_call_outside_the_main_guard_is_found(tmp_path, monkeypatch, source, line_text):
  where, path = _where(tmp_path, monkeypatch, source)
  assert where == (str(path), _line_of(path, line_text))


@pytest.mark.parametrize('source', [
    "if __name__ == '__main__':\n  where = check()\n",
    'if "__main__" == __name__:\n  where = check()\n',
    "def main():\n  return check()\n\nif __name__ == '__main__':\n  where = main()\n",
    "try:\n  import os\nexcept ImportError:\n  pass\nelse:\n  if __name__ == '__main__':\n"
    "    where = check()\n",
    # Guards written otherwise (the diff review): any `if` or `match` may be the guard.
    "import sys\nif __name__ == '__main__' and len(sys.argv) > 0:\n  where = check()\n",
    "if __name__ in ('__main__',):\n  where = check()\n",
    "IS_MAIN = __name__ == '__main__'\nif IS_MAIN:\n  where = check()\n",
    "match __name__:\n  case '__main__':\n    where = check()\n",
])
def test_a_call_under_the_main_guard_is_let_through(tmp_path, monkeypatch, source):
  assert _where(tmp_path, monkeypatch, source)[0] is None


def test_no_script_to_run_again_is_let_through(tmp_path, monkeypatch):
  """python -c, a notebook, the REPL: spawn has no file to run again."""
  assert _where(tmp_path, monkeypatch, 'where = check()\n', with_file=False)[0] is None


def test_a_package_main_is_never_run_again(tmp_path, monkeypatch):
  path = tmp_path / '__main__.py'
  path.write_text('where = check()\n')
  main = types.ModuleType('__main__')
  main.__file__ = str(path)
  main.check = pipeline._unguarded_main_call  # pylint: disable=protected-access
  main.__spec__ = types.SimpleNamespace(name='mypkg.__main__')
  monkeypatch.setitem(sys.modules, '__main__', main)
  exec(compile(path.read_text(), str(path), 'exec'), vars(main))  # pylint: disable=exec-used
  assert main.where is None


def test_no_workers_need_no_guard(monkeypatch):
  monkeypatch.setattr(pipeline, '_unguarded_main_call', lambda: ('/x/my script.py', 4))
  pipeline.check_workers_can_start(0)  # An unguarded script without workers: nothing to refuse.
  with pytest.raises(errors.ConfigError, match=r'data.worker_count=3 .*my script.py again .* '
                     r"from line 4: put that call under `if __name__ == '__main__':`"):
    pipeline.check_workers_can_start(3)


def test_an_unguarded_script_with_workers_stops_at_once_with_the_reason(tmp_path):
  """It had trained in every worker too, whose copy stopped on "workdir is in use by another run",
  the trainer's own pid, while the trainer waited for that worker for ever."""
  script = tmp_path / 'train_me.py'
  script.write_text(textwrap.dedent(f"""\
      from jax_cifar.configs import smoke
      from jax_cifar.training import trainer
      c = smoke.get_config()
      c.data.source, c.data.synthetic_size, c.data.worker_count = 'synthetic', 2048, 1
      c.wandb.mode = 'disabled'
      trainer.train_and_evaluate(c, {str(tmp_path / 'run')!r})
      """))
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
  assert out.returncode != 0
  assert 'ConfigError: data.worker_count=1 starts grain worker processes' in out.stderr
  assert f'{script} again from the top' in out.stderr and 'from line 6' in out.stderr
  assert 'in use by another run' not in out.stderr
  assert not (tmp_path / 'run').exists()
