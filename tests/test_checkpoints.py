"""Damaged checkpoints: named, skipped for the newest intact step on resume, never deleted."""

import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jax_cifar import checkpoints, optim, parallel, step_folders, tracking
from jax_cifar.training import trainer
from jax_cifar import state as state_lib
from jax_cifar import workdir as workdir_lib
from jax_cifar.configs import default


def _config(max_steps: int):
  c = default.get_config()
  c.data.source, c.data.synthetic_size, c.data.val_fraction = 'synthetic', 320, 0.2
  c.model.name = 'simple_cnn'  # Checkpoint mechanics: the quickest model to compile.
  c.train.batch_size, c.train.eval_batch_size, c.train.num_epochs = 32, 64, 2
  c.train.log_every_steps, c.train.max_steps, c.checkpoint.every_steps = 3, max_steps, 3
  return c


@pytest.fixture(scope='module')
def run9(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp('run9')
  trainer.train_and_evaluate(_config(9), str(workdir))
  assert sorted(p.name for p in (workdir / 'checkpoints' / 'latest').iterdir()) == ['6', '9']
  return workdir


def _damage(step_dir: pathlib.Path, how: str) -> None:
  arrays = [p for p in (step_dir / 'default').rglob('*') if p.is_file() and '/d/' in str(p)]
  biggest = max(arrays, key=lambda p: p.stat().st_size)
  if how == 'empty':
    biggest.write_bytes(b'')
  elif how == 'truncated':
    biggest.write_bytes(biggest.read_bytes()[:100])
  elif how == 'missing_array_file':
    biggest.unlink()
  elif how == 'no_array_folder':  # A partly copied run folder (read as "another model" before).
    shutil.rmtree(step_dir / 'default' / 'd')
  elif how == 'no_metadata':
    (step_dir / 'default' / '_METADATA').unlink()
  elif how in ('truncated_metadata', 'truncated_manifest'):  # Read as "another model" before.
    path = step_dir / 'default' / ('_METADATA' if how == 'truncated_metadata' else 'manifest.ocdbt')
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _listing(workdir: pathlib.Path) -> dict:
  return {str(p.relative_to(workdir)): p.stat().st_size
          for p in (workdir / 'checkpoints').rglob('*') if p.is_file()}


def _target():
  c = _config(0)
  tx, _ = optim.make_optimizer(c.optim, 1, 1)
  return state_lib.init_state(c, tx, parallel.make_mesh())[0]


@pytest.mark.parametrize('how', ['empty', 'truncated', 'missing_array_file', 'no_array_folder',
                                 'no_metadata', 'truncated_metadata', 'truncated_manifest'])
def test_damaged_latest_step_is_named_and_kept(run9, tmp_path, how):
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  _damage(workdir / 'checkpoints' / 'latest' / '9', how)
  before = _listing(workdir)
  with pytest.raises(checkpoints.CheckpointError, match=r'damaged checkpoint .*step 9 '):
    checkpoints.Checkpoints(workdir, create=False).restore('latest', _target())
  state, step = checkpoints.Checkpoints(workdir, create=False).restore(
      'latest', _target(), fallback=True)
  assert step == 6 and int(state.step) == 6
  assert _listing(workdir) == before  # Nothing deleted or rewritten.


def test_resume_skips_a_damaged_step_with_a_warning_and_trains_on(run9, tmp_path, caplog):
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  _damage(workdir / 'checkpoints' / 'latest' / '9', 'empty')
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(_config(12), str(workdir))
  assert any('Damaged checkpoint step 9' in r.getMessage() and 'restored step 6' in r.getMessage()
             for r in caplog.records)
  rows = tracking.read_metrics(workdir)
  assert [r['step'] for r in rows if 'train_loss' in r] == [3, 6, 9, 12]  # 7-9 retrained once.
  assert (workdir / 'checkpoints' / 'latest' / '12').is_dir()
  assert np.isfinite([r['train_loss'] for r in rows if 'train_loss' in r]).all()


def test_a_resumed_run_saves_the_damaged_step_again_and_keeps_the_damaged_copy(run9, tmp_path):
  # Retraining up to the damaged step 9 skipped its save ('latest' already held a step 9), so
  # 'latest/9' stayed damaged and every relaunch retrained 7..9 again.
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  _damage(workdir / 'checkpoints' / 'latest' / '9', 'truncated')
  damaged = {p.name: p.read_bytes() for p in (workdir / 'checkpoints' / 'latest' / '9').rglob('*')
             if p.is_file()}
  assert trainer.train_and_evaluate(_config(9), str(workdir))['step'] == 9
  state, step = checkpoints.Checkpoints(workdir, create=False).restore('latest', _target())
  assert step == 9 and int(state.step) == 9
  kept = workdir / 'checkpoints' / 'damaged' / 'latest-9'
  assert {p.name: p.read_bytes() for p in kept.rglob('*') if p.is_file()} == damaged
  assert sorted(p.name for p in (workdir / 'checkpoints' / 'latest').iterdir()) == ['6', '9']


def test_a_relaunch_that_falls_back_to_an_older_step_is_checked_at_that_step(run9, tmp_path,
                                                                            caplog):
  """6 steps per epoch: step 9 is epoch 1.50, step 6 epoch 1.00. With step 9 damaged the run goes
  on from step 6, so train.num_epochs 2 -> 1.2 ends the schedule after it (step 7) and is allowed,
  and the notes name step 6. The config was checked at the damaged newest step: refused as
  "already at epoch 1.50" (a review)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  _damage(workdir / 'checkpoints' / 'latest' / '9', 'truncated')
  c = _config(12)
  c.train.num_epochs = 1.2
  with caplog.at_level(logging.WARNING):
    assert trainer.train_and_evaluate(c, str(workdir))['step'] == 7
  said = [r.getMessage() for r in caplog.records]
  assert 'Resuming at step 6 with train.num_epochs changed: 2.0 -> 1.2.' in said, said
  assert any(m.startswith('The schedule now ends at step 7 (was 12): the learning rate at step 6 ')
             for m in said), said
  assert not [m for m in said if 'step 9' in m and 'Damaged' not in m], said
  assert (workdir / 'checkpoints' / 'latest' / '7').is_dir()


def test_a_relaunch_whose_larger_batch_ends_the_run_before_its_step_is_refused(run9, tmp_path):
  """Step 9 at batch 32 (6 steps per epoch); at batch 64 (3 per epoch) 2 epochs end at step 6. The
  relaunch had said "Done at step 9", trained nothing and exited 0 (a longevity review); it is
  refused, naming the epochs to ask for, and nothing is written. The value named trains on (3.34
  epochs: step 10; "more than 3.00" had named values that train nothing, the diff review)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  before = _listing(workdir)
  c = _config(12)
  c.train.batch_size, c.train.allow_config_change = 64, True
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'^with train\.batch_size changed the run ends at step 6 \(2 epochs '
                           r'of 3 steps\), before step 9, where it resumes: set '
                           r'train\.num_epochs to at least 3\.34 to train on$'):
    trainer.train_and_evaluate(c, str(workdir))
  assert _listing(workdir) == before
  c.train.num_epochs = 3  # Ends at step 9 itself: the run is done, not refused.
  assert trainer.train_and_evaluate(c, str(workdir))['step'] == 9
  c.train.num_epochs = 3.34
  assert trainer.train_and_evaluate(c, str(workdir))['step'] == 10


