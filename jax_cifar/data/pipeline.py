"""grain pipelines: uint8 batches for this process, reshuffled every epoch, resumable by step.

The training stream is a random-access `grain.MapDataset` whose element `s` is the batch of step
`s`: one seeded permutation per epoch, global batches with the remainder of each epoch dropped,
then this process's contiguous slice of every global batch. Resuming at step `s` is
`dataset[s:]`, so a restarted run sees exactly the batches the uninterrupted one would.

The permutation is drawn with NumPy once per epoch and each step slices it, so a batch costs one
Python call instead of one per image: grain's per-element lazy shuffle took 2.3 ms of a 4.6 ms
batch of 128 (a ceiling near 23k img/s from one host thread, about what an H200 trains a cifar
ResNet-18 at); the sliced permutation costs ~0.3 ms (docs/benchmarks.md, "Input path").
"""

import ast
import dataclasses
import functools
import os
import signal
import sys
import threading
import time
from typing import Iterator

import grain
from absl import flags
import jax
import numpy as np

from jax_cifar import errors
from jax_cifar.data.cifar100 import Split


@dataclasses.dataclass(frozen=True)
class _Gather:
  """Turns a batch of indices into a batch of images and labels (a cheap uint8 gather)."""
  split: Split

  def __call__(self, indices: np.ndarray) -> dict:
    indices = np.asarray(indices)
    return {'image': self.split.images[indices], 'label': self.split.labels[indices].astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class _ProcessSlice:
  """This process's contiguous share of a global batch (a picklable map for grain workers)."""
  start: int
  size: int

  def __call__(self, rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows)[self.start:self.start + self.size]


def _process_slice(global_batch: int) -> _ProcessSlice:
  per_process = global_batch // jax.process_count()
  return _ProcessSlice(jax.process_index() * per_process, per_process)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  steps = num_examples // global_batch
  if steps == 0:
    raise errors.ConfigError(f'train.batch_size={global_batch} is larger than the training set '
                     f'({num_examples} images)')
  return steps


@functools.lru_cache(maxsize=4)
def _permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


@dataclasses.dataclass(frozen=True)
class _StepIndices:
  """Step s -> the example indices of its global batch (a slice of its epoch's permutation)."""
  num_examples: int
  global_batch: int
  seed: int

  def __call__(self, step) -> np.ndarray:
    epoch, i = divmod(int(step), self.num_examples // self.global_batch)
    start = i * self.global_batch
    return _permutation(self.num_examples, self.seed, epoch)[start:start + self.global_batch]


def train_dataset(split: Split, global_batch: int, seed: int, num_epochs: int) -> grain.MapDataset:
  """Element s = this process's share of the global batch of step s."""
  steps = steps_per_epoch(len(split), global_batch) * num_epochs
  ds = grain.MapDataset.range(steps).map(_StepIndices(len(split), global_batch, seed))
  return ds.map(_process_slice(global_batch)).map(_Gather(split))


def train_batches(split: Split, global_batch: int, seed: int, num_epochs: int, start_step: int,
                  worker_count: int = 0) -> Iterator[dict]:
  ds = train_dataset(split, global_batch, seed, num_epochs)[start_step:]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():  # Called from Python, not a command line: grain <= 0.2.18
      flags.FLAGS.mark_as_parsed()  # reads an absl flag of its workers' (google/grain#1355).
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                        worker_init_fn=functools.partial(exit_with_parent, os.getpid()))
    it = it.map(_out_of_shared_memory)
  return iter(it)


def check_workers_can_start(worker_count: int) -> None:
  """Refuses worker processes that would run the user's script again. grain starts its workers
  with Python's spawn method, which imports the main script afresh in each: a script that calls
  train_and_evaluate outside `if __name__ == '__main__':` trained again in every worker, whose
  copy stopped on "workdir is in use by another run (pid N)", the trainer's own pid, while the
  trainer waited on it for ever (CPython blocks writing a large job to a child that died while
  starting)."""
  if worker_count > 0 and (where := _unguarded_main_call()):
    raise errors.ConfigError(
        f'data.worker_count={worker_count} starts grain worker processes, and each runs {where[0]} '
        f'again from the top (Python\'s spawn start method), which would train again from line '
        f'{where[1]}: put that call under `if __name__ == \'__main__\':`, or use '
        'data.worker_count=0 (batches are then gathered in this process)')


def _unguarded_main_call() -> tuple[str, int] | None:
  """(file, line) of the __main__ module's statement under way when a spawned process would run
  it again: a statement inside no `if` or `match` (any of them may be the guard, however it is
  written: `if __name__ == '__main__' and ...:`, `if IS_MAIN:`). None for `python -c`, a notebook
  or the REPL (no file to run again), a package's __main__ (never run again), a frozen app, or
  source that cannot be read."""
  main = sys.modules.get('__main__')
  spec_name = getattr(getattr(main, '__spec__', None), 'name', None) or ''
  path = getattr(main, '__file__', None)
  if (not path or spec_name == '__main__' or spec_name.endswith('.__main__')
      or getattr(sys, 'frozen', False)):
    return None
  frame, line = sys._getframe(), None  # pylint: disable=protected-access
  while frame is not None:
    if frame.f_globals is vars(main) and frame.f_code.co_name == '<module>':
      line = frame.f_lineno
    frame = frame.f_back
  try:
    with open(path, 'rb') as f:
      statements = ast.parse(f.read()).body
  except (OSError, SyntaxError, ValueError):
    return None
  while line is not None and statements:
    node = next((n for n in statements if n.lineno <= line <= (n.end_lineno or n.lineno)), None)
    if node is None:
      break
    if isinstance(node, (ast.If, ast.Match)):
      return None
    statements = [n for field in ('body', 'orelse', 'handlers', 'finalbody')
                  for n in getattr(node, field, ())]
  return (path, line) if line is not None else None


def _out_of_shared_memory(batch: dict) -> dict:
  """The workers' batches arrive in shared memory that is unlinked when its array is freed. The
  batches still held at exit (the device prefetch queue, the last step's) were freed too late, and
  every run with workers ended in "resource_tracker: There appear to be 4 leaked shared_memory
  objects". A copy (0.4 MB a batch of 32 px images) frees each block at once."""
  return {k: np.array(v, copy=True) for k, v in batch.items()}


PARENT_POLL_S = 1.0


def exit_with_parent(parent: int, worker_index: int, worker_count: int) -> None:
  """grain worker init: the worker ends within PARENT_POLL_S of the death of `parent`, the process
  that started it. Workers of a SIGKILLed trainer (a preemption, an out-of-memory kill) had lived
  on, idle, holding a copy of the training split each, through every relaunch (an audit). The pid
  is given, not read here: a worker still starting when the trainer died has already been
  adopted by another process.

  SIGTERM and SIGINT are the trainer's to act on (save, then stop): a signal to the whole process
  group (Ctrl-C, SLURM's --signal) had killed the workers, and the trainer's next batch raised
  "Worker process was terminated unexpectedly" before it could save (a review). grain stops its
  workers with an event and SIGKILL, never with these. Left: a worker still starting (a fresh
  interpreter, seconds, at a launch's first batch) is still ended by one; it cannot be handed an
  ignored signal, as grain starts workers from threads the trainer does not control."""
  del worker_index, worker_count
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, signal.SIG_IGN)

  def watch():
    while os.getppid() == parent:
      time.sleep(PARENT_POLL_S)
    os._exit(0)  # pylint: disable=protected-access  (no cleanup is owed to a dead parent)

  threading.Thread(target=watch, name='exit_with_parent', daemon=True).start()


