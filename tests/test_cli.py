"""Command-line mistakes end with one `error:` line and status 2 (never a traceback); built-in
configs by name (`--config jax_cifar:NAME`); an unwritable checkpoints folder fails before
training."""

import ast
import errno
import gc
import json
import os
import pathlib
import subprocess
import sys

import pytest
from flax import traverse_util

from _train_cli import ROOT, TINY, the_error, train
from jax_cifar import cli, config_errors, starting
from jax_cifar.configs import default

BUILTIN = sorted(p.stem for p in (ROOT / 'jax_cifar' / 'configs').glob('*.py')
                 if not p.stem.startswith('_'))


def _usage_error(out) -> str:
  return the_error(out, status=2)


def test_misspelled_override_key_is_named(tmp_path):
  line = _usage_error(train(tmp_path / 'run', '--config.model.nmae=resnet18'))
  assert line == ("error: --config.model.nmae: the config has no key 'nmae'; did you mean "
                  '--config.model.name? (jax_cifar/configs/default.py lists every key, with what '
                  'it does)'), line  # Names the flag and suggests the key (no exception name).
  assert not (tmp_path / 'run').exists()
  line = _usage_error(train(tmp_path / 'run', '--config.trian.batch_size=64'))  # A section.
  assert line.startswith("error: --config.trian.batch_size: the config has no key 'trian'; did "
                         'you mean --config.train.batch_size?'), line
  # A PyTorch script's name, and a key in another section (no suggestion had come: a review).
  for given, meant in (('optim.learning_rate', 'optim.lr'), ('train.epochs', 'train.num_epochs'),
                       ('train.label_smoothing', 'optim.label_smoothing'),
                       ('train.lr', 'optim.lr')):
    line = _usage_error(train(tmp_path / 'run', f'--config.{given}=1'))
    assert line.startswith(f"error: --config.{given}: the config has no key "
                           f"'{given.split('.')[-1]}'; did you mean --config.{meant}? "), line
  assert 'did you mean' not in _usage_error(train(tmp_path / 'run', '--config.optim.zzz=1'))


def test_a_common_name_is_suggested_in_its_own_section_and_never_for_a_section_or_an_ambiguous_key(
    tmp_path):
  """`arch` is `name` in model, optim and wandb: model.arch means model.name, train.arch none of
  them; an unknown section is never mapped to a key (--config.lr.x is not optim.lr). Every name of
  the table is a key's (a mutation audit: the same-section lookup, the one-match rule and the
  last-key guard could each be dropped with every test passing)."""
  keys = {path[-1] for path in traverse_util.flatten_dict(default.get_config().to_dict())}
  assert not set(config_errors.COMMON_NAMES.values()) - keys
  line = _usage_error(train(tmp_path / 'run', '--config.model.arch=resnet18'))
  assert line.startswith("error: --config.model.arch: the config has no key 'arch'; did you mean "
                         '--config.model.name? '), line
  for given, name in (('train.arch', 'arch'), ('lr.x', 'lr')):
    line = _usage_error(train(tmp_path / 'run', f'--config.{given}=1'))
    assert line == (f"error: --config.{given}: the config has no key '{name}' (jax_cifar/configs/"
                    'default.py lists every key, with what it does)'), line
  assert not (tmp_path / 'run').exists()


def test_first_line_of_a_config_error_drops_nested_quotes_and_search_paths():
  """A KeyError's repr is `'key'` (quoted) and config_flags wraps a missing file in the paths it
  tried: the line keeps the key and the OS error alone (a mutation audit: dropping the unquoting
  passed every test)."""
  assert config_errors.first_line(KeyError('seed')) == 'KeyError: seed'
  assert config_errors.first_line(AttributeError("'nmae'")) == 'AttributeError: nmae'
  assert config_errors.first_line(ValueError("'")) == "ValueError: '"
  assert config_errors.first_line(OSError(
      'Failed loading config file c\n  Attempted [Relative path]:\n    c.py\n      [Errno 2] No '
      "such file or directory: 'c.py'")) == "OSError: [Errno 2] No such file or directory: 'c.py'"
  assert config_errors.first_line(KeyError()) == 'KeyError'