def test_a_relaunch_refused_whatever_its_step_restores_nothing_first(run9, tmp_path, monkeypatch,
                                                                    caplog):
  """Restoring first (for the fallback's step) had made a refused relaunch read a whole step
  before saying so (GBs for ResNet-152: the diff review). Its notes come once, after the restore."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  monkeypatch.setattr(checkpoints.Checkpoints, 'restore', lambda *a, **k: pytest.fail('restored'))
  c = _config(12)
  c.optim.lr = 0.5
  with pytest.raises(workdir_lib.WorkdirError, match=r'optim\.lr 0\.001 -> 0\.5'):
    trainer.train_and_evaluate(c, str(workdir))
  monkeypatch.undo()
  c = _config(12)
  c.train.num_epochs = 3.0
  with caplog.at_level(logging.WARNING):
    assert trainer.train_and_evaluate(c, str(workdir))['step'] == 12
  said = [r.getMessage() for r in caplog.records]
  assert said.count('Resuming at step 9 with train.num_epochs changed: 2.0 -> 3.0.') == 1, said


def test_resume_with_every_step_damaged_is_one_clear_error(run9, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  for step in ('latest/6', 'latest/9', 'best/6'):  # best/6: the same step, saved twice.
    _damage(workdir / 'checkpoints' / step, 'truncated')
  before = _listing(workdir)
  with pytest.raises(checkpoints.CheckpointError, match='no intact step is left'):
    trainer.train_and_evaluate(_config(12), str(workdir))
  assert _listing(workdir) == before


@pytest.mark.parametrize('which', ['best', 'latest', 'path'])
def test_a_checkpoint_of_another_model_is_refused_whichever_way_it_is_named(run9, which):
  """'best', 'latest' and a step folder's path get the same mismatch check (another model)."""
  c = _config(0)
  c.model.name, c.model.stem, c.model.width = 'resnet18', 'cifar', 4
  name = str(run9 / 'checkpoints' / 'latest' / '9') if which == 'path' else which
  with pytest.raises(checkpoints.CheckpointError, match='does not match this config'):
    state_lib.restore(c, run9, name)


