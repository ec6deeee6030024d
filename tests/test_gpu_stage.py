"""scripts/gpu_pack_full.sh + gpu_stage.sh: the full data set split into parts small enough for
one device call each, then reassembled on the other side (checksums, xz, the official layout);
scripts/gpu_check.sh's time budget for one device call, and the benchmark's torch.compile limit."""

import os
import re
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jax_cifar.data import cifar100

from conftest import load_script

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _sh(script, env, *args):
  return subprocess.run(['bash', str(ROOT / 'scripts' / script), *args], env=env,
                         capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def packed(tmp_path):
  """A small cifar-100-python folder packed into parts of 300 kB (random pixels: xz cannot
  shrink them, so the parts are many)."""
  sys.path.insert(0, str(ROOT / 'scripts'))
  import devdata  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  npz = tmp_path / 'small.npz'
  np.savez(npz, train_x=rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8),
           train_y=np.arange(300) % 100, train_coarse=np.arange(300) % 20,
           test_x=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
           test_y=np.arange(100) % 100, test_coarse=np.arange(100) % 20)
  devdata.write_cifar_folder(tmp_path / 'cifar', str(npz))
  (tmp_path / 'whl').mkdir()
  env = {**os.environ, 'PY': sys.executable, 'CIFAR': str(tmp_path / 'cifar'), 'WEIGHTS': '',
         'WHL': str(tmp_path / 'whl'), 'GPUDATA': str(tmp_path / 'gpudata'),
         'FIRST_BYTES': '100000', 'PART_BYTES': '300000', 'JC_HOME': str(tmp_path / 'home')}
  proc = _sh('gpu_pack_full.sh', env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return tmp_path, env


def _travelling_bytes() -> int:
  """What travels with every device call: the files git tracks or would (as gpu_pack_full.sh
  counts them)."""
  names = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT,
                         capture_output=True, check=True).stdout.split(b'\0')
  return sum(os.path.getsize(ROOT / n.decode()) for n in names
             if n and (ROOT / n.decode()).is_file() and not (ROOT / n.decode()).is_symlink())


def test_parts_fill_what_the_limit_leaves_beside_the_repository_wheels_and_weights(packed):
  """By default each part's data is what the call's limit leaves: the first part's beside the
  wheels and the weights. (A fixed 12 MiB had made the first part 64.2 MiB with the repository of
  2026-12-08: a review.)"""
  tmp_path, env = packed
  rng = np.random.default_rng(1)
  (tmp_path / 'whl' / 'fake-1.0-py3-none-any.whl').write_bytes(rng.bytes(50_000))
  weights = tmp_path / 'weights.pth'
  weights.write_bytes(rng.bytes(150_000))  # Random: xz cannot shrink it.
  margin, room = 100_000, 400_000
  limit = _travelling_bytes() + margin + room
  env = {k: v for k, v in env.items() if k not in ('FIRST_BYTES', 'PART_BYTES')}
  env.update(WEIGHTS=str(weights), GPUDATA=str(tmp_path / 'sized'), LIMIT_BYTES=str(limit),
             MARGIN_BYTES=str(margin))
  proc = _sh('gpu_pack_full.sh', env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  repo = _travelling_bytes()
  parts = sorted((tmp_path / 'sized').glob('c*'), key=lambda p: int(p.name[1:]))
  sizes = [sum(f.stat().st_size for f in p.rglob('*') if f.is_file()) for p in parts]
  assert len(parts) >= 4 and all(repo + size < limit for size in sizes), (repo, sizes, limit)
  for size in sizes[:-1]:  # Full but for the margin (and the checksums file).
    assert size > room - 20_000, sizes
  data = [len(f.read_bytes()) for p in parts for f in p.glob('cifar.part*')]
  assert data[0] < room - 200_000 < data[1]  # The wheels and weights took their room in c1.
  import lzma  # pylint: disable=import-outside-toplevel
  assert lzma.decompress((parts[0] / 'r50.pth.xz').read_bytes()) == weights.read_bytes()
  assert (parts[0] / 'whl' / 'fake-1.0-py3-none-any.whl').exists()
  env['LIMIT_BYTES'] = str(repo + margin + 150_000)  # No room beside the weights: said.
  proc = _sh('gpu_pack_full.sh', env)
  assert proc.returncode == 1 and 'no room for data beside the wheels and weights' in proc.stderr


def test_parts_reassemble_into_the_same_official_layout(packed):
  tmp_path, env = packed
  parts = sorted((tmp_path / 'gpudata').glob('c*'))
  assert len(parts) >= 4  # ~1.2 MB of incompressible data in 0.1 + 0.3 MB parts
  for k in range(1, len(parts) + 1):
    proc = _sh('gpu_stage.sh', env, str(k))
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = (tmp_path / 'home' / 'data' / 'cifar-100-python').exists()
    assert done == (k == len(parts)), k  # The data appears only once every part is there.
  assert f'{len(parts)} of {len(parts)} data parts' in proc.stdout
  for name in ('train', 'test', 'meta'):
    a = cifar100.read_pickle(tmp_path / 'cifar' / 'cifar-100-python' / name)
    b = cifar100.read_pickle(tmp_path / 'home' / 'data' / 'cifar-100-python' / name)
    assert set(a) == set(b)
    for key in a:
      assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), (name, key)


