"""Error-free float32 arithmetic for the torchvision-exact image kernels (autoaugment, augmix,
photometric).

torch rounds `a * b + c` on CPU either twice (a product, then a sum) or once (its fused
`add_(b, alpha=a)`), while XLA/LLVM contract products into the sums that use them as they see
fit (through optimisation barriers too). Writing each product as exact partial products, and
sums in twice the working precision where torch fuses, pins every rounding to torch's.
"""

import jax
import jax.numpy as jnp


def split(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """a == hi + lo exactly, each with at most 12 significant bits (so their products are exact)."""
  hi = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(a, jnp.uint32) & jnp.uint32(0xFFFFF000), jnp.float32)
  return hi, a - hi


def mul(x: jax.Array, b: jax.Array) -> jax.Array:
  """float32 x * b, rounded once, for x with at most 12 significant bits (integers < 4096).

  Written as a sum of two exact products, so it rounds the same whether or not the compiler
  contracts it, or the ops it feeds, into FMAs (LLVM does on CPU and GPU).
  """
  bh, bl = split(b)
  return x * bh + x * bl


def two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Knuth: a + b == s + e exactly."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def fma(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
  """float32 a * b + c rounded once, like torch's fused `add_(b, alpha=a)` on CPU.

  The product is split into four exact partial products, summed with c in twice the working
  precision (Ogita-Rump-Oishi Sum2) and rounded at the end.
  """
  ah, al = split(a)
  bh, bl = split(b)
  s, err = c, 0.0
  for t in (ah * bh, ah * bl, al * bh, al * bl):
    s, e = two_sum(s, t)
    err = err + e
  return s + err


def fma_small(k: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
  """`fma` for k with at most 12 significant bits (pixel values, their differences): only b is
  split, so three terms are summed instead of five (about half the work)."""
  bh, bl = split(b)
  s, e1 = two_sum(c, k * bh)
  s, e2 = two_sum(s, k * bl)
  return s + (e1 + e2)


def div(a: jax.Array, b: jax.Array) -> jax.Array:
  """Correctly rounded float32 a / b (b > 0).

  XLA rewrites `x / broadcast(y)` into `x * (1 / y)`, which can be an ulp off; pick the neighbour
  of that quotient with the smallest residual a - q * b (accumulated from exact products).
  """
  q0 = a / b
  bh, bl = split(b)

  def residual(q):
    qh, ql = split(q)
    return jnp.abs((((a - qh * bh) - qh * bl) - ql * bh) - ql * bl)

  best, best_r = q0, residual(q0)
  for q in (jnp.nextafter(q0, -jnp.inf), jnp.nextafter(q0, jnp.inf)):
    r = residual(q)
    best, best_r = jnp.where(r < best_r, q, best), jnp.minimum(r, best_r)
  return best


def to_uint8(x: jax.Array) -> jax.Array:
  """torch's `.clamp_(0, 255).to(torch.uint8)`: clamp, then truncate."""
  return jnp.clip(x, 0.0, 255.0).astype(jnp.uint8)
