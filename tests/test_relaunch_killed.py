"""A resumed launch killed before its first save: the run's config.json stays the config of its
saved steps, so the next relaunch is checked against the config those steps were trained with."""

import json
import os
import pathlib
import signal

from _train_cli import TINY, the_error, train
from jax_cifar import interrupt


def _signal_at(step: int, name: str = 'SIGKILL') -> dict:
  return dict(os.environ, **{interrupt.TEST_HOOK_VAR: f'train_step:{step}:{name}'})


def _lr(workdir: pathlib.Path) -> float:
  return json.loads((workdir / 'config.json').read_text())['optim']['lr']


def test_a_killed_resume_leaves_the_config_of_the_saved_steps(tmp_path):
  """A resume allowed to change optim.lr, SIGKILLed before it saved (as a host's out-of-memory
  kill): its config had stayed the run's config.json, so relaunching the run as it was had been
  refused as a change ("optim.lr 0.01 -> 0.001", backwards), and `--workdir` alone had resumed
  the saved steps with the killed launch's learning rate, without a word (a kill review)."""
  run = tmp_path / 'run'
  assert train(run, '--config.train.max_steps=2').returncode == 0  # Saved at step 2.
  before = _lr(run)
  changed = ('--config.train.max_steps=6', '--config.optim.lr=0.01',
             '--config.train.allow_config_change=true')
  killed = train(run, *changed, env=_signal_at(3))  # Checkpoints at steps 2, 4: none of its own.
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert _lr(run) == before
  assert 'optim.lr' in the_error(train(run, '--config.optim.lr=0.01',
                                       '--config.train.max_steps=6'))  # Still a change.
  again = train(run, *changed, env=_signal_at(3, 'SIGTERM'))  # Stopped once it saved step 3:
  assert again.returncode == 75, again.stderr[-3000:]  # the saved steps are its own now.
  assert sorted(os.listdir(run / 'checkpoints' / 'latest'))[-1] == '3' and _lr(run) == 0.01
  resumed = train(run, config=None, overrides={})  # `--workdir` alone: the saved steps' config.
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from step 3' in resumed.stderr and _lr(run) == 0.01
  assert TINY['checkpoint.every_steps'] == 2  # (What the kill step above assumes.)
