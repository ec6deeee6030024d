"""Held-out CIFAR-C-style corrupted sets (`python -m jax_cifar.corrupt`): the corruptions
(ops.py), the resumable writer (store.py) and the command line (corrupt.py). Nothing in augment/
imports it, and it imports nothing of augment/."""
