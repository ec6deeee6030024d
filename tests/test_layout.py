"""The package's layout (docs/design.md): stage packages whose imports run one way, and the
held-out corruptions sharing no code with the training augmentations."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'jax_cifar'
ENTRY_POINTS = {'train', 'evaluate', '__main__', 'api', 'corrupt', 'report', 'submission'}


def _modules(prefix: str = '') -> list[str]:
  """Dotted names (below jax_cifar) of every module in the package or in one stage package."""
  out = []
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE).with_suffix('').parts
    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    if name and (not prefix or name == prefix or name.startswith(prefix + '.')):
      out.append(name)
  return out


def _exists(sub: str) -> bool:
  return ((PACKAGE / (sub.replace('.', '/') + '.py')).exists()
          or (PACKAGE / sub.replace('.', '/') / '__init__.py').exists())


def _imports(module: str) -> set[str]:
  """jax_cifar modules (dotted, below jax_cifar) that `module`'s source imports, in any form
  (function-level imports included)."""
  path = PACKAGE / (module.replace('.', '/') + '.py')
  if not path.exists():
    path = PACKAGE / module.replace('.', '/') / '__init__.py'
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and not node.level:
      names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    else:
      continue
    for name in names:
      if name and name.startswith('jax_cifar.'):
        sub = name[len('jax_cifar.'):]
        while sub and not _exists(sub):
          sub = sub.rpartition('.')[0]  # `from jax_cifar.m import name`: the module is m
        if sub:
          found.add(sub)
  return found


def _closure(modules) -> set[str]:
  seen, todo = set(), list(modules)
  while todo:
    m = todo.pop()
    if m not in seen:
      seen.add(m)
      todo.extend(_imports(m))
  return seen


def _in(names: set[str], stage: str) -> set[str]:
  return {n for n in names if n == stage or n.startswith(stage + '.')}


def test_the_parser_sees_real_imports():
  assert {'augment.pipeline', 'augment.augmix', 'augment.photometric'} <= set(_modules('augment'))
  assert _imports('augment.pipeline') >= {'augment.augmix', 'augment.photometric',
                                          'augment.jpeg', 'augment.resized_crop'}
  assert _imports('corruptions.corrupt') >= {'corruptions.ops', 'corruptions.store'}
  assert _imports('training.trainer') >= {'state', 'evaluation.inference'}


@pytest.mark.parametrize('stage', ['data', 'augment', 'models'])
def test_data_augmentation_and_models_know_nothing_of_runs(stage):
  reached = _closure(_modules(stage))
  for above in ('state', 'checkpoints', 'step_folders', 'workdir', 'evaluation', 'training', 'corruptions',
                *ENTRY_POINTS):
    assert not _in(reached, above), (stage, above, sorted(_in(reached, above)))


def test_state_and_evaluation_never_import_training_and_nothing_imports_an_entry_point():
  assert not _in(_closure(['state', 'checkpoints']), 'evaluation')
  assert not _in(_closure(['state', 'checkpoints'] + _modules('evaluation')), 'training')
  for module in _modules():
    if module not in ENTRY_POINTS:
      assert not _imports(module) & (ENTRY_POINTS - {'api'}), module


def test_training_augmentations_and_held_out_corruptions_share_no_code():
  """Neither side imports the other, directly or through another jax_cifar module."""
  assert not _in(_closure(_modules('augment')), 'corruptions')
  assert not _in(_closure(_modules('corruptions')), 'augment')
