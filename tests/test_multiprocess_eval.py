"""`evaluate --tta shifts --bn_adapt` (and `--tent`) in 2 processes x 2 CPU devices gives the CSV of
1 process x 4.

Both runs see the same global batches (8 images: 4 per process, 2 per device), so the BatchNorm
statistics of each chunk differ only in the order cross-device sums are added (float32 rounding).
Each OOD file's severity blocks hold 3 different real test images, so every chunk is one batch
whose process-1 half is all padding: that process must still take part in every collective and
contribute nothing to the statistics (with --tent, nothing to the entropy's gradient either).
Exactness against NumPy/PyTorch and independence of the device count are tested in
tests/test_bn_adapt.py and tests/test_tent.py.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jax_cifar.evaluation import submission
from jax_cifar.data import cifar100, ood

ROOT = pathlib.Path(__file__).resolve().parent.parent
PER_FILE = 15  # 5 severities x 3 images.

pytestmark = pytest.mark.slow


EVAL_LIMIT = 20  # Clean validation and test images: batches of 8, 8 and 4 (the last on process 0).


def _overrides(data_dir) -> dict:
  return {'data.dir': str(data_dir), 'data.train_limit': 512, 'data.eval_limit': EVAL_LIMIT,
          'train.eval_batch_size': 8}


def _evaluate(workdir, ood_dir, csv, data_dir, processes: int, tools: list[str],
              stop: str | None = None) -> dict | str:
  """The run's JSON line; with `stop` (a JAX_CIFAR_TEST_SIGNAL), its output after it stopped."""
  cmd = [sys.executable, '-m', 'jax_cifar.evaluate', '--config', str(ROOT / 'configs' / 'smoke.py'),
         '--workdir', str(workdir), '--checkpoint', 'latest', *tools]
  if ood_dir is not None:
    cmd += ['--ood_dir', str(ood_dir), '--submission', str(csv)]
  cmd += [f'--config.{k}={v}' for k, v in _overrides(data_dir).items()]
  env = {k: v for k, v in os.environ.items() if k not in (
      'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'JAX_CIFAR_TEST_SIGNAL')}
  if processes > 1:
    cmd = [sys.executable, str(ROOT / 'scripts' / 'launch_local.py'), '--num_processes',
           str(processes), '--cpu_devices', str(4 // processes), '--', *cmd]
  else:
    env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='4')
  if stop:
    env['JAX_CIFAR_TEST_SIGNAL'] = stop
  proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  if stop:
    assert proc.returncode == 143, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr  # (launch_local gives the processes' stderr on stdout.)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = [l.split('] ', 1)[-1] for l in proc.stdout.splitlines()]  # launch_local prefixes [pI].
  return json.loads([l for l in lines if l.startswith('{')][-1])


@pytest.fixture(scope='module')
def trained(tmp_path_factory, cifar_dir, smoke_run):
  """README's smoke run on real images (conftest.smoke_run), and 19 OOD files of 15 real test
  images each."""
  ood_dir = tmp_path_factory.mktemp('mp_eval') / 'ood'
  ood_dir.mkdir()
  test_images = cifar100.load_split(cifar_dir, 'test').images
  for d in range(ood.NUM_DISTORTIONS):
    np.save(ood_dir / ood.distortion_file(d), test_images[PER_FILE * d:PER_FILE * (d + 1)])
  return smoke_run, ood_dir


def test_two_processes_adapt_and_shift_like_one(tmp_path, cifar_dir, trained):
  """The 2-process run is first stopped (SIGTERM to process 0 after distortion 08) and then
  resumed: process 0 hands the kept files' labels to process 1 (jax_cifar/evaluation/
  kept_predictions.py), and the CSV is still the one of a single process that never stopped."""
  workdir, ood_dir = trained
  tools = ['--tta', 'shifts', '--bn_adapt']
  err = _evaluate(workdir, ood_dir, tmp_path / 'sub_2.csv', cifar_dir, 2, tools,
                  stop='ood_file:8:SIGTERM:0')
  kept = workdir / 'partial_latest_tta-shifts_bn-adapt'
  assert f'the predictions of 9 finished files are kept in {kept}' in err, err[-3000:]
  assert '[p1] error: stopped by a signal to another process\n' in err  # Process 0 says the rest.
  results = {p: _evaluate(workdir, ood_dir, tmp_path / f'sub_{p}.csv', cifar_dir, p, tools)
             for p in (2, 1)}
  assert results[2]['ood_files_resumed'] == 9 and 'ood_files_resumed' not in results[1]
  assert not kept.exists()
  for p in (1, 2):
    assert results[p]['tta'] == 'shifts' and results[p]['bn_adapt'] is True
    assert submission.check_submission(tmp_path / f'sub_{p}.csv', ood_dir).startswith('OK')
  for key in ('test_accuracy', 'test_loss', 'test_top5_accuracy'):
    np.testing.assert_allclose(results[2][key], results[1][key], rtol=1e-5, err_msg=key)
  assert results[2]['test_count'] == results[1]['test_count'] == EVAL_LIMIT
  labels = [l.rsplit(',', 1)[1] for l in (tmp_path / 'sub_1.csv').read_text().split()[1:]]
  assert len(labels) == 19 * PER_FILE and len(set(labels)) >= 5  # Predictions vary by image.
  assert (tmp_path / 'sub_2.csv').read_bytes() == (tmp_path / 'sub_1.csv').read_bytes()


def test_two_processes_tent_like_one(cifar_dir, trained):
  """--tent on the clean splits (20 images each, batches of 8: the last holds 4 real images, all
  on process 0, so process 1 takes Adam steps on padding only and must add nothing to them)."""
  workdir, _ = trained
  tools = ['--tent', '--tent_batch_size', '8', '--tent_epochs', '2']
  results = {p: _evaluate(workdir, None, None, cifar_dir, p, tools) for p in (2, 1)}
  for p in (1, 2):
    assert results[p]['bn_adapt'] is True and results[p]['test_count'] == EVAL_LIMIT
  detail = json.loads((workdir / 'eval_latest_bn-adapt_tent-e2-b8.json').read_text())
  assert detail['tent'] == {'lr': 1e-3, 'epochs': 2, 'batch_size': 8}
  for key in ('test_accuracy', 'test_loss', 'test_top5_accuracy', 'val_loss'):
    np.testing.assert_allclose(results[2][key], results[1][key], rtol=1e-5, err_msg=key)
