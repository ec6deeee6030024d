"""What a resume may change: the rules of resume_rules.check_resume and relaunch's config comparison,
config.json read back, and launches.jsonl's rows, without training (the launches themselves are
in test_workdir.py)."""

import json
import os
import re
import subprocess
import sys

import jax
import pytest

from _train_cli import ROOT
from jax_cifar import code_digest, optim, resume_rules
from jax_cifar import workdir as workdir_lib
from jax_cifar.configs import default
from jax_cifar.training import relaunch
from conftest import TOO_LARGE


def test_config_changes_lists_differences_with_both_values():
  old = {'optim': {'lr': 0.1, 'name': 'sgd'}, 'augment': {'rrc_scale': [0.35, 1.0]}, 'x': 1}
  new = {'optim': {'lr': 0.2, 'name': 'sgd'}, 'augment': {'rrc_scale': (0.35, 1.0)}, 'y': 2}
  assert resume_rules.config_changes(old, new) == {
      'optim.lr': (0.1, 0.2), 'x': (1, None), 'y': (None, 2)}  # A tuple equals its JSON list.
  assert resume_rules.config_changes(new, new) == {}


def _check_resume(changes, **kwargs):
  """check_resume as relaunch calls it: the launch's flat config is the default one with the
  changes' new values."""
  new = workdir_lib.flatten(default.get_config().to_dict())
  new.update(kwargs.pop('unchanged', {}))
  new.update({k: after for k, (_, after) in changes.items()})
  return resume_rules.check_resume(changes, workdir=kwargs.pop('workdir', 'runs/a'), new=new,
                                  **kwargs)


def test_check_resume_lets_safe_keys_pass_silently():
  changes = {'train.max_steps': (2, 3), 'train.log_every_steps': (1, 5), 'wandb.mode': (
      'disabled', 'offline'), 'wandb.tags': ([], ['a']), 'data.dir': ('/a', '/b'),
      # Read at step 0 only: the converted weights moved, or the flag was dropped on resume.
      'model.pretrained': ('weights/resnet50', '/scratch/weights/resnet50'),
      'model.init_from': ('', 'runs/other'),
      'data.source': ('local', 'tfds')}  # Where the data lives: the same images, same order.
  assert _check_resume(changes, allow=False, epoch=1.0) == []


@pytest.mark.parametrize('key, before, after', [
    ('optim.lr', 0.001, 0.002), ('train.batch_size', 32, 64), ('optim.weight_decay', 1e-4, 5e-4),
    ('seed', 0, 1), ('data.train_limit', 0, 500), ('augment.mixup_alpha', 0.0, 0.2),
    ('data.dirty', 0, 1),  # Not 'data.dir': safe keys match whole names only.
    ('data.source', 'local', 'synthetic'), ('data.source', 'synthetic', 'tfds'),
])
def test_check_resume_refuses_trajectory_changes_unless_allowed(key, before, after):
  changes = {key: (before, after), 'train.max_steps': (2, 3)}
  with pytest.raises(workdir_lib.WorkdirError, match=rf'{key} {before!r} -> {after!r}'):
    _check_resume(changes, allow=False, epoch=1.0)
  assert _check_resume(changes, allow=True, epoch=1.0) == [key]
  # (A change of what the checkpoints hold, e.g. model.width, is refused even when allowed: below.)


@pytest.mark.parametrize('key, before, after, way', [
    ('ema.decay', 0.0, 0.9, 'init_from=runs/a'), ('ema.decay', 0.99, 0.0, 'init_from=runs/a'),
    ('optim.name', 'adamw', 'sgd', 'init_from=runs/a'),
    ('model.num_classes', 100, 10, 'init_from=runs/a'),  # A new head: init_from takes it.
    ('model.width', 8, 16, 'a different model starts a new run in a fresh --workdir'),
    # The optimizer's state gains or loses a part (a review): a clipping step, two parameter
    # groups (optax.multi_transform).
    ('optim.grad_clip_norm', 1.0, 0.0, 'init_from=runs/a'),
    ('optim.backbone_lr_mult', 1.0, 0.1, 'init_from=runs/a'),
    ('optim.freeze_backbone_steps', 0, 100, 'init_from=runs/a')])
