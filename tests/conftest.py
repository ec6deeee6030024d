"""Shared fixtures: locating the real data, and requiring it under CI."""

import gc
import os
import pathlib
import re
import signal

import pytest

# Compiled programs are cached on disk, so repeated compiles across tests and subprocesses are cheap;
# in a folder of their own, not the users' runs' ~/.cache/jax_cifar/xla (thousands of small test
# programs had been added to it by each run of the suite: an audit).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path.home() / '.cache' / 'jax_cifar' / 'xla-tests'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# Most tests compile a program and run it for a few steps, where XLA's LLVM optimisation costs
# more than it saves: with jax_disable_most_optimizations (LLVM at -O0, its expensive passes off;
# XLA's HLO passes, fusion included, still run: the same computation, up to rounding order) the
# compile-bound tests ran 25-45% faster and a cold clean-clone CI's tests 2,456 -> 2,091 s
# (docs/benchmarks.md). The tests whose subject is a long run (hundreds of steps) pay for it
# instead; they carry the `optimized_xla` marker and compile with the full pipeline, as users'
# runs do. Set it in the environment to choose otherwise.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')


# XLA:CPU's older (LLVM IR) fusion emitters compile the suite's programs about 15 % faster than its
# MLIR ones: a resnet18 train step at -O0 in 4.4-5.1 s against 5.3-5.6 s, and a cold suite's
# tests went 2,845 -> 2,659 worker-seconds (docs/benchmarks.md, 2026-12-07). Same HLO, same
# fusions; only their code generator differs. Only where XLA_FLAGS is unset, and only where this
# jaxlib knows the flag (an unknown one ends every process that starts JAX).
FAST_COMPILE_XLA_FLAGS = '--xla_cpu_use_fusion_emitters=false'


def _xla_accepts(flags: str) -> bool:
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-c', 'import jax; jax.jit(lambda x: x + 1)(1)'], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


if 'XLA_FLAGS' not in os.environ and _xla_accepts(FAST_COMPILE_XLA_FLAGS):
  os.environ['XLA_FLAGS'] = FAST_COMPILE_XLA_FLAGS

# The test processes trace models all day, as the commands do at a launch: they defer CPython's
# full garbage collections as the commands do while starting (jax_cifar/starting.py), for the whole
# session (in a pytest process running 149 tests, 14 s of 222 CPU-s were full collections; 4 s
# after, docs/benchmarks.md). Set directly: a command's end of starting, run in-process, keeps it.
from jax_cifar import starting  # pylint: disable=wrong-import-position  (stdlib only: no JAX)
gc.set_threshold(*gc.get_threshold()[:2], starting.FULL_COLLECTION_THRESHOLD)


