"""model.scan_blocks: each stage's repeated residual block compiled once, same numbers and layout."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cifar import optim, parallel, resume_rules, workdir
from jax_cifar import state as state_lib
from jax_cifar.configs import default
from jax_cifar.models import create_model
from jax_cifar.training.train_step import train_step


def _model(name: str, scan: bool, **kw):
  return create_model(name, 10, stem='cifar', width=8, scan_blocks=scan, rngs=nnx.Rngs(0), **kw)


def _loss_grads_stats(model, x):
  """Train-mode loss, parameter gradients and updated BN statistics, the trainer's way (pure)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest):
    m = nnx.merge(graphdef, params, rest, copy=True)
    return jnp.sum(m(x, train=True) ** 2), nnx.state(m, nnx.BatchStat)

  (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
  logits = jax.jit(lambda p, r: nnx.merge(graphdef, p, r)(x, train=False))(params, rest)
  return value, grads, stats, logits


def _train_lowering(model, x) -> str:
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest):
    return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x, train=True))

  return jax.jit(jax.grad(loss)).lower(params, rest).as_text()


def _close_per_leaf(a, b, rtol: float):
  """Every leaf within rtol of its own largest magnitude (float32 sums in another order)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for p, q in zip(la, lb):
    scale = max(float(np.abs(p).max()), 1e-30)
    assert float(np.abs(np.asarray(p) - np.asarray(q)).max()) <= rtol * scale


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_scanned_blocks_give_the_same_loss_gradients_stats_and_layout(name):
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  plain, scanned = _model(name, False), _model(name, True)
  # Same parameters, same names and shapes: checkpoints and converted weights load either way.
  s0, s1 = nnx.to_pure_dict(nnx.state(plain)), nnx.to_pure_dict(nnx.state(scanned))
  assert jax.tree.structure(s0) == jax.tree.structure(s1)
  jax.tree.map(np.testing.assert_array_equal, s0, s1)
  l0, g0, st0, e0 = _loss_grads_stats(plain, x)
  l1, g1, st1, e1 = _loss_grads_stats(scanned, x)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  np.testing.assert_allclose(e1, e0, rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(g0) == jax.tree.structure(g1)
  _close_per_leaf(g0, g1, 1e-4)
  _close_per_leaf(st0, st1, 1e-5)
  # The scanned model really scans in the train step (a while loop), the plain one does not.
  text = {m: _train_lowering(m, x) for m in (plain, scanned)}
  assert 'stablehlo.while' not in text[plain] and 'stablehlo.while' in text[scanned]
  # Every block's statistics moved (each scanned block wrote its own back, not the first's).
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(st1), jax.tree.leaves(nnx.state(scanned, nnx.BatchStat)))]
  assert all(moved)


def _forward_convolutions(name: str, scan: bool) -> int:
  model = nnx.eval_shape(lambda: _model(name, scan))
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False))
  text = fwd.lower(state, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)).as_text()
  return text.count('stablehlo.convolution')


def test_resnet152_traces_each_stages_repeated_block_once():
  """ResNet-152 has 1 + 3 x 50 + 4 downsample convs; scanned, a stage traces its first block
  (3 convs + downsample) and one copy of the 2..n blocks (3 convs): 1 + 4 x 7 = 29."""
  assert _forward_convolutions('resnet152', False) == 155
  assert _forward_convolutions('resnet152', True) == 29


def _config(**model):
  c = default.get_config()
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'cifar', 4  # layer1: 2 equal blocks
  c.model.update(model)
  c.optim.warmup_epochs, c.train.batch_size, c.train.grad_accum_steps = 0.0, 16, 2
  return c


def _one_step(c):
  tx, schedule = optim.make_optimizer(c.optim, 10, 10)
  state, graphdef = state_lib.init_state(c, tx, parallel.make_mesh())
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 32, 32, 3), np.uint8),
           'label': rng.integers(0, 100, 16).astype(np.int32)}
  fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, config=c))
  return fn(state, batch)


def test_train_step_with_scan_and_remat_equals_the_plain_step():
  """The real train step (AdamW, clipping, mixup, 2 accumulated micro-batches), scan + remat."""
  s0, m0 = _one_step(_config())
  s1, m1 = _one_step(_config(scan_blocks=True, remat=True))
  np.testing.assert_allclose(m1['train_loss'], m0['train_loss'], rtol=1e-5)
  np.testing.assert_allclose(m1['grad_norm'], m0['grad_norm'], rtol=1e-4)
  _close_per_leaf((s0.params, s0.batch_stats), (s1.params, s1.batch_stats), 1e-4)


def test_a_run_may_resume_with_scan_blocks_or_remat_changed():
  changes = resume_rules.config_changes(_config().to_dict(),
                                   _config(scan_blocks=True, remat=True).to_dict())
  assert set(changes) == {'model.scan_blocks', 'model.remat'}
  new = workdir.flatten(_config(scan_blocks=True, remat=True).to_dict())
  assert resume_rules.check_resume(changes, allow=False, epoch=0.5, workdir='runs/a', new=new) == []


def _checkpoints(model, x) -> int:
  """jax.checkpoint (nnx.remat) regions in the train-mode forward's jaxpr, nested ones included."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  fwd = lambda p, r: jnp.sum(nnx.merge(graphdef, p, r, copy=True)(x, train=True))
  # jax.checkpoint's primitive prints as remat2 (checkpoint in some jax versions).
  return len(re.findall(r'= (?:remat2|checkpoint)\[', str(jax.make_jaxpr(fwd)(params, rest))))


@pytest.mark.parametrize('scan', [False, True])
def test_remat_puts_every_block_under_a_checkpoint_scanned_or_not(scan):
  """model.remat must really rematerialise (its saving is GPU memory, invisible in the numbers)."""
  x = jnp.zeros((2, 32, 32, 3))
  assert _checkpoints(_model('resnet18', scan), x) == 0
  # resnet18: 8 blocks; scanned, layer1's two equal blocks are one checkpointed scan body.
  assert _checkpoints(_model('resnet18', scan, remat=True), x) == (7 if scan else 8)
