"""What a warm relaunch pays for the train step: compiling it, against loading it back as a
persistent-cache hit does (serialise, then deserialise N times), and how many thunks it has.

  python scripts/profile_cache_load.py --config configs/resnet152.py --config.model.image_size=224 \
      --config.train.batch_size=8 [--loads 2]

On XLA:CPU most of a load is rebuilding the dependency graph of the program's thunks, which
grows with the square of their number (docs/benchmarks.md). `thunks` counts the top-level
operations of the optimised program that run as one (fusions, convolutions, dots, copies...).
Prints a table, then one JSON line.
"""

import collections
import json
import re
import statistics
import time

import jax
from absl import flags
from ml_collections import config_flags

from jax_cifar import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags; registered only when run as a script, so importing this module
  (tests) never clashes with another module's --config in the same process."""
  config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
  flags.DEFINE_integer('loads', 2, 'How many times to load the serialised step.', lower_bound=1)
  flags.mark_flags_as_required(['config'])

# Entry-computation operations that are no thunk of their own.
_FREE = frozenset({'parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast'})


def thunk_counts(hlo_text: str) -> collections.Counter:
  """Top-level operations of the optimised program's entry computation, by kind."""
  entry = hlo_text[hlo_text.index('\nENTRY'):]
  entry = entry[:entry.index('\n}')]
  ops = collections.Counter()
  for line in entry.splitlines()[1:]:
    match = re.search(r'=\s*(?:\((?:[^()]|\([^()]*\))*\)|\S+)\s+([a-z][\w-]*)\(', line)
    if match and match.group(1) not in _FREE:
      ops[match.group(1)] += 1
  return ops


def profile(config, loads: int) -> dict:
  from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
  import jax_step  # pylint: disable=g-import-not-at-top  (scripts/, beside this file)
  compiled, _, _, info = jax_step.compile_jax(config)
  ops = thunk_counts(compiled.as_text())
  t0 = time.perf_counter()
  payload, in_tree, out_tree = serialize_executable.serialize(compiled)
  serialize_s = time.perf_counter() - t0
  load_s = []
  for _ in range(loads):
    t0 = time.perf_counter()
    serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    load_s.append(time.perf_counter() - t0)
  return {'compile_s': info['compile_s'], 'serialize_s': serialize_s, 'bytes': len(payload),
          'load_s': load_s, 'thunks': sum(ops.values()), 'thunk_kinds': dict(ops.most_common(8)),
          'backend': jax.default_backend()}


def main(argv):
  del argv
  import hostinfo  # pylint: disable=g-import-not-at-top  (scripts/, beside this file)
  result = {**profile(FLAGS.config, FLAGS.loads), 'machine': hostinfo.machine()}
  loads = result['load_s']
  print(f"machine: {hostinfo.describe(result['machine'])}\n"
        f"compile          {result['compile_s']:8.2f} s\n"
        f"serialise        {result['serialize_s']:8.2f} s ({result['bytes'] / 2**20:.1f} MiB)\n"
        f"load (cache hit) {statistics.median(loads) if loads else float('nan'):8.2f} s "
        f"(median of {len(loads)})\n"
        f"thunks           {result['thunks']:8d} "
        f"({', '.join(f'{k} {v}' for k, v in result['thunk_kinds'].items())})")
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  cli.run(main, define_flags=define_flags)  # (Help: status 0; a bad flag: one error line, 2.)
