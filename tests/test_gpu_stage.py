"""scripts/gpu_pack_full.sh + gpu_stage.sh: the full data set split into parts small enough for
one device call each, then reassembled on the other side (checksums, xz, the official layout);
and the benchmark's torch.compile limit (gpu_check.sh's bench parts)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jax_cifar.data import cifar100

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


def test_a_torch_compile_over_its_time_limit_falls_back_to_eager_and_says_so():
  """bench_r50 had spent ~70 s in torch.compile before anything else ran; its own limit (a
  child process, killed) and the eager fallback are recorded in the row."""
  sys.path.insert(0, str(ROOT / 'scripts'))
  import benchmark  # pylint: disable=import-outside-toplevel
  config = benchmark.make_config('resnet18:cifar:4', 8, 'float32', 32)
  r = benchmark.bench_torch_limited(config, 1, 0, 'on', timeout_s=0.5)
  assert r['compiled'] is False and r['compile_timed_out'] is True and r['img_s'] > 0
  assert r['compile_error'] == 'torch.compile run timed out after 0s; fell back to eager'
  assert 0.5 <= r['compile_attempt_s'] < 10
  row = {'model': 'resnet18:cifar:4', 'dtype': 'float32', 'image_size': 32, 'batch': 8,
         'jax': {}, 'torch': r, 'grad_accum_steps': 1}
  lines = benchmark.table([row]).splitlines()
  assert ' eager* ' in lines[2] and lines[3].strip().startswith('torch: torch.compile run timed')
  # In time: the child's own result (here eager, to be quick), not a fallback.
  r = benchmark.bench_torch_limited(config, 1, 0, 'off', timeout_s=120)
  assert r['compiled'] is False and 'compile_error' not in r and r['img_s'] > 0
