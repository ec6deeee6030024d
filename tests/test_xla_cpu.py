"""What XLA:CPU makes of the float32 train step under the trainer's CPU options (xla_options.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_cifar import xla_options
from jax_cifar.models import resnet

pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU compilation')


def _largest_fusion_operands(layers) -> int:
  """Operand count of the largest fusion in the compiled fwd+bwd of a width-8 Bottleneck ResNet."""
  model = resnet.ResNet(resnet.Bottleneck, layers, 10, stem='cifar', width=8, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest, x):
    return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x, train=True) ** 2)

  x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 3), np.float32))
  hlo = jax.jit(jax.grad(loss)).lower(params, rest, x).compile(
      xla_options.step_compiler_options('float32')).as_text()
  calls = [line.split(' fusion(', 1)[1].split('), kind=')[0]
           for line in hlo.splitlines() if re.match(r'\s*%\S+ = .* fusion\(', line)]
  return max(call.count('%') for call in calls)


def test_bfloat16_steps_get_only_the_option_that_leaves_the_simplifier_on():
  """tests/test_bf16.py needs the algebraic simplifier for bf16 accuracy; YNNPACK's fusions are
  switched off for every dtype."""
  if xla_options.xla_defaults():  # (Not the function under test: a test audit.)
    pytest.skip('JAX_CIFAR_XLA_DEFAULTS is set: the trainer options are off')
  assert xla_options.step_compiler_options('bfloat16') == {
      'xla_cpu_experimental_ynn_fusion_type': ''}
  assert 'xla_disable_hlo_passes' in xla_options.step_compiler_options('float32')


def test_xla_defaults_keep_ynnpack_fusions_off_for_bfloat16_only(monkeypatch):
  """JAX_CIFAR_XLA_DEFAULTS=1 gives float32 programs XLA's own options; a bfloat16 program keeps
  YNNPACK's fusions off (they computed NaN logits in jax 0.12.0.1: tests/test_bf16.py)."""
  monkeypatch.setenv('JAX_CIFAR_XLA_DEFAULTS', '1')
  off = {'xla_cpu_experimental_ynn_fusion_type': ''}
  assert xla_options.step_compiler_options('float32') is None
  assert xla_options.precise_compiler_options('float32') is None
  assert xla_options.step_compiler_options('bfloat16') == off
  assert xla_options.precise_compiler_options('bfloat16') == off
  monkeypatch.delenv('JAX_CIFAR_XLA_DEFAULTS')
  assert xla_options.precise_compiler_options('bfloat16') == {**off, 'xla_cpu_max_isa': 'AVX2'}


def test_xla_defaults_0_keeps_the_trainer_options_and_a_typo_is_named(monkeypatch):
  """Any value had turned the options off, JAX_CIFAR_XLA_DEFAULTS=0 included (a review)."""
  from jax_cifar import errors  # pylint: disable=g-import-not-at-top
  for value, defaults in (('0', False), ('off', False), ('', False), ('1', True), ('True', True)):
    monkeypatch.setenv('JAX_CIFAR_XLA_DEFAULTS', value)
    assert xla_options.xla_defaults() is defaults, value
  monkeypatch.setenv('JAX_CIFAR_XLA_DEFAULTS', '0')
  assert xla_options.step_compiler_options('float32') == xla_options.CPU_COMPILER_OPTIONS
  monkeypatch.setenv('JAX_CIFAR_XLA_DEFAULTS', 'maybe')
  for dtype in ('float32', 'bfloat16'):
    with pytest.raises(errors.ConfigError, match="JAX_CIFAR_XLA_DEFAULTS='maybe': give 1"):
      xla_options.step_compiler_options(dtype)


def test_a_mistyped_xla_defaults_is_named_before_a_run_writes_anything(monkeypatch, tmp_path):
  """It had been found at the first compile, after the launch was recorded (the diff review)."""
  from jax_cifar import errors  # pylint: disable=g-import-not-at-top
  from jax_cifar.configs import default  # pylint: disable=g-import-not-at-top
  from jax_cifar.training import trainer  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('JAX_CIFAR_XLA_DEFAULTS', 'maybe')
  config = default.get_config()
  config.data.source, config.model.name = 'synthetic', 'simple_cnn'
  with pytest.raises(errors.ConfigError, match='JAX_CIFAR_XLA_DEFAULTS'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_a_bfloat16_run_on_cpu_is_told_that_bfloat16_is_for_gpus():
  from jax_cifar.training import trainer  # pylint: disable=g-import-not-at-top
  assert 'bfloat16 is for GPUs and TPUs' in trainer.dtype_note('bfloat16', 'cpu')
  assert trainer.dtype_note('float32', 'cpu') is None
  assert trainer.dtype_note('bfloat16', 'gpu') is None


def test_fusions_do_not_grow_with_depth():
  """XLA:CPU fuses each block's relu(bn3 + residual) into its consumers and, through them, the
  previous block's, recomputing the whole residual stream in every block (quadratic in depth)
  unless resnet.materialize stops it. A stage of 12 blocks must fuse no more than one of 3."""
  if xla_options.xla_defaults():  # (Not the function under test: a test audit.)
    pytest.skip('JAX_CIFAR_XLA_DEFAULTS is set: the trainer options are off')
  shallow = _largest_fusion_operands((1, 1, 3, 1))
  deep = _largest_fusion_operands((1, 1, 12, 1))
  assert deep <= shallow + 4, (shallow, deep)
