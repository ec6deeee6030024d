"""`python -m jax_cifar.corrupt` killed, signalled, out of disk or raced by a second writer:
only complete files are left, and the same command finishes the set byte for byte.

Kills and signals are injected at write events through corrupt_store.HOOK_ENV, never after a sleep.
"""

import fcntl
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from corrupt_runs import ARGS, FILES, ROOT, assert_only_complete_reference_files, error_line
from corrupt_runs import make_source, read_manifest, reference_set, run, snapshot
from jax_cifar.corruptions import store as corrupt_store


@pytest.fixture(scope='module')
def source(tmp_path_factory) -> pathlib.Path:
  return make_source(tmp_path_factory.mktemp('src'))


@pytest.fixture(scope='module')
def reference(source, tmp_path_factory) -> dict[str, bytes]:  # pylint: disable=redefined-outer-name
  return reference_set(source, tmp_path_factory.mktemp('ref') / 'set')


@pytest.mark.parametrize('event', ['block:8', 'part:3', 'renamed:3', 'recorded:3'])
def test_sigkill_leaves_only_complete_files_and_a_rerun_matches(source, tmp_path, reference, event):
  # Events: labels.npy is block 1 / part 1; file k's 5 severity blocks are 5k-3 .. 5k+1.
  out = tmp_path / 'set'
  killed = run(source, out, *ARGS, hook=f'{event}:KILL')
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert_only_complete_reference_files(out, reference)
  assert (out / FILES[0]).exists() and not (out / FILES[2]).exists()
  if event.startswith(('block', 'part')):
    assert (out / f'.{FILES[1]}.part').exists()  # The kill did land mid-write.
  result = run(source, out, *ARGS)
  assert result.returncode == 0, result.stderr
  assert snapshot(out) == reference  # Byte-identical, no leftovers (hidden .part files included).


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_a_rerun_matches(source, tmp_path, reference, sig):
  out = tmp_path / 'set'
  env = {**os.environ, corrupt_store.HOOK_ENV: 'block:8:PAUSE'}
  with subprocess.Popen([sys.executable, '-m', 'jax_cifar.corrupt', '--data_dir', str(source),
                         '--out', str(out), *ARGS], cwd=ROOT, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
    for line in proc.stdout:  # Blocks until the run reaches the event (mid-way through file 2).
      if line.startswith('test hook: paused'):
        break
    assert (out / f'.{FILES[1]}.part').exists()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
  line = error_line(subprocess.CompletedProcess([], proc.returncode, '', stderr))
  assert proc.returncode == 128 + sig and f'stopped by {signal.Signals(sig).name}' in line
  assert 'same command' in line
  assert sorted(p.name for p in out.iterdir()) == sorted(['corrupt_manifest.json', 'labels.npy', FILES[0]])
  assert_only_complete_reference_files(out, reference)
  files = read_manifest(out)['files']
  assert files[FILES[0]]['complete'] and not files[FILES[1]]['complete']
  assert run(source, out, *ARGS).returncode == 0
  assert snapshot(out) == reference


def test_full_disk_is_one_error_line_and_a_rerun_finishes(source, tmp_path, reference):
  out = tmp_path / 'set'
  limit = 64 * 1024  # labels.npy and the manifest fit, a 30-image file (92 KiB) does not.
  full = run(source, out, *ARGS, max_file_bytes=limit)
  line = error_line(full)
  assert f'{out / FILES[0]}: cannot write (File too large)' in line and 'run again' in line
  assert sorted(p.name for p in out.iterdir()) == ['corrupt_manifest.json', 'labels.npy']
  assert run(source, out, *ARGS).returncode == 0
  assert snapshot(out) == reference


def test_a_disk_full_before_anything_fits_leaves_no_folder_behind(source, tmp_path):
  """The manifest cannot be written: the --out folder the run made had stayed, empty (a
  resource review); one that existed before stays."""
  out = tmp_path / 'new' / 'set'
  line = error_line(run(source, out, *ARGS, max_file_bytes=0))
  assert 'corrupt_manifest.json' in line and 'File too large' in line, line
  assert not out.exists() and (tmp_path / 'new').is_dir()
  out.mkdir()
  error_line(run(source, out, *ARGS, max_file_bytes=0))
  assert out.is_dir() and list(out.iterdir()) == []


def test_a_second_writer_is_refused(source, tmp_path):
  out = tmp_path / 'set'
  out.mkdir()
  fd = os.open(out, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)  # As a running jax_cifar.corrupt holds it.
    assert 'another jax_cifar.corrupt run' in error_line(run(source, out, *ARGS))
  finally:
    os.close(fd)
  assert list(out.iterdir()) == []


def test_signals_raise_at_once_outside_writing_and_at_the_next_check_inside():
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with corrupt_store.stop_on_signals():
    with pytest.raises(corrupt_store.Interrupted, match='SIGINT'):
      os.kill(os.getpid(), signal.SIGINT)
      for _ in range(10 ** 6):  # The handler runs between bytecodes, well before this ends.
        pass
  with corrupt_store.stop_on_signals():
    with corrupt_store.deferred_stop():
      os.kill(os.getpid(), signal.SIGTERM)
      os.kill(os.getpid(), signal.SIGTERM)  # Nothing is raised while a block is being written...
      with pytest.raises(corrupt_store.Interrupted, match='SIGTERM') as stopped:
        corrupt_store.check_stop()  # ... but at the next check between blocks.
      assert stopped.value.signum == signal.SIGTERM
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # Restored.
  corrupt_store.check_stop()  # And no stale signal stops a later build in this process.