@pytest.mark.parametrize('key, value, named', [
    ('model.name', 'resnet18', r"this config's model \(a different model.name/width/num_classes\?\)"
                               r'.* do not match: batch_stats, opt_state'),
    ('optim.name', 'sgd', r"this config's optimizer \(a different optim.name, grad_clip_norm .*"
                          r'opt_state\['),
    ('ema.decay', 0.9, r"this config's EMA of the weights \(one of the two kept one and the other "
                       r'did not: ema.decay\?\): .* ema_params')])
def test_a_checkpoint_of_another_train_state_names_the_part_that_differs(run9, key, value, named):
  """A run with an EMA, evaluated with a step of a run without one, had been told "a different
  model.name/width/num_classes?", and orbax's first line ended in a colon (an upgrade review)."""
  c = _config(0)
  section, name = key.split('.')
  setattr(c[section], name, value)
  if key == 'model.name':
    c.model.stem, c.model.width = 'cifar', 4
  with pytest.raises(checkpoints.CheckpointError, match=named):
    state_lib.restore(c, run9, 'latest')


@pytest.mark.parametrize('how', ['empty', 'no_metadata'])
def test_a_damaged_step_given_by_path_is_named_and_kept(run9, tmp_path, how):
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  step_dir = workdir / 'checkpoints' / 'latest' / '9'
  _damage(step_dir, how)
  before = _listing(workdir)
  with pytest.raises(checkpoints.CheckpointError, match=f'damaged checkpoint {step_dir}'):
    state_lib.restore(_config(0), workdir, str(step_dir))
  assert _listing(workdir) == before


def test_a_folder_that_is_no_checkpoint_at_all_is_not_called_damaged(run9, tmp_path):
  """The run folder, its checkpoints/ or an empty folder had been 'damaged checkpoint ...:
  missing _CHECKPOINT_METADATA, default/_METADATA, ...' (an audit)."""
  (tmp_path / 'weights' / 'state').mkdir(parents=True)
  (tmp_path / 'weights' / 'metadata.json').write_text('{}')  # What the converter writes.
  for folder in (run9, run9 / 'checkpoints', tmp_path / 'weights'):
    with pytest.raises(checkpoints.CheckpointError, match='is not a checkpoint step folder') as e:
      state_lib.restore(_config(0), run9, str(folder))
    assert 'damaged' not in str(e.value)
    assert ('model.pretrained' in str(e.value)) == (folder.name == 'weights')


def test_a_step_folder_and_its_default_item_restore_the_same_state(run9):
  by_name = state_lib.restore(_config(0), run9, 'latest')
  step_dir = run9 / 'checkpoints' / 'latest' / '9'
  for path in (step_dir, step_dir / 'default'):
    state, _, step = state_lib.restore(_config(0), run9, str(path))
    assert step == by_name[2] == 9
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(by_name[0].params), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(checkpoints.CheckpointError, match=r'does not exist \(give best'):
    state_lib.restore(_config(0), run9, str(run9 / 'checkpoints' / 'latest' / '99'))
  for typo, meant in (('bset', 'best'), ('lastest', 'latest')):  # (Not said before: a review.)
    with pytest.raises(checkpoints.CheckpointError,
                       match=rf'/{typo} does not exist; did you mean {meant}\? \(give best'):
      state_lib.restore(_config(0), run9, typo)
  # A file, and a negative step, had been said not to exist (a flag audit).
  with pytest.raises(checkpoints.CheckpointError, match=r'metrics.jsonl is a file, not a step folder'):
    state_lib.restore(_config(0), run9, str(run9 / 'metrics.jsonl'))
  with pytest.raises(checkpoints.CheckpointError, match=r'^checkpoint -1 is not a step number'):
    state_lib.restore(_config(0), run9, '-1')
  with pytest.raises(checkpoints.CheckpointError, match=r'^checkpoint -1 is not a step number'):
    state_lib.restore(_config(0), run9, str(pathlib.Path('-1').absolute()))  # As evaluate has it.