def test_an_override_given_twice_is_named_with_the_value_used():
  argv = ['train', '--config', 'c.py', '--config.optim.lr=0.1', '--config.seed', '3',
          '--config.optim.lr', '0.2', '--config.seed=4', '--config.train.resume=false']
  assert cli.repeated_overrides(argv) == [
      '--config.optim.lr is given 2 times (0.1, 0.2): the last one, 0.2, is used',
      '--config.seed is given 2 times (3, 4): the last one, 4, is used']
  assert cli.repeated_overrides(argv[:5]) == []
  assert cli.repeated_overrides(['--config.seed', '-1', '--config.seed=', '--config.x.on',
                                 '--config.x.on', '--config.seed']) == [
      "--config.seed is given 3 times (-1, '', (no value)): the last one, (no value), is used",
      '--config.x.on is given 2 times ((no value), (no value)): the last one, (no value), is used']


def test_overrides_change_the_last_workdirs_config_and_leave_a_given_config_alone():
  """Overrides without --config load the run of the last --workdir (the one absl uses); with
  --config, argv is kept as given."""
  seen = []
  argv = ['evaluate', '--workdir', 'a', '--workdir=b', '--config.seed=1']
  out = cli.run_config_overrides(argv, seen.append)
  assert seen == ['b'] and out == [argv[0], f'--config={cli._RUN_CONFIG}:b', *argv[1:]]
  for given in (['--config', 'c.py'], ['--config=c.py']):
    argv = ['evaluate', *given, '--workdir', 'w', '--config.seed=1']
    assert cli.run_config_overrides(argv, seen.append) == argv and seen == ['b']


def test_override_of_a_key_with_no_close_match_names_the_flag(tmp_path):
  # (optim.learning_rate, the example before, now gets optim.lr: test_misspelled_override_key_...)
  line = _usage_error(train(tmp_path / 'run', '--config.optim.qqq_rate=0.1'))
  assert line == ("error: --config.optim.qqq_rate: the config has no key 'qqq_rate' "
                  '(jax_cifar/configs/default.py lists every key, with what it does)'), line
  assert not (tmp_path / 'run').exists()


def test_override_value_of_the_wrong_type_is_named(tmp_path):
  line = _usage_error(train(tmp_path / 'run', '--config.train.max_steps=abc'))
  assert 'train.max_steps' in line and 'abc' in line, line


@pytest.mark.parametrize('source, expected', [
    ('def get_config(:\n  pass\n', 'SyntaxError'),
    ('import ml_collections\n\ndef make_config():\n  return ml_collections.ConfigDict()\n',
     'my_config.py: the file defines no get_config()'),
    ('def get_config():\n  return {"seed": 1}\n',  # Had been a traceback (an audit).
     "my_config.py: its get_config() returns a dict, not an ml_collections.ConfigDict"),
    ('def get_config():\n  return [1]\n', "its get_config() returns a list, not an"),
    ('def get_config():\n  config = 1\n', 'its get_config() returns None, not an'),
])
def test_config_file_that_does_not_load_is_named(tmp_path, source, expected):
  path = tmp_path / 'my_config.py'
  path.write_text(source)
  line = _usage_error(train(tmp_path / 'run', config=str(path), overrides={}))
  assert expected in line, line


@pytest.mark.parametrize('overrides', [None, {}], ids=['with_overrides', 'alone'])
def test_missing_config_file_is_named(tmp_path, overrides):
  """Alone, config_flags loads the file only when first used: still one error line, status 2."""
  missing = tmp_path / 'no_such_config.py'
  line = _usage_error(train(tmp_path / 'run', config=str(missing), overrides=overrides))
  assert str(missing) in line and os.strerror(errno.ENOENT) in line, line
  assert 'jax_cifar:' not in line, line  # No packaged config of that name to point to.
  assert not (tmp_path / 'run').exists()


