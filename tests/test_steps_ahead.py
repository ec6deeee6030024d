"""The training loop queues at most trainer.STEPS_AHEAD steps before it waits for one: a stop
saves within that many steps, and the progress bar counts steps done. It had waited only at log
steps (20 by default), so a SIGTERM saved many seconds later than it said (a log-file review)."""

import jax

from jax_cifar.training import trainer
from _tiny_run import config as tiny_config


def test_python_waits_for_each_step_once_it_has_queued_the_next_steps_ahead(tmp_path, monkeypatch):
  events, step_of = [], {}
  compile_train_step, block_until_ready = trainer.compile_train_step, jax.block_until_ready

  def compile_counting(*args, **kwargs):
    step_fn = compile_train_step(*args, **kwargs)

    def counted(leaves, batch):
      step = len(step_of) + 1
      events.append(('queued', step))
      leaves, metrics = step_fn(leaves, batch)
      step_of[id(metrics)] = step
      return leaves, metrics
    return counted

  def waiting(x):
    if id(x) in step_of:
      events.append(('waited', step_of[id(x)]))
    return block_until_ready(x)

  monkeypatch.setattr(trainer, 'compile_train_step', compile_counting)
  monkeypatch.setattr(jax, 'block_until_ready', waiting)
  c = tiny_config()
  c.data.synthetic_size, c.data.val_fraction = 640, 0.2
  c.train.max_steps, c.train.log_every_steps, c.checkpoint.every_steps = 12, 20, 100
  assert trainer.train_and_evaluate(c, str(tmp_path / 'run'))['step'] == 12
  waited = 0
  for what, step in events:
    if what == 'waited':
      waited = max(waited, step)
    elif step > 1:  # (The first step, which compiles, is waited for on its own.)
      assert waited >= step - 1 - trainer.STEPS_AHEAD, (step, events)
  assert waited >= 12 - trainer.STEPS_AHEAD
