"""AugMix on uint8 HWC images, as torchvision 0.29's `transforms.v2.AugMix`, and the JSD loss.

AugMix (Hendrycks et al., ICLR 2020) mixes `width` chains of 1-3 (or `depth`) random ops with
the image: out = m0 * x + m1 * sum_i w_i * chain_i(x), m ~ Dirichlet(alpha, alpha) (a Beta),
w ~ Dirichlet(alpha * ones(width)). As v2.AugMix with its defaults (all_ops, bilinear, fill 0):
13 ops in v2's order, magnitude bins 0..severity-1 of 10, Solarize threshold 255 * linspace(1, 0),
the float32 mix truncated to uint8. Given the same draws the pixels are torchvision's bit for bit
(tests/test_augmix.py), because the ops are autoaugment.py's exact kernels.

The only difference is where the draws come from: one uniform vector per image (op, bin, sign for
every slot of every chain, and each chain's depth) plus `jax.random.dirichlet`, not torch's
generator; Dirichlet samples are float32 like torch's `_sample_dirichlet`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_cifar.augment import autoaugment as aa
from jax_cifar.augment import exact, inputs

PARTIAL_OPS = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Posterize', 'Solarize',
               'AutoContrast', 'Equalize')
ALL_OPS = PARTIAL_OPS + ('Brightness', 'Color', 'Contrast', 'Sharpness')
NUM_BINS = 10  # torchvision's _PARAMETER_MAX: severity picks among the first `severity` bins.
RANDOM_DEPTH = (1, 3)  # depth <= 0: each chain draws its depth uniformly from this range.


def augmentation_space(image_size: tuple[int, int], all_ops: bool = True
                       ) -> dict[str, tuple[np.ndarray | None, bool]]:
  """op -> (float32 magnitudes of the 10 bins or None, signed), as v2.AugMix's space."""
  h, w = image_size
  lin = lambda end: aa.torch_linspace(0.0, end, NUM_BINS)
  # v2 computes Posterize as round(4 - i / 2.25) and Solarize's threshold as 255 * m in double,
  # compared in float32 with the uint8 pixels.
  posterize = np.round(4 - np.arange(NUM_BINS, dtype=np.float32) / np.float32(2.25))
  solarize = (255.0 * aa.torch_linspace(1.0, 0.0, NUM_BINS).astype(np.float64)).astype(np.float32)
  space = {
      'ShearX': (lin(0.3), True), 'ShearY': (lin(0.3), True),
      'TranslateX': (lin(w / 3.0), True), 'TranslateY': (lin(h / 3.0), True),
      'Rotate': (lin(30.0), True), 'Posterize': (posterize, False), 'Solarize': (solarize, False),
      'AutoContrast': (None, False), 'Equalize': (None, False),
      'Brightness': (lin(0.9), True), 'Color': (lin(0.9), True), 'Contrast': (lin(0.9), True),
      'Sharpness': (lin(0.9), True),
  }
  return {n: space[n] for n in (ALL_OPS if all_ops else PARTIAL_OPS)}


def _max_depth(depth: int) -> int:
  return depth if depth > 0 else RANDOM_DEPTH[1]


def num_draws(width: int, depth: int) -> int:
  """Uniform draws per image: a depth per chain, then (op, bin, sign) per slot of each chain."""
  return width * (1 + 3 * _max_depth(depth))


def _check(severity: int, width: int, depth: int, alpha: float) -> None:
  if not 1 <= severity <= NUM_BINS:
    raise ValueError(f'AugMix severity must be in [1, {NUM_BINS}], got {severity}')
  if width < 1 or depth == 0 or alpha <= 0:
    raise ValueError(f'AugMix needs width >= 1, depth != 0 and alpha > 0, got width={width}, '
                     f'depth={depth}, alpha={alpha}')