def _pad(batch: dict, size: int) -> dict:
  n = len(batch['image'])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
  out['mask'] = (np.arange(size) < n).astype(np.int32)
  return out


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
  """Eval batch b -> this process's images of it, padded and masked. A global batch is images
  b*B .. b*B+B-1 in order, so a process's share is one contiguous slice: read as one copy (a
  memory map's pages in order), never the other processes' rows (N hosts had read a
  950,000-image OOD set N times). grain's .batch() over a range of image indices, gathered, had
  held evaluate's host side to 105-140k images/s (a host-side review; docs/benchmarks.md)."""
  images: np.ndarray
  global_batch: int
  share: _ProcessSlice

  def __call__(self, b) -> dict:
    lo = min(int(b) * self.global_batch + self.share.start, len(self.images))
    hi = min(lo + self.share.size, len(self.images))
    batch = {'image': np.array(self.images[lo:hi])}
    if hi - lo == self.share.size:
      return {**batch, 'mask': np.ones(self.share.size, np.int32)}
    return _pad(batch, self.share.size)


def image_batches(images: np.ndarray, global_batch: int) -> Iterator[dict]:
  """{'image', 'mask'} batches of any uint8 [N, 32, 32, 3] array (memory maps included), every
  image exactly once: the last batch is padded and masked; each process takes its slice. (No
  labels: nothing predicted reads them; evaluation compares the predictions with them after.)"""
  ds = grain.MapDataset.range(-(-len(images) // global_batch))
  ds = ds.map(_EvalBatch(images, global_batch, _process_slice(global_batch)))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))
