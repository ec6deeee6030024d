"""The labelled OOD sets of scripts/gpu_ood.py: `jax_cifar.corrupt` in CPU processes (while the GPU
trains), each writing a share of the 19 distortions; merged into one folder that appears whole, so
a second run sharing the GPU (--ood_from) waits for it and never reads it half made. Deadlines are
seconds from T0, the script's start."""

import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from jax_cifar.data import ood  # pylint: disable=wrong-import-position

T0 = time.monotonic()


def log(msg: str) -> None:
  print(f'[{time.monotonic() - T0:6.0f}s] {msg}', flush=True)


# Where each split's OOD set is made under --work (the validation one: the trainer's default
# hold-out, val_fraction 0.1 and split_seed 0, which --set may therefore not change).
OOD_FOLDERS = {'val': 'ood_val', 'test': 'ood'}  # Validation first.


def start_corrupt(data: str, out: pathlib.Path, limit: int, procs: int, nice: int = 0,
                  split: str = 'test') -> list:
  """`procs` CPU processes, each writing a share of the 19 distortions into out/gK."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  jobs = []
  for k in range(procs):
    names = ood.CORRUPTIONS[k::procs]
    if names:
      cmd = [sys.executable, '-m', 'jax_cifar.corrupt', '--out', str(out / f'g{k}'), '--format',
             'ds542', '--limit', str(limit), '--data_dir', data, '--corruptions', ','.join(names),
             '--split', split]
      cmd = ['nice', '-n', str(nice), *cmd] if nice else cmd
      jobs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                   stderr=open(out.parent / f'{out.name}_g{k}.log', 'w')))
  return jobs


def wait_jobs(jobs: list, deadline_s: float | None = None) -> bool:
  """Whether the jobs all ended by deadline_s (seconds from this script's start; None: wait)."""
  while any(j.poll() is None for j in jobs):
    if deadline_s is not None and time.monotonic() - T0 > deadline_s:
      return False
    time.sleep(1)
  return True


def stop_jobs(jobs: list) -> None:
  """Ends corrupt processes still running (a set given up at its deadline)."""
  for j in jobs:
    if j.poll() is None:
      j.kill()
      j.wait()


def merge_corrupt(jobs: list, out: pathlib.Path,
                  deadline_s: float | None = None) -> pathlib.Path | None:
  """Waits for the jobs (until deadline_s, then stops them: None); links their files into out/all
  (distortion00..18.npy + labels.npy), which appears whole (renamed in), so a run sharing it
  (--ood_from) never reads it half made."""
  if not wait_jobs(jobs, deadline_s):
    log(f'{out} not made before {deadline_s:.0f}s: stopped')
    stop_jobs(jobs)
    return None
  if any(j.wait() for j in jobs):
    log(f'corrupt failed for {out} (see {out.parent}/{out.name}_g*.log)')
    return None
  merged = out / 'all'
  if not merged.exists():
    tmp = out / 'all.tmp'
    tmp.mkdir(parents=True, exist_ok=True)
    for f in sorted(out.glob('g*/*.npy')):
      if not (tmp / f.name).exists():
        (tmp / f.name).symlink_to(f.resolve())
    tmp.rename(merged)
  return merged


def wait_for_set(folder: pathlib.Path, deadline_s: float) -> pathlib.Path | None:
  """Another run's merged OOD set (--ood_from), once it exists; None past the deadline."""
  while not folder.is_dir():
    if time.monotonic() - T0 > deadline_s:
      log(f'{folder} did not appear before the deadline')
      return None
    time.sleep(2)
  return folder