def test_a_refused_change_of_what_checkpoints_hold_names_the_way_that_works(key, before, after,
                                                                             way):
  """Such a change had been told to pass allow_config_change, which then failed at the restore
  with "cannot carry over" (an audit)."""
  with pytest.raises(workdir_lib.WorkdirError) as e:
    _check_resume({key: (before, after), 'optim.lr': (0.1, 0.2)}, allow=False,
                             epoch=1.0, workdir='runs/a')
  message = str(e.value)
  assert f'{key} {before!r} -> {after!r}' in message and 'optim.lr 0.1 -> 0.2' in message
  assert f'{key} changes what the run\'s checkpoints hold' in message and way in message, message
  assert 'pass --config.train.allow_config_change' not in message, message
  for same_state in ({'ema.decay': (0.9, 0.99)}, {'optim.grad_clip_norm': (1.0, 2.0)},
                     {'optim.backbone_lr_mult': (0.1, 0.2)},
                     {'optim.backbone_lr_mult': (0.1, 1.0), 'optim.freeze_backbone_steps': (0, 5)},
                     {'optim.momentum': (0.9, 0.0)}):  # (AdamW's: inert.)
    # The flag for the command line, the key for Python (train_and_evaluate; an audit).
    with pytest.raises(workdir_lib.WorkdirError, match=r'allow_config_change=true to apply .*in '
                       r'Python: config\.train\.allow_config_change = True\)$'):
      _check_resume(same_state, allow=False, epoch=1.0)
  with pytest.raises(workdir_lib.WorkdirError, match='optim.momentum changes what'):  # SGD's trace.
    _check_resume({'optim.momentum': (0.9, 0.0)}, allow=False, epoch=1.0,
                  unchanged={'optim.name': 'sgd'})


def test_check_resume_names_every_refused_key():
  changes = {'optim.lr': (0.1, 0.2), 'model.name': ('resnet18', 'resnet34')}
  with pytest.raises(workdir_lib.WorkdirError) as e:
    _check_resume(changes, allow=False, epoch=0.5)
  assert 'optim.lr 0.1 -> 0.2' in str(e.value)
  assert "model.name 'resnet18' -> 'resnet34'" in str(e.value)


def test_check_resume_num_epochs_may_grow_but_not_end_before_the_current_epoch():
  assert _check_resume({'train.num_epochs': (2, 3)}, allow=False, epoch=1.5) == [
      'train.num_epochs']
  assert _check_resume({'train.num_epochs': (3, 2)}, allow=False, epoch=1.5) == [
      'train.num_epochs']  # Shorter, but still ahead of the run: a notable change.
  with pytest.raises(workdir_lib.WorkdirError, match='already at epoch 2.50'):
    _check_resume({'train.num_epochs': (3, 2)}, allow=False, epoch=2.5)
  with pytest.raises(workdir_lib.WorkdirError, match='already at epoch'):
    _check_resume({'train.num_epochs': (3, 2)}, allow=True, epoch=2.5)


def test_keys_added_since_an_older_run_count_as_their_defaults():
  """A run saved before a key existed (e.g. `ema`) resumes: the key had its default value then."""
  new = json.loads(json.dumps(default.get_config().to_dict(), default=str))
  old = {k: v for k, v in new.items() if k != 'ema'}
  assert resume_rules.config_changes(old, new) == {}
  new['ema']['decay'] = 0.999  # ... but a real change to a new key is still one.
  assert resume_rules.config_changes(old, new) == {'ema.decay': (0.0, 0.999)}


def test_flatten_dots_nested_keys_and_turns_tuples_into_json_lists():
  assert workdir_lib.flatten({'a': {'b': (1, 2), 'c': {'d': 'x'}, 'e': {}}, 'f': [3]}) == {
      'a.b': [1, 2], 'a.c.d': 'x', 'f': [3]}


def test_run_config_reads_config_json_back_with_tuples_and_defaults_for_missing_keys(tmp_path):
  config = default.get_config()
  config.optim.lr, config.augment.rrc_scale, config.ema.decay = 0.05, (0.5, 0.9), 0.99
  saved = json.loads(json.dumps(config.to_dict()))
  del saved['ema']  # A run from before `ema` existed.
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(saved))
  loaded = workdir_lib.run_config(tmp_path)
  assert loaded.optim.lr == 0.05 and loaded.augment.rrc_scale == (0.5, 0.9)
  assert loaded.ema.decay == default.get_config().ema.decay
  config.ema.decay = loaded.ema.decay
  assert loaded == config