def test_restore_gives_the_saved_state_exactly(run9):
  """Every leaf of the restored state (optimizer moments, rng, counters) equals what the run holds
  at step 9: the run's own resume restores the same step into a computed state."""
  state, _, step = state_lib.restore(_config(0), run9, 'latest')
  assert step == 9 and int(state.step) == 9
  saved, _ = checkpoints.Checkpoints(run9, create=False).restore('latest', _target())
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(saved), strict=True):
    assert a.sharding == b.sharding
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_path_one_level_above_the_steps_names_them_and_a_missing_one_says_what_to_give(run9):
  latest = run9 / 'checkpoints' / 'latest'
  with pytest.raises(checkpoints.CheckpointError,
                     match=rf'holds step folders \(9, 6\), not one checkpoint: give one of them, '
                           rf'e\.g\. {latest / "9"}'):
    state_lib.restore(_config(0), run9, str(latest))
  with pytest.raises(checkpoints.CheckpointError,
                     match='give best, latest, a step number or a step folder'):
    state_lib.restore(_config(0), run9, str(run9 / 'bset'))


def _break_best_metrics(workdir: pathlib.Path, how: str) -> pathlib.Path:
  """Empties (or removes) the metrics file orbax ranks the best step by; returns the step folder."""
  [step_dir] = [p for p in (workdir / 'checkpoints' / 'best').iterdir() if p.name.isdigit()]
  if how == 'empty':
    (step_dir / 'metrics' / 'metrics').write_text('')
  else:
    shutil.rmtree(step_dir / 'metrics')
  return step_dir


@pytest.mark.parametrize('how', ['empty', 'missing'])
def test_a_best_step_without_readable_metrics_is_named_and_latest_still_restores(run9, tmp_path,
                                                                                how):
  """Orbax's manager failed to open on an empty metrics file (for 'latest' too: both open
  together), and ranked a step without one below every other."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  step_dir = _break_best_metrics(workdir, how)
  before = _listing(workdir)
  state, step = checkpoints.Checkpoints(workdir, create=False).restore('latest', _target())
  assert step == 9 and int(state.step) == 9
  with pytest.raises(checkpoints.CheckpointError,
                     match=f'damaged checkpoint in .*{step_dir / "metrics"}.* (missing|unreadable)'):
    state_lib.restore(_config(0), workdir, 'best')
  assert _listing(workdir) == before
  # Its weights are intact, and restore by path.
  assert int(state_lib.restore(_config(0), workdir, str(step_dir))[0].step) == int(step_dir.name)


def test_a_folder_named_with_digits_that_are_not_ascii_is_no_step(run9, tmp_path):
  """'²' is a digit to str.isdigit but not to int(): such a folder with a metrics file in
  checkpoints/best had made every restore a ValueError traceback (a security review)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  for which in ('best', 'latest'):
    (workdir / 'checkpoints' / which / '²' / 'metrics').mkdir(parents=True)
    (workdir / 'checkpoints' / which / '²' / 'metrics' / 'metrics').write_text('{}')
  state, step = checkpoints.Checkpoints(workdir, create=False).restore('latest', _target())
  assert step == 9 and int(state.step) == 9
  assert int(state_lib.restore(_config(0), workdir, 'best')[0].step) in (3, 6, 9)


