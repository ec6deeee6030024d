"""Configs shipped with the package: `default.py` holds every key and its default; the others
(smoke, simple_cnn, resnet_basic, resnet34, resnet152, resnet50_transfer) override it. The
repository's top-level configs/*.py are links to these files; from an installed wheel, name them
`--config jax_cifar:NAME`."""