@pytest.mark.parametrize('edit, message', [
    (lambda c: c['model'].update(width='wide'), 'does not fit the config'),
    (lambda c: c.update(gone={'x': {'y': 1}}), 'does not fit the config'),
    (lambda c: c['optim'].update(learning_rate=0.1), "unknown config key 'optim.learning_rate'"),
    # A bad value: the file is named too (it had been only "config key 'model.name' must be ...").
    (lambda c: c['model'].update(name='resnet-18'), r"config\.json: config key 'model\.name' must be"),
    # A section that is not an object had been "unknown config key 'model'" (an audit).
    (lambda c: c.update(model=None), r"config\.json: its 'model' section is null, not an object"),
])
def test_run_config_refuses_a_config_json_that_does_not_fit_naming_it(tmp_path, edit, message):
  saved = json.loads(json.dumps(default.get_config().to_dict()))
  edit(saved)
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(saved))
  with pytest.raises((workdir_lib.WorkdirError, ValueError), match=message):
    workdir_lib.run_config(tmp_path)


def test_a_launch_row_after_a_torn_one_is_a_line_of_its_own(tmp_path):
  """A full disk had torn launches.jsonl's last row, and the next launch's row was appended to
  it, so neither could be read (an audit); the failed write named no file."""
  (tmp_path / 'launches.jsonl').write_text('{"start_step": 0, "config": {"se')
  workdir_lib.record_launch(tmp_path, {'seed': 1}, 3, {})
  lines = (tmp_path / 'launches.jsonl').read_text().splitlines()
  assert len(lines) == 2 and json.loads(lines[1])['start_step'] == 3
  code = ('import resource, pathlib, sys\n'
          'from jax_cifar import errors, workdir\n'
          'resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n'
          'try:\n'
          f'  workdir.record_launch(pathlib.Path({str(tmp_path)!r}), {{"x": "y" * 8192}}, 4, {{}})\n'
          'except OSError as e:\n'
          '  print(errors.user_message(e))\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
  assert out.stdout.strip() == f'{tmp_path / "launches.jsonl"}: {TOO_LARGE}', (
      out.stdout, out.stderr[-2000:])


@pytest.mark.parametrize('optimizer', ['adamw', 'sgd'])
def test_a_resume_lets_a_key_its_optimizer_ignores_change_and_refuses_one_it_uses(tmp_path,
                                                                                 optimizer):
  """The relaunch's own comparison (relaunch.check_config_change drops keys that do nothing under
  both launches' configs): AdamW's run had been refused a resume for optim.momentum 0.9 -> 0.5,
  which AdamW ignores; under SGD it is refused, naming that it changes the optimizer's state
  only when momentum goes to or from 0."""
  from jax_cifar.training import relaunch  # pylint: disable=import-outside-toplevel
  before = default.get_config()
  before.optim.name = optimizer
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(before.to_dict(), default=str))
  for momentum in (0.5, 0.0):
    after = default.get_config()
    after.optim.name, after.optim.momentum = optimizer, momentum
    if optimizer == 'adamw':
      assert relaunch.check_config_change(after, tmp_path, 5, 10, 100) == {}
      continue
    with pytest.raises(workdir_lib.WorkdirError) as e:
      relaunch.check_config_change(after, tmp_path, 5, 10, 100)
    assert f'optim.momentum 0.9 -> {momentum}' in str(e.value)
    assert ("changes what the run's checkpoints hold" in str(e.value)) == (momentum == 0.0)


def test_a_relaunch_cannot_end_the_schedule_before_the_epoch_it_resumes_at(tmp_path):
  """check_config_change computes the epoch reached from the resumed step: 36 steps of 6 is
  epoch 6, so num_epochs 10 -> 5 is refused and 10 -> 20 allowed."""
  old = default.get_config()
  old.train.num_epochs = 10
  (tmp_path / 'config.json').write_text(json.dumps(old.to_dict(), default=str))
  new = default.get_config()
  new.train.num_epochs = 5
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'train\.num_epochs 10\.0 -> 5\.0: the run is already at epoch 6\.00'):
    relaunch.check_config_change(new, tmp_path, start_step=36, steps_per_epoch=6, total_steps=30)
  new.train.num_epochs = 20
  assert relaunch.check_config_change(new, tmp_path, start_step=36, steps_per_epoch=6,
                                      total_steps=120) == {'train.num_epochs': (10.0, 20.0)}