def test_resume_sets_a_best_step_without_readable_metrics_aside_and_ranks_its_own(run9, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  step_dir = _break_best_metrics(workdir, 'empty')
  files = {str(p.relative_to(step_dir)): p.read_bytes() for p in step_dir.rglob('*') if p.is_file()}
  trainer.train_and_evaluate(_config(12), str(workdir))
  kept = workdir / 'checkpoints' / 'damaged' / f'best-{step_dir.name}'
  assert {str(p.relative_to(kept)): p.read_bytes() for p in kept.rglob('*') if p.is_file()} == files
  ckpts = checkpoints.Checkpoints(workdir, create=False)
  assert ckpts.best.best_step() is not None and ckpts.best_accuracy() is not None


def test_a_failed_restore_leaves_orbax_s_follow_up_noise_unprinted_and_the_rest_printed(
    run9, tmp_path, monkeypatch):
  """load_model of a damaged run in a notebook printed 14,303 lines after its error (an audit):
  tensorstore callbacks on orbax's closed event loop, some during the restore itself. From the
  first restore on, this process's unraisable hook drops those (errors.is_library_noise) and
  still passes everything else on."""
  import types  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  _damage(workdir / 'checkpoints' / 'latest' / '9', 'truncated')
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  with pytest.raises(checkpoints.CheckpointError, match='damaged checkpoint'):
    checkpoints.Checkpoints(workdir, create=False).restore('latest', _target())
  for message in ('Event loop is closed', 'something else'):
    sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError(message), object=None))
  assert [str(u.exc_value) for u in seen] == ['something else']


