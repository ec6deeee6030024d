"""XLA compiler settings of jax-cifar's compiled programs: the persistent compilation cache, and
the CPU-only options of the train/eval steps (JAX_CIFAR_XLA_DEFAULTS=1 gives XLA's own), measured
in docs/benchmarks.md."""

import os

import jax

from jax_cifar import errors, parallel, tracking, workdir


def enable_compilation_cache() -> None:
  """Reuses compiled steps across runs (resumes, evaluation) unless JAX_COMPILATION_CACHE_DIR is set.

  A local cache folder that cannot be made or written (a file of that name, a read-only home) is
  said once and the cache is off: JAX had warned at every compile, a screenful per launch."""
  cache = jax.config.jax_compilation_cache_dir or os.path.join(
      os.path.expanduser('~'), '.cache', 'jax_cifar', 'xla')
  if '://' not in cache:  # (gs:// and other remote caches are JAX's to check.)
    try:
      os.makedirs(cache, exist_ok=True)
      why = workdir.why_unwritable(cache)  # (A real probe: os.access answers yes to root.)
    except OSError as e:
      why = 'a file, not a folder' if os.path.isfile(cache) else e.strerror or str(e)
    if why:
      tracking.say(f'warning: the compilation cache {cache} cannot be used ({why}); every '
                   'launch compiles again. Set JAX_COMPILATION_CACHE_DIR to a writable folder.')
      jax.config.update('jax_enable_compilation_cache', False)
      return
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


# XLA:CPU's YNNPACK fusions compute garbage for bfloat16 ResNets in jax 0.12.0.1 (an eval-mode
# forward gave NaN or 1e36 logits, other rows on each compile; jax 0.10.2 is right): off for
# non-float32 programs on the CPU whatever JAX_CIFAR_XLA_DEFAULTS says (docs/benchmarks.md).
BF16_CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


# XLA:CPU options for the compiled steps (docs/benchmarks.md): 3.9x on ImageNet-stem ResNets at
# 32 px, +21% on the smoke model, results equal to rounding. Passed per compiled step and only on
# CPU: through XLA_FLAGS they would switch off the algebraic simplifier on GPU/TPU too.
CPU_COMPILER_OPTIONS = {'xla_disable_hlo_passes': 'algsimp', **BF16_CPU_OPTIONS}


def step_compiler_options(dtype: str = 'float32') -> dict | None:
  """CPU-only XLA options for the train/eval steps; JAX_CIFAR_XLA_DEFAULTS=1 turns them off,
  apart from BF16_CPU_OPTIONS, which a bfloat16 program needs to compute the right numbers.

  bfloat16 gets only the YNNPACK one (ResNet-50 at 224 px: 2.7 -> 3.3-4.1 img/s): without the
  algebraic simplifier, bf16 training on CPU learnt measurably worse (tests/test_bf16.py: 0.69 vs
  0.82 accuracy, float32 0.87/0.85), so the simplifier stays on for it.
  """
  if jax.default_backend() != 'cpu':
    return None
  defaults = xla_defaults()  # (Read for bfloat16 too: a mistyped value is named whatever the dtype.)
  if dtype != 'float32':
    return dict(BF16_CPU_OPTIONS)
  return None if defaults else dict(CPU_COMPILER_OPTIONS)


def check_xla_defaults() -> None:
  """A mistyped JAX_CIFAR_XLA_DEFAULTS, named on every process before a command writes anything
  (on CPU: elsewhere it is not read; the diff review)."""
  with parallel.fail_together('reading JAX_CIFAR_XLA_DEFAULTS'):
    if jax.default_backend() == 'cpu':
      xla_defaults()


def xla_defaults() -> bool:
  """Whether JAX_CIFAR_XLA_DEFAULTS asks for XLA's own CPU options (any value had, 0 too)."""
  value = os.environ.get('JAX_CIFAR_XLA_DEFAULTS', '').strip().lower()
  if value in ('', '0', 'false', 'no', 'off'):
    return False
  if value in ('1', 'true', 'yes', 'on'):
    return True
  raise errors.ConfigError(f'JAX_CIFAR_XLA_DEFAULTS={os.environ["JAX_CIFAR_XLA_DEFAULTS"]!r}: give 1 '
                           "(XLA's own CPU options) or 0 (jax-cifar's), or leave it unset")


def precise_compiler_options(dtype: str = 'float32') -> dict | None:
  """CPU-only XLA options for programs whose precision matters more than their speed (Tent's few
  gradient steps): no YNNPACK fusions, and AVX2 code. JAX_CIFAR_XLA_DEFAULTS=1 turns them off,
  apart from BF16_CPU_OPTIONS for a bfloat16 program.

  XLA:CPU's convolution code lost precision in some whole programs (docs/benchmarks.md): a
  BatchNorm-affine gradient through YNNPACK's convolutions came out 9e-2 off torch float64 on an
  AVX2 AMD EPYC, and through XLA's own convolutions with AVX-512 code 1e-2 off on an Intel Xeon
  with AMX. Both were as close as torch float32 with these options. (Their speed was not measured
  on Tent; the train step ran at the same speed with AVX2 code on that Xeon.)
  """
  if jax.default_backend() != 'cpu':
    return None
  if xla_defaults():
    return dict(BF16_CPU_OPTIONS) if dtype != 'float32' else None
  return {**BF16_CPU_OPTIONS, 'xla_cpu_max_isa': 'AVX2'}