@pytest.mark.parametrize('num_epochs', [8.0, 5.0])
def test_a_relaunch_with_another_batch_size_words_the_old_schedule_in_its_own_steps(
    tmp_path, caplog, num_epochs):
  """Batch 128 -> 64 on 10,000 images at step 200: 78 steps per epoch before, 156 after. The old
  schedule's end and rate had been computed with the new batch's 156 ("ends at step 780 (was
  624)" for 8 -> 5 epochs, where it had ended at 624 = 8 x 78, by luck), and a batch change alone
  said nothing of the schedule or of the epoch the run then counts from (a review)."""
  old = default.get_config()
  old.train.num_epochs, old.train.batch_size = 8.0, 128
  (tmp_path / 'config.json').write_text(json.dumps(old.to_dict(), default=str))
  new = default.get_config()
  new.train.num_epochs, new.train.batch_size, new.train.allow_config_change = num_epochs, 64, True
  total = int(num_epochs * 156)
  with caplog.at_level('WARNING'):
    relaunch.check_config_change(new, tmp_path, 200, 156, total, num_train=10_000)
  said = [r.getMessage() for r in caplog.records]
  old_rate = float(optim.make_optimizer(old.optim, 624, 78)[1](200))
  new_rate = float(optim.make_optimizer(new.optim, total, 156)[1](200))
  assert abs(old_rate - new_rate) > 0.01 * old_rate  # (The test can tell them apart.)
  assert (f'The schedule now ends at step {total} (was 624): the learning rate at step 200 is '
          f'{new_rate:.3g} (was {old_rate:.3g}).') in said, said
  assert ('train.batch_size 128 -> 64: step 200 counts as epoch 1.28 from here (it was epoch '
          '2.56); the schedule and the data order follow the new batch size.') in said, said
  caplog.clear()  # The same images read from tfds instead: the same steps per epoch.
  new.data.source = 'tfds'  # (The run's config.json says 'local'.)
  with caplog.at_level('WARNING'):
    relaunch.check_config_change(new, tmp_path, 200, 156, total, num_train=10_000)
  assert any('(was 624)' in r.getMessage() for r in caplog.records), caplog.records
  # With the training set's size changed too, the old schedule is not known here: not guessed.
  caplog.clear()
  new.data.train_limit = 5_000
  with caplog.at_level('WARNING'):
    relaunch.check_config_change(new, tmp_path, 200, 78, int(num_epochs * 78), num_train=5_000)
  said = [r.getMessage() for r in caplog.records]
  rate = float(optim.make_optimizer(new.optim, int(num_epochs * 78), 78)[1](200))
  assert (f'The schedule now ends at step {int(num_epochs * 78)}: the learning rate at step 200 '
          f'is {rate:.3g}.') in said, said
  assert not [m for m in said if '(was' in m or '(it was' in m], said


def test_an_allowed_change_of_what_checkpoints_hold_is_refused_before_any_note_naming_only_it(
    tmp_path, caplog):
  """allow_config_change with another model had logged a note for every change, then failed at
  the restore blaming every change (data.eval_limit, optim.lr, ...) as altering the checkpoints
  (a review). It is refused at the comparison, naming the model keys alone."""
  old = default.get_config()
  (tmp_path / 'config.json').write_text(json.dumps(old.to_dict(), default=str))
  new = default.get_config()
  new.model.name, new.model.width, new.optim.lr = 'resnet34', 32, 0.5
  new.data.eval_limit, new.train.allow_config_change = 1000, True
  with caplog.at_level('WARNING'), pytest.raises(workdir_lib.WorkdirError) as e:
    relaunch.check_config_change(new, tmp_path, 100, 10, 300)
  message = str(e.value)
  assert message.startswith("this launch's config does not match the run's checkpoints: "
                            "model.name 'resnet18' -> 'resnet34'; model.width 64 -> 32 change "
                            'what they hold'), message
  assert 'optim.lr' not in message and 'eval_limit' not in message, message
  assert message.endswith('a different model starts a new run in a fresh --workdir'), message
  assert not caplog.records, [r.getMessage() for r in caplog.records]
  # A new head alone: one key, and the way on from this run's weights.
  new = default.get_config()
  new.model.num_classes, new.train.allow_config_change = 10, True
  with pytest.raises(workdir_lib.WorkdirError, match=r"model\.num_classes 100 -> 10 changes what "
                     r'they hold .*: undo it, or start a new run from this one\'s weights'):
    relaunch.check_config_change(new, tmp_path, 100, 10, 300)


