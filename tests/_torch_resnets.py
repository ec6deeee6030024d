"""torchvision ResNets and their converted weights, shared by the conversion tests."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import require_module
from jax_cifar.models import create_model

torch = require_module('torch')
torchvision = require_module('torchvision')


def random_torch_resnet(arch: str, seed: int = 0, **kwargs):
  """torchvision model (`kwargs`: its constructor's, e.g. num_classes) with random weights and
  randomised BN affine params and running stats."""
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(**kwargs)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.0)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return model


def flax_model(arch: str, pure: dict, num_classes: int = 1000, **kw) -> nnx.Module:
  """A model holding `pure` exactly (no random init, so no init cost)."""
  abstract = nnx.eval_shape(lambda: create_model(arch, num_classes, rngs=nnx.Rngs(0), **kw))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  return nnx.merge(graphdef, state)


def nchw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def rel_diff(ours, ref) -> tuple[float, float]:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  err = float(np.abs(ours - ref).max())
  return err, err / max(float(np.abs(ref).max()), 1e-12)


def small_state_dict():
  torch.manual_seed(0)
  return {k: v.clone() for k, v in torchvision.models.resnet18().state_dict().items()}