def test_a_missing_config_file_named_as_a_packaged_one_points_to_it(tmp_path):
  """configs/smoke.py given from outside the repository: the packaged smoke config works from any
  folder as jax_cifar:smoke."""
  for given in ('smoke.py', 'smoke.py:arg'):  # (A ':' of a file that is not there: no ':' hint.)
    line = _usage_error(train(tmp_path / 'run', config=str(tmp_path / 'configs' / given),
                              overrides={}))
    assert line.endswith('(the packaged config of that name, from any folder: --config '
                         'jax_cifar:smoke)'), line


def test_a_config_file_with_a_colon_in_its_path_says_why_it_was_not_found(tmp_path):
  """config_flags reads `--config FILE:ARGUMENT`: a folder named `a:b` cut the path there, and the
  error named only the cut path (a file that was not the user's)."""
  path = tmp_path / 'a:b' / 'my_config.py'
  path.parent.mkdir()
  path.write_text((ROOT / 'configs' / 'smoke.py').read_text())
  line = _usage_error(train(tmp_path / 'run', config=str(path), overrides={}))
  assert f'the ":" in {path} ends the file name at {tmp_path / "a"}' in line, line
  assert not (tmp_path / 'run').exists()


def test_a_mistyped_config_flag_of_a_first_launch_is_named_not_taken_for_a_resume(tmp_path):
  """`--confg FILE` for a new run had read "--config is not given, and the run in --workdir cannot
  be resumed", the typo never named (a flag audit)."""
  line = _usage_error(train(tmp_path / 'new', '--confg', 'configs/smoke.py', config=None,
                            overrides={}))
  assert "Unknown command line flag 'confg'. Did you mean: config" in line, line
  assert not (tmp_path / 'new').exists()


def test_no_flags_asks_for_the_workdir_alone_and_single_dash_flags_are_read_as_absl_does(tmp_path):
  """With no flags, absl had asked for --config too, which a resume leaves out, in its own words
  twice over; `-workdir RUN -config.KEY=V` (absl takes one dash) had been "overrides need --config
  FILE before them" (a flag audit)."""
  assert _usage_error(train(None, config=None, overrides={})) == (
      'error: --workdir is required (--helpshort lists the flags)')
  for known in ('-config.train.max_steps=2', '--noalsologtostderr'):  # (A boolean's --noNAME.)
    line = _usage_error(train(None, f'-workdir={tmp_path / "gone"}', known, config=None,
                              overrides={}))
    assert line.startswith('error: --config is not given, and the run in --workdir cannot be '
                           f'resumed with its own config ({tmp_path / "gone"} does not exist'), line


