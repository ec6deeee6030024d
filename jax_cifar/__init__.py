"""jax-cifar: transfer learning on CIFAR-100 in JAX/Flax.

    import jax_cifar
    model, config = jax_cifar.load_model('runs/smoke')   # a trained run, as a Flax model
    probs = jax_cifar.predict(model, config, images)      # uint8 [N, H, W, 3] -> [N, 100]
    jax_cifar.list_models()                              # 'simple_cnn', 'resnet18', ...
    net = jax_cifar.create_model('resnext50_32x4d', 100)   # weights drawn from nnx.Rngs(0)
    jax_cifar.train_and_evaluate(config, 'runs/new')      # what `python -m jax_cifar.train` runs
    config = jax_cifar.configs.default.get_config()        # subpackages, also on first use

The names are imported on first use, so command-line tools start without loading all of JAX.
"""

from importlib import import_module as _import_module
from importlib import util as _util

_EXPORTS = {
    'load_model': 'jax_cifar.api', 'predict': 'jax_cifar.api', 'run_config': 'jax_cifar.api',
    'create_model': 'jax_cifar.api', 'list_models': 'jax_cifar.models',
    'train_and_evaluate': 'jax_cifar.training.trainer', 'Preempted': 'jax_cifar.training.trainer',
    # The base of the errors about runs, checkpoints, config values and data (a damaged
    # checkpoint, a folder that is not a run, a bad config value): what a user can fix.
    'UserError': 'jax_cifar.errors',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name == '__version__':  # On first use too: importlib.metadata costs 20 ms at start-up.
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    try:
      return metadata.version('jax-cifar')
    except metadata.PackageNotFoundError:  # A source tree that was never installed.
      return 'unknown'
  if name in _EXPORTS:
    return getattr(_import_module(_EXPORTS[name]), name)
  if not name.startswith('_') and _util.find_spec(f'{__name__}.{name}') is not None:
    return _import_module(f'{__name__}.{name}')  # jax_cifar.configs.default, ...
  raise AttributeError(f'module jax_cifar has no attribute {name!r}')


def __dir__() -> list[str]:  # dir() and tab completion list the names imported on first use.
  return sorted({n for n in globals() if not n.startswith('_') or n.startswith('__')}
                | set(_EXPORTS) | {'__version__'})
