"""Launching `python -m jax_cifar.train` on a tiny synthetic run, and reading what it leaves behind.

Shared by test_workdir, test_tracking and test_cli: one place says what "a tiny run" is and what "a
one-line error" means.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# 320 synthetic images, 20% held out: 220 train images -> 6 steps per epoch of 32; 2 epochs = 12
# steps. No warmup, so the cosine schedule depends on the run's length from the first step.
TINY = {
    'data.source': 'synthetic', 'data.synthetic_size': 320, 'data.val_fraction': 0.2,
    'model.name': 'simple_cnn',  # Compiles in seconds, unlike a ResNet.
    'train.batch_size': 32, 'train.eval_batch_size': 64, 'train.num_epochs': 2.0,
    'optim.warmup_epochs': 0.0, 'train.log_every_steps': 1, 'checkpoint.every_steps': 2,
}
STEPS_PER_EPOCH = 6


def train(workdir: pathlib.Path | None, *extra: str, config: str | None = 'configs/default.py',
          overrides: dict | None = None, env: dict | None = None,
          cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
  """Runs the training CLI to completion; `extra` flags come last, so they win (None: no flag)."""
  args = ['--config', config] if config is not None else []
  args += ['--workdir', str(workdir)] if workdir is not None else []
  args += [f'--config.{k}={v}' for k, v in (TINY if overrides is None else overrides).items()]
  return subprocess.run([sys.executable, '-m', 'jax_cifar.train', *args, *extra], cwd=cwd,
                        capture_output=True, text=True,
                        env=os.environ.copy() if env is None else env, check=False)


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('error:')]


def the_error(out: subprocess.CompletedProcess, status: int | None = None) -> str:
  """The one `error:` line of a failed run (asserting there is exactly one, and no traceback)."""
  lines = error_lines(out.stderr)
  assert out.returncode != 0 and len(lines) == 1, (out.returncode, out.stderr[-4000:])
  assert 'Traceback' not in out.stderr, out.stderr[-4000:]
  if status is not None:
    assert out.returncode == status, (out.returncode, out.stderr[-4000:])
  return lines[0]


def snapshot(folder: pathlib.Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
  """{relative path: sha256} of every file under `folder` (and '/' for each folder)."""
  out = {}
  for path in sorted(folder.rglob('*')):
    rel = str(path.relative_to(folder))
    if rel in skip:
      continue
    out[rel] = '/' if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
  return out
