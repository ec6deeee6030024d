"""Convolutions in the forms XLA:CPU runs fast, the same numbers as lax.conv_general_dilated.

With the algebraic simplifier on (XLA's default, and always for bfloat16 steps), XLA:CPU rewrites
the gradients of convolutions whose output is smaller than their kernel (an ImageNet-stem ResNet at
32 px: 3x3 convolutions at 2x2 and 1x1) into convolutions with swapped operands that take 40-280
ms each where the plain ones take about 1 ms (docs/benchmarks.md). On the CPU, this module writes
  - such a convolution as patches (im2col) times the reshaped kernel, a dot;
  - a 1x1 convolution with a stride and no padding whose output is smaller than 3x3 (the
    downsampling into those stages) as a strided slice, then the 1x1 convolution.
Both are the same sums as the convolution (float rounding aside); the parameters keep their
(kh, kw, cin, cout) layout. Other backends and every other convolution call lax directly, grouped
ones (ResNeXt) included: those keep the slow form at such sizes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

SMALL = 3  # Outputs smaller than this (or than the kernel) on a side take the forms below.


def _plain(lhs_dilation, rhs_dilation, feature_group_count, dimension_numbers, kwargs) -> bool:
  ones = lambda d: d is None or all(v == 1 for v in d)
  if kwargs.get('batch_group_count', 1) != 1:
    return False
  nhwc = dimension_numbers is None or (
      tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
      and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
      and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))
  return ones(lhs_dilation) and ones(rhs_dilation) and feature_group_count == 1 and nhwc


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, **kwargs):
  """lax.conv_general_dilated for NHWC inputs and HWIO kernels, in a CPU-friendly form."""
  call = lambda x, s, p: lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      x, rhs, s, p, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, **kwargs)
  if (jax.default_backend() != 'cpu' or isinstance(padding, str) or lhs.ndim != 4
      or not _plain(lhs_dilation, rhs_dilation, feature_group_count, dimension_numbers, kwargs)):
    return call(lhs, window_strides, padding)
  (kh, kw), (sh, sw) = rhs.shape[:2], window_strides
  (p0, p1), (q0, q1) = padding
  ho = (lhs.shape[1] + p0 + p1 - kh) // sh + 1
  wo = (lhs.shape[2] + q0 + q1 - kw) // sw + 1
  if min(ho, wo) >= max(kh, kw, SMALL):
    return call(lhs, window_strides, padding)
  if (kh, kw) == (1, 1) and (sh, sw) != (1, 1) and (p0, p1, q0, q1) == (0, 0, 0, 0):
    # lax.slice, not lhs[:, ::sh, ::sw]: jax 0.8 lowers that indexing to a gather.
    return call(lax.slice(lhs, (0, 0, 0, 0), lhs.shape, (1, sh, sw, 1)), (1, 1), padding)
  if (kh, kw) == (1, 1):
    return call(lhs, window_strides, padding)
  x = jnp.pad(lhs, ((0, 0), (p0, p1), (q0, q1), (0, 0)))
  patches = jnp.concatenate(
      [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=-1)  # (i, j, c): the HWIO kernel's order.
  kernel = rhs.reshape(kh * kw * rhs.shape[2], rhs.shape[3])
  extra = {'out_sharding': kwargs['out_sharding']} if kwargs.get('out_sharding') else {}
  return lax.dot_general(patches, kernel, (((3,), (0,)), ((), ())),
                         precision=kwargs.get('precision'),
                         preferred_element_type=kwargs.get('preferred_element_type'), **extra)
