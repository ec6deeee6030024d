"""What the augmentation entry points take: uint8 RGB images, channels last, one image [H, W, 3]
or a batch [B, H, W, 3]. Checked where a caller comes in (shapes and dtypes are static under jit):
a batch given to a one-image op had failed deep inside it with "too many values to unpack", and
float images with a lax.select dtype error (an audit)."""

import jax
import jax.numpy as jnp


def check_uint8(images: jax.Array, who: str, *, batch: bool) -> None:
  """Raises TypeError/ValueError naming `who` unless `images` is uint8 [B,H,W,3] (`batch`) or
  [H,W,3]."""
  want = '[B, H, W, 3]' if batch else ('[H, W, 3] (one image: jax.vmap it over a batch, or use '
                                       'augment.pipeline.augment_batch)')
  if images.dtype != jnp.uint8:
    raise TypeError(f'{who} takes uint8 images {want} (0-255, as CIFAR-100 stores them), got '
                    f'{images.dtype}')
  if images.ndim != (4 if batch else 3) or images.shape[-1] != 3:
    raise ValueError(f'{who} takes uint8 images {want}, got shape {list(images.shape)}')