@pytest.mark.parametrize('module', ['train', 'evaluate'])
def test_dash_h_is_help_as_in_the_other_commands(module):
  """`train -h` had been "Unknown command line flag 'h'", status 2; every argparse command and
  PyTorch scripts take -h (a flag audit)."""
  out = subprocess.run([sys.executable, '-m', f'jax_cifar.{module}', '-h'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 0 and '--workdir' in out.stdout + out.stderr, out.stderr[-2000:]


def test_missing_workdir_flag_is_named(tmp_path):
  assert '--workdir' in _usage_error(train(None, config='configs/smoke.py', overrides={}))
  # --workdir= (an unset shell variable) had trained into the current folder (an audit).
  out = train(None, '--workdir=', config=str(ROOT / 'configs' / 'smoke.py'), overrides={},
              cwd=tmp_path)
  assert '--workdir is empty' in _usage_error(out) and not list(tmp_path.iterdir())


def test_a_second_config_file_is_named_not_called_a_flag_defined_twice(tmp_path):
  line = _usage_error(train(tmp_path / 'run', '--config', 'configs/smoke.py'))
  assert line.startswith('error: --config is given 2 times (configs/default.py, configs/smoke.py)')


def test_what_a_flag_file_holds_is_checked_as_the_command_line_is(tmp_path):
  """train read --flagfile only inside absl's parsing, after the checks: a second --config in a
  flag file met absl's "defined twice", and a missing flag file was absl's ERROR:: text."""
  (tmp_path / 'flags').write_text('--config=configs/smoke.py\n')
  line = _usage_error(train(tmp_path / 'run', f'--flagfile={tmp_path / "flags"}'))
  assert line.startswith('error: --config is given 2 times (configs/default.py, configs/smoke.py)')
  line = _usage_error(train(tmp_path / 'run', f'--flagfile={tmp_path / "nope"}'))
  assert line.startswith('error: Unable to open flagfile: ') and 'nope' in line, line
  assert not (tmp_path / 'run').exists()


def test_builtin_config_path_is_the_packaged_file():
  path = pathlib.Path(cli.builtin_config_path('default'))
  assert path == ROOT / 'jax_cifar' / 'configs' / 'default.py' and 'default' in BUILTIN
  with pytest.raises(ValueError, match='built-in configs: ' + ', '.join(BUILTIN)):
    cli.builtin_config_path('nope')
  with pytest.raises(ValueError, match="no built-in config '__init__'"):
    cli.builtin_config_path('__init__')  # Package internals are not configs.


@pytest.mark.parametrize('flag', [('--config', 'jax_cifar:default'),
                                  ('--config=jax_cifar:default',)])
def test_builtin_config_loads_from_any_directory(tmp_path, flag):
  # A bad lr fails validation, after the config loaded and took the override: no training needed.
  out = train(tmp_path / 'run', *flag, '--config.optim.lr=-3', config=None, overrides={},
              cwd=tmp_path, env={**os.environ, 'PYTHONPATH': str(ROOT)})
  line = the_error(out)
  assert "'optim.lr' must be in" in line and 'got -3' in line, line
  assert default.get_config().optim.lr > 0  # So the -3 came from the override.


def test_a_builtin_configs_argument_is_passed_on():
  """jax_cifar:NAME:ARG is the packaged file with ml_collections' :ARG for its get_config(ARG),
  in both flag forms (a mutation audit: dropping ARG passed every test)."""
  path, resolve = cli.builtin_config_path, cli._resolve_builtin  # pylint: disable=protected-access
  assert resolve(['train', '--config', 'jax_cifar:default:a', '--workdir', 'w']) == [
      'train', '--config', f"{path('default')}:a", '--workdir', 'w']
  assert resolve(['train', '--config=jax_cifar:smoke:b,c']) == [
      'train', f"--config={path('smoke')}:b,c"]
  assert resolve(['train', '--workdir', 'jax_cifar:smoke']) == [
      'train', '--workdir', 'jax_cifar:smoke']  # Only --config's value is a config's name.


def test_unknown_builtin_config_lists_the_builtin_ones(tmp_path):
  line = _usage_error(train(tmp_path / 'run', config='jax_cifar:nope', overrides={}))
  assert "no built-in config 'nope'" in line and 'built-in configs: ' + ', '.join(BUILTIN) in line


def test_unwritable_checkpoints_folder_fails_before_training_naming_the_os_cause(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'checkpoints').write_text('a file where the checkpoints folder belongs\n')
  out = train(workdir, '--config.train.max_steps=3')
  line = the_error(out)
  assert f'{workdir / "checkpoints"}' in line and os.strerror(errno.EEXIST) in line, line
  assert 'disk full' not in line
  assert not (workdir / 'metrics.jsonl').exists()  # No step was trained.
  assert not (workdir / 'config.json').exists()


def test_unwritable_latest_checkpoint_folder_fails_before_training(tmp_path):
  """checkpoints/latest itself unusable: named at start, not after training (then a 5-min hang)."""
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'checkpoints' / 'latest').write_text('not a folder\n')
  out = train(workdir, '--config.train.max_steps=3', '--config.checkpoint.every_steps=2')
  line = the_error(out)
  assert f'{workdir / "checkpoints" / "latest"}' in line and 'disk full' not in line, line
  assert not (workdir / 'metrics.jsonl').exists()


def test_evaluate_names_a_missing_config_file_too(tmp_path):
  missing = tmp_path / 'no_such_config.py'
  out = subprocess.run([sys.executable, '-m', 'jax_cifar.evaluate', '--config', str(missing),
                        '--workdir', str(tmp_path / 'run')], cwd=ROOT, capture_output=True,
                       text=True, check=False)
  line = _usage_error(out)
  assert str(missing) in line and os.strerror(errno.ENOENT) in line, line


def test_stray_words_and_empty_paths_are_named_not_ignored(tmp_path):
  """`--bn_adapt false` had turned the adaptation on and dropped `false`; a second CSV path, an
  empty --ood_dir (an unset shell variable) were dropped too, exit status 0 (an audit)."""
  def evaluate(*args):
    return subprocess.run([sys.executable, '-m', 'jax_cifar.evaluate', '--workdir',
                           str(tmp_path / 'run'), *args], cwd=ROOT, capture_output=True, text=True,
                          check=False)
  assert _usage_error(evaluate('--bn_adapt', 'false')) == (
      "error: unexpected argument 'false': a yes/no flag takes no separate value: write "
      '--bn_adapt, --nobn_adapt or --bn_adapt=false')
  assert _usage_error(evaluate('--nobn_adapt', 'true')) == (  # The --noFLAG form too (a mutation
      "error: unexpected argument 'true': a yes/no flag takes no separate value: write "  # audit).
      '--bn_adapt, --nobn_adapt or --bn_adapt=true')
  assert '--ood_dir is empty: give the folder of distortion00.npy' in _usage_error(evaluate(
      '--ood_dir='))
  line = _usage_error(train(tmp_path / 'run', 'a.csv', 'b.csv', config='configs/smoke.py',
                            overrides={}))
  assert line.startswith("error: unexpected arguments 'a.csv' 'b.csv': each flag takes one value")
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('command, other, typed', [
    ('report', ['-m', 'jax_cifar.report'], 'python -m jax_cifar.report'),
    ('corrupt', ['-m', 'jax_cifar.corrupt'], 'python -m jax_cifar.corrupt'),
    ('submission', ['-m', 'jax_cifar.submission'], 'python -m jax_cifar.submission'),
    ('prepare_tfds', ['-m', 'jax_cifar.data.prepare_tfds'], 'python -m jax_cifar.data.prepare_tfds'),
    ('convert', ['scripts/convert_torchvision_weights.py'], 'convert_torchvision_weights.py'),
    ('convert', ['-m', 'jax_cifar.convert'], 'python -m jax_cifar.convert'),
    # (It had exited 0 without a word, converting nothing: a flag audit.)
    ('convert', ['-m', 'jax_cifar.convert_cli'], 'python -m jax_cifar.convert')])
def test_argparse_usage_names_the_command_as_it_was_typed(command, other, typed):
  """`jax-cifar report --help` had said `usage: python -m jax_cifar.report`, and `jax-cifar
  prepare_tfds` `usage: prepare_tfds.py`: each names the command the user typed."""
  for argv, typed in ((['-m', 'jax_cifar', command], f'jax-cifar {command}'), (other, typed)):
    out = subprocess.run([sys.executable, *argv, '--help'], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith(f'usage: {typed} '), out.stdout + out.stderr


def test_overrides_without_a_config_file_say_what_they_need(tmp_path):
  """evaluate's overrides change the run's own config.json (test_trainer's smoke-run test uses
  them): a folder without one, or no --workdir, is named. train's need a config file."""
  def evaluate(*args):
    return subprocess.run([sys.executable, '-m', 'jax_cifar.evaluate', *args,
                           '--config.train.eval_batch_size=200'], cwd=ROOT, capture_output=True,
                          text=True, check=False)
  for flag in ('--workdir', '-workdir'):  # (One dash, as absl reads it: a flag audit.)
    assert _usage_error(evaluate(flag, str(tmp_path))) == (
        "error: --config.KEY=VALUE overrides change the run's own config: "
        f'{tmp_path}/config.json not found: is {tmp_path} a jax-cifar run directory?')
  assert _usage_error(evaluate()) == (
      'error: --config.KEY=VALUE overrides without --config change the config of the run in '
      '--workdir, which is not given')
  (tmp_path / 'flags').write_text(f'--workdir={tmp_path}\n')  # Read as absl reads it (a review).
  assert _usage_error(evaluate(f'--flagfile={tmp_path / "flags"}')) == (
      "error: --config.KEY=VALUE overrides change the run's own config: "
      f'{tmp_path}/config.json not found: is {tmp_path} a jax-cifar run directory?')
  line = _usage_error(train(tmp_path / 'run', config=None, overrides={'train.batch_size': 8}))
  assert line.startswith('error: --config is not given, and the run in --workdir cannot be resumed '
                         'with its own config ('), line
  assert line.endswith('to start a run, give --config FILE (configs/NAME.py, or jax_cifar:NAME)')
  assert not (tmp_path / 'run').exists()


def test_a_relaunch_with_only_the_workdir_resumes_the_run_with_its_own_config(tmp_path):
  """A relaunch had needed the first launch's --config and every override again; without them it
  was "--config must have a value", or a refused change (a new-user walkthrough: a timed-out
  notebook session). Without --config the run's config.json is the config, overrides change it."""
  first = train(tmp_path / 'run', '--config.train.max_steps=3',
                '--config.train.allow_config_change=true')
  assert first.returncode == 0, first.stderr[-3000:]
  again = train(tmp_path / 'run', config=None, overrides={'train.max_steps': 5})
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resumed from step 3.' in again.stderr and 'Done at step 5' in again.stderr
  assert ('(5 of 12 steps: train.max_steps; relaunch with a larger one to go on)'
          in again.stderr), again.stderr[-3000:]
  assert 'changed' not in again.stderr, again.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'launches.jsonl').read_text().splitlines()]
  assert [r['start_step'] for r in rows] == [0, 3]
  # What the first launch was allowed is not allowed again (train.allow_config_change, and
  # train.resume, start from their defaults: the diff review).
  assert rows[1]['changed'] == {'train.max_steps': [3, 5], 'train.allow_config_change': [True, False]}
  assert rows[1]['config'] == {**rows[0]['config'], 'train': {
      **rows[0]['config']['train'], 'max_steps': 5, 'allow_config_change': False}}
  line = the_error(train(tmp_path / 'run', config=None, overrides={'optim.lr': 0.5}))
  assert 'optim.lr 0.001 -> 0.5' in line and 'allow_config_change=true' in line, line
  assert 'without --config' not in line  # (No --config was given.)
  # The change is the override's, not the file's: the file is not blamed (the diff review).
  line = the_error(train(tmp_path / 'run', overrides={**TINY, 'optim.lr': 0.5}))
  assert 'optim.lr 0.001 -> 0.5' in line and 'without --config' not in line, line
  # A --config file that differs from the run's own (a shipped config updated since the run began,
  # as resnet34.py's grad_clip_norm was) names the relaunch that goes on without it: the refusal
  # had offered only a fresh run or allow_config_change, which switches the recipe mid-run (an
  # upgrade review).
  changed = tmp_path / 'shipped.py'
  changed.write_text('from jax_cifar.configs import default\n\n\ndef get_config():\n'
                     '  c = default.get_config()\n  c.optim.lr = 0.5\n  return c\n')
  line = the_error(train(tmp_path / 'run', config=str(changed), overrides={
      **TINY, 'train.max_steps': 5}))
  assert 'optim.lr 0.001 -> 0.5' in line, line
  assert (f"This launch's config is --config {changed}, which may itself have changed since the "
          f'run began') in line
  assert f"`--workdir {tmp_path / 'run'}` without --config resumes" in line
  # A value of the run's own config.json that this version refuses (a limit added since) says
  # where it comes from and how to change it (an upgrade review).
  config_json = tmp_path / 'run' / 'config.json'
  saved = json.loads(config_json.read_text())
  config_json.write_text(json.dumps({**saved, 'data': {**saved['data'], 'prefetch': 100}}))
  line = the_error(train(tmp_path / 'run', config=None, overrides={}))
  assert line == ("error: config key 'data.prefetch' must be in [0, 64], got 100 (this launch's "
                  f"config is the run's own, {tmp_path / 'run'}/config.json, with any "
                  '--config.KEY=VALUE given on top: a value it holds is changed so)')
  assert train(tmp_path / 'run', config=None, overrides={'data.prefetch': 2}).returncode == 0
  # Asked for help, with a --workdir that holds no run: absl's help, not an error (a review).
  out = train(tmp_path / 'new', '--help', config=None, overrides={})
  assert out.returncode == 0 and '--workdir' in out.stdout and not (tmp_path / 'new').exists()