def test_the_epoch_a_relaunch_resumes_at_counts_the_part_of_an_epoch_done(tmp_path):
  """Step 39 of 6 per epoch is epoch 6.5, not 6: num_epochs 10 -> 6.2 would end the schedule
  before the step the run resumes at (floor division passed the test above: a mutation audit)."""
  old = default.get_config()
  old.train.num_epochs = 10
  (tmp_path / 'config.json').write_text(json.dumps(old.to_dict(), default=str))
  new = default.get_config()
  new.train.num_epochs = 6.2
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'train\.num_epochs 10\.0 -> 6\.2: the run is already at epoch 6\.50'):
    relaunch.check_config_change(new, tmp_path, start_step=39, steps_per_epoch=6, total_steps=37)


def test_the_old_schedule_of_an_allowed_relaunch_is_computed_with_the_old_optimizer_settings(
    tmp_path, caplog):
  """optim.lr 0.1 -> 0.2 with num_epochs 8 -> 10 (allowed): the "(was ...)" rate is the previous
  launch's, under its own lr, not the new lr on the old length (it had unpacked each optim
  change's (old, new) as (_, before): the "old" schedule ran on the new values, a mutation audit)."""
  old = default.get_config()
  old.train.num_epochs = 8.0
  (tmp_path / 'config.json').write_text(json.dumps(old.to_dict(), default=str))
  new = default.get_config()
  new.train.num_epochs, new.train.allow_config_change = 10.0, True
  new.optim.lr = old.optim.lr * 2
  with caplog.at_level('WARNING'):
    relaunch.check_config_change(new, tmp_path, 200, 78, 780)
  said = [r.getMessage() for r in caplog.records]
  old_rate = float(optim.make_optimizer(old.optim, 624, 78)[1](200))
  new_rate = float(optim.make_optimizer(new.optim, 780, 78)[1](200))
  assert (f'The schedule now ends at step 780 (was 624): the learning rate at step 200 is '
          f'{new_rate:.3g} (was {old_rate:.3g}).') in said, said


def test_a_key_that_acts_under_the_new_config_only_is_a_change_of_the_relaunch(tmp_path):
  """Only keys inert under both launches' configs are dropped: optim.end_lr_factor does nothing
  under a constant schedule, but under the new cosine one it shapes the decay, so an allowed
  relaunch reports (and launches.jsonl records) it (a mutation audit: a union of the inert keys
  had passed)."""
  old = default.get_config()
  old.optim.schedule = 'constant'
  (tmp_path / 'config.json').write_text(json.dumps(old.to_dict(), default=str))
  new = default.get_config()
  new.optim.schedule, new.train.allow_config_change = 'cosine', True
  new.optim.end_lr_factor = old.optim.end_lr_factor + 0.01
  assert new.optim.name == 'adamw'
  new.optim.momentum = 0.5  # SGD's: inert under both launches' AdamW, so dropped.
  changes = relaunch.check_config_change(new, tmp_path, 100, 10, 300)
  assert set(changes) == {'optim.schedule', 'optim.end_lr_factor', 'train.allow_config_change'}, changes


