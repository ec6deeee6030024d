"""Held-out CIFAR-C-style corrupted sets (`python -m jax_cifar.corrupt`): the corruptions
(corrupt.py) and their image helpers (ops.py), the resumable writer (store.py) and the command
line (cli.py). Nothing in augment/
imports it, and it imports nothing of augment/."""
