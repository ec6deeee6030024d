"""Configs shipped with the package: `default.py` holds every key and its default; the others
(smoke, simple_cnn, resnet_basic, resnet34, resnet152, resnet50_transfer, ood_best) override it. The
repository's top-level configs/*.py are links to these files (configs/default.py a module that
re-exports default's get_config); from an installed wheel, name them
`--config jax_cifar:NAME`."""

import importlib
import importlib.util


def __getattr__(name: str):
  """`jax_cifar.configs.resnet152.get_config()` without importing the module first."""
  if not name.startswith('_') and importlib.util.find_spec(f'{__name__}.{name}') is not None:
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__} has no attribute {name!r}')
