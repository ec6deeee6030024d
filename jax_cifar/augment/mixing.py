"""Mixup and CutMix on device, with label smoothing folded into the soft targets.

Both pair each image with its mirror in the batch (`x[::-1]`, as timm does): a fixed pairing keeps
the result independent of how the batch is sharded over devices, and costs no extra randomness.
"""

import jax
import jax.numpy as jnp
import optax


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """One-hot targets with `smoothing` mass spread uniformly over all classes (torch's convention)."""
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), smoothing)


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """A random box of area ~(1 - lam), clipped to the image; returns (mask [H,W], adjusted lam).

  The box is clipped at the border, so lam is recomputed from the area actually pasted.
  """
  cut_ratio = jnp.sqrt(1.0 - lam)
  cut_h = (height * cut_ratio).astype(jnp.int32)
  cut_w = (width * cut_ratio).astype(jnp.int32)
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  mask = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  area = (y1 - y0) * (x1 - x0)
  return mask, 1.0 - area / (height * width)


def mix_batch(key: jax.Array, images: jax.Array, targets: jax.Array, *, mixup_alpha: float,
              cutmix_alpha: float, switch_prob: float = 0.5) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Applies mixup or CutMix (one per batch) to float images [B,H,W,C] and soft targets [B,K].

  Returns (images, targets, lam). With both alphas 0 the inputs come back unchanged (lam = 1).
  Integer labels are refused (timm's Mixup takes them; here they had been mixed as numbers, 3 and
  42 into 12.9), and so are uint8 images (mixed, then truncated back to uint8): an audit.
  """
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f'mix_batch takes float images [B, H, W, C] (augment.pipeline.to_model_input '
                    f'gives them), got {images.dtype} {list(images.shape)}')
  if (targets.ndim != 2 or targets.shape[0] != images.shape[0]
      or not jnp.issubdtype(targets.dtype, jnp.floating)):
    raise TypeError(f'mix_batch takes soft targets [B, K] for the {images.shape[0]} images '
                    '(mixing.smooth_one_hot(labels, K, smoothing) of integer labels), got '
                    f'{targets.dtype} {list(targets.shape)}')
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets, jnp.ones((), jnp.float32)
  k_mix, k_cut, k_box, k_switch = jax.random.split(key, 4)
  partner_images, partner_targets = images[::-1], targets[::-1]

  def mixup():
    lam = jax.random.beta(k_mix, mixup_alpha, mixup_alpha)
    mixed = lam * images + (1.0 - lam) * partner_images
    return mixed.astype(images.dtype), lam

  def cutmix():
    lam = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha)
    mask, lam = cutmix_box(k_box, lam, images.shape[1], images.shape[2])
    return jnp.where(mask[None, :, :, None], partner_images, images), lam

  if cutmix_alpha <= 0:
    mixed, lam = mixup()
  elif mixup_alpha <= 0:
    mixed, lam = cutmix()
  else:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
    mixed, lam = jax.lax.cond(use_cutmix, cutmix, mixup)
  lam = lam.astype(jnp.float32)
  return mixed, lam * targets + (1.0 - lam) * partner_targets, lam
