"""Training from a notebook: the interrupt's exception says where the run was saved and how to go
on, and a run trained in a background thread trains (a notebook review)."""

import signal
import threading

import pytest

import jax_cifar
from jax_cifar import interrupt
from _tiny_run import config as tiny_config


def _config(max_steps: int):
  c = tiny_config()
  c.data.synthetic_size, c.data.val_fraction = 320, 0.2
  c.train.max_steps, c.checkpoint.every_steps, c.train.log_every_steps = max_steps, 2, 1
  return c


def test_a_notebooks_interrupt_raises_preempted_naming_the_saved_step_and_the_way_on(
    tmp_path, monkeypatch):
  """A notebook shows the exception last; it had said "SIGINT" alone, the lines above it (which
  named the step and the folder) scrolled away."""
  workdir = tmp_path / 'run'
  monkeypatch.setenv(interrupt.TEST_HOOK_VAR, 'train_step:2:SIGINT')  # The stop button at step 2.
  with pytest.raises(jax_cifar.Preempted) as stopped:
    jax_cifar.train_and_evaluate(_config(4), str(workdir))
  assert str(stopped.value) == (
      f'SIGINT: saved step 2 to {workdir}; train_and_evaluate(config, workdir) with the same '
      'workdir (or the same command) resumes from it')
  monkeypatch.delenv(interrupt.TEST_HOOK_VAR)
  assert jax_cifar.train_and_evaluate(_config(4), str(workdir))['step'] == 4  # As it says.


def test_a_run_trained_in_a_background_thread_trains_and_says_signals_do_not_stop_it(
    tmp_path, capsys):
  """signal.signal() works in the main thread only: a notebook's background thread had stopped at
  a bare "ValueError: signal only works in main thread of the main interpreter"."""
  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  done = {}

  def train():
    try:
      done['step'] = jax_cifar.train_and_evaluate(_config(2), str(tmp_path / 'run'))['step']
    except BaseException as e:  # pylint: disable=broad-except  (reported below)
      done['error'] = repr(e)

  worker = threading.Thread(target=train)
  worker.start()
  worker.join(timeout=300)
  assert done == {'step': 2}, done
  assert ('note: training in a thread other than the main one: SIGTERM and SIGINT do not stop it'
          in capsys.readouterr().err)
  assert {s: signal.getsignal(s) for s in before} == before
