"""What tests/test_corrupt_cli.py and test_corrupt_interrupt.py share: a tiny synthetic
cifar-100-python/ (40 random test images), `python -m jax_cifar.corrupt` run on it, and the
uninterrupted run's bytes to compare with."""

import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np

from jax_cifar.corruptions import store as corrupt_store
from jax_cifar.data import ood

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAMES = ('gaussian_noise', 'impulse_noise', 'fog', 'contrast')
FILES = [ood.distortion_file(ood.CORRUPTIONS.index(n)) for n in NAMES]
ARGS = ('--limit', '6', '--seed', '1', '--corruptions', ','.join(NAMES))


def make_source(root: pathlib.Path) -> pathlib.Path:
  """`root` made a data folder whose cifar-100-python/test holds 40 random images."""
  folder = root / 'cifar-100-python'
  folder.mkdir()
  rng = np.random.default_rng(0)
  raw = {'data': rng.integers(0, 256, (40, 3072), dtype=np.uint8),
         'fine_labels': [int(v) for v in rng.integers(0, 100, 40)]}
  (folder / 'test').write_bytes(pickle.dumps(raw, protocol=2))
  for name in ('train', 'meta'):  # Present for the folder check; never read here.
    (folder / name).write_bytes(b'')
  return root


# Runs the rest of the command line with a file-size limit (a full disk) set by the new process
# itself: a preexec_fn would run Python in a child forked from this multi-threaded (JAX) process.
_LIMITED = ('import os, resource, sys; n = int(sys.argv[1]); '
            'resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); '
            'os.execv(sys.executable, [sys.executable, *sys.argv[2:]])')


def run(source, out, *args, hook='', env=None, max_file_bytes=None,
        **kw) -> subprocess.CompletedProcess:
  env = {**os.environ, **(env or {}), corrupt_store.HOOK_ENV: hook}
  limit = [] if max_file_bytes is None else ['-c', _LIMITED, str(max_file_bytes)]
  return subprocess.run([sys.executable, *limit, '-m', 'jax_cifar.corrupt', '--data_dir',
                         str(source), '--out', str(out), *args], cwd=ROOT, capture_output=True,
                        text=True, env=env, check=False, **kw)


def error_line(result) -> str:
  """The single stderr line of a failed run; no traceback."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: '), (
      result.returncode, result.stderr[-3000:])
  return lines[0]


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def read_manifest(folder: pathlib.Path) -> dict:
  return json.loads((folder / corrupt_store.MANIFEST).read_text())


def assert_only_complete_reference_files(folder, reference):
  """What a reader sees mid-way: each .npy checks out and equals the uninterrupted run's."""
  for path in folder.glob('*.npy'):
    if path.name != 'labels.npy':
      assert ood.check_image_file(path).num_images == 30
    assert path.read_bytes() == reference[path.name], path.name


def reference_set(source: pathlib.Path, out: pathlib.Path) -> dict[str, bytes]:
  """The bytes of an uninterrupted run with ARGS, written to `out`."""
  result = run(source, out, *ARGS)
  assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in out.iterdir()) == sorted(FILES + ['labels.npy', 'corrupt_manifest.json'])
  return snapshot(out)
