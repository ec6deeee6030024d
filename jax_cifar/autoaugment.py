"""AutoAugment (CIFAR10 policy), RandAugment and TrivialAugmentWide on uint8 images, as torchvision."""

import jax


def apply_policy(key: jax.Array, image: jax.Array, policy: str, *, num_ops: int = 2,
                 magnitude: int = 9) -> jax.Array:
  """Applies the named policy to one uint8 HWC image."""
  raise NotImplementedError(f'policy {policy!r} is not implemented yet')