def test_a_resume_with_other_jax_cifar_code_says_so_and_each_launch_records_its_code(tmp_path,
                                                                                     caplog):
  """An upgrade between a stop and its resume had gone unsaid, and launches.jsonl did not record
  which code ran (an upgrade audit): the version string stays 0.1.0 between releases, so the
  record is code_digest's version + digest of the package's sources."""
  config = default.get_config()
  (tmp_path / 'config.json').write_text(json.dumps(config.to_dict(), default=str))
  workdir_lib.record_launch(tmp_path, json.loads(json.dumps(config.to_dict(), default=str)), 0, {})
  now = code_digest.code_version()
  assert re.fullmatch(r'\S+\+[0-9a-f]{12}', now), now
  rows = [json.loads(l) for l in (tmp_path / 'launches.jsonl').read_text().splitlines()]
  assert rows[-1]['jax_cifar'] == now

  def said():
    return [r.getMessage() for r in caplog.records if 'jax-cifar code' in r.getMessage()]
  with caplog.at_level('WARNING'):
    relaunch.check_config_change(config, tmp_path, 100, 10, 300)
  assert not said()  # The same code.
  for recorded, shown in (('0.1.0+0123456789ab', '0.1.0+0123456789ab'),
                          (None, 'a version that recorded none')):
    rows[-1] = {k: v for k, v in rows[-1].items() if k != 'jax_cifar'}
    if recorded:
      rows[-1]['jax_cifar'] = recorded
    (tmp_path / 'launches.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows)
                                             + '{"torn')  # A torn last row: the one before counts.
    caplog.clear()
    with caplog.at_level('WARNING'):
      relaunch.check_config_change(config, tmp_path, 100, 10, 300)
    assert said() == [f'Resuming at step 100 with other jax-cifar code than the launch before '
                      f'({shown} -> {now}): the run goes on, but is not bit-exact with one that '
                      "ran on either code (launches.jsonl records each launch's)."], said()
  # A launch of the new code that failed at step 100 before its first save trained none of the
  # steps resumed from: the launch before it did, with the old code (a review).
  (tmp_path / 'launches.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in (
      {**rows[-1], 'jax_cifar': '0.1.0+0123456789ab'},
      {**rows[-1], 'start_step': 100, 'jax_cifar': now})))
  caplog.clear()
  with caplog.at_level('WARNING'):
    relaunch.check_config_change(config, tmp_path, 100, 10, 300)
  assert len(said()) == 1 and '(0.1.0+0123456789ab -> ' in said()[0], said()


def test_a_resume_on_another_number_of_devices_says_it_is_not_bit_exact(tmp_path, caplog):
  """2 or 4 devices against 1 gave other weights after 30 smoke steps (22-24 % of their movement:
  the sums across devices in another order), and a resume on another device count said nothing
  and recorded nothing (an elastic-resume review). Each launch records its devices and processes;
  a resume on another device count says so."""
  config = default.get_config()
  relaunch.record_launch(config, tmp_path, 0, {}, False, {})
  rows = [json.loads(l) for l in (tmp_path / 'launches.jsonl').read_text().splitlines()]
  assert (rows[-1]['devices'], rows[-1]['processes']) == (jax.device_count(), jax.process_count())

  def said():
    return [r.getMessage() for r in caplog.records if 'devices' in r.getMessage()]
  with caplog.at_level('WARNING'):
    relaunch.check_config_change(config, tmp_path, 100, 10, 300)
  assert not said()  # The same devices.
  n, p = jax.device_count(), jax.process_count()
  for row, was in (({**rows[-1], 'devices': n + 3}, (n + 3, p)),
                   ({**rows[-1], 'processes': p + 1}, (n, p + 1)),  # (2 x 2 against 1 x 4 too.)
                   ({k: v for k, v in rows[-1].items() if k != 'devices'}, None),  # (Older.)
                   ({**rows[-1], 'devices': True}, None)):  # (Hand-edited: not a count.)
    (tmp_path / 'launches.jsonl').write_text(json.dumps(row) + '\n')
    caplog.clear()
    with caplog.at_level('WARNING'):
      relaunch.check_config_change(config, tmp_path, 100, 10, 300)
    assert said() == ([] if was is None else [
        f'Resuming at step 100 on {n} devices in {p} process(es); the launch before ran on '
        f'{was[0]} in {was[1]}: the same data and random draws, but the sums across devices are '
        'made in another order, so the run is not bit-exact with one that stayed as it was '
        "(launches.jsonl records each launch's devices and processes)."]), said()


