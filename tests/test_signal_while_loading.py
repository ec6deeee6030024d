"""Ctrl-C (or SIGTERM) while a command's libraries load: one line and 128 + the signal's number,
for every command, never a page of KeyboardInterrupt traceback from inside an import."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('module', ['jax_cifar.corrupt', 'jax_cifar.convert', 'jax_cifar.train',
                                    'jax_cifar.evaluate'])
@pytest.mark.parametrize('name, status', [('SIGINT', 130), ('SIGTERM', 143)])
def test_a_signal_while_the_libraries_load_is_one_line(module, name, status):
  """corrupt and convert had printed a 38-40 line traceback (a kill review); train and evaluate
  had this already. numpy is the first library each of them loads."""
  proc = subprocess.run([sys.executable, str(ROOT / 'tests' / '_signal_on_import.py'), module,
                         'numpy', name, '--help'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert (proc.returncode, proc.stderr) == (status, f'error: stopped by {name} while starting\n')
  assert proc.stdout == ''
