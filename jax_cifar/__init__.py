"""jax-cifar: transfer learning on CIFAR-100 in JAX/Flax."""
