"""README, docs/ and the code's comments name tests and files that exist, the commands in README's
and docs/' code blocks and inline code give only flags their tools have, and their links resolve.

README's bad-input table and docs/benchmarks.md point readers to the test that shows a behaviour
(`test_x.py::test_name`) and to modules and scripts by path. A test file split or a test renamed
had left such pointers to nothing, unnoticed: here each one must resolve. Likewise a flag renamed
or dropped would leave a documented command failing for whoever copies it.
"""

import ast
import functools
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEST_REF = re.compile(r'(?<![\w/])(?:tests/)?(test_\w+\.py)(?:::(\w+))?')
CONTINUED = re.compile(r'`::(\w+)`')  # `test_x.py::a`, `::b`: b is in test_x.py too.
PATH_REF = re.compile(r'(?<![\w/.-])((?:jax_cifar|scripts|configs|tests|docs)/[\w/.-]*\w'
                      r'\.(?:py|sh|md|json|toml|txt|png))\b')
PLACEHOLDERS = {'NAME', 'RUN', 'ARM', 'STEP', 'WORKDIR', 'TAG'}  # configs/NAME.py: an example.
MARKDOWN = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]


def _is_example(path: str) -> bool:
  """A path with a placeholder part (configs/NAME.py)."""
  return any(part.split('.')[0] in PLACEHOLDERS for part in pathlib.PurePath(path).parts)


def _prose(text: str) -> str:
  """`text` without its fenced code blocks."""
  return re.sub(r'```.*?```', '', text, flags=re.S)


@functools.cache
def _test_functions() -> dict[str, set[str]]:
  return {path.name: {node.name for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.FunctionDef)}
          for path in (ROOT / 'tests').glob('*.py')}


def broken_references(text: str, tests: dict[str, set[str]], root: pathlib.Path) -> list[str]:
  """Each test file, test function or repository path `text` names that does not exist, as
  'line N: what'. Paths with a placeholder part (configs/NAME.py) are examples."""
  out = []
  for number, line in enumerate(text.splitlines(), 1):
    current = None  # The test file named last, left of the match.
    refs = sorted([*TEST_REF.finditer(line), *CONTINUED.finditer(line)], key=lambda m: m.start())
    for match in refs:
      if match.re is CONTINUED:
        name, function = current, match.group(1)
      else:
        name, function = match.groups()
        current = name
      if name is None:
        out.append(f'line {number}: ::{function} names no test file before it on its line')
      elif name not in tests:
        if match.re is TEST_REF:
          out.append(f'line {number}: {name}')
      elif function and function not in tests[name]:
        out.append(f'line {number}: {name}::{function}')
    for match in PATH_REF.finditer(line):
      path = match.group(1)
      if not _is_example(path) and not TEST_REF.fullmatch(path) and not (root / path).exists():
        out.append(f'line {number}: {path}')
  return out


def _documents() -> list[pathlib.Path]:
  """README, docs/ and the product's code (the tests themselves name missing files on purpose)."""
  found = [*MARKDOWN, ROOT / '.ci' / 'run']
  for folder in ('jax_cifar', 'scripts', 'configs'):
    found += sorted(p for p in (ROOT / folder).rglob('*') if p.suffix in ('.py', '.sh'))
  return found


