"""scripts/gpu_ood_sets.py: the OOD sets gpu_ood.py has jax_cifar.corrupt make in CPU processes,
merged into a folder that appears whole, waited for by a second run, given up at a deadline."""

import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import load_script

pytestmark = pytest.mark.timeout(120)  # A deadline bug loops rather than fails.


def test_a_shared_set_appears_whole_and_a_second_run_waits_for_it(tmp_path):
  sets = load_script('gpu_ood_sets')
  out = tmp_path / 'ood_val'
  for k in range(2):
    (out / f'g{k}').mkdir(parents=True)
    np.save(out / f'g{k}' / f'distortion{k:02d}.npy', np.zeros((5, 32, 32, 3), np.uint8))
  waiting = []
  thread = threading.Thread(target=lambda: waiting.append(sets.wait_for_set(out / 'all', 60)))
  thread.start()
  merged = sets.merge_corrupt([], out)  # No corrupt processes left to wait for.
  thread.join()
  assert waiting == [merged] == [out / 'all']
  assert sorted(p.name for p in merged.iterdir()) == ['distortion00.npy', 'distortion01.npy']
  assert not (out / 'all.tmp').exists()
  assert sets.merge_corrupt([], out) == merged  # Merged once; a second call keeps it.
  assert sets.wait_for_set(tmp_path / 'never', deadline_s=-1) is None


def test_a_set_not_made_by_its_deadline_is_stopped_and_given_up(tmp_path):
  sets = load_script('gpu_ood_sets')
  job = subprocess.Popen(['sleep', '60'])
  assert sets.merge_corrupt([job], tmp_path / 'ood', time.monotonic() - sets.T0 + 1) is None
  assert job.poll() is not None and job.returncode < 0  # Killed by a signal, not waited for.
  assert not (tmp_path / 'ood' / 'all').exists()


def test_a_set_is_merged_once_its_jobs_end_and_given_up_if_one_failed(tmp_path):
  sets = load_script('gpu_ood_sets')
  out = tmp_path / 'ood'
  (out / 'g0').mkdir(parents=True)
  np.save(out / 'g0' / 'distortion00.npy', np.zeros((5, 32, 32, 3), np.uint8))
  job = subprocess.Popen(['sleep', '2'])  # Still writing: waited for, within the deadline.
  assert sets.merge_corrupt([job], out, time.monotonic() - sets.T0 + 60) == out / 'all'
  assert job.returncode == 0 and (out / 'all' / 'distortion00.npy').exists()
  failed = [subprocess.Popen(['true']), subprocess.Popen(['false'])]  # One of several failed.
  assert sets.merge_corrupt(failed, tmp_path / 'other', None) is None
  assert not (tmp_path / 'other' / 'all').exists()