def test_a_damaged_part_is_refused_and_no_data_appears(packed):
  tmp_path, env = packed
  parts = sorted((tmp_path / 'gpudata').glob('c*'))
  damaged = next(parts[1].glob('cifar.part*'))
  damaged.write_bytes(damaged.read_bytes()[:-1] + b'\0')
  for k in range(1, len(parts) + 1):
    proc = _sh('gpu_stage.sh', env, str(k))
  assert proc.returncode != 0 and 'FAILED' in proc.stdout + proc.stderr
  assert not (tmp_path / 'home' / 'data').exists()


def test_the_last_part_on_a_machine_that_lost_the_others_fails(packed):
  """The machine given back between the calls keeps no earlier part: staging the last one had
  exited 0 without data, so `gpu_stage.sh 3 && gpu_pair.sh ...` ran without it (a review)."""
  tmp_path, env = packed
  parts = sorted((tmp_path / 'gpudata').glob('c*'), key=lambda p: int(p.name[1:]))
  proc = _sh('gpu_stage.sh', env, '1')
  assert proc.returncode == 0, proc.stderr[-2000:]  # Not the last: nothing to say yet.
  proc = _sh('gpu_stage.sh', env, parts[-1].name[1:])
  assert proc.returncode == 1 and 'stage from part 1 again' in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / 'home' / 'data').exists()


