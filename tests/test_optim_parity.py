"""The optimizer chain (jax_cifar/optim.py) against torch.optim on the same parameters and
gradients: clip_grad_norm_ + AdamW / SGD with the weight decay of either optim.decay_bn_and_bias
setting, and the cosine schedule against torch's CosineAnnealingLR (stepped per optimizer step, or
per epoch), and optim.backbone_lr_mult against torch parameter groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_module
from jax_cifar import optim
from jax_cifar.configs import default

STEPS = 8
# A conv kernel, a BatchNorm scale and bias, a dense kernel and bias: both sides of the decay mask.
SHAPES = {'conv': (3, 3, 4, 8), 'bn_scale': (8,), 'bn_bias': (8,), 'fc_kernel': (8, 10),
          'fc_bias': (10,)}


def _params_and_grads():
  rng = np.random.default_rng(0)
  params = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in SHAPES.items()}
  # Large enough that the global norm is clipped at some steps and not at others.
  grads = [{k: rng.normal(0, 0.4 * (1 + i % 3), s).astype(np.float32) for k, s in SHAPES.items()}
           for i in range(STEPS)]
  return params, grads


def _optax_run(c, params, grads):
  tx, schedule = optim.make_optimizer(c, total_steps=STEPS, steps_per_epoch=STEPS)
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update(jax.tree.map(jnp.asarray, g), state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  return {k: np.asarray(v) for k, v in p.items()}, schedule


def _torch_run(torch, c, params, grads, schedule):
  """torch's own optimizer and clipping, its learning rate set to the schedule's at each step (the
  backbone's, with c.backbone_lr_mult, x that multiplier: torch's usual parameter groups)."""
  tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
  decayed = [k for k in SHAPES if c.decay_bn_and_bias or len(SHAPES[k]) > 1]
  groups = [{'params': [tp[k] for k in SHAPES if (k in decayed) == decay and
                        k.startswith('fc_') == head],
             'weight_decay': c.weight_decay if decay else 0.0,
             'lr_mult': 1.0 if head else c.backbone_lr_mult}
            for decay in (True, False) for head in (True, False)]
  if c.name == 'adamw':
    opt = torch.optim.AdamW(groups, lr=c.lr, betas=(c.b1, c.b2), eps=1e-8)
  else:
    opt = torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov)
  for i, g in enumerate(grads):
    for k, v in g.items():
      tp[k].grad = torch.from_numpy(v.copy())
    torch.nn.utils.clip_grad_norm_(list(tp.values()), c.grad_clip_norm)
    for group in opt.param_groups:
      group['lr'] = float(schedule(i)) * group['lr_mult']
    opt.step()
  return {k: v.detach().numpy() for k, v in tp.items()}


@pytest.mark.parametrize('name', ['adamw', 'sgd'])
@pytest.mark.parametrize('bn_and_bias', [False, True])
def test_the_chain_equals_torch_clipping_and_optimizer_with_the_same_decay(name, bn_and_bias):
  torch = require_module('torch')
  c = default.get_config().optim
  c.name, c.lr, c.weight_decay, c.decay_bn_and_bias = name, 0.05, 0.1, bn_and_bias
  c.grad_clip_norm, c.warmup_epochs, c.momentum, c.nesterov = 1.0, 0.25, 0.9, name == 'sgd'
  params, grads = _params_and_grads()
  got, schedule = _optax_run(c, params, grads)
  want = _torch_run(torch, c, params, grads, schedule)
  for k in SHAPES:  # torch divides by (norm + 1e-6) when clipping: ~1e-6 relative.
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)
  # The setting matters where it should: a BatchNorm scale is decayed only with it.
  c.decay_bn_and_bias = not bn_and_bias
  other, _ = _optax_run(c, params, grads)
  assert np.abs(other['bn_scale'] - got['bn_scale']).max() > 1e-4
  np.testing.assert_array_equal(other['conv'], got['conv'])


@pytest.mark.parametrize('name', ['adamw', 'sgd'])
def test_the_backbone_learning_rate_multiplier_equals_torch_parameter_groups(name):
  """optim.backbone_lr_mult against torch's usual transfer setup: the backbone's group at lr x
  the multiplier, the head's (`fc`) at lr, one clipping over both."""
  torch = require_module('torch')
  c = default.get_config().optim
  c.name, c.lr, c.weight_decay, c.backbone_lr_mult = name, 0.05, 0.1, 0.1
  c.grad_clip_norm, c.warmup_epochs, c.momentum = 1.0, 0.25, 0.9
  params, grads = _params_and_grads()
  nest = lambda flat: {'fc': {'kernel': flat['fc_kernel'], 'bias': flat['fc_bias']},
                       **{k: v for k, v in flat.items() if not k.startswith('fc_')}}
  tx, schedule = optim.make_optimizer(c, total_steps=STEPS, steps_per_epoch=STEPS)
  p = jax.tree.map(jnp.asarray, nest(params))
  state, update = tx.init(p), jax.jit(tx.update)
  for g in grads:
    updates, state = update(jax.tree.map(jnp.asarray, nest(g)), state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  got = {'fc_kernel': p['fc']['kernel'], 'fc_bias': p['fc']['bias'],
         **{k: v for k, v in p.items() if k != 'fc'}}
  want = _torch_run(torch, c, params, grads, schedule)
  for k in SHAPES:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-5, atol=2e-6, err_msg=k)
  c.backbone_lr_mult = 1.0  # Far from the multiplier-less path, beyond the tolerance above.
  assert np.abs(_torch_run(torch, c, params, grads, schedule)['conv'] - want['conv']).max() > 1e-3


