"""Device mesh, shardings and global batches: data parallelism with jax.jit, on one or many hosts."""

import collections
import contextlib
import json
import os
import zlib
from typing import Any, Iterable, Iterator, Mapping

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_cifar import errors, starting

DATA_AXIS = 'data'
DISTRIBUTED_VAR = 'JAX_CIFAR_DISTRIBUTED'  # 1: jax.distributed.initialize() finds the cluster.


def _refuse_settings_without_a_coordinator() -> None:
  """Several processes asked for without JAX_COORDINATOR_ADDRESS: each had trained alone as
  process 0 of 1, writing the same run's files, without a word (a new-user walkthrough). One
  process's own JAX_NUM_PROCESSES=1 / JAX_PROCESS_ID=0 is consistent and let be, and so is
  JAX_LOCAL_DEVICE_IDS (launch_slurm.sh's PER_NODE=1 on one node: one process, all its GPUs)."""
  given = {v: os.environ[v].strip() for v in ('JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
           if os.environ.get(v, '').strip()}
  alone = {'JAX_NUM_PROCESSES': 1, 'JAX_PROCESS_ID': 0}  # (As numbers: 01 and 00 say the same.)
  if all(_is_whole(value) and int(value) == alone[k] for k, value in given.items()):
    return
  raise errors.LaunchSettingError(
      f'{" ".join(f"{k}={v}" for k, v in given.items())} without JAX_COORDINATOR_ADDRESS: set it '
      f'(host:port of process 0) for every process, or unset {" and ".join(given)} to run as one '
      'process')


def maybe_initialize_distributed() -> None:
  """Starts JAX's distributed runtime when launched as one of several processes.

  Started by: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (as
  scripts/launch_local.py sets them); SLURM_NTASKS > 1 (one process per GPU, under srun); a GKE TPU
  slice (TPU_WORKER_HOSTNAMES); or JAX_CIFAR_DISTRIBUTED=1, where `jax.distributed.initialize()`
  finds the cluster itself (Cloud TPU VM pods through the metadata server, Kubernetes, Open MPI).
  That last one is asked for, not guessed: the metadata query fails on TPU machines outside Google
  Cloud (Kaggle, Colab), which run as one process. JAX_LOCAL_DEVICE_IDS names a process's GPUs:
  one each with one process per GPU (JAX shows every process every GPU unless it finds SLURM or
  Open MPI), or 0,1,.. for one process driving several under SLURM. CPU processes exchange data
  through gloo unless JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise. JAX_NUM_PROCESSES > 1
  or JAX_PROCESS_ID > 0 without any of these is refused.
  """
  explicit = os.environ.get('JAX_COORDINATOR_ADDRESS')
  tasks = os.environ.get('SLURM_NTASKS', '1').strip() or '1'
  in_slurm = _is_whole(tasks) and int(tasks) > 1
  asked = os.environ.get(DISTRIBUTED_VAR, '').strip()
  if asked not in ('', '0', '1'):
    raise errors.LaunchSettingError(f'{DISTRIBUTED_VAR} must be 1 (find the cluster with '
                                    f'jax.distributed.initialize()) or 0, got {asked!r}')
  if not (explicit or in_slurm or os.environ.get('TPU_WORKER_HOSTNAMES') or asked == '1'):
    _refuse_settings_without_a_coordinator()
    return
  if not os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # Only used by CPU devices.
  local = os.environ.get('JAX_LOCAL_DEVICE_IDS')  # e.g. "0,1,2,3": this process's accelerators.
  if local and not all(_is_whole(i.strip()) for i in local.split(',')):
    raise errors.LaunchSettingError(f'JAX_LOCAL_DEVICE_IDS must be device numbers such as '
                                    f'0,1,2,3, got {local!r}')
  kwargs = {'local_device_ids': [int(i) for i in local.split(',')]} if local else {}
  if explicit:
    count, index = _env_int('JAX_NUM_PROCESSES', minimum=1), _env_int('JAX_PROCESS_ID')
    if not index < count:  # (JAX's own refusal was a traceback.)
      raise errors.LaunchSettingError(
          f'JAX_PROCESS_ID={index} must be below JAX_NUM_PROCESSES={count} (processes are '
          'numbered 0 .. JAX_NUM_PROCESSES - 1)')
    kwargs.update(coordinator_address=explicit, num_processes=count, process_id=index)
  # A process that never starts: the others give up after this many seconds (JAX's own 300 had
  # applied before our barrier's, whatever JAX_CIFAR_CONNECT_TIMEOUT_S said), and JAX then aborts
  # them with its own message (DEADLINE_EXCEEDED ... RegisterTask).
  kwargs['initialization_timeout'] = connect_timeout_s()
  # JAX's cluster detection, asked for, raises RuntimeError or requests' OSError where no GCE
  # metadata server answers; otherwise a ValueError means a setting, e.g. SLURM_NTASKS=2 in a
  # batch script's body, outside srun. Anything else is a bug and keeps its traceback.
  detecting = asked == '1' and not explicit
  refused = (ValueError, RuntimeError, OSError) if detecting else ValueError
  try:
    jax.distributed.initialize(**kwargs)
  except refused as e:
    raise errors.LaunchSettingError(
        f'cannot start as one of several processes ({e}); '
        + (f'SLURM_NTASKS={tasks}: start each process with srun, ' if in_slurm and not explicit
           else f'{DISTRIBUTED_VAR}=1, but JAX found no cluster it knows (a Cloud TPU VM pod, '
           'Kubernetes, Open MPI): unset it to run as one process, ' if detecting
           else '') + 'or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID'
    ) from None
  # JAX took SIGTERM for its preemption notifier: one while the processes connect had been lost
  # (a review). Nothing is written yet: it stops at once, until the command installs its handlers.
  starting.install()
  logging.info('Process %d of %d, %d local / %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.default_backend() == 'cpu' and jax.process_count() > 1:
    connect_cpu_collectives()


CONNECT_TIMEOUT_S = 600  # The start-up barrier's wait; JAX_CIFAR_CONNECT_TIMEOUT_S overrides it.
CONNECT_TIMEOUT_VAR = 'JAX_CIFAR_CONNECT_TIMEOUT_S'


def _seconds(name: str, default: int, minimum: int) -> int:
  """$NAME as whole seconds (at least `minimum`), or `default` when unset; else one error line."""
  value = os.environ.get(name)
  if value is None:
    return default
  if not _is_whole(value.strip()) or int(value) < minimum:
    raise errors.LaunchSettingError(
        f'{name} must be {"a positive" if minimum else "a"} whole number of seconds, got {value!r}')
  return int(value)


def _is_whole(text: str) -> bool:
  """A whole number of at most 9 ASCII digits. '²' is a digit to str.isdigit but not to int()
  (JAX_NUM_PROCESSES=² had been a ValueError traceback: a security review), 5,000 digits are past
  int()'s limit, and 30 had reached JAX as a TypeError traceback (its diff review)."""
  return text.isascii() and text.isdigit() and len(text) <= 9


def connect_timeout_s() -> int:
  """Seconds the start-up barrier waits for every process: $JAX_CIFAR_CONNECT_TIMEOUT_S or 600."""
  return _seconds(CONNECT_TIMEOUT_VAR, CONNECT_TIMEOUT_S, minimum=1)


SHARED_WAIT_VAR, SHARED_WAIT_S = 'JAX_CIFAR_SHARED_WAIT_S', 60


def shared_wait_s() -> int:
  """Seconds the processes look for a file process 0 wrote into the workdir (a network
  filesystem's caches may show it late): $JAX_CIFAR_SHARED_WAIT_S or 60."""
  return _seconds(SHARED_WAIT_VAR, SHARED_WAIT_S, minimum=0)


def connect_cpu_collectives() -> None:
  """Opens the gloo connections of every collective the run uses while the processes are in step.

  XLA:CPU connects a group of devices through gloo at the first collective over that group, and
  gives up when the other processes do not arrive within 30 s ("Gloo context initialization
  failed: Connect timeout"). Processes that compile a step at different speeds (a loaded machine)
  reach their first step further apart than that. Once connected, a collective waits 30 minutes.
  So: a barrier of the coordination service (it waits connect_timeout_s()), then one
  collective over the processes (any_process, orbax's barriers) and one over the mesh (the steps).
  """
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
  from jax_cifar import interrupt  # pylint: disable=g-import-not-at-top  (it imports this module)
  timeout_s = connect_timeout_s()
  barrier = multihost.get_barrier_sync_fn()
  mesh = make_mesh()
  ones = jax.make_array_from_process_local_data(
      batch_sharded(mesh), np.ones((jax.local_device_count(),), np.int32))
  total = jax.jit(lambda x: x.sum(), out_shardings=replicated(mesh)).lower(ones).compile()
  interrupt.at_event('connect', 0)  # Test hook: a process that never reaches the start.
  for name, collective in (('processes', lambda: any_process(False)),
                           ('mesh', lambda: int(total(ones)))):
    try:
      barrier(key=f'jax_cifar/connect/{name}', timeout_ms=timeout_s * 1000)
    except Exception as e:  # pylint: disable=broad-except
      raise errors.UserError(
          f'process {jax.process_index()} of {jax.process_count()}: not every process reached the '
          f'start within {timeout_s} s ({CONNECT_TIMEOUT_VAR}); are all JAX_NUM_PROCESSES of them '
          f'running? ({e})') from e  # errors.user_message prints it as one line.
    collective()
  logging.info('Collectives connected across %d processes.', jax.process_count())


def _env_int(name: str, minimum: int = 0) -> int:
  """The integer environment variable `name`, at least `minimum` (0 or 1), else one error line."""
  value = os.environ.get(name)
  if value is None or not _is_whole(value.strip()) or int(value) < minimum:
    kind = 'a positive' if minimum else 'a non-negative'
    raise errors.LaunchSettingError(
        f'JAX_COORDINATOR_ADDRESS is set, so {name} must be {kind} integer, got {value!r}')
  return int(value)


def make_mesh() -> Mesh:
  """One 'data' axis over every device of every process, each process's devices side by side:
  a process's rows of a global batch (the input pipeline's contiguous slice) then sit on its own
  devices in that order, whatever order the platform numbers devices in."""
  devices = jax.devices()
  counts = collections.Counter(d.process_index for d in devices)
  if len(set(counts.values())) > 1:  # JAX's own error came at the first batch, naming shapes.
    raise errors.LaunchSettingError(
        'the processes drive different numbers of devices (' + ', '.join(
            f'process {i}: {n}' for i, n in sorted(counts.items())) + '); each process reads an '
        'equal slice of every batch, so each must drive as many (JAX_LOCAL_DEVICE_IDS, or the '
        'same number of GPUs per task)')
  return Mesh(np.asarray(process_major(devices)), (DATA_AXIS,))


def process_major(devices: list) -> list:
  """`devices` ordered by process, then id (jax.devices() is ordered by id alone)."""
  return sorted(devices, key=lambda d: (d.process_index, d.id))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, name: str) -> int:
  """Per-process batch size; the global batch must split evenly over devices."""
  if global_batch % jax.device_count():
    raise errors.ConfigError(f'{name}={global_batch} must be divisible by the number of devices '
                     f'({jax.device_count()})')
  return global_batch // jax.process_count()


def eval_batch_size(configured: int) -> int:
  """The global evaluation batch: `configured` rounded up to a multiple of the device count.

  Evaluation pads each batch's missing rows and masks them out of every sum and count, so the
  extra rows change no number. Refusing instead had stopped every shipped config (eval batch 500)
  on 8, 16 or 32 devices."""
  devices = jax.device_count()
  size = -(-configured // devices) * devices
  if size != configured:
    logging.info('Evaluation batch %d -> %d (a multiple of the %d devices; the extra rows are '
                 'padding).', configured, size, devices)
  return size


def chunk_batch_size(num_images: int, global_batch: int) -> int:
  """The global batch for a block of `num_images` (a chunk adapted on its own): `global_batch`, or
  for fewer images the next power of two (rounded up to a multiple of the device count), so that
  a small chunk is not padded to a whole batch (20 images per severity, padded to 500, had made
  `--tta shifts --bn_adapt` 50x slower: a new-user walkthrough) and chunks of other sizes
  compile few programs."""
  size = 1 << max(num_images - 1, 0).bit_length()
  devices = jax.device_count()
  return min(global_batch, -(-size // devices) * devices)


def micro_batch_warning(global_batch: int, accum: int) -> str | None:
  """Why `accum` micro-batches of `global_batch` would span devices, or None. Micro-batch i takes
  examples i, i + accum, ...; each device keeps its share of every micro-batch only when accum
  divides the images each device holds. Otherwise the update is the same, but XLA moves images
  between devices at every step and the devices' memory is uneven (all-gathers in the step)."""
  per_device = global_batch // jax.device_count()
  if accum <= 1 or per_device % accum == 0:
    return None
  return (f'train.grad_accum_steps={accum} does not divide the {per_device} images each of the '
          f'{jax.device_count()} devices holds (train.batch_size {global_batch}): the '
          'micro-batches span devices, so each step moves images between them. Choose a batch '
          'size that is a multiple of devices x grad_accum_steps.')


def same_on_every_process(value: int, what: str) -> int:
  """`value`, which each process read from the files it sees, refused unless every process read
  the same (a collective). Processes that resumed from different steps, one seeing a shared
  filesystem's older listing or failing to read a step, would train apart without an error."""
  if jax.process_count() == 1:
    return value
  values = every_process(value)
  if len(set(values)) > 1:
    seen = ', '.join(f'process {i}: {v}' for i, v in enumerate(values))
    raise errors.UserError(f'the processes disagree on {what} ({seen}): each must see the same '
                           'checkpoint files (a shared filesystem that lags, or a read error on '
                           'one host); relaunch once they do')
  return value


# Paths that may name each host's own copy of the same files (node-local data): not compared.
PER_HOST_KEYS = ('data.dir', 'data.tfds_data_dir', 'model.pretrained', 'model.init_from')


def digest(value: Any) -> int:
  """A 31-bit fingerprint of a JSON-able value (what the processes compare)."""
  return zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode()) & 0x7FFFFFFF


def same_settings_everywhere(settings: Mapping[str, Any], given: str) -> None:
  """Refuses, on every process at once, settings (a flat config, a tool's flags) that differ
  between processes, naming them. Every process had trained with its own: a learning rate given
  to one process trained silently apart, a batch size then hung in a collective (a cluster
  walkthrough). PER_HOST_KEYS and wandb.* (process 0's alone) are not compared."""
  if jax.process_count() == 1:
    return
  keys = sorted(k for k in settings if k not in PER_HOST_KEYS and not k.startswith('wandb.'))
  if len(set(every_process(digest(keys)))) > 1:
    raise errors.ConfigError(f'the processes were given {given} of different sets of keys (a '
                             'different jax-cifar on some hosts?): install the same everywhere')
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  mine = np.asarray([digest(settings[k]) for k in keys], np.int32)
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, len(keys))
  differ = [k for i, k in enumerate(keys) if len(set(every[:, i].tolist())) > 1]
  if differ:
    here = ', '.join(f'{k}={settings[k]!r}' for k in differ[:6]) + (', ...' if len(differ) > 6 else '')
    raise errors.ConfigError(
        f'the processes were given different {given}: {", ".join(differ[:6])} differ (process '
        f'{jax.process_index()} has {here}); launch every process with the same command')


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any; a collective that all processes must call."""
  if jax.process_count() == 1:
    return bool(flag)
  return any(every_process(int(flag)))


def every_process(value: int) -> list[int]:
  """Each process's `value`, in process order (an all-gather: every process must call it)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return [int(v) for v in np.asarray(
      multihost_utils.process_allgather(np.asarray([value], np.int32))).reshape(-1)]


