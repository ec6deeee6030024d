"""Every key and its default live in the package: `jax_cifar/configs/default.py`.

This alias keeps `from configs import default` working for config files written before the move.
"""

from jax_cifar.configs.default import get_config  # noqa: F401