@pytest.mark.parametrize('body, expected', [
    ('c.optim.lr = 1e-3 * batch_size / 128', "NameError: name 'batch_size' is not defined"),
    ('c.optim.lr = 1e-3 / 0', 'ZeroDivisionError'),
    ('c.train.batch_size = "128"', "TypeError: Could not override field 'batch_size'"),
])
def test_config_file_whose_code_raises_is_one_line_naming_the_file_and_line(tmp_path, body,
                                                                             expected):
  """Errors of the config's own code (config_flags reports some as a flags.Error holding the whole
  traceback) are one line: the exception and where in the user's file it was raised."""
  path = tmp_path / 'my_config.py'
  path.write_text('from jax_cifar.configs import default\n\n\ndef get_config():\n'
                  f'  c = default.get_config()\n  {body}\n  return c\n')
  out = train(tmp_path / 'run', config=str(path), overrides={})
  line = _usage_error(out)
  assert expected in line and f'({path}, line 6)' in line, line  # the_error: no traceback.
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('module', ['jax_cifar.train', 'jax_cifar.evaluate'])
def test_a_runs_config_json_given_as_config_is_refused_with_what_to_give(tmp_path, module):
  (tmp_path / 'run').mkdir()
  config_json = tmp_path / 'run' / 'config.json'
  config_json.write_text('{"model": {"name": "simple_cnn", "pretrained": false}}')
  out = subprocess.run([sys.executable, '-m', module, '--config', str(config_json), '--workdir',
                        str(tmp_path / 'run')], cwd=ROOT, capture_output=True, text=True,
                       check=False)
  line = _usage_error(out)
  assert f'not {config_json}' in line and 'configs/*.py' in line, line


