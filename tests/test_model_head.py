"""timm's classifier interface on jax-cifar's models: num_classes, get_classifier,
reset_classifier, and model(x) == forward_head(forward_features(x))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_cifar

_ARCHS = [('resnet18', dict(stem='cifar', width=4)), ('resnet50', dict(stem='imagenet', width=8)),
          ('simple_cnn', dict(width=4))]


@pytest.mark.parametrize('name, kwargs', _ARCHS)
def test_the_head_is_replaced_or_removed_and_the_backbone_kept(name, kwargs):
  """A timm user's `model.reset_classifier(10)` had been an AttributeError, and
  `model.fc = nnx.Linear(...)` on a headless model nnx's 'static attribute' error (a
  library-user review)."""
  model = jax_cifar.create_model(name, 100, rngs=nnx.Rngs(0), **kwargs)
  model.eval()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 32, 32, 3)), jnp.float32)
  features = model.forward_features(x)
  assert features.ndim == 4 and len(features) == 3
  np.testing.assert_array_equal(model.forward_head(features), model(x))
  pooled = model.forward_head(features, pre_logits=True)
  assert pooled.shape == (3, model.num_features)
  assert model.num_classes == 100 and model.get_classifier() is model.fc
  backbone = nnx.state(model, nnx.Param)
  model.reset_classifier(10, rngs=nnx.Rngs(1))
  assert model.num_classes == 10 and model(x).shape == (3, 10)
  kept = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert sum(p.size for p in kept) == (sum(p.size for p in jax.tree.leaves(backbone))
                                       - 100 * (model.num_features + 1) + 10 * (model.num_features + 1))
  np.testing.assert_array_equal(model.forward_head(features, pre_logits=True), pooled)
  model.reset_classifier(0)
  assert model.num_classes == 0 and model.get_classifier() is None
  np.testing.assert_array_equal(model(x), pooled)  # Headless: the pooled features.
  model.reset_classifier(7)  # A head again, on a model that had none.
  assert model(x).shape == (3, 7)
  model.reset_classifier(np.int64(5))  # As create_model takes numpy's ints (it had refused them).
  assert model.num_classes == 5 and type(model.fc.out_features) is int and model(x).shape == (3, 5)
  for bad in (-1, 2.5, True, '10', np.int64(-1)):
    with pytest.raises(jax_cifar.UserError, match='num_classes is an int >= 0'):
      model.reset_classifier(bad)


def test_a_reset_head_trains_like_a_new_one():
  """The new head is initialised like torch.nn.Linear (as create_model's), and its gradient
  flows: a training step through nnx's split/merge sees it."""
  model = jax_cifar.create_model('resnet18', 0, stem='cifar', width=4, rngs=nnx.Rngs(0))
  model.reset_classifier(5, rngs=nnx.Rngs(3))
  bound = 1 / np.sqrt(model.num_features)
  assert float(jnp.abs(model.fc.kernel[...]).max()) <= bound
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jnp.ones((2, 32, 32, 3), jnp.float32)

  def loss(params):
    return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x, train=True) ** 2)

  grads = jax.grad(loss)(params)
  assert float(jnp.abs(grads['fc']['kernel'][...]).sum()) > 0
