"""jax_cifar/models/cpu_conv.py: the CPU forms of small-output and strided 1x1 convolutions give
lax.conv_general_dilated's values and gradients (float32 and bfloat16), and are taken exactly where
they are meant to be."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jax_cifar.models import cpu_conv

DN = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ('NHWC', 'HWIO', 'NHWC'))


def _pair(size, k, stride, pad, dtype=jnp.float32, width=None):
  rng = np.random.default_rng(size * 100 + k * 10 + stride)
  x = jnp.asarray(rng.standard_normal((4, size, width or size, 8)), dtype)
  w = jnp.asarray(rng.standard_normal((k, k, 8, 5)), dtype)
  args = ((stride, stride), ((pad, pad), (pad, pad)))
  ref = lambda x, w: lax.conv_general_dilated(x, w, *args, dimension_numbers=DN,
                                              precision='highest')
  ours = lambda x, w: cpu_conv.conv_general_dilated(x, w, *args, dimension_numbers=DN,
                                                    precision='highest')
  return x, w, ref, ours


@pytest.mark.parametrize('size,k,stride,pad', [(2, 3, 1, 1), (1, 3, 1, 1), (2, 3, 2, 1),
                                               (4, 3, 2, 1), (4, 1, 2, 0), (8, 1, 2, 0),
                                               (8, 3, 1, 1), (16, 7, 2, 3)])
def test_values_and_gradients_equal_lax(size, k, stride, pad):
  x, w, ref, ours = _pair(size, k, stride, pad)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for got, want in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_bfloat16_and_non_square_inputs_equal_lax():
  """A bf16 2x4 input (output 2x4: patches) and a bf16 strided 1x1 into 1x2: lax's values to
  bf16 rounding, in bf16."""
  for k, stride, pad in ((3, 1, 1), (1, 2, 0)):
    x, w, ref, ours = _pair(2, k, stride, pad, jnp.bfloat16, width=4)
    got, want = ours(x, w), ref(x, w)
    assert got.dtype == want.dtype == jnp.bfloat16 and got.shape == want.shape
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=2e-2, atol=0.1)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU forms are taken on CPU only')
def test_grouped_convolutions_are_left_to_lax():
  x = jnp.ones((2, 2, 2, 8))
  w = jnp.ones((3, 3, 4, 8))
  text = jax.jit(lambda x, w: cpu_conv.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN, feature_group_count=2)).lower(
          x, w).as_text()
  assert text.count('stablehlo.convolution') == 1 and 'dot_general' not in text


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU forms are taken on CPU only')
@pytest.mark.parametrize('size,k,stride,pad,form', [
    (2, 3, 1, 1, 'dot'),         # 2x2 output < 3x3 kernel: patches times the kernel.
    (4, 3, 2, 1, 'dot'),         # 4x4 -> 2x2 with stride 2: the same.
    (4, 1, 2, 0, 'slice'),       # Strided 1x1 into a 2x2 output: slice, then the 1x1 conv.
    (8, 1, 2, 0, 'conv'),        # Strided 1x1 into a 4x4 output: left to lax.
    (2, 1, 1, 0, 'conv'),        # 1x1 without a stride: left to lax at any size.
    (8, 3, 1, 1, 'conv'),        # Output as large as the kernel: left to lax.
    (16, 7, 2, 3, 'conv')])
def test_each_form_is_taken_where_it_is_meant_to_be(size, k, stride, pad, form):
  x, w, _, ours = _pair(size, k, stride, pad)
  text = jax.jit(ours).lower(x, w).as_text()
  convs = text.count('stablehlo.convolution')
  assert (convs, 'dot_general' in text) == {'dot': (0, True), 'slice': (1, False),
                                            'conv': (1, False)}[form]
  if form == 'slice':  # Every second row and column, then a convolution without a stride.
    assert 'stablehlo.slice %arg0 [0:4, 0:4:2, 0:4:2, 0:8]' in text and 'stride = [1, 1]' in text