# --- scripts/gpu_check.sh: one device call (at most 600 s) ---------------------------------------
def _gpu_check(tmp_path, **env):
  env = {**os.environ, 'PY': sys.executable, 'SMALL': '1', 'OUT': str(tmp_path / 'out'), **env}
  return subprocess.Popen(['bash', str(ROOT / 'scripts' / 'gpu_check.sh')], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_gpu_check_clips_each_part_to_the_budget_and_skips_what_no_longer_fits(tmp_path):
  """Its parts' limits had added up to ~1,935 s against a 600 s call (an audit)."""
  slow = tmp_path / 'slow.sh'  # The versions part takes at least 3 s, however fast the machine.
  slow.write_text(f'#!/bin/bash\nsleep 3\nexec {sys.executable} "$@"\n')
  slow.chmod(0o755)
  proc = _gpu_check(tmp_path, PY=str(slow), PARTS='versions bench_r18', BUDGET_S='45',
                    RESERVE_S='5', MIN_PART_S='38')  # versions: 45 s wanted, 40 left (39 if the
  out, _ = proc.communicate(timeout=120)  # start crossed a second); bench_r18: at most 37 left
  assert proc.returncode == 0, out[-3000:]
  assert re.search(r'=== versions \(limit (40|39)s, clipped from 45s to fit BUDGET_S=45', out), out
  assert '=== bench_r18 SKIPPED' in out
  rows = (tmp_path / 'out' / 'parts.txt').read_text().splitlines()
  assert [r.split()[:2] for r in rows] == [['versions', 'ok'], ['bench_r18', 'SKIPPED']]
  summary = (tmp_path / 'out' / 'summary.txt').read_text()
  assert summary in out and 'of BUDGET_S=45s' in summary


@pytest.mark.parametrize('value', ['0', '-5', 'none'])
def test_gpu_check_refuses_a_torch_compile_limit_that_is_no_limit(tmp_path, value):
  """benchmark.py reads a limit of 0 as none: R152_TORCH_COMPILE_TIMEOUT_S=0, meant to skip the
  try, would have let one compile spend the whole call (a review)."""
  proc = _gpu_check(tmp_path, PARTS='versions', R152_TORCH_COMPILE_TIMEOUT_S=value)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 2, out[-2000:]
  assert out.startswith(f'error: R152_TORCH_COMPILE_TIMEOUT_S={value}: give a limit in seconds '
                        'above 0 (TORCH_COMPILE=off for eager only)'), out
  assert not (tmp_path / 'out' / 'parts.txt').exists()  # Refused before any part ran.


def test_gpu_check_unpacks_carried_weights_into_its_work_folder_not_devdata(tmp_path):
  """gpu_prepare.sh carries the weights as .pth.xz; the first part of gpu_check.sh that needs them
  unpacks them into the run's own temporary folder: unpacked into .devdata, a CPU dry run had
  left 49 MiB there, too much to carry with the rest (a review)."""
  import lzma  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  repo = tmp_path / 'repo'
  shutil.copytree(ROOT / 'scripts', repo / 'scripts')
  name = 'resnet50-keras-imagenet-tvlayout-fp16.pth'
  weights = np.random.default_rng(0).bytes(30_000)
  (repo / '.devdata').mkdir()
  (repo / '.devdata' / f'{name}.xz').write_bytes(lzma.compress(weights))
  spy = tmp_path / 'spy.sh'  # What the parity tests are given: the file, and where to look.
  spy.write_text(f'#!/bin/bash\n[ "$1" = -m ] && cp "$JAX_CIFAR_WEIGHTS_DIR/{name}" '
                 f'{tmp_path}/seen.pth && echo "$JAX_CIFAR_WEIGHTS_DIR" > {tmp_path}/dir.txt && '
                 'exit 0\n'  # (The tests themselves are not what this test is about.)
                 f'exec {sys.executable} "$@"\n')
  spy.chmod(0o755)
  env = {**os.environ, 'PY': str(spy), 'SMALL': '1', 'OUT': str(tmp_path / 'out'),
         'PARTS': 'parity_tests', 'PYTHONPATH': str(ROOT)}
  proc = subprocess.run(['bash', str(repo / 'scripts' / 'gpu_check.sh')], env=env, text=True,
                        capture_output=True, timeout=120, check=False)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  assert (tmp_path / 'seen.pth').read_bytes() == weights
  seen_dir = pathlib.Path((tmp_path / 'dir.txt').read_text().strip())
  assert seen_dir.name == 'weights' and seen_dir.parent.name.startswith('gpu_check_work.')
  assert sorted(p.name for p in (repo / '.devdata').iterdir()) == [f'{name}.xz']
  assert not seen_dir.exists()  # Its work folder goes with the run.


def test_gpu_check_exits_1_when_a_part_failed(tmp_path):
  """Every part could fail and the script exited 0: a device call's rc said nothing (a review)."""
  fails = tmp_path / 'fails.sh'  # the versions part's Python fails; the summary's still runs
  fails.write_text(f'#!/bin/bash\n[ "$*" = - ] && exit 3\nexec {sys.executable} "$@"\n')
  fails.chmod(0o755)
  proc = _gpu_check(tmp_path, PY=str(fails), PARTS='versions')
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 1, out[-3000:]
  rows = (tmp_path / 'out' / 'parts.txt').read_text().splitlines()
  assert [r.split()[:3] for r in rows] == [['versions', 'FAILED', 'rc=3']], rows
  assert 'total ' in (tmp_path / 'out' / 'summary.txt').read_text()  # the summary was still written
  assert out.rstrip().splitlines()[-1].startswith('gpu_check: not every part ended ok: versions (')


def test_gpu_check_cut_short_still_prints_and_keeps_the_parts_so_far(tmp_path):
  proc = _gpu_check(tmp_path, PARTS='versions')
  log = tmp_path / 'out' / 'gpu_check.log'
  deadline = time.time() + 60
  while not (log.exists() and '=== versions' in log.read_text()) and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)  # As a call's time limit would.
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 143, out[-3000:]
  assert 'INTERRUPTED by SIGTERM' in out and 'parts:' in out
  assert 'versions' in (tmp_path / 'out' / 'parts.txt').read_text()