def test_train_and_evaluate_modules_import_together_and_keep_their_own_flags(tmp_path):
  """A notebook that imports jax_cifar.train and jax_cifar.evaluate (for evaluate()) in one process
  met absl's DuplicateFlagError (both define --config and --workdir at import); each command's
  flags are registered when it runs, and both commands still parse theirs."""
  code = ('import jax_cifar.train, jax_cifar.evaluate; from absl import flags; '
          'print(sorted(f for f in ("config", "workdir", "tta") if f in flags.FLAGS))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0 and proc.stdout.split() == ['[]'], proc.stderr[-2000:]
  for module, flag in (('jax_cifar.train', '--workdir'), ('jax_cifar.evaluate', '--tta')):
    helpshort = subprocess.run([sys.executable, '-m', module, '--helpshort'], cwd=ROOT,
                               capture_output=True, text=True, check=False)
    assert flag in helpshort.stdout, helpshort.stderr[-2000:]  # (absl exits 1 after --helpshort)


@pytest.mark.parametrize('module', ['train', 'evaluate'])
def test_help_exits_0_and_names_the_packaged_configs(module):
  """absl ends --help with status 1, which scripts read as a failure (an audit); a wheel user
  needs the jax_cifar:NAME form, which the help had not named."""
  out = subprocess.run([sys.executable, '-m', f'jax_cifar.{module}', '--help'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and '--workdir' in out.stdout + out.stderr, out.stderr[-2000:]
  assert 'jax_cifar:NAME' in out.stdout + out.stderr


def test_only_a_help_flags_status_1_becomes_0():
  """absl's --help exits 1 and becomes 0; a status 1 of the command itself stays 1 (a mutation
  audit: turning every status 1 into 0 passed every test, since no command of jax-cifar exits 1
  through absl today)."""
  code = ('import sys\n'
          'from jax_cifar import cli\n'
          'def main(argv):\n'
          '  raise SystemExit(1)\n'
          'cli.run(main, define_flags=lambda: None)\n')
  for args, status in (([], 1), (['--help'], 0)):
    out = subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == status, (args, out.stderr[-2000:])



def test_the_commands_defer_full_garbage_collections_while_starting():
  """Tracing a model makes many objects, and each full collection walks them all (2.2-2.5 s of a
  ResNet-152 launch): the commands raise only that threshold, for their process."""
  code = ('import gc\n'
          'gc.set_threshold(700, 10, 10)\n'
          'from jax_cifar import cli\n'
          'def main(argv):\n'
          '  print(gc.get_threshold())\n'
          'cli.run(main, define_flags=lambda: None)\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=True)
  assert ast.literal_eval(out.stdout) == (700, 10, starting.FULL_COLLECTION_THRESHOLD)


def test_the_usual_thresholds_come_back_once_and_only_where_they_were_deferred():
  suite = gc.get_threshold()
  try:
    gc.set_threshold(500, 7, 9)
    starting.collect_as_usual()  # Not deferred: nothing to give back.
    assert gc.get_threshold() == (500, 7, 9)
    starting.defer_full_collections()
    starting.defer_full_collections()  # Twice: the usual ones are still the first call's.
    assert gc.get_threshold() == (500, 7, starting.FULL_COLLECTION_THRESHOLD)
    starting.collect_as_usual()
    assert gc.get_threshold() == (500, 7, 9)
    gc.set_threshold(600, 8, 8)
    starting.collect_as_usual()  # Given back once only.
    assert gc.get_threshold() == (600, 8, 8)
  finally:
    gc.set_threshold(*suite)


def test_training_and_evaluate_collect_as_usual_once_past_their_start(tmp_path, monkeypatch):
  """The deferral is for the launch's tracing and compiling; the steps after the first, for hours,
  collect as CPython does (cycles that hold host copies of the state are not kept for long), and
  so does an evaluation once its model is restored."""
  import _tiny_run  # pylint: disable=import-outside-toplevel
  from jax_cifar import evaluate  # pylint: disable=import-outside-toplevel
  from jax_cifar.evaluation import inference  # pylint: disable=import-outside-toplevel
  from jax_cifar.training import trainer  # pylint: disable=import-outside-toplevel
  config = _tiny_run.config()
  config.train.max_steps = 3  # (64 images at batch 32: two steps an epoch.)
  config.train.num_epochs = 2
  seen, compile_step = [], trainer.compile_train_step

  def spying(*args, **kwargs):
    step = compile_step(*args, **kwargs)
    return lambda *a: seen.append(gc.get_threshold()) or step(*a)

  monkeypatch.setattr(trainer, 'compile_train_step', spying)
  load_predictor = inference.load_predictor
  monkeypatch.setattr(inference, 'load_predictor', lambda *a, **k: (
      seen.append(gc.get_threshold()), load_predictor(*a, **k))[1])
  suite = gc.get_threshold()
  try:
    gc.set_threshold(700, 10, 10)
    starting.defer_full_collections()
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
    deferred, usual = (700, 10, starting.FULL_COLLECTION_THRESHOLD), (700, 10, 10)
    assert seen == [deferred, usual, usual]
    starting.defer_full_collections()
    evaluate.evaluate(config, str(tmp_path / 'run'))
    assert seen[3:] == [deferred] and gc.get_threshold() == usual
  finally:
    starting.collect_as_usual()
    gc.set_threshold(*suite)