def _same_tree(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


def test_a_damaged_step_is_restored_from_its_intact_copy_in_the_other_folder(run9, tmp_path,
                                                                               caplog):
  """A step the run kept in both checkpoints/latest and checkpoints/best (the same state, saved
  twice): a damaged copy had been an error (load_model(run, 6), evaluate --checkpoint 6 or best)
  while the other copy was intact (an audit). Each way of naming it now restores the intact copy,
  with a warning naming both; nothing is moved or deleted."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  intact = state_lib.restore(_config(0), workdir, str(workdir / 'checkpoints' / 'best' / '6'))[0]
  for damaged, name in (('latest', 6), ('latest', str(workdir / 'checkpoints' / 'latest' / '6')),
                        ('best', 'best')):
    if damaged == 'best':  # Back to intact latest/6 and a damaged best/6.
      shutil.rmtree(workdir)
      shutil.copytree(run9, workdir)
    _damage(workdir / 'checkpoints' / damaged / '6', 'truncated')
    before = _listing(workdir)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      step_path = step_folders.kept_step_folder(workdir, name) or name
      state, _, step = state_lib.restore(_config(0), workdir, step_path)
    assert step == 6 and _same_tree(state.params, intact.params), name
    assert _same_tree(state.opt_state, intact.opt_state), name
    other = 'best' if damaged == 'latest' else 'latest'
    assert any(f'checkpoints/{damaged}/6' in r.getMessage()
               and f'same step from {workdir}/checkpoints/{other}/6' in r.getMessage()
               for r in caplog.records), name
    assert _listing(workdir) == before, name
  for folder in ('latest', 'best'):  # Both copies damaged: the error names the one asked for.
    _damage(workdir / 'checkpoints' / folder / '6', 'empty')
  with pytest.raises(checkpoints.CheckpointError, match=r'damaged checkpoint .*best.* step 6'):
    state_lib.restore(_config(0), workdir, 'best')


def test_every_process_reloads_its_listing_when_any_set_damaged_steps_aside(run9, tmp_path,
                                                                           monkeypatch):
  """The save after a resume runs only where the listing lacks the step: a process that found no
  damage had skipped the reload, and so orbax's collective save, while the others waited in it
  (a review). Another process's damage simulated through parallel.any_process."""
  from jax_cifar import parallel  # pylint: disable=import-outside-toplevel
  ckpts = checkpoints.Checkpoints(run9, create=False)
  reloads = []
  monkeypatch.setattr(ckpts.latest, 'reload', lambda: reloads.append(1))
  monkeypatch.setattr(parallel, 'any_process', lambda mine: True)  # Damaged on another process.
  assert ckpts.set_aside_damaged('latest') == [] and reloads == [1]
  monkeypatch.setattr(parallel, 'any_process', lambda mine: mine)  # Nowhere.
  assert ckpts.set_aside_damaged('latest') == [] and reloads == [1]


def test_resume_takes_a_damaged_steps_intact_copy_and_sets_the_damaged_one_aside(run9, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  for step in ('9', '6'):  # 9 has no copy in best; 6 has.
    _damage(workdir / 'checkpoints' / 'latest' / step, 'truncated')
  ckpts = checkpoints.Checkpoints(workdir, create=False)
  state, step = ckpts.restore('latest', _target(), fallback=True)
  assert step == 6 and int(state.step) == 6
  moved = ckpts.set_aside_damaged('latest')
  assert sorted(p.name for p in moved) == ['latest-6', 'latest-9']
  assert not list((workdir / 'checkpoints' / 'latest').iterdir())
  assert (workdir / 'checkpoints' / 'best' / '6').is_dir()
  # The trainer's resume saves the restored step into latest/ again: a kill before its next save
  # had found no latest step and started the run over from step 0 (a review).
  for step in ('9', '6'):
    shutil.move(workdir / 'checkpoints' / 'damaged' / f'latest-{step}',
                workdir / 'checkpoints' / 'latest' / step)
  trainer.train_and_evaluate(_config(6), str(workdir))  # Resumes at 6; trains none.
  assert sorted(p.name for p in (workdir / 'checkpoints' / 'latest').iterdir()) == ['6']
  state, step = checkpoints.Checkpoints(workdir, create=False).restore('latest', _target())
  assert step == 6 and int(state.step) == 6


def test_a_damaged_step_without_an_intact_copy_names_the_steps_the_run_kept(run9, tmp_path):
  """The error had said only "restore an intact step by path", while another kept step would have
  worked (an audit)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  [best] = [p for p in (workdir / 'checkpoints' / 'best').iterdir() if p.name.isdigit()]
  for copy in (best, workdir / 'checkpoints' / 'latest' / best.name):
    if copy.is_dir():
      _damage(copy, 'empty')
  others = sorted({int(p.name) for p in (workdir / 'checkpoints').glob('*/*') if p.name.isdigit()}
                  - {int(best.name)})
  assert others  # run9 kept latest/6 and latest/9.
  with pytest.raises(checkpoints.CheckpointError, match=(
      rf'restore an intact step by number or path \(the run also kept steps? '
      rf'{", ".join(map(str, others))}: evaluate --checkpoint N, load_model\(run, N\)\)')):
    checkpoints.Checkpoints(workdir, create=False).restore('best', _target())


def test_evaluating_a_damaged_latest_names_it_and_never_falls_back_to_an_older_step(run9, tmp_path):
  """state.restore (evaluate, api.load_model, init_from) names a damaged 'latest' step: only a
  training resume may quietly take an older step, an evaluation would report step 6 as step 9's."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  _damage(workdir / 'checkpoints' / 'latest' / '9', 'empty')
  with pytest.raises(checkpoints.CheckpointError, match=r'damaged checkpoint .*step 9 '):
    state_lib.restore(_config(0), workdir, 'latest')
  assert int(state_lib.restore(_config(0), workdir, 'latest', fallback=True)[2]) == 6


def _unreadable_by_this_user(step_dir: pathlib.Path) -> list[pathlib.Path]:
  arrays = [p for p in (step_dir / 'default').rglob('*') if p.is_file() and '/d/' in str(p)]
  for p in arrays:
    p.chmod(0)
  return arrays


def test_a_step_this_user_cannot_read_stops_the_resume_and_is_not_set_aside(run9, tmp_path):
  """Unreadable files (permissions) had been taken as damage: the intact newest step was moved
  to checkpoints/damaged and the run trained on from the step before, exiting 0 (a review)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  _unreadable_by_this_user(workdir / 'checkpoints' / 'latest' / '9')
  before, metrics = _listing(workdir), (workdir / 'metrics.jsonl').read_bytes()
  code = ('import sys\nsys.path.insert(0, sys.argv[1])\nimport test_checkpoints as t\n'
          'from jax_cifar.training import trainer\n'
          'trainer.train_and_evaluate(t._config(12), sys.argv[2])\n')
  drop = [] if os.geteuid() else ['setpriv', '--inh-caps=-dac_override,-dac_read_search',
                                  '--bounding-set=-dac_override,-dac_read_search']
  out = subprocess.run(drop + [sys.executable, '-c', code, str(pathlib.Path(__file__).parent),
                               str(workdir)], capture_output=True, text=True, timeout=300)
  assert out.returncode != 0, out.stderr[-2000:]
  assert (f'cannot read the checkpoint {workdir}/checkpoints/latest/9: permission denied: give '
          'this user read access to its files (PERMISSION_DENIED') in out.stderr, out.stderr[-2000:]
  assert 'its files are not damaged and were left as they are' in out.stderr
  assert 'Damaged checkpoint' not in out.stderr
  assert not (workdir / 'checkpoints' / 'damaged').exists()
  assert _listing(workdir) == before and (workdir / 'metrics.jsonl').read_bytes() == metrics


@pytest.mark.parametrize('failure, why', [
    (MemoryError(), 'out of memory: free some'),
    (ValueError('UNKNOWN: Error reading local file "x/d/1": Failed to open: "x/d/1": Too many '
                "open files [os_error_code='24']"), 'too many open files: raise the limit'),
    (PermissionError(13, 'Permission denied'), 'permission denied: give this user read access'),
])
def test_a_read_failure_of_the_machine_not_the_files_is_not_damage(tmp_path, failure, why):
  step_dir = tmp_path / 'checkpoints' / 'latest' / '3'
  for name in step_folders._REQUIRED_FILES:  # pylint: disable=protected-access
    (step_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (step_dir / name).write_text('{}')

  def fail():
    raise failure
  with pytest.raises(step_folders.CheckpointError, match=f'^cannot read the checkpoint {step_dir}: '
                                                         f'{why}') as raised:
    step_folders.restore_step(step_dir, fail)
  assert not isinstance(raised.value, step_folders.StructureMismatch)


def test_a_reader_whose_step_the_trainer_deletes_reads_the_newest_step_then(run9, tmp_path,
                                                                           monkeypatch):
  """The trainer's keep policy deletes a step while evaluate or load_model reads it: that had been
  "damaged checkpoint" or "does not match this config's model" in about 1 in 8 loads of a training
  run's latest step (a concurrency review)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  latest = workdir / 'checkpoints' / 'latest'
  reader = checkpoints.Checkpoints(workdir, create=False)  # It lists steps 6 and 9.
  shutil.copytree(latest / '9', latest / '12')  # The trainer saves step 12 ...
  real, read = checkpoints.restore_step, []

  def deleted_while_read(step_dir, restore_fn):
    read.append(step_dir.name)
    if step_dir.name == '9':
      shutil.rmtree(step_dir)  # ... and deletes step 9 as the reader starts on it.
    return real(step_dir, restore_fn)
  monkeypatch.setattr(checkpoints, 'restore_step', deleted_while_read)
  state, step = reader.restore('latest', _target())
  assert step == 12 and int(state.step) == 9 and read == ['9', '12']  # (12 is 9's copy.)
  assert not (workdir / 'checkpoints' / 'damaged').exists()


def test_a_step_deleted_while_tensorstore_reads_it_is_read_again_as_the_newest(run9, tmp_path,
                                                                               monkeypatch):
  """As above, with the folder deleted once the read has begun (past the files' check): the
  failure is tensorstore's, not a missing file's."""
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  latest = workdir / 'checkpoints' / 'latest'
  reader = checkpoints.Checkpoints(workdir, create=False)
  shutil.copytree(latest / '9', latest / '12')
  real, failures = checkpoints.restore_step, []

  def deleted_during_read(step_dir, restore_fn):
    def read():
      if step_dir.name == '9':
        shutil.rmtree(step_dir)
      return restore_fn()
    try:
      return real(step_dir, read)
    except Exception as e:
      failures.append(type(e).__name__)
      raise
  monkeypatch.setattr(checkpoints, 'restore_step', deleted_during_read)
  assert reader.restore('latest', _target())[1] == 12
  assert len(failures) == 1 and failures[0] in ('Damaged', 'StructureMismatch'), failures


def test_the_trainer_itself_still_calls_a_step_that_vanishes_damaged(run9, tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  shutil.copytree(run9, workdir)
  real = checkpoints.restore_step

  def deleted_while_read(step_dir, restore_fn):
    if step_dir.name == '9':
      shutil.rmtree(step_dir)
    return real(step_dir, restore_fn)
  monkeypatch.setattr(checkpoints, 'restore_step', deleted_while_read)
  with pytest.raises(checkpoints.CheckpointError, match=r'damaged checkpoint .*step 9 \(missing'):
    checkpoints.Checkpoints(workdir).restore('latest', _target())


def test_listing_steps_as_one_vanishes_is_tried_again_by_a_reader_only():
  calls = []

  def lists():
    calls.append(1)
    if len(calls) == 1:  # orbax's stat of a step the trainer has just deleted.
      raise FileNotFoundError(2, 'No such file or directory', 'run/checkpoints/latest/522')
    return 'manager'
  assert step_folders.open_manager(lists, reader=True) == 'manager' and len(calls) == 2
  calls.clear()
  with pytest.raises(FileNotFoundError):
    step_folders.open_manager(lists, reader=False)