def with_cpu_devices(env: dict, devices: int) -> dict:
  """`env` for a test's subprocess with `devices` host CPU devices, set through XLA_FLAGS in
  place of any count there; the suite's other flags stay (such tests had replaced XLA_FLAGS
  whole, and lost the faster compiles)."""
  env = {k: v for k, v in env.items() if k != 'JAX_NUM_CPU_DEVICES'}  # (It would win.)
  flags = re.sub(r'(^|\s)--xla_force_host_platform_device_count=\S*', '', env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={devices}'.strip()
  return env


# The test files that take longest, longest first (worker-seconds of a clean-clone CI run on a
# 2-core machine, 2026-12-05: 225 .. 14 s; every file of 14 s or more, so that no file of a minute
# is left to the end in collection order; test_console placed by its ~43 s in an AVX2-only run,
# about twice as slow, after it took the console tests of test_cli; test_step_parity by its ~45 s
# on the AVX-512 machine, 2026-12-06). README's command runs files in this order (`--dist loadfile
# --no-loadscope-reorder`), so no long file starts last while the other workers sit idle; by
# default xdist would start the files with the most tests first, which are mostly quick ones.
LONGEST_FIRST = ('test_trainer', 'test_resilience', 'test_multiprocess', 'test_multiprocess_eval',
                 'test_convert', 'test_bf16', 'test_models', 'test_workdir', 'test_evaluate',
                 'test_ema', 'test_tent', 'test_transfer', 'test_train_step', 'test_cli',
                 'test_init_from', 'test_scan_blocks', 'test_step_parity', 'test_gpu_ood',
                 'test_augment_pipeline',
                 'test_benchmark', 'test_torch_step', 'test_grad_accum', 'test_api',
                 'test_bn_adapt', 'test_evaluate_faults', 'test_checkpoints', 'test_convert_safety',
                 'test_pretrained_weights', 'test_evaluate_resume', 'test_gpu_stage',
                 'test_install', 'test_tfds_source', 'test_augment', 'test_console',
                 'test_augmix', 'test_tracking', 'test_photometric', 'test_launch',
                 'test_corrupt_cli')


def pytest_collection_modifyitems(items):
  """Files in LONGEST_FIRST's order, then the rest as collected; tests keep their order in a file."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # Stable: ties keep their order.


@pytest.fixture(autouse=True)
def _optimized_xla(request, monkeypatch):
  """Tests marked `optimized_xla` (and the processes they start) compile with XLA's full pipeline."""
  if request.node.get_closest_marker('optimized_xla') is None:
    yield
    return
  import jax  # pylint: disable=import-outside-toplevel
  before = jax.config.read('jax_disable_most_optimizations')
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '0')  # For the subprocesses it starts.
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', before)


@pytest.fixture(autouse=True)
def _large_programs(request, monkeypatch):
  """Tests marked `large_programs` compile the trainer's steps in their own process with XLA:CPU's
  newer fusion emitters. The older ones (the suite's, above) build each kernel's IR emitter by
  scanning the whole module, which is quadratic in its size: a ResNet-50 transfer step (2,453
  fusions) compiled in 42 s with them and 27 s without (docs/benchmarks.md)."""
  if (request.node.get_closest_marker('large_programs') is None
      or os.environ.get('XLA_FLAGS') != FAST_COMPILE_XLA_FLAGS):
    yield
    return
  import jax  # pylint: disable=import-outside-toplevel  (only for the marked tests)
  if jax.default_backend() != 'cpu':
    yield
    return
  from jax_cifar import xla_options  # pylint: disable=import-outside-toplevel
  step_options = xla_options.step_compiler_options
  monkeypatch.setattr(xla_options, 'step_compiler_options', lambda dtype='float32': {
      **(step_options(dtype) or {}), 'xla_cpu_use_fusion_emitters': True})
  yield


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
  """The test process's SIGINT/SIGTERM handlers after every test: one that starts a command's
  (maybe_initialize_distributed installs starting.py's os._exit one) had left it behind, and a
  Ctrl-C then ended the worker without its teardown (the diff review)."""
  saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  yield
  for s, handler in saved.items():
    if signal.getsignal(s) is not handler:
      signal.signal(s, handler)


@pytest.fixture
def drawn(monkeypatch):
  """Every matplotlib Figure the report and the evaluation figures save, in order (still saved
  to disk)."""
  from jax_cifar.evaluation import figures  # pylint: disable=import-outside-toplevel
  saved, save = [], figures.save
  monkeypatch.setattr(figures, 'save', lambda fig, path: (saved.append(fig), save(fig, path)))
  return saved


# What a write past the file-size limit says (the tests' stand-in for a full disk: RLIMIT_FSIZE).
TOO_LARGE = ('File too large (a file size limit: ulimit -f, or the largest file the file system '
             'takes)')


# Linux's /proc, where a few tests read a process's children, memory, signal mask or open files,
# and which refuses new files even to root. Elsewhere (macOS) those tests skip, naming it.
HAS_PROC = pathlib.Path('/proc/self/stat').is_file()
needs_proc = pytest.mark.skipif(not HAS_PROC, reason='reads /proc, which Linux has and this OS '
                                'has not')