def test_the_mask_keeps_the_optimizer_states_structure():
  """Either setting is a mask over the same tree: a run can be resumed under the other one
  (a trajectory change, which resume refuses unless allowed) without a mismatched state."""
  c = default.get_config().optim
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  structures = []
  for bn_and_bias in (False, True):
    c.decay_bn_and_bias = bn_and_bias
    tx, _ = optim.make_optimizer(c, total_steps=10, steps_per_epoch=10)
    structures.append(jax.tree.structure(tx.init(params)))
  assert structures[0] == structures[1]


def test_a_fractional_number_of_epochs_is_its_steps_rounded_down_not_cut_by_rounding_error():
  """2.3 epochs of 390 steps are 897 steps; int(2.3 * 390) is 896 (a review)."""
  assert 2.3 * 390 < 897 and optim.epochs_to_steps(2.3, 390) == 897
  assert optim.epochs_to_steps(2.5, 3) == 7 and optim.epochs_to_steps(0.1, 5) == 1
  assert optim.epochs_to_steps(30, 352) == 10_560 and optim.epochs_to_steps(0.7, 1000) == 700


def test_cosine_schedule_without_warmup_equals_torch_cosine_annealing_stepped_per_step():
  """optim.schedule='cosine' steps per optimizer step: torch's CosineAnnealingLR(T_max=steps,
  eta_min=end_lr_factor * lr) with scheduler.step() after every optimizer step."""
  torch = require_module('torch')
  c = default.get_config().optim
  c.lr, c.warmup_epochs, c.end_lr_factor = 7e-4, 0.0, 0.01
  total = 50
  schedule = optim.make_schedule(c.lr, c, total_steps=total, steps_per_epoch=10)
  opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=c.lr)
  annealing = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total,
                                                         eta_min=c.end_lr_factor * c.lr)
  want = []
  for _ in range(total + 1):
    want.append(opt.param_groups[0]['lr'])
    opt.step()
    annealing.step()
  got = [float(schedule(i)) for i in range(total + 1)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)


def test_cosine_schedule_per_epoch_equals_torch_cosine_annealing_stepped_per_epoch():
  """optim.schedule_per='epoch': a torch script's CosineAnnealingLR(T_max=epochs) with
  scheduler.step() after each epoch, every step of an epoch at the same rate; a frozen
  backbone's epochs count from its unfreezing; a warm-up from 0 is refused."""
  torch = require_module('torch')
  c = default.get_config().optim
  c.lr, c.warmup_epochs, c.end_lr_factor, c.schedule_per = 7e-4, 0.0, 0.01, 'epoch'
  epochs, per_epoch = 6, 7
  schedule = optim.make_schedule(c.lr, c, total_steps=epochs * per_epoch, steps_per_epoch=per_epoch)
  opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=c.lr)
  annealing = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs,
                                                         eta_min=c.end_lr_factor * c.lr)
  want = []
  for _ in range(epochs):
    want += [opt.param_groups[0]['lr']] * per_epoch
    for _ in range(per_epoch):
      opt.step()
    annealing.step()
  got = [float(schedule(i)) for i in range(epochs * per_epoch)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)
  assert len(set(got)) == epochs  # (The per-step schedule changes at every step.)
  jitted = jax.jit(schedule)  # As optax calls it: a traced int32 count.
  assert float(jitted(jnp.int32(9))) == pytest.approx(want[9], rel=1e-6)
  delayed = optim.make_schedule(c.lr, c, total_steps=epochs * per_epoch + 3,
                                steps_per_epoch=per_epoch, delay_steps=3)
  assert [float(delayed(i)) for i in range(3)] == [0.0] * 3
  np.testing.assert_allclose([float(delayed(i + 3)) for i in range(epochs * per_epoch)], want,
                             rtol=1e-5, atol=1e-10)
  c.warmup_epochs = 1.0
  with pytest.raises(optim.errors.ConfigError, match='warmup_epochs=0'):
    optim.make_schedule(c.lr, c, total_steps=epochs * per_epoch, steps_per_epoch=per_epoch)