def test_a_resume_with_other_cpu_threads_xla_options_or_scan_blocks_says_it_is_not_bit_exact(
    tmp_path, caplog, monkeypatch):
  """One CPU core against two (taskset, a cgroup's cpuset, Slurm's --cpus-per-task), XLA's own CPU
  options against jax-cifar's, and a scanned step against an unrolled one each gave other weights
  from the steps after a resume, without a word (a determinism review). Each launch on CPU
  devices records its CPU threads and options; a resume with others says so."""
  config = default.get_config()
  (tmp_path / 'config.json').write_text(json.dumps(config.to_dict(), default=str))
  monkeypatch.delenv('JAX_CIFAR_XLA_DEFAULTS', raising=False)
  # The CPUs the process may use (its affinity: taskset, a cpuset), not the machine's: three of
  # them here, whatever the machine has (a mutation audit: os.cpu_count() passed on CI machines).
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 5, 7}, raising=False)
  relaunch.record_launch(config, tmp_path, 0, {}, False, {})
  rows = [json.loads(l) for l in (tmp_path / 'launches.jsonl').read_text().splitlines()]
  threads = 3
  assert (rows[-1]['cpu_threads'], rows[-1]['xla_defaults']) == (threads, False)

  def said():
    return [r.getMessage() for r in caplog.records if 'not bit-exact' in r.getMessage()]
  with caplog.at_level('WARNING'):
    relaunch.check_config_change(config, tmp_path, 100, 10, 300)
  assert not said()  # The same CPUs and options.
  for row, defaults, differ in (
      ({**rows[-1], 'cpu_threads': threads + 2}, '0', f'CPU threads {threads + 2} -> {threads}'),
      (rows[-1], '1', 'JAX_CIFAR_XLA_DEFAULTS False -> True'),
      ({k: v for k, v in rows[-1].items() if k != 'cpu_threads'}, '0', None),  # (Older rows.)
      ({**rows[-1], 'cpu_threads': True}, '0', None)):  # (Hand-edited: not a count.)
    (tmp_path / 'launches.jsonl').write_text(json.dumps(row) + '\n')
    monkeypatch.setenv('JAX_CIFAR_XLA_DEFAULTS', defaults)
    caplog.clear()
    with caplog.at_level('WARNING'):
      relaunch.check_config_change(config, tmp_path, 100, 10, 300)
    assert said() == ([] if differ is None else [
        f'Resuming at step 100 with {differ} than the launch before: XLA:CPU splits its work and '
        'orders its sums by these, so the run is not bit-exact with one that stayed as it was '
        "(launches.jsonl records each launch's)."]), said()
  monkeypatch.setenv('JAX_CIFAR_XLA_DEFAULTS', '0')
  (tmp_path / 'launches.jsonl').write_text(json.dumps(rows[-1]) + '\n')
  new = default.get_config()
  new.model.scan_blocks = True
  caplog.clear()
  with caplog.at_level('WARNING'):
    assert 'model.scan_blocks' in relaunch.check_config_change(new, tmp_path, 100, 10, 300)
  assert said() == ['Resuming with model.scan_blocks False -> True: the same parameters, but a '
                    'scanned step sums in another order than an unrolled one, so the run is not '
                    'bit-exact with one that kept it.'], said()


def test_the_old_schedule_of_a_fractional_epoch_count_ends_at_its_whole_steps(tmp_path, caplog):
  """1.16 epochs of 25 steps are 29 steps; int(1.16 * 25) is 28 (a test audit: the relaunch's
  own arithmetic had been left untested)."""
  old = default.get_config()
  old.train.num_epochs, old.train.batch_size = 1.16, 128
  (tmp_path / 'config.json').write_text(json.dumps(old.to_dict(), default=str))
  new = default.get_config()
  new.train.num_epochs, new.train.batch_size, new.train.allow_config_change = 2.0, 64, True
  with caplog.at_level('WARNING'):
    relaunch.check_config_change(new, tmp_path, 20, 50, 100, num_train=3_200)
  assert any('The schedule now ends at step 100 (was 29)' in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_the_way_on_quotes_the_run_folder_for_the_shell():
  """Pasted, `--config.model.init_from=/tmp/my run` had been split at the space (a message
  review)."""
  assert resume_rules.way_on(['optim.name'], '/tmp/my run').endswith(
      "--workdir NEW --config.model.init_from='/tmp/my run'")