@pytest.mark.parametrize('document', _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_and_path_a_document_names_exists(document):
  assert broken_references(document.read_text(), _test_functions(), ROOT) == []


def test_a_missing_test_function_file_or_path_is_found():
  tests = {'test_a.py': {'test_one', 'test_two'}, 'test_c.py': {'test_x'}}
  text = ('| row | `test_a.py::test_one`, `::test_two`, `::test_three` |\n'
          '| row | `test_c.py::test_x`, `::test_two`, `test_a.py::test_two`, `::test_one` |\n'
          'see tests/test_b.py and test_a.py::test_gone\n'
          'jax_cifar/models/resnet.py, jax_cifar/no_such.py, configs/NAME.py\n'
          # Found by a review: these had passed.
          '`::test_one` alone; docs/no-such.md, configs/missing.json, docs/FAQ.md, docs/design.md.\n')
  assert broken_references(text, tests, ROOT) == [
      'line 1: test_a.py::test_three', 'line 2: test_c.py::test_two', 'line 3: test_b.py',
      'line 3: test_a.py::test_gone', 'line 4: jax_cifar/no_such.py',
      'line 5: ::test_one names no test file before it on its line', 'line 5: docs/no-such.md',
      'line 5: configs/missing.json', 'line 5: docs/FAQ.md']


FILE_NAME = re.compile(r'(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|sh))\b')


def unknown_file_names(text: str, root: pathlib.Path) -> list[str]:
  """Each .py/.sh name of `text` that is no file of the repository: README and docs/ write module
  paths inside the package without `jax_cifar/` (`evaluation/ood_sets.py`, `cli.py`), which
  PATH_REF does not see (an audit). A name resolves from the root, jax_cifar/ or a subpackage,
  scripts/, tests/, configs/ or .ci/. A path whose first folder is none of those is another
  project's (`jax/_src/xla_bridge.py`) and is left alone; a bare name is always checked."""
  folders = [root, root / 'jax_cifar', *sorted(p for p in (root / 'jax_cifar').iterdir()
                                                 if p.is_dir()),
             root / 'scripts', root / 'tests', root / 'configs', root / '.ci']
  ours = {folder.name for folder in folders[1:]}
  out = []
  for match in FILE_NAME.finditer(text):
    name = match.group(1)
    parts = pathlib.PurePath(name).parts
    elsewhere = len(parts) > 1 and parts[0] not in ours
    if not (_is_example(name) or elsewhere) and not any((f / name).exists() for f in folders):
      out.append(name)
  return out


def broken_links(text: str, folder: pathlib.Path) -> list[str]:
  """Each relative markdown link of `text` (a document in `folder`) whose file is missing, and
  each `#anchor` of the same document that no heading makes (docs/ link their files by name,
  which PATH_REF does not see: an audit)."""
  anchors = {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-')  # (A `# comment` in
             for h in re.findall(r'^#+ (.*)$', _prose(text), re.M)}  # a block is no heading.)
  out = []
  for target in re.findall(r'\]\(([^)\s]+)(?:\s+"[^"]*")?\)', text):
    if re.match(r'[a-z]+:', target):
      continue
    path, _, anchor = target.partition('#')
    if (path and not (folder / path).exists()) or (not path and anchor not in anchors):
      out.append(target)
  return out


@pytest.mark.parametrize('document', MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_a_document_resolves(document):
  assert broken_links(document.read_text(), document.parent) == []


@pytest.mark.parametrize('document', MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_name_a_document_gives_is_a_file_of_the_repository(document):
  assert unknown_file_names(document.read_text(), ROOT) == []


def test_a_file_name_without_its_folder_is_looked_up_in_the_package_and_the_top_folders():
  text = ('`evaluation/ood_sets.py`, `cli.py`, `_one_step.py`, `gpu_check.sh`, configs/NAME.py, '
          'jax/_src/xla_bridge.py; `evaluation/ood.py`, `no_such.py`, scripts/gone.sh, '
          'jax_cifar/x.pyc\n')
  assert unknown_file_names(text, ROOT) == ['evaluation/ood.py', 'no_such.py', 'scripts/gone.sh']


def test_a_broken_link_or_anchor_is_found(tmp_path):
  (tmp_path / 'here.png').write_bytes(b'')
  text = ('# Bad input: what happens\n![a](here.png) [b](gone.json) [c](#bad-input-what-happens) '
          '[d](#tests) [e](https://example.org/x) [f](here.png#top) [g](gone.md "a title")\n'
          '```bash\n# tests\n```\n')
  assert broken_links(text, tmp_path) == ['gone.json', '#tests', 'gone.md']


# A subcommand's flags are in its own --help (`submission check`'s had counted as known because
# the top-level help's text named them: a test audit).
TOOL = re.compile(r'(?:python3? (-m jax_cifar\.submission check|-m jax_cifar(?:\.\w+)+'
                  r'|scripts/measure_ood\.py (?:speed|rss)|scripts/\w+\.py)|(?<![\w/])(scripts/(?:gpu_pair|launch_slurm)\.sh))'
                  r'((?:[ \t]+(?!\||&&|;|#)\S+)*)')
# The shell scripts that hand their flags on, and to whom (their flags had gone unchecked).
FORWARDS = {'scripts/gpu_pair.sh': 'scripts/gpu_ood.py',
            'scripts/launch_slurm.sh': '-m jax_cifar.train'}


def commands_in(block: str) -> list[tuple[str, set[str]]]:
  """(tool, the --flags given to it) for each jax-cifar command of a shell block (--config.KEY
  overrides are the config's keys: test_every_config_key_named_exists)."""
  out, todo = [], [re.sub(r'\\\n\s*', ' ', block)]
  while todo:
    for match in TOOL.finditer(todo.pop()):
      # `launch_local.py ... -- python -m jax_cifar.train ...`: the rest is a command of its own.
      args, _, rest = f'{match.group(3)} '.partition(' -- ')
      todo.append(rest)
      args = re.sub('["\']', ' ', args)  # gpu_pair.sh "A's flags" "B's flags" COMMON...
      flags = {f.split('=')[0] for f in re.findall(r'(?<!\S)--[\w.-]+(?:=\S*)?', args)}
      tool = match.group(1) or FORWARDS[match.group(2)]
      out.append((tool, {f for f in flags if not f.startswith('--config.')}))
  return out


def inline_commands(text: str) -> list[str]:
  """The commands of `text`'s inline code spans (`python -m jax_cifar.evaluate --workdir DIR
  [--tta none|flip|shifts]`, over lines too), usage syntax made plain words: a flag in brackets
  had escaped the check (an audit)."""
  spans = re.findall(r'(?<!`)`([^`]*python[^`]*)`(?!`)', _prose(text))
  return [_plain_usage(span) for span in spans]


def _plain_usage(span: str) -> str:
  """A usage line as words: brackets and parentheses dropped, and `|` inside them (alternatives)
  too; a `|` outside them is a shell pipe, which ends the command."""
  out, depth = [], 0
  for char in span:
    depth += (char in '[(') - (char in '])')
    out.append(' ' if char in '[]()' or (char == '|' and depth > 0) else char)
  return re.sub(r'\s+', ' ', ''.join(out))


def documented_commands() -> dict[str, dict[str, set[str]]]:
  """{tool: {document: the --flags its commands in code blocks and inline spans give}}."""
  found = {}
  for doc in MARKDOWN:
    text = doc.read_text()
    for block in [*re.findall(r'```(?:bash|sh)?\n(.*?)```', text, re.S), *inline_commands(text)]:
      for tool, flags in commands_in(block):
        found.setdefault(tool, {}).setdefault(doc.name, set()).update(flags)
  return found


def test_flags_are_read_from_commands_as_a_shell_would():
  block = ('python -m jax_cifar.evaluate --workdir runs/a  --tta=shifts \\\n'
           '    --config.model.width=8 --bn_adapt  # not --a_comment\n'
           'python scripts/launch_local.py --num_processes 2 -- \\\n'
           '    python -m jax_cifar.train --workdir w | tee --not_a_flag\n'
           'sbatch --nodes=2 scripts/launch_slurm.sh configs/a.py runs/b --config.x=1 --seed 3\n'
           'X=1 bash scripts/gpu_pair.sh "--set a=1 --procs 4" "" --data d \\\n  --tools none\n')
  assert sorted(commands_in(block), key=lambda c: (c[0], len(c[1]))) == [
      ('-m jax_cifar.evaluate', {'--workdir', '--tta', '--bn_adapt'}),
      ('-m jax_cifar.train', {'--seed'}), ('-m jax_cifar.train', {'--workdir'}),
      ('scripts/gpu_ood.py', {'--set', '--procs', '--data', '--tools'}),
      ('scripts/launch_local.py', {'--num_processes'})]


def test_inline_commands_are_read_with_their_bracketed_and_alternative_flags():
  text = ('Run `python -m jax_cifar.evaluate --workdir DIR [--checkpoint best|latest]\n'
          '  [--tta none|flip] (--ood_dir D | --cifar100c_dir D)`, not ``python -m x``;\n'
          '`X=1 python -m jax_cifar.report runs/a --out r | jq --raw-output`\n'
          '```bash\npython -m jax_cifar.train --in_a_block\n```\n')
  assert inline_commands(text) == [
      'python -m jax_cifar.evaluate --workdir DIR --checkpoint best latest --tta none flip '
      '--ood_dir D --cifar100c_dir D ', 'X=1 python -m jax_cifar.report runs/a --out r | jq '
      '--raw-output']
  assert [commands_in(span) for span in inline_commands(text)] == [
      [('-m jax_cifar.evaluate', {'--workdir', '--checkpoint', '--tta', '--ood_dir',
                                  '--cifar100c_dir'})], [('-m jax_cifar.report', {'--out'})]]


def defined_flags(help_text: str) -> set[str]:
  """The flags a --help text defines: those at the head of its option lines (argparse's
  `  -o OUT, --out OUT  text`, absl's `  --[no]name: text`), not every --word of it (a flag dropped
  but still named in another's help had counted as known: a test audit)."""
  known = set()
  for line in help_text.splitlines():
    if re.match(r'  -', line):  # Two spaces: a continuation line is indented further.
      head = re.split(r'  |: ', line.strip(), maxsplit=1)[0]
      for no, name in re.findall(r'--(\[no\])?([\w-]+)', head):
        known |= {f'--{name}', f'--no{name}'} if no else {f'--{name}'}
  return known


def test_flags_defined_by_a_help_text_are_its_option_lines_heads():
  text = ('usage: x [-h] [--out OUT]\n\noptions:\n  -h, --help  show this help\n'
          '  --out OUT, --out-dir OUT\n                        where (not --gone)\n'
          '  --seeds SEEDS         seeds; see --also_not\n'
          '  --[no]bn_adapt: adapt; implies\n    --tent_like text\n  --tta: <none|flip>: views\n')
  assert defined_flags(text) == {'--help', '--out', '--out-dir', '--seeds', '--bn_adapt',
                                 '--nobn_adapt', '--tta'}


@pytest.mark.parametrize('tool, uses', sorted(documented_commands().items()))
def test_every_flag_a_documented_command_gives_exists(tool, uses):
  """A renamed or dropped flag leaves README's and docs/' commands failing for whoever copies
  them: each flag they give must be one the tool's --help lists."""
  out = subprocess.run([sys.executable, *tool.split()] + ['--help'], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  known = defined_flags(out.stdout)
  unknown = {doc: sorted(flags - known) for doc, flags in uses.items() if flags - known}
  assert not unknown, unknown


def named_parts(text: str) -> set[str]:
  """The parts of scripts/gpu_check.sh that `text` names: `PARTS="a b"`, the column of a table
  headed `PARTS=`, and prose's gpu_check.sh "parts `a` and `b`"."""
  found, in_table = set(), False
  for line in text.splitlines():
    in_table = line.startswith('|') and (in_table or '`PARTS=`' in line)
    if in_table:
      found.update(*(cell.split() for cell in re.findall(r'`"([\w ]+)"`', line)))
  for value in re.findall(r'PARTS=("[^"]*"|\'[^\']*\'|\w+)', text):
    found.update(value.strip('"\'').split())
  for names in re.findall(r'gpu_check\.sh`? parts? ((?:`\w+`(?:,|,? and)?\s*)+)', text):
    found.update(re.findall(r'`(\w+)`', names))
  return found


def test_parts_are_read_from_assignments_tables_and_prose():
  text = ('PARTS="a b" bash x; `PARTS=c` alone\n| call | `PARTS=` |\n| --- | --- |\n'
          '| one | `"d e"` |\n\nnot in a table: `"f"`; `scripts/gpu_check.sh` parts `g`, `h` and\n'
          '`i`, then part `j`. gpu_check.sh part `k`\n')
  assert named_parts(text) == set('abcdeghik')


def test_every_gpu_check_part_named_is_one_the_script_runs():
  """A renamed part of scripts/gpu_check.sh leaves the docs' device commands refused (it exits
  2 on an unknown part) or their prose pointing at nothing; its own list must be the parts it
  defines."""
  script = (ROOT / 'scripts' / 'gpu_check.sh').read_text()
  known = set(re.search(r'^KNOWN_PARTS="([^"]*)"', script, re.M).group(1).split())
  assert known == set(re.findall(r'^\s*(?:TAIL=\d+ )?part (\w+) ', script, re.M))
  texts = {path: path.read_text() for path in [*MARKDOWN, *(ROOT / 'scripts').glob('*.sh')]}
  named = {path.name: named_parts(text) for path, text in texts.items()}
  assert len(set().union(*named.values())) >= 8  # The pattern still finds them.
  unknown = {name: sorted(parts - known) for name, parts in named.items() if parts - known}
  assert not unknown, unknown


def config_keys_named(text: str, sections: list[str]) -> list[tuple[int, str]]:
  """(line, key) of each config key `text` may name: a --config.KEY= or --set KEY= override, or a
  `section.key` in backticks (which may be a module instead: is_a_module)."""
  alternatives = '|'.join(sections)
  override = re.compile(rf'(?:--config\.|--set[ =])((?:{alternatives})\.[\w.]+)=')
  ticked = re.compile(rf'`((?:{alternatives})\.[a-z_][\w.]*?)(?:=[^`]*)?`')
  return [(number, match.group(1)) for number, line in enumerate(text.splitlines(), 1)
          for match in [*override.finditer(line), *ticked.finditer(line)]]


def is_a_module(name: str) -> bool:
  """`optim.py` or `augment.pipeline.CROP_MODES`: a file or a module's attribute, no config key
  (asked only of names that are no key: `augment.augmix` is both)."""
  parts = name.split('.')
  return name.endswith('.py') or (ROOT / 'jax_cifar' / parts[0] / f'{parts[1]}.py').exists()


def test_every_config_key_named_exists():
  """README, docs/, the configs, scripts and the package's messages name config keys (as
  overrides to give, or in prose); a key renamed or dropped had left them naming nothing (a docs
  audit found no test of it)."""
  from jax_cifar.configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  sections = sorted(k for k, v in config.items() if hasattr(v, 'items'))

  def exists(key):
    node = config
    for part in key.split('.'):
      if not hasattr(node, 'items') or part not in node:
        return False
      node = node[part]
    return True

  files = [ROOT / 'README.md', *(ROOT / 'docs').glob('*.md'), *(ROOT / 'configs').glob('*.py'),
           *(ROOT / 'scripts').glob('*.py'), *(ROOT / 'scripts').glob('*.sh'),
           *(ROOT / 'jax_cifar').rglob('*.py')]
  named = {(path, number, key) for path in files
           for number, key in config_keys_named(path.read_text(), sections)}
  assert len(named) > 200  # The docs do name them: the patterns still find them.
  missing = sorted(f'{path.relative_to(ROOT)}:{number}: {key}'
                   for path, number, key in named if not exists(key) and not is_a_module(key))
  assert not missing, missing


def test_config_keys_are_found_in_overrides_and_backticks_modules_told_apart():
  text = ('python -m jax_cifar.train --config.optim.lr=1 --set augment.noise_prob=0.3\n'
          'see `ema.decay`, `data.eval_limit=0`, `augment.pipeline.CROP_MODES`, `optim.py`\n'
          'and model.name in prose, --config.augment.augmix=true\n')
  assert config_keys_named(text, ['augment', 'data', 'ema', 'model', 'optim']) == [
      (1, 'optim.lr'), (1, 'augment.noise_prob'), (2, 'ema.decay'), (2, 'data.eval_limit'),
      (2, 'augment.pipeline.CROP_MODES'), (2, 'optim.py'), (3, 'augment.augmix')]
  assert is_a_module('augment.pipeline.CROP_MODES') and is_a_module('optim.py')
  assert not is_a_module('ema.decay')


def _lower_bounds() -> dict[str, tuple[int, ...]]:
  """Package -> lower bound of every `name>=version` in pyproject.toml (extras included)."""
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  found = {}
  for req in project['dependencies'] + sum(project['optional-dependencies'].values(), []):
    if (m := re.match(r'([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?>=([0-9.]+)', req)):
      found[m.group(1).lower().replace('_', '-')] = tuple(int(v) for v in m.group(2).split('.'))
  return found


def test_readme_names_the_lower_bounds_pyproject_declares():
  """README's dependency range gives the oldest releases the suite passed with; they are
  pyproject.toml's lower bounds, so raising one without the other is found."""
  readme = (ROOT / 'README.md').read_text()
  oldest = readme[readme.index('- Dependency range:'):]
  oldest = oldest[oldest.index('lower bounds'):oldest.index('newest releases for Python 3.12')]
  named = {name: tuple(int(v) for v in version.split('.'))
           for name, version in re.findall(r'([a-z][a-z-]+)\s+(\d+(?:\.\d+)+)', oldest)}
  bounds = _lower_bounds()
  pad = lambda v: v + (0,) * (3 - len(v))
  assert {'jax', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'numpy', 'tensorflow-datasets',
          'torch', 'torchvision', 'scikit-image', 'wandb'} <= set(named), named
  assert {k: v for k, v in named.items() if pad(v) != pad(bounds.get(k, ()))} == {}, bounds