def test_a_torch_compile_over_its_time_limit_falls_back_to_eager_and_says_so():
  """bench_r50 had spent ~70 s in torch.compile before anything else ran; its own limit (a
  child process, killed) and the eager fallback are recorded in the row."""
  benchmark = load_script('benchmark')
  config = benchmark.make_config('resnet18:cifar:4', 8, 'float32', 32)
  r = benchmark.bench_torch_limited(config, 1, 0, 'on', timeout_s=0.5)
  assert r['compiled'] is False and r['compile_timed_out'] is True and r['img_s'] > 0
  assert r['compile_error'] == 'torch.compile run timed out after 0s; fell back to eager'
  assert r['compile_attempt_s'] >= 0.5  # It waited its limit out (no upper bound: not a timed test).
  row = {'model': 'resnet18:cifar:4', 'dtype': 'float32', 'image_size': 32, 'batch': 8,
         'jax': {}, 'torch': r, 'grad_accum_steps': 1}
  lines = benchmark.table([row]).splitlines()
  assert ' eager* ' in lines[2] and lines[3].strip().startswith('torch: torch.compile run timed')
  # In time: the child's own result (here eager, to be quick), not a fallback.
  r = benchmark.bench_torch_limited(config, 1, 0, 'off', timeout_s=120)
  assert r['compiled'] is False and 'compile_error' not in r and r['img_s'] > 0


def test_a_stopped_benchmark_takes_its_torch_compile_child_with_it():
  """gpu_check.sh's time limit (SIGTERM to the benchmark) had left the torch.compile child, in a
  session of its own, compiling on into the next parts (an audit)."""
  code = ('import sys; sys.path.insert(0, "scripts"); import torch_step; torch_step.run_own_group('
          '[sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); '
          'time.sleep(300)"], 300)')
  proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  child = int(proc.stdout.readline())  # Printed by the child: the handler is in place by then.
  try:
    os.kill(child, 0)  # Running.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    with pytest.raises(ProcessLookupError):  # Killed and reaped, not left running.
      os.kill(child, 0)
  finally:
    try:
      os.killpg(child, signal.SIGKILL)  # (Only if the test failed: no sleeper left behind.)
    except ProcessLookupError:
      pass


def test_an_accumulating_row_is_jax_only_and_torch_gets_mfu_by_the_same_flops(monkeypatch):
  benchmark = load_script('benchmark')
  calls = []
  monkeypatch.setattr(benchmark, 'bench_jax', lambda config, *a, **k: calls.append(
      ('jax', config.train.grad_accum_steps)) or {'img_s': 100.0, 'mfu': 0.1})
  monkeypatch.setattr(benchmark, 'bench_torch', lambda *a, **k: calls.append('torch') or {})
  monkeypatch.setattr(benchmark, 'will_compile', lambda mode: True)
  monkeypatch.setattr(benchmark, 'bench_torch_limited', lambda *a, **k: calls.append(
      ('torch limited', a[-1])) or {'img_s': 50.0, 'compiled': True})
  args = benchmark.parse_args(['--grad_accum_steps', '1,4', '--torch_compile_timeout_s', '7'])
  row = benchmark.run_one('smoke', 8, 'bfloat16', 32, args, grad_accum_steps=4)
  assert calls == [('jax', 4)] and 'torch' not in row and row['grad_accum_steps'] == 4
  calls.clear()
  row = benchmark.run_one('smoke', 8, 'bfloat16', 32, args)
  assert calls == [('torch limited', 7.0), ('jax', 1)]  # The compiled try under its limit.
  assert row['torch']['mfu'] == pytest.approx(0.05) and row['jax_over_torch'] == 2.0
  assert ' compile ' in benchmark.table([row]).splitlines()[2]
