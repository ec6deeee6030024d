"""`jax-cifar COMMAND ...` (or `python -m jax_cifar COMMAND ...`): one entry point for every tool.

Each command runs the module's own command line, so `jax-cifar train --config jax_cifar:smoke
--workdir runs/smoke` is `python -m jax_cifar.train --config jax_cifar:smoke --workdir runs/smoke`.
"""

import importlib
import runpy
import sys

COMMANDS = {
    'train': ('jax_cifar.train', 'train a config into a workdir (resumes)'),
    'evaluate': ('jax_cifar.evaluate', 'test accuracy, OOD submission, CIFAR-100-C, test-time tools'),
    'convert': ('jax_cifar.convert_cli', 'torchvision weights -> a model.pretrained checkpoint'),
    'corrupt': ('jax_cifar.corruptions.cli', 'a labelled 19 x 5 corrupted set (test or val split)'),
    'submission': ('jax_cifar.evaluation.submission', 'check a submission CSV'),
    'report': ('jax_cifar.evaluation.report', 'curves and a summary of several runs'),
    'prepare_tfds': ('jax_cifar.data.prepare_tfds', 'build tfds cifar100 for data.source=tfds'),
}
# argparse commands: their main(argv) is called, so that their usage line says `jax-cifar NAME`
# (run as __main__, sys.argv[0] would become the module's file).
ARGPARSE = ('jax_cifar.convert_cli', 'jax_cifar.evaluation.report', 'jax_cifar.data.prepare_tfds',
            'jax_cifar.corruptions.cli', 'jax_cifar.evaluation.submission')


def main() -> None:
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    width = max(map(len, COMMANDS)) + 1
    lines = [f'  {name:{width}s} {help_}' for name, (_, help_) in COMMANDS.items()]
    print('usage: jax-cifar COMMAND [ARGS...]  (COMMAND --help for its flags)\n\ncommands:\n'
          + '\n'.join(lines), file=sys.stderr)
    bad = len(sys.argv) >= 2 and sys.argv[1] not in ('-h', '--help')
    if bad:
      print(f'\nerror: unknown command {sys.argv[1]!r}', file=sys.stderr)
    sys.exit(2 if bad or len(sys.argv) < 2 else 0)
  module = COMMANDS[sys.argv[1]][0]
  sys.argv = [f'jax-cifar {sys.argv[1]}'] + sys.argv[2:]
  if module in ARGPARSE:
    command = importlib.import_module(module)
    if hasattr(command, 'run_as_command'):  # (The converter's exit: convert_cli.run_as_command.)
      command.run_as_command(sys.argv[1:])
    sys.exit(command.main(sys.argv[1:]))
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
