"""timm's classifier interface, shared by jax-cifar's models: `num_classes`, `get_classifier()`,
`reset_classifier(n)` (a new torch-initialised head, or none), and the two halves that `model(x)`
chains, `forward_features(x)` (the last feature map) and `forward_head(features)`."""

from __future__ import annotations

from flax import nnx
import numpy as np

from jax_cifar import errors
from jax_cifar.models.torch_init import torch_linear


class ClassifierHead:
  """For a model with `fc` (an nnx.Linear, or None without a head), `num_features` (what the head
  sees) and `dtype`."""

  @property
  def num_classes(self) -> int:
    """The head's classes; 0 without a head (the model then gives its pooled features)."""
    return 0 if self.fc is None else int(self.fc.out_features)

  def get_classifier(self) -> nnx.Linear | None:
    return self.fc

  def reset_classifier(self, num_classes: int, *, rngs: nnx.Rngs | None = None) -> None:
    """A new head of `num_classes` (initialised as torch.nn.Linear, from `rngs`, default
    nnx.Rngs(0)); 0 removes it, so the model gives its pooled features. The backbone is kept."""
    if (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
        or num_classes < 0):  # (numpy's ints too, as create_model takes them.)
      raise errors.ConfigError(f'reset_classifier: num_classes is an int >= 0 (0: no head), got '
                               f'{num_classes!r}')
    num_classes = int(num_classes)
    head = (torch_linear(self.num_features, num_classes, dtype=self.dtype,
                         rngs=nnx.Rngs(0) if rngs is None else rngs) if num_classes else None)
    self.fc = nnx.data(head)  # (A headless model's fc is static: nnx wants a new head marked.)