@contextlib.contextmanager
def fail_together(what: str):
  """Runs the block, then every process learns whether it failed on any (a collective that all
  processes reach): the failing process raises its own error, the others one line naming `what`.

  Process 0 alone writes the metrics, the launch records and the submission CSV, and moves files
  aside. A failure there (a full disk) had left the other processes in their next collective
  until JAX's timeouts, minutes later (a multi-host review). Keep collectives out of the block: a
  process that raised early would meet the others' collectives with its own.
  """
  if jax.process_count() == 1:
    yield
    return
  error = None
  try:
    yield
  except BaseException as e:  # pylint: disable=broad-except  (raised again below, everywhere)
    error = e  # (KeyboardInterrupt and SystemExit too: the others must not wait for this one.)
  if any_process(error is not None):
    if error is not None:
      raise error
    raise errors.UserError(f'another process failed while {what} (its error says why); process '
                           f'{jax.process_index()} stops too')


def sync(name: str) -> None:
  """A barrier across processes (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Assembles this process's slice of a batch into one global, sharded jax.Array per key."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def prefetch_to_device(batches: Iterable[dict], sharding: NamedSharding,
                       size: int = 2) -> Iterator[dict]:
  """Keeps `size` batches in flight to the devices so transfers overlap the running step. Closing
  this generator closes `batches` (grain's worker processes stop then, not at exit)."""
  queue = collections.deque()
  iterator = iter(batches)
  close = getattr(iterator, 'close', lambda: None)
  try:
    for batch in iterator:
      queue.append(to_global(batch, sharding))
      if len(queue) > size:
        yield queue.popleft()
    while queue:
      yield queue.popleft()
  except GeneratorExit:
    close()
    raise
  except BaseException:  # The input's own error is the one to report: a grain worker that never
    with contextlib.suppress(Exception):  # started had made close() raise an AssertionError in
      close()  # its place (a review).
    raise
  close()
