"""Processes launched apart: settings (config keys, evaluate's flags) that differ between them, and
a workdir that is not one shared folder, stop every process at the start with one line each (two
real processes of one CPU device each); so does a SIGTERM while they connect."""

import os
import pathlib
import subprocess
import sys

from conftest import load_script
from jax_cifar import interrupt

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _two_processes(tmp_path, module: str, args: list[str], second: list[str], status: int = 1,
                   hook: str = '') -> list[list[str]]:
  """Runs `python -m module` as 2 processes of one CPU device each, process 0 with `args` and
  process 1 with `second` (`hook`: interrupt's test hook in both); returns each process's error
  lines (both must exit with `status`)."""
  launch = load_script('launch_local')
  base = {k: v for k, v in os.environ.items() if k != interrupt.TEST_HOOK_VAR}
  if hook:
    base[interrupt.TEST_HOOK_VAR] = hook
  base['JAX_CIFAR_SHARED_WAIT_S'] = '2'  # The folders are local: no cache to wait for.
  port, procs = launch.free_port(), []
  try:
    for i in (0, 1):
      procs.append(subprocess.Popen([sys.executable, '-m', module] + (second if i else args),
                                    cwd=ROOT, text=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=launch.process_env(base, i, 2, port, 1)))
    errs = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert [p.returncode for p in procs] == [status] * 2 and not any('Traceback' in e for e in errs), errs
  return [[l for l in e.splitlines() if l.startswith('error:')] for e in errs]


def test_processes_launched_with_different_settings_or_folders_all_stop_naming_them(tmp_path):
  """A cluster walkthrough: a learning rate given to one process trained apart, silently; a batch
  size hung in a collective; a workdir per host hung process 0 in its first save; evaluate flags
  given to one process hung. Every process now stops at the start with the same line."""
  train = ['--config', str(ROOT / 'configs' / 'default.py'), '--config.data.source=synthetic',
           '--config.data.synthetic_size=320', '--config.model.name=simple_cnn',
           '--config.train.batch_size=32']
  run = ['--workdir', str(tmp_path / 'run')]
  lines = _two_processes(tmp_path, 'jax_cifar.train', train + run,
                         train + run + ['--config.optim.lr=0.01', '--config.train.batch_size=64'])
  for i, (lr, batch) in enumerate([(0.001, 32), (0.01, 64)]):
    assert lines[i] == ['error: the processes were given different configs: optim.lr, '
                        f'train.batch_size differ (process {i} has optim.lr={lr}, '
                        f'train.batch_size={batch}); launch every process with the same '
                        'command'], lines
  lines = _two_processes(tmp_path, 'jax_cifar.train', train + run,
                         train + ['--workdir', str(tmp_path / 'own')])
  assert lines == [[
      f'error: workdir {tmp_path / name} is not shared: process 1 does not see a file process 0 '
      'wrote into it, after 2 s; every process must use the same folder on a filesystem all hosts '
      "share (NFS, Lustre, GCS FUSE) and whose caches show other hosts' new files within that time "
      '($JAX_CIFAR_SHARED_WAIT_S sets other whole seconds)'] for name in ('run', 'own')], lines
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'own').exists()  # Nothing left.
  evaluate = ['--config', str(ROOT / 'configs' / 'default.py'), '--workdir', str(tmp_path / 'run')]
  lines = _two_processes(tmp_path, 'jax_cifar.evaluate', evaluate, evaluate + ['--bn_adapt'])
  assert [l[0].split(': ', 2)[1:] for l in lines] == [[
      'the processes were given different configs or flags', f'--bn_adapt differ (process {i} has '
      f'--bn_adapt={flag}); launch every process with the same command']
      for i, flag in enumerate((False, True))], lines


def test_a_sigterm_while_the_processes_connect_stops_them_before_anything_is_written(tmp_path):
  """jax.distributed.initialize hands SIGTERM to JAX's preemption notifier: one that came while
  the processes connected (up to minutes on a cluster) had been lost, and both processes trained
  and exited 0 (a review)."""
  train = ['--config', str(ROOT / 'configs' / 'default.py'), '--config.data.source=synthetic',
           '--config.data.synthetic_size=320', '--config.data.val_fraction=0.5',
           '--config.model.name=simple_cnn', '--config.train.max_steps=1',
           '--config.train.batch_size=32',
           '--workdir', str(tmp_path / 'run')]
  lines = _two_processes(tmp_path, 'jax_cifar.train', train, train, status=143,
                         hook='connect:0:SIGTERM')
  assert lines == [['error: stopped by SIGTERM while starting']] * 2, lines
  assert not (tmp_path / 'run').exists()