def choices(u: jax.Array, *, severity: int, width: int, depth: int, all_ops: bool = True
            ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The draws as torchvision's choices: depth [W], op index into the space [W, D], bin, negate.

  Slots at or beyond a chain's depth are not applied.
  """
  d = _max_depth(depth)
  num_ops = len(ALL_OPS if all_ops else PARTIAL_OPS)
  u_depth, u_slots = u[:width], u[width:].reshape(width, d, 3)
  if depth > 0:
    depths = jnp.full((width,), depth, jnp.int32)
  else:
    depths = RANDOM_DEPTH[0] + aa.randint(u_depth, RANDOM_DEPTH[1] - RANDOM_DEPTH[0] + 1)
  ops = aa.randint(u_slots[..., 0], num_ops)
  bins = aa.randint(u_slots[..., 1], severity)
  return depths, ops, bins, u_slots[..., 2] < 0.5


def mixing_weights(key: jax.Array, width: int, alpha: float) -> tuple[jax.Array, jax.Array]:
  """(m [2], w [width]): m ~ Dirichlet(alpha, alpha) weighs image vs chains, w the chains."""
  k_m, k_w = jax.random.split(key)
  m = jax.random.dirichlet(k_m, jnp.full((2,), alpha, jnp.float32))
  w = jax.random.dirichlet(k_w, jnp.full((width,), alpha, jnp.float32))
  return m.astype(jnp.float32), w.astype(jnp.float32)


def augmix_draws(u: jax.Array, m: jax.Array, w: jax.Array, image: jax.Array, *, severity: int = 3,
                 width: int = 3, depth: int = -1, all_ops: bool = True) -> jax.Array:
  """AugMix of one uint8 HWC image from `num_draws` uniforms `u` and the Dirichlet samples m, w."""
  _check(severity, width, depth, 1.0)
  space = augmentation_space(image.shape[:2], all_ops)
  names = list(space)
  mags = np.zeros((len(names), NUM_BINS), np.float32)
  for i, (bins, _) in enumerate(space.values()):
    if bins is not None:
      mags[i] = bins
  signed = np.array([s for _, s in space.values()])
  global_ops = jnp.asarray([aa.OP_NAMES.index(n) for n in names], jnp.int32)

  depths, ops, bins, negate = choices(u, severity=severity, width=width, depth=depth,
                                      all_ops=all_ops)
  magnitude = jnp.asarray(mags)[ops, bins]
  magnitude = jnp.where(jnp.asarray(signed)[ops] & negate, -magnitude, magnitude)
  active = jnp.arange(ops.shape[1])[None, :] < depths[:, None]
  chain_ops = jnp.where(active, global_ops[ops], aa.OP_NAMES.index('Identity'))
  chains = jax.vmap(lambda o, mg: aa.apply_ops(image, o, mg, bilinear=True))(chain_ops, magnitude)

  return mix_chains(image, chains, m, w)


def mix_chains(image: jax.Array, chains: jax.Array, m: jax.Array, w: jax.Array) -> jax.Array:
  """torch's AugMix mix of uint8 `image` and its [width] uint8 `chains`: mix = m0 * x, then
  mix += (w_i * m1) * chain_i, each product rounded once; truncated to uint8."""
  weights = w * m[1]
  mix = exact.mul(image.astype(jnp.float32), m[0])
  for i in range(chains.shape[0]):
    mix = mix + exact.mul(chains[i].astype(jnp.float32), weights[i])
  return exact.to_uint8(mix)


def augmix(key: jax.Array, image: jax.Array, *, severity: int = 3, width: int = 3, depth: int = -1,
           alpha: float = 1.0, all_ops: bool = True) -> jax.Array:
  """torchvision v2.AugMix(severity, width, depth, alpha, all_ops) of one uint8 HWC image."""
  _check(severity, width, depth, alpha)
  inputs.check_uint8(image, 'augmix', batch=False)
  k_u, k_mix = jax.random.split(key)
  u = jax.random.uniform(k_u, (num_draws(width, depth),))
  m, w = mixing_weights(k_mix, width, alpha)
  return augmix_draws(u, m, w, image, severity=severity, width=width, depth=depth, all_ops=all_ops)


def augmix_from_config(key: jax.Array, image: jax.Array, cfg: Any) -> jax.Array:
  """AugMix with the `augment.augmix_*` keys of a config section."""
  return augmix(key, image, severity=int(cfg.get('augmix_severity', 3)),
                width=int(cfg.get('augmix_width', 3)), depth=int(cfg.get('augmix_depth', -1)),
                alpha=float(cfg.get('augmix_alpha', 1.0)))


def jsd_loss(logits_clean: jax.Array, logits_1: jax.Array, logits_2: jax.Array) -> jax.Array:
  """Jensen-Shannon consistency of three views' [B, K] logits, mean over examples (float32).

  As the AugMix reference code: M = clamp(mean of the softmaxes, 1e-7, 1), then
  (KL(p_clean || M) + KL(p_1 || M) + KL(p_2 || M)) / 3 (F.kl_div(log M, p, 'batchmean')).
  log p comes from log_softmax, so the gradient stays finite where a probability underflows.
  """
  logs = [jax.nn.log_softmax(l.astype(jnp.float32), axis=-1)
          for l in (logits_clean, logits_1, logits_2)]
  log_m = jnp.log(jnp.clip(sum(jnp.exp(l) for l in logs) / 3.0, 1e-7, 1.0))
  kl = sum(optax.losses.kl_divergence_with_log_targets(log_m, l) for l in logs)  # KL(p || M)
  return jnp.mean(kl) / 3.0