def is_png(path) -> bool:
  """Whether `path` is a PNG that matplotlib reads back as an image."""
  import matplotlib.image  # pylint: disable=import-outside-toplevel
  return (pathlib.Path(path).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
          and matplotlib.image.imread(path).ndim == 3)


def require_env_path(var: str, *parts: str) -> pathlib.Path:
  """The file/folder under $VAR; skipped with a reason outside CI, a failure under CI."""
  base = os.environ.get(var)
  path = pathlib.Path(base, *parts) if base else None
  if path is None or not path.exists():
    reason = f'{var} is unset' if base is None else f'{path} does not exist'
    if os.environ.get('CI'):
      pytest.fail(f'CI requires real data: {reason}')
    pytest.skip(reason)
  return path


@pytest.fixture(scope='session')
def cifar_dir() -> pathlib.Path:
  """Folder holding the real cifar-100-python/ (from $JAX_CIFAR_DATA_DIR)."""
  require_env_path('JAX_CIFAR_DATA_DIR', 'cifar-100-python')
  return pathlib.Path(os.environ['JAX_CIFAR_DATA_DIR'])


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory, cifar_dir, request) -> pathlib.Path:
  """The workdir of README's smoke run (`python -m jax_cifar.train --config configs/smoke.py` on
  the real data), trained once per test session: the pytest-xdist workers that ask for it share
  it through a file lock (the first one trains, the others wait for it and read its checkpoints).

  Compiled with XLA's full optimisation, as a user's run is (it trains for 312 steps)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import filelock  # pylint: disable=import-outside-toplevel
  shared = tmp_path_factory.getbasetemp()
  # An xdist worker's folder is one of the session's (their common one is its parent); without
  # xdist (`-p no:xdist`, which has no worker_id fixture) the session's own.
  worker = getattr(request.config, 'workerinput', None)
  shared = shared.parent if worker else shared
  workdir, done, failed = (shared / f'smoke_run{s}' for s in ('', '.done', '.failed'))
  with filelock.FileLock(str(shared / 'smoke_run.lock')):
    if not done.exists() and not failed.exists():
      env = dict(os.environ, JAX_CIFAR_DATA_DIR=str(cifar_dir), JAX_DISABLE_MOST_OPTIMIZATIONS='0')
      proc = subprocess.run([sys.executable, '-m', 'jax_cifar.train', '--config', 'configs/smoke.py',
                             '--workdir', str(workdir)], cwd=pathlib.Path(__file__).parent.parent,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      (done if proc.returncode == 0 else failed).write_text(proc.stderr[-5000:])
  if failed.exists():  # Once per session: the workers that wait for it do not train it again.
    pytest.fail(f'the smoke run failed (in {workdir}):\n{failed.read_text()}')
  return workdir


def require_module(name: str):
  """Imports `name` (e.g. torch): skipped where absent, but under CI a missing module fails."""
  import importlib  # pylint: disable=import-outside-toplevel
  if os.environ.get('CI'):
    return importlib.import_module(name)
  return pytest.importorskip(name)


def require_torch():
  """torch (with torchvision) for parity tests: skipped where absent, a failure under CI."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    if os.environ.get('CI'):
      pytest.fail(f'CI requires torchvision for parity tests: {e}')
    pytest.skip(f'torchvision is not installed: {e}')
  torch.set_num_threads(1)
  return torch


def load_script(name: str):
  """scripts/`name`.py as a module (the scripts are not a package)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parent.parent / 'scripts' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def real_test_images(cifar_dir: pathlib.Path, start: int, count: int):
  """`count` real uint8 NHWC images of the CIFAR-100 test pickle, from index `start`."""
  import pickle  # pylint: disable=import-outside-toplevel
  with open(cifar_dir / 'cifar-100-python' / 'test', 'rb') as f:
    data = pickle.load(f, encoding='latin1')['data'][start:start + count]
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
